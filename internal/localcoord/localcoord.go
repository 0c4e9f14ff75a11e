// Package localcoord runs geocursor's state machine in process, with no
// replication: "coordination turned off". The benchmark uses it to measure
// what the cursor loop costs without Raft, and unit tests drive the loop
// with it. It offers none of the guarantees of the cluster.
package localcoord

import (
	"context"
	"sync"
	"time"

	"github.com/geocursor/geocursor/fsm"
)

// Coordinator satisfies cursor.Coordinator for a single, unreplicated peer.
type Coordinator struct {
	id      string
	mu      sync.Mutex
	state   fsm.State
	index   uint64
	changed chan struct{}
}

// New returns a coordinator for the peer id.
func New(id string) *Coordinator {
	return &Coordinator{id: id, changed: make(chan struct{})}
}

// ID returns the peer's ID.
func (c *Coordinator) ID() string { return c.id }

// Apply stamps the local clock and applies cmd, numbering it as a log
// entry.
func (c *Coordinator) Apply(_ context.Context, cmd fsm.Command) (fsm.Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cmd.Now = time.Now().UnixNano()
	c.index++
	res := c.state.Apply(cmd)
	res.Index = c.index
	if res.Err == nil {
		close(c.changed)
		c.changed = make(chan struct{})
	}
	return res, nil
}

// Watch returns the state and a channel closed at its next change.
func (c *Coordinator) Watch() (fsm.State, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state.Clone(), c.changed
}

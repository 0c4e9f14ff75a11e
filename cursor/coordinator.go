package cursor

import (
	"context"
	"sync"
	"time"

	"github.com/geocursor/geocursor/fsm"
)

// Coordinator is what the loop needs of the Raft group: apply a command on
// the leader and watch the local replica of the state. cluster.Node
// satisfies it.
type Coordinator interface {
	ID() string
	Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error)
	Watch() (fsm.State, <-chan struct{})
}

// LocalCoordinator runs the state machine in process with no replication:
// "coordination turned off". The benchmark uses it to measure what the
// cursor costs without Raft; it offers none of the guarantees.
type LocalCoordinator struct {
	id      string
	mu      sync.Mutex
	state   fsm.State
	changed chan struct{}
}

// NewLocalCoordinator returns a coordinator for a single, unreplicated peer.
func NewLocalCoordinator(id string) *LocalCoordinator {
	return &LocalCoordinator{id: id, changed: make(chan struct{})}
}

// ID returns the peer's ID.
func (c *LocalCoordinator) ID() string { return c.id }

// Apply stamps the local clock and applies cmd.
func (c *LocalCoordinator) Apply(_ context.Context, cmd fsm.Command) (fsm.Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cmd.Now = time.Now().UnixNano()
	res := c.state.Apply(cmd)
	if res.Err == nil {
		close(c.changed)
		c.changed = make(chan struct{})
	}
	return res, nil
}

// Watch returns the state and a channel closed at its next change.
func (c *LocalCoordinator) Watch() (fsm.State, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state.Clone(), c.changed
}

// positionOf is the cursor position recorded in the replicated state.
func positionOf(st fsm.State) Position {
	return Position{
		LastEventID:   st.Cursor.LastEventID,
		LastEventDate: fsm.Time(st.Cursor.LastEventDate),
		Gaps:          append([]fsm.Gap(nil), st.Gaps...),
	}
}

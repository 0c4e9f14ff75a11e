package fsm

import (
	"fmt"
	"io"
	"sync"

	"github.com/hashicorp/raft"
)

// FSM adapts State to raft.FSM. It adds only what Raft needs (locking,
// snapshots) and a change signal so that local readers, such as an idle
// cursor loop, can wait for the state to move instead of polling Raft.
type FSM struct {
	// release names the writer of this FSM's snapshots (SetRelease).
	release string
	mu      sync.RWMutex
	state   State
	changed chan struct{} // closed and replaced on every change
}

var _ raft.FSM = (*FSM)(nil)

// New returns an FSM holding the state of a fresh cluster.
func New() *FSM {
	return &FSM{changed: make(chan struct{})}
}

// SetRelease names the release that writes this FSM's snapshots, so that
// a release that cannot read one names it. Call it before Raft starts.
func (f *FSM) SetRelease(release string) { f.release = release }

// Apply decodes and applies one log entry and returns a Result. A log entry
// that does not decode yields a Result with ErrBadCommand, the same on every
// replica.
func (f *FSM) Apply(l *raft.Log) interface{} {
	c, err := DecodeCommand(l.Data)
	f.mu.Lock()
	defer f.mu.Unlock()
	if err != nil {
		res := f.state.result(err)
		res.Index = l.Index
		return res
	}
	res := f.state.Apply(c)
	res.Index = l.Index
	if res.Err == nil {
		f.notifyLocked()
	}
	return res
}

// State returns a copy of the current state.
func (f *FSM) State() State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.Clone()
}

// Member returns the member id of the current state, without the copy of
// the whole state that State makes: it is read on every forwarded command.
func (f *FSM) Member(id string) (Member, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	m, ok := f.state.Members[id]
	return m, ok
}

// Check answers cmd as Apply would on the current state (State.Check),
// without applying it: the lease and cursor it would answer with, the time
// it would be applied at, and the refusal, nil if it would be granted.
func (f *FSM) Check(cmd Command) Result {
	f.mu.RLock()
	defer f.mu.RUnlock()
	res := f.state.result(f.state.Check(cmd))
	res.Now = f.state.appliedAt(cmd)
	return res
}

// Clock returns the state's clock: the time the last command was applied at.
func (f *FSM) Clock() int64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.Clock
}

// Watch returns the current state and a channel that is closed at the next
// change after it.
func (f *FSM) Watch() (State, <-chan struct{}) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.state.Clone(), f.changed
}

func (f *FSM) notifyLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// Snapshot captures the state; persisting it happens outside the lock.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &snapshot{state: f.State(), release: f.release}, nil
}

// Restore replaces the whole state with the snapshot's.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	s, err := ReadSnapshot(rc)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state = s
	f.notifyLocked()
	return nil
}

type snapshot struct {
	state   State
	release string
}

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := s.state.writeSnapshot(sink, s.release); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() {}

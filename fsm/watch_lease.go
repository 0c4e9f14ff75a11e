package fsm

// LeaseState is the part of the state that says who holds the lease and
// who held it last: what a watcher of handovers needs, without the copy
// of the gaps and members that State makes.
type LeaseState struct {
	Lease       Lease
	LastHolder  string
	RevokedFrom string
	// Clock is the state's clock (State.Clock): the time the last command
	// was applied at.
	Clock int64
}

// WatchLease is Watch for LeaseState: the lease now and a channel that is
// closed at the next change of the state (of any part of it). Changes that
// come while the caller is away are seen together, as the latest state.
func (f *FSM) WatchLease() (LeaseState, <-chan struct{}) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := &f.state
	return LeaseState{Lease: s.Lease, LastHolder: s.LastHolder, RevokedFrom: s.RevokedFrom, Clock: s.Clock}, f.changed
}

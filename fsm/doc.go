// Package fsm is geocursor's replicated state machine: the lease, the cursor,
// the open gaps, the members table and the counters.
//
// It owns the rules (who may hold the lease, when a token is stale, that the
// cursor never moves back) and nothing else: no I/O, no clock, no goroutines.
// Time enters only through the Now field that the Raft leader stamps into a
// command before it is proposed, so every replica applying the same log
// computes the same state. The state keeps its own clock, the latest time a
// command was applied at, and applies each command at the later of its
// stamp and that clock, so the state's time never goes backwards. State.Apply is a pure function that tests and the
// linearizability checker drive directly; FSM adapts it to raft.FSM.
package fsm

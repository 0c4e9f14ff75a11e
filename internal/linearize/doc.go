// Package linearize checks histories of geocursor's replicated commands
// (api.HistoryEntry records, as the agents write them to
// GEOCURSOR_HISTORY_FILE) against the state machine itself.
//
// Check asks porcupine whether the history is linearizable: whether there
// is one order of the commands, consistent with real time (a command that
// returned before another was called comes first), in which replaying
// fsm.State.Apply yields every answer the peers saw (lease holder, token and
// expiry, cursor, refusal code). A command whose answer never came back
// (HistoryEntry.Error) may or may not have been applied; the model allows
// both. The whole state is one register: the history is not partitioned.
//
// CheckSafety looks for the two lease violations directly, without a
// search: a token granted twice or not increasing, and a grant made while
// another peer's grant was observed unexpired.
//
// Reconcile lines a history up with the commands of a Raft log: it finds
// the leader's time for commands whose answer was lost, drops those the log
// shows were never applied, and adds the commands that no peer recorded
// (the peer was killed before its answer came back, or a command was
// applied twice).
//
// The package owns no I/O but WriteVisualization; collecting histories and
// reading Raft logs is the caller's business (internal/chaos).
package linearize

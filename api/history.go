package api

import "github.com/geocursor/geocursor/fsm"

// HistoryEntry is one command as the peer that issued it saw it: when it
// called, when the answer came, what it asked and what it got. An agent
// started with GEOCURSOR_HISTORY_FILE appends one per command as a JSON
// line; the fault tests collect them from every peer and check them
// against fsm.State.Apply (internal/linearize).
type HistoryEntry struct {
	Node   string      `json:"node"`
	Call   int64       `json:"call"`   // Unix nanoseconds
	Return int64       `json:"return"` // Unix nanoseconds
	Cmd    fsm.Command `json:"cmd"`
	// For an answered command: the state after it and the time it was
	// applied at (fsm.Result.Now).
	Lease  *fsm.Lease  `json:"lease,omitempty"`
	Cursor *fsm.Cursor `json:"cursor,omitempty"`
	Now    int64       `json:"now,omitempty"`
	// Index is the command's Raft log index: known for an answered command,
	// and filled in by the reconciliation with the Raft log for the others.
	// It is the order in which every replica applied the commands.
	Index uint64 `json:"index,omitempty"`
	// Code is the refusal's code ("" when the command was granted).
	Code string `json:"code,omitempty"`
	// Error is set when no answer came back (no leader, timeout, leadership
	// lost): the command may or may not have been applied.
	Error string `json:"error,omitempty"`
}

// NewHistoryEntry records the outcome of one command.
func NewHistoryEntry(node string, call, ret int64, cmd fsm.Command, res fsm.Result, err error) HistoryEntry {
	e := HistoryEntry{Node: node, Call: call, Return: ret, Cmd: cmd}
	if err != nil {
		e.Error = err.Error()
		return e
	}
	lease, cursor := res.Lease, res.Cursor
	e.Lease, e.Cursor, e.Now, e.Index = &lease, &cursor, res.Now, res.Index
	if res.Err != nil {
		e.Code = RefusalCode(res.Err)
		if e.Code == "" {
			e.Code = res.Err.Error()
		}
	}
	return e
}

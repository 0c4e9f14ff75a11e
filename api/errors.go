package api

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/geocursor/geocursor/fsm"
)

// Errors of the cluster and the wire. They are matched with errors.Is,
// also after an HTTP round trip: each has a code in the table below.
var (
	// ErrNoLeader means the group has no leader right now (an election is
	// under way, or a majority is down). It is retryable.
	ErrNoLeader = errors.New("no Raft leader")
	// ErrNotLeader means a command that only the leader serves reached a
	// follower; nothing was applied. The forwarder looks the leader up
	// again.
	ErrNotLeader = errors.New("not the Raft leader")
	// ErrUnknownOutcome means the command may or may not have been
	// applied: leadership was lost after it was proposed, or its answer was
	// lost on the way back. Sending it again could apply it twice.
	ErrUnknownOutcome = errors.New("outcome unknown")
	// ErrJoinConflict means a join asked for a node ID that the group
	// already has at a different address.
	ErrJoinConflict = errors.New("node ID already in use")
	// ErrQuorum means a membership change was refused because the group
	// would stop: no voter left, or no majority of the voters left
	// answering.
	ErrQuorum = errors.New("the group would lose its quorum")
	// ErrStarting means the node has not started Raft yet (it is joining
	// or waiting for its peers to bootstrap).
	ErrStarting = errors.New("node is starting")
	// ErrShutdown means the node is shutting down.
	ErrShutdown = errors.New("node is shutting down")
	// ErrBadRequest means the request was malformed; ErrTooLarge that its
	// body was over the limit.
	ErrBadRequest = errors.New("bad request")
	ErrTooLarge   = fmt.Errorf("%w: request body too large", ErrBadRequest)
	// ErrNotFound means no such endpoint or operation.
	ErrNotFound = errors.New("not found")
	// ErrPermissionDenied means the caller may not do this: its token lacks
	// the right, or the endpoint is for peers and its certificate is not a
	// peer's (or names another node than the one it acts for).
	// ErrUnauthorized means it gave no token at all; it wraps
	// ErrPermissionDenied, and both have the code permission_denied.
	ErrPermissionDenied = errors.New("permission denied")
	ErrUnauthorized     = fmt.Errorf("%w: no token given", ErrPermissionDenied)
	// ErrNotSent means the request never reached the server (the
	// connection could not be made): nothing was applied, and it is safe to
	// send it again, here or elsewhere. It is the client's own; no server
	// answers with it.
	ErrNotSent = errors.New("request not sent")
)

// codes is the one table of error codes: what each error is called on the
// wire and the HTTP status it is served with. An error is served with the
// first row it matches; a code that several rows share decodes to the last
// of them, the most general. A state-machine refusal is
// served inside a 200 answer (ApplyResponse); its status here is for when
// it is the failure of a whole request. Codes never change: nodes of
// different versions talk to each other.
var codes = []struct {
	err    error
	code   string
	status int
}{
	{fsm.ErrLeaseHeld, "lease_held", http.StatusConflict},
	{fsm.ErrStaleToken, "stale_token", http.StatusConflict},
	{fsm.ErrLeaseExpired, "lease_expired", http.StatusConflict},
	{fsm.ErrCursorBackwards, "cursor_backwards", http.StatusConflict},
	{fsm.ErrPaused, "paused", http.StatusConflict},
	{fsm.ErrGapBase, "gap_base", http.StatusConflict},
	{fsm.ErrNotFresh, "not_fresh", http.StatusConflict},
	{fsm.ErrBadCommand, "bad_command", http.StatusBadRequest},
	{ErrNoLeader, "no_leader", http.StatusServiceUnavailable},
	{ErrNotLeader, "not_leader", http.StatusServiceUnavailable},
	{ErrUnknownOutcome, "outcome_unknown", http.StatusServiceUnavailable},
	{ErrShutdown, "shutting_down", http.StatusServiceUnavailable},
	{ErrStarting, "starting", http.StatusServiceUnavailable},
	{ErrJoinConflict, "conflict", http.StatusConflict},
	{ErrQuorum, "quorum", http.StatusConflict},
	{ErrTooLarge, "bad_request", http.StatusRequestEntityTooLarge},
	{ErrBadRequest, "bad_request", http.StatusBadRequest},
	{ErrNotFound, "not_found", http.StatusNotFound},
	{ErrUnauthorized, "permission_denied", http.StatusUnauthorized},
	{ErrPermissionDenied, "permission_denied", http.StatusForbidden},
}

// codeInternal is the code of an error the table does not know.
const codeInternal = "internal"

// Error is the error object of every answer: {"code": ..., "message": ...}.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// ErrorOf is the wire form of err.
func ErrorOf(err error) *Error {
	return &Error{Code: Code(err), Message: err.Error()}
}

// Code returns the wire code of err: that of the first error in the table
// it wraps, else "internal".
func Code(err error) string {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return codeInternal
}

// RefusalCode returns the code of the state-machine refusal err wraps, or
// "" when it wraps none: what a history records.
func RefusalCode(err error) string {
	if err == nil {
		return ""
	}
	for _, r := range fsm.Refusals {
		if errors.Is(err, r) {
			return Code(r)
		}
	}
	return ""
}

// HTTPStatus returns the status err is served with: that of the first
// error in the table it wraps, else 500.
func HTTPStatus(err error) int {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.status
		}
	}
	return http.StatusInternalServerError
}

// Err rebuilds the error e carries, so that errors.Is matches the error
// of its code; the message is kept as the text.
func (e *Error) Err() error { return e.errWith(0) }

// errWith is Err for an answer served with status: of the errors that
// share e's code, the one served with that status (ErrUnauthorized for a
// 401), else the most general.
func (e *Error) errWith(status int) error {
	match := -1
	for i := len(codes) - 1; i >= 0; i-- {
		c := codes[i]
		if c.code != e.Code {
			continue
		}
		if match < 0 || c.status == status {
			match = i
		}
		if c.status == status {
			break
		}
	}
	if match < 0 {
		return errors.New(e.Message)
	}
	if c := codes[match]; e.Message != c.err.Error() {
		return &wireError{sentinel: c.err, msg: e.Message}
	}
	return codes[match].err
}

// wireError is an error received over the wire: its own message, matching
// its code's sentinel.
type wireError struct {
	sentinel error
	msg      string
}

func (e *wireError) Error() string { return e.msg }
func (e *wireError) Unwrap() error { return e.sentinel }

// statusError is a failed answer without an error object (a proxy's page,
// a server of another kind).
func statusError(status int, body []byte) error {
	if len(body) > 200 {
		body = append(body[:200:200], "..."...)
	}
	return fmt.Errorf("HTTP %d: %s", status, body)
}

package fsm

import (
	"errors"
	"fmt"
)

// Sentinel errors returned in Result.Err. They are part of the API: callers
// match them with errors.Is, also after an HTTP round trip (see Code and
// ErrorFromCode), so each has a stable code.
var (
	// ErrLeaseHeld: acquire was refused because another peer holds an
	// unexpired lease.
	ErrLeaseHeld = errors.New("lease held by another peer")
	// ErrStaleToken: the command names a grant that is no longer current.
	ErrStaleToken = errors.New("stale fencing token")
	// ErrLeaseExpired: renew came after the lease had expired.
	ErrLeaseExpired = errors.New("lease expired")
	// ErrCursorBackwards: release-and-advance would move the cursor back.
	ErrCursorBackwards = errors.New("cursor would move backwards")
	// ErrPaused: the cursor is paused; no lease is granted.
	ErrPaused = errors.New("cursor paused")
	// ErrBadCommand: the command could not be decoded or is invalid.
	ErrBadCommand = errors.New("bad command")
)

var codes = map[error]string{
	ErrLeaseHeld:       "lease_held",
	ErrStaleToken:      "stale_token",
	ErrLeaseExpired:    "lease_expired",
	ErrCursorBackwards: "cursor_backwards",
	ErrPaused:          "paused",
	ErrBadCommand:      "bad_command",
}

// Code returns the stable code of the sentinel that err wraps, or "" when it
// wraps none.
func Code(err error) string {
	for sentinel, code := range codes {
		if errors.Is(err, sentinel) {
			return code
		}
	}
	return ""
}

// ErrorFromCode rebuilds an error received over the wire so that errors.Is
// matches the sentinel of code, keeping msg as the text.
func ErrorFromCode(code, msg string) error {
	for sentinel, c := range codes {
		if c == code {
			if msg == sentinel.Error() {
				return sentinel
			}
			return &wireError{sentinel: sentinel, msg: msg}
		}
	}
	return errors.New(msg)
}

type wireError struct {
	sentinel error
	msg      string
}

func (e *wireError) Error() string { return e.msg }
func (e *wireError) Unwrap() error { return e.sentinel }

func refuse(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))
}

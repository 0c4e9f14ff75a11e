package fsmv0

import (
	"errors"
	"fmt"
)

// Sentinel errors returned in Result.Err. They are part of the API: callers
// match them with errors.Is, also after an HTTP round trip (package api
// gives each a stable code).
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
	// ErrGapBase: an advance carrying a gap delta was computed from an
	// open-gap set other than the state's.
	ErrGapBase = errors.New("open gaps differ from the gap delta's base")
	// ErrNotFresh: a restore was refused because the group has processed
	// events already.
	ErrNotFresh = errors.New("the group has processed events already")
	// ErrBadCommand: the command could not be decoded or is invalid.
	ErrBadCommand = errors.New("bad command")
)

// Refusals lists every sentinel a command can be refused with.
var Refusals = []error{ErrLeaseHeld, ErrStaleToken, ErrLeaseExpired, ErrCursorBackwards, ErrPaused, ErrGapBase, ErrNotFresh, ErrBadCommand}

func refuse(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))
}

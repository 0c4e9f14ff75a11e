package api

import (
	"errors"
	"fmt"
	"testing"

	"github.com/geocursor/geocursor/fsm"
)

// wireCodes lists every error with its wire code. The codes cross the HTTP
// API between nodes of different versions: never change one.
var wireCodes = []struct {
	err  error
	code string
}{
	{fsm.ErrLeaseHeld, "lease_held"},
	{fsm.ErrStaleToken, "stale_token"},
	{fsm.ErrLeaseExpired, "lease_expired"},
	{fsm.ErrCursorBackwards, "cursor_backwards"},
	{fsm.ErrPaused, "paused"},
	{fsm.ErrGapBase, "gap_base"},
	{fsm.ErrNotFresh, "not_fresh"},
	{fsm.ErrBadCommand, "bad_command"},
	{ErrNoLeader, "no_leader"},
	{ErrNotLeader, "not_leader"},
	{ErrUnknownOutcome, "outcome_unknown"},
	{ErrShutdown, "shutting_down"},
	{ErrStarting, "starting"},
	{ErrJoinConflict, "conflict"},
	{ErrQuorum, "quorum"},
	{ErrBadRequest, "bad_request"},
	{ErrNotFound, "not_found"},
	{ErrPermissionDenied, "permission_denied"},
}

func TestErrorCodeRoundTripKeepsTheError(t *testing.T) {
	if len(wireCodes) != len(codes)-2 { // ErrTooLarge and ErrUnauthorized share codes
		t.Fatalf("the test knows %d codes, errors.go maps %d", len(wireCodes), len(codes))
	}
	for _, s := range wireCodes {
		for _, err := range []error{s.err, fmt.Errorf("acquire: %w: held by n2 for 3s", s.err)} {
			code := Code(err)
			if code != s.code {
				t.Errorf("Code(%v) = %q, want %q", err, code, s.code)
				continue
			}
			back := ErrorOf(err).Err()
			if !errors.Is(back, s.err) || back.Error() != err.Error() {
				t.Errorf("round trip of %q: %v, does not match %v with the same text", err, back, s.err)
			}
			for _, other := range wireCodes {
				if other.err != s.err && errors.Is(back, other.err) {
					t.Errorf("round trip of %v also matches %v", err, other.err)
				}
			}
		}
	}
}

func TestUnknownCodeMatchesNothing(t *testing.T) {
	if got := Code(errors.New("disk on fire")); got != "internal" {
		t.Errorf("Code(plain error) = %q, want internal", got)
	}
	if got := RefusalCode(ErrNoLeader); got != "" {
		t.Errorf("RefusalCode(ErrNoLeader) = %q, want none: it is not a refusal", got)
	}
	err := (&Error{Code: "flux_capacitor", Message: "disk on fire"}).Err()
	if err.Error() != "disk on fire" {
		t.Errorf("message %q", err)
	}
	for _, s := range wireCodes {
		if errors.Is(err, s.err) {
			t.Errorf("unknown code matches %v", s.err)
		}
	}
}

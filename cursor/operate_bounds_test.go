package cursor

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

func TestCursorSetBeyondTheSourceHeadNeedsForce(t *testing.T) {
	src := newMemSource(50)
	loop := NewLoop(LoopConfig{Start: StartOldest, LeaseTTL: time.Second}, nil, src, nil, nil, nil)
	ctx := context.Background()
	for _, id := range []int64{0, 49, 50} {
		if err := loop.checkBelowHead(ctx, id); err != nil {
			t.Errorf("event %d, at or below the head 50: %v", id, err)
		}
	}
	for _, id := range []int64{51, 500000, math.MaxInt64} {
		if err := loop.checkBelowHead(ctx, id); !errors.Is(err, api.ErrBadRequest) {
			t.Errorf("event %d, beyond the head 50: %v, want %v", id, err, api.ErrBadRequest)
		}
	}
}

func TestReservationNeverOutlivesItsBound(t *testing.T) {
	for _, tc := range []struct{ leaseTTL, want time.Duration }{
		{time.Second, 5 * time.Second},
		{5 * time.Second, 10 * time.Second},
		{time.Minute, 2 * time.Minute},
		{time.Hour, fsm.MaxReserveTTL},
	} {
		loop := NewLoop(LoopConfig{Start: StartOldest, LeaseTTL: tc.leaseTTL}, nil, newMemSource(0), nil, nil, nil)
		if got := loop.reserveTTL(); got != tc.want {
			t.Errorf("lease TTL %s: reservation %s, want %s", tc.leaseTTL, got, tc.want)
		}
	}
}

func TestLagIsMeasuredFromTheRealSourceHead(t *testing.T) {
	h := NewHealth()
	at := time.Unix(1_764_000_000, 0).UTC()
	status := func(cursor int64) api.Cursor {
		st := api.Status{Cursor: api.Cursor{LastEventID: cursor}}
		h.AddStatus(&st)
		return st.Cursor
	}
	check := func(what string, c api.Cursor, head, lag int64) {
		t.Helper()
		if c.SourceLastEventID == nil || c.LagEvents == nil {
			t.Fatalf("%s: no source head or lag: %+v", what, c)
		}
		if *c.SourceLastEventID != head || *c.LagEvents != lag {
			t.Errorf("%s: source head %d, lag %d; want %d, %d", what, *c.SourceLastEventID, *c.LagEvents, head, lag)
		}
	}

	h.Head(100, at)
	check("behind the head", status(90), 100, 10)
	check("at the head", status(100), 100, 0)

	// A holder moved the cursor past the head as last read: the source
	// has those events, and the next head read shows it.
	check("past a stale head", status(130), 130, 0)
	h.Head(140, at)
	check("the head read after", status(130), 140, 10)

	// A cursor set beyond the source: once a head read that began after
	// the status saw it still finds the source behind, the real head and
	// a negative lag.
	beyond := int64(math.MaxInt64)
	check("just set beyond", status(beyond), beyond, 0)
	h.Head(140, at) // may have begun before the status saw the cursor
	check("one read later", status(beyond), beyond, 0)
	h.Head(141, at)
	check("two reads later", status(beyond), 141, 141-beyond)
	h.Head(142, at)
	check("and on", status(beyond), 142, 142-beyond)
	if c := status(beyond); c.LagSeconds == nil || *c.LagSeconds != 0 {
		t.Errorf("lag in seconds ahead of the source: %v, want 0", c.LagSeconds)
	}

	// Moving again starts over.
	check("moved on again", status(beyond-1), beyond-1, 0)
}

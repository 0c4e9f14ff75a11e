package fsm

import (
	"errors"
	"testing"
)

// clockStep is one command of a clock scenario and what it must meet: the
// refusal (nil for a grant), the time it is applied at, and the lease after.
type clockStep struct {
	what    string
	cmd     Command
	wantErr error
	wantAt  int64
	holder  string
	token   uint64
	expires int64
}

func runClockSteps(t *testing.T, s *State, steps []clockStep) {
	t.Helper()
	for _, st := range steps {
		before := s.Clock
		res := s.Apply(st.cmd)
		switch {
		case st.wantErr == nil && res.Err != nil:
			t.Fatalf("%s: refused: %v", st.what, res.Err)
		case st.wantErr != nil && !errors.Is(res.Err, st.wantErr):
			t.Fatalf("%s: err = %v, want %v", st.what, res.Err, st.wantErr)
		}
		if res.Now != st.wantAt || s.Clock != st.wantAt {
			t.Errorf("%s: applied at %d (clock %d), want %d", st.what, res.Now-t0, s.Clock-t0, st.wantAt-t0)
		}
		if s.Clock < before {
			t.Errorf("%s: the clock went back from %d to %d", st.what, before-t0, s.Clock-t0)
		}
		if l := s.Lease; l.Holder != st.holder || l.Token != st.token || l.ExpiresAt != st.expires {
			t.Errorf("%s: lease %s/%d until %d, want %s/%d until %d", st.what,
				l.Holder, l.Token, l.ExpiresAt-t0, st.holder, st.token, st.expires-t0)
		}
	}
}

// TestClockNeverGoesBackWithinATerm replays the shape of the soak's false
// alarms: a release and an acquire proposed at once are applied in the
// other order than their stamps. The acquire, applied first, meets the
// lease; the release, stamped earlier, is applied at the acquire's time,
// not before it.
func TestClockNeverGoesBackWithinATerm(t *testing.T) {
	s := State{}
	const ms = sec / 1000
	runClockSteps(t, &s, []clockStep{
		{what: "n2 acquires", cmd: Command{Op: OpAcquire, Node: "n2", TTL: ttl, Now: t0},
			wantAt: t0, holder: "n2", token: 1, expires: t0 + int64(ttl)},
		{what: "n1's acquire, stamped after the release, is applied before it",
			cmd:     Command{Op: OpAcquire, Node: "n1", TTL: ttl, Now: t0 + 20*ms},
			wantErr: ErrLeaseHeld, wantAt: t0 + 20*ms, holder: "n2", token: 1, expires: t0 + int64(ttl)},
		{what: "n2's release, stamped earlier, is applied at the clock",
			cmd:    Command{Op: OpAdvance, Node: "n2", Token: 1, Now: t0 + 18*ms, Advance: &Advance{LastEventID: 10, Events: 10}},
			wantAt: t0 + 20*ms, holder: "", token: 1, expires: 0},
		{what: "n1's next acquire is granted",
			cmd:    Command{Op: OpAcquire, Node: "n1", TTL: ttl, Now: t0 + 21*ms},
			wantAt: t0 + 21*ms, holder: "n1", token: 2, expires: t0 + 21*ms + int64(ttl)},
		{what: "a stamp from the past renews from the clock, never into the past",
			cmd:    Command{Op: OpRenew, Node: "n1", Token: 2, TTL: ttl, Now: t0 + 5*ms},
			wantAt: t0 + 21*ms, holder: "n1", token: 2, expires: t0 + 21*ms + int64(ttl)},
	})
}

// TestSlowNewLeaderCannotExpireALeaseEarly: after an election the new
// leader's clock is 3s behind the old one's. Its stamps are applied at the
// state's clock until its own clock catches up, so a lease granted by the
// old leader runs to its expiry on the state's clock: in real time it
// lasts up to 3s longer, never shorter.
func TestSlowNewLeaderCannotExpireALeaseEarly(t *testing.T) {
	s := State{}
	const skew = 3 * sec
	grant := t0
	expires := grant + int64(ttl)
	runClockSteps(t, &s, []clockStep{
		{what: "the old leader grants n1 the lease", cmd: Command{Op: OpAcquire, Node: "n1", TTL: ttl, Now: grant},
			wantAt: grant, holder: "n1", token: 1, expires: expires},
		// One second later in real time the new leader stamps t0+1s-3s.
		{what: "the new leader's first stamp is behind the clock",
			cmd:     Command{Op: OpAcquire, Node: "n2", TTL: ttl, Now: grant + sec - skew},
			wantErr: ErrLeaseHeld, wantAt: grant, holder: "n1", token: 1, expires: expires},
		// Real time is past the expiry by 1s, the new leader's clock is not.
		{what: "a standby's acquire at real expiry+1s is still refused",
			cmd:     Command{Op: OpAcquire, Node: "n2", TTL: ttl, Now: expires + sec - skew},
			wantErr: ErrLeaseHeld, wantAt: expires + sec - skew, holder: "n1", token: 1, expires: expires},
		{what: "once the new leader's clock passes the expiry, the lease is taken over",
			cmd:    Command{Op: OpAcquire, Node: "n2", TTL: ttl, Now: expires},
			wantAt: expires, holder: "n2", token: 2, expires: expires + int64(ttl)},
	})
}

// TestFastNewLeaderExpiresALeaseEarlyButFencingHolds: the new leader's
// clock is 3s ahead. The state's clock jumps with its first stamp, so the
// lease expires up to 3s early in real time and a standby takes it over
// while the old holder may still believe it holds the lease. The old
// holder's token is stale from then on: its advance is refused, and the
// tracking database's fence row refuses its writes (package cursor).
func TestFastNewLeaderExpiresALeaseEarlyButFencingHolds(t *testing.T) {
	s := State{}
	const skew = 3 * sec
	expires := t0 + int64(ttl)
	runClockSteps(t, &s, []clockStep{
		{what: "the old leader grants n1 the lease", cmd: Command{Op: OpAcquire, Node: "n1", TTL: ttl, Now: t0},
			wantAt: t0, holder: "n1", token: 1, expires: expires},
		// Real time t0+2.5s: before the expiry, but the new leader stamps t0+5.5s.
		{what: "a standby's acquire 2.5s before the real expiry is granted",
			cmd:    Command{Op: OpAcquire, Node: "n2", TTL: ttl, Now: expires - 2500*sec/1000 + skew},
			wantAt: expires + 500*sec/1000, holder: "n2", token: 2, expires: expires + 500*sec/1000 + int64(ttl)},
		{what: "the old holder's advance under token 1 is refused",
			cmd:     Command{Op: OpAdvance, Node: "n1", Token: 1, Now: t0 + 4*sec, Advance: &Advance{LastEventID: 10, Events: 10}},
			wantErr: ErrStaleToken, wantAt: expires + 500*sec/1000, holder: "n2", token: 2, expires: expires + 500*sec/1000 + int64(ttl)},
	})
}

// TestClockIsRestoredFromASnapshot: a replica that restores a snapshot
// goes on from the snapshot's clock, so a late stamp after the restore is
// applied where every other replica applies it.
func TestClockIsRestoredFromASnapshot(t *testing.T) {
	f := richFSM(t)
	st := f.State()
	if st.Clock == 0 {
		t.Fatal("the rich state has no clock")
	}
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	g := New()
	if err := g.Restore(&readCloser{Reader: &sink.Buffer}); err != nil {
		t.Fatal(err)
	}
	late := Command{Op: OpSetPaused, Paused: false, Now: st.Clock - sec}
	want := st.Clone()
	want.Apply(late)
	res := applyLog(t, g, 100, late)
	if res.Now != st.Clock || g.State().Clock != want.Clock {
		t.Errorf("late stamp after a restore applied at %d (clock %d), want %d", res.Now, g.State().Clock, st.Clock)
	}
}

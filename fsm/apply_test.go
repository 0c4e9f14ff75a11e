package fsm

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

// Times in these tests are Unix nanoseconds around t0, as the leader stamps
// them into commands.
const (
	t0  = int64(1_764_000_000_000_000_000)
	ttl = 5 * time.Second
	sec = int64(time.Second)
)

// rich returns a fresh, fully populated state with a free lease whose latest
// grant was token 7. Every call builds new maps and slices, so two calls give
// independent values: tests compare against a second call instead of relying
// on Clone, which is itself under test.
func rich() State {
	return State{
		Lease:  Lease{Token: 7},
		Cursor: Cursor{LastEventID: 100, LastEventDate: t0 - 60*sec},
		Gaps:   []Gap{{ID: 90, FirstSeen: t0 - 30*sec}, {ID: 95, FirstSeen: t0 - 20*sec}},
		Members: map[string]Member{
			"a": {ID: "a", RaftAddr: "10.0.0.1:8471", HTTPAddr: "10.0.0.1:8470"},
			"b": {ID: "b", RaftAddr: "10.0.0.2:8471", HTTPAddr: "10.0.0.2:8470"},
		},
		Stats:      Stats{EventsProcessed: 1000, Batches: 10, DeadLetters: 3, GapsDropped: 1},
		LastHolder: "a",
	}
}

// heldBy returns rich() with the lease (token 7) held by node until expires.
func heldBy(node string, expires int64) func() State {
	return func() State {
		s := rich()
		s.Lease.Holder, s.Lease.ExpiresAt = node, expires
		s.LastHolder = node
		return s
	}
}

// heldWithToken returns rich() with the lease held by node under token until
// expires.
func heldWithToken(node string, token uint64, expires int64) func() State {
	return func() State {
		s := heldBy(node, expires)()
		s.Lease.Token = token
		return s
	}
}

// free returns rich(): a lease released by its holder (not revoked).
func free() State { return rich() }

// revokedFrom returns rich() with the current grant (token 7) of node revoked
// by the leader.
func revokedFrom(node string) func() State {
	return func() State {
		s := rich()
		s.RevokedFrom = node
		return s
	}
}

func paused(given func() State) func() State {
	return func() State {
		s := given()
		s.Cursor.Paused = true
		return s
	}
}

// applyCase is one row of an Apply table. The state after the command is
// given() changed by change, with the clock at the applied time (the later
// of the stamp and given's clock) unless the command is invalid or was
// added after protocol 0 (it never moves the clock); a refused
// command (wantErr != nil) must leave everything else of given() as it was,
// so change must be nil.
type applyCase struct {
	name    string
	given   func() State
	cmd     Command
	wantErr error
	change  func(s *State)
}

func runApplyCases(t *testing.T, cases []applyCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.wantErr != nil && tc.change != nil {
				t.Fatal("bad test case: a refused command cannot change the state")
			}
			// The fixtures leave the derived checksum to this.
			s := tc.given()
			s.GapsSum = GapSum(s.Gaps)
			want := tc.given()
			if tc.cmd.Validate() == nil && tc.cmd.Op.AddedIn() == 0 {
				want.Clock = max(want.Clock, tc.cmd.Now)
			}
			if tc.change != nil {
				tc.change(&want)
			}
			want.GapsSum = GapSum(want.Gaps)
			res := s.Apply(tc.cmd)
			checkResult(t, s, res, tc.wantErr)
			if !reflect.DeepEqual(s, want) {
				t.Errorf("state after %s:\n got %+v\nwant %+v", tc.cmd.Op, s, want)
			}
		})
	}
}

// checkResult checks that res reports wantErr (nil for success) and the state
// s it left behind.
func checkResult(t *testing.T, s State, res Result, wantErr error) {
	t.Helper()
	switch {
	case wantErr == nil && res.Err != nil:
		t.Errorf("unexpected refusal: %v", res.Err)
	case wantErr != nil && !errors.Is(res.Err, wantErr):
		t.Errorf("err = %v, want %v", res.Err, wantErr)
	}
	if res.Lease != s.Lease || res.Cursor != s.Cursor {
		t.Errorf("result reports lease %+v cursor %+v, state holds lease %+v cursor %+v",
			res.Lease, res.Cursor, s.Lease, s.Cursor)
	}
}

func TestAcquireGrantsFreeExpiredOrOwnLease(t *testing.T) {
	runApplyCases(t, []applyCase{
		{
			name:  "free lease is granted with the next token",
			given: free,
			cmd:   Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: t0},
			change: func(s *State) {
				s.Lease = Lease{Holder: "b", Token: 8, ExpiresAt: t0 + int64(ttl)}
				s.LastHolder = "b"
			},
		},
		{
			name:  "first grant of a fresh cluster is token 1",
			given: func() State { return State{} },
			cmd:   Command{Op: OpAcquire, Node: "a", TTL: ttl, Now: t0},
			change: func(s *State) {
				s.Lease = Lease{Holder: "a", Token: 1, ExpiresAt: t0 + int64(ttl)}
				s.LastHolder = "a"
			},
		},
		{
			name:  "another peer's expired lease is taken over",
			given: heldBy("a", t0-1),
			cmd:   Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: t0},
			change: func(s *State) {
				s.Lease = Lease{Holder: "b", Token: 8, ExpiresAt: t0 + int64(ttl)}
				s.LastHolder = "b"
			},
		},
		{
			name:  "lease expiring exactly at Now is taken over",
			given: heldBy("a", t0),
			cmd:   Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: t0},
			change: func(s *State) {
				s.Lease = Lease{Holder: "b", Token: 8, ExpiresAt: t0 + int64(ttl)}
				s.LastHolder = "b"
			},
		},
		{
			name:  "lease revoked from another peer is granted and settles the revoked grant",
			given: revokedFrom("a"),
			cmd:   Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: t0},
			change: func(s *State) {
				s.Lease = Lease{Holder: "b", Token: 8, ExpiresAt: t0 + int64(ttl)}
				s.LastHolder = "b"
				s.RevokedFrom = ""
			},
		},
		{
			name:  "own unexpired lease is granted again with a new token",
			given: heldBy("a", t0+3*sec),
			cmd:   Command{Op: OpAcquire, Node: "a", TTL: ttl, Now: t0},
			change: func(s *State) {
				s.Lease = Lease{Holder: "a", Token: 8, ExpiresAt: t0 + int64(ttl)}
			},
		},
		{
			name:  "own expired lease is granted again with a new token",
			given: heldBy("a", t0-sec),
			cmd:   Command{Op: OpAcquire, Node: "a", TTL: 2 * time.Second, Now: t0},
			change: func(s *State) {
				s.Lease = Lease{Holder: "a", Token: 8, ExpiresAt: t0 + 2*sec}
			},
		},
	})
}

func TestAcquireRefusedWhileLeaseUnexpired(t *testing.T) {
	runApplyCases(t, []applyCase{
		{
			name:    "another peer holds the lease for seconds",
			given:   heldBy("a", t0+3*sec),
			cmd:     Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: t0},
			wantErr: ErrLeaseHeld,
		},
		{
			name:    "another peer holds the lease for one more nanosecond",
			given:   heldBy("a", t0+1),
			cmd:     Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: t0},
			wantErr: ErrLeaseHeld,
		},
	})
}

// reservedFor is given() with the next grant reserved for node until until.
func reservedFor(node string, until int64, given func() State) func() State {
	return func() State {
		s := given()
		s.Reservation = &Reservation{Node: node, Until: until}
		return s
	}
}

func TestReservationHoldsTheNextGrantForOneNode(t *testing.T) {
	runApplyCases(t, []applyCase{
		{
			name:  "reserve while another peer holds the lease",
			given: heldBy("a", t0+3*sec),
			cmd:   Command{Op: OpReserve, Node: "op", TTL: 10 * time.Second, Now: t0},
			change: func(s *State) {
				s.Reservation = &Reservation{Node: "op", Until: t0 + 10*sec}
			},
		},
		{
			name:    "another node's acquire of a free lease is refused",
			given:   reservedFor("op", t0+sec, free),
			cmd:     Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: t0},
			wantErr: ErrLeaseHeld,
		},
		{
			name:  "the reserving node's acquire is granted and ends the reservation",
			given: reservedFor("op", t0+sec, heldBy("a", t0-sec)),
			cmd:   Command{Op: OpAcquire, Node: "op", TTL: ttl, Now: t0},
			change: func(s *State) {
				s.Lease = Lease{Holder: "op", Token: s.Lease.Token + 1, ExpiresAt: t0 + int64(ttl)}
				s.LastHolder, s.Reservation = "op", nil
			},
		},
		{
			name:  "a reservation that ran out holds nothing",
			given: reservedFor("op", t0, free),
			cmd:   Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: t0},
			change: func(s *State) {
				s.Lease = Lease{Holder: "b", Token: s.Lease.Token + 1, ExpiresAt: t0 + int64(ttl)}
				s.LastHolder, s.Reservation = "b", nil
			},
		},
		{
			name:    "the reserving node still waits for the current holder",
			given:   reservedFor("op", t0+sec, heldBy("a", t0+sec)),
			cmd:     Command{Op: OpAcquire, Node: "op", TTL: ttl, Now: t0},
			wantErr: ErrLeaseHeld,
		},
		{
			name:    "a reservation needs a TTL",
			given:   free,
			cmd:     Command{Op: OpReserve, Node: "op", Now: t0},
			wantErr: ErrBadCommand,
		},
	})
}

func TestAcquireRefusedWhilePaused(t *testing.T) {
	runApplyCases(t, []applyCase{
		{
			name:    "free lease",
			given:   paused(free),
			cmd:     Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: t0},
			wantErr: ErrPaused,
		},
		{
			name:    "expired lease",
			given:   paused(heldBy("a", t0-sec)),
			cmd:     Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: t0},
			wantErr: ErrPaused,
		},
		{
			name:    "own unexpired lease",
			given:   paused(heldBy("a", t0+sec)),
			cmd:     Command{Op: OpAcquire, Node: "a", TTL: ttl, Now: t0},
			wantErr: ErrPaused,
		},
	})
}

// TestLeaseExpiresExactlyAtStampedTime pins the boundary: at Now ==
// ExpiresAt the lease is expired for every rule that looks at it.
func TestLeaseExpiresExactlyAtStampedTime(t *testing.T) {
	exp := t0 + int64(ttl)
	l := Lease{Holder: "a", Token: 3, ExpiresAt: exp}
	if !l.HeldAt(exp - 1) {
		t.Errorf("HeldAt(ExpiresAt-1) = false, want true")
	}
	if l.HeldAt(exp) {
		t.Errorf("HeldAt(ExpiresAt) = true, want false")
	}
	if (Lease{Token: 3, ExpiresAt: exp}).HeldAt(t0) {
		t.Errorf("a lease without holder is held")
	}

	runApplyCases(t, []applyCase{
		{
			name:    "acquire by another peer one nanosecond before expiry is refused",
			given:   heldBy("a", exp),
			cmd:     Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: exp - 1},
			wantErr: ErrLeaseHeld,
		},
		{
			name:  "acquire by another peer at expiry is granted",
			given: heldBy("a", exp),
			cmd:   Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: exp},
			change: func(s *State) {
				s.Lease = Lease{Holder: "b", Token: 8, ExpiresAt: exp + int64(ttl)}
				s.LastHolder = "b"
			},
		},
		{
			name:  "renew one nanosecond before expiry is accepted",
			given: heldBy("a", exp),
			cmd:   Command{Op: OpRenew, Node: "a", Token: 7, TTL: ttl, Now: exp - 1},
			change: func(s *State) {
				s.Lease.ExpiresAt = exp - 1 + int64(ttl)
			},
		},
		{
			name:    "renew at expiry is refused",
			given:   heldBy("a", exp),
			cmd:     Command{Op: OpRenew, Node: "a", Token: 7, TTL: ttl, Now: exp},
			wantErr: ErrLeaseExpired,
		},
	})
}

func TestRenew(t *testing.T) {
	runApplyCases(t, []applyCase{
		{
			name:  "holder extends its lease to Now+TTL",
			given: heldBy("a", t0+2*sec),
			cmd:   Command{Op: OpRenew, Node: "a", Token: 7, TTL: ttl, Now: t0 + sec},
			change: func(s *State) {
				s.Lease.ExpiresAt = t0 + sec + int64(ttl)
			},
		},
		{
			name:    "refused with a stale token",
			given:   heldBy("a", t0+2*sec),
			cmd:     Command{Op: OpRenew, Node: "a", Token: 6, TTL: ttl, Now: t0},
			wantErr: ErrStaleToken,
		},
		{
			name:    "refused with a future token",
			given:   heldBy("a", t0+2*sec),
			cmd:     Command{Op: OpRenew, Node: "a", Token: 8, TTL: ttl, Now: t0},
			wantErr: ErrStaleToken,
		},
		{
			name:    "refused for the wrong node",
			given:   heldBy("a", t0+2*sec),
			cmd:     Command{Op: OpRenew, Node: "b", Token: 7, TTL: ttl, Now: t0},
			wantErr: ErrStaleToken,
		},
		{
			name:    "refused after a newer grant to another peer",
			given:   heldWithToken("b", 8, t0+2*sec),
			cmd:     Command{Op: OpRenew, Node: "a", Token: 7, TTL: ttl, Now: t0},
			wantErr: ErrStaleToken,
		},
		{
			name:    "refused when the lease was released or revoked",
			given:   free,
			cmd:     Command{Op: OpRenew, Node: "a", Token: 7, TTL: ttl, Now: t0},
			wantErr: ErrStaleToken,
		},
		{
			name:    "refused after revocation",
			given:   revokedFrom("a"),
			cmd:     Command{Op: OpRenew, Node: "a", Token: 7, TTL: ttl, Now: t0},
			wantErr: ErrStaleToken,
		},
		{
			name:    "refused after expiry even though nobody took over",
			given:   heldBy("a", t0-sec),
			cmd:     Command{Op: OpRenew, Node: "a", Token: 7, TTL: ttl, Now: t0},
			wantErr: ErrLeaseExpired,
		},
		{
			name:  "accepted while paused: pausing stops new grants only",
			given: paused(heldBy("a", t0+sec)),
			cmd:   Command{Op: OpRenew, Node: "a", Token: 7, TTL: ttl, Now: t0},
			change: func(s *State) {
				s.Lease.ExpiresAt = t0 + int64(ttl)
			},
		},
	})
}

func TestRelease(t *testing.T) {
	runApplyCases(t, []applyCase{
		{
			name:  "holder frees the lease and the token stays",
			given: heldBy("a", t0+sec),
			cmd:   Command{Op: OpRelease, Node: "a", Token: 7, Now: t0},
			change: func(s *State) {
				s.Lease = Lease{Token: 7}
			},
		},
		{
			name:  "holder frees its expired lease if nobody took over",
			given: heldBy("a", t0-sec),
			cmd:   Command{Op: OpRelease, Node: "a", Token: 7, Now: t0},
			change: func(s *State) {
				s.Lease = Lease{Token: 7}
			},
		},
		{
			name:    "refused with a stale token",
			given:   heldBy("a", t0+sec),
			cmd:     Command{Op: OpRelease, Node: "a", Token: 6, Now: t0},
			wantErr: ErrStaleToken,
		},
		{
			name:    "refused for the wrong node",
			given:   heldBy("a", t0+sec),
			cmd:     Command{Op: OpRelease, Node: "b", Token: 7, Now: t0},
			wantErr: ErrStaleToken,
		},
		{
			name:    "refused when already free",
			given:   free,
			cmd:     Command{Op: OpRelease, Node: "a", Token: 7, Now: t0},
			wantErr: ErrStaleToken,
		},
		{
			name:    "refused after a newer grant",
			given:   heldWithToken("b", 8, t0+sec),
			cmd:     Command{Op: OpRelease, Node: "a", Token: 7, Now: t0},
			wantErr: ErrStaleToken,
		},
		{
			name:    "refused after revocation",
			given:   revokedFrom("a"),
			cmd:     Command{Op: OpRelease, Node: "a", Token: 7, Now: t0},
			wantErr: ErrStaleToken,
		},
	})
}

// delta rewrites a as a gap delta from base: closed leave, opened join.
func delta(a *Advance, base []Gap, closed []int64, opened ...Gap) *Advance {
	a.Gaps, a.GapsDelta, a.GapsBase, a.GapsClosed, a.GapsOpened = nil, true, GapSum(base), closed, opened
	return a
}

func TestAdvance(t *testing.T) {
	batch := func(last int64, gaps ...Gap) *Advance {
		return &Advance{LastEventID: last, LastEventDate: t0 - sec, Gaps: gaps, Events: 40, DeadLetters: 2, GapsDropped: 1}
	}
	// recorded is the effect of batch(150, gaps...) on rich().
	recorded := func(gaps ...Gap) func(s *State) {
		return func(s *State) {
			s.Cursor.LastEventID = 150
			s.Cursor.LastEventDate = t0 - sec
			s.Gaps = gaps
			s.Stats = Stats{EventsProcessed: 1040, Batches: 11, DeadLetters: 5, GapsDropped: 2}
			s.Lease.Holder, s.Lease.ExpiresAt = "", 0
			s.Lease.Advances++
			s.RevokedFrom = ""
		}
	}
	newGaps := []Gap{{ID: 95, FirstSeen: t0 - 20*sec}, {ID: 120, FirstSeen: t0 - 2*sec}, {ID: 149, FirstSeen: t0 - sec}}
	then := func(fs ...func(s *State)) func(s *State) {
		return func(s *State) {
			for _, f := range fs {
				f(s)
			}
		}
	}

	runApplyCases(t, []applyCase{
		{
			name:   "release-and-advance records the batch and frees the lease",
			given:  heldBy("a", t0+sec),
			cmd:    Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0, Advance: batch(150, newGaps...)},
			change: recorded(newGaps...),
		},
		{
			name:  "keep records the batch and renews the lease to Now+TTL",
			given: heldBy("a", t0+sec),
			cmd: Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0, TTL: 3 * time.Second,
				Advance: func() *Advance { a := batch(150, newGaps...); a.Keep = true; return a }()},
			change: then(recorded(newGaps...), func(s *State) {
				s.Lease = Lease{Holder: "a", Token: 7, ExpiresAt: t0 + 3*sec, Advances: 1}
			}),
		},
		{
			name:   "the gap set is replaced, not merged",
			given:  heldBy("a", t0+sec),
			cmd:    Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0, Advance: batch(150, Gap{ID: 149, FirstSeen: t0})},
			change: recorded(Gap{ID: 149, FirstSeen: t0}),
		},
		{
			name:   "an empty gap set closes every gap",
			given:  heldBy("a", t0+sec),
			cmd:    Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0, Advance: batch(150)},
			change: recorded(),
		},
		{
			name:  "a gap delta closes and opens gaps, keeping the others as they were",
			given: heldBy("a", t0+sec),
			cmd: Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0, Advance: delta(batch(150), rich().Gaps,
				[]int64{90}, Gap{ID: 120, FirstSeen: t0 - 2*sec}, Gap{ID: 149, FirstSeen: t0 - sec})},
			change: recorded(newGaps...),
		},
		{
			name:   "a gap delta that closes every gap",
			given:  heldBy("a", t0+sec),
			cmd:    Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0, Advance: delta(batch(150), rich().Gaps, []int64{90, 95})},
			change: recorded(),
		},
		{
			name:  "a gap delta made for another gap set is refused",
			given: heldBy("a", t0+sec),
			cmd: Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0,
				Advance: delta(batch(150), []Gap{{ID: 90}}, []int64{90})},
			wantErr: ErrGapBase,
		},
		{
			name:  "a gap delta that closes a gap that is not open is refused",
			given: heldBy("a", t0+sec),
			cmd: Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0,
				Advance: delta(batch(150), rich().Gaps, []int64{91})},
			wantErr: ErrBadCommand,
		},
		{
			name:  "a gap delta that opens a gap at or below the cursor is refused: it would apply an ID twice",
			given: heldBy("a", t0+sec),
			cmd: Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0,
				Advance: delta(batch(150), rich().Gaps, nil, Gap{ID: 100})},
			wantErr: ErrBadCommand,
		},
		{
			name:  "an empty batch keeps the position and date and counts no batch",
			given: heldBy("a", t0+sec),
			cmd: Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0,
				Advance: &Advance{LastEventID: 100, Gaps: []Gap{{ID: 90, FirstSeen: t0 - 30*sec}, {ID: 95, FirstSeen: t0 - 20*sec}}}},
			change: func(s *State) {
				s.Lease = Lease{Token: 7, Advances: 1}
			},
		},
		{
			name:   "accepted after expiry when nobody took over",
			given:  heldBy("a", t0-sec),
			cmd:    Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0, Advance: batch(150, newGaps...)},
			change: recorded(newGaps...),
		},
		{
			name:   "accepted after revocation while the token is still current",
			given:  revokedFrom("a"),
			cmd:    Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0, Advance: batch(150, newGaps...)},
			change: recorded(newGaps...),
		},
		{
			name:    "refused after revocation from another node than the revoked holder",
			given:   revokedFrom("a"),
			cmd:     Command{Op: OpAdvance, Node: "b", Token: 7, Now: t0, Advance: batch(150)},
			wantErr: ErrStaleToken,
		},
		{
			name:    "refused once the grant was released, so a retried advance is not counted twice",
			given:   free,
			cmd:     Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0, Advance: batch(150)},
			wantErr: ErrStaleToken,
		},
		{
			name:   "accepted while paused",
			given:  paused(heldBy("a", t0+sec)),
			cmd:    Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0, Advance: batch(150, newGaps...)},
			change: recorded(newGaps...),
		},
		{
			name:    "refused with a stale token",
			given:   heldBy("a", t0+sec),
			cmd:     Command{Op: OpAdvance, Node: "a", Token: 6, Now: t0, Advance: batch(150)},
			wantErr: ErrStaleToken,
		},
		{
			name:    "refused from another node than the holder",
			given:   heldBy("a", t0+sec),
			cmd:     Command{Op: OpAdvance, Node: "b", Token: 7, Now: t0, Advance: batch(150)},
			wantErr: ErrStaleToken,
		},
		{
			name:    "refused after a newer grant to another peer",
			given:   heldWithToken("b", 8, t0+sec),
			cmd:     Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0, Advance: batch(150)},
			wantErr: ErrStaleToken,
		},
		{
			name:    "refused after a newer grant that was released again",
			given:   func() State { s := free(); s.Lease.Token = 8; return s },
			cmd:     Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0, Advance: batch(150)},
			wantErr: ErrStaleToken,
		},
		{
			name:    "refused when the cursor would move backwards",
			given:   heldBy("a", t0+sec),
			cmd:     Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0, Advance: batch(99)},
			wantErr: ErrCursorBackwards,
		},
		{
			name:  "keep is refused after revocation: a revoked grant cannot be renewed",
			given: revokedFrom("a"),
			cmd: Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0, TTL: ttl,
				Advance: func() *Advance { a := batch(150); a.Keep = true; return a }()},
			wantErr: ErrStaleToken,
		},
	})
}

// TestAdvanceRefusedBeforeAnyGrant: token 0 names no grant ("0 before the
// first"), so a release-and-advance carrying it (or carrying no token at all,
// which decodes to 0) must not move the cursor of a fresh cluster.
func TestAdvanceRefusedBeforeAnyGrant(t *testing.T) {
	runApplyCases(t, []applyCase{
		{
			name:    "fresh cluster",
			given:   func() State { return State{} },
			cmd:     Command{Op: OpAdvance, Node: "a", Token: 0, Now: t0, Advance: &Advance{LastEventID: 1000, Events: 1000}},
			wantErr: ErrStaleToken,
		},
	})
}

// TestRetriedAdvanceNotCountedTwice: a holder whose answer to
// release-and-advance was lost retries it; the retry must be refused so that
// the counters are not added twice, whether the grant ended by the advance
// itself or after a revocation.
func TestRetriedAdvanceNotCountedTwice(t *testing.T) {
	for name, given := range map[string]func() State{
		"held":    heldBy("a", t0+sec),
		"revoked": revokedFrom("a"),
	} {
		t.Run(name, func(t *testing.T) {
			s := given()
			c := Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0, Advance: &Advance{LastEventID: 150, Events: 50}}
			if res := s.Apply(c); res.Err != nil {
				t.Fatalf("first advance refused: %v", res.Err)
			}
			after := s.Clone()
			res := s.Apply(c)
			checkResult(t, s, res, ErrStaleToken)
			if !reflect.DeepEqual(s, after) {
				t.Errorf("retry changed the state:\n got %+v\nwant %+v", s, after)
			}
			if s.Stats.EventsProcessed != 1050 || s.Stats.Batches != 11 {
				t.Errorf("stats = %+v, want the batch counted once", s.Stats)
			}
		})
	}
}

func TestRevoke(t *testing.T) {
	runApplyCases(t, []applyCase{
		{
			name:  "current grant is freed, the token stays and the holder is remembered",
			given: heldBy("a", t0+sec),
			cmd:   Command{Op: OpRevoke, Token: 7, Now: t0, Reason: "node a left"},
			change: func(s *State) {
				s.Lease = Lease{Token: 7}
				s.RevokedFrom = "a"
			},
		},
		{
			name:  "current expired grant is freed",
			given: heldBy("a", t0-sec),
			cmd:   Command{Op: OpRevoke, Token: 7, Now: t0},
			change: func(s *State) {
				s.Lease = Lease{Token: 7}
				s.RevokedFrom = "a"
			},
		},
		{
			name:    "already revoked lease is refused",
			given:   revokedFrom("a"),
			cmd:     Command{Op: OpRevoke, Token: 7, Now: t0},
			wantErr: ErrStaleToken,
		},
		{
			name:    "stale token never frees a newer grant",
			given:   heldWithToken("b", 8, t0+sec),
			cmd:     Command{Op: OpRevoke, Token: 7, Now: t0},
			wantErr: ErrStaleToken,
		},
		{
			name:    "future token is refused",
			given:   heldBy("a", t0+sec),
			cmd:     Command{Op: OpRevoke, Token: 8, Now: t0},
			wantErr: ErrStaleToken,
		},
		{
			name:    "already free lease is refused",
			given:   free,
			cmd:     Command{Op: OpRevoke, Token: 7, Now: t0},
			wantErr: ErrStaleToken,
		},
	})
}

func TestMembers(t *testing.T) {
	c := Member{ID: "c", RaftAddr: "10.0.0.3:8471", HTTPAddr: "10.0.0.3:8470"}
	runApplyCases(t, []applyCase{
		{
			name:  "set_member on a fresh cluster creates the table",
			given: func() State { return State{} },
			cmd:   Command{Op: OpSetMember, Member: &c},
			change: func(s *State) {
				s.Members = map[string]Member{"c": c}
			},
		},
		{
			name:  "set_member inserts",
			given: heldBy("a", t0+sec),
			cmd:   Command{Op: OpSetMember, Member: &c},
			change: func(s *State) {
				s.Members["c"] = c
			},
		},
		{
			name:  "set_member replaces",
			given: free,
			cmd:   Command{Op: OpSetMember, Member: &Member{ID: "b", RaftAddr: "10.0.0.9:8471"}},
			change: func(s *State) {
				s.Members["b"] = Member{ID: "b", RaftAddr: "10.0.0.9:8471"}
			},
		},
		{
			name:  "remove_member forgets the node",
			given: free,
			cmd:   Command{Op: OpRemoveMember, Node: "b"},
			change: func(s *State) {
				delete(s.Members, "b")
			},
		},
		{
			name:  "remove_member of an unknown node changes nothing",
			given: free,
			cmd:   Command{Op: OpRemoveMember, Node: "zz"},
		},
		{
			name:  "remove_member on a fresh cluster changes nothing",
			given: func() State { return State{} },
			cmd:   Command{Op: OpRemoveMember, Node: "a"},
		},
	})

	// The table must not alias the command's Member.
	var s State
	m := Member{ID: "d", RaftAddr: "10.0.0.4:8471"}
	s.Apply(Command{Op: OpSetMember, Member: &m})
	m.RaftAddr = "changed"
	if got := s.Members["d"].RaftAddr; got != "10.0.0.4:8471" {
		t.Errorf("member aliases the command: raft_addr = %q", got)
	}
}

func TestSetPaused(t *testing.T) {
	runApplyCases(t, []applyCase{
		{
			name:  "pause keeps the current grant",
			given: heldBy("a", t0+sec),
			cmd:   Command{Op: OpSetPaused, Paused: true},
			change: func(s *State) {
				s.Cursor.Paused = true
			},
		},
		{
			name:  "resume",
			given: paused(free),
			cmd:   Command{Op: OpSetPaused, Paused: false},
			change: func(s *State) {
				s.Cursor.Paused = false
			},
		},
		{
			name:  "pause twice is accepted",
			given: paused(free),
			cmd:   Command{Op: OpSetPaused, Paused: true},
		},
	})
}

// TestPauseStopsNewGrantsButNotCurrentGrant runs the pause scenario end to end:
// the holder finishes its batch under its token, nobody gets a new grant until
// processing resumes.
func TestPauseStopsNewGrantsButNotCurrentGrant(t *testing.T) {
	s := State{}
	step := func(c Command, wantErr error) Result {
		t.Helper()
		res := s.Apply(c)
		checkResult(t, s, res, wantErr)
		return res
	}
	step(Command{Op: OpAcquire, Node: "a", TTL: ttl, Now: t0}, nil)
	step(Command{Op: OpSetPaused, Paused: true}, nil)
	step(Command{Op: OpRenew, Node: "a", Token: 1, TTL: ttl, Now: t0 + sec}, nil)
	// A holder draining a backlog may not keep the lease past a pause.
	step(Command{Op: OpAdvance, Node: "a", Token: 1, TTL: ttl, Now: t0 + 2*sec, Advance: &Advance{LastEventID: 10, Events: 10, Keep: true}}, ErrPaused)
	step(Command{Op: OpAdvance, Node: "a", Token: 1, Now: t0 + 2*sec, Advance: &Advance{LastEventID: 10, Events: 10}}, nil)
	step(Command{Op: OpAcquire, Node: "a", TTL: ttl, Now: t0 + 3*sec}, ErrPaused)
	step(Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: t0 + 3*sec}, ErrPaused)
	step(Command{Op: OpSetPaused, Paused: false}, nil)
	res := step(Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: t0 + 4*sec}, nil)
	if want := (Lease{Holder: "b", Token: 2, ExpiresAt: t0 + 4*sec + int64(ttl)}); res.Lease != want {
		t.Errorf("lease after resume = %+v, want %+v", res.Lease, want)
	}
	if s.Cursor.LastEventID != 10 {
		t.Errorf("cursor = %d, want 10", s.Cursor.LastEventID)
	}
}

// invalidCommands lists commands that Validate must refuse, one per rule.
func invalidCommands() map[string]Command {
	adv := func(a Advance) *Advance { return &a }
	return map[string]Command{
		"empty op":                         {Node: "a", TTL: ttl},
		"unknown op":                       {Op: "steal", Node: "a", TTL: ttl},
		"op names are case sensitive":      {Op: "ACQUIRE", Node: "a", TTL: ttl},
		"acquire without node":             {Op: OpAcquire, TTL: ttl, Now: t0},
		"acquire without ttl":              {Op: OpAcquire, Node: "a", Now: t0},
		"acquire with negative ttl":        {Op: OpAcquire, Node: "a", TTL: -ttl, Now: t0},
		"renew without node":               {Op: OpRenew, Token: 7, TTL: ttl, Now: t0},
		"renew without ttl":                {Op: OpRenew, Node: "a", Token: 7, Now: t0},
		"release without node":             {Op: OpRelease, Token: 7, Now: t0},
		"advance without node":             {Op: OpAdvance, Token: 7, Advance: adv(Advance{LastEventID: 150})},
		"advance without payload":          {Op: OpAdvance, Node: "a", Token: 7},
		"advance keep without ttl":         {Op: OpAdvance, Node: "a", Token: 7, Advance: adv(Advance{LastEventID: 150, Keep: true})},
		"advance to a negative id":         {Op: OpAdvance, Node: "a", Token: 7, Advance: adv(Advance{LastEventID: -1})},
		"advance with gap 0":               {Op: OpAdvance, Node: "a", Token: 7, Advance: adv(Advance{LastEventID: 150, Gaps: []Gap{{ID: 0}}})},
		"gap delta with a gap set":         {Op: OpAdvance, Node: "a", Token: 7, Advance: adv(Advance{LastEventID: 150, GapsDelta: true, Gaps: []Gap{{ID: 3}}})},
		"opened gaps without gaps_delta":   {Op: OpAdvance, Node: "a", Token: 7, Advance: adv(Advance{LastEventID: 150, GapsOpened: []Gap{{ID: 3}}})},
		"closed gaps not sorted":           {Op: OpAdvance, Node: "a", Token: 7, Advance: adv(Advance{LastEventID: 150, GapsDelta: true, GapsClosed: []int64{5, 4}})},
		"opened gap above the new cursor":  {Op: OpAdvance, Node: "a", Token: 7, Advance: adv(Advance{LastEventID: 150, GapsDelta: true, GapsOpened: []Gap{{ID: 150}}})},
		"advance with a negative gap":      {Op: OpAdvance, Node: "a", Token: 7, Advance: adv(Advance{LastEventID: 150, Gaps: []Gap{{ID: -5}}})},
		"advance with a gap at the cursor": {Op: OpAdvance, Node: "a", Token: 7, Advance: adv(Advance{LastEventID: 150, Gaps: []Gap{{ID: 150}}})},
		"advance with a gap past the cursor": {Op: OpAdvance, Node: "a", Token: 7,
			Advance: adv(Advance{LastEventID: 150, Gaps: []Gap{{ID: 120}, {ID: 151}}})},
		"advance with unsorted gaps": {Op: OpAdvance, Node: "a", Token: 7,
			Advance: adv(Advance{LastEventID: 150, Gaps: []Gap{{ID: 120}, {ID: 110}}})},
		"advance with duplicate gaps": {Op: OpAdvance, Node: "a", Token: 7,
			Advance: adv(Advance{LastEventID: 150, Gaps: []Gap{{ID: 120}, {ID: 120}}})},
		"revoke without token":            {Op: OpRevoke, Now: t0},
		"set_member without member":       {Op: OpSetMember},
		"set_member without id":           {Op: OpSetMember, Member: &Member{RaftAddr: "10.0.0.3:8471"}},
		"set_member without raft address": {Op: OpSetMember, Member: &Member{ID: "c", HTTPAddr: "10.0.0.3:8470"}},
		"remove_member without node":      {Op: OpRemoveMember},
	}
}

func TestInvalidCommandsRefusedWithErrBadCommand(t *testing.T) {
	for name, c := range invalidCommands() {
		t.Run(name, func(t *testing.T) {
			if err := c.Validate(); !errors.Is(err, ErrBadCommand) {
				t.Errorf("Validate() = %v, want %v", err, ErrBadCommand)
			}
			b, err := c.Encode()
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if _, err := DecodeCommand(b); !errors.Is(err, ErrBadCommand) {
				t.Errorf("DecodeCommand(%s) = %v, want %v", b, err, ErrBadCommand)
			}
			for _, given := range []func() State{free, heldBy("a", t0+sec), func() State { return State{} }} {
				s, want := given(), given()
				res := s.Apply(c)
				checkResult(t, s, res, ErrBadCommand)
				if !reflect.DeepEqual(s, want) {
					t.Errorf("refused command changed the state:\n got %+v\nwant %+v", s, want)
				}
			}
		})
	}
}

func TestValidCommandsPassValidate(t *testing.T) {
	for _, c := range []Command{
		{Op: OpAcquire, Node: "a", TTL: 1},
		{Op: OpRenew, Node: "a", TTL: 1},
		{Op: OpRelease, Node: "a"},
		{Op: OpAdvance, Node: "a", Advance: &Advance{}},
		{Op: OpAdvance, Node: "a", TTL: 1, Advance: &Advance{LastEventID: 3, Keep: true, Gaps: []Gap{{ID: 1}, {ID: 2}}}},
		{Op: OpRevoke, Token: 1},
		{Op: OpSetMember, Member: &Member{ID: "a", RaftAddr: "x:1"}},
		{Op: OpRemoveMember, Node: "a"},
		{Op: OpSetPaused},
	} {
		if err := c.Validate(); err != nil {
			t.Errorf("Validate(%+v) = %v, want nil", c, err)
		}
	}
}

// TestRefusedCommandLeavesStateUnchanged applies one refused command of every
// kind in a row to a rich state with a held lease and compares the state after
// each with an independently built copy.
func TestRefusedCommandLeavesStateUnchanged(t *testing.T) {
	given := paused(heldBy("a", t0+sec))
	s := given()
	refused := []struct {
		cmd     Command
		wantErr error
	}{
		{Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: t0}, ErrPaused},
		{Command{Op: OpRenew, Node: "a", Token: 6, TTL: ttl, Now: t0}, ErrStaleToken},
		{Command{Op: OpRenew, Node: "a", Token: 7, TTL: ttl, Now: t0 + sec}, ErrLeaseExpired},
		{Command{Op: OpRelease, Node: "b", Token: 7, Now: t0}, ErrStaleToken},
		{Command{Op: OpAdvance, Node: "b", Token: 7, Now: t0, Advance: &Advance{LastEventID: 200, Gaps: []Gap{{ID: 1}}, Events: 9}}, ErrStaleToken},
		{Command{Op: OpAdvance, Node: "a", Token: 7, Now: t0, Advance: &Advance{LastEventID: 50, Events: 9, DeadLetters: 1}}, ErrCursorBackwards},
		{Command{Op: OpRevoke, Token: 6, Now: t0}, ErrStaleToken},
		{Command{Op: OpSetMember, Member: &Member{ID: "a"}}, ErrBadCommand},
		{Command{Op: OpRemoveMember}, ErrBadCommand},
		{Command{Op: "bogus"}, ErrBadCommand},
	}
	for i, r := range refused {
		clock := s.Clock
		res := s.Apply(r.cmd)
		if !errors.Is(res.Err, r.wantErr) {
			t.Errorf("step %d (%s): err = %v, want %v", i, r.cmd.Op, res.Err, r.wantErr)
		}
		// A refused command was applied all the same: the clock moves to
		// its time (an invalid one is not applied and leaves it).
		wantClock := clock
		if r.cmd.Validate() == nil {
			wantClock = max(clock, r.cmd.Now)
		}
		if s.Clock != wantClock {
			t.Errorf("step %d (%s): clock %d, want %d", i, r.cmd.Op, s.Clock, wantClock)
		}
		want := given()
		want.Clock = s.Clock
		if !reflect.DeepEqual(s, want) {
			t.Fatalf("step %d (%s) changed the state:\n got %+v\nwant %+v", i, r.cmd.Op, s, want)
		}
	}

	// Without the pause, the same acquire meets the unexpired lease. (On s
	// it would not: the refused renew at t0+sec moved the clock to the
	// lease's expiry.)
	s = given()
	s.Cursor.Paused = false
	before := s.Clone()
	before.Clock = t0
	if res := s.Apply(Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: t0}); !errors.Is(res.Err, ErrLeaseHeld) {
		t.Errorf("acquire: err = %v, want %v", res.Err, ErrLeaseHeld)
	}
	if !reflect.DeepEqual(s, before) {
		t.Errorf("refused acquire changed the state:\n got %+v\nwant %+v", s, before)
	}
}

// TestTokensStrictlyIncreaseOverScriptedSequence drives three peers through
// a long script of grants, renewals, batches, expiries, revocations, pauses
// and stale commands; every grant must take exactly the next token, and no
// other command may touch the token.
func TestTokensStrictlyIncreaseOverScriptedSequence(t *testing.T) {
	var s State
	nodes := []string{"a", "b", "c"}
	now := t0
	seen := map[uint64]bool{}
	var grants int
	var lastToken uint64
	var cursor int64

	apply := func(c Command) Result {
		t.Helper()
		before := s.Lease.Token
		res := s.Apply(c)
		switch {
		case c.Op == OpAcquire && res.Err == nil:
			if s.Lease.Token != before+1 {
				t.Fatalf("grant to %s took token %d after %d", c.Node, s.Lease.Token, before)
			}
			if seen[s.Lease.Token] {
				t.Fatalf("token %d granted twice", s.Lease.Token)
			}
			seen[s.Lease.Token] = true
			grants++
		case s.Lease.Token != before:
			t.Fatalf("%s (err %v) changed the token from %d to %d", c.Op, res.Err, before, s.Lease.Token)
		}
		if s.Lease.Token < lastToken {
			t.Fatalf("token went back from %d to %d", lastToken, s.Lease.Token)
		}
		lastToken = s.Lease.Token
		return res
	}

	for round := 0; round < 500; round++ {
		n := nodes[round%len(nodes)]
		other := nodes[(round+1)%len(nodes)]
		now += sec
		res := apply(Command{Op: OpAcquire, Node: n, TTL: ttl, Now: now})
		if res.Err != nil {
			t.Fatalf("round %d: acquire by %s refused: %v (lease %+v)", round, n, res.Err, s.Lease)
		}
		tok := res.Lease.Token
		// A competitor is refused while the lease is unexpired.
		if r := apply(Command{Op: OpAcquire, Node: other, TTL: ttl, Now: now + 1}); !errors.Is(r.Err, ErrLeaseHeld) {
			t.Fatalf("round %d: competing acquire: err = %v, want %v", round, r.Err, ErrLeaseHeld)
		}
		apply(Command{Op: OpRenew, Node: n, Token: tok, TTL: ttl, Now: now + 2})
		apply(Command{Op: OpRenew, Node: n, Token: tok - 1, TTL: ttl, Now: now + 2})
		cursor += int64(round % 7)
		switch round % 5 {
		case 0: // release-and-advance
			apply(Command{Op: OpAdvance, Node: n, Token: tok, Now: now + 3, Advance: &Advance{LastEventID: cursor, Events: 1}})
		case 1: // keep, then release
			apply(Command{Op: OpAdvance, Node: n, Token: tok, Now: now + 3, TTL: ttl, Advance: &Advance{LastEventID: cursor, Keep: true}})
			apply(Command{Op: OpRelease, Node: n, Token: tok, Now: now + 4})
		case 2: // the holder stalls past expiry; the next round takes over
			now += int64(ttl) + 2
			if r := apply(Command{Op: OpRenew, Node: n, Token: tok, TTL: ttl, Now: now}); !errors.Is(r.Err, ErrLeaseExpired) {
				t.Fatalf("round %d: late renew: err = %v, want %v", round, r.Err, ErrLeaseExpired)
			}
		case 3: // revoked; a late revoke and a late advance of an older grant are stale
			apply(Command{Op: OpRevoke, Token: tok, Now: now + 3})
			apply(Command{Op: OpRevoke, Token: tok, Now: now + 3})
			apply(Command{Op: OpAdvance, Node: n, Token: tok - 1, Now: now + 3, Advance: &Advance{LastEventID: cursor}})
		case 4: // same peer grabs a fresh grant, then a pause blocks everyone
			r := apply(Command{Op: OpAcquire, Node: n, TTL: ttl, Now: now + 3})
			if r.Err != nil {
				t.Fatalf("round %d: re-acquire by holder refused: %v", round, r.Err)
			}
			apply(Command{Op: OpSetPaused, Paused: true})
			apply(Command{Op: OpRelease, Node: n, Token: r.Lease.Token, Now: now + 4})
			if r := apply(Command{Op: OpAcquire, Node: other, TTL: ttl, Now: now + 5}); !errors.Is(r.Err, ErrPaused) {
				t.Fatalf("round %d: acquire while paused: err = %v", round, r.Err)
			}
			apply(Command{Op: OpSetPaused, Paused: false})
		}
	}
	if want := 500 + 100; grants != want {
		t.Errorf("%d grants, want %d", grants, want)
	}
	if s.Lease.Token != uint64(grants) {
		t.Errorf("final token %d, want %d (one per grant)", s.Lease.Token, grants)
	}
}

func TestCloneSharesNothing(t *testing.T) {
	s := rich()
	c := s.Clone()
	if !reflect.DeepEqual(s, c) {
		t.Fatalf("clone differs:\n got %+v\nwant %+v", c, s)
	}
	c.Gaps[0].ID = 1
	c.Members["a"] = Member{ID: "a", RaftAddr: "changed"}
	c.Members["z"] = Member{ID: "z"}
	if want := rich(); !reflect.DeepEqual(s, want) {
		t.Errorf("changing the clone changed the original:\n got %+v\nwant %+v", s, want)
	}
}

func TestNanosAndTimeRoundTrip(t *testing.T) {
	if Nanos(time.Time{}) != 0 || !Time(0).IsZero() {
		t.Errorf("zero time does not map to 0 and back")
	}
	tm := time.Date(2026, 11, 25, 10, 0, 0, 123456789, time.FixedZone("x", 3600))
	back := Time(Nanos(tm))
	if !back.Equal(tm) || back.Location() != time.UTC {
		t.Errorf("Time(Nanos(%v)) = %v, want the same instant in UTC", tm, back)
	}
}

// A holder whose advance was applied but whose answer was lost sends it
// again; with Seq the retry is refused and the batch is counted once,
// whether the first advance kept the lease or released it.
func TestRetriedAdvanceWithSeqCountedOnce(t *testing.T) {
	for _, keep := range []bool{true, false} {
		s := State{}
		if res := s.Apply(Command{Op: OpAcquire, Node: "a", TTL: ttl, Now: t0}); res.Err != nil {
			t.Fatal(res.Err)
		}
		adv := Command{Op: OpAdvance, Node: "a", Token: 1, TTL: ttl, Now: t0 + sec,
			Advance: &Advance{LastEventID: 1000, Keep: keep, Seq: 1, Events: 1000, DeadLetters: 3}}
		if res := s.Apply(adv); res.Err != nil {
			t.Fatalf("keep=%v: first advance: %v", keep, res.Err)
		}
		if res := s.Apply(adv); !errors.Is(res.Err, ErrStaleToken) {
			t.Errorf("keep=%v: retried advance answered %v, want ErrStaleToken", keep, res.Err)
		}
		if s.Stats != (Stats{EventsProcessed: 1000, Batches: 1, DeadLetters: 3}) {
			t.Errorf("keep=%v: stats %+v, want one batch of 1000 events and 3 dead letters", keep, s.Stats)
		}
		if !keep {
			continue
		}
		next := Command{Op: OpAdvance, Node: "a", Token: 1, TTL: ttl, Now: t0 + 2*sec,
			Advance: &Advance{LastEventID: 1500, Seq: 2, Events: 500}}
		if res := s.Apply(next); res.Err != nil || s.Cursor.LastEventID != 1500 {
			t.Errorf("second advance under the kept lease: %v, cursor %d", res.Err, s.Cursor.LastEventID)
		}
	}
}

// An advance that records several batches at once (a holder working
// through a backlog) counts them all; one without the count is one batch.
func TestAdvanceCountsTheBatchesItRecords(t *testing.T) {
	var s State
	if res := s.Apply(Command{Op: OpAcquire, Node: "a", TTL: ttl, Now: t0}); res.Err != nil {
		t.Fatalf("acquire: %v", res.Err)
	}
	steps := []struct {
		adv         Advance
		wantBatches uint64
	}{
		{Advance{LastEventID: 3000, Keep: true, Seq: 1, Events: 3000, Batches: 3}, 3},
		{Advance{LastEventID: 3500, Keep: true, Seq: 2, Events: 500}, 4},
		{Advance{LastEventID: 3500, Keep: false, Seq: 3}, 4},
	}
	for i, st := range steps {
		adv := st.adv
		if res := s.Apply(Command{Op: OpAdvance, Node: "a", Token: 1, TTL: ttl, Now: t0 + int64(i+1)*sec, Advance: &adv}); res.Err != nil {
			t.Fatalf("advance %d: %v", i+1, res.Err)
		}
		if s.Stats.Batches != st.wantBatches {
			t.Errorf("after advance %d: batches = %d, want %d", i+1, s.Stats.Batches, st.wantBatches)
		}
	}
	if s.Stats.EventsProcessed != 3500 {
		t.Errorf("events = %d, want 3500", s.Stats.EventsProcessed)
	}
}

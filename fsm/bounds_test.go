package fsm

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

// fresh returns a group that has processed nothing, with members a and b
// (both of protocol 1) and the lease free after token 3.
func fresh() State {
	return State{
		Lease: Lease{Token: 3},
		Members: map[string]Member{
			"a": {ID: "a", RaftAddr: "10.0.0.1:8471", HTTPAddr: "10.0.0.1:8470", Protocol: 1},
			"b": {ID: "b", RaftAddr: "10.0.0.2:8471", HTTPAddr: "10.0.0.2:8470", Protocol: 1},
		},
		Clock: t0 - sec,
	}
}

func restoreCmd(token uint64, clock int64) Command {
	return Command{Op: OpRestore, Node: "a", Now: t0, Restore: &Restore{
		Cursor: Cursor{LastEventID: 500, LastEventDate: t0 - 60*sec}, Stats: Stats{EventsProcessed: 480, Batches: 9},
		Token: token, Clock: clock}}
}

func TestRestoreRefusesTokensTheTrackingDatabaseCannotStore(t *testing.T) {
	restored := func(token uint64, clock int64) func(s *State) {
		return func(s *State) {
			s.Cursor = Cursor{LastEventID: 500, LastEventDate: t0 - 60*sec}
			s.Stats = Stats{EventsProcessed: 480, Batches: 9}
			s.Lease = Lease{Token: max(3, token)}
			s.Clock = max(t0, clock)
		}
	}
	runApplyCases(t, []applyCase{
		{name: "token 2^64-1 (the next grant would wrap to 0)", given: fresh, cmd: restoreCmd(math.MaxUint64, 0), wantErr: ErrBadCommand},
		{name: "token 2^63 (above bigint)", given: fresh, cmd: restoreCmd(1<<63, 0), wantErr: ErrBadCommand},
		{name: "token 2^63-1 (the next grant would not fit a bigint)", given: fresh, cmd: restoreCmd(math.MaxInt64, 0), wantErr: ErrBadCommand},
		{name: "token just above the bound", given: fresh, cmd: restoreCmd(MaxRestoreToken+1, 0), wantErr: ErrBadCommand},
		{name: "token at the bound", given: fresh, cmd: restoreCmd(MaxRestoreToken, 0), change: restored(MaxRestoreToken, 0)},
		{name: "an honest token", given: fresh, cmd: restoreCmd(1234, t0-3600*sec), change: restored(1234, t0-3600*sec)},
	})
}

func TestRestoreRefusesClocksNoStateEverHad(t *testing.T) {
	restored := func(clock int64) func(s *State) {
		return func(s *State) {
			s.Cursor = Cursor{LastEventID: 500, LastEventDate: t0 - 60*sec}
			s.Stats = Stats{EventsProcessed: 480, Batches: 9}
			s.Lease = Lease{Token: 7}
			s.Clock = max(t0, clock)
		}
	}
	runApplyCases(t, []applyCase{
		{name: "clock MaxInt64 (every expiry would overflow)", given: fresh, cmd: restoreCmd(7, math.MaxInt64), wantErr: ErrBadCommand},
		{name: "clock just past MaxClock", given: fresh, cmd: restoreCmd(7, MaxClock+1), wantErr: ErrBadCommand},
		{name: "negative clock", given: fresh, cmd: restoreCmd(7, -1), wantErr: ErrBadCommand},
		{name: "clock at MaxClock", given: fresh, cmd: restoreCmd(7, MaxClock), change: restored(MaxClock)},
		{name: "no clock", given: fresh, cmd: restoreCmd(7, 0), change: restored(0)},
	})

	// Even at MaxClock, a grant's expiry is after the clock: nothing
	// wraps, so no second node is granted the lease while it is held.
	s := fresh()
	if res := s.Apply(restoreCmd(7, MaxClock)); res.Err != nil {
		t.Fatal(res.Err)
	}
	res := s.Apply(Command{Op: OpAcquire, Node: "a", TTL: MaxTTL, Now: t0})
	if res.Err != nil || res.Lease.ExpiresAt <= MaxClock {
		t.Fatalf("acquire at MaxClock: %+v", res)
	}
	if res := s.Apply(Command{Op: OpAcquire, Node: "b", TTL: ttl, Now: t0}); !errors.Is(res.Err, ErrLeaseHeld) {
		t.Errorf("a second acquire while a's lease is held: %v, want %v", res.Err, ErrLeaseHeld)
	}
}

func TestTokenAfterTheHighestRestoreFitsABigint(t *testing.T) {
	s := fresh()
	if res := s.Apply(restoreCmd(MaxRestoreToken, 0)); res.Err != nil {
		t.Fatal(res.Err)
	}
	res := s.Apply(Command{Op: OpAcquire, Node: "a", TTL: ttl, Now: t0})
	if res.Err != nil || res.Lease.Token != MaxRestoreToken+1 || res.Lease.Token > math.MaxInt64 {
		t.Fatalf("acquire after the highest restore: %+v", res)
	}
}

func TestCheckProposalBoundsReservationsAndRestoredClocks(t *testing.T) {
	cases := []struct {
		name    string
		cmd     Command
		wantErr error
	}{
		{"reserve at the bound", Command{Op: OpReserve, Node: "a", TTL: MaxReserveTTL, Now: t0}, nil},
		{"reserve past the bound", Command{Op: OpReserve, Node: "a", TTL: MaxReserveTTL + 1, Now: t0}, ErrBadCommand},
		{"reserve for a day", Command{Op: OpReserve, Node: "a", TTL: 24 * time.Hour, Now: t0}, ErrBadCommand},
		{"reserve as an agent asks", Command{Op: OpReserve, Node: "a", TTL: 10 * time.Second, Now: t0}, nil},
		{"restore saved an hour ago", restoreCmd(7, t0-3600*sec), nil},
		{"restore with the clock as far ahead as allowed", restoreCmd(7, t0+int64(MaxClockAhead)), nil},
		{"restore with the clock further ahead", restoreCmd(7, t0+int64(MaxClockAhead)+1), ErrBadCommand},
		{"restore with a clock a year ahead", restoreCmd(7, t0+365*24*3600*sec), ErrBadCommand},
		{"restore with clock MaxInt64", restoreCmd(7, math.MaxInt64), ErrBadCommand},
		{"restore with token 2^63", restoreCmd(1<<63, 0), ErrBadCommand},
		{"an invalid command", Command{Op: OpAcquire, Node: "a"}, ErrBadCommand},
		{"an acquire", Command{Op: OpAcquire, Node: "a", TTL: ttl, Now: t0}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cmd.CheckProposal()
			switch {
			case tc.wantErr == nil && err != nil:
				t.Errorf("refused: %v", err)
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Errorf("err = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

// TestStateMachineKeepsApplyingWhatAnEarlierLeaderProposed: the leader's
// bounds are not the state machine's, so an entry that a leader of the
// release before wrote applies as it did then on every replica.
func TestStateMachineKeepsApplyingWhatAnEarlierLeaderProposed(t *testing.T) {
	runApplyCases(t, []applyCase{
		{
			name:  "a reservation for a day",
			given: free,
			cmd:   Command{Op: OpReserve, Node: "a", TTL: 24 * time.Hour, Now: t0},
			change: func(s *State) {
				s.Reservation = &Reservation{Node: "a", Until: t0 + int64(24*time.Hour)}
			},
		},
		{
			name:  "a restored clock ten minutes ahead",
			given: fresh,
			cmd:   restoreCmd(7, t0+600*sec),
			change: func(s *State) {
				s.Cursor = Cursor{LastEventID: 500, LastEventDate: t0 - 60*sec}
				s.Stats = Stats{EventsProcessed: 480, Batches: 9}
				s.Lease = Lease{Token: 7}
				s.Clock = t0 + 600*sec
			},
		},
	})
}

func TestWitnessFlagTravelsApartFromTheAddresses(t *testing.T) {
	a := Member{ID: "a", RaftAddr: "10.0.0.1:8471", HTTPAddr: "10.0.0.1:8470"}
	witness := func(given func() State, id string) func() State {
		return func() State {
			s := given()
			m := s.Members[id]
			m.Witness = true
			s.Members[id] = m
			return s
		}
	}
	runApplyCases(t, []applyCase{
		{
			name:  "set_witness marks a member",
			given: fresh,
			cmd:   Command{Op: OpSetWitness, Node: "a", Witness: true},
			change: func(s *State) {
				m := s.Members["a"]
				m.Witness = true
				s.Members["a"] = m
			},
		},
		{
			name:  "set_witness clears the mark",
			given: witness(fresh, "a"),
			cmd:   Command{Op: OpSetWitness, Node: "a"},
			change: func(s *State) {
				m := s.Members["a"]
				m.Witness = false
				s.Members["a"] = m
			},
		},
		{
			name:  "set_witness for a node that is not a member changes nothing",
			given: fresh,
			cmd:   Command{Op: OpSetWitness, Node: "zz", Witness: true},
		},
		{
			name:  "set_member keeps the mark while it changes the addresses",
			given: witness(fresh, "a"),
			cmd:   Command{Op: OpSetMember, Member: &Member{ID: "a", RaftAddr: "10.0.0.9:8471", HTTPAddr: "10.0.0.9:8470"}},
			change: func(s *State) {
				s.Members["a"] = Member{ID: "a", RaftAddr: "10.0.0.9:8471", HTTPAddr: "10.0.0.9:8470", Witness: true, Protocol: 1}
			},
		},
		{
			name:  "remove_member forgets the mark with the row",
			given: witness(fresh, "a"),
			cmd:   Command{Op: OpRemoveMember, Node: "a"},
			change: func(s *State) {
				delete(s.Members, "a")
			},
		},
		{
			name:    "set_member never carries the mark",
			given:   fresh,
			cmd:     Command{Op: OpSetMember, Member: &Member{ID: "c", RaftAddr: "10.0.0.3:8471", Witness: true}},
			wantErr: ErrBadCommand,
		},
		{
			name:    "set_witness needs a node",
			given:   fresh,
			cmd:     Command{Op: OpSetWitness, Witness: true},
			wantErr: ErrBadCommand,
		},
	})

	// A processing member's set_member is encoded as the release before
	// encoded it, so that its nodes, which refuse unknown fields, apply it.
	b, err := Command{Op: OpSetMember, Member: &a}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"op":"set_member","member":{"id":"a","raft_addr":"10.0.0.1:8471","http_addr":"10.0.0.1:8470"}}`; string(b) != want {
		t.Errorf("set_member encodes as %s, want %s", b, want)
	}
	// A row of the release before (no flag) is a processing member.
	var m Member
	if err := json.Unmarshal([]byte(`{"id":"a","raft_addr":"10.0.0.1:8471","http_addr":"10.0.0.1:8470"}`), &m); err != nil || m != a || m.Witness {
		t.Errorf("an old row decodes as %+v, %v", m, err)
	}
	// The flag survives a snapshot.
	s := witness(fresh, "b")()
	var buf strings.Builder
	if err := s.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	back, err := ReadSnapshot(strings.NewReader(buf.String()))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back.Members, s.Members) {
		t.Errorf("members after a snapshot: %+v, want %+v", back.Members, s.Members)
	}
}

package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"math/rand"
	"reflect"
	"testing"
	"time"
)

// chooser is the source of the choices genCommand makes: math/rand for the
// determinism test, the fuzzer's bytes for FuzzApplySequence.
type chooser interface {
	intn(n int) int
}

type randChooser struct{ r *rand.Rand }

func (c randChooser) intn(n int) int { return c.r.Intn(n) }

// bitChooser reads as few bits as a choice needs, so that a short input
// makes a long sequence, and answers 0 once the bits run out.
type bitChooser struct {
	b   []byte
	bit uint
}

func (c *bitChooser) intn(n int) int {
	v := 0
	for i := 0; i < bits.Len(uint(n-1)) && len(c.b) > 0; i++ {
		v |= int(c.b[0]>>c.bit&1) << i
		if c.bit++; c.bit == 8 {
			c.b, c.bit = c.b[1:], 0
		}
	}
	return v % n
}

func (c *bitChooser) more() bool { return len(c.b) > 0 }

// maxSequenceInput caps the bytes FuzzApplySequence reads (about 80
// commands): the fuzzer's minimizer needs time quadratic in the input length,
// and longer inputs find nothing that shorter ones miss in these small spaces.
const maxSequenceInput = 256

// genNodes is deliberately small so that peers collide on the lease.
var genNodes = []string{"n1", "n2", "n3"}

// genCommand draws the next command. It looks at s only to bias its choices
// (the holder's node, the current token, the cursor) so that a good share of
// commands is accepted; every field still also takes wrong values. *now is
// the leaders' clock: it mostly moves forward, in steps of 0 to 1.5s,
// against TTLs of 0 (invalid) to 3s; one step in eight goes back by up to
// 2s, as when two commands stamped at once are applied in the other order,
// or a new leader's clock is behind the old one's.
func genCommand(ch chooser, s State, now *int64) Command {
	if ch.intn(8) == 0 {
		*now -= int64(1+ch.intn(4)) * int64(500*time.Millisecond)
	} else {
		*now += int64(ch.intn(4)) * int64(500*time.Millisecond)
	}
	node := genNodes[ch.intn(len(genNodes))]
	switch ch.intn(4) {
	case 0:
		if s.Lease.Holder != "" {
			node = s.Lease.Holder
		}
	case 1:
		if s.RevokedFrom != "" {
			node = s.RevokedFrom
		}
	}
	token := s.Lease.Token
	switch ch.intn(8) {
	case 0:
		if token > 0 {
			token--
		}
	case 1:
		token++
	case 2:
		token = 0
	}
	c := Command{Node: node, Token: token, TTL: time.Duration(ch.intn(4)) * time.Second, Now: *now}

	switch k := ch.intn(23); {
	case k < 5:
		c.Op = OpAcquire
	case k < 8:
		c.Op = OpRenew
	case k < 9:
		c.Op = OpRelease
	case k < 14:
		c.Op = OpAdvance
		c.Advance = genAdvance(ch, s, *now)
	case k < 15:
		c.Op = OpRevoke
		c.Reason = "holder vanished"
	case k < 16:
		c.Op = OpSetMember
		c.Member = &Member{ID: node, RaftAddr: fmt.Sprintf("10.0.0.%d:8471", ch.intn(4)), HTTPAddr: "10.0.0.9:8470"}
		if ch.intn(8) == 0 {
			c.Member.RaftAddr = "" // invalid
		}
	case k < 17:
		c.Op = OpRemoveMember
	case k < 19:
		c.Op = OpSetPaused
		c.Paused = ch.intn(3) == 0
	case k < 20:
		c.Op = OpSetCursor
		c.SetCursor = &SetCursor{LastEventID: max(s.Cursor.LastEventID+int64(ch.intn(9))-4, 0), Force: ch.intn(2) == 0}
	case k < 21:
		c.Op = OpRestore
		last := int64(ch.intn(60))
		c.Restore = &Restore{Cursor: Cursor{LastEventID: last}, Token: uint64(ch.intn(200)),
			Stats: Stats{EventsProcessed: uint64(last), Batches: uint64(ch.intn(3))}}
		if last > 3 && ch.intn(2) == 0 {
			c.Restore.Gaps = []Gap{{ID: last - 2, FirstSeen: *now}}
		}
	case k < 22:
		// Rare: a reservation refuses every other node's acquire for TTL.
		c.Op = OpAcquire
		if ch.intn(4) == 0 {
			c.Op = OpReserve
		}
	default:
		switch ch.intn(3) {
		case 0:
			c.Op = "steal"
		case 1:
			c.Op, c.Node = OpAcquire, ""
		default:
			c.Op = OpAdvance // without payload
		}
	}
	return c
}

// genAdvance moves the cursor by -1..+6 and picks the open gaps among the 8
// IDs below the new position, sometimes out of order (invalid).
func genAdvance(ch chooser, s State, now int64) *Advance {
	last := s.Cursor.LastEventID + int64(ch.intn(8)) - 1
	if last < 0 {
		last = 0
	}
	var gaps []Gap
	mask := ch.intn(256)
	for i := 0; i < 8; i++ {
		if id := last - 8 + int64(i); id > 0 && mask&(1<<i) != 0 {
			gaps = append(gaps, Gap{ID: id, FirstSeen: now - int64(i)})
		}
	}
	if ch.intn(16) == 0 && len(gaps) > 1 {
		gaps[0], gaps[1] = gaps[1], gaps[0]
	}
	a := &Advance{
		LastEventID:   last,
		LastEventDate: now - int64(ch.intn(3))*sec,
		Gaps:          gaps,
		Keep:          ch.intn(3) == 0,
		Events:        uint64(ch.intn(4)),
		DeadLetters:   uint64(ch.intn(2)),
		GapsDropped:   uint64(ch.intn(2)),
		Batches:       uint64(ch.intn(3)),
	}
	if ch.intn(2) == 0 {
		toDelta(ch, a, s.Gaps)
	}
	return a
}

// toDelta rewrites a's gap set as a delta from open, now and then with a
// wrong base, a closed gap that is not open, or a gap both kept and opened.
func toDelta(ch chooser, a *Advance, open []Gap) {
	want := map[int64]bool{}
	for _, g := range a.Gaps {
		want[g.ID] = true
	}
	had := map[int64]bool{}
	for _, g := range open {
		had[g.ID] = true
		if !want[g.ID] {
			a.GapsClosed = append(a.GapsClosed, g.ID)
		}
	}
	for _, g := range a.Gaps {
		if !had[g.ID] {
			a.GapsOpened = append(a.GapsOpened, g)
		}
	}
	a.Gaps, a.GapsDelta, a.GapsBase = nil, true, GapSum(open)
	switch ch.intn(16) {
	case 0:
		a.GapsBase++
	case 1:
		a.GapsClosed = append(a.GapsClosed, a.LastEventID+1)
	case 2:
		if len(open) > 0 {
			a.GapsOpened = append([]Gap{open[0]}, a.GapsOpened...)
		}
	}
}

// copyState is a deep copy that keeps nil and empty apart, written here
// rather than taken from Clone so that a sharing bug in Clone cannot hide a
// change made by a refused command.
func copyState(s State) State {
	c := s
	if s.Gaps != nil {
		c.Gaps = make([]Gap, len(s.Gaps))
		copy(c.Gaps, s.Gaps)
	}
	if s.Members != nil {
		c.Members = make(map[string]Member, len(s.Members))
		for k, v := range s.Members {
			c.Members[k] = v
		}
	}
	return c
}

// checkStep checks the invariants of one Apply: prev is the state before c,
// s after it, grants maps every token granted so far to its node (updated
// here).
func checkStep(t *testing.T, step int, c Command, prev, s State, res Result, grants map[uint64]string) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("step %d: %+v (advance %+v): %s\nbefore %+v\nafter  %+v\nerr %v",
			step, c, c.Advance, fmt.Sprintf(format, args...), prev, s, res.Err)
	}
	if res.Lease != s.Lease || res.Cursor != s.Cursor {
		fail("result reports lease %+v cursor %+v", res.Lease, res.Cursor)
	}
	// The checksum kept by deltas is the set's.
	if sum := GapSum(s.Gaps); s.GapsSum != sum {
		fail("gaps_sum %x, the %d open gaps sum to %x", s.GapsSum, len(s.Gaps), sum)
	}

	// The state's clock never goes backwards: a valid command is applied at
	// the later of its stamp and the clock, granted or not; one that does
	// not validate is not applied and leaves the clock alone.
	at := prev.Clock
	if c.Validate() == nil {
		at = max(c.Now, prev.Clock)
		if res.Now != at {
			fail("applied at %d, want max(stamp %d, clock %d)", res.Now, c.Now, prev.Clock)
		}
	}
	if s.Clock != at {
		fail("clock %d after the command, want %d", s.Clock, at)
	}

	if res.Err != nil {
		if refusal(res.Err) == nil {
			fail("refusal wraps no sentinel")
		}
		unclocked := copyState(s)
		unclocked.Clock = prev.Clock
		if !reflect.DeepEqual(prev, unclocked) {
			fail("refused command changed the state")
		}
		return
	}

	// Tokens: +1 on a grant, unchanged otherwise.
	if c.Op == OpAcquire {
		if s.Lease.Token != prev.Lease.Token+1 {
			fail("grant took token %d after %d", s.Lease.Token, prev.Lease.Token)
		}
		if prev.Lease.HeldAt(at) && prev.Lease.Holder != c.Node {
			fail("granted while %s held the lease", prev.Lease.Holder)
		}
		if prev.Cursor.Paused {
			fail("granted while paused")
		}
		if r := prev.ReservedFor(at); r != "" && r != c.Node {
			fail("granted to %s while reserved for %s", c.Node, r)
		}
		if s.Reservation != nil {
			fail("a grant left reservation %+v", *s.Reservation)
		}
		if s.Lease.Holder != c.Node || s.Lease.ExpiresAt != at+int64(c.TTL) {
			fail("grant is %+v", s.Lease)
		}
		if _, dup := grants[s.Lease.Token]; dup {
			fail("token %d granted twice", s.Lease.Token)
		}
		grants[s.Lease.Token] = c.Node
	} else if c.Op == OpRestore {
		if s.Lease.Token < prev.Lease.Token || s.Lease.Token < c.Restore.Token || s.Lease.Holder != "" {
			fail("restore left lease %+v after token %d, floor %d", s.Lease, prev.Lease.Token, c.Restore.Token)
		}
	} else if s.Lease.Token != prev.Lease.Token {
		fail("%s changed the token from %d to %d", c.Op, prev.Lease.Token, s.Lease.Token)
	}

	// Fencing: a command acting on a grant names the current one and comes
	// from the node it was granted to.
	switch c.Op {
	case OpRenew, OpRelease, OpAdvance, OpSetCursor:
		if c.Token != prev.Lease.Token || grants[c.Token] != c.Node {
			fail("accepted %s of token %d from %s; current token %d was granted to %q",
				c.Op, c.Token, c.Node, prev.Lease.Token, grants[prev.Lease.Token])
		}
	case OpRevoke:
		if c.Token != prev.Lease.Token || prev.Lease.Holder == "" {
			fail("revoke of token %d accepted", c.Token)
		}
	}
	if c.Op == OpRenew && !prev.Lease.HeldAt(at) {
		fail("renewed an expired lease")
	}
	if setsExpiry(c) && s.Lease.ExpiresAt != at+int64(c.TTL) {
		fail("%s set expiry %d, want applied time %d + ttl %s", c.Op, s.Lease.ExpiresAt, at, c.TTL)
	}

	// At most one holder: the lease belongs to the node granted the current token.
	if s.Lease.Holder != "" && grants[s.Lease.Token] != s.Lease.Holder {
		fail("holder %s does not hold token %d (granted to %q)", s.Lease.Holder, s.Lease.Token, grants[s.Lease.Token])
	}
	if s.RevokedFrom != "" && (s.Lease.Holder != "" || grants[s.Lease.Token] != s.RevokedFrom) {
		fail("revoked_from %s with lease %+v", s.RevokedFrom, s.Lease)
	}

	// The cursor and the counters never move back; gaps stay well formed.
	if s.Cursor.LastEventID < prev.Cursor.LastEventID && !(c.Op == OpSetCursor && c.SetCursor.Force) {
		fail("cursor moved back from %d to %d", prev.Cursor.LastEventID, s.Cursor.LastEventID)
	}
	if c.Op == OpRestore && (prev.Cursor.LastEventID != 0 || prev.Stats.EventsProcessed != 0) {
		fail("restore accepted by a group at %d after %d events", prev.Cursor.LastEventID, prev.Stats.EventsProcessed)
	}
	if c.Op == OpAdvance {
		a := c.Advance
		want := Stats{
			EventsProcessed: prev.Stats.EventsProcessed + a.Events,
			DeadLetters:     prev.Stats.DeadLetters + a.DeadLetters,
			GapsDropped:     prev.Stats.GapsDropped + a.GapsDropped,
			Batches:         prev.Stats.Batches,
		}
		switch {
		case a.Batches > 0:
			want.Batches += a.Batches
		case a.Events > 0:
			want.Batches++
		}
		if s.Stats != want {
			fail("stats %+v, want %+v", s.Stats, want)
		}
	} else if c.Op == OpRestore {
		if s.Stats != c.Restore.Stats {
			fail("restore left stats %+v, want %+v", s.Stats, c.Restore.Stats)
		}
	} else if s.Stats != prev.Stats {
		fail("%s changed the stats", c.Op)
	}
	for i, g := range s.Gaps {
		if g.ID <= 0 || g.ID >= s.Cursor.LastEventID {
			fail("gap %d outside 1..%d", g.ID, s.Cursor.LastEventID-1)
		}
		if i > 0 && g.ID <= s.Gaps[i-1].ID {
			fail("gaps not sorted and unique: %v", s.Gaps)
		}
	}
}

// setsExpiry reports whether c, granted, gives the lease a new expiry.
func setsExpiry(c Command) bool {
	switch c.Op {
	case OpAcquire, OpRenew:
		return true
	case OpAdvance:
		return c.Advance != nil && c.Advance.Keep
	}
	return false
}

func FuzzApplySequence(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0})
	f.Add(bytes.Repeat([]byte{0x5a, 0xa5, 0x3c}, 60))
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 4; i++ {
		b := make([]byte, 64*(i+1))
		r.Read(b)
		f.Add(b)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > maxSequenceInput {
			data = data[:maxSequenceInput]
		}
		ch := &bitChooser{b: data}
		var s State
		now := t0
		grants := map[uint64]string{}
		for step := 0; ch.more(); step++ {
			prev := copyState(s)
			c := genCommand(ch, s, &now)
			checked := s.Check(c)
			if !reflect.DeepEqual(s, prev) {
				t.Fatalf("step %d: Check(%+v) changed the state", step, c)
			}
			res := s.Apply(c)
			if refusal(checked) != refusal(res.Err) || (checked == nil) != (res.Err == nil) {
				t.Fatalf("step %d: Check(%+v) = %v, but Apply answered %v", step, c, checked, res.Err)
			}
			checkStep(t, step, c, prev, s, res, grants)
		}

		var buf bytes.Buffer
		if err := s.WriteSnapshot(&buf); err != nil {
			t.Fatalf("WriteSnapshot: %v", err)
		}
		back, err := ReadSnapshot(&buf)
		if err != nil {
			t.Fatalf("ReadSnapshot: %v", err)
		}
		if !reflect.DeepEqual(back, s) {
			t.Fatalf("snapshot round trip:\n got %+v\nwant %+v", back, s)
		}
	})
}

func FuzzDecodeCommand(f *testing.F) {
	for _, c := range []Command{
		{Op: OpAcquire, Node: "n1", TTL: ttl, Now: t0},
		{Op: OpRenew, Node: "n1", Token: 3, TTL: ttl, Now: t0},
		{Op: OpRelease, Node: "n1", Token: 3, Now: t0},
		{Op: OpAdvance, Node: "n1", Token: 3, TTL: ttl, Now: t0, Advance: &Advance{
			LastEventID: 150, LastEventDate: t0, Keep: true, Events: 3, DeadLetters: 1,
			Gaps: []Gap{{ID: 120, FirstSeen: t0}, {ID: 149, FirstSeen: t0}}}},
		{Op: OpAdvance, Node: "n1", Token: 3, Advance: &Advance{Gaps: []Gap{}}},
		{Op: OpRevoke, Token: 3, Reason: "node n1 left"},
		{Op: OpSetMember, Member: &Member{ID: "n1", RaftAddr: "10.0.0.1:8471", HTTPAddr: "10.0.0.1:8470"}},
		{Op: OpRemoveMember, Node: "n1"},
		{Op: OpSetPaused, Paused: true},
	} {
		b, err := c.Encode()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"op":"advance","node":"n1","advance":{"last_event_id":5,"gaps":[{"id":4},{"id":3}]}}`))
	f.Add([]byte(`{"op":"acquire","node":"n1","ttl":1,"extra":1}`))
	f.Add([]byte(`{"op":"set_paused"} {"op":"set_paused"}`))
	f.Add([]byte(`{"op":"renew","node":"\u00e9\ud800","ttl":1e3}`))
	f.Add([]byte(`null`))
	f.Add([]byte{0xff, 0xfe, '{'})

	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := DecodeCommand(data)
		if err != nil {
			if !errors.Is(err, ErrBadCommand) {
				t.Fatalf("DecodeCommand error %v does not wrap ErrBadCommand", err)
			}
			return
		}
		// A log entry is exactly one JSON object; anything else is refused.
		if !json.Valid(data) {
			t.Fatalf("DecodeCommand accepted %q, which is not a single JSON value", data)
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("decoded command does not validate: %v", err)
		}
		b, err := c.Encode()
		if err != nil {
			t.Fatalf("Encode: %v", err)
		}
		c2, err := DecodeCommand(b)
		if err != nil {
			t.Fatalf("re-encoded command %s does not decode: %v", b, err)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("round trip changed the command:\n got %+v\nwant %+v", c2, c)
		}
		if b2, err := c2.Encode(); err != nil || !bytes.Equal(b, b2) {
			t.Fatalf("encoding is not stable: %s then %s (%v)", b, b2, err)
		}
		// Whatever decodes can be applied.
		for _, s := range []State{{}, rich(), heldBy("n1", t0+sec)(), revokedFrom("n1")()} {
			s.Apply(c)
		}
	})
}

// TestDecodeCommandRefusesTrailingData: a log entry is exactly one JSON
// object; what follows it, even a stray closing bracket, is refused.
func TestDecodeCommandRefusesTrailingData(t *testing.T) {
	for _, data := range []string{
		`{"op":"set_paused"} x`,
		`{"op":"set_paused"} {"op":"set_paused"}`,
		`{"op":"set_paused"}}`,
		`{"op":"set_paused"}]`,
	} {
		if c, err := DecodeCommand([]byte(data)); !errors.Is(err, ErrBadCommand) {
			t.Errorf("DecodeCommand(%s) = %+v, %v; want %v", data, c, err, ErrBadCommand)
		}
	}
	if _, err := DecodeCommand([]byte(" {\"op\":\"set_paused\"}\n")); err != nil {
		t.Errorf("surrounding white space refused: %v", err)
	}
}

func TestDecodeCommandRefusesUnknownFieldsAndMalformedInput(t *testing.T) {
	for _, data := range []string{
		``,
		`null`,
		`[]`,
		`{"op":"acquire","node":"a","ttl":1,"holder":"b"}`,
		`{"op":"acquire","node":"a","ttl":"5s"}`,
		`{"op":"acquire","node":"a","ttl":1.5}`,
		`{"op":"advance","node":"a","advance":{"last_event_id":5,"cursor":1}}`,
		`{"op":"acquire","node":"a","ttl":1`,
	} {
		if c, err := DecodeCommand([]byte(data)); !errors.Is(err, ErrBadCommand) {
			t.Errorf("DecodeCommand(%s) = %+v, %v; want %v", data, c, err, ErrBadCommand)
		}
	}
}

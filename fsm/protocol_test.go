package fsm

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/geocursor/geocursor/fsm/internal/fsmv0"
)

// twoReleases applies one log to a replica of this release and to one of
// the release ab96392 (protocol 0, package fsmv0), each as its FSM.Apply
// does: an entry that does not decode changes nothing.
type twoReleases struct {
	t   *testing.T
	now State
	old fsmv0.State
}

// apply applies the entry c encodes to both replicas and checks that they
// answer alike: the same refusal or none, the same lease, cursor and time.
// A command protocol 0 does not know is refused there, and changes here
// only what that release does not have.
func (r *twoReleases) apply(c Command) {
	r.t.Helper()
	b, err := c.Encode()
	if err != nil {
		r.t.Fatal(err)
	}
	var res Result
	if c, err := DecodeCommand(b); err == nil {
		res = r.now.Apply(c)
	} else {
		res = Result{Err: err}
	}
	var old fsmv0.Result
	if c, err := fsmv0.DecodeCommand(b); err == nil {
		old = r.old.Apply(c)
	} else {
		old = fsmv0.Result{Err: err}
	}
	if c.Op.AddedIn() > 0 {
		if old.Err == nil {
			r.t.Errorf("%s: protocol 0 applied a command it does not know: %s", c.Op, b)
		}
		return
	}
	if (res.Err == nil) != (old.Err == nil) || res.Now != old.Now ||
		!sameJSON(r.t, res.Lease, old.Lease) || !sameJSON(r.t, res.Cursor, old.Cursor) {
		r.t.Errorf("%s answered differently:\n protocol %d: %+v\n protocol 0: %+v", b, Protocol, res, old)
	}
}

// same checks that the replica of this release, seen through the state of
// protocol 0 (what that release reads of it in a snapshot), is the other
// replica.
func (r *twoReleases) same() {
	r.t.Helper()
	if got := project(r.t, r.now); !reflect.DeepEqual(got, r.old) {
		r.t.Errorf("the replicas differ:\n protocol %d: %+v\n protocol 0: %+v", Protocol, got, r.old)
	}
}

// project is s as a node of protocol 0 holds it: the fields it has.
func project(t *testing.T, s State) fsmv0.State {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var old fsmv0.State
	if err := json.Unmarshal(b, &old); err != nil {
		t.Fatal(err)
	}
	return old
}

func sameJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(ja) == string(jb)
}

func member(id, ip string) *Member {
	return &Member{ID: id, RaftAddr: ip + ":8471", HTTPAddr: ip + ":8470"}
}

// mixedLog is a log a group of both releases writes while the gate is
// closed: every command of protocol 0, from leaders of either release,
// and the set_version of the nodes of this one (the one command of
// protocol 1 a leader proposes before every voter speaks it). The restore
// carries a token above MaxRestoreToken, as a leader of protocol 0 (which
// has no such bound) may propose.
func mixedLog() []Command {
	s := func(n int64) int64 { return t0 + n*sec }
	return []Command{
		{Op: OpSetMember, Member: member("a", "10.0.0.1"), Now: s(0)},
		{Op: OpSetVersion, Node: "a", Version: "1.4.0", Protocol: 1, Now: s(1)},
		{Op: OpSetMember, Member: member("b", "10.0.0.2"), Now: s(1)},
		{Op: OpSetMember, Member: member("c", "10.0.0.3"), Now: s(2)},
		{Op: OpSetVersion, Node: "b", Version: "1.4.0", Protocol: 1, Now: s(30)},
		{Op: OpSetVersion, Node: "zz", Version: "1.4.0", Protocol: 1, Now: s(31)},
		{Op: OpRestore, Node: "a", Now: s(3), Restore: &Restore{Cursor: Cursor{LastEventID: 100, LastEventDate: s(-60)}, Token: MaxRestoreToken + 5, Stats: Stats{EventsProcessed: 90, Batches: 3}}},
		{Op: OpAcquire, Node: "a", TTL: 10 * time.Second, Now: s(4)},
		{Op: OpAdvance, Node: "a", Token: MaxRestoreToken + 6, TTL: 10 * time.Second, Now: s(5), Advance: &Advance{LastEventID: 120, LastEventDate: s(4), Gaps: []Gap{{ID: 110, FirstSeen: s(4)}}, Events: 19, Keep: true, Seq: 1}},
		{Op: OpSetMember, Member: &Member{ID: "b", RaftAddr: "10.0.0.2:8471", HTTPAddr: "10.0.0.2:9470"}, Now: s(6)},
		{Op: OpRenew, Node: "a", Token: MaxRestoreToken + 6, TTL: 10 * time.Second, Now: s(7)},
		{Op: OpAcquire, Node: "b", TTL: 10 * time.Second, Now: s(8)},
		{Op: OpReserve, Node: "c", TTL: time.Hour, Now: s(9)},
		{Op: OpRevoke, Token: MaxRestoreToken + 6, Reason: "leader cannot reach the holder", Now: s(10)},
		{Op: OpAdvance, Node: "a", Token: MaxRestoreToken + 6, Now: s(11), Advance: &Advance{LastEventID: 130, GapsDelta: true, GapsBase: GapSum([]Gap{{ID: 110}}), GapsClosed: []int64{110}, Events: 9, Seq: 2}},
		{Op: OpSetPaused, Paused: true, Now: s(12)},
		{Op: OpAcquire, Node: "c", TTL: 10 * time.Second, Now: s(13)},
		{Op: OpSetPaused, Now: s(14)},
		{Op: OpAcquire, Node: "c", TTL: 10 * time.Second, Now: s(15)},
		{Op: OpSetCursor, Node: "c", Token: MaxRestoreToken + 7, Now: s(16), SetCursor: &SetCursor{LastEventID: 125, Force: true}},
		{Op: OpRemoveMember, Node: "c", Now: s(17)},
		{Op: OpSetMember, Member: member("c", "10.0.0.3"), Now: s(18)},
	}
}

// TestTwoReleasesReadOneLogAlikeWhileTheGateIsClosed: nodes of protocol 0
// and 1 that apply the log a mixed group writes before every voter speaks
// 1 hold the same state, also after a restore that this release's bounds
// would refuse were every member of protocol 1, and the rows of the nodes
// of this release say what they advertised.
func TestTwoReleasesReadOneLogAlikeWhileTheGateIsClosed(t *testing.T) {
	r := &twoReleases{t: t}
	for i, c := range mixedLog() {
		r.apply(c)
		if t.Failed() {
			t.Fatalf("entry %d", i)
		}
		r.same()
	}
	if r.now.Lease.Token != MaxRestoreToken+7 || r.now.Cursor.LastEventID != 125 {
		t.Errorf("the log did not run as meant: lease %+v cursor %+v", r.now.Lease, r.now.Cursor)
	}
	want := map[string]Member{
		"a": {ID: "a", RaftAddr: "10.0.0.1:8471", HTTPAddr: "10.0.0.1:8470", Version: "1.4.0", Protocol: 1},
		"b": {ID: "b", RaftAddr: "10.0.0.2:8471", HTTPAddr: "10.0.0.2:9470", Version: "1.4.0", Protocol: 1},
		"c": {ID: "c", RaftAddr: "10.0.0.3:8471", HTTPAddr: "10.0.0.3:8470"},
	}
	if !reflect.DeepEqual(r.now.Members, want) {
		t.Errorf("members: %+v, want %+v", r.now.Members, want)
	}
	if r.now.Speaks(1) {
		t.Error("c advertised nothing, yet the members table speaks protocol 1")
	}
}

// TestTwoReleasesDifferOnlyInWhatProtocol0LacksOnceTheGateOpens: the
// commands the gate holds back (set_witness, set_removed), stamped later
// than anything before, change on a node of this release only the fields
// protocol 0 does not have, and neither release's clock moves for them.
func TestTwoReleasesDifferOnlyInWhatProtocol0LacksOnceTheGateOpens(t *testing.T) {
	r := &twoReleases{t: t}
	for _, c := range mixedLog() {
		r.apply(c)
	}
	clock := r.now.Clock
	later := clock + 3600*sec
	for _, c := range []Command{
		{Op: OpSetVersion, Node: "c", Version: "1.4.0", Protocol: 1, Now: later},
		{Op: OpSetWitness, Node: "c", Witness: true, Now: later},
		{Op: OpSetRemoved, Node: "d", Removed: true, Now: later},
		{Op: OpAcquire, Node: "a", TTL: 10 * time.Second, Now: clock + sec},
	} {
		r.apply(c)
		r.same()
	}
	if !r.now.Speaks(1) || !r.now.Members["c"].Witness || !r.now.IsRemoved("d") {
		t.Errorf("the commands of protocol 1 did not apply: %+v removed %v", r.now.Members, r.now.Removed)
	}
	if r.now.Clock != clock+sec {
		t.Errorf("clock %d, want %d: a command of protocol 1 moved it", r.now.Clock, clock+sec)
	}
}

// TestRestoreBoundsApplyOnceEveryMemberSpeaksProtocol1: the state
// machine's bounds of a restore are those of protocol 0 (none) while a
// member row advertises nothing, so that a restore a leader of that
// release proposed applies the same everywhere.
func TestRestoreBoundsApplyOnceEveryMemberSpeaksProtocol1(t *testing.T) {
	over := restoreCmd(MaxRestoreToken+1, 0)
	old := fresh()
	for id, m := range old.Members {
		m.Protocol = 0
		old.Members[id] = m
	}
	if res := old.Apply(over); res.Err != nil {
		t.Errorf("with a member of protocol 0: %v, want it applied as that release does", res.Err)
	}
	s := fresh()
	if res := s.Apply(over); !errors.Is(res.Err, ErrBadCommand) {
		t.Errorf("with every member at protocol 1: %v, want %v", res.Err, ErrBadCommand)
	}
	if err := over.CheckProposal(); !errors.Is(err, ErrBadCommand) {
		t.Errorf("a leader of this release may propose it: %v", err)
	}
}

func TestSetVersionRecordsAnAdvertisementWithoutMovingTheClock(t *testing.T) {
	runApplyCases(t, []applyCase{
		{
			name:  "a member advertises",
			given: fresh,
			cmd:   Command{Op: OpSetVersion, Node: "a", Version: "1.5.0", Protocol: 2, Now: t0 + 99*sec},
			change: func(s *State) {
				m := s.Members["a"]
				m.Version, m.Protocol = "1.5.0", 2
				s.Members["a"] = m
			},
		},
		{
			name:  "a rolled-back member clears its advertisement",
			given: fresh,
			cmd:   Command{Op: OpSetVersion, Node: "b"},
			change: func(s *State) {
				m := s.Members["b"]
				m.Version, m.Protocol = "", 0
				s.Members["b"] = m
			},
		},
		{
			name:  "set_member keeps the advertisement",
			given: fresh,
			cmd:   Command{Op: OpSetMember, Member: member("a", "10.0.0.9"), Now: t0},
			change: func(s *State) {
				s.Members["a"] = Member{ID: "a", RaftAddr: "10.0.0.9:8471", HTTPAddr: "10.0.0.9:8470", Protocol: 1}
			},
		},
		{name: "not a member", given: fresh, cmd: Command{Op: OpSetVersion, Node: "zz", Version: "1.5.0", Protocol: 1}},
		{name: "set_member never carries it", given: fresh, cmd: Command{Op: OpSetMember, Member: &Member{ID: "c", RaftAddr: "10.0.0.3:8471", Protocol: 1}}, wantErr: ErrBadCommand},
		{name: "a version that is not printable", given: fresh, cmd: Command{Op: OpSetVersion, Node: "a", Version: "1.5\n"}, wantErr: ErrBadCommand},
		{name: "a negative protocol", given: fresh, cmd: Command{Op: OpSetVersion, Node: "a", Protocol: -1}, wantErr: ErrBadCommand},
		{name: "a long version", given: fresh, cmd: Command{Op: OpSetVersion, Node: "a", Version: strings.Repeat("1", MaxVersionLen+1)}, wantErr: ErrBadCommand},
	})
}

// TestSnapshotsReadAcrossProtocols0And1: each release reads the other's
// snapshots (format 1): a leader of either sends them to the other.
func TestSnapshotsReadAcrossProtocols0And1(t *testing.T) {
	r := &twoReleases{t: t}
	for _, c := range mixedLog() {
		r.apply(c)
	}
	r.now.Removed = []string{"d"}
	var buf strings.Builder
	if err := r.now.writeSnapshot(&buf, "1.4.0"); err != nil {
		t.Fatal(err)
	}
	old, err := fsmv0.ReadSnapshot(strings.NewReader(buf.String()))
	if err != nil {
		t.Fatalf("protocol 0 reads a snapshot of protocol 1: %v", err)
	}
	if !reflect.DeepEqual(old, r.old) {
		t.Errorf("protocol 0 read %+v, want %+v", old, r.old)
	}
	buf.Reset()
	if err := r.old.WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	back, err := ReadSnapshot(strings.NewReader(buf.String()))
	if err != nil {
		t.Fatalf("protocol 1 reads a snapshot of protocol 0: %v", err)
	}
	if err := CheckSnapshot(strings.NewReader(buf.String())); err != nil {
		t.Errorf("CheckSnapshot of protocol 0's snapshot: %v", err)
	}
	if !reflect.DeepEqual(project(t, back), r.old) || back.Speaks(1) {
		t.Errorf("protocol 1 read %+v, want %+v with no advertisement", back, r.old)
	}
}

// TestSnapshotOfANewerFormatIsRefusedNamingBothVersions: a snapshot that
// a later release wrote in a newer format is refused, never misread.
func TestSnapshotOfANewerFormatIsRefusedNamingBothVersions(t *testing.T) {
	newer := `{"version":2,"protocol":3,"release":"2.0.0","state":{"lease":{"holder":"","token":9},"cursor":{"last_event_id":5},"future":[1,2]}}` + "\n"
	for name, read := range map[string]func() error{
		"ReadSnapshot":  func() error { _, err := ReadSnapshot(strings.NewReader(newer)); return err },
		"CheckSnapshot": func() error { return CheckSnapshot(strings.NewReader(newer)) },
		"FSM.Restore": func() error {
			return New().Restore(&readCloser{Reader: strings.NewReader(newer)})
		},
	} {
		err := read()
		if !errors.Is(err, ErrNewerState) {
			t.Errorf("%s: %v, want %v", name, err, ErrNewerState)
			continue
		}
		for _, want := range []string{"format version 2", "geocursor 2.0.0, protocol 3", "format version 1 at most (protocol 1)"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %q does not name %q", name, err, want)
			}
		}
	}
	if err := CheckSnapshot(strings.NewReader(`{"state":{}}`)); err == nil || errors.Is(err, ErrNewerState) {
		t.Errorf("a snapshot without a format: %v", err)
	}
	// The header is read before the state, however large the state.
	f := New()
	f.SetRelease("1.4.0")
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(sink.String(), `{"version":1,"protocol":1,"release":"1.4.0","state":`) {
		t.Errorf("snapshot header: %.80s", sink.String())
	}
}

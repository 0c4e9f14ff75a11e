package fsm

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

// memSink is an in-memory raft.SnapshotSink.
type memSink struct {
	bytes.Buffer
	writeErr  error
	closed    bool
	cancelled bool
}

func (s *memSink) Write(p []byte) (int, error) {
	if s.writeErr != nil {
		return 0, s.writeErr
	}
	return s.Buffer.Write(p)
}
func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { s.closed = true; return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

// readCloser records whether Restore closed it.
type readCloser struct {
	io.Reader
	closed bool
}

func (r *readCloser) Close() error { r.closed = true; return nil }

// richFSM returns an FSM brought through the log to a state with members,
// open gaps, counters, a held lease and a pause, and the log's last index.
func richFSM(t *testing.T) *FSM {
	t.Helper()
	f := New()
	for i, c := range []Command{
		{Op: OpSetMember, Member: &Member{ID: "a", RaftAddr: "10.0.0.1:8471", HTTPAddr: "10.0.0.1:8470"}},
		{Op: OpSetMember, Member: &Member{ID: "b", RaftAddr: "10.0.0.2:8471", HTTPAddr: "10.0.0.2:8470"}},
		{Op: OpSetMember, Member: &Member{ID: "c", RaftAddr: "10.0.0.3:8471"}},
		{Op: OpAcquire, Node: "a", TTL: ttl, Now: t0},
		{Op: OpAdvance, Node: "a", Token: 1, Now: t0 + 1, Advance: &Advance{
			LastEventID: 500, LastEventDate: t0 - sec, Events: 497, DeadLetters: 4, GapsDropped: 1,
			Gaps: []Gap{{ID: 17, FirstSeen: t0 - 9*sec}, {ID: 498, FirstSeen: t0 - sec}}}},
		{Op: OpAcquire, Node: "b", TTL: ttl, Now: t0 + 2},
		{Op: OpSetPaused, Paused: true},
	} {
		applyLog(t, f, uint64(i+1), c)
	}
	return f
}

// applyLog applies c through raft.FSM.Apply and fails the test on refusal.
func applyLog(t *testing.T, f *FSM, index uint64, c Command) Result {
	t.Helper()
	b, err := c.Encode()
	if err != nil {
		t.Fatalf("encode %s: %v", c.Op, err)
	}
	res, ok := f.Apply(&raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: b}).(Result)
	if !ok {
		t.Fatalf("Apply returned %T, want Result", res)
	}
	if res.Err != nil {
		t.Fatalf("apply %s: %v", c.Op, res.Err)
	}
	return res
}

func wantRichState() State {
	return State{
		Lease:  Lease{Holder: "b", Token: 2, ExpiresAt: t0 + 2 + int64(ttl)},
		Cursor: Cursor{LastEventID: 500, LastEventDate: t0 - sec, Paused: true},
		Gaps:   []Gap{{ID: 17, FirstSeen: t0 - 9*sec}, {ID: 498, FirstSeen: t0 - sec}},
		Members: map[string]Member{
			"a": {ID: "a", RaftAddr: "10.0.0.1:8471", HTTPAddr: "10.0.0.1:8470"},
			"b": {ID: "b", RaftAddr: "10.0.0.2:8471", HTTPAddr: "10.0.0.2:8470"},
			"c": {ID: "c", RaftAddr: "10.0.0.3:8471"},
		},
		Stats:      Stats{EventsProcessed: 497, Batches: 1, DeadLetters: 4, GapsDropped: 1},
		LastHolder: "b",
		// The pause carries no stamp: it is applied at the clock.
		Clock:   t0 + 2,
		GapsSum: GapSum([]Gap{{ID: 17}, {ID: 498}}),
	}
}

func TestWriteReadSnapshotRoundTrip(t *testing.T) {
	revoked := rich()
	revoked.RevokedFrom = "a"
	revoked.GapsSum = GapSum(revoked.Gaps)
	for name, s := range map[string]State{
		"fresh":   {},
		"rich":    wantRichState(),
		"revoked": revoked,
	} {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := s.WriteSnapshot(&buf); err != nil {
				t.Fatalf("WriteSnapshot: %v", err)
			}
			got, err := ReadSnapshot(&buf)
			if err != nil {
				t.Fatalf("ReadSnapshot: %v", err)
			}
			if !reflect.DeepEqual(got, s) {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, s)
			}
		})
	}
}

func TestFSMSnapshotPersistRestoreRoundTrip(t *testing.T) {
	src := richFSM(t)
	if got, want := src.State(), wantRichState(); !reflect.DeepEqual(got, want) {
		t.Fatalf("state after the log:\n got %+v\nwant %+v", got, want)
	}
	snap, err := src.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	// The snapshot is a point in time: later commands do not reach it.
	applyLog(t, src, 100, Command{Op: OpSetMember, Member: &Member{ID: "late", RaftAddr: "x:1"}})
	applyLog(t, src, 101, Command{Op: OpSetPaused, Paused: false})

	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("Persist: %v", err)
	}
	snap.Release()
	if !sink.closed || sink.cancelled {
		t.Errorf("sink closed=%v cancelled=%v, want closed and not cancelled", sink.closed, sink.cancelled)
	}

	dst := New()
	rc := &readCloser{Reader: bytes.NewReader(sink.Bytes())}
	if err := dst.Restore(rc); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	if !rc.closed {
		t.Errorf("Restore did not close the snapshot")
	}
	if got, want := dst.State(), wantRichState(); !reflect.DeepEqual(got, want) {
		t.Errorf("restored state:\n got %+v\nwant %+v", got, want)
	}

	// The restored FSM goes on from there exactly like the original would.
	res := applyLog(t, dst, 8, Command{Op: OpSetPaused, Paused: false})
	if res.Cursor.Paused {
		t.Errorf("resume after restore left the cursor paused")
	}
	res = applyLog(t, dst, 9, Command{Op: OpAcquire, Node: "c", TTL: ttl, Now: t0 + 2 + int64(ttl)})
	if res.Lease.Token != 3 {
		t.Errorf("first grant after restore took token %d, want 3", res.Lease.Token)
	}
}

func TestPersistCancelsSinkOnWriteError(t *testing.T) {
	snap, err := richFSM(t).Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	boom := errors.New("disk full")
	sink := &memSink{writeErr: boom}
	if err := snap.Persist(sink); !errors.Is(err, boom) {
		t.Errorf("Persist = %v, want it to wrap %v", err, boom)
	}
	if !sink.cancelled || sink.closed {
		t.Errorf("sink closed=%v cancelled=%v, want cancelled and not closed", sink.closed, sink.cancelled)
	}
}

func TestReadSnapshotRefusesUnsupportedVersion(t *testing.T) {
	for name, data := range map[string]string{
		"future version":  `{"version":2,"state":{"lease":{"holder":"a","token":9}}}`,
		"version 0":       `{"version":0,"state":{}}`,
		"missing version": `{"state":{"lease":{"token":9}}}`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ReadSnapshot(strings.NewReader(data))
			if err == nil || !strings.Contains(err.Error(), "version") {
				t.Errorf("ReadSnapshot = %v, want a version error", err)
			}

			// A refused snapshot leaves the FSM as it was.
			f := richFSM(t)
			if err := f.Restore(io.NopCloser(strings.NewReader(data))); err == nil {
				t.Errorf("Restore accepted %s", data)
			}
			if got, want := f.State(), wantRichState(); !reflect.DeepEqual(got, want) {
				t.Errorf("state after a refused restore:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestReadSnapshotRefusesGarbage(t *testing.T) {
	var buf bytes.Buffer
	if err := wantRichState().WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{
		"empty":     nil,
		"not json":  []byte("raft"),
		"truncated": buf.Bytes()[:buf.Len()/2],
	} {
		if _, err := ReadSnapshot(bytes.NewReader(data)); err == nil {
			t.Errorf("%s: ReadSnapshot accepted %q", name, data)
		}
	}
}

func TestRestoreDiscardsPreviousState(t *testing.T) {
	small := State{
		Lease:   Lease{Token: 40},
		Cursor:  Cursor{LastEventID: 7},
		Members: map[string]Member{"z": {ID: "z", RaftAddr: "10.9.9.9:8471"}},
	}
	for name, s := range map[string]State{"smaller state": small, "fresh state": {}} {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := s.WriteSnapshot(&buf); err != nil {
				t.Fatal(err)
			}
			f := richFSM(t)
			if err := f.Restore(io.NopCloser(&buf)); err != nil {
				t.Fatalf("Restore: %v", err)
			}
			if got := f.State(); !reflect.DeepEqual(got, s) {
				t.Errorf("restored state keeps earlier state:\n got %+v\nwant %+v", got, s)
			}
		})
	}
}

func TestFSMStateIsACopy(t *testing.T) {
	f := richFSM(t)
	s := f.State()
	s.Members["a"] = Member{ID: "a", RaftAddr: "changed"}
	s.Gaps[0].ID = 1
	if got, want := f.State(), wantRichState(); !reflect.DeepEqual(got, want) {
		t.Errorf("changing a returned state changed the FSM:\n got %+v\nwant %+v", got, want)
	}
}

func TestWatchSignalsAcceptedCommandsAndRestore(t *testing.T) {
	f := richFSM(t)
	closed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}

	_, ch := f.Watch()
	res := f.Apply(&raft.Log{Index: 50, Data: []byte(`{"op":"renew","node":"a","token":1,"ttl":1}`)}).(Result)
	if !errors.Is(res.Err, ErrStaleToken) {
		t.Fatalf("stale renew: err = %v", res.Err)
	}
	f.Apply(&raft.Log{Index: 51, Data: []byte(`not json`)})
	if closed(ch) {
		t.Errorf("watch fired on refused commands")
	}

	applyLog(t, f, 52, Command{Op: OpSetPaused, Paused: false})
	if !closed(ch) {
		t.Errorf("watch did not fire on an accepted command")
	}
	st, ch := f.Watch()
	if st.Cursor.Paused {
		t.Errorf("Watch returned the state before the change")
	}
	var buf bytes.Buffer
	if err := (State{}).WriteSnapshot(&buf); err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(io.NopCloser(&buf)); err != nil {
		t.Fatal(err)
	}
	if !closed(ch) {
		t.Errorf("watch did not fire on restore")
	}
}

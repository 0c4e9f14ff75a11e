package cursor

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/internal/localcoord"
)

func TestNextPosition(t *testing.T) {
	now := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	at := func(id int64) time.Time { return now.Add(-time.Hour).Add(time.Duration(id) * time.Second) }
	evs := func(ids ...int64) []Event {
		out := make([]Event, len(ids))
		for i, id := range ids {
			out[i] = Event{ID: id, CreatedAt: at(id)}
		}
		return out
	}
	gap := func(id int64, age time.Duration) fsm.Gap { return fsm.Gap{ID: id, FirstSeen: now.Add(-age).UnixNano()} }
	fresh := func(ids ...int64) []fsm.Gap {
		out := make([]fsm.Gap, len(ids))
		for i, id := range ids {
			out[i] = gap(id, 0)
		}
		return out
	}
	const timeout = time.Hour

	tests := []struct {
		name        string
		start       Position
		events      []Event
		maxGaps     int
		gapTimeout  time.Duration
		want        Position
		wantDropped []int64
	}{
		{
			name:  "empty batch keeps the position",
			start: Position{LastEventID: 10, LastEventDate: at(10)},
			want:  Position{LastEventID: 10, LastEventDate: at(10)},
		},
		{
			name:   "contiguous batch from the beginning",
			start:  Position{},
			events: evs(1, 2, 3),
			want:   Position{LastEventID: 3, LastEventDate: at(3)},
		},
		{
			name:   "holes become gaps first seen now",
			start:  Position{LastEventID: 10, LastEventDate: at(10)},
			events: evs(11, 13, 16),
			want:   Position{LastEventID: 16, LastEventDate: at(16), Gaps: fresh(12, 14, 15)},
		},
		{
			name:   "hole right after the start position",
			start:  Position{LastEventID: 10},
			events: evs(12),
			want:   Position{LastEventID: 12, LastEventDate: at(12), Gaps: fresh(11)},
		},
		{
			name:   "events out of order in the batch",
			start:  Position{LastEventID: 10},
			events: evs(14, 11, 12),
			want:   Position{LastEventID: 14, LastEventDate: at(14), Gaps: fresh(13)},
		},
		{
			name:   "gap rows close their gaps and keep their first-seen time otherwise",
			start:  Position{LastEventID: 20, LastEventDate: at(20), Gaps: []fsm.Gap{gap(5, time.Minute), gap(7, 2*time.Minute), gap(9, time.Second)}},
			events: evs(7, 21),
			want:   Position{LastEventID: 21, LastEventDate: at(21), Gaps: []fsm.Gap{gap(5, time.Minute), gap(9, time.Second)}},
		},
		{
			name:   "batch of only gap rows does not move the position",
			start:  Position{LastEventID: 20, LastEventDate: at(20), Gaps: []fsm.Gap{gap(5, time.Minute), gap(7, time.Minute)}},
			events: evs(5, 7),
			want:   Position{LastEventID: 20, LastEventDate: at(20)},
		},
		{
			name:        "old gaps time out",
			start:       Position{LastEventID: 20, Gaps: []fsm.Gap{gap(3, 2*time.Hour), gap(5, time.Hour+time.Nanosecond), gap(6, time.Hour), gap(8, time.Minute)}},
			gapTimeout:  timeout,
			want:        Position{LastEventID: 20, Gaps: []fsm.Gap{gap(6, time.Hour), gap(8, time.Minute)}},
			wantDropped: []int64{3, 5},
		},
		{
			name:       "a visible gap row is processed even past the timeout",
			start:      Position{LastEventID: 20, Gaps: []fsm.Gap{gap(3, 2*time.Hour)}},
			events:     evs(3),
			gapTimeout: timeout,
			want:       Position{LastEventID: 20},
		},
		{
			name:       "no timeout when gapTimeout is zero",
			start:      Position{LastEventID: 20, Gaps: []fsm.Gap{gap(3, 1000*time.Hour)}},
			gapTimeout: 0,
			want:       Position{LastEventID: 20, Gaps: []fsm.Gap{gap(3, 1000*time.Hour)}},
		},
		{
			name:        "a sequence jump keeps only the highest maxGaps gaps",
			start:       Position{LastEventID: 10},
			events:      evs(11, 1000011),
			maxGaps:     3,
			want:        Position{LastEventID: 1000011, LastEventDate: at(1000011), Gaps: fresh(1000008, 1000009, 1000010)},
			wantDropped: seq(12, 1000007),
		},
		{
			name:        "too many gaps drop existing low ones first",
			start:       Position{LastEventID: 10, Gaps: []fsm.Gap{gap(2, time.Minute), gap(4, time.Minute), gap(6, time.Minute)}},
			events:      evs(4, 12, 14),
			maxGaps:     3,
			want:        Position{LastEventID: 14, LastEventDate: at(14), Gaps: []fsm.Gap{gap(6, time.Minute), gap(11, 0), gap(13, 0)}},
			wantDropped: []int64{2},
		},
		{
			name:        "timeout and limit together",
			start:       Position{LastEventID: 10, Gaps: []fsm.Gap{gap(1, 3*time.Hour), gap(2, time.Minute), gap(3, time.Minute)}},
			events:      evs(13),
			gapTimeout:  timeout,
			maxGaps:     2,
			want:        Position{LastEventID: 13, LastEventDate: at(13), Gaps: fresh(11, 12)},
			wantDropped: []int64{1, 2, 3},
		},
		{
			name:   "unsorted start gaps come out sorted",
			start:  Position{LastEventID: 10, Gaps: []fsm.Gap{gap(8, time.Minute), gap(3, time.Minute)}},
			events: evs(12),
			want:   Position{LastEventID: 12, LastEventDate: at(12), Gaps: []fsm.Gap{gap(3, time.Minute), gap(8, time.Minute), gap(11, 0)}},
		},
		{
			name:   "an event at or below the position that is not a gap changes nothing",
			start:  Position{LastEventID: 10, LastEventDate: at(10)},
			events: evs(9, 10),
			want:   Position{LastEventID: 10, LastEventDate: at(10)},
		},
		{
			name:   "duplicate rows count once",
			start:  Position{LastEventID: 10},
			events: evs(12, 12),
			want:   Position{LastEventID: 12, LastEventDate: at(12), Gaps: fresh(11)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			startGaps := append([]fsm.Gap(nil), tt.start.Gaps...)
			got, dropped := NextPosition(tt.start, tt.events, now, tt.gapTimeout, tt.maxGaps)
			if got.LastEventID != tt.want.LastEventID || !got.LastEventDate.Equal(tt.want.LastEventDate) {
				t.Errorf("position = %d @ %v, want %d @ %v", got.LastEventID, got.LastEventDate, tt.want.LastEventID, tt.want.LastEventDate)
			}
			if len(got.Gaps) != 0 || len(tt.want.Gaps) != 0 {
				if !reflect.DeepEqual(got.Gaps, tt.want.Gaps) {
					t.Errorf("gaps = %v, want %v", got.Gaps, tt.want.Gaps)
				}
			}
			if len(dropped) != 0 || len(tt.wantDropped) != 0 {
				if !reflect.DeepEqual(dropped, tt.wantDropped) {
					t.Errorf("dropped = %v, want %v", abbrev(dropped), abbrev(tt.wantDropped))
				}
			}
			if !reflect.DeepEqual(tt.start.Gaps, startGaps) {
				t.Errorf("NextPosition modified start.Gaps: %v, was %v", tt.start.Gaps, startGaps)
			}
		})
	}
}

func seq(from, to int64) []int64 {
	out := make([]int64, 0, to-from+1)
	for id := from; id <= to; id++ {
		out = append(out, id)
	}
	return out
}

func abbrev(ids []int64) any {
	if len(ids) > 10 {
		return []any{ids[:5], "...", len(ids), ids[len(ids)-5:]}
	}
	return ids
}

// TestGapDeltaRebuildsTheSet checks gapDelta against the FSM: the delta
// from one gap set to another, applied to the first, gives the second.
func TestGapDeltaRebuildsTheSet(t *testing.T) {
	set := func(ids ...int64) []fsm.Gap {
		var gs []fsm.Gap
		for _, id := range ids {
			gs = append(gs, fsm.Gap{ID: id, FirstSeen: id * 10})
		}
		return gs
	}
	cases := []struct{ from, to []fsm.Gap }{
		{nil, nil},
		{nil, set(101, 105)},
		{set(3, 5, 9), nil},
		{set(3, 5, 9), set(5, 101)},
		{set(3, 5, 9), set(3, 5, 9, 150)},
		{set(1, 2, 3, 4), set(2, 4, 120, 130)},
	}
	for _, c := range cases {
		closed, opened := gapDelta(c.from, c.to)
		st := fsm.State{Lease: fsm.Lease{Holder: "a", Token: 1, ExpiresAt: 1e18}, Cursor: fsm.Cursor{LastEventID: 100}, Gaps: c.from, GapsSum: fsm.GapSum(c.from)}
		res := st.Apply(fsm.Command{Op: fsm.OpAdvance, Node: "a", Token: 1, Now: 1, Advance: &fsm.Advance{
			LastEventID: 200, GapsDelta: true, GapsBase: fsm.GapSum(c.from), GapsClosed: closed, GapsOpened: opened}})
		if res.Err != nil {
			t.Fatalf("delta %v -> %v (closed %v, opened %v) refused: %v", c.from, c.to, closed, opened, res.Err)
		}
		if st.GapsSum != fsm.GapSum(c.to) {
			t.Errorf("delta %v -> %v: the state's checksum is not the new set's", c.from, c.to)
		}
		if !reflect.DeepEqual(st.Gaps, c.to) {
			t.Errorf("delta %v -> %v (closed %v, opened %v) gives %v", c.from, c.to, closed, opened, st.Gaps)
		}
	}
}

// A few open gaps are fetched by every batch. A large set is probed in
// the background at most every manyGapsProbeInterval, and a batch fetches
// only the gaps a probe found visible that are still open.
func TestBatchesProbeALargeGapSetInTheBackground(t *testing.T) {
	few := Position{LastEventID: 100, Gaps: []fsm.Gap{{ID: 5}, {ID: 7}}}
	many := Position{LastEventID: 10 * manyGaps}
	for id := int64(1); id <= manyGaps+2; id++ {
		many.Gaps = append(many.Gaps, fsm.Gap{ID: id})
	}
	// The source has shown gaps 3 and 9 by now.
	src := &memSource{}
	for _, id := range []int64{3, 9, 2000} {
		src.events = append(src.events, Event{ID: id})
	}
	l := NewLoop(LoopConfig{LeaseTTL: time.Second}, localcoord.New("a"), src, nil, nil, nil)
	ctx := context.Background()
	t0 := time.Unix(1_764_000_000, 0)
	for i := range 3 {
		if got := l.gapIDs(ctx, few, t0.Add(time.Duration(i)*time.Millisecond)); len(got) != 2 {
			t.Fatalf("batch %d fetches %v of 2 open gaps", i, got)
		}
	}
	if got := l.gapIDs(ctx, many, t0); len(got) != 0 {
		t.Fatalf("the batch that starts the first probe fetches %v, want none: the probe runs in the background", got)
	}
	waitProbe(t, l)
	// Gap 9 was closed meanwhile (given up): only 3 is fetched.
	closed9 := Position{LastEventID: many.LastEventID, Gaps: slices.DeleteFunc(slices.Clone(many.Gaps), func(g fsm.Gap) bool { return g.ID == 9 })}
	if got := l.gapIDs(ctx, closed9, t0.Add(time.Millisecond)); fmt.Sprint(got) != "[3]" {
		t.Errorf("the batch after the probe fetches %v, want [3] (9 is no longer open)", got)
	}
	if got := l.gapIDs(ctx, many, t0.Add(2*time.Millisecond)); len(got) != 0 {
		t.Errorf("the next batch fetches %v, want none until the next probe", got)
	}
	if l.gapIDs(ctx, many, t0.Add(manyGapsProbeInterval-time.Millisecond)); probeRunning(l) {
		t.Errorf("a probe started before manyGapsProbeInterval had passed")
	}
	if l.gapIDs(ctx, many, t0.Add(manyGapsProbeInterval)); !probeRunning(l) && len(l.batchProbe.found) == 0 {
		t.Errorf("no probe ran once manyGapsProbeInterval had passed")
	}
	waitProbe(t, l)
}

func probeRunning(l *Loop) bool {
	l.batchProbe.mu.Lock()
	defer l.batchProbe.mu.Unlock()
	return l.batchProbe.running
}

func waitProbe(t *testing.T, l *Loop) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); probeRunning(l); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the probe did not finish")
		}
	}
}

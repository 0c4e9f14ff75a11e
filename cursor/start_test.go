package cursor

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"

	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/internal/localcoord"
)

// Where a fresh tracking database begins (design section 11), and what a
// log pruned past the cursor does.

func startTestLoop(t *testing.T, start string, src *Source, tr *Tracking, coord Coordinator, logs *syncBuffer) *Loop {
	t.Helper()
	return startTestLoopGapTimeout(t, start, src, tr, coord, logs, time.Hour)
}

func startTestLoopGapTimeout(t *testing.T, start string, src *Source, tr *Tracking, coord Coordinator, logs *syncBuffer, gapTimeout time.Duration) *Loop {
	t.Helper()
	return NewLoop(LoopConfig{Start: start,
		BatchSize: 100, PollInterval: 10 * time.Millisecond, GapTimeout: gapTimeout,
		LeaseTTL: 5 * time.Second, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond,
	}, coord, src, tr, nil, hclog.New(&hclog.LoggerOptions{Output: logs, Level: hclog.Info}))
}

// processed returns the event IDs in geo_jobs and geo_dead_letters.
func processed(t *testing.T, conn *pgx.Conn) []int64 {
	t.Helper()
	rows, err := conn.Query(testContext(t), `SELECT event_id FROM geo_jobs UNION ALL SELECT event_id FROM geo_dead_letters ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func idRange(from, to int64) string {
	var s []string
	for id := from; id <= to; id++ {
		s = append(s, fmt.Sprint(id))
	}
	return "[" + strings.Join(s, " ") + "]"
}

// appendEvents writes well-formed events from..to.
func appendEvents(t *testing.T, db *sourceDB, from, to int64) {
	t.Helper()
	exec(t, db.conn, `INSERT INTO geo_events (id, replicable_name, event_name, payload, created_at)
SELECT i, 'lfs_object', 'updated', jsonb_build_object('model_record_id', i), now() FROM generate_series($1::bigint, $2::bigint) AS i`, from, to)
	exec(t, db.conn, `INSERT INTO geo_event_log (id, created_at, geo_event_id)
SELECT i, now() AT TIME ZONE 'utc', i FROM generate_series($1::bigint, $2::bigint) AS i`, from, to)
}

func TestFreshTrackingDatabaseBeginsWhereItShould(t *testing.T) {
	for _, tc := range []struct {
		name   string
		start  string
		gitlab int64 // event_log_states row GitLab's cursor left; 0: none
		want   string
	}{
		// GitLab's behaviour: the old events are left to backfill; every
		// event written after start is processed.
		{name: "head skips the old events and processes every new one", start: StartHead, want: idRange(21, 30)},
		{name: "oldest replays the retained log", start: StartOldest, want: idRange(1, 30)},
		// Taking over from geo-logcursor: right after its row, whatever
		// source.start says.
		{name: "GitLab's own cursor is continued from", start: StartHead, gitlab: 12, want: idRange(13, 30)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			db := bulkSource(t, 20)
			src := openTestSource(t, db.dsn)
			tr, conn := openTestTracking(t)
			if tc.gitlab > 0 {
				exec(t, conn, `INSERT INTO event_log_states (event_id, created_at) VALUES ($1, now())`, tc.gitlab)
			}
			var logs syncBuffer
			coord := localcoord.New("a")
			loop := startTestLoop(t, tc.start, src, tr, coord, &logs)
			ctx, stop := startLoop(t, loop)
			defer stop()
			// The fence is placed at start, before any new event.
			for {
				f, err := tr.Fence(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if f.Positioned {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			appendEvents(t, db, 21, 30)
			for {
				if st, _ := coord.Watch(); st.Cursor.LastEventID == 30 {
					break
				}
				select {
				case <-ctx.Done():
					t.Fatalf("the cursor did not reach 30; log:\n%s", logs.String())
				case <-time.After(10 * time.Millisecond):
				}
			}
			stop()
			if got := fmt.Sprint(processed(t, conn)); got != tc.want {
				t.Errorf("processed %s, want %s; log:\n%s", got, tc.want, logs.String())
			}
			var state int64
			if err := conn.QueryRow(testContext(t), `SELECT event_id FROM event_log_states`).Scan(&state); err != nil || state != 30 {
				t.Errorf("event_log_states holds %d (%v), want the one row at 30", state, err)
			}
		})
	}
}

// A tracking database that geocursor never wrote, under a group whose
// cursor has moved, is the wrong database: the holder says so and writes
// nothing.
func TestFreshTrackingDatabaseUnderAMovedCursorIsRefused(t *testing.T) {
	db := bulkSource(t, 20)
	src := openTestSource(t, db.dsn)
	tr, conn := openTestTracking(t)
	coord := localcoord.New("a")
	ctx := testContext(t)
	res, _ := coord.Apply(ctx, fsm.Command{Op: fsm.OpAcquire, Node: "a", TTL: time.Second})
	coord.Apply(ctx, fsm.Command{Op: fsm.OpAdvance, Node: "a", Token: res.Lease.Token, Advance: &fsm.Advance{LastEventID: 10}}) //nolint:errcheck
	var logs syncBuffer
	loop := startTestLoop(t, StartHead, src, tr, coord, &logs)
	_, stop := startLoop(t, loop)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "has never been written to by geocursor") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	stop()
	if !strings.Contains(logs.String(), "point tracking.dsn at the database this group has been writing to") {
		t.Errorf("no clear error; log:\n%s", logs.String())
	}
	if ids := processed(t, conn); len(ids) != 0 {
		t.Errorf("wrote %v into the wrong database", ids)
	}
}

// event_log_states never runs ahead of an open gap: it stays one below the
// lowest, and moves on once the gap is filled.
func TestEventLogStatesStaysBelowTheLowestOpenGap(t *testing.T) {
	tr, conn := openTestTracking(t)
	state := func() int64 {
		var id int64
		if err := conn.QueryRow(testContext(t), `SELECT event_id FROM event_log_states`).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	ev := func(id int64) Event {
		return Event{ID: id, CreatedAt: eventTime(id), GeoEventID: &id,
			GeoEvent: &GeoEvent{ID: id, ReplicableName: "lfs_object", EventName: "updated", Payload: []byte(`{"model_record_id": 1}`)}}
	}
	// 1, 2, 5: 3 and 4 are gaps.
	commitAll(t, tr, 1, ev(1), ev(2), ev(5))
	if got := state(); got != 2 {
		t.Errorf("event_log_states at %d with gaps 3 and 4, want 2", got)
	}
	commitAll(t, tr, 1, ev(4), ev(6))
	if got := state(); got != 2 {
		t.Errorf("event_log_states at %d with gap 3 open, want 2", got)
	}
	commitAll(t, tr, 1, ev(3))
	if got := state(); got != 6 {
		t.Errorf("event_log_states at %d with every gap filled, want 6", got)
	}
	var rows int
	if err := conn.QueryRow(testContext(t), `SELECT count(*) FROM event_log_states`).Scan(&rows); err != nil || rows != 1 {
		t.Errorf("event_log_states has %d rows (%v), want GitLab's one", rows, err)
	}
}

func TestPastHorizon(t *testing.T) {
	gaps := func(ids ...int64) []fsm.Gap {
		var g []fsm.Gap
		for _, id := range ids {
			g = append(g, fsm.Gap{ID: id})
		}
		return g
	}
	for _, tc := range []struct {
		name         string
		start        Position
		oldest       int64
		room         int
		wantLast     int64
		wantGaps     string
		wantUnseen   string
		wantUnseenNo int64
	}{
		{name: "unknown horizon", start: Position{LastEventID: 10, Gaps: gaps(4)}, oldest: 0, room: 100, wantLast: 10, wantGaps: "[4]", wantUnseen: "0..0"},
		{name: "horizon below the cursor", start: Position{LastEventID: 10, Gaps: gaps(4)}, oldest: 3, room: 100, wantLast: 10, wantGaps: "[4]", wantUnseen: "0..0"},
		{name: "a gap below the horizon stays open: it may be in flight", start: Position{LastEventID: 10, Gaps: gaps(4, 8)}, oldest: 6, room: 100, wantLast: 10, wantGaps: "[4 8]", wantUnseen: "0..0"},
		{name: "a pruned range the gap set has room for is left to become gaps", start: Position{LastEventID: 10, Gaps: gaps(4)}, oldest: 51, room: 40, wantLast: 10, wantGaps: "[4]", wantUnseen: "0..0"},
		{name: "a pruned range too large for the gap set is skipped unseen", start: Position{LastEventID: 10, Gaps: gaps(4)}, oldest: 51, room: 39, wantLast: 50, wantGaps: "[4]", wantUnseen: "11..50", wantUnseenNo: 40},
		{name: "horizon right after the cursor", start: Position{LastEventID: 10}, oldest: 11, room: 0, wantLast: 10, wantGaps: "[]", wantUnseen: "0..0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next, p := pastHorizon(tc.start, tc.oldest, tc.room)
			var ids []int64
			for _, g := range next.Gaps {
				ids = append(ids, g.ID)
			}
			if next.LastEventID != tc.wantLast || fmt.Sprint(idsOrEmpty(ids)) != tc.wantGaps ||
				fmt.Sprintf("%d..%d", p.unseenFirst, p.unseenLast) != tc.wantUnseen || p.count != tc.wantUnseenNo {
				t.Errorf("pastHorizon = last %d gaps %v, unseen %d..%d (%d); want last %d gaps %s, unseen %s (%d)",
					next.LastEventID, ids, p.unseenFirst, p.unseenLast, p.count, tc.wantLast, tc.wantGaps, tc.wantUnseen, tc.wantUnseenNo)
			}
		})
	}
}

func TestBelowHorizonCountsTheGivenUpIDsTheLogNoLongerKeeps(t *testing.T) {
	below, rest := belowHorizon([]int64{3, 5, 9, 12}, 10)
	if below.count != 3 || below.unseenFirst != 3 || below.unseenLast != 9 || fmt.Sprint(rest) != "[12]" {
		t.Errorf("belowHorizon = %+v, rest %v; want 3..9 (3), rest [12]", below, rest)
	}
	if below, rest := belowHorizon([]int64{3, 5}, 0); below.count != 0 || len(rest) != 2 {
		t.Errorf("with no horizon known: %+v, rest %v; want nothing below, both given up as rolled back", below, rest)
	}
}

func idsOrEmpty(ids []int64) []int64 {
	if ids == nil {
		return []int64{}
	}
	return ids
}

// A site that was away while the primary pruned its log past the cursor:
// the pruned range is reported once, counted in the replicated stats, and
// processing goes on from the oldest event left (at once when the range is
// larger than the gap set holds, else after the gap timeout).
func TestLogPrunedPastTheCursorIsReportedAndSkipped(t *testing.T) {
	db := bulkSource(t, 40)
	src := openTestSource(t, db.dsn)
	tr, conn := openTestTracking(t)
	coord := localcoord.New("a")
	var logs syncBuffer
	loop := startTestLoop(t, StartOldest, src, tr, coord, &logs)
	runUntilDrained(t, loop, coord, 40)

	// The site is away; the primary writes 41..100 and prunes below 71.
	appendEvents(t, db, 41, 100)
	exec(t, db.conn, `DELETE FROM geo_event_log WHERE id < 71`)
	// 30 IDs fit in the gap set: they are open gaps until the gap timeout
	// (they might be in flight), then given up as pruned.
	loop = startTestLoopGapTimeout(t, StartOldest, src, tr, coord, &logs, 300*time.Millisecond)
	runUntilDrained(t, loop, coord, 100)
	waitGapsClosed(t, coord)

	if got, want := fmt.Sprint(processed(t, conn)), idRange(1, 40)[:len(idRange(1, 40))-1]+" "+idRange(71, 100)[1:]; got != want {
		t.Errorf("processed %s, want %s", got, want)
	}
	st, _ := coord.Watch()
	if st.Stats.EventsPrunedUnseen != 30 {
		t.Errorf("stats.events_pruned_unseen = %d, want 30 (41..70)", st.Stats.EventsPrunedUnseen)
	}
	if n := strings.Count(logs.String(), "the primary pruned events from its log before this site processed them"); n != 1 {
		t.Errorf("the pruned range was logged %d times, want once; log:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "first_id=41 last_id=70 count=30") {
		t.Errorf("the log does not name the range 41..70; log:\n%s", logs.String())
	}
}

// waitGapsClosed waits until the replicated state has no open gaps.
func waitGapsClosed(t *testing.T, coord Coordinator) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, changed := coord.Watch()
		if len(st.Gaps) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d gaps still open after 10s", len(st.Gaps))
		}
		select {
		case <-changed:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// The fence is placed on an empty log; then a writer takes the log's first
// ID and holds its transaction open while later events commit: the oldest
// visible event is then above an ID that is not pruned but in flight. It
// stays an open gap and is processed once it commits; it is neither
// skipped as pruned nor given up.
func TestInFlightEventBelowTheOldestVisibleOneIsProcessed(t *testing.T) {
	db := newSourceDB(t)
	ctx := testContext(t)
	src := openTestSource(t, db.dsn)
	tr, conn := openTestTracking(t)
	coord := localcoord.New("a")
	var logs syncBuffer
	_, stopPlacing := startLoop(t, startTestLoop(t, StartOldest, src, tr, coord, &logs))
	waitPlaced(t, tr)
	stopPlacing()
	writer, err := pgx.Connect(ctx, db.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close(context.WithoutCancel(ctx))
	held, err := writer.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	for _, q := range []string{
		`INSERT INTO geo_events (id, replicable_name, event_name, payload, created_at) VALUES (1, 'lfs_object', 'updated', '{"model_record_id": 1}', now())`,
		`INSERT INTO geo_event_log (id, created_at, geo_event_id) VALUES (1, now() AT TIME ZONE 'utc', 1)`,
	} {
		if _, err := held.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	appendEvents(t, db, 2, 20)
	// A loop of its own reads the horizon (2) at its first grant.
	_, stop := startLoop(t, startTestLoop(t, StartOldest, src, tr, coord, &logs))
	defer stop()
	waitCursorAt(t, coord, 20)
	if st, _ := coord.Watch(); len(st.Gaps) != 1 || st.Gaps[0].ID != 1 || st.Stats.EventsPrunedUnseen != 0 {
		t.Fatalf("with event 1 in flight: gaps %v, %d pruned unseen; want gap 1 open and nothing pruned", st.Gaps, st.Stats.EventsPrunedUnseen)
	}
	if err := held.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitGapsClosed(t, coord)
	if got := fmt.Sprint(processed(t, conn)); got != idRange(1, 20) {
		t.Errorf("processed %s, want %s", got, idRange(1, 20))
	}
}

// waitCursorAt waits until the replicated cursor is at id.
func waitCursorAt(t *testing.T, coord Coordinator, id int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, changed := coord.Watch()
		if st.Cursor.LastEventID >= id {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cursor at %d after 10s, want %d", st.Cursor.LastEventID, id)
		}
		select {
		case <-changed:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitPlaced waits until the tracking database's fence is placed.
func waitPlaced(t *testing.T, tr *Tracking) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := tr.Fence(testContext(t))
		if err == nil && f.Positioned {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the fence is not placed after 10s (%v)", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

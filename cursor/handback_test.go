package cursor

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"

	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/internal/localcoord"
)

// Handing the site back to GitLab's own log cursor, and taking it over
// again: the tracking database's part, against PostgreSQL, and a grant's
// retake with GitLab's gap set in memory.

func TestGitLabGapsToAdopt(t *testing.T) {
	gap := func(id, seen int64) fsm.Gap { return fsm.Gap{ID: id, FirstSeen: seen} }
	for _, tc := range []struct {
		name    string
		set     []fsm.Gap
		last    int64
		decided Position
		want    []fsm.Gap
	}{
		{name: "a fresh takeover adopts every ID at or below event_log_states",
			set: []fsm.Gap{gap(3, 1), gap(7, 1), gap(12, 1)}, last: 10,
			want: []fsm.Gap{gap(3, 1), gap(7, 1)}},
		{name: "IDs geocursor decided are not reopened; its open ones keep its sighting",
			set:     []fsm.Gap{gap(3, 1), gap(5, 1), gap(7, 2), gap(12, 3), gap(25, 3)},
			last:    20,
			decided: Position{LastEventID: 10, Gaps: []fsm.Gap{gap(5, 100), gap(9, 100)}},
			want:    []fsm.Gap{gap(5, 100), gap(12, 3)}},
		{name: "an empty set adopts nothing",
			last: 20, decided: Position{LastEventID: 10, Gaps: []fsm.Gap{gap(5, 100)}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := gitLabGapsToAdopt(tc.set, tc.last, tc.decided)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("adopted %v, want %v", got, tc.want)
			}
		})
	}
}

// memGapSet is GitLab's gap set in memory: what the handback writes, what
// a retake reads, and what GitLab's own cursor fills and adds to.
type memGapSet struct {
	mu   sync.Mutex
	gaps map[int64]int64 // ID -> first seen, nanoseconds
	// writes counts the handback's writes.
	writes int
}

func newMemGapSet() *memGapSet { return &memGapSet{gaps: map[int64]int64{}} }

func (s *memGapSet) OpenGaps(context.Context) ([]fsm.Gap, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []fsm.Gap
	for id, seen := range s.gaps {
		out = append(out, fsm.Gap{ID: id, FirstSeen: seen})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// write is a GapWriter.
func (s *memGapSet) write(_ context.Context, through int64, gaps []fsm.Gap) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	for id := range s.gaps {
		if id <= through {
			delete(s.gaps, id)
		}
	}
	for _, g := range gaps {
		s.gaps[g.ID] = g.FirstSeen
	}
	return nil
}

func (s *memGapSet) add(ids ...int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range ids {
		s.gaps[id] = time.Now().UnixNano()
	}
}

func (s *memGapSet) remove(id int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.gaps, id)
}

func (s *memGapSet) ids() []int64 {
	gaps, _ := s.OpenGaps(context.Background())
	out := make([]int64, len(gaps))
	for i, g := range gaps {
		out[i] = g.ID
	}
	return out
}

func testEvent(id int64) Event {
	return Event{ID: id, CreatedAt: eventTime(id), GeoEventID: &id,
		GeoEvent: &GeoEvent{ID: id, ReplicableName: "lfs_object", EventName: "updated", Payload: []byte(`{"model_record_id": 1}`)}}
}

// eventLogState reads GitLab's event_log_states (0: no row).
func eventLogState(t *testing.T, conn *pgx.Conn) int64 {
	t.Helper()
	var id int64
	if err := conn.QueryRow(testContext(t), `SELECT COALESCE(max(event_id), 0) FROM event_log_states`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

func TestHandBackMovesEventLogStateAndHandsOverTheOpenGaps(t *testing.T) {
	tr, conn := openTestTracking(t)
	ctx := testContext(t)
	// 1, 2, 5, 6: 3 and 4 are open gaps; event_log_states is at 2.
	commitAll(t, tr, 1, testEvent(1), testEvent(2), testEvent(5), testEvent(6))
	if got := eventLogState(t, conn); got != 2 {
		t.Fatalf("event_log_states at %d before the handback, want 2", got)
	}
	set := newMemGapSet()
	set.add(1, 2) // adopted at an earlier switchover, processed, not yet removed
	hb, err := tr.HandBack(ctx, false, set.write)
	if err != nil {
		t.Fatalf("HandBack: %v", err)
	}
	if hb.Outcome != HandedBack || hb.Fence.Position.LastEventID != 6 || hb.EventLogState != 2 || len(hb.Fence.Position.Gaps) != 2 {
		t.Fatalf("HandBack = %+v, want handed back at 6 with 2 gaps, event_log_states 2 before", hb)
	}
	if got := eventLogState(t, conn); got != 6 {
		t.Errorf("event_log_states at %d after the handback, want the fence's 6", got)
	}
	if got := fmt.Sprint(set.ids()); got != "[3 4]" {
		t.Errorf("GitLab's gap set holds %s, want geocursor's open gaps [3 4] and nothing it processed", got)
	}
	f, err := tr.Fence(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if f.Positioned || f.Token != 2 || f.Position.LastEventID != 6 || len(f.Position.Gaps) != 2 {
		t.Errorf("fence after the handback %+v, want not positioned, token raised to 2, still at 6 with its 2 gaps", f)
	}
	if theirs, err := tr.GitLabHasSite(ctx); err != nil || !theirs {
		t.Errorf("GitLabHasSite = %v, %v after the handback, want true", theirs, err)
	}
	// A stale holder of the last token can no longer commit.
	next, _ := NextPosition(f.Position, []Event{testEvent(7)}, time.Now(), time.Hour, 1000)
	if _, err := commitBatch(ctx, tr, Batch{Token: 1, Start: f.Position, Next: next, Events: []Event{testEvent(7)}}); !errors.Is(err, ErrFenced) {
		t.Errorf("a batch of token 1 after the handback: %v, want ErrFenced", err)
	}

	// Again: nothing to do, nothing written.
	hb, err = tr.HandBack(ctx, false, set.write)
	if err != nil || hb.Outcome != AlreadyHandedBack || set.writes != 1 {
		t.Errorf("a second handback: %+v, %v, %d writes to the set; want AlreadyHandedBack and no write", hb, err, set.writes)
	}
}

func TestHandBackRefusedWhileJobsWaitForDelivery(t *testing.T) {
	tr, conn := openTestTracking(t)
	ctx := testContext(t)
	exec(t, conn, `INSERT INTO geocursor_delivery (id, epoch, started_after_job_id, last_job_id) VALUES (1, 'e', 0, 0)`)
	commitAll(t, tr, 1, testEvent(1), testEvent(2), testEvent(3))
	// Delivery has handed the first job to Redis, not the other two.
	exec(t, conn, `UPDATE geocursor_delivery SET last_job_id = (SELECT min(id) FROM geo_jobs)`)
	before := eventLogState(t, conn)
	set := newMemGapSet()
	hb, err := tr.HandBack(ctx, false, set.write)
	if !errors.Is(err, ErrUndelivered) || hb.Undelivered != 2 {
		t.Fatalf("HandBack with 2 jobs undelivered: %+v, %v; want ErrUndelivered counting 2", hb, err)
	}
	if f, _ := tr.Fence(ctx); !f.Positioned || set.writes != 0 || eventLogState(t, conn) != before {
		t.Fatalf("a refused handback changed something: fence %+v, %d writes to the set, event_log_states %d", f, set.writes, eventLogState(t, conn))
	}
	hb, err = tr.HandBack(ctx, true, set.write)
	if err != nil || hb.Outcome != HandedBack || hb.Undelivered != 2 || eventLogState(t, conn) != 3 {
		t.Errorf("HandBack -force: %+v, %v, event_log_states %d; want handed back at 3, 2 jobs left", hb, err, eventLogState(t, conn))
	}
	var undelivered int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM geo_jobs WHERE id > (SELECT last_job_id FROM geocursor_delivery)`).Scan(&undelivered); err != nil || undelivered != 2 {
		t.Errorf("%d jobs left after the delivery row (%v), want the 2 undelivered ones untouched", undelivered, err)
	}
}

func TestHandBackChangesNothingWhenTheGapSetCannotBeWritten(t *testing.T) {
	tr, conn := openTestTracking(t)
	ctx := testContext(t)
	commitAll(t, tr, 1, testEvent(1), testEvent(3))
	redisDown := errors.New("connection refused")
	_, err := tr.HandBack(ctx, false, func(context.Context, int64, []fsm.Gap) error { return redisDown })
	if !errors.Is(err, redisDown) {
		t.Fatalf("HandBack = %v, want the gap writer's error", err)
	}
	f, _ := tr.Fence(ctx)
	if !f.Positioned || f.Token != 1 || eventLogState(t, conn) != 1 {
		t.Errorf("after a failed gap write: fence %+v, event_log_states %d; want it all as it was", f, eventLogState(t, conn))
	}
}

func TestHandBackFindsNothingToDo(t *testing.T) {
	t.Run("fresh tracking database", func(t *testing.T) {
		tr, _ := openTestTracking(t)
		set := newMemGapSet()
		hb, err := tr.HandBack(testContext(t), false, set.write)
		if err != nil || hb.Outcome != NothingToHandBack || set.writes != 0 {
			t.Errorf("HandBack = %+v, %v; want NothingToHandBack", hb, err)
		}
	})
	t.Run("GitLab's cursor ran past the fence", func(t *testing.T) {
		tr, conn := openTestTracking(t)
		commitAll(t, tr, 1, testEvent(1), testEvent(2))
		exec(t, conn, `UPDATE event_log_states SET event_id = 9`)
		set := newMemGapSet()
		hb, err := tr.HandBack(testContext(t), false, set.write)
		if err != nil || hb.Outcome != GitLabCursorAhead || hb.EventLogState != 9 || set.writes != 0 {
			t.Errorf("HandBack = %+v, %v; want GitLabCursorAhead at 9", hb, err)
		}
		if theirs, err := tr.GitLabHasSite(testContext(t)); err != nil || !theirs {
			t.Errorf("GitLabHasSite = %v, %v with event_log_states past the fence, want true", theirs, err)
		}
	})
}

// retakeFixture is a source, a tracking database and a group of one peer,
// and loops that run over them with GitLab's gap set in memory.
type retakeFixture struct {
	t     *testing.T
	db    *sourceDB
	src   *Source
	tr    *Tracking
	conn  *pgx.Conn
	coord *localcoord.Coordinator
	set   *memGapSet
	logs  syncBuffer
}

func newRetakeFixture(t *testing.T) *retakeFixture {
	f := &retakeFixture{t: t, db: newSourceDB(t), coord: localcoord.New("a"), set: newMemGapSet()}
	f.src = openTestSource(t, f.db.dsn)
	f.tr, f.conn = openTestTracking(t)
	return f
}

// events commits events from..to but skip.
func (f *retakeFixture) events(from, to int64, skip ...int64) {
	f.t.Helper()
	for id := from; id <= to; id++ {
		if !contains(skip, id) {
			f.db.geoEvent(id, id, "lfs_object", "updated", fmt.Sprintf(`{"model_record_id": %d}`, id))
		}
	}
}

// run runs a loop (with GitLab's gap set when gitlab) until the replicated
// cursor is at last with open gaps wantGaps, then stops it.
func (f *retakeFixture) run(gitlab bool, last int64, wantGaps string) {
	f.t.Helper()
	cfg := LoopConfig{Start: StartOldest, BatchSize: 100, PollInterval: 10 * time.Millisecond, GapTimeout: time.Hour,
		LeaseTTL: 5 * time.Second, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond}
	if gitlab {
		cfg.GitLabGaps = f.set
	}
	loop := NewLoop(cfg, f.coord, f.src, f.tr, nil, hclog.New(&hclog.LoggerOptions{Output: &f.logs, Level: hclog.Info}))
	ctx, stop := startLoop(f.t, loop)
	defer stop()
	for {
		st, changed := f.coord.Watch()
		gaps := make([]int64, len(st.Gaps))
		for i, g := range st.Gaps {
			gaps[i] = g.ID
		}
		if st.Cursor.LastEventID == last && fmt.Sprint(gaps) == wantGaps && !st.Lease.HeldAt(time.Now().UnixNano()) {
			return
		}
		select {
		case <-changed:
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			f.t.Fatalf("the cursor is at %d with gaps %v, want %d with %s; log:\n%s", st.Cursor.LastEventID, gaps, last, wantGaps, f.logs.String())
		}
	}
}

// gitLabCursor plays GitLab's geo-logcursor: it processes the IDs of its
// set that are visible now and removes them, then the events after
// event_log_states, tracking the IDs it skips in its set, and moves
// event_log_states. It returns the IDs it processed.
func (f *retakeFixture) gitLabCursor() []int64 {
	f.t.Helper()
	ctx := testContext(f.t)
	var done []int64
	gaps, _ := f.set.OpenGaps(ctx)
	for _, g := range gaps {
		var n int
		if err := f.db.conn.QueryRow(ctx, `SELECT count(*) FROM geo_event_log WHERE id = $1`, g.ID).Scan(&n); err != nil {
			f.t.Fatal(err)
		}
		if n == 1 {
			done = append(done, g.ID)
			f.set.remove(g.ID)
		}
	}
	prev := eventLogState(f.t, f.conn)
	rows, err := f.db.conn.Query(ctx, `SELECT id FROM geo_event_log WHERE id > $1 ORDER BY id`, prev)
	if err != nil {
		f.t.Fatal(err)
	}
	after, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		f.t.Fatal(err)
	}
	for _, id := range after {
		for skipped := prev + 1; skipped < id; skipped++ {
			f.set.add(skipped)
		}
		done = append(done, id)
		prev = id
	}
	exec(f.t, f.conn, `UPDATE event_log_states SET event_id = $1`, prev)
	return done
}

// idList is the IDs from..to but skip, as fmt prints a slice.
func idList(from, to int64, skip ...int64) string {
	var out []int64
	for id := from; id <= to; id++ {
		if !contains(skip, id) {
			out = append(out, id)
		}
	}
	return fmt.Sprint(out)
}

// processed returns the IDs geocursor processed, each as often as it did.
func (f *retakeFixture) processed() []int64 { return processed(f.t, f.conn) }

// A site handed back to GitLab's cursor and taken over again: GitLab's
// cursor goes on after geocursor's position and fills geocursor's open
// gaps that commit meanwhile; the next grant goes on after
// event_log_states, adopting the gaps still open (geocursor's and the ones
// GitLab's cursor opened), and every event is processed once by one of
// the two.
func TestRetakeAfterHandbackProcessesEveryEventOnce(t *testing.T) {
	f := newRetakeFixture(t)
	f.events(1, 20, 8, 15)
	f.run(true, 20, "[8 15]")
	hb, err := f.tr.HandBack(testContext(t), false, f.set.write)
	if err != nil || hb.Outcome != HandedBack {
		t.Fatalf("HandBack: %+v, %v", hb, err)
	}

	// GitLab's cursor: 8 commits before it runs, 25 not.
	f.events(8, 8)
	f.events(21, 30, 25)
	gitlab := f.gitLabCursor()
	if got := fmt.Sprint(gitlab); got != "[8 21 22 23 24 26 27 28 29 30]" {
		t.Fatalf("GitLab's cursor processed %s", got)
	}
	if got := fmt.Sprint(f.set.ids()); got != "[15 25]" {
		t.Fatalf("GitLab's gap set holds %s after its cursor ran, want [15 25]", got)
	}

	f.run(true, 30, "[15 25]")
	if !strings.Contains(f.logs.String(), "taking over again from there, adopting 2 open gaps") {
		t.Errorf("no log line says the site was taken over again; log:\n%s", f.logs.String())
	}
	f.events(15, 15)
	f.events(25, 25)
	f.events(31, 32)
	f.run(true, 32, "[]")

	seen := map[int64]int{}
	for _, id := range append(f.processed(), gitlab...) {
		seen[id]++
	}
	for id := int64(1); id <= 32; id++ {
		if seen[id] != 1 {
			t.Errorf("event %d processed %d times (geocursor %v, GitLab's cursor %v)", id, seen[id], f.processed(), gitlab)
		}
	}
	if got := eventLogState(t, f.conn); got != 32 {
		t.Errorf("event_log_states at %d, want 32", got)
	}
}

// GitLab's cursor ran without a handback (event_log_states past the
// fence): with a gitlab block the next grant takes over after it instead
// of replaying what GitLab's cursor did, adopting the gaps of GitLab's set
// but no ID geocursor had decided; without one it goes on from the fence,
// as before.
func TestRetakeWhenGitLabCursorRanWithoutHandback(t *testing.T) {
	for _, tc := range []struct {
		name     string
		gitlab   bool
		want     string
		wantGaps string
	}{
		{name: "with a gitlab block", gitlab: true, want: idList(1, 20, 15), wantGaps: "[15 25]"},
		{name: "without one", want: idList(1, 30, 15, 25), wantGaps: "[15 25]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newRetakeFixture(t)
			f.events(1, 20, 15)
			f.run(true, 20, "[15]")
			// GitLab's cursor started at event_log_states (14), processed
			// 16..30 but 25, and left 15 and 25 in its set, and 3, which
			// geocursor processed, from long ago.
			f.events(21, 30, 25)
			f.set.add(3, 15, 25)
			exec(t, f.conn, `UPDATE event_log_states SET event_id = 30`)

			f.run(tc.gitlab, 30, tc.wantGaps)
			if got := fmt.Sprint(f.processed()); got != tc.want {
				t.Errorf("processed %s, want %s; log:\n%s", got, tc.want, f.logs.String())
			}
		})
	}
}

// A tracking database handed back to GitLab's cursor is not taken over
// again without the gitlab block: the open gaps in GitLab's set could be
// neither adopted nor left behind.
func TestRetakeAfterHandbackNeedsTheGitLabBlock(t *testing.T) {
	f := newRetakeFixture(t)
	f.events(1, 10, 5)
	f.run(true, 10, "[5]")
	if _, err := f.tr.HandBack(testContext(t), false, f.set.write); err != nil {
		t.Fatal(err)
	}
	f.events(11, 12)
	loop := NewLoop(LoopConfig{Start: StartOldest, BatchSize: 100, PollInterval: 10 * time.Millisecond, GapTimeout: time.Hour,
		LeaseTTL: 5 * time.Second, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond},
		f.coord, f.src, f.tr, nil, hclog.New(&hclog.LoggerOptions{Output: &f.logs, Level: hclog.Info}))
	_, stop := startLoop(t, loop)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(f.logs.String(), "taking it over again needs the gitlab block") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	if !strings.Contains(f.logs.String(), "taking it over again needs the gitlab block") {
		t.Fatalf("no error about the missing gitlab block; log:\n%s", f.logs.String())
	}
	if got := fmt.Sprint(f.processed()); got != idList(1, 10, 5) {
		t.Errorf("processed %s after the handback, want nothing new", got)
	}
}

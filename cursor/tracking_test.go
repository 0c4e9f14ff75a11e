package cursor

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/geocursor/geocursor/fsm"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

func openTestTracking(t *testing.T) (*Tracking, *pgx.Conn) {
	t.Helper()
	dsn := newDatabase(t, "tracking")
	tr, err := OpenTracking(testContext(t), dsn, nil)
	if err != nil {
		t.Fatalf("OpenTracking: %v", err)
	}
	t.Cleanup(tr.Close)
	return tr, connect(t, dsn)
}

func TestMigrationsFromSeveralAgentsAtOnce(t *testing.T) {
	dsn := newDatabase(t, "tracking")
	const agents = 3
	var (
		wg   sync.WaitGroup
		errs = make([]error, agents)
	)
	start := make(chan struct{})
	for i := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			tr, err := OpenTracking(context.Background(), dsn, nil)
			if err == nil {
				err = tr.Ping(context.Background())
				tr.Close()
			}
			errs[i] = err
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("agent %d: OpenTracking: %v", i, err)
		}
	}

	conn := connect(t, dsn)
	var versions []int32
	rows, err := conn.Query(testContext(t), `SELECT version FROM geocursor_schema_migrations ORDER BY version`)
	if err == nil {
		versions, err = pgx.CollectRows(rows, pgx.RowTo[int32])
	}
	if err != nil {
		t.Fatalf("read versions: %v", err)
	}
	var want []int32
	for _, m := range migrations {
		want = append(want, int32(m.version))
	}
	if !reflect.DeepEqual(versions, want) {
		t.Errorf("applied versions = %v, want %v", versions, want)
	}

	// A later start finds nothing to do and the fence untouched.
	tr, err := OpenTracking(testContext(t), dsn, nil)
	if err != nil {
		t.Fatalf("OpenTracking again: %v", err)
	}
	defer tr.Close()
	f, err := tr.Fence(testContext(t))
	if err != nil {
		t.Fatalf("Fence: %v", err)
	}
	if f.Token != 0 || f.Position.LastEventID != 0 || !f.Position.LastEventDate.IsZero() || f.Position.Gaps != nil {
		t.Errorf("fresh fence = %+v, want token 0 at event 0", f)
	}
}

func TestOpenTrackingErrorNamesTheDatabase(t *testing.T) {
	s := postgres(t)
	dsn := strings.Replace(s.DSN("nosuchdb"), "postgres@", "postgres:s3cret@", 1)
	_, err := OpenTracking(testContext(t), dsn, nil)
	if err == nil {
		t.Fatal("OpenTracking of a missing database succeeded")
	}
	want := fmt.Sprintf(`tracking database 127.0.0.1:%d/nosuchdb: database "nosuchdb" does not exist`, s.Port)
	if err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
}

// trackingState is everything Commit writes, read back for comparison.
type trackingState struct {
	Jobs        []string // "event kind name id payload"
	DeadLetters []string // "event: reason"
	Registry    []string // "name/id state last_event_id"
	Tombstones  []string // "name/id last_event_id"
}

func readTracking(t *testing.T, conn *pgx.Conn) trackingState {
	t.Helper()
	var st trackingState
	query := func(dst *[]string, sql string) {
		t.Helper()
		rows, err := conn.Query(testContext(t), sql)
		if err == nil {
			*dst, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	query(&st.Jobs, `SELECT concat_ws(' ', event_id, kind, coalesce(replicable_name, '-'), coalesce(model_record_id::text, '-'), payload::text)
		FROM geo_jobs ORDER BY event_id`)
	query(&st.DeadLetters, `SELECT event_id || ': ' || reason FROM geo_dead_letters ORDER BY event_id`)
	query(&st.Registry, `SELECT replicable_name || '/' || model_record_id || ' ' || state || ' ' || last_event_id
		FROM geo_registry ORDER BY 1`)
	query(&st.Tombstones, `SELECT replicable_name || '/' || model_record_id || ' ' || last_event_id
		FROM geo_registry_tombstones ORDER BY 1`)
	return st
}

func compareState(t *testing.T, got, want trackingState) {
	t.Helper()
	for _, c := range []struct {
		what      string
		got, want []string
	}{
		{"jobs", got.Jobs, want.Jobs},
		{"dead letters", got.DeadLetters, want.DeadLetters},
		{"registry", got.Registry, want.Registry},
		{"tombstones", got.Tombstones, want.Tombstones},
	} {
		if strings.Join(c.got, "\n") != strings.Join(c.want, "\n") {
			t.Errorf("%s:\n  got  %q\n  want %q", c.what, c.got, c.want)
		}
	}
}

// commitAll is the loop in miniature: advance from the fence over events and
// commit under token.
func commitAll(t *testing.T, tr *Tracking, token uint64, events ...Event) (CommitResult, Position) {
	t.Helper()
	f, err := tr.Fence(testContext(t))
	if err != nil {
		t.Fatalf("Fence: %v", err)
	}
	next, _ := NextPosition(f.Position, events, time.Now(), time.Hour, 1000)
	res, err := commitBatch(testContext(t), tr, Batch{Token: token, Start: f.Position, Next: next, Events: events})
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	return res, next
}

func TestCommitWritesEffectsAndMovesTheFence(t *testing.T) {
	tr, conn := openTestTracking(t)
	events := []Event{
		geo(1, "project_repository", "created", `{"model_record_id": 42}`),
		geo(2, "lfs_object", "created", `{"model_record_id": 7}`),
		geo(3, "project_repository", "updated", `{"model_record_id": 42}`),
		cache(4, "projects/42"),
		geo(5, "lfs_object", "deleted", `{"model_record_id": 7, "file_path": "a/b"}`),
		geo(6, "container_repository", "renamed", `{"model_record_id": 3, "old": "x"}`),
		geo(8, "package_file", "created", `{"model_record_id": 11}`),
		{ID: 9, CreatedAt: eventTime(9)},
	}
	res, next := commitAll(t, tr, 1, events...)

	if want := (CommitResult{Jobs: 7, DeadLetters: 1, RegistryUpserts: 2, RegistryDeletes: 0}); res != want {
		t.Errorf("result = %+v, want %+v", res, want)
	}
	compareState(t, readTracking(t, conn), trackingState{
		Jobs: []string{
			`1 sync project_repository 42 {"model_record_id": 42}`,
			`2 sync lfs_object 7 {"model_record_id": 7}`,
			`3 sync project_repository 42 {"model_record_id": 42}`,
			`4 cache_invalidation - - {"key": "projects/42"}`,
			`5 delete lfs_object 7 {"file_path": "a/b", "model_record_id": 7}`,
			`6 renamed container_repository 3 {"old": "x", "model_record_id": 3}`,
			`8 sync package_file 11 {"model_record_id": 11}`,
		},
		DeadLetters: []string{"9: geo_event_log row has no geo_event_id or cache_invalidation_event_id"},
		Registry:    []string{"package_file/11 pending 8", "project_repository/42 pending 3"},
		// The only open gap, 7, is above the delete at 5: no tombstone.
	})

	f, err := tr.Fence(testContext(t))
	if err != nil {
		t.Fatalf("Fence: %v", err)
	}
	if f.Token != 1 || f.Position.LastEventID != 9 || !f.Position.LastEventDate.Equal(eventTime(9)) {
		t.Errorf("fence = token %d at %d @ %v, want token 1 at 9 @ %v", f.Token, f.Position.LastEventID, f.Position.LastEventDate, eventTime(9))
	}
	if !reflect.DeepEqual(f.Position.Gaps, next.Gaps) || len(f.Position.Gaps) != 1 || f.Position.Gaps[0].ID != 7 {
		t.Errorf("fence gaps = %v, want %v (event 7)", f.Position.Gaps, next.Gaps)
	}

	// The same holder goes on from where it left off.
	res, _ = commitAll(t, tr, 1, geo(7, "lfs_object", "updated", `{"model_record_id": 1}`), geo(10, "lfs_object", "updated", `{"model_record_id": 1}`))
	if res.Jobs != 2 || res.RegistryUpserts != 1 {
		t.Errorf("second batch result = %+v, want 2 jobs and 1 upsert", res)
	}
	if f, _ := tr.Fence(testContext(t)); f.Position.LastEventID != 10 || f.Position.Gaps != nil {
		t.Errorf("fence after the gap closed = %+v, want at 10 with no gaps", f)
	}
}

// The migration to schema 4 writes the checksum of no gaps as a literal:
// it must be fsm.GapSum's.
func TestMigrationKnowsTheChecksumOfNoGaps(t *testing.T) {
	lit := fmt.Sprintf("gaps_sum = %d WHERE gaps_count = 0", int64(fsm.GapSum(nil)))
	for _, m := range migrations {
		if m.version == 4 && strings.Contains(m.sql, lit) {
			return
		}
	}
	t.Errorf("migration 4 does not set %q", lit)
}

func TestCommitRefusesFencedBatchesAndWritesNothing(t *testing.T) {
	tr, conn := openTestTracking(t)
	_, at := commitAll(t, tr, 5, geo(1, "lfs_object", "created", `{"model_record_id": 1}`), geo(3, "lfs_object", "created", `{"model_record_id": 3}`))
	before := readTracking(t, conn)
	fenceBefore, err := tr.Fence(testContext(t))
	if err != nil {
		t.Fatalf("Fence: %v", err)
	}

	ev := []Event{geo(4, "lfs_object", "deleted", `{"model_record_id": 1}`)}
	next := func(start Position) Position { p, _ := NextPosition(start, ev, time.Now(), time.Hour, 1000); return p }
	otherGaps := Position{LastEventID: at.LastEventID, Gaps: []fsm.Gap{{ID: 1, FirstSeen: 1}}}
	tests := []struct {
		name  string
		batch Batch
		want  string
	}{
		{
			name:  "older token",
			batch: Batch{Token: 4, Start: at, Next: next(at), Events: ev},
			want:  "fenced: token 4 is older than token 5 in the tracking database",
		},
		{
			name:  "start behind the fence",
			batch: Batch{Token: 6, Start: Position{LastEventID: 1}, Next: next(Position{LastEventID: 1}), Events: ev},
			want:  "fenced: batch starts at event 1 but the tracking database is at 3",
		},
		{
			name:  "start ahead of the fence",
			batch: Batch{Token: 5, Start: Position{LastEventID: 100}, Next: Position{LastEventID: 100}},
			want:  "fenced: batch starts at event 100 but the tracking database is at 3",
		},
		{
			name:  "different gaps",
			batch: Batch{Token: 6, Start: otherGaps, Next: next(otherGaps), Events: ev},
			want: fmt.Sprintf("fenced: batch starts at event 3 with 1 open gaps but the tracking database has 1 others (checksum %x, the batch's %x)",
				fsm.GapSum(at.Gaps), fsm.GapSum(otherGaps.Gaps)),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := commitBatch(testContext(t), tr, tt.batch)
			if !errors.Is(err, ErrFenced) {
				t.Fatalf("Commit = %v, want ErrFenced", err)
			}
			if err.Error() != tt.want {
				t.Errorf("error = %q, want %q", err, tt.want)
			}
			compareState(t, readTracking(t, conn), before)
			if f, err := tr.Fence(testContext(t)); err != nil || !reflect.DeepEqual(f, fenceBefore) {
				t.Errorf("fence = %+v, %v; want it unchanged: %+v", f, err, fenceBefore)
			}
		})
	}

	// A newer token from the right start position goes through.
	if _, err := commitBatch(testContext(t), tr, Batch{Token: 6, Start: at, Next: next(at), Events: ev}); err != nil {
		t.Errorf("Commit with a newer token: %v", err)
	}
}

func TestCommitRejectsEventsThatWouldApplyTwice(t *testing.T) {
	tr, conn := openTestTracking(t)
	_, at := commitAll(t, tr, 1, geo(1, "lfs_object", "created", `{"model_record_id": 1}`), geo(3, "lfs_object", "created", `{"model_record_id": 3}`))
	before := readTracking(t, conn)
	for _, events := range [][]Event{
		{geo(1, "lfs_object", "updated", `{"model_record_id": 1}`)}, // already processed
		{geo(4, "lfs_object", "updated", `{"model_record_id": 1}`), geo(4, "lfs_object", "updated", `{"model_record_id": 1}`)},
	} {
		next, _ := NextPosition(at, events, time.Now(), time.Hour, 1000)
		_, err := commitBatch(testContext(t), tr, Batch{Token: 1, Start: at, Next: next, Events: events})
		if err == nil || errors.Is(err, ErrFenced) {
			t.Errorf("Commit(%v) = %v, want a non-fence error", ids(events), err)
		}
	}
	compareState(t, readTracking(t, conn), before)
}

func TestLateCreatedEventDoesNotResurrectADeletedRecord(t *testing.T) {
	tr, conn := openTestTracking(t)

	// Event 2 (an update of lfs_object/1) is not visible yet; 3 deletes it.
	// lfs_object/2 is created at 5, and deleted at 4 which is also late.
	// The delete at 3 is above the open gap 2, so it leaves a tombstone.
	commitAll(t, tr, 1,
		geo(1, "lfs_object", "created", `{"model_record_id": 1}`),
		geo(3, "lfs_object", "deleted", `{"model_record_id": 1}`),
		geo(5, "lfs_object", "created", `{"model_record_id": 2}`),
	)
	compareState(t, readTracking(t, conn), trackingState{
		Jobs: []string{
			`1 sync lfs_object 1 {"model_record_id": 1}`,
			`3 delete lfs_object 1 {"model_record_id": 1}`,
			`5 sync lfs_object 2 {"model_record_id": 2}`,
		},
		Registry:   []string{"lfs_object/2 pending 5"},
		Tombstones: []string{"lfs_object/1 3"},
	})

	// The late delete at 4 does not remove the row created at 5, and, with
	// gap 2 still open below it, leaves a tombstone of its own.
	res, _ := commitAll(t, tr, 1, geo(4, "lfs_object", "deleted", `{"model_record_id": 2}`))
	if res.RegistryUpserts != 0 || res.RegistryDeletes != 0 {
		t.Errorf("late delete changed the registry: %+v", res)
	}
	st := readTracking(t, conn)
	if want := []string{"lfs_object/2 pending 5"}; !reflect.DeepEqual(st.Registry, want) {
		t.Errorf("registry = %q, want %q", st.Registry, want)
	}
	if want := []string{"lfs_object/1 3", "lfs_object/2 4"}; !reflect.DeepEqual(st.Tombstones, want) {
		t.Errorf("tombstones = %q, want %q", st.Tombstones, want)
	}

	// The late update at 2 is older than the delete at 3: the tombstone
	// keeps lfs_object/1 deleted. With no gap left, no event can arrive
	// late any more and the tombstones go.
	res, _ = commitAll(t, tr, 1, geo(2, "lfs_object", "updated", `{"model_record_id": 1}`))
	if res.RegistryUpserts != 0 || res.RegistryDeletes != 0 {
		t.Errorf("late update changed the registry: %+v", res)
	}
	compareState(t, readTracking(t, conn), trackingState{
		Jobs: []string{
			`1 sync lfs_object 1 {"model_record_id": 1}`,
			`2 sync lfs_object 1 {"model_record_id": 1}`,
			`3 delete lfs_object 1 {"model_record_id": 1}`,
			`4 delete lfs_object 2 {"model_record_id": 2}`,
			`5 sync lfs_object 2 {"model_record_id": 2}`,
		},
		Registry: []string{"lfs_object/2 pending 5"},
	})

	// A genuine re-creation after the delete brings the record back.
	res, _ = commitAll(t, tr, 2, geo(6, "lfs_object", "created", `{"model_record_id": 1}`))
	if res.RegistryUpserts != 1 {
		t.Errorf("re-creation result = %+v, want 1 upsert", res)
	}
	st = readTracking(t, conn)
	if want := []string{"lfs_object/1 pending 6", "lfs_object/2 pending 5"}; !reflect.DeepEqual(st.Registry, want) {
		t.Errorf("registry = %q, want %q", st.Registry, want)
	}
}

// A tombstone outranks only older events: a record created again above it
// comes back at once, while the gap below the tombstone is still open.
func TestFreshEventAboveATombstoneRecreatesTheRecord(t *testing.T) {
	tr, conn := openTestTracking(t)
	commitAll(t, tr, 1,
		geo(1, "lfs_object", "created", `{"model_record_id": 1}`),
		geo(3, "lfs_object", "deleted", `{"model_record_id": 1}`),
	)
	res, next := commitAll(t, tr, 1, geo(4, "lfs_object", "created", `{"model_record_id": 1}`))
	if res.RegistryUpserts != 1 {
		t.Errorf("result = %+v, want 1 upsert", res)
	}
	if fmt.Sprint(next.GapIDs()) != "[2]" {
		t.Fatalf("open gaps = %v, want [2]", next.GapIDs())
	}
	st := readTracking(t, conn)
	if want := []string{"lfs_object/1 pending 4"}; !reflect.DeepEqual(st.Registry, want) {
		t.Errorf("registry = %q, want %q", st.Registry, want)
	}
	if want := []string{"lfs_object/1 3"}; !reflect.DeepEqual(st.Tombstones, want) {
		t.Errorf("tombstones = %q, want %q (gap 2 is still open below it)", st.Tombstones, want)
	}
}

func TestSeveralEventsForOneRecordInABatch(t *testing.T) {
	tr, conn := openTestTracking(t)
	res, _ := commitAll(t, tr, 1,
		geo(1, "lfs_object", "created", `{"model_record_id": 1}`),
		geo(2, "lfs_object", "updated", `{"model_record_id": 1}`),
		geo(3, "lfs_object", "deleted", `{"model_record_id": 1}`),
		geo(4, "lfs_object", "created", `{"model_record_id": 1}`),
		geo(5, "lfs_object", "created", `{"model_record_id": 2}`),
		geo(6, "lfs_object", "deleted", `{"model_record_id": 2}`),
	)
	if want := (CommitResult{Jobs: 6, RegistryUpserts: 1}); res != want {
		t.Errorf("result = %+v, want %+v", res, want)
	}
	st := readTracking(t, conn)
	if want := []string{"lfs_object/1 pending 4"}; !reflect.DeepEqual(st.Registry, want) {
		t.Errorf("registry = %q, want %q", st.Registry, want)
	}
	if len(st.Tombstones) != 0 {
		t.Errorf("tombstones = %q, want none: no gap is open below the deletes", st.Tombstones)
	}
}

func TestBadEventsBecomeDeadLetters(t *testing.T) {
	tr, conn := openTestTracking(t)
	res, _ := commitAll(t, tr, 1,
		Event{ID: 1, CreatedAt: eventTime(1)},
		Event{ID: 2, CreatedAt: eventTime(2), GeoEventID: ptr(int64(99))},
		Event{ID: 3, CreatedAt: eventTime(3), CacheInvalidationEventID: ptr(int64(98))},
		geo(4, "lfs_object", "created", `[1]`),
		geo(5, "lfs_object", "deleted", `{"id": 5}`),
		geo(6, "lfs_object", "created", `{"model_record_id": 6}`),
	)
	if want := (CommitResult{Jobs: 1, DeadLetters: 5, RegistryUpserts: 1}); res != want {
		t.Errorf("result = %+v, want %+v", res, want)
	}
	st := readTracking(t, conn)
	compareState(t, st, trackingState{
		Jobs: []string{`6 sync lfs_object 6 {"model_record_id": 6}`},
		DeadLetters: []string{
			"1: geo_event_log row has no geo_event_id or cache_invalidation_event_id",
			"2: geo_events row 99 does not exist",
			"3: geo_cache_invalidation_events row 98 does not exist",
			"4: geo_events row 1004: payload is not a JSON object",
			"5: geo_events row 1005 (lfs_object deleted): payload has no integer model_record_id",
		},
		Registry: []string{"lfs_object/6 pending 6"},
	})

	var row string
	if err := conn.QueryRow(testContext(t), `SELECT "row"->'geo_event'->>'event_name' FROM geo_dead_letters WHERE event_id = 5`).Scan(&row); err != nil {
		t.Fatalf("read dead letter row: %v", err)
	}
	if row != "deleted" {
		t.Errorf("dead letter row geo_event.event_name = %q, want deleted", row)
	}
}

// The whole path: what the source returns goes to the tracking database,
// including a gap that commits late.
func TestSourceToTracking(t *testing.T) {
	db := newSourceDB(t)
	src := openTestSource(t, db.dsn)
	tr, conn := openTestTracking(t)
	ctx := testContext(t)

	db.geoEvent(1, 1, "lfs_object", "created", `{"model_record_id": 1}`)
	db.geoEvent(3, 3, "lfs_object", "deleted", `{"model_record_id": 1}`)
	db.cacheInvalidation(4, 4, "k")

	step := func(token uint64) Position {
		t.Helper()
		f, err := tr.Fence(ctx)
		if err != nil {
			t.Fatalf("Fence: %v", err)
		}
		events, err := src.Fetch(ctx, f.Position.LastEventID, f.Position.GapIDs(), 2)
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		next, _ := NextPosition(f.Position, events, time.Now(), time.Hour, 100)
		if _, err := commitBatch(ctx, tr, Batch{Token: token, Start: f.Position, Next: next, Events: events}); err != nil {
			t.Fatalf("Commit: %v", err)
		}
		return next
	}
	if p := step(1); p.LastEventID != 3 || fmt.Sprint(p.GapIDs()) != "[2]" {
		t.Fatalf("after batch 1: %+v", p)
	}
	db.geoEvent(2, 2, "lfs_object", "updated", `{"model_record_id": 1}`)
	if p := step(2); p.LastEventID != 4 || len(p.Gaps) != 0 {
		t.Fatalf("after batch 2: %+v", p)
	}
	compareState(t, readTracking(t, conn), trackingState{
		Jobs: []string{
			`1 sync lfs_object 1 {"model_record_id": 1}`,
			`2 sync lfs_object 1 {"model_record_id": 1}`,
			`3 delete lfs_object 1 {"model_record_id": 1}`,
			`4 cache_invalidation - - {"key": "k"}`,
		},
		// The late update did not bring lfs_object/1 back; with no gap
		// left open its tombstone has nothing more to guard.
	})
}

// Holders racing from the same start: the fence row lock lets exactly one
// through, whatever the order, and the batch is applied once.
func TestConcurrentCommitsFromOneStartApplyOnce(t *testing.T) {
	tr, conn := openTestTracking(t)
	events := []Event{geo(1, "lfs_object", "created", `{"model_record_id": 1}`), geo(2, "lfs_object", "created", `{"model_record_id": 2}`)}
	next, _ := NextPosition(Position{}, events, time.Now(), time.Hour, 100)

	const holders = 5
	var (
		wg   sync.WaitGroup
		errs = make([]error, holders)
	)
	start := make(chan struct{})
	for i := range holders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = commitBatch(context.Background(), tr, Batch{Token: uint64(i + 1), Next: next, Events: events})
		}()
	}
	close(start)
	wg.Wait()

	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrFenced):
			t.Errorf("holder %d: Commit = %v, want success or ErrFenced", i+1, err)
		}
	}
	if won != 1 {
		t.Errorf("%d holders committed, want exactly 1 (errors: %v)", won, errs)
	}
	if st := readTracking(t, conn); len(st.Jobs) != 2 {
		t.Errorf("jobs = %q, want the batch applied once", st.Jobs)
	}
}

// stage is Stage for the batch of events from start under token.
func stage(t *testing.T, tr *Tracking, token uint64, start Position, events ...Event) (StagedBatch, Position) {
	t.Helper()
	next, _ := NextPosition(start, events, time.Now(), time.Hour, 1000)
	st, err := tr.Stage(testContext(t), Batch{Token: token, Start: start, Next: next, Events: events})
	if err != nil {
		t.Fatalf("Stage(%v): %v", ids(events), err)
	}
	return st, next
}

// The holder stages the next batch while the last one is still to commit:
// both commit, in order, and the next one's jobs come after the last one's.
func TestStagedBatchesCommitInOrder(t *testing.T) {
	tr, conn := openTestTracking(t)
	a, afterA := stage(t, tr, 1, Position{},
		geo(1, "lfs_object", "created", `{"model_record_id": 1}`),
		geo(2, "lfs_object", "updated", `{"model_record_id": 1}`))
	b, afterB := stage(t, tr, 1, afterA,
		geo(3, "lfs_object", "deleted", `{"model_record_id": 1}`),
		geo(4, "lfs_object", "created", `{"model_record_id": 2}`))
	if _, err := a.Commit(testContext(t)); err != nil {
		t.Fatalf("commit the first batch: %v", err)
	}
	if _, err := b.Commit(testContext(t)); err != nil {
		t.Fatalf("commit the second batch: %v", err)
	}
	f, err := tr.Fence(testContext(t))
	if err != nil || f.Position.LastEventID != afterB.LastEventID {
		t.Fatalf("fence = %+v, %v; want at %d", f, err, afterB.LastEventID)
	}
	var ordered bool
	if err := conn.QueryRow(testContext(t),
		`SELECT array_agg(event_id ORDER BY id) = array_agg(event_id ORDER BY event_id) FROM geo_jobs`).Scan(&ordered); err != nil {
		t.Fatal(err)
	}
	if !ordered {
		t.Error("geo_jobs ids are not in event order across the two batches")
	}
	if st := readTracking(t, conn); !reflect.DeepEqual(st.Registry, []string{"lfs_object/2 pending 4"}) {
		t.Errorf("registry = %q", st.Registry)
	}
}

// A staged batch whose predecessor never committed starts from a position
// the tracking database never reached: it is fenced and leaves nothing.
func TestStagedBatchAfterAnAbortedOneIsFenced(t *testing.T) {
	tr, conn := openTestTracking(t)
	a, afterA := stage(t, tr, 1, Position{}, geo(1, "lfs_object", "created", `{"model_record_id": 1}`))
	b, _ := stage(t, tr, 1, afterA, geo(2, "lfs_object", "updated", `{"model_record_id": 1}`))
	a.Abort()
	if _, err := b.Commit(testContext(t)); !errors.Is(err, ErrFenced) {
		t.Fatalf("Commit after the previous batch was aborted = %v, want ErrFenced", err)
	}
	compareState(t, readTracking(t, conn), trackingState{})
}

// A holder that staged a batch and then lost its lease to a claim is
// refused at commit, and the new holder's batch of the same events goes
// through once the stale one is gone.
func TestStagedBatchOfALostLeaseIsFenced(t *testing.T) {
	tr, conn := openTestTracking(t)
	events := []Event{geo(1, "lfs_object", "created", `{"model_record_id": 1}`)}
	stale, _ := stage(t, tr, 1, Position{}, events...)
	if _, err := tr.Claim(testContext(t), 2); err != nil {
		t.Fatalf("Claim(2): %v", err)
	}
	if _, err := stale.Commit(testContext(t)); !errors.Is(err, ErrFenced) {
		t.Fatalf("stale Commit = %v, want ErrFenced", err)
	}
	if _, err := commitBatch(testContext(t), tr, Batch{Token: 2, Start: Position{}, Next: Position{LastEventID: 1}, Events: events}); err != nil {
		t.Fatalf("new holder's Commit: %v", err)
	}
	if st := readTracking(t, conn); len(st.Jobs) != 1 {
		t.Errorf("jobs = %q, want the one event once", st.Jobs)
	}
}

// Two holders that stage the same events: the second insert waits for the
// first transaction and, once it commits, is refused as fenced rather than
// failing with a bare unique violation.
func TestStagingEventsAnotherHolderCommittedIsFenced(t *testing.T) {
	tr, _ := openTestTracking(t)
	events := []Event{geo(1, "lfs_object", "created", `{"model_record_id": 1}`)}
	first, _ := stage(t, tr, 1, Position{}, events...)
	errs := make(chan error, 1)
	go func() {
		_, err := tr.Stage(testContext(t), Batch{Token: 1, Start: Position{}, Next: Position{LastEventID: 1}, Events: events})
		errs <- err
	}()
	time.Sleep(100 * time.Millisecond) // let the second insert queue behind the first
	if _, err := first.Commit(testContext(t)); err != nil {
		t.Fatalf("first Commit: %v", err)
	}
	if err := <-errs; !errors.Is(err, ErrFenced) {
		t.Fatalf("second Stage = %v, want ErrFenced", err)
	}
}

// A tracking database at schema 3 keeps its open gaps as JSON in the fence
// row: the upgrade moves them into rows, the next claim sets the checksum,
// and batches go on from there.
func TestUpgradeMovesTheFenceGapsIntoRows(t *testing.T) {
	dsn := newDatabase(t, "tracking")
	pool, err := pgxpool.New(testContext(t), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, _, err := appliedVersions(testContext(t), pool); err != nil {
		t.Fatal(err)
	}
	for _, m := range migrations {
		if m.version > 3 {
			break
		}
		if _, err := apply(testContext(t), pool, m); err != nil {
			t.Fatalf("migration %d: %v", m.version, err)
		}
	}
	seen := time.Now().UnixNano()
	if _, err := pool.Exec(testContext(t), `UPDATE geocursor_fence SET token = 7, last_event_id = 10, positioned = true,
gaps = jsonb_build_array(jsonb_build_object('id', 8, 'first_seen', $1::bigint), jsonb_build_object('id', 4, 'first_seen', $1::bigint - 1))
WHERE id = 1`, seen); err != nil {
		t.Fatal(err)
	}

	tr, err := OpenTracking(testContext(t), dsn, nil)
	if err != nil {
		t.Fatalf("OpenTracking (the upgrade): %v", err)
	}
	defer tr.Close()
	want := []fsm.Gap{{ID: 4, FirstSeen: seen - 1}, {ID: 8, FirstSeen: seen}}
	f, err := tr.Claim(testContext(t), 8)
	if err != nil {
		t.Fatalf("Claim after the upgrade: %v", err)
	}
	if f.Position.LastEventID != 10 || !reflect.DeepEqual(f.Position.Gaps, want) {
		t.Fatalf("fence after the upgrade = %+v, want at 10 with gaps %v", f.Position, want)
	}
	ev := []Event{geo(4, "lfs_object", "created", `{"model_record_id": 4}`), geo(11, "lfs_object", "created", `{"model_record_id": 11}`)}
	next, _ := NextPosition(f.Position, ev, time.Now(), time.Hour, 1000)
	if _, err := commitBatch(testContext(t), tr, Batch{Token: 8, Start: f.Position, Next: next, Events: ev}); err != nil {
		t.Fatalf("a batch from the upgraded fence: %v", err)
	}
	if f, err = tr.Fence(testContext(t)); err != nil || f.Position.LastEventID != 11 || !reflect.DeepEqual(f.Position.Gaps, want[1:]) {
		t.Errorf("fence after the batch = %+v, %v; want at 11 with gap 8 open", f.Position, err)
	}
}

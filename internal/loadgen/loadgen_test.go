package loadgen_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/internal/pgserver"
	"github.com/geocursor/geocursor/internal/testsupport"
)

// newSource starts a server with the source schema and returns a pool on it.
func newSource(t *testing.T) *pgxpool.Pool {
	t.Helper()
	s := testsupport.StartPostgres(t, pgserver.Options{Fast: true})
	dsn := testsupport.NewDatabase(t, s, "source")
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	// Twice: the schema must be idempotent.
	for range 2 {
		if err := loadgen.CreateSourceSchema(context.Background(), pool); err != nil {
			t.Fatalf("create schema: %v", err)
		}
	}
	return pool
}

func queryInt(t *testing.T, pool *pgxpool.Pool, sql string) int64 {
	t.Helper()
	var v int64
	if err := pool.QueryRow(context.Background(), sql).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// danglingOrAmbiguous counts log rows that do not reference exactly one
// existing row.
const danglingOrAmbiguous = `
SELECT count(*) FROM geo_event_log l
LEFT JOIN geo_events e ON e.id = l.geo_event_id
LEFT JOIN geo_cache_invalidation_events c ON c.id = l.cache_invalidation_event_id
WHERE (e.id IS NULL) = (c.id IS NULL)`

func TestRunCommitsExactlyTotalWithRollbackGaps(t *testing.T) {
	t.Parallel()
	pool := newSource(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var mu sync.Mutex
	seen := map[int64]bool{}
	stats, err := loadgen.Run(ctx, pool, loadgen.Config{
		Writers:                   4,
		Total:                     500,
		RollbackFraction:          0.05,
		HoldFraction:              0.02,
		HoldFor:                   20 * time.Millisecond,
		CacheInvalidationFraction: 0.1,
		Seed:                      7,
		OnCommit: func(ids []int64, _ time.Time) {
			mu.Lock()
			defer mu.Unlock()
			for _, id := range ids {
				if seen[id] {
					t.Errorf("OnCommit reported id %d twice", id)
				}
				seen[id] = true
			}
		},
	})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if stats.Committed != 500 {
		t.Fatalf("stats.Committed = %d, want 500", stats.Committed)
	}
	if stats.RolledBack == 0 {
		t.Errorf("stats.RolledBack = 0, want some with rollback fraction 0.05 over 500 events")
	}
	if got := queryInt(t, pool, "SELECT count(*) FROM geo_event_log"); got != stats.Committed {
		t.Fatalf("geo_event_log has %d rows, stats say %d committed", got, stats.Committed)
	}
	if len(seen) != 500 {
		t.Fatalf("OnCommit reported %d ids, want 500", len(seen))
	}
	// Rolled-back transactions consumed IDs that will never appear.
	span := queryInt(t, pool, "SELECT max(id) - min(id) + 1 FROM geo_event_log")
	if span != 500+stats.RolledBack {
		t.Errorf("id span = %d, want committed + rolled back = %d", span, 500+stats.RolledBack)
	}
	if got := queryInt(t, pool, "SELECT min(id) FROM geo_event_log"); got != stats.FirstID {
		t.Errorf("min id = %d, stats.FirstID = %d", got, stats.FirstID)
	}
	if got := queryInt(t, pool, "SELECT max(id) FROM geo_event_log"); got != stats.LastID {
		t.Errorf("max id = %d, stats.LastID = %d", got, stats.LastID)
	}
	if got := queryInt(t, pool, danglingOrAmbiguous); got != 0 {
		t.Errorf("%d committed log rows do not reference exactly one existing row", got)
	}
	if got := queryInt(t, pool, "SELECT count(*) FROM geo_event_log WHERE cache_invalidation_event_id IS NOT NULL"); got != stats.CacheInvalidations {
		t.Errorf("cache invalidation rows = %d, stats say %d", got, stats.CacheInvalidations)
	}
	if got := queryInt(t, pool, "SELECT count(*) FROM geo_events WHERE NOT payload ? 'model_record_id'"); got != 0 {
		t.Errorf("%d events without model_record_id although BadFraction is 0", got)
	}
	// No orphans: rolled-back referenced rows went with their log rows.
	if got := queryInt(t, pool, "SELECT count(*) FROM geo_events") +
		queryInt(t, pool, "SELECT count(*) FROM geo_cache_invalidation_events"); got != 500 {
		t.Errorf("referenced rows = %d, want 500", got)
	}
	if got := queryInt(t, pool, `SELECT count(*) FROM geo_event_log
		WHERE created_at > (now() AT TIME ZONE 'utc') OR created_at < (now() AT TIME ZONE 'utc') - interval '1 minute'`); got != 0 {
		t.Errorf("%d log rows have a created_at that is not recent UTC", got)
	}
}

func TestRunWritesBadEventsAsCounted(t *testing.T) {
	t.Parallel()
	pool := newSource(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	stats, err := loadgen.Run(ctx, pool, loadgen.Config{Writers: 2, Total: 300, BadFraction: 0.2, Seed: 3})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if stats.BadPayload == 0 || stats.BadNoReference == 0 {
		t.Fatalf("want both kinds of bad events, got %+v", stats)
	}
	if got := queryInt(t, pool, "SELECT count(*) FROM geo_events WHERE NOT payload ? 'model_record_id'"); got != stats.BadPayload {
		t.Errorf("events without model_record_id = %d, stats.BadPayload = %d", got, stats.BadPayload)
	}
	if got := queryInt(t, pool, `SELECT count(*) FROM geo_event_log
		WHERE geo_event_id IS NULL AND cache_invalidation_event_id IS NULL`); got != stats.BadNoReference {
		t.Errorf("log rows without reference = %d, stats.BadNoReference = %d", got, stats.BadNoReference)
	}
}

func TestRunStopsCleanlyWhenContextEnds(t *testing.T) {
	t.Parallel()
	pool := newSource(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()

	// Held transactions are in flight when the context ends; they must be
	// rolled back and not counted.
	stats, err := loadgen.Run(ctx, pool, loadgen.Config{
		Writers: 3, Rate: 200, HoldFraction: 0.5, HoldFor: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("run without Total ended by its context: %v", err)
	}
	if stats.Committed == 0 {
		t.Fatalf("nothing committed in 300ms at 200/s")
	}
	if got := queryInt(t, pool, "SELECT count(*) FROM geo_event_log"); got != stats.Committed {
		t.Fatalf("geo_event_log has %d rows, stats say %d committed", got, stats.Committed)
	}
}

func TestBulkLoadGivesContiguousIDs(t *testing.T) {
	t.Parallel()
	pool := newSource(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// A normal event first, so the bulk range starts after existing IDs.
	if _, err := loadgen.Run(ctx, pool, loadgen.Config{Total: 1}); err != nil {
		t.Fatalf("run: %v", err)
	}
	const n = 10000
	if err := loadgen.BulkLoad(ctx, pool, n, 42); err != nil {
		t.Fatalf("bulk load: %v", err)
	}
	if got := queryInt(t, pool, "SELECT count(*) FROM geo_event_log WHERE id > 1"); got != n {
		t.Fatalf("bulk rows = %d, want %d", got, n)
	}
	if got := queryInt(t, pool, "SELECT max(id) - min(id) + 1 FROM geo_event_log WHERE id > 1"); got != n {
		t.Fatalf("bulk id span = %d, want %d (contiguous)", got, n)
	}
	if got := queryInt(t, pool, "SELECT min(id) FROM geo_event_log WHERE id > 1"); got != 2 {
		t.Errorf("bulk starts at id %d, want 2", got)
	}
	if got := queryInt(t, pool, danglingOrAmbiguous); got != 0 {
		t.Errorf("%d log rows do not reference exactly one existing row", got)
	}
	cache := queryInt(t, pool, "SELECT count(*) FROM geo_event_log WHERE cache_invalidation_event_id IS NOT NULL")
	if cache != n/20 {
		t.Errorf("cache invalidations = %d, want every 20th of %d", cache, n)
	}
	// The sequence continues after the bulk range.
	stats, err := loadgen.Run(ctx, pool, loadgen.Config{Total: 1})
	if err != nil {
		t.Fatalf("run after bulk: %v", err)
	}
	if stats.FirstID != n+2 {
		t.Errorf("first id after bulk = %d, want %d", stats.FirstID, n+2)
	}
}

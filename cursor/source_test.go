package cursor

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func openTestSource(t *testing.T, dsn string) *Source {
	t.Helper()
	src, err := OpenSource(testContext(t), dsn, nil)
	if err != nil {
		t.Fatalf("OpenSource: %v", err)
	}
	t.Cleanup(src.Close)
	return src
}

func ids(events []Event) []int64 {
	out := make([]int64, len(events))
	for i, ev := range events {
		out[i] = ev.ID
	}
	return out
}

func TestFetchReturnsEventsInIDOrderWithTheirRows(t *testing.T) {
	db := newSourceDB(t)
	// Written out of order: the source must sort.
	db.geoEvent(6, 11, "lfs_object", "deleted", `{"model_record_id": 7}`)
	db.geoEvent(1, 10, "project_repository", "created", `{"model_record_id": 42, "extra": [1, 2]}`)
	db.cacheInvalidation(2, 20, "projects/42")
	db.log(3, ptr(int64(999)), nil) // geo event that does not exist
	db.log(4, nil, nil)             // no reference at all
	src := openTestSource(t, db.dsn)

	events, err := src.Fetch(testContext(t), 0, nil, 100)
	if err != nil {
		t.Fatalf("Fetch: %v", err)
	}
	if got, want := fmt.Sprint(ids(events)), "[1 2 3 4 6]"; got != want {
		t.Fatalf("IDs = %s, want %s", got, want)
	}

	e1 := events[0]
	if !e1.CreatedAt.Equal(eventTime(1)) || e1.CreatedAt.Location() != time.UTC {
		t.Errorf("event 1 created_at = %v, want %v in UTC", e1.CreatedAt, eventTime(1))
	}
	if e1.GeoEventID == nil || *e1.GeoEventID != 10 || e1.CacheInvalidationEventID != nil {
		t.Errorf("event 1 references = %v, %v", e1.GeoEventID, e1.CacheInvalidationEventID)
	}
	ge := e1.GeoEvent
	if ge == nil {
		t.Fatal("event 1 has no geo event")
	}
	if ge.ID != 10 || ge.ReplicableName != "project_repository" || ge.EventName != "created" ||
		!ge.CreatedAt.Equal(eventTime(1)) {
		t.Errorf("event 1 geo event = %+v", ge)
	}
	if got, want := string(ge.Payload), `{"extra": [1, 2], "model_record_id": 42}`; got != want {
		t.Errorf("event 1 payload = %s, want %s", got, want)
	}

	e2 := events[1]
	if e2.CacheInvalidation == nil || e2.CacheInvalidation.ID != 20 || e2.CacheInvalidation.Key != "projects/42" || e2.GeoEvent != nil {
		t.Errorf("event 2 = %+v, want the cache invalidation projects/42", e2)
	}
	e3 := events[2]
	if e3.GeoEventID == nil || *e3.GeoEventID != 999 || e3.GeoEvent != nil {
		t.Errorf("event 3 = %+v, want a reference to geo event 999 and no row", e3)
	}
	e4 := events[3]
	if e4.GeoEventID != nil || e4.CacheInvalidationEventID != nil || e4.GeoEvent != nil || e4.CacheInvalidation != nil {
		t.Errorf("event 4 = %+v, want no references", e4)
	}
}

func TestFetchAddsGapRowsOutsideTheLimit(t *testing.T) {
	db := newSourceDB(t)
	for _, id := range []int64{1, 2, 4, 5, 6, 7, 9} {
		db.geoEvent(id, 100+id, "package_file", "updated", fmt.Sprintf(`{"model_record_id": %d}`, id))
	}
	src := openTestSource(t, db.dsn)

	tests := []struct {
		name  string
		after int64
		gaps  []int64
		limit int
		want  string
	}{
		{"limit applies to new events", 0, nil, 3, "[1 2 4]"},
		{"gap rows do not count against the limit", 5, []int64{2, 3}, 1, "[2 6]"},
		{"invisible gaps are simply absent", 5, []int64{3, 8}, 10, "[6 7 9]"},
		{"only gaps when nothing is new", 9, []int64{1, 4}, 10, "[1 4]"},
		{"a gap above the position is returned once", 5, []int64{6}, 10, "[6 7 9]"},
		{"nothing past the head", 9, nil, 10, "[]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			events, err := src.Fetch(testContext(t), tt.after, tt.gaps, tt.limit)
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			if got := fmt.Sprint(ids(events)); got != tt.want {
				t.Errorf("Fetch(%d, %v, %d) = %s, want %s", tt.after, tt.gaps, tt.limit, got, tt.want)
			}
		})
	}

	if _, err := src.Fetch(testContext(t), 0, nil, 0); err == nil {
		t.Error("Fetch with limit 0 succeeded, want an error")
	}
}

func TestPendingAndHead(t *testing.T) {
	db := newSourceDB(t)
	src := openTestSource(t, db.dsn)
	ctx := testContext(t)

	pending, err := src.Pending(ctx, 0, nil)
	if err != nil || pending {
		t.Fatalf("Pending on an empty log = %v, %v; want false", pending, err)
	}
	id, at, err := src.Head(ctx)
	if err != nil || id != 0 || !at.IsZero() {
		t.Fatalf("Head on an empty log = %d, %v, %v; want 0, zero", id, at, err)
	}

	db.geoEvent(5, 1, "lfs_object", "created", `{"model_record_id": 1}`)
	for _, tt := range []struct {
		after int64
		gaps  []int64
		want  bool
	}{
		{0, nil, true},
		{4, nil, true},
		{5, nil, false},
		{5, []int64{3}, false},
		{6, []int64{3, 5}, true},
	} {
		got, err := src.Pending(ctx, tt.after, tt.gaps)
		if err != nil {
			t.Fatalf("Pending(%d, %v): %v", tt.after, tt.gaps, err)
		}
		if got != tt.want {
			t.Errorf("Pending(%d, %v) = %v, want %v", tt.after, tt.gaps, got, tt.want)
		}
	}

	db.geoEvent(3, 2, "lfs_object", "created", `{"model_record_id": 2}`)
	if got, err := src.Pending(ctx, 5, []int64{3}); err != nil || !got {
		t.Errorf("Pending(5, [3]) after the gap committed = %v, %v; want true", got, err)
	}
	id, at, err = src.Head(ctx)
	if err != nil || id != 5 || !at.Equal(eventTime(5)) {
		t.Errorf("Head = %d, %v, %v; want 5, %v", id, at, err, eventTime(5))
	}
}

// withUser returns dsn connecting as user instead.
func withUser(t *testing.T, dsn, user, password string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("parse DSN: %v", err)
	}
	if password == "" {
		u.User = url.User(user)
	} else {
		u.User = url.UserPassword(user, password)
	}
	return u.String()
}

func dbName(t *testing.T, dsn string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatalf("parse DSN: %v", err)
	}
	return u.Host + u.Path
}

// A read-only replica refuses every write; a role whose transactions are
// read-only and that may only SELECT stands in for one.
func TestSourceWorksReadOnly(t *testing.T) {
	db := newSourceDB(t)
	db.geoEvent(1, 1, "lfs_object", "created", `{"model_record_id": 1}`)
	db.geoEvent(3, 2, "lfs_object", "created", `{"model_record_id": 2}`)
	exec(t, db.conn, `CREATE ROLE geo_reader LOGIN`)
	t.Cleanup(func() {
		// Roles are cluster-wide; other tests must not trip over this one.
		ctx := context.Background()
		_, _ = db.conn.Exec(ctx, `DROP OWNED BY geo_reader`)
		_, _ = db.conn.Exec(ctx, `DROP ROLE geo_reader`)
	})
	exec(t, db.conn, `ALTER ROLE geo_reader SET default_transaction_read_only = on`)
	exec(t, db.conn, `GRANT SELECT ON geo_event_log, geo_events, geo_cache_invalidation_events TO geo_reader`)

	src := openTestSource(t, withUser(t, db.dsn, "geo_reader", ""))
	ctx := testContext(t)
	if _, err := src.Fetch(ctx, 0, []int64{2}, 10); err != nil {
		t.Errorf("Fetch: %v", err)
	}
	if _, err := src.Pending(ctx, 1, []int64{2}); err != nil {
		t.Errorf("Pending: %v", err)
	}
	if _, _, err := src.Head(ctx); err != nil {
		t.Errorf("Head: %v", err)
	}
}

func TestOpenSourceErrorsSayWhatToFix(t *testing.T) {
	empty := newDatabase(t, "empty")
	db := newSourceDB(t)
	exec(t, db.conn, `CREATE ROLE geo_nobody LOGIN`)
	t.Cleanup(func() { _, _ = db.conn.Exec(context.Background(), `DROP ROLE geo_nobody`) })

	noColumn := newDatabase(t, "nocolumn")
	exec(t, connect(t, noColumn), `
CREATE TABLE geo_event_log (id bigint PRIMARY KEY, created_at timestamp NOT NULL);
CREATE TABLE geo_events (id bigint);
CREATE TABLE geo_cache_invalidation_events (id bigint)`)

	tests := []struct {
		name string
		dsn  string
		want string
	}{
		{
			name: "tables missing",
			dsn:  withUser(t, empty, "postgres", "s3cret"),
			want: "source database " + dbName(t, empty) + ": table geo_event_log does not exist: point source.dsn at the primary's database (or a replica of it)",
		},
		{
			name: "no SELECT grant",
			dsn:  withUser(t, db.dsn, "geo_nobody", "s3cret"),
			want: "source database " + dbName(t, db.dsn) + ": cannot read table geo_event_log: permission denied for table geo_event_log: grant SELECT on it to the user in source.dsn",
		},
		{
			name: "not an event log",
			dsn:  noColumn,
			want: "source database " + dbName(t, noColumn) + `: table geo_event_log: column "geo_event_id" does not exist: this does not look like GitLab's Geo event log`,
		},
		{
			name: "unknown role",
			dsn:  withUser(t, empty, "geo_ghost", "s3cret"),
			want: "source database " + dbName(t, empty) + `: role "geo_ghost" does not exist`,
		},
		{
			name: "no server",
			dsn:  "postgres://postgres:s3cret@127.0.0.1:1/gitlabhq_production?sslmode=disable",
			want: "source database 127.0.0.1:1/gitlabhq_production: dial tcp 127.0.0.1:1: connect: connection refused",
		},
		{
			name: "unparsable DSN",
			dsn:  "postgres://postgres:s3cret@127.0.0.1:notaport/x",
			want: "source database: cannot parse the DSN: invalid port",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, err := OpenSource(testContext(t), tt.dsn, nil)
			if err == nil {
				src.Close()
				t.Fatal("OpenSource succeeded, want an error")
			}
			msg := err.Error()
			t.Logf("error: %s", msg)
			if !strings.HasPrefix(msg, tt.want) {
				t.Errorf("error = %q\nwant   %q", msg, tt.want)
			}
			if strings.ContainsAny(msg, "\n") || strings.Contains(msg, "s3cret") {
				t.Errorf("error %q is not one line without the password", msg)
			}
		})
	}
}

func TestSourceErrorsUnwrapToTheDriverError(t *testing.T) {
	_, err := OpenSource(testContext(t), newDatabase(t, "empty"), nil)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42P01" {
		t.Errorf("OpenSource error %v does not unwrap to undefined_table", err)
	}
}

func TestFetchHonoursCancellation(t *testing.T) {
	db := newSourceDB(t)
	src := openTestSource(t, db.dsn)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := src.Fetch(ctx, 0, nil, 10); !errors.Is(err, context.Canceled) {
		t.Errorf("Fetch with a canceled context = %v, want context.Canceled", err)
	}
}

// The source queries run thousands of times a minute on every peer, against
// an event log of millions of rows, through pgx's prepared statements: after
// five runs PostgreSQL may switch a statement to its generic plan. Both
// kinds of plan must reach rows through the primary keys only. Two plans
// that were not did cost the drain and the idle peers dearly: a hash of the
// whole cache invalidation table on every fetch, and a sequential scan of
// the whole log on every idle poll at the head.
func TestSourceQueriesUseKeysUnderEveryPlan(t *testing.T) {
	db := newSourceDB(t)
	ctx := testContext(t)
	const n = 100_000
	exec(t, db.conn, `INSERT INTO geo_events (id, replicable_name, event_name, payload, created_at)
SELECT i, 'lfs_object', 'updated', jsonb_build_object('model_record_id', i), now()
FROM generate_series(1, $1::bigint) AS i WHERE i % 20 <> 0`, n)
	exec(t, db.conn, `INSERT INTO geo_cache_invalidation_events (id, key)
SELECT i, 'k' || i FROM generate_series(1, $1::bigint) AS i WHERE i % 20 = 0`, n)
	exec(t, db.conn, `INSERT INTO geo_event_log (id, created_at, geo_event_id, cache_invalidation_event_id)
SELECT i, now() AT TIME ZONE 'utc', CASE WHEN i % 20 <> 0 THEN i END, CASE WHEN i % 20 = 0 THEN i END
FROM generate_series(1, $1::bigint) AS i`, n)
	exec(t, db.conn, `ANALYZE`)

	// EXPLAIN EXECUTE takes no bind parameters: the values are literals.
	queries := []struct {
		name, types, query string
		args               []string
	}{
		{"fetch", "bigint, int, bigint[]", fetchQuery, []string{
			"0, 1000, '{}'", fmt.Sprintf("%d, 1000, '{7,9}'", n/2), fmt.Sprintf("%d, 1000, '{%d}'", n, n-5),
		}},
		{"pending", "bigint, bigint[]", pendingQuery, []string{
			fmt.Sprintf("%d, '{}'", n), "0, '{}'", fmt.Sprintf("%d, '{3,%d}'", n, n-1),
		}},
		{"head", "", headQuery, []string{""}},
	}
	for _, mode := range []string{"force_generic_plan", "force_custom_plan"} {
		exec(t, db.conn, "SET plan_cache_mode = "+mode)
		for _, q := range queries {
			prepare := "PREPARE q AS " + q.query
			if q.types != "" {
				prepare = "PREPARE q(" + q.types + ") AS " + q.query
			}
			exec(t, db.conn, prepare)
			for _, args := range q.args {
				explain := "EXPLAIN EXECUTE q"
				if args != "" {
					explain += "(" + args + ")"
				}
				rows, err := db.conn.Query(ctx, explain)
				if err != nil {
					t.Fatalf("%s: %s: %v", mode, explain, err)
				}
				lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					t.Fatalf("%s: %s: %v", mode, explain, err)
				}
				plan := strings.Join(lines, "\n")
				for _, bad := range []string{"Seq Scan", "Hash"} {
					if strings.Contains(plan, bad) {
						t.Errorf("%s: %s: plan has a %s:\n%s", mode, explain, bad, plan)
					}
				}
			}
			exec(t, db.conn, "DEALLOCATE q")
		}
	}
}

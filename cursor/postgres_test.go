package cursor

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/geocursor/geocursor/internal/pgserver"
	ts "github.com/geocursor/geocursor/internal/testsupport"
	"github.com/jackc/pgx/v5"
)

// The tests of this package share one PostgreSQL server, started on first
// use and stopped by TestMain; each test gets its own databases. Starting a
// server per test would cost an initdb each time for no isolation gain.
// shared is the package's PostgreSQL server, for all its tests.
var shared = &ts.PackagePostgres{Options: pgserver.Options{Fast: true}}

func TestMain(m *testing.M) { ts.RunPackage(m, shared, durable) }

// postgres returns the shared server, starting it if needed.
func postgres(t *testing.T) *pgserver.Server {
	t.Helper()
	return shared.Server(t)
}

// newDatabase creates an empty database for the calling test and returns
// its DSN.
func newDatabase(t *testing.T, prefix string) string {
	t.Helper()
	return shared.NewDatabase(t, prefix)
}

// testSourceSchema is GitLab's event log layout (design.md section 5), with
// one of the old columns real databases still carry and without foreign
// keys, so that tests can write references to rows that do not exist.
const testSourceSchema = `
CREATE TABLE geo_event_log (
    id bigint NOT NULL PRIMARY KEY,
    created_at timestamp without time zone NOT NULL,
    repository_updated_event_id bigint,
    cache_invalidation_event_id bigint,
    geo_event_id bigint
);
CREATE TABLE geo_events (
    id bigint NOT NULL PRIMARY KEY,
    replicable_name character varying(255) NOT NULL,
    event_name character varying(255) NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone NOT NULL
);
CREATE TABLE geo_cache_invalidation_events (
    id bigint NOT NULL PRIMARY KEY,
    key character varying NOT NULL
);
`

// sourceDB is a source database the test writes to directly.
type sourceDB struct {
	t    *testing.T
	dsn  string
	conn *pgx.Conn
}

func newSourceDB(t *testing.T) *sourceDB {
	t.Helper()
	dsn := newDatabase(t, "source")
	conn := connect(t, dsn)
	exec(t, conn, testSourceSchema)
	return &sourceDB{t: t, dsn: dsn, conn: conn}
}

// eventTime is the created_at the helpers give to log row id.
func eventTime(id int64) time.Time {
	return time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC).Add(time.Duration(id) * time.Millisecond)
}

// geoEvent writes a geo_events row and the log row pointing at it.
func (s *sourceDB) geoEvent(logID, geoID int64, replicable, event, payload string) {
	s.t.Helper()
	exec(s.t, s.conn, `INSERT INTO geo_events (id, replicable_name, event_name, payload, created_at)
VALUES ($1, $2, $3, $4::jsonb, $5)`, geoID, replicable, event, payload, eventTime(logID))
	s.log(logID, &geoID, nil)
}

// cacheInvalidation writes a cache invalidation row and its log row.
func (s *sourceDB) cacheInvalidation(logID, cacheID int64, key string) {
	s.t.Helper()
	exec(s.t, s.conn, `INSERT INTO geo_cache_invalidation_events (id, key) VALUES ($1, $2)`, cacheID, key)
	s.log(logID, nil, &cacheID)
}

// log writes a bare log row with the given references.
func (s *sourceDB) log(logID int64, geoID, cacheID *int64) {
	s.t.Helper()
	exec(s.t, s.conn, `INSERT INTO geo_event_log (id, created_at, geo_event_id, cache_invalidation_event_id)
VALUES ($1, $2, $3, $4)`, logID, eventTime(logID), geoID, cacheID)
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(testContext(t), sql, args...); err != nil {
		t.Fatalf("exec %s: %v", strings.TrimSpace(firstLine(sql)), err)
	}
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// testContext bounds one database call of a test, so a wedged server fails
// the test instead of hanging it.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func ptr[T any](v T) *T { return &v }

// commitBatch applies b in one transaction, as a holder does: Stage, then
// the staged batch's Commit.
func commitBatch(ctx context.Context, tr *Tracking, b Batch) (CommitResult, error) {
	st, err := tr.Stage(ctx, b)
	if err != nil {
		return CommitResult{}, err
	}
	return st.Commit(ctx)
}

package delivery

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/geocursor/geocursor/cursor"
	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/internal/pgserver"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

// shared is the package's PostgreSQL server, for all its tests.
var shared = &ts.PackagePostgres{Options: pgserver.Options{Fast: true}}

func TestMain(m *testing.M) { ts.RunPackage(m, shared) }

// newDatabase creates an empty database for the calling test and returns
// its DSN.
func newDatabase(t *testing.T, prefix string) string {
	t.Helper()
	return shared.NewDatabase(t, prefix)
}

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
	exec(t, conn, loadgen.SourceSchema)
	return &sourceDB{t: t, dsn: dsn, conn: conn}
}

// geoEvent writes a geo_events row and the log row pointing at it.
func (s *sourceDB) geoEvent(logID, geoID int64, replicable, event, payload string) {
	s.t.Helper()
	exec(s.t, s.conn, `INSERT INTO geo_events (id, replicable_name, event_name, payload, created_at)
VALUES ($1, $2, $3, $4::jsonb, now())`, geoID, replicable, event, payload)
	exec(s.t, s.conn, `INSERT INTO geo_event_log (id, created_at, geo_event_id) VALUES ($1, now() AT TIME ZONE 'utc', $2)`, logID, geoID)
}

// cacheInvalidation writes a cache invalidation row and its log row.
func (s *sourceDB) cacheInvalidation(logID, cacheID int64, key string) {
	s.t.Helper()
	exec(s.t, s.conn, `INSERT INTO geo_cache_invalidation_events (id, key) VALUES ($1, $2)`, cacheID, key)
	exec(s.t, s.conn, `INSERT INTO geo_event_log (id, created_at, cache_invalidation_event_id) VALUES ($1, now() AT TIME ZONE 'utc', $2)`, logID, cacheID)
}

func openTestTracking(t *testing.T) *cursor.Tracking {
	t.Helper()
	tr, err := cursor.OpenTracking(testContext(t), newDatabase(t, "tracking"), nil)
	if err != nil {
		t.Fatalf("OpenTracking: %v", err)
	}
	t.Cleanup(tr.Close)
	return tr
}

func openTestSource(t *testing.T, dsn string) *cursor.Source {
	t.Helper()
	src, err := cursor.OpenSource(testContext(t), dsn, nil)
	if err != nil {
		t.Fatalf("OpenSource: %v", err)
	}
	t.Cleanup(src.Close)
	return src
}

// commitBatch applies b in one transaction, as a holder does.
func commitBatch(ctx context.Context, tr *cursor.Tracking, b cursor.Batch) (cursor.CommitResult, error) {
	st, err := tr.Stage(ctx, b)
	if err != nil {
		return cursor.CommitResult{}, err
	}
	return st.Commit(ctx)
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(testContext(t), dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec(t *testing.T, conn *pgx.Conn, sql string, args ...any) {
	t.Helper()
	if _, err := conn.Exec(testContext(t), sql, args...); err != nil {
		t.Fatalf("exec %s: %v", strings.TrimSpace(sql), err)
	}
}

// testContext bounds one database call of a test.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// syncBuffer is a log output the test reads while deliverers write it.
type syncBuffer = ts.SyncBuffer

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

var logMu sync.Mutex

func (w testWriter) Write(p []byte) (int, error) {
	logMu.Lock()
	defer logMu.Unlock()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

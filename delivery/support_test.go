package delivery

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/geocursor/geocursor/cursor"
	"github.com/geocursor/geocursor/internal/pgserver"
)

// One PostgreSQL server for the package's tests, each with databases of
// its own.
var shared struct {
	once sync.Once
	srv  *pgserver.Server
	err  error
	seq  atomic.Int64
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.srv != nil {
		if err := shared.srv.Cleanup(); err != nil {
			fmt.Fprintf(os.Stderr, "clean up PostgreSQL in %s: %v\n", shared.srv.Dir, err)
		}
	}
	os.Exit(code)
}

// newDatabase creates an empty database for the calling test and returns
// its DSN.
func newDatabase(t *testing.T, prefix string) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs PostgreSQL; skipped with -short")
	}
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		shared.srv, shared.err = pgserver.Start(ctx, pgserver.Options{Fast: true})
	})
	if shared.err != nil {
		t.Fatalf("start PostgreSQL: %v", shared.err)
	}
	name := fmt.Sprintf("%s_%d", prefix, shared.seq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dsn, err := shared.srv.CreateDatabase(ctx, name)
	if err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	return dsn
}

// testSourceSchema is GitLab's event log layout (design section 5).
const testSourceSchema = `
CREATE TABLE geo_event_log (
    id bigint NOT NULL PRIMARY KEY,
    created_at timestamp without time zone NOT NULL,
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
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

var logMu sync.Mutex

func (w testWriter) Write(p []byte) (int, error) {
	logMu.Lock()
	defer logMu.Unlock()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// Package testsupport holds helpers that tests share: starting PostgreSQL
// servers and creating databases, starting Redis and Sidekiq. Every
// resource a helper creates is released through tb.Cleanup, so tests need
// no teardown code.
package testsupport

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/geocursor/geocursor/internal/pgserver"
)

// setupTimeout bounds starting a server or creating a database, so a
// wedged server fails the test with a message instead of hanging it.
const setupTimeout = 2 * time.Minute

// StartPostgres starts a throwaway PostgreSQL server and stops and removes
// it when the test ends. If opts.Logf is nil, server commands are logged
// through tb.Logf (shown with -v or on failure).
func StartPostgres(tb testing.TB, opts pgserver.Options) *pgserver.Server {
	tb.Helper()
	if opts.Logf == nil {
		opts.Logf = tb.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	s, err := pgserver.Start(ctx, opts)
	if errors.Is(err, pgserver.ErrNotInstalled) {
		tb.Fatalf("this test needs a PostgreSQL server: %v", err)
	}
	if err != nil {
		tb.Fatalf("start PostgreSQL: %v", err)
	}
	tb.Cleanup(func() {
		if err := s.Cleanup(); err != nil {
			tb.Errorf("clean up PostgreSQL in %s: %v", s.Dir, err)
		}
	})
	return s
}

// NewDatabase creates a database on s and returns its DSN. The database goes
// away with the server.
func NewDatabase(tb testing.TB, s *pgserver.Server, name string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	dsn, err := s.CreateDatabase(ctx, name)
	if err != nil {
		tb.Fatalf("create database %q: %v", name, err)
	}
	return dsn
}

// PackagePostgres is one PostgreSQL server that a test package's tests
// share, each in databases of its own: starting a server per test costs
// seconds. The first NewDatabase starts it; the package's TestMain calls
// Cleanup after m.Run. Tests that need it skip under -short.
type PackagePostgres struct {
	// Options start the server (Fast for throwaway data).
	Options pgserver.Options

	once sync.Once
	srv  *pgserver.Server
	err  error
	seq  atomic.Int64
}

// Server returns the package's server, starting it on first use.
func (p *PackagePostgres) Server(tb testing.TB) *pgserver.Server {
	tb.Helper()
	if testing.Short() {
		tb.Skip("needs PostgreSQL; skipped with -short")
	}
	p.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
		defer cancel()
		p.srv, p.err = pgserver.Start(ctx, p.Options)
	})
	if errors.Is(p.err, pgserver.ErrNotInstalled) {
		tb.Fatalf("this test needs a PostgreSQL server: %v", p.err)
	}
	if p.err != nil {
		tb.Fatalf("start PostgreSQL: %v", p.err)
	}
	return p.srv
}

// NewDatabase creates an empty database named prefix_N for the calling
// test and returns its DSN.
func (p *PackagePostgres) NewDatabase(tb testing.TB, prefix string) string {
	tb.Helper()
	return NewDatabase(tb, p.Server(tb), fmt.Sprintf("%s_%d", prefix, p.seq.Add(1)))
}

// RunPackage is a test package's TestMain with package-wide servers: it
// runs the tests, then stops and removes each server that was started,
// and exits with the tests' status.
func RunPackage(m *testing.M, servers ...*PackagePostgres) {
	code := m.Run()
	for _, p := range servers {
		if err := p.Cleanup(); err != nil {
			fmt.Fprintf(os.Stderr, "clean up the tests' PostgreSQL: %v\n", err)
		}
	}
	os.Exit(code)
}

// Cleanup stops and removes the server, if it was started.
func (p *PackagePostgres) Cleanup() error {
	if p.srv == nil {
		return nil
	}
	return p.srv.Cleanup()
}

// SyncBuffer is a log output that tests read while loggers write it.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Package testsupport holds helpers that tests share: starting PostgreSQL
// servers and creating databases, starting Redis and Sidekiq. Every
// resource a helper creates is released through tb.Cleanup, so tests need
// no teardown code.
package testsupport

import (
	"context"
	"errors"
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

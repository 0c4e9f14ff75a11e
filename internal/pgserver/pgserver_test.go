package pgserver_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/geocursor/geocursor/internal/pgserver"
)

func TestServerSurvivesCrashRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	s, err := pgserver.Start(ctx, pgserver.Options{Logf: t.Logf})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})

	dsn, err := s.CreateDatabase(ctx, "pgserver_test")
	if err != nil {
		t.Fatalf("create database: %v", err)
	}
	exec(ctx, t, dsn, "CREATE TABLE t (v int); INSERT INTO t VALUES (42)")
	if got := queryInt(ctx, t, dsn, "SELECT v FROM t"); got != 42 {
		t.Fatalf("before restart: got %d, want 42", got)
	}

	port := s.Port
	if err := s.Restart(ctx, 100*time.Millisecond); err != nil {
		t.Fatalf("restart: %v", err)
	}
	if s.Port != port {
		t.Fatalf("port changed across restart: %d -> %d", port, s.Port)
	}
	// A committed row must survive an immediate (crash-like) stop.
	if got := queryInt(ctx, t, dsn, "SELECT v FROM t"); got != 42 {
		t.Fatalf("after restart: got %d, want 42", got)
	}

	if err := s.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second stop: %v", err)
	}
}

func exec(ctx context.Context, t *testing.T, dsn, sql string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func queryInt(ctx context.Context, t *testing.T, dsn, sql string) int {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	var v int
	if err := conn.QueryRow(ctx, sql).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

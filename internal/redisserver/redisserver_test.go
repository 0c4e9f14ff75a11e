package redisserver_test

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/geocursor/geocursor/internal/redisserver"
	"github.com/redis/go-redis/v9"
)

func TestWriteSurvivesKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	s, err := redisserver.Start(ctx, redisserver.Options{Logf: t.Logf})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
		if _, err := os.Stat(s.Dir); !os.IsNotExist(err) {
			t.Errorf("%s still there after Cleanup (stat: %v)", s.Dir, err)
		}
	})
	if want := "redis://" + s.Addr() + "/0"; s.URL() != want {
		t.Fatalf("URL() = %q, want %q", s.URL(), want)
	}

	do(ctx, t, s, "SET", "geo:key", "survives")

	port := s.Port
	if err := s.Kill(); err != nil {
		t.Fatalf("kill: %v", err)
	}
	if err := s.Kill(); err != nil {
		t.Fatalf("second kill: %v", err)
	}
	if err := s.StartAgain(ctx); err != nil {
		t.Fatalf("start again: %v", err)
	}
	if s.Port != port {
		t.Fatalf("port changed across restart: %d -> %d", port, s.Port)
	}
	// appendfsync always: the acknowledged SET is in the AOF.
	if got := do(ctx, t, s, "GET", "geo:key"); got != "survives" {
		t.Fatalf("after kill and restart: GET = %v, want survives", got)
	}

	// A clean stop and start keeps it too.
	if err := s.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	if err := s.StartAgain(ctx); err != nil {
		t.Fatalf("start again after stop: %v", err)
	}
	if got := do(ctx, t, s, "GET", "geo:key"); got != "survives" {
		t.Fatalf("after stop and restart: GET = %v, want survives", got)
	}
}

func TestStartAgainReportsTakenPort(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	s, err := redisserver.Start(ctx, redisserver.Options{AppendFsync: "everysec", Logf: t.Logf})
	if err != nil {
		t.Fatalf("start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err := s.Kill(); err != nil {
		t.Fatalf("kill: %v", err)
	}
	l, err := net.Listen("tcp", s.Addr())
	if err != nil {
		t.Fatalf("take the server's port: %v", err)
	}
	defer l.Close()
	err = s.StartAgain(ctx)
	if err == nil {
		t.Fatal("StartAgain succeeded on a port someone else listens on")
	}
	if !strings.Contains(err.Error(), "Address already in use") {
		t.Fatalf("StartAgain's error lacks the server log's reason: %v", err)
	}
	t.Logf("StartAgain on a taken port: %v", err)
	l.Close()
	if err := s.StartAgain(ctx); err != nil {
		t.Fatalf("start again once the port is free: %v", err)
	}
}

func TestRejectsUnknownFsyncPolicy(t *testing.T) {
	_, err := redisserver.Start(context.Background(), redisserver.Options{AppendFsync: "sometimes"})
	if err == nil {
		t.Fatal("Start accepted AppendFsync \"sometimes\"")
	}
}

func do(ctx context.Context, t *testing.T, s *redisserver.Server, args ...string) any {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer c.Close()
	cmd := make([]any, len(args))
	for i, a := range args {
		cmd[i] = a
	}
	v, err := c.Do(ctx, cmd...).Result()
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return v
}

package testsupport

import (
	"context"
	"errors"
	"testing"

	"github.com/geocursor/geocursor/internal/redisserver"
	"github.com/geocursor/geocursor/internal/sidekiqserver"
)

// StartRedis starts a throwaway Redis server and stops and removes it when
// the test ends. If opts.Logf is nil, starts and stops are logged through
// tb.Logf (shown with -v or on failure).
func StartRedis(tb testing.TB, opts redisserver.Options) *redisserver.Server {
	tb.Helper()
	if opts.Logf == nil {
		opts.Logf = tb.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	s, err := redisserver.Start(ctx, opts)
	if errors.Is(err, redisserver.ErrNotInstalled) {
		tb.Fatalf("this test needs a Redis server: %v", err)
	}
	if err != nil {
		tb.Fatalf("start Redis: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("--- last lines of the Redis log in %s ---\n%s", s.Dir, s.LogTail())
		}
		if err := s.Cleanup(); err != nil {
			tb.Errorf("clean up Redis in %s: %v", s.Dir, err)
		}
	})
	return s
}

// StartSentinelGroup starts a master, its replicas and the Sentinels that
// watch them (redisserver.StartGroup), ready for a failover, and stops
// and removes them all when the test ends. If opts.Logf is nil, starts
// and stops are logged through tb.Logf.
func StartSentinelGroup(tb testing.TB, opts redisserver.GroupOptions) *redisserver.Group {
	tb.Helper()
	if opts.Logf == nil {
		opts.Logf = tb.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	g, err := redisserver.StartGroup(ctx, opts)
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("--- last lines of the Sentinel group's logs ---\n%s", g.LogTails())
		}
		if err := g.Cleanup(); err != nil {
			tb.Errorf("clean up the Sentinel group: %v", err)
		}
	})
	if errors.Is(err, redisserver.ErrNotInstalled) {
		tb.Fatalf("this test needs Redis and Redis Sentinel: %v", err)
	}
	if err != nil {
		tb.Fatalf("start a Sentinel group: %v\n%s", err, g.LogTails())
	}
	return g
}

// StartSidekiq starts a throwaway Sidekiq with GitLab's Geo::EventWorker
// against opts.RedisURL, and stops it and removes its files when the test
// ends. Start it after the Redis it uses, so that it stops first. If
// opts.Logf is nil, starts and stops are logged through tb.Logf.
func StartSidekiq(tb testing.TB, opts sidekiqserver.Options) *sidekiqserver.Server {
	tb.Helper()
	if opts.Logf == nil {
		opts.Logf = tb.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	s, err := sidekiqserver.Start(ctx, opts)
	if errors.Is(err, sidekiqserver.ErrNotInstalled) || errors.Is(err, sidekiqserver.ErrNamespaceNotInstalled) {
		tb.Fatalf("this test needs Sidekiq: %v", err)
	}
	if err != nil {
		tb.Fatalf("start Sidekiq: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("--- last lines of the Sidekiq log in %s ---\n%s", s.Dir, s.LogTail())
		}
		if err := s.Cleanup(); err != nil {
			tb.Errorf("clean up Sidekiq in %s: %v", s.Dir, err)
		}
	})
	return s
}

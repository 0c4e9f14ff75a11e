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

// A Sentinel group fails over by itself when its master is killed, and a
// frozen replica is thawed and kept in the group.
func TestSentinelGroupPromotesAReplicaWhenTheMasterDies(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Redis and Sentinels; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	g, err := redisserver.StartGroup(ctx, redisserver.GroupOptions{Replicas: 1, Logf: t.Logf})
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(g.LogTails())
		}
		if err := g.Cleanup(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	if err != nil {
		t.Fatalf("start group: %v", err)
	}
	if a, err := g.MasterAddr(ctx); err != nil || a != g.Master.Addr() {
		t.Fatalf("the Sentinels say the master is %q (%v), want %s", a, err, g.Master.Addr())
	}
	replica := g.Replicas[0]
	if err := replica.Freeze(); err != nil {
		t.Fatal(err)
	}
	if err := replica.Thaw(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := g.Master.Kill(); err != nil {
		t.Fatal(err)
	}
	for {
		a, err := g.MasterAddr(ctx)
		if err == nil && a == replica.Addr() {
			if role, _ := redisserver.Role(ctx, a); role == "master" {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("no failover to %s: the Sentinels say %q (%v)", replica.Addr(), a, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("failed over to %s in %s", replica.Addr(), time.Since(start).Round(time.Millisecond))
}

// A partitioned replica keeps what it had while its master goes on, and
// catches up once healed.
func TestPartitionedReplicaKeepsWhatItHad(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Redis servers; skipped with -short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	master, err := redisserver.Start(ctx, redisserver.Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = master.Cleanup() })
	replica, err := redisserver.Start(ctx, redisserver.Options{ReplicaOf: master.Addr(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = replica.Cleanup() })
	get := func() any {
		c := redis.NewClient(&redis.Options{Addr: replica.Addr(), MaxRetries: -1})
		defer c.Close()
		v, _ := c.Get(ctx, "k").Result()
		return v
	}
	waitFor := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); get() != want; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the replica has k = %q, want %q", get(), want)
			}
		}
	}
	do(ctx, t, master, "SET", "k", "before")
	waitFor("before")
	if err := replica.Partition(ctx); err != nil {
		t.Fatal(err)
	}
	do(ctx, t, master, "SET", "k", "after")
	time.Sleep(1500 * time.Millisecond) // a replica reconnects every second
	if got := get(); got != "before" {
		t.Fatalf("the partitioned replica has k = %q, want before", got)
	}
	if err := replica.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor("after")
}

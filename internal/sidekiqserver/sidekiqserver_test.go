package sidekiqserver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"testing"
	"time"

	"github.com/geocursor/geocursor/internal/redisserver"
	"github.com/geocursor/geocursor/internal/sidekiqserver"
	"github.com/geocursor/geocursor/internal/testsupport"
	"github.com/redis/go-redis/v9"
)

// job is what Sidekiq's client pushes for Geo::EventWorker.perform_async.
type job struct {
	Class         string  `json:"class"`
	Args          []any   `json:"args"`
	Queue         string  `json:"queue"`
	JID           string  `json:"jid"`
	Retry         int     `json:"retry"`
	CreatedAt     float64 `json:"created_at"`
	EnqueuedAt    float64 `json:"enqueued_at"`
	CorrelationID string  `json:"correlation_id,omitempty"`
}

func newJob(jid, event string, id int) job {
	now := float64(time.Now().UnixMicro()) / 1e6
	return job{
		Class:         "Geo::EventWorker",
		Args:          []any{"package_file", event, map[string]any{"model_record_id": id}},
		Queue:         "default",
		JID:           jid,
		Retry:         3,
		CreatedAt:     now - 0.5,
		EnqueuedAt:    now,
		CorrelationID: "abc",
	}
}

// push enqueues j the way Sidekiq's client does: the job on the queue's
// list, the queue in the set of known queues; prefix is "" or a namespace
// followed by a colon.
func push(t *testing.T, url, prefix string, j job) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	body, err := json.Marshal(j)
	if err != nil {
		t.Fatalf("marshal job: %v", err)
	}
	c := client(t, url)
	if err := c.SAdd(ctx, prefix+"queues", j.Queue).Err(); err != nil {
		t.Fatalf("SADD queues: %v", err)
	}
	if err := c.LPush(ctx, prefix+"queue:"+j.Queue, string(body)).Err(); err != nil {
		t.Fatalf("LPUSH: %v", err)
	}
}

// waitPerformed waits until s has recorded n jobs and returns them.
func waitPerformed(t *testing.T, s *sidekiqserver.Server, n int) []sidekiqserver.Performed {
	t.Helper()
	var got []sidekiqserver.Performed
	testsupport.WaitFor(t, 10*time.Second, fmt.Sprintf("%d performed jobs", n), func() (bool, string) {
		var err error
		got, err = s.Performed()
		if err != nil {
			t.Fatalf("performed: %v", err)
		}
		return len(got) >= n, fmt.Sprintf("%d performed", len(got))
	})
	if len(got) != n {
		t.Fatalf("performed %d jobs, want %d: %+v", len(got), n, got)
	}
	return got
}

// checkPerformed compares what the worker recorded with the job pushed.
func checkPerformed(t *testing.T, got sidekiqserver.Performed, want job, pushedBefore time.Time) {
	t.Helper()
	var payload map[string]any
	if err := json.Unmarshal(got.Payload, &payload); err != nil {
		t.Fatalf("payload %s: %v", got.Payload, err)
	}
	wantPayload := map[string]any{"model_record_id": float64(want.Args[2].(map[string]any)["model_record_id"].(int))}
	if !reflect.DeepEqual(payload, wantPayload) {
		t.Errorf("payload = %v, want %v", payload, wantPayload)
	}
	if got.ReplicableName != want.Args[0] || got.EventName != want.Args[1] {
		t.Errorf("replicable_name, event_name = %q, %q; want %q, %q", got.ReplicableName, got.EventName, want.Args[0], want.Args[1])
	}
	if got.JID != want.JID {
		t.Errorf("jid = %q, want %q", got.JID, want.JID)
	}
	if got.Queue != want.Queue {
		t.Errorf("queue = %q, want %q", got.Queue, want.Queue)
	}
	if got.CorrelationID != want.CorrelationID {
		t.Errorf("correlation_id = %q, want %q", got.CorrelationID, want.CorrelationID)
	}
	// Ruby's Float round-trips through JSON; allow for the last digit.
	if d := got.EnqueuedAt - want.EnqueuedAt; d > 1e-6 || d < -1e-6 {
		t.Errorf("enqueued_at = %f, want %f", got.EnqueuedAt, want.EnqueuedAt)
	}
	if d := got.CreatedAt - want.CreatedAt; d > 1e-6 || d < -1e-6 {
		t.Errorf("created_at = %f, want %f", got.CreatedAt, want.CreatedAt)
	}
	performed := time.UnixMicro(int64(got.PerformedAt * 1e6))
	if performed.Before(pushedBefore.Add(-time.Second)) || performed.After(time.Now().Add(time.Second)) {
		t.Errorf("performed_at = %s, want between %s and now", performed, pushedBefore)
	}
}

func TestPerformsJobsAcrossRestart(t *testing.T) {
	r := testsupport.StartRedis(t, redisserver.Options{AppendFsync: "no"})
	s := testsupport.StartSidekiq(t, sidekiqserver.Options{RedisURL: r.URL()})

	first := newJob("0123456789abcdef01234567", "created", 1)
	pushed := time.Now()
	push(t, r.URL(), "", first)
	got := waitPerformed(t, s, 1)
	checkPerformed(t, got[0], first, pushed)

	if err := s.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	second := newJob("76543210fedcba9876543210", "updated", 2)
	pushed = time.Now()
	push(t, r.URL(), "", second)
	time.Sleep(200 * time.Millisecond)
	if got, err := s.Performed(); err != nil || len(got) != 1 {
		t.Fatalf("while stopped: performed %d jobs (err %v), want still 1", len(got), err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.StartAgain(ctx); err != nil {
		t.Fatalf("start again: %v", err)
	}
	got = waitPerformed(t, s, 2)
	checkPerformed(t, got[0], first, time.Time{})
	checkPerformed(t, got[1], second, pushed)
}

func TestNamespaceAndKill(t *testing.T) {
	r := testsupport.StartRedis(t, redisserver.Options{AppendFsync: "no"})
	const ns = "resque:gitlab"
	s := testsupport.StartSidekiq(t, sidekiqserver.Options{RedisURL: r.URL(), Namespace: ns, Concurrency: 2})

	first := newJob("0123456789abcdef01234567", "created", 1)
	first.CorrelationID = "" // a job without one is recorded with null
	push(t, r.URL(), ns+":", first)
	got := waitPerformed(t, s, 1)
	checkPerformed(t, got[0], first, time.Time{})

	// A killed process leaves its entry in the set of processes behind;
	// StartAgain must wait for the new one's heartbeat, not take the old.
	if err := s.Kill(); err != nil {
		t.Fatalf("kill: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.StartAgain(ctx); err != nil {
		t.Fatalf("start again: %v", err)
	}
	second := newJob("76543210fedcba9876543210", "deleted", 2)
	push(t, r.URL(), ns+":", second)
	got = waitPerformed(t, s, 2)
	checkPerformed(t, got[1], second, time.Time{})

	// Nothing went to the unprefixed keys.
	c := client(t, r.URL())
	if n, err := c.Exists(ctx, "processes", "queues", "queue:default").Result(); err != nil || n != 0 {
		t.Fatalf("unprefixed keys: EXISTS = %v (err %v), want 0", n, err)
	}
}

func TestStartErrors(t *testing.T) {
	ctx := context.Background()
	if _, err := sidekiqserver.Start(ctx, sidekiqserver.Options{}); err == nil {
		t.Error("Start without a RedisURL succeeded")
	}
	// Nothing listens on port 1: Sidekiq exits and Start says why.
	dirsBefore := tempDirs(t)
	_, err := sidekiqserver.Start(ctx, sidekiqserver.Options{RedisURL: "redis://127.0.0.1:1/0"})
	if err == nil {
		t.Fatal("Start against a Redis that is not there succeeded")
	}
	t.Logf("Start against no Redis: %v", err)
	if n := tempDirs(t); n != dirsBefore {
		t.Errorf("a failed Start left its directory behind (%d -> %d)", dirsBefore, n)
	}
}

func tempDirs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir(os.TempDir())
	if err != nil {
		t.Fatalf("list %s: %v", os.TempDir(), err)
	}
	n := 0
	for _, e := range entries {
		if len(e.Name()) > len("geocursor-sidekiq-") && e.Name()[:len("geocursor-sidekiq-")] == "geocursor-sidekiq-" {
			n++
		}
	}
	return n
}

// client connects to the Redis at url for the test's lifetime.
func client(t *testing.T, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

package delivery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/redis/go-redis/v9"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/cursor"
	"github.com/geocursor/geocursor/internal/redisserver"
	"github.com/geocursor/geocursor/internal/sidekiqserver"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

func TestSidekiqJobIsWhatSidekiqWrites(t *testing.T) {
	created := time.Date(2026, 12, 1, 10, 0, 0, 500_000_000, time.UTC)
	now := created.Add(2 * time.Second)
	j := deliveryJob{id: 42, eventID: 1042, kind: cursor.KindSync, replicableName: "package_file", eventName: "created",
		payload: []byte(`{"model_record_id": 7, "correlation_id": "c0ffee"}`), createdAt: created}
	b, err := encodeSidekiqJob("epoch1", "default", j, now)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("the job is not JSON: %v\n%s", err, b)
	}
	want := map[string]any{
		"class": "Geo::EventWorker", "queue": "default", "retry": 3.0, "correlation_id": "c0ffee",
		"args":       []any{"package_file", "created", map[string]any{"model_record_id": 7.0, "correlation_id": "c0ffee"}},
		"created_at": 1796119200.5, "enqueued_at": 1796119202.5, "jid": JobJID("epoch1", 42), "dead": false,
	}
	for k, v := range want {
		if fmt.Sprint(got[k]) != fmt.Sprint(v) {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if len(got) != len(want) {
		t.Errorf("fields %v, want exactly %v", keys(got), keys(want))
	}
	if !regexp.MustCompile(`^[0-9a-f]{24}$`).MatchString(JobJID("epoch1", 42)) {
		t.Errorf("jid %q is not 24 hex digits, as Sidekiq's are", JobJID("epoch1", 42))
	}
	if JobJID("epoch1", 42) == JobJID("epoch2", 42) || JobJID("epoch1", 42) == JobJID("epoch1", 43) {
		t.Error("jids repeat across epochs or jobs")
	}

	// Without a correlation_id (or with one that is not a string) the
	// field is left out.
	j.payload = []byte(`{"model_record_id": 7, "correlation_id": 5}`)
	b, _ = encodeSidekiqJob("epoch1", "default", j, now)
	got = nil
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if _, has := got["correlation_id"]; has {
		t.Errorf("a correlation_id that is not a string reached the job: %s", b)
	}
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func testRedis(t *testing.T) (*redisserver.Server, *redis.Client) {
	t.Helper()
	srv := ts.StartRedis(t, redisserver.Options{})
	c, _, err := OpenRedis(srv.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return srv, c
}

func geoJobs(ids ...int64) []deliveryJob {
	var js []deliveryJob
	for _, id := range ids {
		js = append(js, deliveryJob{id: id, eventID: id + 1000, kind: cursor.KindSync, replicableName: "lfs_object", eventName: "updated",
			payload: []byte(fmt.Sprintf(`{"model_record_id": %d}`, id)), createdAt: time.Now()})
	}
	return js
}

// queued returns the model_record_ids of the jobs on a queue, in the
// order Sidekiq takes them (from the right).
func queued(t *testing.T, c *redis.Client, list string) []int64 {
	t.Helper()
	raw, err := c.LRange(context.Background(), list, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []int64
	for i := len(raw) - 1; i >= 0; i-- {
		var j struct {
			Args []json.RawMessage `json:"args"`
		}
		var p struct {
			ID int64 `json:"model_record_id"`
		}
		if err := json.Unmarshal([]byte(raw[i]), &j); err != nil || len(j.Args) != 3 || json.Unmarshal(j.Args[2], &p) != nil {
			t.Fatalf("queue entry %q is not a Geo::EventWorker job", raw[i])
		}
		out = append(out, p.ID)
	}
	return out
}

func TestPushScriptPushesEachJobOnce(t *testing.T) {
	_, c := testRedis(t)
	ctx := testContext(t)
	s := &SidekiqTarget{Client: c, Queue: "default", Namespace: "resque:gitlab", Name: "test"}
	res, err := s.push(ctx, "e1", geoJobs(1, 2, 3, 4, 5), time.Now())
	if err != nil || res.before != -1 || res.pushed != 5 {
		t.Fatalf("first push: %+v, %v; want 5 pushed onto no watermark", res, err)
	}
	// A retried round overlaps what was pushed: only the new jobs go.
	res, err = s.push(ctx, "e1", geoJobs(3, 4, 5, 6, 7, 8), time.Now())
	if err != nil || res.before != 5 || res.pushed != 3 {
		t.Fatalf("overlapping push: %+v, %v; want 3 pushed above watermark 5", res, err)
	}
	res, err = s.push(ctx, "e1", geoJobs(2, 8), time.Now())
	if err != nil || res.pushed != 0 {
		t.Fatalf("push of delivered jobs: %+v, %v; want none pushed", res, err)
	}
	if got := queued(t, c, "resque:gitlab:queue:default"); fmt.Sprint(got) != "[1 2 3 4 5 6 7 8]" {
		t.Errorf("queue holds %v, want 1..8 once each, first in first out", got)
	}
	if ok, _ := c.SIsMember(ctx, "resque:gitlab:queues", "default").Result(); !ok {
		t.Error("the queue is not in the namespaced queues set, where Sidekiq looks for queues")
	}
	// Another tracking database (epoch) has a watermark of its own.
	res, err = s.push(ctx, "e2", geoJobs(1), time.Now())
	if err != nil || res.before != -1 || res.pushed != 1 {
		t.Fatalf("push of another epoch: %+v, %v; want its own watermark", res, err)
	}
	if n, _ := c.Exists(ctx, "queue:default", "queues").Result(); n != 0 {
		t.Error("keys outside the namespace were written")
	}
}

// deliveryFixture is a tracking database with jobs, a Redis and a Sidekiq
// running GitLab's Geo::EventWorker.
type deliveryFixture struct {
	t        *testing.T
	tracking *cursor.Tracking
	store    *store
	redis    *redisserver.Server
	client   *redis.Client
	sidekiq  *sidekiqserver.Server
	src      *sourceDB
	source   *cursor.Source
	nextID   int64
	events   map[string]int // "replicable/event/model" -> number written
	// keys are the cache keys set before their invalidation was written;
	// invalidations counts them all.
	keys          []string
	invalidations int
	// log is what the fixture's deliverers logged.
	log syncBuffer

	// redisURL and sentinels are how the fixture's deliverers reach Redis
	// ("": redis's URL); minReplicas is their min_replicas.
	redisURL    string
	sentinels   []string
	minReplicas int
}

func newDeliveryFixture(t *testing.T) *deliveryFixture {
	f := &deliveryFixture{t: t, events: map[string]int{}}
	f.tracking = openTestTracking(t)
	pool, name := f.tracking.DB()
	f.store = &store{pool: pool, name: name}
	f.redis, f.client = testRedis(t)
	f.sidekiq = ts.StartSidekiq(t, sidekiqserver.Options{RedisURL: f.redis.URL()})
	f.src = newSourceDB(t)
	f.source = openTestSource(t, f.src.dsn)
	// Delivery begins before the first job, as on a site configured
	// with it from the start.
	if _, _, err := f.store.startDelivery(testContext(t)); err != nil {
		t.Fatal(err)
	}
	return f
}

// write adds n geo events and one cache invalidation to the source, and
// commits them into the tracking database as the loop would.
func (f *deliveryFixture) write(n int) {
	f.t.Helper()
	ctx := testContext(f.t)
	fence, err := f.tracking.Fence(ctx)
	if err != nil {
		f.t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		f.nextID++
		name := []string{"created", "updated", "deleted"}[f.nextID%3]
		f.src.geoEvent(f.nextID, f.nextID, "package_file", name, fmt.Sprintf(`{"model_record_id": %d}`, f.nextID))
		f.events[fmt.Sprintf("package_file/%s/%d", name, f.nextID)]++
	}
	f.nextID++
	key := fmt.Sprintf("projects/%d/readme", f.nextID)
	f.src.cacheInvalidation(f.nextID, f.nextID, key)
	// The key is cached (if Redis is up) before its invalidation commits.
	// A Redis that is failing over must not hold up the writes.
	sctx, cancel := context.WithTimeout(ctx, 250*time.Millisecond)
	if f.client.Set(sctx, "cache:gitlab:"+key, "cached", 0).Err() == nil {
		f.keys = append(f.keys, key)
	}
	cancel()
	f.invalidations++
	events, err := f.source.Fetch(ctx, fence.Position.LastEventID, nil, n+1)
	if err != nil {
		f.t.Fatal(err)
	}
	next, _ := cursor.NextPosition(fence.Position, events, time.Now(), time.Hour, 1000)
	if _, err := commitBatch(ctx, f.tracking, cursor.Batch{Token: fence.Token + 1, Start: fence.Position, Next: next, Events: events}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *deliveryFixture) deliverer(cfg Config) *Deliverer {
	f.t.Helper()
	url := f.redisURL
	if url == "" {
		url = f.redis.URL()
	}
	c, name, err := OpenRedis(url, f.sentinels)
	if err != nil {
		f.t.Fatal(err)
	}
	cfg.Sidekiq = &SidekiqTarget{Client: c, Queue: "default", Name: name, MinReplicas: f.minReplicas}
	c2, name2, _ := OpenRedis(url, f.sentinels)
	cfg.Cache = &CacheTarget{Client: c2, Namespace: "cache:gitlab", Name: name2}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 50 * time.Millisecond
	}
	d := NewDeliverer(cfg, f.tracking, hclog.New(&hclog.LoggerOptions{Output: io.MultiWriter(testWriter{f.t}, &f.log), Level: hclog.Info}))
	f.t.Cleanup(d.Close)
	return d
}

// run runs d until the returned stop is called.
func run(t *testing.T, d *Deliverer) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}

// waitPerformed waits until Sidekiq has performed every event written, and
// checks each was performed once, with GitLab's arguments.
func (f *deliveryFixture) waitPerformed(timeout time.Duration) {
	f.t.Helper()
	want := 0
	for _, n := range f.events {
		want += n
	}
	var got []sidekiqserver.Performed
	ts.WaitFor(f.t, timeout, fmt.Sprintf("%d jobs performed", want), func() (bool, string) {
		var err error
		got, err = f.sidekiq.Performed()
		if err != nil {
			return false, err.Error()
		}
		return len(got) >= want, fmt.Sprintf("%d performed", len(got))
	})
	time.Sleep(200 * time.Millisecond) // a double would land about now
	got, _ = f.sidekiq.Performed()
	seen := map[string]int{}
	jids := map[string]bool{}
	for _, p := range got {
		var payload struct {
			ID int64 `json:"model_record_id"`
		}
		if err := json.Unmarshal(p.Payload, &payload); err != nil {
			f.t.Fatalf("performed a job whose payload is %s", p.Payload)
		}
		seen[fmt.Sprintf("%s/%s/%d", p.ReplicableName, p.EventName, payload.ID)]++
		if jids[p.JID] {
			f.t.Errorf("jid %s performed twice", p.JID)
		}
		jids[p.JID] = true
	}
	for k, n := range f.events {
		if seen[k] != n {
			f.t.Errorf("%s performed %d times, want %d", k, seen[k], n)
		}
	}
	for k := range seen {
		if f.events[k] == 0 {
			f.t.Errorf("%s performed, but no such event was written", k)
		}
	}
}

// Two agents' deliverers deliver the same tracking database while Redis is
// killed (its append-only file synced on every write) and restarted, and
// Sidekiq is stopped and started: every geo event is performed exactly
// once, with GitLab's arguments, and every cache key is deleted.
func TestDeliveryIsExactlyOnceAcrossRedisAndSidekiqRestarts(t *testing.T) {
	f := newDeliveryFixture(t)
	f.write(50)
	d1, d2 := f.deliverer(Config{BatchSize: 7}), f.deliverer(Config{BatchSize: 7})
	stop1, stop2 := run(t, d1), run(t, d2)
	defer stop2()
	f.waitPerformed(30 * time.Second)

	// Sidekiq away: jobs wait in Redis. Redis away: processing goes on
	// into geo_jobs, delivery retries.
	if err := f.sidekiq.Stop(); err != nil {
		t.Fatal(err)
	}
	f.write(40)
	if err := f.redis.Kill(); err != nil {
		t.Fatal(err)
	}
	f.write(40)
	ts.WaitFor(t, 10*time.Second, "the status to show Redis down", func() (bool, string) {
		var st api.Status
		d1.AddStatus(&st)
		return st.Delivery.SidekiqRedis != api.DatabaseOK, st.Delivery.SidekiqRedis
	})
	if err := f.redis.StartAgain(testContext(t)); err != nil {
		t.Fatal(err)
	}
	stop1() // one deliverer goes away mid-run; the other carries on
	f.write(40)
	if err := f.sidekiq.StartAgain(testContext(t)); err != nil {
		t.Fatal(err)
	}
	f.waitPerformed(60 * time.Second)

	ctx := testContext(t)
	if len(f.keys) < 3 {
		t.Fatalf("only %d cache keys were set before their invalidation", len(f.keys))
	}
	for _, k := range f.keys {
		if n, err := f.client.Exists(ctx, "cache:gitlab:"+k).Result(); err != nil || n != 0 {
			t.Errorf("cache key %s still exists (%v)", k, err)
		}
	}
	var st api.Status
	d2.AddStatus(&st)
	ds := st.Delivery
	if ds.Backlog != 0 || ds.SidekiqRedis != api.DatabaseOK || ds.CacheRedis != api.DatabaseOK || ds.LostInRedis != 0 || ds.Delivered != int64(len(f.events)+f.invalidations) {
		t.Errorf("delivery status at the end %+v, want no backlog, both Redis ok, none lost, %d delivered", ds, len(f.events)+f.invalidations)
	}
	var undelivered int64
	if err := f.store.pool.QueryRow(ctx, `SELECT count(*) FROM geo_jobs WHERE delivered_at IS NULL`).Scan(&undelivered); err != nil || undelivered != 0 {
		t.Errorf("%d jobs without delivered_at (%v)", undelivered, err)
	}
}

// An idle deliverer's status follows Redis: it shows Redis down while
// nothing is delivered, and ok again once Redis is back, without waiting
// for a round with jobs (which, with several agents, may go to another).
func TestIdleDelivererStatusFollowsRedis(t *testing.T) {
	f := &deliveryFixture{t: t, events: map[string]int{}}
	f.tracking = openTestTracking(t)
	pool, name := f.tracking.DB()
	f.store = &store{pool: pool, name: name}
	f.redis, f.client = testRedis(t)
	if _, _, err := f.store.startDelivery(testContext(t)); err != nil {
		t.Fatal(err)
	}
	d := f.deliverer(Config{})
	defer run(t, d)()
	redisState := func(want string) func() (bool, string) {
		return func() (bool, string) {
			var st api.Status
			d.AddStatus(&st)
			ds := st.Delivery
			return (ds.SidekiqRedis == api.DatabaseOK) == (want == api.DatabaseOK) &&
					(ds.CacheRedis == api.DatabaseOK) == (want == api.DatabaseOK),
				fmt.Sprintf("sidekiq_redis %q, cache_redis %q", ds.SidekiqRedis, ds.CacheRedis)
		}
	}
	ts.WaitFor(t, 10*time.Second, "both Redis ok while idle", redisState(api.DatabaseOK))
	if err := f.redis.Kill(); err != nil {
		t.Fatal(err)
	}
	ts.WaitFor(t, 10*time.Second, "both Redis shown down while idle", redisState("down"))
	if err := f.redis.StartAgain(testContext(t)); err != nil {
		t.Fatal(err)
	}
	ts.WaitFor(t, 10*time.Second, "both Redis ok again while idle", redisState(api.DatabaseOK))
}

// A deliverer that dies between its push and its record leaves the jobs in
// Redis and the row behind them: the next round finds them pushed, pushes
// nothing twice, and records them.
func TestRoundThatDiedAfterItsPushPushesNothingTwice(t *testing.T) {
	f := newDeliveryFixture(t)
	if err := f.sidekiq.Stop(); err != nil { // keep the queue to count it
		t.Fatal(err)
	}
	f.write(10)
	d := f.deliverer(Config{})
	ctx := testContext(t)
	r, err := f.store.beginRound(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.deliver(ctx, r); err != nil {
		t.Fatal(err)
	}
	r.abort() // died before its commit

	if n, err := d.round(ctx); err != nil || n != 11 {
		t.Fatalf("round after the dead one: %d jobs, %v; want the same 11 read again", n, err)
	}
	if got := queued(t, f.client, "queue:default"); len(got) != 10 {
		t.Errorf("queue holds %d jobs, want the 10 pushed once: %v", len(got), got)
	}
	if n, err := d.round(ctx); err != nil || n != 0 {
		t.Errorf("a round with nothing left read %d jobs (%v)", n, err)
	}
}

// A Redis that comes back without the jobs it acknowledged (no
// persistence) is reported; the jobs are not pushed again, since Sidekiq
// may have run them already.
func TestRedisThatForgotJobsIsReported(t *testing.T) {
	f := newDeliveryFixture(t)
	f.write(5)
	d := f.deliverer(Config{})
	ctx := testContext(t)
	if n, err := d.round(ctx); err != nil || n != 6 {
		t.Fatalf("first round: %d, %v", n, err)
	}
	f.waitPerformed(20 * time.Second)
	// The first push into a Redis with no watermark has lost nothing:
	// nothing had been pushed.
	if strings.Contains(f.log.String(), "lost jobs") {
		t.Errorf("the first round into a fresh Redis reported lost jobs:\n%s", f.log.String())
	}
	if err := f.client.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	f.write(3)
	if _, err := d.round(ctx); err != nil {
		t.Fatal(err)
	}
	f.waitPerformed(20 * time.Second) // the new ones once; the old ones not again
	var st api.Status
	d.AddStatus(&st)
	if st.Delivery.LostInRedis != 5 {
		t.Errorf("delivery status %+v: lost_in_redis %d, want the 5 jobs Redis forgot", st.Delivery, st.Delivery.LostInRedis)
	}
}

// Jobs written before delivery was configured stay in geo_jobs: the first
// deliverer starts after them.
func TestDeliveryStartsAfterTheJobsWrittenBeforeIt(t *testing.T) {
	f := newDeliveryFixture(t)
	if _, err := f.store.pool.Exec(testContext(t), `DELETE FROM geocursor_delivery`); err != nil {
		t.Fatal(err)
	}
	f.write(4)
	before := f.events
	f.events = map[string]int{}
	d := f.deliverer(Config{})
	stop := run(t, d)
	defer stop()
	ts.WaitFor(t, 10*time.Second, "delivery to start", func() (bool, string) {
		var st api.Status
		d.AddStatus(&st)
		return st.Delivery.ReadAt != nil, "not yet"
	})
	f.write(3)
	f.waitPerformed(20 * time.Second)
	for k := range before {
		f.events[k] = 0 // never performed
	}
	f.waitPerformed(time.Second)
}

func TestRateLimitPacesRounds(t *testing.T) {
	cfg := Config{RateLimit: 100}.withDefaults()
	if got := cfg.roundSize(); got != 25 {
		t.Errorf("round size at 100 jobs/s = %d, want a quarter second's worth, 25", got)
	}
	if got := (Config{RateLimit: 0.5}).withDefaults().roundSize(); got != 1 {
		t.Errorf("round size at 0.5 jobs/s = %d, want 1", got)
	}
	if got := (Config{}).withDefaults().roundSize(); got != 1000 {
		t.Errorf("round size without a limit = %d, want the batch size", got)
	}
	// After a round of 25 just now, the next may start 250ms later.
	d := &Deliverer{cfg: cfg}
	now := time.Now()
	d.status.row = deliveryRow{lastPushAt: &now, lastPushJobs: 25}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := d.pace(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("pace returned %v within 100ms of a 25-job round at 100 jobs/s; want it still waiting", err)
	}
}

// eventLogState reads GitLab's event_log_states row (0: none).
func (f *deliveryFixture) eventLogState() int64 {
	f.t.Helper()
	var id int64
	if err := f.store.pool.QueryRow(testContext(f.t), `SELECT COALESCE(max(event_id), 0) FROM event_log_states`).Scan(&id); err != nil {
		f.t.Fatal(err)
	}
	return id
}

// With a delivery block, what GitLab believes was processed
// (event_log_states) follows what is in Sidekiq's Redis: while Redis is
// down, batches commit and the row stays where delivery stopped; once
// Redis is back it reaches the last event. It never moves back.
func TestEventLogStateFollowsDelivery(t *testing.T) {
	f := newDeliveryFixture(t)
	d := f.deliverer(Config{BatchSize: 5})
	stop := run(t, d)
	defer stop()
	f.write(10)
	f.waitPerformed(30 * time.Second)
	ts.WaitFor(t, 10*time.Second, "event_log_states at the last event", func() (bool, string) {
		got := f.eventLogState()
		return got == f.nextID, fmt.Sprintf("event_log_states %d, last event %d", got, f.nextID)
	})
	delivered := f.nextID

	if err := f.redis.Kill(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		f.write(10)
		if got := f.eventLogState(); got != delivered {
			t.Fatalf("event_log_states moved to %d with Redis down; the jobs after %d are not in Redis", got, delivered)
		}
	}
	if err := f.redis.StartAgain(testContext(t)); err != nil {
		t.Fatal(err)
	}
	last := int64(0)
	ts.WaitFor(t, 30*time.Second, "event_log_states at the last event after Redis came back", func() (bool, string) {
		got := f.eventLogState()
		if got < last {
			t.Fatalf("event_log_states went back from %d to %d", last, got)
		}
		last = got
		return got == f.nextID, fmt.Sprintf("event_log_states %d, last event %d", got, f.nextID)
	})
	f.waitPerformed(30 * time.Second)
}

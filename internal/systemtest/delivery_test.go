package systemtest

// Delivery tests: three real agents with a delivery block hand every geo
// event to a real Sidekiq (GitLab's Geo::EventWorker, recording what it
// performs) through a real Redis, and delete every invalidated key in the
// Rails cache, while the test kills lease holders, Redis and Sidekiq. And
// the two ends of the log: where a site with an empty tracking database
// begins, and what it does when the primary pruned events it never saw.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/cursor"
	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/internal/redisserver"
	"github.com/geocursor/geocursor/internal/sidekiqserver"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

func TestDeliveryExactlyOnceUnderKillsAndRedisAndSidekiqRestarts(t *testing.T) {
	clk := newClock(t)
	d := newProcDBs(t, false)
	// One Redis serves Sidekiq (db 0) and the Rails cache (db 1), so that
	// killing it interrupts both kinds of delivery at once. It syncs every
	// write (appendfsync always): a job it acknowledged survives the kill,
	// and delivery must neither lose nor repeat one across it.
	rs := ts.StartRedis(t, redisserver.Options{AppendFsync: "always"})
	sk := ts.StartSidekiq(t, sidekiqserver.Options{RedisURL: rs.URL()})
	cacheURL := "redis://" + rs.Addr() + "/1"
	const cacheNamespace = "cache:gitlab"
	cache := redisClient(t, cacheURL)
	cached := setCacheKeys(t, cache, cacheNamespace)
	clk.Logf("Redis on %s, Sidekiq up, %d cache keys set", rs.Addr(), len(cached))

	// Small batches and fast failover, so that a kill lands in the middle
	// of a backlog; a short gap timeout, so that the safe cursor gets past
	// rolled-back IDs and reaches the head before the test ends.
	c := startProcessing(t, d, procConfig{
		FastTimers: true, BatchSize: 50, GapTimeout: "3s",
		Delivery: &procDelivery{SidekiqRedisURL: rs.URL(), Queue: "default", CacheRedisURL: cacheURL, CacheNamespace: cacheNamespace},
	})
	// The delivery row is created by the first deliverer at the jobs that
	// exist then, and earlier jobs are never delivered: the load must not
	// begin before it.
	waitDelivering(t, c.Agents)
	clk.Logf("three agents up, connected and delivering")

	sampler := startSafeCursorSampler(t, d, 100*time.Millisecond)
	bg := startLoad(t, d, loadgen.Config{
		Writers: 8, Rate: 300,
		RollbackFraction: 0.005, HoldFraction: 0.05, HoldFor: 500 * time.Millisecond,
		CacheInvalidationFraction: 0.05, BadFraction: 0.01, Seed: 11,
	})
	waitCursor(t, c.Agents, 300, 30*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// What the test did when, to read a failure against.
	var timeline []string
	mark := func(what string) {
		timeline = append(timeline, fmt.Sprintf("%s at %.1fs (%s)", what, time.Since(clk.start).Seconds(), time.Now().UTC().Format("15:04:05.000")))
	}

	// A lease holder killed in the middle of a backlog: its last batch may
	// be committed or not, and another takes over from the fence row.
	st, head := holderInBacklog(t, d, c, 1)
	mark("holder " + *st.Lease.Holder + " killed")
	killHolder(t, clk, c, st, head, 1, false)

	// Sidekiq stops for a few seconds under load: jobs pile up on its
	// queue, and it takes them when it comes back. Meanwhile Redis dies
	// with deliveries in flight (a bulk load's jobs going out) and comes
	// back from its append-only file: a push whose answer died with it is
	// retried, and must not push its jobs again. Sidekiq is stopped across
	// the kill because its own fetch is at most once: a BRPOP that Redis
	// ran and logged just before the kill takes the job off the queue, and
	// the answer that carried it dies with the connection (seen here: the
	// two jobs two processor threads had just fetched were never
	// performed). GitLab runs a reliable fetch for that; this harness's
	// Sidekiq does not, and that loss is not delivery's to check.
	mark("Sidekiq stopping")
	if err := sk.Stop(); err != nil {
		t.Fatal(err)
	}
	mark("Sidekiq stopped")
	stoppedAt := time.Now()
	before := queueLength(t, rs)
	if err := loadgen.BulkLoad(ctx, d.Source, 2000, 101); err != nil {
		t.Fatalf("bulk load: %v", err)
	}
	time.Sleep(300 * time.Millisecond) // processing and delivery under way
	mark("Redis killed")
	if err := rs.Kill(); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	down := waitDeliveryError(c.Live(), 5*time.Second)
	time.Sleep(time.Until(killedAt.Add(time.Second)))
	if err := rs.StartAgain(ctx); err != nil {
		t.Fatalf("start Redis again: %v", err)
	}
	mark("Redis up again")
	clk.Logf("Redis killed and started again after %s; status meanwhile: %s", time.Since(killedAt).Round(time.Millisecond), down)
	if down == "" {
		t.Errorf("no agent's status showed Redis failing while it was down")
	}
	time.Sleep(2 * time.Second)
	after := queueLength(t, rs)
	if err := sk.StartAgain(ctx); err != nil {
		t.Fatalf("start Sidekiq again: %v", err)
	}
	mark("Sidekiq up again")
	clk.Logf("Sidekiq stopped for %s: its queue went from %d to %d jobs meanwhile", time.Since(stoppedAt).Round(100*time.Millisecond), before, after)
	if after <= before {
		t.Errorf("Sidekiq's queue did not grow (%d, then %d jobs) while Sidekiq was stopped under load: was anything delivered meanwhile?", before, after)
	}

	st, head = holderInBacklog(t, d, c, 2)
	mark("holder " + *st.Lease.Holder + " killed")
	killHolder(t, clk, c, st, head, 2, false)

	stats := bg.stop(t)
	clk.Logf("load: %d events committed (%d rolled back, %d held, %d cache invalidations, %d bad) besides the bulk loads",
		stats.Committed, stats.RolledBack, stats.Held, stats.CacheInvalidations, stats.Bad)
	clk.Logf("checking the outcome")
	checkOutcome(t, d, c)
	clk.Logf("processing outcome checked")

	want := readSourceGeoEvents(t, d)
	head = sourceHead(t, d)
	jobs := queryInt(t, d.Tracking, `SELECT count(*) FROM geo_jobs`)
	// The safe cursor reaches the head once the rolled-back IDs are given
	// up (gap_timeout); delivery is done when every agent sees no backlog,
	// the queue is empty and Sidekiq has performed as many jobs as there
	// are geo events to deliver. A job that never comes is not waited for
	// long: once nothing is left to deliver and Sidekiq has performed
	// nothing new for 5s, the comparison below tells what is missing.
	var (
		performed []sidekiqserver.Performed
		lastCount = -1
		changedAt time.Time
	)
	done, detail := ts.Poll(60*time.Second, 200*time.Millisecond, func() (bool, string) {
		if s := queryInt(t, d.Tracking, `SELECT coalesce(max(event_id), 0) FROM event_log_states`); s != head {
			return false, fmt.Sprintf("event_log_states.event_id %d, source head %d", s, head)
		}
		for _, a := range c.Live() {
			st, err := statusOf(a)
			if err != nil {
				return false, err.Error()
			}
			if dl := st.Delivery; dl == nil || dl.Backlog != 0 || dl.Delivered != jobs {
				return false, fmt.Sprintf("%s: delivery %s, %d jobs in geo_jobs", a.ID, deliveryString(st.Delivery), jobs)
			}
		}
		if n := queueLength(t, rs); n != 0 {
			return false, fmt.Sprintf("%d jobs on Sidekiq's queue", n)
		}
		var err error
		if performed, err = sk.Performed(); err != nil {
			return false, err.Error()
		}
		if len(performed) != lastCount {
			lastCount, changedAt = len(performed), time.Now()
		}
		return len(performed) >= want.deliverable || time.Since(changedAt) > 5*time.Second,
			fmt.Sprintf("Sidekiq performed %d of %d jobs", len(performed), want.deliverable)
	})
	if !done {
		t.Errorf("delivery did not finish within 60s after processing caught up: %s", detail)
	}
	// A job delivered twice would be performed a moment later.
	time.Sleep(500 * time.Millisecond)
	performed, err := sk.Performed()
	if err != nil {
		t.Fatal(err)
	}
	sampled := sampler.stop()
	clk.Logf("delivery done: Sidekiq performed %d jobs for %d geo events to deliver (and %d dead letters, not to be), %d jobs in geo_jobs",
		len(performed), want.deliverable, want.deadLetters, jobs)

	if msg := performedMismatch(want, performed); msg != "" {
		t.Errorf("Sidekiq did not perform each geo event exactly once with GitLab's arguments: %s\nthe events in question: %s\ntimeline: %s",
			msg, whereJobsWent(t, d, want, performed, clk), strings.Join(timeline, "; "))
	}
	if msg := cacheMismatch(t, d, cache, cacheNamespace, cached); msg != "" {
		t.Errorf("%s", msg)
	}
	// An agent that has not delivered since Redis came back learns it
	// from its idle PING, once a second.
	for _, a := range c.Live() {
		ok, detail := ts.Poll(5*time.Second, 100*time.Millisecond, func() (bool, string) {
			st, err := statusOf(a)
			if err != nil {
				return false, err.Error()
			}
			dl := st.Delivery
			return dl != nil && dl.LostInRedis == 0 && dl.SidekiqRedis == api.DatabaseOK && dl.CacheRedis == api.DatabaseOK, deliveryString(dl)
		})
		if !ok {
			t.Errorf("%s: delivery %s, want lost_in_redis 0 and both Redis ok (Redis ran with appendfsync always)", a.ID, detail)
		}
	}
	checkSafeCursorSamples(t, clk, d, sampled, head)
}

// whereJobsWent follows each deliverable geo event to Sidekiq by its job
// ID, which the deliverer derives from the tracking database's epoch and
// the geo_jobs ID (cursor's jid), and lists those not performed exactly
// once, with when their jobs went out. It leans on that derivation, so it
// only explains a failure that performedMismatch found on its own.
func whereJobsWent(t *testing.T, d *procDBs, want sourceGeoEvents, performed []sidekiqserver.Performed, clk *testClock) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	deliverable := map[int64]bool{}
	for _, ids := range want.byArgs {
		for _, id := range ids {
			deliverable[id] = true
		}
	}
	perf := map[string][]sidekiqserver.Performed{}
	for _, p := range performed {
		perf[p.JID] = append(perf[p.JID], p)
	}
	var epoch string
	if err := d.Tracking.QueryRow(ctx, `SELECT epoch FROM geocursor_delivery WHERE id = 1`).Scan(&epoch); err != nil {
		return "read the delivery epoch: " + err.Error()
	}
	rows, err := d.Tracking.Query(ctx, `SELECT id, event_id, delivered_at FROM geo_jobs ORDER BY id`)
	if err != nil {
		return "read geo_jobs: " + err.Error()
	}
	defer rows.Close()
	var out []string
	matched := 0
	for rows.Next() {
		var (
			id, eventID int64
			at          *time.Time
		)
		if err := rows.Scan(&id, &eventID, &at); err != nil {
			return "read geo_jobs: " + err.Error()
		}
		if !deliverable[eventID] {
			continue
		}
		sum := sha256.Sum256([]byte(epoch + ":" + strconv.FormatInt(id, 10)))
		jid := hex.EncodeToString(sum[:12])
		ps := perf[jid]
		if len(ps) == 1 {
			matched++
			continue
		}
		delivered := "never"
		if at != nil {
			delivered = fmt.Sprintf("%.1fs (%s)", at.Sub(clk.start).Seconds(), at.UTC().Format("15:04:05.000"))
		}
		var when []string
		for _, p := range ps {
			pt := time.Unix(0, int64(p.PerformedAt*1e9))
			when = append(when, fmt.Sprintf("%.1fs", pt.Sub(clk.start).Seconds()))
		}
		out = append(out, fmt.Sprintf("event %d (job %d, jid %s): delivered %s, performed %d times %v", eventID, id, jid, delivered, len(ps), when))
	}
	if matched == 0 {
		return "no performed job ID matches cursor's derivation of it: this explanation needs updating"
	}
	return strings.Join(out, "; ")
}

// loadgenReplicables are the replicable names loadgen writes (its
// replicableWeights), and loadgenBulkReplicable the one BulkLoad's cache
// keys use: with model_record_id 1..loadgen.DefaultRecords they span every
// cache key the load can invalidate. cacheMismatch fails if one was
// missed, rather than pass on a key the test never set.
var loadgenReplicables = []string{"project_repository", "lfs_object", "package_file", "upload", "job_artifact", "snippet_repository"}

const loadgenBulkReplicable = "bulk"

func redisClient(t *testing.T, url string) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// setCacheKeys sets, in the cache Redis, every namespaced key the load
// can invalidate, and returns them without the namespace.
func setCacheKeys(t *testing.T, c *redis.Client, namespace string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var keys []string
	for _, r := range append([]string{loadgenBulkReplicable}, loadgenReplicables...) {
		for id := 1; id <= loadgen.DefaultRecords; id++ {
			keys = append(keys, fmt.Sprintf("geo:%s:%d", r, id))
		}
	}
	if _, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Set(ctx, namespace+":"+k, "cached", 0)
		}
		return nil
	}); err != nil {
		t.Fatalf("set %d cache keys: %v", len(keys), err)
	}
	return keys
}

// waitDelivering waits until every agent's deliverer has read the
// delivery row and reaches both Redis.
func waitDelivering(t *testing.T, agents []*ts.Agent) {
	t.Helper()
	ts.WaitFor(t, 30*time.Second, "every agent to deliver", func() (bool, string) {
		for _, a := range agents {
			st, err := statusOf(a)
			if err != nil {
				return false, err.Error()
			}
			if dl := st.Delivery; dl == nil || dl.ReadAt == nil || dl.SidekiqRedis != api.DatabaseOK || dl.CacheRedis != api.DatabaseOK {
				return false, fmt.Sprintf("%s: delivery %s", a.ID, deliveryString(dl))
			}
		}
		return true, ""
	})
}

// waitDeliveryError waits up to timeout for an agent's status to show a
// Redis failing, and returns what it showed ("" for none).
func waitDeliveryError(agents []*ts.Agent, timeout time.Duration) string {
	var seen string
	ts.Poll(timeout, 50*time.Millisecond, func() (bool, string) {
		for _, a := range agents {
			st, err := statusOf(a)
			if err != nil || st.Delivery == nil {
				continue
			}
			if dl := st.Delivery; dl.SidekiqRedis != api.DatabaseOK || dl.CacheRedis != api.DatabaseOK {
				seen = fmt.Sprintf("%s: sidekiq_redis %q, cache_redis %q", a.ID, dl.SidekiqRedis, dl.CacheRedis)
				return true, ""
			}
		}
		return false, ""
	})
	return seen
}

func deliveryString(dl *api.Delivery) string {
	if dl == nil {
		return "absent"
	}
	return fmt.Sprintf("{backlog %d, last_job_id %d, delivered %d, lost_in_redis %d, sidekiq_redis %q, cache_redis %q, tracking_error %q}",
		dl.Backlog, dl.LastJobID, dl.Delivered, dl.LostInRedis, dl.SidekiqRedis, dl.CacheRedis, dl.TrackingError)
}

// queueLength is the number of jobs waiting on Sidekiq's default queue.
func queueLength(t *testing.T, rs *redisserver.Server) int64 {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := c.LLen(ctx, "queue:default").Result()
	if err != nil {
		t.Fatalf("LLEN queue:default: %v", err)
	}
	return n
}

// sourceGeoEvents are the committed geo events of the source, by what
// Geo::EventWorker is called with.
type sourceGeoEvents struct {
	// byArgs maps the arguments (argsKey) to the IDs of the events with
	// them, for the events that must be delivered.
	byArgs map[string][]int64
	// deadArgs are the arguments of the events that are dead letters
	// (a payload without an integer model_record_id), never delivered.
	deadArgs    map[string][]int64
	deliverable int
	deadLetters int
}

func readSourceGeoEvents(t *testing.T, d *procDBs) sourceGeoEvents {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := d.Source.Query(ctx, `
SELECT l.id, e.replicable_name, e.event_name, e.payload::text
FROM geo_event_log l JOIN geo_events e ON e.id = l.geo_event_id
ORDER BY l.id`)
	if err != nil {
		t.Fatalf("read the source's geo events: %v", err)
	}
	out := sourceGeoEvents{byArgs: map[string][]int64{}, deadArgs: map[string][]int64{}}
	for rows.Next() {
		var (
			id                int64
			name, ev, payload string
		)
		if err := rows.Scan(&id, &name, &ev, &payload); err != nil {
			t.Fatalf("read the source's geo events: %v", err)
		}
		k := argsKey(name, ev, []byte(payload))
		if _, ok := validModelRecordID(payload); !ok {
			out.deadArgs[k] = append(out.deadArgs[k], id)
			out.deadLetters++
			continue
		}
		out.byArgs[k] = append(out.byArgs[k], id)
		out.deliverable++
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read the source's geo events: %v", err)
	}
	return out
}

// argsKey is Geo::EventWorker's arguments as one string, the payload in a
// canonical JSON form (keys sorted, no spaces), so that the payload the
// source's jsonb prints and the one Ruby received compare as JSON.
func argsKey(replicable, event string, payload []byte) string {
	var v any
	canon := string(payload)
	if json.Unmarshal(payload, &v) == nil {
		if b, err := json.Marshal(v); err == nil {
			canon = string(b)
		}
	}
	return replicable + " " + event + " " + canon
}

// performedMismatch compares what Sidekiq performed with the source: each
// deliverable geo event performed once (as many jobs with its arguments as
// events, and no job ID performed twice), no dead letter performed, no job
// the source has no event for, each from the configured queue. "" if so.
func performedMismatch(want sourceGeoEvents, performed []sidekiqserver.Performed) string {
	got := map[string]int{}
	jids := map[string]int{}
	var wrongQueue []string
	for _, p := range performed {
		got[argsKey(p.ReplicableName, p.EventName, p.Payload)]++
		jids[p.JID]++
		if p.Queue != "default" {
			wrongQueue = append(wrongQueue, fmt.Sprintf("%s from %q", p.JID, p.Queue))
		}
	}
	var missing, extra, dead, twice []string
	for k, ids := range want.byArgs {
		switch n := got[k]; {
		case n < len(ids):
			missing = append(missing, fmt.Sprintf("%s: %d performed for events %v", k, n, ids))
		case n > len(ids):
			extra = append(extra, fmt.Sprintf("%s: %d performed for events %v", k, n, ids))
		}
	}
	for k, n := range got {
		if _, ok := want.byArgs[k]; ok {
			continue
		}
		if ids, ok := want.deadArgs[k]; ok {
			dead = append(dead, fmt.Sprintf("%s: performed %d times, dead letters %v", k, n, examples(ids)))
		} else {
			extra = append(extra, fmt.Sprintf("%s: performed %d times, no such event in the source", k, n))
		}
	}
	for jid, n := range jids {
		if n > 1 {
			twice = append(twice, fmt.Sprintf("jid %s performed %d times", jid, n))
		}
	}
	if len(missing)+len(extra)+len(dead)+len(twice)+len(wrongQueue) == 0 {
		return ""
	}
	return fmt.Sprintf("%d jobs performed for %d events: %d argument sets performed fewer times than the source has events %s; "+
		"%d more often or not in the source %s; %d dead letters delivered %s; %d job IDs performed more than once %s; %d from another queue %s",
		len(performed), want.deliverable, len(missing), someOf(missing), len(extra), someOf(extra), len(dead), someOf(dead),
		len(twice), someOf(twice), len(wrongQueue), someOf(wrongQueue))
}

// cacheMismatch checks the cache against the source's committed cache
// invalidations: every invalidated key deleted, every other key the test
// set still there (a delivery that deleted the wrong keys, flushed the
// cache or lost its data fails). "" if so.
func cacheMismatch(t *testing.T, d *procDBs, c *redis.Client, namespace string, set []string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rows, err := d.Source.Query(ctx, `
SELECT DISTINCT c.key FROM geo_event_log l JOIN geo_cache_invalidation_events c ON c.id = l.cache_invalidation_event_id`)
	if err != nil {
		t.Fatalf("read the source's cache invalidations: %v", err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("read the source's cache invalidations: %v", err)
	}
	invalidated := map[string]bool{}
	for _, k := range keys {
		invalidated[k] = true
	}
	var notSet, kept, gone []string
	wasSet := map[string]bool{}
	for _, k := range set {
		wasSet[k] = true
	}
	for k := range invalidated {
		if !wasSet[k] {
			notSet = append(notSet, k)
		}
	}
	vals, err := c.MGet(ctx, namespaced(namespace, set)...).Result()
	if err != nil {
		t.Fatalf("read %d cache keys: %v", len(set), err)
	}
	for i, k := range set {
		switch present := vals[i] != nil; {
		case invalidated[k] && present:
			kept = append(kept, k)
		case !invalidated[k] && !present:
			gone = append(gone, k)
		}
	}
	if len(notSet)+len(kept)+len(gone) == 0 {
		if len(invalidated) == 0 {
			return "the load committed no cache invalidation: nothing was checked"
		}
		t.Logf("cache: the %d keys invalidated are gone, the other %d of the %d set remain", len(invalidated), len(set)-len(invalidated), len(set))
		return ""
	}
	return fmt.Sprintf("cache (namespace %q, %d keys set, %d invalidated): %d invalidated keys are still there %s; "+
		"%d keys that nothing invalidated are gone %s; %d invalidated keys the test never set (update loadgenReplicables) %s",
		namespace, len(set), len(invalidated), len(kept), someOf(kept), len(gone), someOf(gone), len(notSet), someOf(notSet))
}

func namespaced(namespace string, keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = namespace + ":" + k
	}
	return out
}

// safeSample is one reading of the tracking database, all of it from one
// statement's snapshot.
type safeSample struct {
	at time.Duration // since the sampler started
	// dbTime is the statement's start by the tracking database's clock.
	dbTime time.Time
	// safe is event_log_states.event_id, rows the table's row count.
	safe, rows int64
	// last and gaps are the fence row's position.
	last     int64
	gaps     string
	openGaps int
	// processed counts the event IDs at or below safe in geo_jobs and
	// geo_dead_letters.
	processed int64
}

// safeCursorSampler reads event_log_states and what is processed below it
// every interval until stopped.
type safeCursorSampler struct {
	stopOnce sync.Once
	cancel   context.CancelFunc
	done     chan struct{}
	samples  []safeSample
	errs     int
	lastErr  error
}

func startSafeCursorSampler(t *testing.T, d *procDBs, interval time.Duration) *safeCursorSampler {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &safeCursorSampler{cancel: cancel, done: make(chan struct{})}
	start := time.Now()
	go func() {
		defer close(s.done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
			var x safeSample
			// One statement, one snapshot: the safe cursor and the count of
			// what is processed below it are of the same moment.
			err := d.Tracking.QueryRow(qctx, `
WITH s AS (SELECT max(event_id) AS id, count(*) AS n FROM event_log_states)
SELECT now(), s.id, s.n, f.last_event_id, `+cursor.FenceGapsSQL+`, f.gaps_count,
       (SELECT count(*) FROM geo_jobs WHERE event_id <= s.id) + (SELECT count(*) FROM geo_dead_letters WHERE event_id <= s.id)
FROM s, geocursor_fence f WHERE f.id = 1 AND s.id IS NOT NULL`).
				Scan(&x.dbTime, &x.safe, &x.rows, &x.last, &x.gaps, &x.openGaps, &x.processed)
			qcancel()
			switch {
			case err == nil:
				x.at = time.Since(start)
				s.samples = append(s.samples, x)
			case err == pgx.ErrNoRows || ctx.Err() != nil:
			default:
				s.errs++
				s.lastErr = err
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { s.stop() })
	return s
}

func (s *safeCursorSampler) stop() *safeCursorSampler {
	s.stopOnce.Do(func() {
		s.cancel()
		<-s.done
	})
	return s
}

// checkSafeCursorSamples checks each sample against the events the source
// finally committed: every committed event at or below the sample's safe
// cursor was processed when the sample was taken (a held transaction's
// event that committed later, below the safe cursor, would be missing from
// the sample's count: the safe cursor ran ahead of an open gap, and GitLab
// would have let the primary prune it). And the safe cursor ends at head.
func checkSafeCursorSamples(t *testing.T, clk *testClock, d *procDBs, s *safeCursorSampler, head int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ids, err := readSourceIDs(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	committed := make(map[int64]bool, len(ids))
	for _, id := range ids {
		committed[id] = true
	}
	// atOrBelow is the number of committed IDs <= x; ids is sorted.
	atOrBelow := func(x int64) int64 {
		return int64(sort.Search(len(ids), func(i int) bool { return ids[i] > x }))
	}
	var (
		ahead, backwards, rowCount   []string
		behind, heldOpen, heldLowest int
		maxLag, prev                 int64
	)
	for _, x := range s.samples {
		want := atOrBelow(x.safe)
		var gaps []struct {
			ID int64 `json:"id"`
		}
		if err := json.Unmarshal([]byte(x.gaps), &gaps); err != nil {
			t.Fatalf("the fence row's gaps %s: %v", x.gaps, err)
		}
		if x.processed != want {
			// Which events were not yet processed is not in the sample;
			// the jobs written after it at or below its safe cursor are
			// the likely ones.
			var open []int64
			for _, g := range gaps {
				open = append(open, g.ID)
			}
			later := laterJobs(ctx, d, x.safe, x.dbTime)
			ahead = append(ahead, fmt.Sprintf("at %5.1fs event_log_states.event_id %d (fence last_event_id %d, open gaps %s): %d events at or below it processed, %d committed; processed later %s",
				x.at.Seconds(), x.safe, x.last, firstIDs(open), x.processed, want, firstIDs(later)))
		}
		if x.rows != 1 {
			rowCount = append(rowCount, fmt.Sprintf("at %5.1fs: %d rows", x.at.Seconds(), x.rows))
		}
		if x.safe < prev {
			backwards = append(backwards, fmt.Sprintf("at %5.1fs from %d to %d", x.at.Seconds(), prev, x.safe))
		}
		prev = max(prev, x.safe)
		if x.safe < x.last {
			behind++
			maxLag = max(maxLag, x.last-x.safe)
		}
		// An open gap whose ID committed in the end was a transaction
		// still open at the sample: a safe cursor that ignored it would
		// have shown here. The lowest open gap is safe+1.
		for _, g := range gaps {
			if committed[g.ID] {
				heldOpen++
				break
			}
		}
		if x.safe < x.last && committed[x.safe+1] {
			heldLowest++
		}
	}
	clk.Logf("safe cursor: %d samples (%d failed reads, last error %v); %d with event_log_states.event_id below the fence's last_event_id "+
		"(by up to %d IDs); %d with a transaction open below the fence's position (an open gap that committed later), "+
		"%d of them with the safe cursor right below it (the others held back by a rolled-back ID below it)",
		len(s.samples), s.errs, s.lastErr, behind, maxLag, heldOpen, heldLowest)
	if len(s.samples) < 50 {
		t.Errorf("only %d samples of the safe cursor: too few to tell anything", len(s.samples))
	}
	if heldOpen == 0 {
		t.Errorf("no sample saw a transaction still open below the cursor: the check of the safe cursor proved little")
	}
	if len(ahead) > 0 {
		t.Errorf("the safe cursor ran ahead of events not yet processed in %d of %d samples: %s", len(ahead), len(s.samples), someOf(ahead))
	}
	if len(backwards) > 0 {
		t.Errorf("event_log_states.event_id went backwards %d times: %s", len(backwards), someOf(backwards))
	}
	if len(rowCount) > 0 {
		t.Errorf("event_log_states did not have exactly one row in %d samples: %s", len(rowCount), someOf(rowCount))
	}
	if got := queryInt(t, d.Tracking, `SELECT coalesce(max(event_id), 0) FROM event_log_states`); got != head {
		t.Errorf("event_log_states.event_id %d at the end, want the source head %d (every event processed)", got, head)
	}
}

// firstIDs shows up to 10 IDs.
func firstIDs(ids []int64) string {
	s := fmt.Sprint(ids[:min(len(ids), 10)])
	if len(ids) > 10 {
		s = strings.TrimSuffix(s, "]") + " ...]"
	}
	return s
}

// laterJobs returns up to 10 event IDs at or below id that were written
// to the tracking database after at.
func laterJobs(ctx context.Context, d *procDBs, id int64, at time.Time) []int64 {
	rows, err := d.Tracking.Query(ctx, `
SELECT event_id FROM (SELECT event_id, created_at FROM geo_jobs UNION ALL SELECT event_id, created_at FROM geo_dead_letters) j
WHERE event_id <= $1 AND created_at >= $2 ORDER BY event_id LIMIT 10`, id, at)
	if err != nil {
		return nil
	}
	out, _ := pgx.CollectRows(rows, pgx.RowTo[int64])
	return out
}

func TestSourceStartHeadSkipsTheOldLog(t *testing.T) {
	clk := newClock(t)
	d := newProcDBs(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A primary with a log already: a site set up now begins after it, as
	// GitLab's own cursor does, and leaves the old events to backfill.
	if err := loadgen.BulkLoad(ctx, d.Source, 500, 21); err != nil {
		t.Fatalf("bulk load: %v", err)
	}
	old := sourceHead(t, d)
	c := startProcessing(t, d, procConfig{FastTimers: true, Start: "head"})
	st := waitCursor(t, c.Agents, old, 30*time.Second)
	clk.Logf("three agents up; cursor placed at %d with an old log of %d events", st.Cursor.LastEventID, old)
	if st.Cursor.LastEventID != old {
		t.Fatalf("cursor at %d, want the old log's head %d", st.Cursor.LastEventID, old)
	}
	placed := 0
	for _, a := range c.Agents {
		placed += strings.Count(a.Log(), "processing begins after the newest event")
	}
	if placed != 1 {
		t.Errorf("%d agents logged that processing begins after the newest event, want 1", placed)
	}

	// New events, concurrent and some held open, so that the first ones
	// after the head can commit out of order. No rolled-back ones: the
	// safe cursor would stay below them for the gap timeout (an hour).
	bg := startLoad(t, d, loadgen.Config{
		Writers: 4, Total: 1000, HoldFraction: 0.05, HoldFor: 200 * time.Millisecond,
		CacheInvalidationFraction: 0.05, BadFraction: 0.02, Seed: 22,
	})
	stats := bg.wait(t, time.Minute)
	head := sourceHead(t, d)
	clk.Logf("load: %d events committed (%d held), IDs %d..%d", stats.Committed, stats.Held, stats.FirstID, stats.LastID)

	ts.WaitFor(t, 30*time.Second, "the new events to be processed", func() (bool, string) {
		f, err := readFence(ctx, d)
		if err != nil {
			return false, err.Error()
		}
		n := queryInt(t, d.Tracking, `SELECT (SELECT count(*) FROM geo_jobs) + (SELECT count(*) FROM geo_dead_letters)`)
		s := queryInt(t, d.Tracking, `SELECT coalesce(max(event_id), 0) FROM event_log_states`)
		return f.LastEventID == head && n >= stats.Committed && s == head,
			fmt.Sprintf("fence at %d, event_log_states at %d, source head %d; %d jobs and dead letters for %d new events", f.LastEventID, s, head, n, stats.Committed)
	})
	clk.Logf("caught up with the head %d", head)

	src, err := readSourceIDs(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := readTracked(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	var oldSeen, missing, doubled, unknown []int64
	inSource := map[int64]bool{}
	for _, id := range src {
		inSource[id] = true
		n := tr.jobs[id] + tr.deadLetters[id]
		switch {
		case id <= old && n > 0:
			oldSeen = append(oldSeen, id)
		case id > old && n == 0:
			missing = append(missing, id)
		case n > 1:
			doubled = append(doubled, id)
		}
	}
	for _, m := range []map[int64]int{tr.jobs, tr.deadLetters} {
		for id := range m {
			if !inSource[id] {
				unknown = append(unknown, id)
			}
		}
	}
	if len(oldSeen)+len(missing)+len(doubled)+len(unknown) > 0 {
		t.Errorf("with start = head after an old log of %d events: %d old events processed %s; of %d new ones %d missing %s, %d more than once %s; %d unknown event IDs %s",
			old, len(oldSeen), examples(oldSeen), stats.Committed, len(missing), examples(missing), len(doubled), examplesWith(doubled, tr), len(unknown), examples(unknown))
	}
}

func TestPrunedLogIsReported(t *testing.T) {
	clk := newClock(t)
	d := newProcDBs(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The pruned IDs fit in the gap set, so they are open gaps first (they
	// might be in flight) and given up as pruned after gap_timeout.
	c := startProcessing(t, d, procConfig{FastTimers: true, GapTimeout: "2s"})
	if err := loadgen.BulkLoad(ctx, d.Source, 300, 31); err != nil {
		t.Fatalf("bulk load: %v", err)
	}
	seen := sourceHead(t, d)
	waitCursor(t, c.Agents, seen, 30*time.Second)
	clk.Logf("processed events 1..%d", seen)

	// The site is down while the primary goes on writing and
	// Geo::PruneEventLogWorker deletes the log below an ID past this
	// site's cursor: the events between the cursor and that ID are gone
	// before this site saw them.
	for _, a := range c.Agents {
		a.Stop(t)
	}
	if err := loadgen.BulkLoad(ctx, d.Source, 400, 32); err != nil {
		t.Fatalf("bulk load: %v", err)
	}
	head := sourceHead(t, d)
	pruneBelow := seen + 201
	if _, err := d.Source.Exec(ctx, `
WITH gone AS (DELETE FROM geo_event_log WHERE id < $1 RETURNING geo_event_id, cache_invalidation_event_id),
     e AS (DELETE FROM geo_events WHERE id IN (SELECT geo_event_id FROM gone))
DELETE FROM geo_cache_invalidation_events WHERE id IN (SELECT cache_invalidation_event_id FROM gone)`, pruneBelow); err != nil {
		t.Fatalf("prune the log: %v", err)
	}
	unseenFirst, unseenLast := seen+1, pruneBelow-1
	clk.Logf("agents stopped; events %d..%d written, the log pruned below %d: %d..%d never seen", seen+1, head, pruneBelow, unseenFirst, unseenLast)

	offsets := map[string]int64{}
	for _, a := range c.Agents {
		offsets[a.ID] = logSize(t, a)
		a.Restart(t)
	}
	c.WaitFormed(t, 30*time.Second)
	st := waitCursor(t, c.Agents, head, 30*time.Second)
	clk.Logf("agents restarted; cursor at %d", st.Cursor.LastEventID)

	want := uint64(unseenLast - unseenFirst + 1)
	ts.WaitFor(t, 10*time.Second, "every agent's status to count the pruned events", func() (bool, string) {
		for _, a := range c.Agents {
			st, err := statusOf(a)
			if err != nil {
				return false, err.Error()
			}
			if st.Stats.EventsPrunedUnseen != want {
				return false, fmt.Sprintf("%s: stats.events_pruned_unseen %d, want %d", a.ID, st.Stats.EventsPrunedUnseen, want)
			}
		}
		return true, ""
	})

	// Said once, by whichever agent moved the cursor past them, with the
	// range.
	const msg = "the primary pruned events from its log before this site processed them"
	var said []string
	for _, a := range c.Agents {
		for _, line := range logSince(a, offsets[a.ID]) {
			if strings.Contains(line, msg) {
				said = append(said, a.ID+": "+line)
			}
		}
	}
	if len(said) != 1 {
		t.Fatalf("%d log lines say %q, want 1: %q", len(said), msg, said)
	}
	line := said[0][strings.Index(said[0], ": ")+2:]
	var fields struct {
		FirstID int64 `json:"first_id"`
		LastID  int64 `json:"last_id"`
		Count   int64 `json:"count"`
	}
	if err := json.Unmarshal([]byte(line), &fields); err != nil {
		t.Fatalf("the log line is not JSON: %v\n%s", err, said[0])
	}
	if fields.FirstID != unseenFirst || fields.LastID != unseenLast || uint64(fields.Count) != want {
		t.Errorf("logged first_id %d last_id %d count %d, want %d..%d, %d: %s", fields.FirstID, fields.LastID, fields.Count, unseenFirst, unseenLast, want, said[0])
	}
	clk.Logf("logged once: %s", said[0])

	// What the source still has after the cursor is processed, once each;
	// what it pruned is not, and the safe cursor is at the head.
	tr, err := readTracked(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	var wrong []string
	for id := int64(1); id <= head; id++ {
		n := tr.jobs[id] + tr.deadLetters[id]
		if w := map[bool]int{true: 0, false: 1}[id >= unseenFirst && id <= unseenLast]; n != w {
			wrong = append(wrong, fmt.Sprintf("event %d: %d jobs and dead letters, want %d", id, n, w))
		}
	}
	if len(wrong) > 0 {
		t.Errorf("%d events processed wrongly: %s", len(wrong), someOf(wrong))
	}
	if s := queryInt(t, d.Tracking, `SELECT coalesce(max(event_id), 0) FROM event_log_states`); s != head {
		t.Errorf("event_log_states.event_id %d, want the head %d", s, head)
	}
}

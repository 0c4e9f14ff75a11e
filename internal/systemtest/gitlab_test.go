package systemtest

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/delivery"
	"github.com/geocursor/geocursor/gitlab"
	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/internal/redisserver"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

// The seams with a real GitLab site (design section 13): GitLab's cursor
// lease, its gap set, the site's role, and what GitLab believes was
// processed, each checked against real agents, a real Redis and
// PostgreSQL.

// gitlabSite is a site's Redis (Sidekiq in db 0, the Rails cache in db 1,
// the shared state in db 2, as one small GitLab runs them) and three agents
// with a gitlab and a delivery block.
type gitlabSite struct {
	d                     *procDBs
	redis                 *redisserver.Server
	sidekiq, cache, state *redis.Client
	c                     *ts.Cluster
}

func startGitLabSite(t *testing.T, gapTimeout string, before func(s *gitlabSite)) *gitlabSite {
	t.Helper()
	s := &gitlabSite{d: newProcDBs(t, false)}
	s.redis = ts.StartRedis(t, redisserver.Options{AppendFsync: "always"})
	s.sidekiq = redisClient(t, s.redis.URL())
	s.cache = redisClient(t, "redis://"+s.redis.Addr()+"/1")
	stateURL := "redis://" + s.redis.Addr() + "/2"
	s.state = redisClient(t, stateURL)
	if before != nil {
		before(s)
	}
	s.c = startProcessing(t, s.d, procConfig{
		FastTimers: true, BatchSize: 100, GapTimeout: gapTimeout, SharedStateRedisURL: stateURL,
		Delivery: &procDelivery{SidekiqRedisURL: s.redis.URL(), CacheRedisURL: "redis://" + s.redis.Addr() + "/1"},
	})
	return s
}

// jobsFor counts geo_jobs rows per event ID.
func (s *gitlabSite) jobsFor(t *testing.T, ids ...int64) map[int64]int64 {
	t.Helper()
	out := map[int64]int64{}
	for _, id := range ids {
		out[id] = queryInt(t, s.d.Tracking, `SELECT count(*) FROM geo_jobs WHERE event_id = $1`, id)
	}
	return out
}

// queuedEvents returns, per event model_record_id, how often a
// Geo::EventWorker job for it is on Sidekiq's queue, and checks that each
// job is written as GitLab's client writes it.
func (s *gitlabSite) queued(t *testing.T) map[int64]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	raw, err := s.sidekiq.LRange(ctx, "queue:default", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]int{}
	for _, r := range raw {
		var j struct {
			Class string            `json:"class"`
			Args  []json.RawMessage `json:"args"`
			Dead  *bool             `json:"dead"`
			Retry int               `json:"retry"`
		}
		if err := json.Unmarshal([]byte(r), &j); err != nil || j.Class != "Geo::EventWorker" || len(j.Args) != 3 {
			t.Fatalf("queue entry is not a Geo::EventWorker job: %s", r)
		}
		if j.Dead == nil || *j.Dead || j.Retry != 3 {
			t.Fatalf("job without \"dead\": false and \"retry\": 3, as GitLab writes them: %s", r)
		}
		var p struct {
			ID int64 `json:"model_record_id"`
		}
		_ = json.Unmarshal(j.Args[2], &p)
		out[p.ID]++
	}
	return out
}

// eventLogState is GitLab's event_log_states row (0: none).
func (s *gitlabSite) eventLogState(t *testing.T) int64 {
	return queryInt(t, s.d.Tracking, `SELECT COALESCE(max(event_id), 0) FROM event_log_states`)
}

// writeEvents commits n geo events, each with its own model_record_id, and
// returns the last log ID.
func (s *gitlabSite) writeEvents(t *testing.T, n int, firstModel int64) int64 {
	t.Helper()
	var last int64
	commitEvents(t, s.d, func(tx pgx.Tx) {
		for i := 0; i < n; i++ {
			last = insertGeoEvent(t, tx, "package_file", "updated", fmt.Sprintf(`{"model_record_id": %d}`, firstModel+int64(i)))
		}
	})
	return last
}

// While GitLab's geo-logcursor holds its cursor lease, the agents process
// and deliver nothing, and say why; within a second of the lease's release
// they begin, then hold the key under the group's value with a TTL, so
// that a second geo-logcursor cannot take it; a clean stop of every agent
// releases it. Jobs carry "dead": false, a 2 KB cache key is deleted as
// Rails names it, and GitLab's gauges carry its labels.
func TestOldCursorLeaseKeepsTheAgentsOut(t *testing.T) {
	clk := newClock(t)
	const oldCursorUUID = "6f1c3a5e-52b3-4c2e-9d3f-0a1b2c3d4e5f"
	long := "projects/42/" + strings.Repeat("x", 2048)
	s := startGitLabSite(t, "5s", func(s *gitlabSite) {
		ctx := context.Background()
		if err := s.state.Set(ctx, gitlab.CursorLeaseKey, oldCursorUUID, time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		if err := s.cache.Set(ctx, delivery.RailsCacheKey("cache:gitlab", long), "cached", 0).Err(); err != nil {
			t.Fatal(err)
		}
	})
	head := s.writeEvents(t, 50, 1)
	commitEvents(t, s.d, func(tx pgx.Tx) {
		var cacheID int64
		if err := tx.QueryRow(context.Background(), `INSERT INTO geo_cache_invalidation_events (key) VALUES ($1) RETURNING id`, long).Scan(&cacheID); err != nil {
			t.Fatal(err)
		}
		head = insertLogRow(t, tx, nil, &cacheID)
	})
	clk.Logf("GitLab's cursor lease held by %s; %d events written", oldCursorUUID, head)

	ts.WaitFor(t, 10*time.Second, "every agent to say geo-logcursor holds the lease", func() (bool, string) {
		for _, a := range s.c.Agents {
			st, err := statusOf(a)
			if err != nil {
				return false, err.Error()
			}
			if st.GitLab == nil || st.GitLab.CursorLease != api.GitLabLeaseOldCursor || st.Ready || !strings.Contains(st.NotReady, "gitlab-ctl stop geo-logcursor") {
				return false, fmt.Sprintf("%s: gitlab %+v, ready %v %q", a.ID, st.GitLab, st.Ready, st.NotReady)
			}
		}
		return true, ""
	})
	time.Sleep(2 * time.Second) // time enough to process 50 events many times over
	if n := queryInt(t, s.d.Tracking, `SELECT count(*) FROM geo_jobs`); n != 0 {
		t.Fatalf("%d jobs written while geo-logcursor held its lease", n)
	}
	if n := len(s.queued(t)); n != 0 {
		t.Fatalf("%d jobs delivered while geo-logcursor held its lease", n)
	}

	// geo-logcursor stops: GitLab's cursor cancels its lease.
	released := time.Now()
	if err := s.state.Del(context.Background(), gitlab.CursorLeaseKey).Err(); err != nil {
		t.Fatal(err)
	}
	ts.WaitFor(t, 10*time.Second, "the first job after the release", func() (bool, string) {
		n := queryInt(t, s.d.Tracking, `SELECT count(*) FROM geo_jobs`)
		return n > 0, fmt.Sprintf("%d jobs", n)
	})
	firstJob := time.Since(released)
	clk.Logf("FIGURE: lease released -> first job committed in %s", firstJob.Round(time.Millisecond))
	if firstJob > 3*time.Second {
		t.Errorf("processing began %s after geo-logcursor's lease went; the design says within a second (plus a batch)", firstJob)
	}
	waitCursor(t, s.c.Agents, head, 30*time.Second)
	ts.WaitFor(t, 20*time.Second, "all 50 jobs on Sidekiq's queue", func() (bool, string) {
		q := s.queued(t)
		return len(q) == 50, fmt.Sprintf("%d distinct jobs queued", len(q))
	})
	for id, n := range s.queued(t) {
		if n != 1 {
			t.Errorf("model %d queued %d times", id, n)
		}
	}
	ctx := context.Background()
	if n, _ := s.cache.Exists(ctx, delivery.RailsCacheKey("cache:gitlab", long)).Result(); n != 0 {
		t.Errorf("the 2 KB cache key, as Rails names it (%s...), was not deleted", delivery.RailsCacheKey("cache:gitlab", long)[:40])
	}

	// The group holds the key now, under its own value, with a TTL; a
	// second geo-logcursor cannot take it.
	val, err := s.state.Get(ctx, gitlab.CursorLeaseKey).Result()
	ttl, _ := s.state.PTTL(ctx, gitlab.CursorLeaseKey).Result()
	if err != nil || val != gitlab.LeaseValue(loadgen.SecondarySite) || ttl <= 0 || ttl > gitlab.CursorLeaseTTL {
		t.Errorf("GitLab's cursor lease key is %q (TTL %s, %v); want the group's value %q with a TTL of at most %s",
			val, ttl, err, gitlab.LeaseValue(loadgen.SecondarySite), gitlab.CursorLeaseTTL)
	}
	if ok, err := s.state.SetNX(ctx, gitlab.CursorLeaseKey, "a-second-geo-logcursor", 30*time.Second).Result(); err != nil || ok {
		t.Errorf("a second geo-logcursor's SET NX succeeded (%v, %v) while the agents run", ok, err)
	}

	// GitLab's gauges carry GitLab's labels (name and url, both the site).
	sc := scrapeAgent(t, api.NewClient(api.ClientOptions{}), s.c.Agents[0])
	for _, g := range []string{"geo_cursor_last_event_id", "geo_last_event_id", "geo_event_log_max_id"} {
		if _, ok := sc.gauge(g, "name", loadgen.SecondarySite, "url", loadgen.SecondarySite); !ok {
			t.Errorf("%s has no series labelled name and url %q: %v", g, loadgen.SecondarySite, sc.samples(g))
		}
	}
	if v, ok := sc.gauge("geocursor_gitlab_blocked"); !ok || v != 0 {
		t.Errorf("geocursor_gitlab_blocked = %v (%v), want 0 while the agents process", v, ok)
	}

	// A clean stop of every agent releases the key at once.
	for _, a := range s.c.Agents {
		a.Stop(t)
	}
	if n, err := s.state.Exists(ctx, gitlab.CursorLeaseKey).Result(); err != nil || n != 0 {
		v, _ := s.state.Get(ctx, gitlab.CursorLeaseKey).Result()
		t.Errorf("GitLab's cursor lease key is still there (%q) after every agent stopped cleanly", v)
	}
}

// A site that switches over from geo-logcursor: GitLab's cursor processed
// up to event_log_states and left IDs it skipped in geo:event_log:gaps.
// The agents adopt them, remove them from the set once the replicated
// cursor has them, process and deliver each late event once, and give up
// the one that never commits after gap_timeout (counted from GitLab's
// sighting); event_log_states reaches the head.
func TestGitLabGapsAdoptedAtSwitchover(t *testing.T) {
	clk := newClock(t)
	late := map[int64]bool{}
	var never, stop int64
	s := startGitLabSite(t, "20s", func(s *gitlabSite) {
		ctx := context.Background()
		// 100 IDs drawn; 4 of them were not committed when GitLab's cursor
		// passed them (rows 31, 47 and 88 commit after the switch; 64
		// never does).
		for id := int64(1); id <= 100; id++ {
			switch id {
			case 31, 47, 88:
				late[id] = true
				continue
			case 64:
				never = id
				continue
			}
			commitEvents(t, s.d, func(tx pgx.Tx) { insertEventWithID(t, tx, id) })
		}
		if _, err := s.d.Source.Exec(ctx, `SELECT setval('geo_event_log_id_seq', 100)`); err != nil {
			t.Fatal(err)
		}
		stop = 100
		// GitLab's own tracking database and shared state: its cursor
		// stopped after 100, having seen the four gaps 10 s ago: with a
		// gap_timeout of 20 s the one that never commits is given up
		// about 10 s after the switch.
		if _, err := s.d.Tracking.Exec(ctx, `CREATE TABLE event_log_states (event_id bigint NOT NULL PRIMARY KEY, created_at timestamp without time zone);
INSERT INTO event_log_states (event_id, created_at) VALUES (100, now() AT TIME ZONE 'utc')`); err != nil {
			t.Fatal(err)
		}
		seen := float64(time.Now().Add(-10 * time.Second).Unix())
		var zs []redis.Z
		for _, id := range []int64{31, 47, 64, 88} {
			zs = append(zs, redis.Z{Score: seen, Member: strconv.FormatInt(id, 10)})
		}
		if err := s.state.ZAdd(ctx, gitlab.GapSetKey, zs...).Err(); err != nil {
			t.Fatal(err)
		}
	})
	clk.Logf("GitLab's cursor stopped at %d with gaps 31, 47, 64, 88 in its set", stop)

	ts.WaitFor(t, 20*time.Second, "GitLab's gap set emptied by the agents", func() (bool, string) {
		n, err := s.state.ZCard(context.Background(), gitlab.GapSetKey).Result()
		return err == nil && n == 0, fmt.Sprintf("%d members (%v)", n, err)
	})
	st, err := anyStatus(s.c.Agents)
	if err != nil {
		t.Fatal(err)
	}
	if st.Cursor.LastEventID != stop || st.Cursor.OpenGaps == 0 {
		t.Fatalf("after the switch the cursor is %d with %d open gaps; want %d with GitLab's gaps adopted", st.Cursor.LastEventID, st.Cursor.OpenGaps, stop)
	}
	if n := queryInt(t, s.d.Tracking, `SELECT count(*) FROM geo_jobs WHERE event_id <= $1`, stop); n != 0 {
		t.Fatalf("%d events at or below GitLab's event_log_states were processed again", n)
	}

	// The late transactions commit, and new events come.
	for id := range late {
		commitEvents(t, s.d, func(tx pgx.Tx) { insertEventWithID(t, tx, id) })
	}
	head := s.writeEvents(t, 20, 1000)
	waitCursor(t, s.c.Agents, head, 30*time.Second)
	ts.WaitFor(t, 20*time.Second, "event_log_states at the head, the gap that never commits given up", func() (bool, string) {
		els := s.eventLogState(t)
		return els == head, fmt.Sprintf("event_log_states %d, head %d", els, head)
	})
	for id, n := range s.jobsFor(t, 31, 47, 88, never) {
		want := int64(1)
		if id == never {
			want = 0
		}
		if n != want {
			t.Errorf("event %d has %d jobs, want %d", id, n, want)
		}
	}
	ts.WaitFor(t, 20*time.Second, "the late events and the new ones on Sidekiq's queue", func() (bool, string) {
		q := s.queued(t)
		return len(q) == 23, fmt.Sprintf("%d distinct jobs queued", len(q))
	})
	for id, n := range s.queued(t) {
		if n != 1 {
			t.Errorf("model %d queued %d times", id, n)
		}
	}
	if n, _ := s.state.ZCard(context.Background(), gitlab.GapSetKey).Result(); n != 0 {
		t.Errorf("GitLab's gap set has %d members at the end; nobody would ever remove them", n)
	}
}

// insertEventWithID writes geo event id (its model_record_id is id too)
// with that log ID, as a transaction that drew it from the sequence would.
func insertEventWithID(t *testing.T, tx pgx.Tx, id int64) {
	t.Helper()
	ctx := context.Background()
	var geoID int64
	if err := tx.QueryRow(ctx, `INSERT INTO geo_events (replicable_name, event_name, payload, created_at)
VALUES ('package_file', 'updated', $1::jsonb, now()) RETURNING id`, fmt.Sprintf(`{"model_record_id": %d}`, id)).Scan(&geoID); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO geo_event_log (id, created_at, geo_event_id) VALUES ($1, now() AT TIME ZONE 'utc', $2)`, id, geoID); err != nil {
		t.Fatal(err)
	}
}

// A promotion mid-load: within 5 s of geo_nodes saying primary, no job is
// written or delivered any more, readiness is 503 and says why; when it
// says secondary again, everything committed meanwhile is processed and
// delivered once.
func TestPromotionStopsProcessingAndDelivery(t *testing.T) {
	clk := newClock(t)
	s := startGitLabSite(t, "5s", nil)
	waitDelivering(t, s.c.Agents)
	bg := startLoad(t, s.d, loadgen.Config{Writers: 4, Rate: 200, Seed: 5})
	waitCursor(t, s.c.Agents, 200, 30*time.Second)

	ctx := context.Background()
	if _, err := s.d.Source.Exec(ctx, `UPDATE geo_nodes SET "primary" = true WHERE name = $1`, loadgen.SecondarySite); err != nil {
		t.Fatal(err)
	}
	promoted := time.Now()
	clk.Logf("promoted %s in geo_nodes under load", loadgen.SecondarySite)
	ts.WaitFor(t, 10*time.Second, "every agent not ready, saying the site is a primary", func() (bool, string) {
		for _, a := range s.c.Agents {
			st, err := statusOf(a)
			if err != nil {
				return false, err.Error()
			}
			if st.Ready || !strings.Contains(st.NotReady, "primary") || st.GitLab == nil || st.GitLab.Role != "primary" {
				return false, fmt.Sprintf("%s: ready %v %q", a.ID, st.Ready, st.NotReady)
			}
		}
		return true, ""
	})
	clk.Logf("FIGURE: promotion -> every agent not ready in %s", time.Since(promoted).Round(time.Millisecond))
	time.Sleep(time.Until(promoted.Add(5 * time.Second)))
	quietFrom := time.Now()
	jobsAt := queryInt(t, s.d.Tracking, `SELECT count(*) FROM geo_jobs`)
	deliveredAt := queryInt(t, s.d.Tracking, `SELECT count(*) FROM geo_jobs WHERE delivered_at IS NOT NULL`)
	lastJob := queryTime(t, s.d, `SELECT max(created_at) FROM geo_jobs`)
	clk.Logf("FIGURE: promotion -> last job written %s", lastJob.Sub(promoted).Round(time.Millisecond))
	time.Sleep(3 * time.Second) // the load goes on at 200 events/s
	if n := queryInt(t, s.d.Tracking, `SELECT count(*) FROM geo_jobs`); n != jobsAt {
		t.Errorf("%d jobs written between 5 s and 8 s after the promotion", n-jobsAt)
	}
	if n := queryInt(t, s.d.Tracking, `SELECT count(*) FROM geo_jobs WHERE delivered_at IS NOT NULL`); n != deliveredAt {
		t.Errorf("%d jobs delivered between 5 s and 8 s after the promotion", n-deliveredAt)
	}
	clk.Logf("nothing processed or delivered for %s after the 5 s bound", time.Since(quietFrom).Round(time.Millisecond))

	if _, err := s.d.Source.Exec(ctx, `UPDATE geo_nodes SET "primary" = false WHERE name = $1`, loadgen.SecondarySite); err != nil {
		t.Fatal(err)
	}
	clk.Logf("a secondary again")
	bg.stop(t)
	checkOutcome(t, s.d, s.c)
	ts.WaitFor(t, 30*time.Second, "every job delivered", func() (bool, string) {
		n := queryInt(t, s.d.Tracking, `SELECT count(*) FROM geo_jobs WHERE delivered_at IS NULL`)
		return n == 0, fmt.Sprintf("%d undelivered", n)
	})
	s.checkQueuedOnce(t)
}

// checkQueuedOnce checks that every job of a geo event in geo_jobs is on
// Sidekiq's queue once (by its jid), and nothing else is.
func (s *gitlabSite) checkQueuedOnce(t *testing.T) {
	t.Helper()
	raw, err := s.sidekiq.LRange(context.Background(), "queue:default", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	jids := map[string]int{}
	for _, r := range raw {
		var j struct {
			JID string `json:"jid"`
		}
		_ = json.Unmarshal([]byte(r), &j)
		jids[j.JID]++
		if jids[j.JID] == 2 {
			t.Errorf("job %s is on the queue twice", j.JID)
		}
	}
	want := queryInt(t, s.d.Tracking, `SELECT count(*) FROM geo_jobs WHERE kind <> 'cache_invalidation'`)
	if int64(len(jids)) != want || int64(len(raw)) != want {
		t.Errorf("%d jobs (%d distinct) on Sidekiq's queue for %d jobs of geo events in geo_jobs", len(raw), len(jids), want)
	}
}

// queryTime reads one timestamp from the tracking database.
func queryTime(t *testing.T, d *procDBs, sql string) time.Time {
	t.Helper()
	var at time.Time
	if err := d.Tracking.QueryRow(context.Background(), sql).Scan(&at); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return at
}

// With Sidekiq's Redis down under load, GitLab's event_log_states never
// runs ahead of what is in Redis: sampled ten times a second, it is always
// below the lowest event with a job not yet delivered, and it reaches the
// head once Redis is back.
func TestEventLogStatesNeverAheadOfDelivery(t *testing.T) {
	clk := newClock(t)
	d := newProcDBs(t, false)
	sk := ts.StartRedis(t, redisserver.Options{AppendFsync: "always"})
	c := startProcessing(t, d, procConfig{FastTimers: true, BatchSize: 100, GapTimeout: "3s",
		Delivery: &procDelivery{SidekiqRedisURL: sk.URL(), CacheRedisURL: "redis://" + sk.Addr() + "/1"}})
	waitDelivering(t, c.Agents)
	bg := startLoad(t, d, loadgen.Config{Writers: 4, Rate: 300, RollbackFraction: 0.01, Seed: 7})

	type sample struct{ els, firstUndelivered int64 }
	samples := make(chan sample, 1000)
	sctx, stopSampling := context.WithCancel(context.Background())
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		defer close(samples)
		for sctx.Err() == nil {
			var sm sample
			// One statement, one snapshot.
			err := d.Tracking.QueryRow(sctx, `SELECT COALESCE((SELECT max(event_id) FROM event_log_states), 0),
       COALESCE((SELECT min(event_id) FROM geo_jobs WHERE delivered_at IS NULL AND id > (SELECT last_job_id FROM geocursor_delivery)), 0)`).
				Scan(&sm.els, &sm.firstUndelivered)
			if err == nil {
				select {
				case samples <- sm:
				default:
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	var all []sample
	collect := func() {
		for {
			select {
			case sm, ok := <-samples:
				if !ok {
					return
				}
				all = append(all, sm)
			default:
				return
			}
		}
	}
	time.Sleep(2 * time.Second)
	collect()
	if err := sk.Kill(); err != nil {
		t.Fatal(err)
	}
	clk.Logf("Sidekiq's Redis killed under load")
	for i := 0; i < 40; i++ {
		time.Sleep(100 * time.Millisecond)
		collect()
	}
	if err := sk.StartAgain(context.Background()); err != nil {
		t.Fatal(err)
	}
	clk.Logf("Sidekiq's Redis back")
	time.Sleep(2 * time.Second)
	bg.stop(t)
	head := sourceHead(t, d)
	ts.WaitFor(t, 60*time.Second, "event_log_states at the head", func() (bool, string) {
		collect()
		var els int64
		_ = d.Tracking.QueryRow(context.Background(), `SELECT COALESCE(max(event_id), 0) FROM event_log_states`).Scan(&els)
		return els == head, fmt.Sprintf("event_log_states %d, head %d", els, head)
	})
	stopSampling()
	<-sampled
	collect()
	behind := 0
	for _, sm := range all {
		if sm.firstUndelivered > 0 && sm.els >= sm.firstUndelivered {
			t.Fatalf("event_log_states %d while the job of event %d was not delivered yet", sm.els, sm.firstUndelivered)
		}
		if sm.firstUndelivered > 0 {
			behind++
		}
	}
	clk.Logf("%d samples, %d of them with jobs waiting for Redis; event_log_states never ran ahead", len(all), behind)
	if behind == 0 {
		t.Errorf("no sample saw a job waiting for Redis: the test did not test anything")
	}
	checkOutcome(t, d, c)
}

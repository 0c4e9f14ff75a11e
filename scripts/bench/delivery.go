package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/geocursor/geocursor/cursor"
	"github.com/geocursor/geocursor/delivery"
	"github.com/geocursor/geocursor/internal/devcluster"
	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/internal/redisserver"
	"github.com/geocursor/geocursor/internal/sidekiqserver"
)

// The delivery part (issue 11): the rate at which a backlog's jobs reach
// Sidekiq's Redis beside the drain rate, and the lag from the source
// commit to the perform in a real Sidekiq at a steady rate.

type deliveryReport struct {
	// Drain is the backlog drained by agents delivering as they go.
	Drain drainRun `json:"drain_with_delivery"`
	// Delivery is how fast the backlog's jobs were pushed into Redis.
	Delivery deliveryRun `json:"delivery"`
	// Ratio is Delivery.JobsPerS / Drain.EventsPerS.
	Ratio float64 `json:"delivery_to_drain_ratio"`
	// Lag is from the commit of each event in the source to the perform
	// of its job in Sidekiq's Geo::EventWorker.
	Lag *deliveryLag `json:"lag,omitempty"`
	// LagGitLab is the same lag measured right after, on a fresh tracking
	// database and a fresh group whose agents have a gitlab block (design
	// section 13): they hold GitLab's cursor lease, read the site's role,
	// and ask the gate before every batch and delivery round.
	LagGitLab *deliveryLag `json:"lag_gitlab,omitempty"`
	// GitLabP50Ratio is LagGitLab's p50 over Lag's, and
	// GitLabToRedisP50Ratio the same of the part that is geocursor's (from
	// the source commit to the push): Sidekiq's own queueing, the rest of
	// the lag, follows the machine's load.
	GitLabP50Ratio        float64 `json:"gitlab_p50_ratio,omitempty"`
	GitLabToRedisP50Ratio float64 `json:"gitlab_to_redis_p50_ratio,omitempty"`
	// QueuedOnce says the queue held each job of the backlog once.
	QueuedOnce string `json:"queued_once"`
	Method     string `json:"method"`
}

type deliveryRun struct {
	Jobs     int64   `json:"jobs"`
	Seconds  float64 `json:"seconds"`
	JobsPerS float64 `json:"jobs_per_s"`
	// BehindDrainS is how long after the drain's last commit the last job
	// reached Redis.
	BehindDrainS float64 `json:"behind_drain_s"`
}

type deliveryLag struct {
	Rate         float64 `json:"rate_per_s"`
	Events       int64   `json:"events"`
	AchievedRate float64 `json:"achieved_events_per_s"`
	Latency      summary `json:"latency"`
	// ToRedis is from the source commit to the push (the job's
	// enqueued_at), InSidekiq from the push to the perform: Sidekiq's own
	// queueing and work.
	ToRedis   summary `json:"to_redis"`
	InSidekiq summary `json:"in_sidekiq"`
	// Performed, Missing and Doubled compare the jobs of the run's geo
	// events with what Sidekiq performed.
	Performed int `json:"performed"`
	Missing   int `json:"missing"`
	Doubled   int `json:"doubled"`
}

const deliveryMethod = "A fresh tracking database and three agents with a delivery block (Sidekiq and cache in one Redis, appendonly yes, " +
	"appendfsync always) drain the source's backlog; no Sidekiq runs, so the jobs stay queued and the push rate is " +
	"geocursor's own. geocursor_delivery (last_job_id, updated_at, stamped by PostgreSQL) is read every 50 ms: the rate is the " +
	"jobs delivered between the first and the last round observed over the time between them. Then the queue is emptied, " +
	"a real Sidekiq (5 threads) runs GitLab's Geo::EventWorker, and the load generator writes at -lag-rate: the lag is from " +
	"pg_xact_commit_timestamp of each geo_event_log row to the worker's Time.now at perform, matched by the job's jid."

// delivery runs the part on a cluster of its own.
func (b *bench) delivery(ctx context.Context) error {
	r := &deliveryReport{Method: deliveryMethod}
	b.report.Delivery = r
	if b.cluster != nil {
		b.sampleRSS()
		if err := b.cluster.Close(); err != nil {
			b.logf("stop the agents: %v", err)
		}
		b.cluster = nil
	}
	head, err := sourceHeadAtLeast(ctx, b, b.opts.events)
	if err != nil {
		return err
	}
	dsn, err := b.pg.CreateDatabase(ctx, "tracking_delivery_"+b.security)
	if err != nil {
		return err
	}
	pool, err := openPool(ctx, dsn)
	if err != nil {
		return err
	}
	b.tracking.Close()
	b.trackingDSN, b.tracking = dsn, pool

	rs, err := redisserver.Start(ctx, redisserver.Options{})
	if err != nil {
		return fmt.Errorf("start Redis: %w", err)
	}
	defer rs.Cleanup()
	rc := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rc.Close()
	b.extraHCL = `
delivery {
  sidekiq {
    redis_url = env.GEOCURSOR_SIDEKIQ_REDIS_URL
  }
  cache {
    redis_url = env.GEOCURSOR_CACHE_REDIS_URL
  }
}
`
	b.extraEnv = []string{"GEOCURSOR_SIDEKIQ_REDIS_URL=" + rs.URL(), "GEOCURSOR_CACHE_REDIS_URL=redis://" + rs.Addr() + "/1"}
	defer func() { b.extraHCL, b.extraEnv = "", nil }()

	type measured struct {
		drain    drainRun
		delivery deliveryRun
		err      error
	}
	done := make(chan measured, 2)
	started := time.Now()
	var drainDone time.Time
	go func() {
		run, err := measureDrain(ctx, b.tracking, head, started, b.logf, "cluster delivering")
		drainDone = time.Now()
		done <- measured{drain: run, err: err}
	}()
	if err := b.startCluster(ctx); err != nil {
		return err
	}
	m := <-done
	if m.err != nil {
		return m.err
	}
	r.Drain = m.drain
	jobs, err := countJobs(ctx, b.tracking, false)
	if err != nil {
		return err
	}
	r.Delivery, err = measureDelivery(ctx, b.tracking, b.logf)
	if err != nil {
		return err
	}
	r.Delivery.BehindDrainS = round3(max(time.Since(drainDone).Seconds()-0.05, 0))
	if r.Drain.EventsPerS > 0 {
		r.Ratio = round3(r.Delivery.JobsPerS / r.Drain.EventsPerS)
	}
	queued, err := rc.LLen(ctx, "queue:default").Result()
	if err != nil {
		return err
	}
	r.QueuedOnce = fmt.Sprintf("%d jobs of geo events in geo_jobs, %d on queue:default", jobs, queued)
	if queued != jobs {
		return fmt.Errorf("delivery: %s", r.QueuedOnce)
	}
	b.logf("delivery: drain with delivery %.0f events/s; %d jobs into Redis at %.0f jobs/s (ratio %.3f), the last %.1fs after the drain's last commit",
		r.Drain.EventsPerS, r.Delivery.Jobs, r.Delivery.JobsPerS, r.Ratio, r.Delivery.BehindDrainS)
	b.report.check("delivery: jobs/s into Redis", r.Delivery.JobsPerS, "reported beside the drain", true)

	// The lag, through a real Sidekiq.
	if err := rc.Del(ctx, "queue:default").Err(); err != nil {
		return err
	}
	sk, err := sidekiqserver.Start(ctx, sidekiqserver.Options{RedisURL: rs.URL()})
	if err != nil {
		return fmt.Errorf("start Sidekiq: %w", err)
	}
	defer sk.Cleanup()
	lag, err := b.deliveryLag(ctx, sk)
	r.Lag = lag
	if err != nil {
		return err
	}
	if r.LagGitLab, err = b.deliveryLagWithGitLab(ctx, rs, sk); err != nil {
		return err
	}
	if r.Lag.Latency.P50 > 0 {
		r.GitLabP50Ratio = round3(r.LagGitLab.Latency.P50 / r.Lag.Latency.P50)
	}
	if r.Lag.ToRedis.P50 > 0 {
		r.GitLabToRedisP50Ratio = round3(r.LagGitLab.ToRedis.P50 / r.Lag.ToRedis.P50)
	}
	b.logf("delivery lag with a gitlab block: p50 %.1f ms, p99 %.1f ms (to Redis p50 %.1f ms), beside %.1f / %.1f ms (to Redis %.1f ms) without; p50 ratio %.3f, to Redis %.3f",
		r.LagGitLab.Latency.P50, r.LagGitLab.Latency.P99, r.LagGitLab.ToRedis.P50, r.Lag.Latency.P50, r.Lag.Latency.P99, r.Lag.ToRedis.P50,
		r.GitLabP50Ratio, r.GitLabToRedisP50Ratio)
	b.report.check("delivery lag with a gitlab block: p50 ratio to without", r.GitLabP50Ratio, "reported beside", true)
	b.report.check("delivery lag with a gitlab block: to-Redis p50 ratio", r.GitLabToRedisP50Ratio, "reported beside", true)
	return nil
}

// deliveryLagWithGitLab measures the delivery lag again with a gitlab
// block, on a tracking database and a group of its own (a new group over
// the used tracking database would be fenced by its older tokens): the
// backlog is drained and delivered with Sidekiq stopped, its jobs are
// dropped from the queue, and the lag run goes through Sidekiq as before.
func (b *bench) deliveryLagWithGitLab(ctx context.Context, rs *redisserver.Server, sk *sidekiqserver.Server) (*deliveryLag, error) {
	if err := b.cluster.Close(); err != nil {
		b.logf("stop the agents: %v", err)
	}
	b.cluster = nil
	if err := sk.Stop(); err != nil {
		return nil, fmt.Errorf("stop Sidekiq: %w", err)
	}
	dsn, err := b.pg.CreateDatabase(ctx, "tracking_delivery_gitlab_"+b.security)
	if err != nil {
		return nil, err
	}
	pool, err := openPool(ctx, dsn)
	if err != nil {
		return nil, err
	}
	b.tracking.Close()
	b.trackingDSN, b.tracking = dsn, pool
	b.extraHCL += fmt.Sprintf(`
gitlab {
  site_name              = %q
  shared_state_redis_url = env.GEOCURSOR_SHARED_STATE_REDIS_URL
}
`, loadgen.SecondarySite)
	b.extraEnv = append(b.extraEnv, "GEOCURSOR_SHARED_STATE_REDIS_URL=redis://"+rs.Addr()+"/2")
	var head int64
	if err := b.source.QueryRow(ctx, `SELECT COALESCE(max(id), 0) FROM geo_event_log`).Scan(&head); err != nil {
		return nil, err
	}
	if err := b.startCluster(ctx); err != nil {
		return nil, err
	}
	if _, err := measureDrain(ctx, b.tracking, head, time.Now(), b.logf, "cluster with a gitlab block"); err != nil {
		return nil, err
	}
	if _, err := measureDelivery(ctx, b.tracking, b.logf); err != nil {
		return nil, err
	}
	rc := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rc.Close()
	if err := rc.Del(ctx, "queue:default").Err(); err != nil {
		return nil, err
	}
	if err := sk.StartAgain(ctx); err != nil {
		return nil, fmt.Errorf("start Sidekiq again: %w", err)
	}
	return b.deliveryLag(ctx, sk)
}

func openPool(ctx context.Context, dsn string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = 4
	return pgxpool.NewWithConfig(ctx, cfg)
}

// sourceHeadAtLeast loads a backlog of n events unless the source has one.
func sourceHeadAtLeast(ctx context.Context, b *bench, n int) (int64, error) {
	var head int64
	if err := b.source.QueryRow(ctx, `SELECT COALESCE(max(id), 0) FROM geo_event_log`).Scan(&head); err != nil {
		return 0, err
	}
	if head >= int64(n) {
		return head, nil
	}
	b.logf("delivery: bulk-loading %d events into the source ...", n)
	if err := loadgen.BulkLoad(ctx, b.source, n, 1); err != nil {
		return 0, err
	}
	err := b.source.QueryRow(ctx, `SELECT COALESCE(max(id), 0) FROM geo_event_log`).Scan(&head)
	return head, err
}

// countJobs counts the jobs of geo events (all, or only undelivered).
func countJobs(ctx context.Context, tracking *pgxpool.Pool, undelivered bool) (int64, error) {
	q := `SELECT count(*) FROM geo_jobs WHERE kind <> $1`
	if undelivered {
		q += ` AND id > (SELECT last_job_id FROM geocursor_delivery)`
	}
	var n int64
	err := tracking.QueryRow(ctx, q, cursor.KindCacheInvalidation).Scan(&n)
	return n, err
}

// measureDelivery watches geocursor_delivery until every job is delivered.
func measureDelivery(ctx context.Context, tracking *pgxpool.Pool, logf func(string, ...any)) (deliveryRun, error) {
	type point struct {
		delivered int64
		at        time.Time
	}
	var first, last point
	seen := false
	err := devcluster.WaitEvery(ctx, 30*time.Minute, drainPoll, "delivery to reach the last job", func() (bool, string, error) {
		var p point
		var lastJob, maxJob int64
		err := tracking.QueryRow(ctx, `SELECT delivered, updated_at, last_job_id, COALESCE((SELECT max(id) FROM geo_jobs), 0) FROM geocursor_delivery`).
			Scan(&p.delivered, &p.at, &lastJob, &maxJob)
		if errors.Is(err, pgx.ErrNoRows) {
			return false, "no delivery row yet", nil
		}
		if err != nil {
			return false, err.Error(), nil
		}
		if !seen && p.delivered > 0 {
			first, seen = p, true
		}
		last = p
		return lastJob >= maxJob && maxJob > 0, fmt.Sprintf("delivered up to job %d of %d", lastJob, maxJob), nil
	})
	if err != nil {
		return deliveryRun{}, err
	}
	r := deliveryRun{Jobs: last.delivered - first.delivered}
	secs := last.at.Sub(first.at).Seconds()
	if secs <= 0 || r.Jobs <= 0 {
		return r, fmt.Errorf("every job was delivered between two polls: nothing to measure")
	}
	r.Seconds, r.JobsPerS = round3(secs), round(float64(r.Jobs)/secs)
	return r, nil
}

// deliveryLag writes at -lag-rate for -lag-duration and measures each
// event's time from its source commit to its perform in Sidekiq.
func (b *bench) deliveryLag(ctx context.Context, sk *sidekiqserver.Server) (*deliveryLag, error) {
	r := &deliveryLag{Rate: b.opts.lagRate}
	b.logf("delivery lag: writing %.0f events/s for %s through a real Sidekiq ...", r.Rate, b.opts.lagFor)
	committed, stats, err := b.writeLoad(ctx, loadgen.Config{Writers: lagWriters, Rate: r.Rate, Seed: 3})
	if err != nil {
		return r, err
	}
	r.Events = stats.Committed
	r.AchievedRate = round(float64(stats.Committed) / stats.Elapsed.Seconds())
	lo, hi := slices.Min(committed), slices.Max(committed)

	// The jobs of these events, by jid.
	var epoch string
	if err := b.tracking.QueryRow(ctx, `SELECT epoch FROM geocursor_delivery`).Scan(&epoch); err != nil {
		return r, err
	}
	want := map[string]int64{} // jid -> event ID
	err = devcluster.WaitEvery(ctx, 2*time.Minute, 200*time.Millisecond, "every event of the run to have its job", func() (bool, string, error) {
		rows, err := b.tracking.Query(ctx, `SELECT id, event_id FROM geo_jobs WHERE event_id BETWEEN $1 AND $2 AND kind <> $3`, lo, hi, cursor.KindCacheInvalidation)
		if err != nil {
			return false, err.Error(), nil
		}
		want = map[string]int64{}
		var id, ev int64
		if _, err := pgx.ForEachRow(rows, []any{&id, &ev}, func() error { want[delivery.JobJID(epoch, id)] = ev; return nil }); err != nil {
			return false, err.Error(), nil
		}
		return len(want) >= len(committed), fmt.Sprintf("%d of %d", len(want), len(committed)), nil
	})
	if err != nil {
		return r, err
	}
	var performed []sidekiqserver.Performed
	err = devcluster.WaitEvery(ctx, 2*time.Minute, 200*time.Millisecond, "Sidekiq to perform every job of the run", func() (bool, string, error) {
		all, err := sk.Performed()
		if err != nil {
			return false, err.Error(), nil
		}
		performed = performed[:0]
		for _, p := range all {
			if _, ok := want[p.JID]; ok {
				performed = append(performed, p)
			}
		}
		return len(performed) >= len(want), fmt.Sprintf("%d of %d", len(performed), len(want)), nil
	})
	if err != nil {
		return r, err
	}
	time.Sleep(500 * time.Millisecond) // a double would show by now
	all, err := sk.Performed()
	if err != nil {
		return r, err
	}
	commits, err := commitTimes(ctx, b.source, `geo_event_log`, `id`, lo, hi)
	if err != nil {
		return r, err
	}
	runs := map[string]int{}
	var lat, toRedis, inSidekiq []float64
	for _, p := range all {
		ev, ok := want[p.JID]
		if !ok {
			continue
		}
		runs[p.JID]++
		if runs[p.JID] > 1 {
			r.Doubled++
			continue
		}
		from, ok := commits[ev]
		if !ok {
			return r, fmt.Errorf("event %d: no commit time in the source", ev)
		}
		at := time.Unix(0, int64(p.PerformedAt*1e9))
		pushed := time.Unix(0, int64(p.EnqueuedAt*1e9))
		lat = append(lat, float64(at.Sub(from).Microseconds())/1000)
		toRedis = append(toRedis, float64(pushed.Sub(from).Microseconds())/1000)
		inSidekiq = append(inSidekiq, float64(at.Sub(pushed).Microseconds())/1000)
	}
	r.ToRedis, r.InSidekiq = summarize(toRedis), summarize(inSidekiq)
	r.Performed = len(runs)
	r.Missing = len(want) - len(runs)
	r.Latency = summarize(lat)
	b.logf("delivery lag: %d events at %.0f/s, source commit to Sidekiq perform: p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms (to Redis p50 %.1f / p99 %.1f, in Sidekiq p50 %.1f / p99 %.1f); %d performed, %d missing, %d doubled",
		r.Events, r.AchievedRate, r.Latency.P50, r.Latency.P90, r.Latency.P99, r.Latency.Max, r.ToRedis.P50, r.ToRedis.P99, r.InSidekiq.P50, r.InSidekiq.P99, r.Performed, r.Missing, r.Doubled)
	b.report.check("delivery lag: doubled", float64(r.Doubled), "0", r.Doubled == 0)
	b.report.check("delivery lag: missing", float64(r.Missing), "0", r.Missing == 0)
	if r.Doubled > 0 || r.Missing > 0 {
		return r, fmt.Errorf("delivery lag: %d jobs missing, %d doubled", r.Missing, r.Doubled)
	}
	return r, nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/internal/loadgen"
)

// Lag targets (issue text), in milliseconds.
const (
	targetLagP50 = 50
	targetLagP99 = 250
	lagWriters   = 8
)

type lagReport struct {
	Rate    float64 `json:"rate_per_s"`
	Writers int     `json:"writers"`
	Seconds float64 `json:"seconds"`
	Events  int64   `json:"events"`
	// AchievedRate is Events / Seconds: below Rate when the source could
	// not take the load.
	AchievedRate float64 `json:"achieved_events_per_s"`
	// Latency is from the commit of each event's transaction in the
	// source to the commit of its job's in the tracking database.
	Latency summary `json:"latency"`
	// Missing counts committed events without a job row.
	Missing int `json:"missing"`
	// Batches is where each batch's time went, from the debug logs.
	Batches batchTimes `json:"batch_ms"`
	// Acquisitions counts the leases granted during the run, and
	// HolderChanges how many of them went to another peer than the
	// previous one, with every peer healthy.
	Acquisitions  int `json:"lease_acquisitions"`
	HolderChanges int `json:"holder_changes"`
	// EventsPerTx is how many events each source transaction wrote.
	EventsPerTx int `json:"events_per_tx"`
	// RaftEntriesPerS is the Raft log's growth (the leader's commit index)
	// over the run, per second: every entry is an fsync on every peer.
	RaftEntriesPerS float64 `json:"raft_entries_per_s"`
	Method          string  `json:"method"`
}

// Steady-rate targets (issue 13): few Raft writes, little lag.
const (
	targetSteadyRaftPerS = 15
	targetSteadyLagP99   = 15
)

// steadyRates are the steady loads of issue 13: events/s and events per
// source transaction (single-event transactions top out near 2,400/s on
// a small machine).
var steadyRates = []struct {
	rate  float64
	perTx int
}{{200, 1}, {5000, 5}}

const lagMethod = "per event: the commit time of its geo_event_log row to the commit time of its geo_jobs row, " +
	"both pg_xact_commit_timestamp(xmin) (track_commit_timestamp = on), stamped by the one PostgreSQL server that holds " +
	"both databases. No holds, rollbacks, cache invalidations or bad events."

func (b *bench) lag(ctx context.Context) error {
	if err := b.startCluster(ctx); err != nil {
		return err
	}
	if _, err := b.waitCaughtUp(ctx, 5*time.Minute); err != nil {
		return err
	}
	r, err := b.lagRun(ctx, b.opts.lagRate, 1)
	b.report.Lag = r
	if err != nil {
		return err
	}
	b.report.check("lag: p50 ms", r.Latency.P50, fmt.Sprintf("<= %d", targetLagP50), r.Latency.P50 <= targetLagP50)
	b.report.check("lag: p99 ms", r.Latency.P99, fmt.Sprintf("<= %d", targetLagP99), r.Latency.P99 <= targetLagP99)
	for _, sr := range steadyRates {
		r, err := b.lagRun(ctx, sr.rate, sr.perTx)
		b.report.LagSteady = append(b.report.LagSteady, r)
		if err != nil {
			return err
		}
		name := fmt.Sprintf("lag at %.0f events/s", sr.rate)
		b.report.check(name+": raft entries/s", r.RaftEntriesPerS, fmt.Sprintf("<= %d", targetSteadyRaftPerS), r.RaftEntriesPerS <= targetSteadyRaftPerS)
		b.report.check(name+": p99 ms", r.Latency.P99, fmt.Sprintf("<= %d", targetSteadyLagP99), r.Latency.P99 <= targetSteadyLagP99)
	}
	return nil
}

// lagRun writes rate events/s (perTx to a transaction) for -lag-duration
// and measures each event's lag and the Raft log's growth.
func (b *bench) lagRun(ctx context.Context, rate float64, perTx int) (*lagReport, error) {
	r := &lagReport{Rate: rate, Writers: lagWriters, EventsPerTx: perTx, Method: lagMethod}

	from := markLogs(b.cluster.Agents)
	index0, at0, err := b.raftIndex(ctx)
	if err != nil {
		return r, err
	}
	b.logf("lag: writing %.0f events/s (%d per transaction) with %d writers for %s ...", r.Rate, perTx, lagWriters, b.opts.lagFor)
	committed, stats, err := b.writeLoad(ctx, loadgen.Config{
		Writers: lagWriters, Rate: r.Rate / float64(perTx), EventsPerTx: perTx, Seed: 2})
	if err != nil {
		return r, err
	}
	if index1, at1, err := b.raftIndex(ctx); err == nil && at1.After(at0) {
		r.RaftEntriesPerS = round(float64(index1-index0) / at1.Sub(at0).Seconds())
	}
	r.Events = stats.Committed
	r.Seconds = round(stats.Elapsed.Seconds())
	r.AchievedRate = round(float64(stats.Committed) / stats.Elapsed.Seconds())
	if _, err := b.waitCaughtUp(ctx, 2*time.Minute); err != nil {
		return r, err
	}
	times := b.report.raftCost(lagPhase(rate), b.cluster.Agents, from, markLogs(b.cluster.Agents))
	r.Batches = times.batchTimes()
	r.Acquisitions, r.HolderChanges = len(times.acquisitions), times.holderChanges()
	b.sampleRSS()

	lo, hi := slices.Min(committed), slices.Max(committed)
	inSource, err := commitTimes(ctx, b.source, `geo_event_log`, `id`, lo, hi)
	if err != nil {
		return r, fmt.Errorf("read the events' commit times: %w", err)
	}
	applied, err := commitTimes(ctx, b.tracking, `geo_jobs`, `event_id`, lo, hi)
	if err != nil {
		return r, fmt.Errorf("read the jobs' commit times: %w", err)
	}
	lat := make([]float64, 0, len(committed))
	for _, id := range committed {
		from, ok := inSource[id]
		if !ok {
			return r, fmt.Errorf("event %d: no commit time in the source", id)
		}
		to, ok := applied[id]
		if !ok {
			r.Missing++
			continue
		}
		lat = append(lat, float64(to.Sub(from).Microseconds())/1000)
	}
	r.Latency = summarize(lat)
	b.logf("lag: %d events at %.0f/s: p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms (%d without a job row); %d leases granted, %d to another peer than the last; %.1f raft entries/s",
		r.Events, r.AchievedRate, r.Latency.P50, r.Latency.P90, r.Latency.P99, r.Latency.Max, r.Missing, r.Acquisitions, r.HolderChanges, r.RaftEntriesPerS)
	if r.Missing > 0 {
		return r, fmt.Errorf("%d committed events have no job row", r.Missing)
	}
	return r, nil
}

// raftIndex is the leader's commit index, and when it was read.
func (b *bench) raftIndex(ctx context.Context) (uint64, time.Time, error) {
	for _, a := range b.cluster.Live() {
		sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		st, err := a.Status(sctx)
		cancel()
		if err == nil && st.Leader != nil && st.Leader.ID == a.ID {
			return st.CommitIndex, time.Now(), nil
		}
	}
	return 0, time.Time{}, fmt.Errorf("no leader answered its status")
}

// commitTimes returns, for the rows of table whose column is in lo..hi,
// when the transaction that wrote each row committed, by the server's clock.
func commitTimes(ctx context.Context, pool *pgxpool.Pool, table, column string, lo, hi int64) (map[int64]time.Time, error) {
	rows, err := pool.Query(ctx, fmt.Sprintf(
		`SELECT %[2]s, pg_xact_commit_timestamp(xmin) FROM %[1]s WHERE %[2]s BETWEEN $1 AND $2`, table, column), lo, hi)
	if err != nil {
		return nil, err
	}
	times := make(map[int64]time.Time)
	var (
		id int64
		at *time.Time
	)
	if _, err := pgx.ForEachRow(rows, []any{&id, &at}, func() error {
		if at == nil {
			return fmt.Errorf("%s row %d has no commit timestamp (is track_commit_timestamp on?)", table, id)
		}
		times[id] = *at
		return nil
	}); err != nil {
		return nil, err
	}
	return times, nil
}

// lagPhase names the Raft cost of the lag run at rate events/s.
func lagPhase(rate float64) string { return fmt.Sprintf("lag_%.0f", rate) }

// writeLoad runs the load generator with cfg for -lag-duration and returns
// the IDs of the events it committed (at least one) and its figures.
func (b *bench) writeLoad(ctx context.Context, cfg loadgen.Config) ([]int64, loadgen.Stats, error) {
	var (
		mu        sync.Mutex
		committed []int64
	)
	cfg.OnCommit = func(ids []int64, _ time.Time) {
		mu.Lock()
		committed = append(committed, ids...)
		mu.Unlock()
	}
	lctx, cancel := context.WithTimeout(ctx, b.opts.lagFor)
	stats, err := loadgen.Run(lctx, b.source, cfg)
	cancel()
	if ctx.Err() != nil {
		return nil, stats, ctx.Err()
	}
	if err != nil {
		return nil, stats, fmt.Errorf("load generator: %w", err)
	}
	if len(committed) == 0 {
		return nil, stats, errors.New("the load generator committed nothing")
	}
	return committed, stats, nil
}

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/config"
	"github.com/geocursor/geocursor/cursor"
	"github.com/geocursor/geocursor/internal/devcluster"
	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/internal/localcoord"
	"github.com/geocursor/geocursor/scripts/internal/harness"
)

// Drain targets (issue text).
const (
	targetDrainEventsPerS = 50_000
	targetDrainRatio      = 0.9
	targetCeilingRatio    = 0.85
)

// drainPoll is how often the fence is read while a backlog drains.
const drainPoll = 50 * time.Millisecond

type drainReport struct {
	Events    int      `json:"events"`
	BulkLoadS float64  `json:"bulk_load_s"`
	Cluster   drainRun `json:"cluster"`
	// Plain is the same cursor loop in the benchmark process with
	// localcoord.New: no Raft, no other peers. It runs once
	// before the cluster and once after, so that a machine getting faster
	// or slower during the benchmark moves both sides of the ratio alike.
	Plain []drainRun `json:"plain"`
	// PlainEventsPerS is the mean of the plain runs.
	PlainEventsPerS float64 `json:"plain_events_per_s"`
	// Ratio is Cluster.EventsPerS / PlainEventsPerS.
	Ratio float64 `json:"ratio_cluster_to_plain"`
	// Ceiling is what the tracking database takes from one connection
	// writing the same rows (ceiling.go), run first and last;
	// CeilingEventsPerS their mean, RatioToCeiling the cluster's share.
	Ceiling           []drainRun `json:"ceiling"`
	CeilingEventsPerS float64    `json:"ceiling_events_per_s"`
	RatioToCeiling    float64    `json:"ratio_cluster_to_ceiling"`
	CeilingMethod     string     `json:"ceiling_method"`
	Method            string     `json:"method"`
}

type drainRun struct {
	EventsPerS float64 `json:"events_per_s"`
	// MeasuredEvents were committed between the first tracking commit
	// observed and the one that reached the head, Seconds apart (database
	// clock: geocursor_fence.updated_at).
	MeasuredEvents int64   `json:"measured_events"`
	Seconds        float64 `json:"seconds"`
	// WallS is from starting the agents (or the loop) to the head,
	// connection, migration and the first acquire included.
	WallS float64 `json:"wall_s"`
	// Batches is where each batch's time went, from the debug logs.
	Batches batchTimes `json:"batch_ms"`
}

const drainMethod = "geocursor_fence is read every 50 ms; the rate is (head - last_event_id at the first commit observed) / " +
	"(updated_at of the commit that reached the head - updated_at of that first commit), both stamped by PostgreSQL. " +
	"The plain loop runs before and after the cluster, each time against a fresh tracking database on the same source; " +
	"the ratio is against the mean of its two runs. Before each run the database that the previous step wrote is " +
	"vacuumed and checkpointed, so that no run pays for another's autovacuum and dirty buffers."

func (b *bench) drain(ctx context.Context) error {
	r := &drainReport{Events: b.opts.events, Method: drainMethod, CeilingMethod: ceilingMethod}
	b.report.Drain = r
	if b.cluster != nil {
		return fmt.Errorf("the drain needs agents that start on the backlog, but they are already running")
	}

	head, err := harness.SourceHead(ctx, b.source)
	if err != nil {
		return err
	}
	// A second variant drains the backlog the first one loaded (and what
	// its other parts wrote), on a tracking database of its own.
	if head < int64(b.opts.events) {
		b.logf("drain: bulk-loading %d events into the source ...", b.opts.events)
		t0 := time.Now()
		if err := loadgen.BulkLoad(ctx, b.source, b.opts.events, 1); err != nil {
			return err
		}
		r.BulkLoadS = round(time.Since(t0).Seconds())
		if head, err = harness.SourceHead(ctx, b.source); err != nil {
			return err
		}
	}
	r.Events = int(head)
	b.logf("drain: loaded in %.1fs; source head %d", r.BulkLoadS, head)
	if err := settle(ctx, b.source); err != nil {
		return err
	}
	plain := func(n int) error {
		dsn, err := b.pg.CreateDatabase(ctx, fmt.Sprintf("tracking_plain_%d_%s", n, b.security))
		if err != nil {
			return err
		}
		run, err := b.drainPlain(ctx, dsn, head, n)
		if err != nil {
			return fmt.Errorf("plain loop, run %d: %w", n, err)
		}
		r.Plain = append(r.Plain, run)
		pool, err := harness.OpenPool(ctx, dsn, 1)
		if err != nil {
			return err
		}
		defer pool.Close()
		return settle(ctx, pool)
	}
	b.logf("drain: reading the backlog's rows for the ceiling runs ...")
	ceilingRows, err := loadCeilingRows(ctx, b.source, head)
	if err != nil {
		return fmt.Errorf("read the rows for the ceiling: %w", err)
	}
	ceiling := func(n int) error {
		dsn, err := b.pg.CreateDatabase(ctx, fmt.Sprintf("tracking_ceiling_%d_%s", n, b.security))
		if err != nil {
			return err
		}
		run, err := b.ceiling(ctx, dsn, ceilingRows, n)
		if err != nil {
			return err
		}
		r.Ceiling = append(r.Ceiling, run)
		pool, err := harness.OpenPool(ctx, dsn, 1)
		if err != nil {
			return err
		}
		defer pool.Close()
		return settle(ctx, pool)
	}
	// Ceiling, plain, cluster, plain, ceiling: a machine that speeds up or
	// slows down moves every ratio's both sides alike.
	if err := ceiling(1); err != nil {
		return err
	}
	if err := plain(1); err != nil {
		return err
	}

	// The cluster. Its agents' logs are new: the whole drain is in them.
	r.Cluster, err = b.clusterDrain(ctx, head, "cluster")
	if err != nil {
		return err
	}
	from := logMarks{}
	r.Cluster.Batches = b.report.raftCost("drain", b.cluster.Agents, from, markLogs(b.cluster.Agents)).batchTimes()
	b.sampleRSS()
	if err := b.waitStatusAt(ctx, head); err != nil {
		return err
	}

	// The plain loop again, once the cluster's million writes are vacuumed
	// and checkpointed.
	if err := settle(ctx, b.tracking); err != nil {
		return err
	}
	if err := plain(2); err != nil {
		return err
	}
	if err := ceiling(2); err != nil {
		return err
	}
	ceilingRows = nil
	for _, c := range r.Ceiling {
		r.CeilingEventsPerS += c.EventsPerS / float64(len(r.Ceiling))
	}
	r.CeilingEventsPerS = round(r.CeilingEventsPerS)
	if r.CeilingEventsPerS > 0 {
		r.RatioToCeiling = round3(r.Cluster.EventsPerS / r.CeilingEventsPerS)
	}
	for _, p := range r.Plain {
		r.PlainEventsPerS += p.EventsPerS / float64(len(r.Plain))
	}
	r.PlainEventsPerS = round(r.PlainEventsPerS)
	if r.PlainEventsPerS > 0 {
		r.Ratio = round3(r.Cluster.EventsPerS / r.PlainEventsPerS)
	}
	b.logf("drain: cluster %.0f events/s, plain %.0f events/s (mean of the runs before and after), ratio %.3f",
		r.Cluster.EventsPerS, r.PlainEventsPerS, r.Ratio)
	b.report.check("drain: cluster events/s", r.Cluster.EventsPerS, fmt.Sprintf(">= %d", targetDrainEventsPerS), r.Cluster.EventsPerS >= targetDrainEventsPerS)
	b.report.check("drain: ratio cluster/plain", r.Ratio, fmt.Sprintf(">= %.1f", targetDrainRatio), r.Ratio >= targetDrainRatio)
	b.logf("drain: ceiling %.0f events/s (mean of the first and last runs): cluster/ceiling %.3f", r.CeilingEventsPerS, r.RatioToCeiling)
	b.report.check("drain: ratio cluster/ceiling", r.RatioToCeiling, fmt.Sprintf(">= %.2f", targetCeilingRatio), r.RatioToCeiling >= targetCeilingRatio)
	return nil
}

// clusterDrain starts the agents on a backlog up to head and measures
// their drain. The fence is watched from before they start, so that the
// first commit is seen within one poll.
func (b *bench) clusterDrain(ctx context.Context, head int64, what string) (drainRun, error) {
	type measured struct {
		run drainRun
		err error
	}
	mctx, stopMeasuring := context.WithCancel(ctx)
	defer stopMeasuring()
	done := make(chan measured, 1)
	started := time.Now()
	go func() {
		run, err := measureDrain(mctx, b.tracking, head, started, b.logf, what)
		done <- measured{run, err}
	}()
	if err := b.startCluster(ctx); err != nil {
		return drainRun{}, err
	}
	m := <-done
	return m.run, m.err
}

// drainPlain runs the cursor loop in this process with coordination turned
// off until it reaches head.
func (b *bench) drainPlain(ctx context.Context, trackingDSN string, head int64, n int) (drainRun, error) {
	logFile, err := os.Create(filepath.Join(b.dir, fmt.Sprintf("plain-%d.log", n)))
	if err != nil {
		return drainRun{}, err
	}
	defer logFile.Close()
	// The same level and format as the agents, so both pay for the same
	// logging.
	logger := hclog.New(&hclog.LoggerOptions{Name: "plain", Level: hclog.Debug, Output: logFile, JSONFormat: true})
	started := time.Now()
	src, err := cursor.OpenSource(ctx, b.sourceDSN, logger.Named("source"))
	if err != nil {
		return drainRun{}, err
	}
	defer src.Close()
	trk, err := cursor.OpenTracking(ctx, trackingDSN, logger.Named("tracking"))
	if err != nil {
		return drainRun{}, err
	}
	defer trk.Close()
	pool, err := harness.OpenPool(ctx, trackingDSN, 2)
	if err != nil {
		return drainRun{}, err
	}
	defer pool.Close()

	loop := cursor.NewLoop(cursor.LoopConfig{Start: cursor.StartOldest,
		BatchSize:    batchSize,
		PollInterval: config.DefaultPollInterval,
		GapTimeout:   config.DefaultGapTimeout,
		LeaseTTL:     config.DefaultLeaseTTL,
		RetryMin:     config.DefaultRetryMin,
		RetryMax:     config.DefaultRetryMax,
	}, localcoord.New("plain"), src, trk, nil, logger.Named("cursor"))
	lctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- loop.Run(lctx) }()
	run, err := measureDrain(ctx, pool, head, started, b.logf, fmt.Sprintf("plain run %d", n))
	stop()
	<-done
	var t logTimes
	if terr := t.read("plain", logFile.Name(), 0, -1); terr != nil {
		return run, errors.Join(err, fmt.Errorf("read the plain loop's log: %w", terr))
	}
	run.Batches = t.batchTimes()
	return run, err
}

// settle vacuums the database behind pool and checkpoints the server: a
// million fresh rows trigger autovacuum and leave gigabytes of dirty
// buffers, and whichever run came next would pay for them.
func settle(ctx context.Context, pool *pgxpool.Pool) error {
	for _, stmt := range []string{"VACUUM (ANALYZE)", "CHECKPOINT"} {
		if _, err := pool.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("settle the database before the next run: %s: %w", stmt, err)
		}
	}
	return nil
}

// measureDrain polls the fence of tracking until it reaches head.
func measureDrain(ctx context.Context, tracking *pgxpool.Pool, head int64, started time.Time, logf func(string, ...any), what string) (drainRun, error) {
	var (
		first, last harness.Fence
		seen        bool
		lastLog     = time.Now()
	)
	err := devcluster.WaitEvery(ctx, 30*time.Minute, drainPoll, what+" to reach the source head", func() (bool, string, error) {
		f, err := harness.ReadFence(ctx, tracking)
		if err != nil {
			return false, err.Error(), nil
		}
		if !seen && f.LastEventID > 0 {
			first, seen = f, true
		}
		if time.Since(lastLog) > 5*time.Second {
			logf("drain: %s at event %d of %d", what, f.LastEventID, head)
			lastLog = time.Now()
		}
		last = f
		return f.LastEventID >= head, fmt.Sprintf("fence at %d", f.LastEventID), nil
	})
	if err != nil {
		return drainRun{}, err
	}
	r := drainRun{WallS: round(time.Since(started).Seconds()), MeasuredEvents: head - first.LastEventID}
	secs := last.UpdatedAt.Sub(first.UpdatedAt).Seconds()
	if secs <= 0 || r.MeasuredEvents <= 0 {
		return r, fmt.Errorf("the whole backlog was processed between two polls: nothing to measure")
	}
	r.Seconds = round3(secs)
	r.EventsPerS = round(float64(r.MeasuredEvents) / secs)
	logf("drain: %s processed %d events in %.3fs after its first commit: %.0f events/s (%.1fs from start)",
		what, r.MeasuredEvents, secs, r.EventsPerS, r.WallS)
	return r, nil
}

// waitStatusAt waits until the cluster status shows the cursor at head:
// the release-and-advance of the last batch reached Raft.
func (b *bench) waitStatusAt(ctx context.Context, head int64) error {
	return devcluster.WaitFor(ctx, 30*time.Second, fmt.Sprintf("cluster status to show the cursor at %d", head), func() (bool, string, error) {
		for _, a := range b.cluster.Live() {
			sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			st, err := a.Status(sctx)
			cancel()
			if err == nil {
				return st.Cursor.LastEventID >= head, fmt.Sprintf("cursor at %d", st.Cursor.LastEventID), nil
			}
		}
		return false, "no agent answered", nil
	})
}

// raftCost records the Raft cost per batch of a phase, from the agents'
// logs, and returns the timings.
func (r *report) raftCost(phase string, agents []*devcluster.Agent, from, to logMarks) logTimes {
	t, err := agentTimes(agents, from, to)
	if err != nil {
		r.Errors = append(r.Errors, fmt.Sprintf("raft cost (%s): %v", phase, err))
		return t
	}
	if r.RaftCostPerBatch == nil {
		r.RaftCostPerBatch = map[string]raftCost{}
	}
	r.RaftCostPerBatch[phase] = t.raftCost()
	return t
}

func round3(v float64) float64 { return float64(int64(v*1000+0.5)) / 1000 }

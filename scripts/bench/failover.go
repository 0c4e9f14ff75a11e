package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"
	"time"

	"github.com/geocursor/geocursor/internal/devcluster"
	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/scripts/internal/harness"
)

// Failover targets (issue text), in milliseconds.
const (
	targetFollowerMedian = 1000
	targetFollowerP99    = 3000
	targetLeaderMedian   = 2500
	targetLeaderP99      = 5000
)

const (
	kindFollower = "follower_holder" // the holder is a follower: the leader survives the kill
	kindLeader   = "leader_holder"   // the holder is the Raft leader too: the kill costs an election

	failoverWriters = 4
	// arrangeWait is how long a run waits for the lease holder to be of
	// the kind it needs before it counts as skipped.
	arrangeWait = 3 * time.Second
	// pauseFor is how long a holder of the wrong kind is stopped (SIGSTOP)
	// after a skip, so that the lease moves before the next attempt.
	pauseFor        = 1500 * time.Millisecond
	takeoverTimeout = 30 * time.Second
	takeoverPoll    = 10 * time.Millisecond
)

type failoverReport struct {
	Rate           float64       `json:"rate_per_s"`
	FollowerHolder kindReport    `json:"follower_holder"`
	LeaderHolder   kindReport    `json:"leader_holder"`
	Runs           []failoverRun `json:"runs"`
	// Events is what the load generator committed during the phase.
	Events int64  `json:"events"`
	Method string `json:"method"`
}

type kindReport struct {
	Wanted int `json:"wanted"`
	Runs   int `json:"runs"`
	// Skipped counts the times the holder was not of this kind within 3s
	// when a run of this kind was due; each skip pauses the holder to
	// move the lease before the next attempt.
	Skipped int `json:"skipped"`
	// Moved counts kills that were not counted because the lease had
	// already gone to another peer (the latest "Lease obtained" before the
	// kill was not the victim's): no failover to time.
	Moved    int     `json:"moved_before_kill"`
	TimedOut int     `json:"timed_out"`
	MedianMS float64 `json:"median_ms"`
	P99MS    float64 `json:"p99_ms"`
	MaxMS    float64 `json:"max_ms"`
	MinMS    float64 `json:"min_ms"`
}

type failoverRun struct {
	Kind        string `json:"kind"`
	Killed      string `json:"killed"`
	Leader      string `json:"leader_before"`
	TakenOverBy string `json:"taken_over_by"`
	// TakeoverMS is from SIGKILL to the created_at of the first geo_jobs
	// row written after it (-1: none within 30s).
	TakeoverMS  float64 `json:"takeover_ms"`
	TokenBefore int64   `json:"fence_token_before"`
	TokenAfter  int64   `json:"fence_token_after"`
	// WholeAgainMS is from restarting the killed node to all three
	// agents agreeing on a leader, reachable, with both databases.
	WholeAgainMS float64 `json:"whole_again_ms"`
	// Counted is false when the lease had moved before the kill (see
	// kindReport.Moved); LastAcquirer is who took the lease last before it.
	Counted      bool   `json:"counted"`
	LastAcquirer string `json:"last_acquirer_before_kill"`
}

const failoverMethod = "steady load from loadgen; the lease holder (lease.holder in the leader's status) is SIGKILLed; " +
	"the takeover time is from the kill to min(geo_jobs.created_at) over rows inserted after it " +
	"(polled every 10 ms; the fence token must have increased). The killed node is restarted and the cluster " +
	"is whole again before the next run. A run whose kind of holder cannot be arranged within 3 s is skipped, " +
	"and the holder is then paused (SIGSTOP) for 1.5 s so that the lease moves."

func (b *bench) failover(ctx context.Context) error {
	if err := b.startCluster(ctx); err != nil {
		return err
	}
	if _, err := b.waitCaughtUp(ctx, 5*time.Minute); err != nil {
		return err
	}
	n := b.opts.failoverRuns
	r := &failoverReport{Rate: b.opts.failoverRate, Method: failoverMethod,
		FollowerHolder: kindReport{Wanted: n}, LeaderHolder: kindReport{Wanted: n}}
	b.report.Failover = r
	kinds := map[string]*kindReport{kindFollower: &r.FollowerHolder, kindLeader: &r.LeaderHolder}

	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	type loadResult struct {
		stats loadgen.Stats
		err   error
	}
	loadDone := make(chan loadResult, 1)
	go func() {
		st, err := loadgen.Run(loadCtx, b.source, loadgen.Config{Writers: failoverWriters, Rate: r.Rate, Seed: 3})
		loadDone <- loadResult{st, err}
	}()
	b.logf("failover: %d runs of each kind under %.0f events/s", n, r.Rate)

	takeovers := map[string][]float64{}
	logs := &logFollower{offsets: markLogs(b.cluster.Agents)}
	for attempt := 0; r.FollowerHolder.Runs+r.LeaderHolder.Runs < 2*n && attempt < 4*n+10; attempt++ {
		if err := b.waitWhole(ctx); err != nil {
			return err
		}
		leader, holder, err := b.observe(ctx)
		if err != nil {
			return err
		}
		kind := kindOf(holder, leader)
		if kinds[kind].Runs >= n {
			want := otherKind(kind)
			b.logf("failover: %s holds the lease (%s); waiting up to %s for a %s", holder.ID, kind, arrangeWait, want)
			leader, holder, err = b.waitForKind(ctx, want)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				kinds[want].Skipped++
				b.logf("failover: skipped a %s run (%v); pausing %s for %s to move the lease", want, err, holder.ID, pauseFor)
				if err := pause(ctx, holder); err != nil {
					return err
				}
				continue
			}
			kind = want
		}
		run, err := b.killHolder(ctx, kind, leader, holder, logs)
		if err != nil {
			return err
		}
		r.Runs = append(r.Runs, run)
		k := kinds[kind]
		if !run.Counted {
			k.Moved++
			b.logf("failover: not counted: %s took the lease after %s's last turn and before the kill (%.0f ms)", run.LastAcquirer, run.Killed, run.TakeoverMS)
			continue
		}
		k.Runs++
		if run.TakeoverMS < 0 {
			k.TimedOut++
		} else {
			takeovers[kind] = append(takeovers[kind], run.TakeoverMS)
		}
		b.logf("failover: %s run %d/%d: killed %s (leader %s); %s took over after %.0f ms; whole again after %.0f ms",
			kind, k.Runs, n, run.Killed, run.Leader, run.TakenOverBy, run.TakeoverMS, run.WholeAgainMS)
	}

	stopLoad()
	lr := <-loadDone
	if lr.err != nil && !errors.Is(lr.err, context.Canceled) {
		return fmt.Errorf("load generator: %w", lr.err)
	}
	r.Events = lr.stats.Committed

	for kind, k := range kinds {
		s := slices.Clone(takeovers[kind])
		slices.Sort(s)
		if len(s) > 0 {
			k.MedianMS = round(median(s))
			k.P99MS = round(percentile(s, 99))
			k.MaxMS = round(s[len(s)-1])
			k.MinMS = round(s[0])
		}
	}
	f, l := r.FollowerHolder, r.LeaderHolder
	b.logf("failover: follower holder: %d runs (%d skipped, %d timed out), median %.0f ms, p99 %.0f ms, max %.0f ms",
		f.Runs, f.Skipped, f.TimedOut, f.MedianMS, f.P99MS, f.MaxMS)
	b.logf("failover: leader holder: %d runs (%d skipped, %d timed out), median %.0f ms, p99 %.0f ms, max %.0f ms",
		l.Runs, l.Skipped, l.TimedOut, l.MedianMS, l.P99MS, l.MaxMS)
	b.report.check("failover, holder is a follower: median ms", f.MedianMS, fmt.Sprintf("<= %d", targetFollowerMedian), f.Runs > 0 && f.TimedOut == 0 && f.MedianMS <= targetFollowerMedian)
	b.report.check("failover, holder is a follower: p99 ms", f.P99MS, fmt.Sprintf("<= %d", targetFollowerP99), f.Runs > 0 && f.TimedOut == 0 && f.P99MS <= targetFollowerP99)
	b.report.check("failover, holder is the leader: median ms", l.MedianMS, fmt.Sprintf("<= %d", targetLeaderMedian), l.Runs > 0 && l.TimedOut == 0 && l.MedianMS <= targetLeaderMedian)
	b.report.check("failover, holder is the leader: p99 ms", l.P99MS, fmt.Sprintf("<= %d", targetLeaderP99), l.Runs > 0 && l.TimedOut == 0 && l.P99MS <= targetLeaderP99)
	return nil
}

func kindOf(holder, leader *devcluster.Agent) string {
	if holder == leader {
		return kindLeader
	}
	return kindFollower
}

func otherKind(kind string) string {
	if kind == kindLeader {
		return kindFollower
	}
	return kindLeader
}

// observe returns the leader and the lease holder as the leader sees them.
// The lease is free for a moment between two batches, so it polls until
// it sees a holder.
func (b *bench) observe(ctx context.Context) (leader, holder *devcluster.Agent, err error) {
	leader, err = b.cluster.Leader(ctx, 20*time.Second)
	if err != nil {
		return nil, nil, err
	}
	err = devcluster.WaitFor(ctx, 10*time.Second, "a lease holder in the leader's status", func() (bool, string, error) {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := leader.Status(sctx)
		cancel()
		if err != nil {
			return false, err.Error(), nil
		}
		if st.Leader == nil || st.Leader.ID != leader.ID {
			return false, "", fmt.Errorf("%s is no longer the leader", leader.ID)
		}
		if st.Lease.Holder == nil {
			return false, "lease free", nil
		}
		holder = b.cluster.Agent(*st.Lease.Holder)
		return holder != nil && holder.Running(), "holder " + *st.Lease.Holder, nil
	})
	return leader, holder, err
}

// waitForKind waits up to arrangeWait for a holder of kind. On failure
// holder is the last holder seen.
func (b *bench) waitForKind(ctx context.Context, kind string) (leader, holder *devcluster.Agent, err error) {
	deadline := time.Now().Add(arrangeWait)
	for {
		leader, holder, err = b.observe(ctx)
		if err != nil {
			return leader, holder, err
		}
		if kindOf(holder, leader) == kind {
			return leader, holder, nil
		}
		if time.Now().After(deadline) {
			return leader, holder, fmt.Errorf("%s still holds the lease after %s", holder.ID, arrangeWait)
		}
		select {
		case <-ctx.Done():
			return leader, holder, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// pause stops a for pauseFor and lets it go on.
func pause(ctx context.Context, a *devcluster.Agent) error {
	if err := a.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	defer func() { _ = a.Signal(syscall.SIGCONT) }()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(pauseFor):
	}
	return nil
}

// killHolder runs one failover: SIGKILL the holder, time the takeover,
// restart it and wait for the cluster to be whole.
func (b *bench) killHolder(ctx context.Context, kind string, leader, holder *devcluster.Agent, logs *logFollower) (failoverRun, error) {
	run := failoverRun{Kind: kind, Killed: holder.ID, Leader: leader.ID, TakeoverMS: -1}
	before, err := harness.ReadFence(ctx, b.tracking)
	if err != nil {
		return run, err
	}
	run.TokenBefore = before.Token
	var lastJob int64
	if err := b.tracking.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM geo_jobs`).Scan(&lastJob); err != nil {
		return run, fmt.Errorf("read the last job: %w", err)
	}
	b.sampleRSS(holder)

	killedAt := time.Now()
	if err := holder.Kill(); err != nil {
		return run, err
	}
	var first time.Time
	err = devcluster.WaitEvery(ctx, takeoverTimeout, takeoverPoll, "a job row written after the kill", func() (bool, string, error) {
		var t *time.Time
		if err := b.tracking.QueryRow(ctx, `SELECT min(created_at) FROM geo_jobs WHERE id > $1 AND created_at > $2`,
			lastJob, killedAt).Scan(&t); err != nil {
			return false, err.Error(), nil
		}
		if t == nil {
			return false, "no job row yet", nil
		}
		first = *t
		return true, "", nil
	})
	switch {
	case ctx.Err() != nil:
		return run, ctx.Err()
	case err != nil:
		b.logf("failover: %v", err)
	default:
		run.TakeoverMS = round(float64(first.Sub(killedAt).Microseconds()) / 1000)
	}
	after, err := harness.ReadFence(ctx, b.tracking)
	if err != nil {
		return run, err
	}
	run.TokenAfter = after.Token
	if run.TakeoverMS >= 0 && after.Token <= before.Token {
		return run, fmt.Errorf("job rows appeared after the kill of %s but the fence token did not increase (%d)", holder.ID, after.Token)
	}
	// Who was the active peer at the kill: the one that took the lease
	// last before it. The lease is free for a moment between batches, and
	// a standby may take it then.
	run.Counted = true
	if err := logs.update(b.cluster.Agents); err != nil {
		return run, err
	}
	if last, ok := logs.times.lastAcquisitionBefore(killedAt); ok {
		run.LastAcquirer = last.node
		run.Counted = last.node == holder.ID
	}
	run.TakenOverBy = "?"
	_ = devcluster.WaitFor(ctx, 2*time.Second, "a lease holder", func() (bool, string, error) {
		h, _, err := b.cluster.Holder(ctx)
		if err == nil && h != nil {
			run.TakenOverBy = h.ID
		}
		return h != nil, "", nil
	})

	restartedAt := time.Now()
	if err := holder.Restart(); err != nil {
		return run, err
	}
	if err := b.waitWhole(ctx); err != nil {
		return run, fmt.Errorf("after restarting %s: %w", holder.ID, err)
	}
	run.WholeAgainMS = round(float64(time.Since(restartedAt).Microseconds()) / 1000)
	return run, nil
}

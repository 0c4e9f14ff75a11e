package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/geocursor/geocursor/internal/devcluster"
	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/scripts/internal/harness"
)

// Failover targets (issue 13), in milliseconds: a SIGKILLed holder's
// successor commits its first job within these, and the death of a leader
// that does not hold the lease leaves no longer gap between committed jobs.
const (
	targetHolderKillMedian    = 500
	targetHolderKillMax       = 1500
	targetLeaderKillGapMedian = 100
)

const (
	kindFollower   = "follower_holder" // the holder is a follower: the leader survives the kill
	kindLeader     = "leader_holder"   // the holder is the Raft leader too: the kill costs an election
	kindLeaderKill = "leader_kill"     // the leader is killed; a follower holds the lease
	// gapWindow is how long after a leader's kill the job rows are looked
	// at for the longest gap between two commits, baselineWindow how long
	// before it (the cluster runs undisturbed that long before the kill).
	gapWindow      = 3 * time.Second
	baselineWindow = time.Second

	failoverWriters = 4
	// arrangeWait is how long a run waits for the lease holder to be of
	// the kind it needs before it counts as skipped.
	arrangeWait     = 3 * time.Second
	takeoverTimeout = 30 * time.Second
	takeoverPoll    = 10 * time.Millisecond
)

type failoverReport struct {
	Rate float64 `json:"rate_per_s"`
	// HolderKill is every SIGKILL of the holder, whichever kind it was;
	// FollowerHolder and LeaderHolder split them by kind. With
	// lease.prefer_follower the holder is a follower nearly always.
	HolderKill     kindReport       `json:"holder_kill"`
	FollowerHolder kindReport       `json:"follower_holder"`
	LeaderHolder   kindReport       `json:"leader_holder"`
	LeaderKill     leaderKillReport `json:"leader_kill"`
	Runs           []failoverRun    `json:"runs"`
	// Events is what the load generator committed during the phase.
	Events int64  `json:"events"`
	Method string `json:"method"`
}

type kindReport struct {
	Wanted int `json:"wanted"`
	Runs   int `json:"runs"`
	// Skipped is kept for the report's readers; holder kills take
	// whichever kind holds, so it is 0.
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

// leaderKillReport is the SIGKILLs of a leader that did not hold the lease.
type leaderKillReport struct {
	Wanted int `json:"wanted"`
	Runs   int `json:"runs"`
	// Skipped counts the runs for which the leader held the lease for
	// arrangeWait: nothing to kill but the holder.
	Skipped int `json:"skipped"`
	// SameGrant counts the runs in which the holder's grant (the fence
	// token) outlived the election.
	SameGrant int `json:"same_grant"`
	// The longest gap between two committed jobs from the kill to
	// gapWindow after it, over the runs; Baseline is the same in the
	// baselineWindow before each kill.
	MedianGapMS         float64 `json:"median_gap_ms"`
	P99GapMS            float64 `json:"p99_gap_ms"`
	MaxGapMS            float64 `json:"max_gap_ms"`
	BaselineMedianGapMS float64 `json:"baseline_median_gap_ms"`
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
	// For a leader kill: the longest gap between committed jobs after the
	// kill and before it (see leaderKillReport).
	GapMS         float64 `json:"gap_ms,omitempty"`
	BaselineGapMS float64 `json:"baseline_gap_ms,omitempty"`
}

const failoverMethod = "steady load from loadgen; holder kills and leader kills alternate. A holder kill SIGKILLs " +
	"the lease holder (lease.holder in the leader's status), whichever kind it is; the takeover time is from the kill " +
	"to min(geo_jobs.created_at) over rows inserted after it (polled every 10 ms; the fence token must have increased). " +
	"A leader kill SIGKILLs the Raft leader while a follower holds the lease (waiting up to 3 s for one); its figure is " +
	"the longest gap between consecutive geo_jobs.created_at from the kill to 3 s after it, beside the same in the " +
	"undisturbed 1 s before. The killed node is restarted and the cluster is whole again before the next run."

func (b *bench) failover(ctx context.Context) error {
	if err := b.startCluster(ctx); err != nil {
		return err
	}
	if _, err := b.waitCaughtUp(ctx, 5*time.Minute); err != nil {
		return err
	}
	n := b.opts.failoverRuns
	r := &failoverReport{Rate: b.opts.failoverRate, Method: failoverMethod,
		HolderKill: kindReport{Wanted: n}, LeaderKill: leaderKillReport{Wanted: n}}
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
	b.logf("failover: %d holder kills and %d leader kills under %.0f events/s", n, n, r.Rate)

	takeovers := map[string][]float64{}
	var gaps, baselines []float64
	logs := &logFollower{offsets: markLogs(b.cluster.Agents)}
	for attempt := 0; (r.HolderKill.Runs < n || r.LeaderKill.Runs < n) && attempt < 4*n+10; attempt++ {
		if err := b.waitWhole(ctx); err != nil {
			return err
		}
		if r.LeaderKill.Runs < n && (r.LeaderKill.Runs < r.HolderKill.Runs || r.HolderKill.Runs >= n) {
			leader, holder, err := b.waitForKind(ctx, kindFollower)
			if err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				r.LeaderKill.Skipped++
				b.logf("failover: skipped a leader kill (%v)", err)
				continue
			}
			run, err := b.killLeader(ctx, leader, holder)
			if err != nil {
				return err
			}
			r.Runs = append(r.Runs, run)
			r.LeaderKill.Runs++
			if run.TokenAfter == run.TokenBefore {
				r.LeaderKill.SameGrant++
			}
			gaps, baselines = append(gaps, run.GapMS), append(baselines, run.BaselineGapMS)
			b.logf("failover: leader kill %d/%d: killed %s (%s holding token %d, token %d after); longest gap %.0f ms (%.0f ms before); whole again after %.0f ms",
				r.LeaderKill.Runs, n, run.Killed, holder.ID, run.TokenBefore, run.TokenAfter, run.GapMS, run.BaselineGapMS, run.WholeAgainMS)
			continue
		}
		leader, holder, err := b.observe(ctx)
		if err != nil {
			return err
		}
		kind := kindOf(holder, leader)
		run, err := b.killHolder(ctx, kind, leader, holder, logs)
		if err != nil {
			return err
		}
		r.Runs = append(r.Runs, run)
		k := kinds[kind]
		if !run.Counted {
			k.Moved++
			r.HolderKill.Moved++
			b.logf("failover: not counted: %s took the lease after %s's last turn and before the kill (%.0f ms)", run.LastAcquirer, run.Killed, run.TakeoverMS)
			continue
		}
		k.Runs++
		r.HolderKill.Runs++
		if run.TakeoverMS < 0 {
			k.TimedOut++
			r.HolderKill.TimedOut++
		} else {
			takeovers[kind] = append(takeovers[kind], run.TakeoverMS)
			takeovers["all"] = append(takeovers["all"], run.TakeoverMS)
		}
		b.logf("failover: holder kill %d/%d (%s): killed %s (leader %s); %s took over after %.0f ms; whole again after %.0f ms",
			r.HolderKill.Runs, n, kind, run.Killed, run.Leader, run.TakenOverBy, run.TakeoverMS, run.WholeAgainMS)
	}

	stopLoad()
	lr := <-loadDone
	if lr.err != nil && !errors.Is(lr.err, context.Canceled) {
		return fmt.Errorf("load generator: %w", lr.err)
	}
	r.Events = lr.stats.Committed

	for kind, k := range map[string]*kindReport{kindFollower: &r.FollowerHolder, kindLeader: &r.LeaderHolder, "all": &r.HolderKill} {
		k.summarize(takeovers[kind])
	}
	lk := &r.LeaderKill
	if len(gaps) > 0 {
		s := sorted(gaps)
		lk.MedianGapMS, lk.P99GapMS, lk.MaxGapMS = round(median(s)), round(percentile(s, 99)), round(s[len(s)-1])
		lk.BaselineMedianGapMS = round(median(sorted(baselines)))
	}
	h, f, l := r.HolderKill, r.FollowerHolder, r.LeaderHolder
	b.logf("failover: holder kills: %d runs (%d of a follower, %d of the leader; %d timed out), median %.0f ms, p99 %.0f ms, max %.0f ms",
		h.Runs, f.Runs, l.Runs, h.TimedOut, h.MedianMS, h.P99MS, h.MaxMS)
	b.logf("failover: leader kills: %d runs (%d skipped), grant kept in %d; longest gap median %.0f ms, max %.0f ms (%.0f ms before the kills)",
		lk.Runs, lk.Skipped, lk.SameGrant, lk.MedianGapMS, lk.MaxGapMS, lk.BaselineMedianGapMS)
	holderOK := h.Runs > 0 && h.TimedOut == 0
	b.report.check("failover, holder SIGKILL: median ms to the next committed job", h.MedianMS, fmt.Sprintf("<= %d", targetHolderKillMedian), holderOK && h.MedianMS <= targetHolderKillMedian)
	b.report.check("failover, holder SIGKILL: max ms to the next committed job", h.MaxMS, fmt.Sprintf("<= %d", targetHolderKillMax), holderOK && h.MaxMS <= targetHolderKillMax)
	b.report.check("failover, leader SIGKILL (not holding): median of the longest gap between committed jobs, ms", lk.MedianGapMS,
		fmt.Sprintf("<= %d", targetLeaderKillGapMedian), lk.Runs > 0 && lk.MedianGapMS <= targetLeaderKillGapMedian)
	return nil
}

// summarize fills in the figures of takeovers (ms).
func (k *kindReport) summarize(takeovers []float64) {
	s := sorted(takeovers)
	if len(s) > 0 {
		k.MedianMS = round(median(s))
		k.P99MS = round(percentile(s, 99))
		k.MaxMS = round(s[len(s)-1])
		k.MinMS = round(s[0])
	}
}

func kindOf(holder, leader *devcluster.Agent) string {
	if holder == leader {
		return kindLeader
	}
	return kindFollower
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

	run.WholeAgainMS, err = b.restartKilled(ctx, holder)
	return run, err
}

// killLeader runs one leader kill: SIGKILL the leader while holder, a
// follower, holds the lease, measure the longest gap between committed
// jobs around it, restart it and wait for the cluster to be whole.
func (b *bench) killLeader(ctx context.Context, leader, holder *devcluster.Agent) (failoverRun, error) {
	run := failoverRun{Kind: kindLeaderKill, Killed: leader.ID, Leader: leader.ID, TakenOverBy: holder.ID, Counted: true, TakeoverMS: -1}
	before, err := harness.ReadFence(ctx, b.tracking)
	if err != nil {
		return run, err
	}
	run.TokenBefore = before.Token
	b.sampleRSS(leader)
	select {
	case <-ctx.Done():
		return run, ctx.Err()
	case <-time.After(baselineWindow):
	}
	killedAt := time.Now()
	if err := leader.Kill(); err != nil {
		return run, err
	}
	select {
	case <-ctx.Done():
		return run, ctx.Err()
	case <-time.After(gapWindow + 200*time.Millisecond):
	}
	rows, err := b.tracking.Query(ctx, `SELECT created_at FROM geo_jobs WHERE created_at >= $1 AND created_at <= $2 ORDER BY created_at`,
		killedAt.Add(-baselineWindow), killedAt.Add(gapWindow))
	if err != nil {
		return run, fmt.Errorf("read the job rows around the kill: %w", err)
	}
	times, err := pgx.CollectRows(rows, pgx.RowTo[time.Time])
	if err != nil {
		return run, fmt.Errorf("read the job rows around the kill: %w", err)
	}
	run.BaselineGapMS, run.GapMS = longestGaps(times, killedAt.Add(-baselineWindow), killedAt, killedAt.Add(gapWindow))
	after, err := harness.ReadFence(ctx, b.tracking)
	if err != nil {
		return run, err
	}
	run.TokenAfter = after.Token

	run.WholeAgainMS, err = b.restartKilled(ctx, leader)
	return run, err
}

// longestGaps returns, in ms, the longest gap between consecutive commit
// times in [from, at) and the longest one that ends in [at, to]: each
// window's edges count as commits, so that a window without any has a gap
// as long as itself.
func longestGaps(times []time.Time, from, at, to time.Time) (before, after float64) {
	longest := func(lo, hi time.Time, starts []time.Time) float64 {
		prev, gap := lo, time.Duration(0)
		for _, t := range append(starts, hi) {
			if t.Before(lo) || t.After(hi) {
				continue
			}
			gap = max(gap, t.Sub(prev))
			prev = t
		}
		return round(float64(gap.Microseconds()) / 1000)
	}
	var pre []time.Time
	last := from
	var post []time.Time
	for _, t := range times {
		if t.Before(at) {
			pre = append(pre, t)
			last = t
		} else {
			post = append(post, t)
		}
	}
	return longest(from, at, pre), longest(last, to, post)
}

// restartKilled restarts a killed agent and returns how long the cluster
// took to be whole again, in ms.
func (b *bench) restartKilled(ctx context.Context, a *devcluster.Agent) (float64, error) {
	restartedAt := time.Now()
	if err := a.Restart(); err != nil {
		return 0, err
	}
	if err := b.waitWhole(ctx); err != nil {
		return 0, fmt.Errorf("after restarting %s: %w", a.ID, err)
	}
	return round(float64(time.Since(restartedAt).Microseconds()) / 1000), nil
}

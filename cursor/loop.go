package cursor

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// LoopConfig tunes the loop; see config.SourceConfig and config.LeaseConfig.
type LoopConfig struct {
	BatchSize    int
	PollInterval time.Duration
	GapTimeout   time.Duration
	// MaxGaps caps the open gaps kept in the replicated state.
	MaxGaps  int
	LeaseTTL time.Duration
	RetryMin time.Duration
	RetryMax time.Duration
	// HeadInterval is how often the source head is read for the status.
	HeadInterval time.Duration
	// DBTimeout bounds each database call; 0 means LeaseTTL.
	DBTimeout time.Duration
	// QuietSpell is how long a holder keeps its lease, caught up, waiting
	// for more work before it releases it; 0 means DefaultQuietSpell, a
	// negative value releases at once.
	QuietSpell time.Duration
	// Start is where a fresh tracking database begins: StartHead (the
	// default) or StartOldest; see grant.place.
	Start string
	// AdvanceInterval is how often, at most, a holder working through a
	// backlog records its progress in Raft; 0 means DefaultAdvanceInterval.
	// The last batch of a grant is always recorded at once.
	AdvanceInterval time.Duration
	// Metrics records what the loop does (nil: nothing).
	Metrics *Metrics
	// Gate, when set, may close processing (GitLab's shared state); a
	// grant ends at the next batch once it closes.
	Gate Gate
	// GitLabGaps, when set, is read when a fresh tracking database takes
	// over from GitLab's own cursor (grant.place), and when a handed-back
	// one takes over again after it (grant.retake).
	GitLabGaps GitLabGaps
}

// gateInterval is how often a peer whose gate is closed looks again.
const gateInterval = 100 * time.Millisecond

// DefaultQuietSpell: a holder that has found no work for a second lets the
// lease go.
const DefaultQuietSpell = time.Second

// holdPoll is how often a holder waiting for work looks: a fifth of the
// idle poll interval, at least a millisecond.
func (c LoopConfig) holdPoll() time.Duration { return max(c.PollInterval/5, time.Millisecond) }

// DefaultAdvanceInterval spaces the advances of a holder that keeps its
// lease through a backlog. Each is a Raft write on every peer, and at tens
// of batches a second they cost the cluster a tenth of its throughput on a
// small machine; the fence row, not the replicated cursor, is what the next
// holder continues from, so the cursor may trail it by this much.
const DefaultAdvanceInterval = 100 * time.Millisecond

// The values of LoopConfig.Start (config.StartHead and config.StartOldest).
const (
	StartHead   = "head"
	StartOldest = "oldest"
)

// horizonInterval is how often, at most, a holder reads the source's
// oldest event ID to notice a log pruned past the cursor.
const horizonInterval = 10 * time.Second

// DefaultMaxGaps bounds the gap set: far more than concurrent writers can
// leave open, far less than a sequence jump would create. It is the state
// machine's own cap.
const DefaultMaxGaps = fsm.MaxGaps

// withDefaults fills in the knobs left at zero.
func (c LoopConfig) withDefaults() LoopConfig {
	if c.MaxGaps <= 0 || c.MaxGaps > fsm.MaxGaps {
		c.MaxGaps = DefaultMaxGaps
	}
	if c.HeadInterval <= 0 {
		c.HeadInterval = time.Second
	}
	if c.DBTimeout <= 0 {
		c.DBTimeout = c.LeaseTTL
	}
	if c.AdvanceInterval <= 0 {
		c.AdvanceInterval = DefaultAdvanceInterval
	}
	switch {
	case c.QuietSpell == 0:
		c.QuietSpell = DefaultQuietSpell
	case c.QuietSpell < 0:
		c.QuietSpell = 0
	}
	return c
}

// Messages logged at the lease transitions, worded as the classic Geo log
// cursor words them so that existing log searches keep working.
const (
	msgLeaseHeld     = "Cannot obtain an exclusive lease. There must be another process already in execution."
	msgLeaseObtained = "Lease obtained. Fetching events."
	msgLeaseReleased = "Lease released. Finished fetching events."
	// msgBatchCommitted (debug) times a batch's steps: duration_ms,
	// fetch_ms, commit_ms. msgProgressRecorded (debug) times an advance
	// through Raft: raft_ms. The benchmark reads both.
	msgBatchCommitted   = "batch committed"
	msgProgressRecorded = "progress recorded"
)

// Loop is the processing loop of one peer (design section 1): wait for work,
// acquire the lease, process batches fenced by its token (a grant), release
// and advance.
type Loop struct {
	cfg      LoopConfig
	coord    Coordinator
	source   EventSource
	tracking TrackingStore
	health   *Health
	logger   hclog.Logger

	// lastFullGapProbe is when an idle probe last looked for every open gap
	// (only the Run goroutine touches it).
	lastFullGapProbe time.Time
	// clock is the state machine's time as this peer knows it; gaps are
	// stamped and aged on it.
	clock stateClock
	// batchProbe spaces a grant's probes of a large gap set.
	batchProbe gapProbe
	// horizon is the source's oldest event ID as read at horizonRead (by
	// the grants, one at a time).
	horizon     int64
	horizonRead time.Time
	// placed is set once the fence row was seen placed (unplaced).
	placed bool
	// fencedClaims counts this peer's grants in a row whose claim of the
	// tracking database was refused as fenced (see noteFencedClaim).
	fencedClaims int
	// turn is held from an acquire to the end of its grant, by the loop or
	// by an operator's request (operate.go), so that the two never hold
	// this peer's lease at once.
	turn sync.Mutex
}

// NewLoop returns a loop; Run starts it. It reports its databases' health
// to health (nil: a health of its own).
func NewLoop(cfg LoopConfig, coord Coordinator, source EventSource, tracking TrackingStore, health *Health, logger hclog.Logger) *Loop {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	if health == nil {
		health = NewHealth()
	}
	return &Loop{cfg: cfg.withDefaults(), coord: coord, source: source, tracking: tracking, health: health, logger: logger}
}

// Run processes events until ctx ends. Failures of either database are
// logged and retried with backoff; the lease is released first so another
// peer, which may reach the database, can go on.
func (l *Loop) Run(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.watchHead(ctx)
	}()
	defer func() { <-done }()

	backoff := api.Backoff{Min: 100 * time.Millisecond, Max: 10 * time.Second}
	// After a failure this peer lets any healthy standby go first: the
	// failure may be its own (a database it alone cannot reach).
	yield := false
	for ctx.Err() == nil {
		granted, err := l.waitAndAcquire(ctx, yield)
		if err == nil && granted != nil {
			err = l.hold(ctx, *granted)
			l.turn.Unlock()
		}
		yield = err != nil
		if err == nil {
			backoff.Reset()
			continue
		}
		if ctx.Err() != nil {
			break
		}
		wait := backoff.Next()
		l.logger.Warn("processing interrupted; retrying", "error", err, "retry_in_ms", wait.Milliseconds())
		_ = api.Sleep(ctx, wait)
	}
	return ctx.Err()
}

// waitAndAcquire waits until there is work and a free lease, then competes
// for it. It returns nil, nil when the attempt should simply be repeated.
func (l *Loop) waitAndAcquire(ctx context.Context, yield bool) (*fsm.Result, error) {
	me := l.coord.ID()
	for ctx.Err() == nil {
		st, changed := l.coord.Watch()
		l.clock.observe(st.Clock)
		now := time.Now()
		if st.Cursor.Paused {
			waitChange(ctx, changed, time.Second)
			continue
		}
		if l.gateClosed() != "" {
			_ = api.Sleep(ctx, gateInterval)
			continue
		}
		// An operator's request has reserved the next grant (on this peer
		// or another): the loop leaves it to that request.
		if r := st.Reservation; st.ReservedFor(now.UnixNano()) != "" {
			waitChange(ctx, changed, fsm.Time(r.Until).Sub(now)+time.Millisecond)
			continue
		}
		// A standby never proposes while someone else's lease is live: it
		// waits for the local replica to show it freed, or for its expiry.
		if st.Lease.HeldAt(now.UnixNano()) && st.Lease.Holder != me {
			waitChange(ctx, changed, fsm.Time(st.Lease.ExpiresAt).Sub(now)+time.Millisecond)
			continue
		}
		work, err := l.hasWork(ctx, st, now)
		if err != nil {
			return nil, err
		}
		if !work {
			_ = api.Sleep(ctx, l.cfg.PollInterval)
			continue
		}
		// The last holder goes on at once; a standby gives it a head start
		// so a healthy holder keeps its turn. A peer that just failed waits
		// longer than any standby does.
		if delay := l.turnDelay(st, yield); delay > 0 {
			_ = api.Sleep(ctx, delay)
			after, _ := l.coord.Watch()
			// A grant during the delay means the last holder is alive and
			// working, even if its lease is free again by now (short
			// batches): it keeps its turn.
			if after.Lease.Token != st.Lease.Token || (after.Lease.HeldAt(time.Now().UnixNano()) && after.Lease.Holder != me) {
				continue
			}
		}
		start := time.Now()
		// The turn is this peer's from the acquire to the end of the
		// grant (Run unlocks it): an operator's request (operate.go) waits
		// for it.
		l.turn.Lock()
		res, err := l.coord.Apply(ctx, fsm.Command{Op: fsm.OpAcquire, Node: me, TTL: l.cfg.LeaseTTL})
		if err != nil {
			l.turn.Unlock()
			return nil, fmt.Errorf("acquire lease: %w", err)
		}
		if res.Err != nil {
			l.turn.Unlock()
		}
		switch {
		case errors.Is(res.Err, fsm.ErrLeaseHeld):
			l.logger.Info(msgLeaseHeld, "holder", res.Lease.Holder, "token", res.Lease.Token)
			l.awaitGrant(ctx, res.Lease)
			continue
		case errors.Is(res.Err, fsm.ErrPaused):
			continue
		case res.Err != nil:
			return nil, fmt.Errorf("acquire lease: %w", res.Err)
		}
		l.clock.observe(res.Now)
		l.cfg.Metrics.granted(st.LastHolder != "" && st.LastHolder != me)
		l.logger.Info(msgLeaseObtained, "token", res.Lease.Token, "raft_ms", ms(time.Since(start)))
		return &res, nil
	}
	return nil, ctx.Err()
}

// awaitGrant waits, after an acquire was refused for held, until the local
// replica shows that grant or one after it, or until held would expire:
// a replica that lags behind the leader would otherwise show the lease
// free and have this peer ask again and again, each refusal answered at
// once.
func (l *Loop) awaitGrant(ctx context.Context, held fsm.Lease) {
	deadline := time.Now().Add(min(time.Until(fsm.Time(held.ExpiresAt)), l.cfg.LeaseTTL))
	for ctx.Err() == nil {
		st, changed := l.coord.Watch()
		left := time.Until(deadline)
		if st.Lease.Token >= held.Token || left <= 0 {
			return
		}
		waitChange(ctx, changed, left)
	}
}

// gateClosed says why this site may not process now, "" when it may.
func (l *Loop) gateClosed() string {
	if l.cfg.Gate == nil {
		return ""
	}
	return l.cfg.Gate.Closed()
}

// hasWork reports whether the source has events past the replicated
// cursor, an open gap has become visible, or a gap has timed out.
func (l *Loop) hasWork(ctx context.Context, st fsm.State, now time.Time) (bool, error) {
	if unplaced, err := l.unplaced(ctx, st); err != nil || unplaced {
		return unplaced, err
	}
	stateNow := l.clock.now()
	for _, g := range st.Gaps {
		if stateNow.Sub(fsm.Time(g.FirstSeen)) > l.cfg.GapTimeout {
			return true, nil
		}
	}
	qctx, cancel := l.dbContext(ctx)
	defer cancel()
	pending, err := l.source.Pending(qctx, st.Cursor.LastEventID, l.gapsToProbe(st.Gaps, now))
	l.health.Source(err)
	if err != nil {
		return false, fmt.Errorf("look for new events: %w", err)
	}
	return pending, nil
}

// unplaced reports whether the tracking database is fresh and its fence
// not yet placed: a grant must place it now, at the head as it is at
// start, or the first events written after start would count as old.
// Once the cursor has moved, or the fence was seen placed, it asks no more.
func (l *Loop) unplaced(ctx context.Context, st fsm.State) (bool, error) {
	if l.placed || st.Cursor.LastEventID != 0 {
		return false, nil
	}
	qctx, cancel := l.dbContext(ctx)
	defer cancel()
	f, err := l.tracking.Fence(qctx)
	l.health.Tracking(err)
	if err != nil {
		return false, fmt.Errorf("read the fence row: %w", err)
	}
	l.placed = f.Positioned
	return !f.Positioned, nil
}

// Gaps younger than recentGap are probed on every poll: a transaction that
// commits late usually does so within seconds, and its event should follow
// within one poll. Older gaps are most likely rolled back, and probing
// thousands of them 40 times a second on every idle peer costs the source
// real CPU, so they are probed once per oldGapProbeInterval.
const (
	recentGap           = 10 * time.Second
	oldGapProbeInterval = time.Second
)

// gapsToProbe returns the IDs of the gaps an idle probe should look for.
func (l *Loop) gapsToProbe(gaps []fsm.Gap, now time.Time) []int64 {
	all := now.Sub(l.lastFullGapProbe) >= oldGapProbeInterval
	if all {
		l.lastFullGapProbe = now
	}
	ids := make([]int64, 0, len(gaps))
	for _, g := range gaps {
		if all || now.Sub(fsm.Time(g.FirstSeen)) < recentGap {
			ids = append(ids, g.ID)
		}
	}
	return ids
}

// turnDelay is how long this peer lets the others go first before it
// competes for a free lease: none for the last holder, a retry delay for a
// standby (a short one when the last holder lost the lease without
// releasing it), more than any standby waits for a peer that just failed or that
// leads the Raft group while a follower could hold the lease instead (see
// leaseDeferrer).
func (l *Loop) turnDelay(st fsm.State, yield bool) time.Duration {
	var delay time.Duration
	switch {
	case yield:
		delay = l.cfg.RetryMax + l.retryDelay()
	case st.RevokedFrom != "" || (st.Lease.Holder != "" && st.Lease.Holder != l.coord.ID()):
		// The leader revoked the lease of a holder it could not reach, or
		// the lease ran out: its holder is gone or hung, there is no turn
		// to keep, and every moment waited is processing lost. A short
		// random delay only keeps the standbys from asking at once.
		delay = rand.N(max(l.cfg.RetryMin/2, time.Millisecond))
	case st.LastHolder != l.coord.ID() && st.LastHolder != "":
		delay = l.retryDelay()
	}
	if d, ok := l.coord.(leaseDeferrer); ok && d.DeferLease() {
		delay += l.cfg.RetryMax + l.retryDelay()
	}
	return delay
}

func (l *Loop) retryDelay() time.Duration {
	span := l.cfg.RetryMax - l.cfg.RetryMin
	if span <= 0 {
		return l.cfg.RetryMin
	}
	return l.cfg.RetryMin + rand.N(span)
}

// hold processes batches under one grant until there is no more work, the
// lease is lost, or something fails.
func (l *Loop) hold(ctx context.Context, granted fsm.Result) error {
	g := l.newGrant(ctx, granted)
	return g.close(g.run())
}

// foreignFenceAfter is how many fenced claims in a row make a peer look
// whether the tracking database has seen a token its group never granted.
// One is normal (a newer grant claimed it first); a peer retries with
// backoff, so by the third its replica has long shown any newer grant.
const foreignFenceAfter = 3

// noteFencedClaim counts a claim the fence refused, and once they come in
// a row, says what is wrong if the tracking database has seen a token
// newer than any this group has granted: every peer's Raft state was lost
// (a fresh group over a used tracking database), or another group writes
// to this tracking database. A fresh group would otherwise count its
// tokens up to the fence's one fenced grant at a time, under a warning
// that does not say why or what to do.
func (l *Loop) noteFencedClaim(ctx context.Context, token uint64) {
	l.fencedClaims++
	if l.fencedClaims < foreignFenceAfter {
		return
	}
	f, err := l.tracking.Fence(ctx)
	if err != nil {
		return
	}
	// The local replica of a following holder may not show its own grant
	// yet.
	st, _ := l.coord.Watch()
	if group := max(st.Lease.Token, token); f.Token > group {
		l.logger.Error("the tracking database has seen a newer lease token than this group ever granted: "+
			"the Raft state of every peer was lost, or another group writes to this tracking database. "+
			"Restore the last snapshot (`geocursor snapshot restore FILE` on a processing agent), which raises the group's token above the fence's; "+
			"until then every grant is fenced",
			"token", token, "group_token", group, "fence_token", f.Token, "fenced_in_a_row", l.fencedClaims)
	}
}

// dbContext bounds one database call. A database that stops answering
// without closing the connection (a silent partition) would otherwise hold
// the holder forever while its lease is still renewed through Raft; a
// bounded call fails, the holder releases the lease, and a peer that can
// reach the database goes on. The bound is the lease TTL: hundreds of times
// a healthy batch, and what the design already allows a silent holder.
func (l *Loop) dbContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, l.cfg.DBTimeout)
}

// release frees the lease, best effort: if it does not reach the leader the
// lease expires or is revoked anyway. A grant that is no longer current
// (stale_token) is already free.
func (l *Loop) release(ctx context.Context, token uint64) error {
	res, err := l.coord.Apply(context.WithoutCancel(ctx), fsm.Command{Op: fsm.OpRelease, Node: l.coord.ID(), Token: token})
	if err != nil {
		return fmt.Errorf("release lease (token %d): %w", token, err)
	}
	if res.Err != nil && !errors.Is(res.Err, fsm.ErrStaleToken) {
		return fmt.Errorf("release lease (token %d): %w", token, res.Err)
	}
	return nil
}

// watchHead reads the source head for the status document, and pings the
// tracking database so an idle peer also knows whether it could work.
func (l *Loop) watchHead(ctx context.Context) {
	t := time.NewTicker(l.cfg.HeadInterval)
	defer t.Stop()
	for {
		qctx, cancel := context.WithTimeout(ctx, l.cfg.HeadInterval+time.Second)
		id, date, err := l.source.Head(qctx)
		terr := l.tracking.Ping(qctx)
		l.readSafeDate(qctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			l.health.Head(id, date)
		} else {
			l.health.Source(err)
		}
		l.health.Tracking(terr)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

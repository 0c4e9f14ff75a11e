package cursor

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/geocursor/geocursor/fsm"
)

// EventSource is what the loop reads: *Source satisfies it.
type EventSource interface {
	Fetch(ctx context.Context, after int64, gaps []int64, limit int) ([]Event, error)
	Pending(ctx context.Context, after int64, gaps []int64) (bool, error)
	Head(ctx context.Context) (int64, time.Time, error)
}

// EventSink is where the loop writes: *Tracking satisfies it.
type EventSink interface {
	Claim(ctx context.Context, token uint64) (Fence, error)
	Fence(ctx context.Context) (Fence, error)
	// Stage opens b's transaction and writes what needs no lock; the
	// batch is written once the StagedBatch commits.
	Stage(ctx context.Context, b Batch) (StagedBatch, error)
	Ping(ctx context.Context) error
}

// StagedBatch is a batch whose transaction is open: *Staged. Exactly one
// of Commit and Abort is called.
type StagedBatch interface {
	Commit(ctx context.Context) (CommitResult, error)
	Abort()
}

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
	// AdvanceInterval is how often, at most, a holder working through a
	// backlog records its progress in Raft; 0 means DefaultAdvanceInterval.
	// The last batch of a grant is always recorded at once.
	AdvanceInterval time.Duration
}

// DefaultAdvanceInterval spaces the advances of a holder that keeps its
// lease through a backlog. Each is a Raft write on every peer, and at tens
// of batches a second they cost the cluster a tenth of its throughput on a
// small machine; the fence row, not the replicated cursor, is what the next
// holder continues from, so the cursor may trail it by this much.
const DefaultAdvanceInterval = 100 * time.Millisecond

// DefaultMaxGaps bounds the gap set: far more than concurrent writers can
// leave open, far less than a sequence jump would create.
const DefaultMaxGaps = 10000

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

var errLeaseLost = errors.New("lease lost")

// Loop is the processing loop of one peer (design section 1): wait for work,
// acquire the lease, process batches fenced by its token, release and
// advance.
type Loop struct {
	cfg    LoopConfig
	coord  Coordinator
	source EventSource
	sink   EventSink
	logger hclog.Logger

	health *Health

	// lastFullGapProbe is when an idle probe last looked for every open gap
	// (only the Run goroutine touches it).
	lastFullGapProbe time.Time
	// clock is the state machine's time as this peer knows it; gaps are
	// stamped and aged on it.
	clock stateClock
}

// NewLoop returns a loop; Run starts it. It reports its databases' health
// to health (nil: a health of its own).
func NewLoop(cfg LoopConfig, coord Coordinator, source EventSource, sink EventSink, health *Health, logger hclog.Logger) *Loop {
	if cfg.MaxGaps <= 0 {
		cfg.MaxGaps = DefaultMaxGaps
	}
	if cfg.HeadInterval <= 0 {
		cfg.HeadInterval = time.Second
	}
	if cfg.DBTimeout <= 0 {
		cfg.DBTimeout = cfg.LeaseTTL
	}
	if cfg.AdvanceInterval <= 0 {
		cfg.AdvanceInterval = DefaultAdvanceInterval
	}
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	if health == nil {
		health = NewHealth()
	}
	return &Loop{cfg: cfg, coord: coord, source: source, sink: sink, health: health, logger: logger}
}

// Run processes events until ctx ends. Failures of either database are
// logged and retried with backoff; the lease is released first so another
// peer, which may reach the database, can go on.
func (l *Loop) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.watchHead(ctx)
	}()
	defer wg.Wait()

	backoff := newBackoff(100*time.Millisecond, 10*time.Second)
	// After a failure this peer lets any healthy standby go first: the
	// failure may be its own (a database it alone cannot reach).
	yield := false
	for ctx.Err() == nil {
		grant, err := l.waitAndAcquire(ctx, yield)
		if err == nil && grant != nil {
			err = l.hold(ctx, *grant)
		}
		yield = err != nil
		if err == nil {
			backoff.reset()
			continue
		}
		if ctx.Err() != nil {
			break
		}
		wait := backoff.next()
		l.logger.Warn("processing interrupted; retrying", "error", err, "retry_in_ms", wait.Milliseconds())
		sleep(ctx, wait)
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
			wait(ctx, changed, time.Second)
			continue
		}
		// A standby never proposes while someone else's lease is live: it
		// waits for the local replica to show it freed, or for its expiry.
		if st.Lease.HeldAt(now.UnixNano()) && st.Lease.Holder != me {
			wait(ctx, changed, fsm.Time(st.Lease.ExpiresAt).Sub(now)+time.Millisecond)
			continue
		}
		work, err := l.hasWork(ctx, st, now)
		if err != nil {
			return nil, err
		}
		if !work {
			sleep(ctx, l.cfg.PollInterval)
			continue
		}
		// The last holder goes on at once; a standby gives it a head start
		// so a healthy holder keeps its turn. A peer that just failed waits
		// longer than any standby does.
		if delay := l.turnDelay(st, yield); delay > 0 {
			sleep(ctx, delay)
			after, _ := l.coord.Watch()
			// A grant during the delay means the last holder is alive and
			// working, even if its lease is free again by now (short
			// batches): it keeps its turn.
			if after.Lease.Token != st.Lease.Token || (after.Lease.HeldAt(time.Now().UnixNano()) && after.Lease.Holder != me) {
				continue
			}
		}
		start := time.Now()
		res, err := l.coord.Apply(ctx, fsm.Command{Op: fsm.OpAcquire, Node: me, TTL: l.cfg.LeaseTTL})
		if err != nil {
			return nil, fmt.Errorf("acquire lease: %w", err)
		}
		switch {
		case errors.Is(res.Err, fsm.ErrLeaseHeld):
			l.logger.Info(msgLeaseHeld, "holder", res.Lease.Holder, "token", res.Lease.Token)
			continue
		case errors.Is(res.Err, fsm.ErrPaused):
			continue
		case res.Err != nil:
			return nil, fmt.Errorf("acquire lease: %w", res.Err)
		}
		l.clock.observe(res.Now)
		l.logger.Info(msgLeaseObtained, "token", res.Lease.Token, "raft_ms", ms(time.Since(start)))
		return &res, nil
	}
	return nil, ctx.Err()
}

// hasWork reports whether the source has events past the replicated
// cursor, an open gap has become visible, or a gap has timed out.
func (l *Loop) hasWork(ctx context.Context, st fsm.State, now time.Time) (bool, error) {
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

func (l *Loop) turnDelay(st fsm.State, yield bool) time.Duration {
	switch {
	case yield:
		return l.cfg.RetryMax + l.retryDelay()
	case st.LastHolder != l.coord.ID() && st.LastHolder != "":
		return l.retryDelay()
	}
	return 0
}

func (l *Loop) retryDelay() time.Duration {
	span := l.cfg.RetryMax - l.cfg.RetryMin
	if span <= 0 {
		return l.cfg.RetryMin
	}
	return l.cfg.RetryMin + rand.N(span)
}

// hold processes batches under the grant until there is no more work, the
// lease is lost, or something fails. The lease is released (with the
// advance) on the normal path and on failures; a lost lease is left alone.
func (l *Loop) hold(ctx context.Context, grant fsm.Result) (err error) {
	token := grant.Lease.Token
	hctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	r := newRenewer(l, token)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.run(hctx, cancel)
	}()
	released := false
	// inflight is the previous batch's release-and-advance, still on its
	// way through Raft while this batch commits.
	var inflight *advanceCall
	// committing is the previous batch, staged: its commit runs while this
	// batch stages.
	var committing *pendingBatch
	defer func() {
		if committing != nil {
			committing.staged.Abort()
		}
		if inflight != nil {
			// The release below must not overtake it.
			<-inflight.done
		}
		cancel(nil)
		wg.Wait()
		if errors.Is(context.Cause(hctx), errLeaseLost) && ctx.Err() == nil {
			err = fmt.Errorf("token %d: %w", token, context.Cause(hctx))
		}
		if !released && !errors.Is(err, errLeaseLost) {
			l.release(token)
		}
	}()

	pos, adopted, err := l.startPosition(hctx, token, grant.Cursor)
	if err != nil {
		return err
	}
	// Through a backlog four batches are in the air at once: while batch i
	// commits in the tracking database, i+1 stages (opens its transaction
	// and inserts its jobs, which take no lock), i+2 is read from the
	// source, and i-1's release-and-advance goes through Raft. Commits and
	// advances stay in batch order: a staged batch takes the fence row's
	// lock only in its commit, and commits only if its start is where the
	// batch before it left the fence. A prefetch or a staged batch is
	// dropped whenever the position changes any other way.
	var prefetch <-chan fetchResult
	// seq numbers this grant's advances, so that a retried advance whose
	// first answer was lost is not applied twice.
	seq := uint64(1)
	// settle takes the answer to the advance in flight. Its batches are
	// committed in the tracking database whatever the answer: if the
	// advance failed, the next holder adopts the position from the fence.
	settle := func(a *advanceCall) error {
		inflight = nil
		if a.err == nil {
			l.clock.observe(a.res.Now)
		}
		if err := a.check(token); err != nil {
			return err
		}
		r.renewed()
		a.log(l.logger)
		return nil
	}
	// awaitAdvance waits for the advance in flight, if any.
	awaitAdvance := func() error {
		if inflight == nil {
			return nil
		}
		return settle(<-inflight.done)
	}
	// pollAdvance settles the advance in flight if it is answered, and
	// tells whether none is left.
	pollAdvance := func() (bool, error) {
		if inflight == nil {
			return true, nil
		}
		select {
		case a := <-inflight.done:
			return true, settle(a)
		default:
			return false, nil
		}
	}
	// folded counts the committed batches not yet recorded in Raft: while
	// the lease is kept, an advance goes out at most every AdvanceInterval
	// and carries the position of the last batch and the counts of all.
	// Only full batches keep the lease, so folded.Batches > 0 whenever a
	// committed batch is not recorded yet.
	var (
		folded   fsm.Advance
		lastSent time.Time
	)
	// sendAdvance records p in Raft, or folds it into the next advance while
	// the lease is kept and the last advance is recent or unanswered.
	sendAdvance := func(p *pendingBatch, res CommitResult) error {
		folded.Events += uint64(len(p.events))
		folded.DeadLetters += uint64(res.DeadLetters)
		folded.GapsDropped += uint64(p.dropped)
		if len(p.events) > 0 {
			folded.Batches++
		}
		if p.keep {
			if time.Since(lastSent) < l.cfg.AdvanceInterval {
				return nil
			}
			// While Raft is slow (an election), fold rather than wait: the
			// next batch's transaction is open and must not sit idle.
			if done, err := pollAdvance(); err != nil || !done {
				return err
			}
		}
		if err := awaitAdvance(); err != nil {
			return err
		}
		a := &advanceCall{
			cmd: fsm.Command{Op: fsm.OpAdvance, Node: l.coord.ID(), Token: token, TTL: l.cfg.LeaseTTL,
				Advance: &fsm.Advance{
					LastEventID: p.next.LastEventID, LastEventDate: fsm.Nanos(p.next.LastEventDate), Gaps: p.next.Gaps,
					Keep: p.keep, Seq: seq, Events: folded.Events, DeadLetters: folded.DeadLetters,
					GapsDropped: folded.GapsDropped, Batches: folded.Batches,
				}},
			lastID: p.next.LastEventID, openGaps: len(p.next.Gaps), sent: time.Now(),
		}
		seq++
		folded, lastSent = fsm.Advance{}, a.sent
		inflight = a.start(hctx, l.coord)
		return nil
	}
	// finish commits p, the oldest batch in the air, and sends its advance.
	finish := func(p *pendingBatch) error {
		var res CommitResult
		if p.staged != nil {
			qctx, cancel := l.dbContext(hctx)
			var err error
			res, err = p.staged.Commit(qctx)
			cancel()
			if err != nil {
				if !errors.Is(err, ErrFenced) {
					l.health.Tracking(ctxOr(hctx, err))
				}
				return err
			}
			l.health.Tracking(nil)
			p.log(l.logger, token, res, time.Now())
		}
		return sendAdvance(p, res)
	}
	// fenced decides what a batch refused as fenced means, start being
	// where it began: a holder with an older token slipped a batch in
	// before this one claimed the fence (go on from the fence: true), or
	// this grant is over.
	fenced := func(err error, start Position) (bool, error) {
		if aerr := awaitAdvance(); aerr != nil {
			return false, errors.Join(err, aerr)
		}
		qctx, cancel := l.dbContext(hctx)
		f, rerr := l.sink.Fence(qctx)
		cancel()
		switch {
		case rerr != nil || f.Token > token:
			return false, fmt.Errorf("commit batch: %w", errors.Join(err, errLeaseLost))
		case f.Token == token && samePosition(f.Position, start):
			// Nobody moved the fence: the batch collided with rows that
			// are already there for events after it. Going on from the
			// fence would collide again.
			err = fmt.Errorf("the tracking database already has rows for events after its fence at event %d; "+
				"was it restored, or the fence reset, without geo_jobs and geo_dead_letters? %w", start.LastEventID, err)
			l.health.Tracking(err)
			return false, err
		}
		l.logger.Info("tracking database moved on before this batch; continuing from its fence", "token", token, "fence_last_id", f.Position.LastEventID)
		pos, adopted, prefetch = f.Position, true, nil
		return true, nil
	}
	// commit finishes p; when it was fenced, again tells whether to go on
	// from the fence.
	commit := func(p *pendingBatch) (again bool, err error) {
		err = finish(p)
		switch {
		case err == nil:
			return false, nil
		case !errors.Is(err, ErrFenced):
			return false, fmt.Errorf("commit batch: %w", err)
		}
		return fenced(err, p.start)
	}
	for {
		batchStart := time.Now()
		var events []Event
		if prefetch != nil && committing != nil {
			select {
			case r := <-prefetch:
				prefetch = singleResult(r)
			default:
				// The next batch is not read yet: commit the staged one now
				// rather than keep its transaction open while the source
				// answers.
				c := committing
				committing = nil
				again, err := commit(c)
				if err != nil {
					return err
				}
				if again {
					continue
				}
			}
		}
		if prefetch != nil {
			r := <-prefetch
			events, err, prefetch = r.events, r.err, nil
		} else {
			events, err = l.fetch(hctx, pos)
		}
		l.health.Source(ctxOr(hctx, err))
		if err != nil {
			return err
		}
		fetched := time.Now()
		next, dropped := Advance(pos, events, l.clock.now(), l.cfg.GapTimeout, l.cfg.MaxGaps)
		if len(dropped) > 0 {
			l.logger.Warn("gave up waiting for skipped event IDs (rolled back, or older than source.gap_timeout)",
				"count", len(dropped), "first_id", dropped[0], "last_id", dropped[len(dropped)-1], "token", token)
		}
		// Keep the lease for the next batch only while there is more to do
		// and nobody asked to pause.
		st, _ := l.coord.Watch()
		keep := len(events) >= l.cfg.BatchSize && !st.Cursor.Paused
		if keep {
			prefetch = l.fetchAsync(hctx, next)
		}
		p := &pendingBatch{start: pos, events: events, next: next, dropped: len(dropped), keep: keep, batchStart: batchStart, fetched: fetched}
		var staging <-chan stageResult
		if len(events) > 0 || len(dropped) > 0 {
			staging = l.stageAsync(hctx, Batch{Token: token, Start: pos, Next: next, Events: events})
		}

		var (
			ferr   error
			failed *pendingBatch
		)
		if committing != nil {
			failed, committing = committing, nil
			ferr = finish(failed)
		}
		var serr error
		if staging != nil {
			sr := <-staging
			p.staged, serr = sr.staged, sr.err
		}
		if ferr != nil || serr != nil {
			if p.staged != nil {
				p.staged.Abort()
			}
			err := ferr
			if err == nil {
				err = serr
				if !errors.Is(err, ErrFenced) {
					l.health.Tracking(ctxOr(hctx, err))
				}
			}
			if !errors.Is(err, ErrFenced) {
				return fmt.Errorf("commit batch: %w", err)
			}
			start := p.start
			if ferr != nil {
				start = failed.start
			}
			if again, err := fenced(err, start); !again {
				return err
			}
			continue
		}

		if p.staged == nil && !adopted && folded.Batches == 0 {
			// Nothing new after all (another peer got there first).
			if err := awaitAdvance(); err != nil {
				return err
			}
			l.logger.Info(msgLeaseReleased, "token", token, "count", 0)
			released = true
			return l.releaseNow(ctx, token)
		}
		pos, adopted = next, false
		if keep {
			committing = p
			continue
		}
		// The grant's last batch: commit it, and release with its advance.
		again, err := commit(p)
		if err != nil {
			return err
		}
		if again {
			continue
		}
		if err := awaitAdvance(); err != nil {
			return err
		}
		released = true
		l.logger.Info(msgLeaseReleased, "token", token, "last_id", next.LastEventID, "open_gaps", len(next.Gaps))
		return nil
	}
}

// pendingBatch is a batch between its fetch and its advance.
type pendingBatch struct {
	start      Position
	events     []Event
	next       Position
	dropped    int
	keep       bool
	batchStart time.Time
	fetched    time.Time
	// staged is nil for a batch with nothing to write: an adopted position
	// recorded in Raft with no new event.
	staged StagedBatch
}

// log records where a committed batch's time went: reading it, staging
// and committing it (the wait for the batch before it included).
func (p *pendingBatch) log(logger hclog.Logger, token uint64, res CommitResult, committed time.Time) {
	if len(p.events) == 0 {
		return
	}
	logger.Debug(msgBatchCommitted, "token", token, "first_id", p.events[0].ID, "last_id", p.events[len(p.events)-1].ID,
		"count", len(p.events), "dead_letters", res.DeadLetters, "open_gaps", len(p.next.Gaps),
		"duration_ms", ms(committed.Sub(p.batchStart)), "fetch_ms", ms(p.fetched.Sub(p.batchStart)),
		"commit_ms", ms(committed.Sub(p.fetched)))
}

// singleResult is a channel that delivers r.
func singleResult(r fetchResult) <-chan fetchResult {
	ch := make(chan fetchResult, 1)
	ch <- r
	return ch
}

type stageResult struct {
	staged StagedBatch
	err    error
}

// stageAsync stages b in the background. The goroutine ends with ctx at the
// latest; its one result never blocks it.
func (l *Loop) stageAsync(ctx context.Context, b Batch) <-chan stageResult {
	ch := make(chan stageResult, 1)
	go func() {
		qctx, cancel := l.dbContext(ctx)
		defer cancel()
		staged, err := l.sink.Stage(qctx, b)
		ch <- stageResult{staged, err}
	}()
	return ch
}

// advanceCall is one release-and-advance sent through Raft, with what its
// log line needs once it is applied.
type advanceCall struct {
	cmd      fsm.Command
	lastID   int64
	openGaps int
	sent     time.Time
	applied  time.Time
	res      fsm.Result
	err      error
	done     chan *advanceCall
}

// start applies the advance in the background; done delivers the call once
// it has an outcome, which never blocks the goroutine.
func (a *advanceCall) start(ctx context.Context, coord Coordinator) *advanceCall {
	a.done = make(chan *advanceCall, 1)
	go func() {
		a.res, a.err = coord.Apply(ctx, a.cmd)
		a.applied = time.Now()
		a.done <- a
	}()
	return a
}

func (a *advanceCall) check(token uint64) error {
	if a.err != nil {
		// The batch is committed in the tracking database; whoever holds
		// the lease next adopts its position from the fence row.
		return fmt.Errorf("apply release-and-advance (token %d): %w", token, a.err)
	}
	if errors.Is(a.res.Err, fsm.ErrPaused) {
		// Paused after the batch was read with the lease kept: the lease
		// is still this peer's, and hold releases it on the way out.
		return fmt.Errorf("apply release-and-advance (token %d): %w", token, a.res.Err)
	}
	if a.res.Err != nil {
		return fmt.Errorf("apply release-and-advance (token %d): %w", token, errors.Join(a.res.Err, errLeaseLost))
	}
	return nil
}

// log records the advance's time through Raft.
func (a *advanceCall) log(logger hclog.Logger) {
	logger.Debug(msgProgressRecorded, "token", a.cmd.Token, "last_id", a.lastID, "events", a.cmd.Advance.Events,
		"open_gaps", a.openGaps, "keep", a.cmd.Advance.Keep, "raft_ms", ms(a.applied.Sub(a.sent)))
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

func (l *Loop) fetch(ctx context.Context, pos Position) ([]Event, error) {
	qctx, cancel := l.dbContext(ctx)
	defer cancel()
	return l.source.Fetch(qctx, pos.LastEventID, pos.GapIDs(), l.cfg.BatchSize)
}

type fetchResult struct {
	events []Event
	err    error
}

// fetchAsync reads the batch after pos in the background. The goroutine
// ends with ctx at the latest; its one result never blocks it.
func (l *Loop) fetchAsync(ctx context.Context, pos Position) <-chan fetchResult {
	ch := make(chan fetchResult, 1)
	go func() {
		events, err := l.fetch(ctx, pos)
		ch <- fetchResult{events, err}
	}()
	return ch
}

// startPosition claims the tracking database for token and returns the
// position to continue from. The fence row is the truth: a holder may have
// committed a batch there and died before its release-and-advance reached
// Raft, and only the fence row knows the gaps it left open. granted is the
// cursor as the leader had it when it granted token; the local replica may
// not have applied the last advance yet, which is no cause for alarm.
func (l *Loop) startPosition(ctx context.Context, token uint64, granted fsm.Cursor) (Position, bool, error) {
	qctx, cancel := l.dbContext(ctx)
	defer cancel()
	fence, err := l.sink.Claim(qctx, token)
	if err != nil {
		if errors.Is(err, ErrFenced) {
			return Position{}, false, errors.Join(err, errLeaseLost)
		}
		l.health.Tracking(ctxOr(ctx, err))
		return Position{}, false, fmt.Errorf("claim the tracking database (token %d): %w", token, err)
	}
	l.health.Tracking(nil)
	st, _ := l.coord.Watch()
	replicated := positionOf(st)
	switch {
	case fence.Position.LastEventID < granted.LastEventID:
		return Position{}, false, fmt.Errorf("the tracking database is at event %d but the replicated cursor is at %d: was the tracking database restored from an older backup? Restore a newer one, or reset the cursor deliberately",
			fence.Position.LastEventID, granted.LastEventID)
	case fence.Position.LastEventID > granted.LastEventID:
		l.logger.Warn("adopting the position of the tracking database: the previous holder committed a batch but did not advance the cursor",
			"token", token, "fence_last_id", fence.Position.LastEventID, "cursor_last_id", granted.LastEventID)
	}
	// Recorded in Raft with the next advance if the local replica differs.
	return fence.Position, !samePosition(fence.Position, replicated), nil
}

func samePosition(a, b Position) bool {
	if a.LastEventID != b.LastEventID || len(a.Gaps) != len(b.Gaps) {
		return false
	}
	for i := range a.Gaps {
		if a.Gaps[i].ID != b.Gaps[i].ID {
			return false
		}
	}
	return true
}

// release frees the lease after a failure, best effort: if it does not
// reach the leader the lease expires or is revoked anyway.
func (l *Loop) release(token uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := l.releaseNow(ctx, token); err != nil {
		l.logger.Debug("release lease", "token", token, "error", err)
	}
}

func (l *Loop) releaseNow(ctx context.Context, token uint64) error {
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
		terr := l.sink.Ping(qctx)
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

// renewer keeps a grant alive while a long batch runs. An advance that
// keeps the lease counts as a renewal. If renewing fails and the lease
// would run out before the next try, the holder's work is cancelled: it
// must stop before another peer may take over.
type renewer struct {
	l     *Loop
	token uint64
	mu    sync.Mutex
	last  time.Time // when the lease was last extended, by the local clock
}

func newRenewer(l *Loop, token uint64) *renewer {
	return &renewer{l: l, token: token, last: time.Now()}
}

func (r *renewer) renewed() {
	r.mu.Lock()
	r.last = time.Now()
	r.mu.Unlock()
}

func (r *renewer) run(ctx context.Context, cancel context.CancelCauseFunc) {
	every := r.l.cfg.LeaseTTL / 3
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		since := time.Since(r.last)
		r.mu.Unlock()
		if since < every {
			continue
		}
		res, err := r.l.coord.Apply(ctx, fsm.Command{Op: fsm.OpRenew, Node: r.l.coord.ID(), Token: r.token, TTL: r.l.cfg.LeaseTTL})
		switch {
		case err == nil && res.Err == nil:
			r.renewed()
		case err == nil:
			r.l.logger.Warn("lease lost while processing; stopping and discarding the batch", "token", r.token, "error", res.Err)
			cancel(errLeaseLost)
			return
		case ctx.Err() != nil:
			return
		case since+every/2 >= r.l.cfg.LeaseTTL*2/3:
			r.l.logger.Warn("cannot renew the lease in time; stopping and discarding the batch", "token", r.token, "error", err)
			cancel(errLeaseLost)
			return
		default:
			r.l.logger.Debug("renew lease failed; retrying", "token", r.token, "error", err)
		}
	}
}

// ctxOr hides errors caused only by ctx ending, so a shutdown does not
// show as a database failure.
func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func wait(ctx context.Context, changed <-chan struct{}, max time.Duration) {
	t := time.NewTimer(max)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-changed:
	case <-t.C:
	}
}

type backoff struct {
	min, max, cur time.Duration
}

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max} }

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(2*b.cur, b.max)
	}
	// Jitter keeps peers that failed together from retrying together.
	return b.cur/2 + rand.N(b.cur/2+1)
}

func (b *backoff) reset() { b.cur = 0 }

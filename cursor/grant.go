package cursor

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// errLeaseLost ends a grant whose lease is gone (refused, revoked, expired,
// or fenced by a newer token): nothing is released, since it is no longer
// this peer's to release.
var errLeaseLost = errors.New("lease lost")

// errGateClosed ends a grant whose site may no longer process (the gate:
// the site was promoted, or GitLab's own cursor took its lease): its lease
// is released at once, and the loop waits for the gate.
var errGateClosed = errors.New("processing closed by GitLab's shared state")

// errNothingNew ends a grant that found nothing to process after all
// (another peer got there first): its lease is released at once.
var errNothingNew = errors.New("nothing new to process")

// grant is everything that lives for one lease grant, as hashicorp/raft's
// leaderState is for one term: set up by newGrant when the lease is
// obtained, changed only by its methods, and ended by close, the only way
// out.
//
// Through a backlog four batches are in the air at once: while batch i
// commits in the tracking database, i+1 stages (opens its transaction and
// inserts its jobs, which take no lock), i+2 is read from the source, and
// i-1's release-and-advance goes through Raft. Commits and advances stay
// in batch order: a staged batch takes the fence row's lock only in its
// commit, and commits only if its start is where the batch before it left
// the fence. The prefetch and the staged batch are dropped whenever the
// position changes any other way.
type grant struct {
	l     *Loop
	token uint64
	// granted is the cursor the leader had when it made the grant.
	granted fsm.Cursor
	// parent is the loop's context; ctx is the grant's, cancelled when it
	// ends or the renewer finds the lease lost (the cause says which).
	parent  context.Context
	ctx     context.Context
	cancel  context.CancelCauseFunc
	renewer *renewer
	renewWG sync.WaitGroup

	// pos is where the next batch starts; adopted says it came from the
	// fence row and differs from the replicated cursor, so it is recorded
	// in Raft even if no event follows.
	pos     Position
	adopted bool
	// replicatedGaps is the open-gap set of the replicated state, when
	// replicatedKnown: what an advance's gap delta is made from.
	replicatedGaps  []fsm.Gap
	replicatedKnown bool
	// prefetch is the next batch's read, started while the last one
	// stages and commits.
	prefetch <-chan fetchResult
	// committing is the last batch, staged: its commit runs while the next
	// batch stages.
	committing *pendingBatch
	// inflight is the last release-and-advance, on its way through Raft.
	inflight *progressCall
	// folded counts the committed batches not yet recorded in Raft: while
	// the lease is kept, an advance goes out at most every AdvanceInterval
	// and carries the position of the last batch and the counts of all.
	// Only full batches keep the lease, so folded.Batches > 0 whenever a
	// committed batch is not recorded yet.
	folded   fsm.Advance
	lastSent time.Time
	// seq numbers the grant's advances, so that a retried advance whose
	// first answer was lost is not applied twice.
	seq uint64
}

// newGrant sets up the grant of granted and starts its renewer.
func (l *Loop) newGrant(parent context.Context, granted fsm.Result) *grant {
	ctx, cancel := context.WithCancelCause(parent)
	g := &grant{
		l: l, token: granted.Lease.Token, granted: granted.Cursor, parent: parent, ctx: ctx, cancel: cancel, seq: 1,
		renewer: &renewer{coord: l.coord, token: granted.Lease.Token, ttl: l.cfg.LeaseTTL, logger: l.logger, last: time.Now()},
	}
	g.renewWG.Add(1)
	go func() {
		defer g.renewWG.Done()
		g.renewer.run(ctx, cancel)
	}()
	return g
}

// close ends the grant with the outcome of run: it settles what is still
// in the air (a staged batch is rolled back, the advance in flight is
// waited for so that a release cannot overtake it), stops the renewer and
// releases the lease, unless the last advance released it already (err is
// nil) or the lease is lost.
func (g *grant) close(err error) error {
	if g.committing != nil {
		g.committing.staged.Abort()
		g.committing = nil
	}
	if g.inflight != nil {
		<-g.inflight.done
		g.inflight = nil
	}
	g.cancel(nil)
	g.renewWG.Wait()
	if errors.Is(context.Cause(g.ctx), errLeaseLost) && g.parent.Err() == nil {
		err = fmt.Errorf("token %d: %w", g.token, context.Cause(g.ctx))
	}
	switch {
	case err == nil, errors.Is(err, errLeaseLost):
		return err
	case errors.Is(err, errNothingNew):
		g.l.logger.Info(msgLeaseReleased, "token", g.token, "count", 0)
		return g.l.release(g.parent, g.token)
	case errors.Is(err, errGateClosed):
		g.l.logger.Info(msgLeaseReleased, "token", g.token, "last_id", g.pos.LastEventID, "reason", g.l.gateClosed())
		return g.l.release(g.parent, g.token)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if rerr := g.l.release(ctx, g.token); rerr != nil {
		g.l.logger.Debug("release lease", "token", g.token, "error", rerr)
	}
	return err
}

// run processes batches until there is no more work (nil: the last advance
// released the lease), nothing new was found (errNothingNew), or the grant
// must end.
func (g *grant) run() error {
	l := g.l
	if err := g.startPosition(); err != nil {
		return err
	}
	for {
		if l.gateClosed() != "" {
			return errGateClosed
		}
		batchStart := time.Now()
		events, reread, err := g.read()
		if err != nil {
			return err
		}
		if reread {
			continue
		}
		fetchedAt := time.Now()
		next, dropped, pruned := g.nextPosition(events)
		g.logNewGaps(next)
		if len(dropped) > 0 {
			l.logger.Warn("gave up waiting for skipped event IDs (rolled back, or older than source.gap_timeout)",
				"count", len(dropped), "first_id", dropped[0], "last_id", dropped[len(dropped)-1], "token", g.token)
		}
		// Keep the lease for the next batch only while there is more to do
		// and nobody asked to pause.
		st, _ := l.coord.Watch()
		yield := st.Cursor.Paused || l.yieldWanted(st)
		keep := len(events) >= l.cfg.BatchSize && !yield
		if keep {
			g.prefetch = l.fetchAsync(g.ctx, next)
		}
		p := &pendingBatch{start: g.pos, events: events, next: next, dropped: len(dropped), prunedUnseen: pruned.count,
			keep: keep, batchStart: batchStart, fetched: fetchedAt}
		var staging <-chan stageResult
		if len(events) > 0 || len(dropped) > 0 || pruned.count > 0 {
			staging = l.stageAsync(g.ctx, Batch{Token: g.token, Start: g.pos, Next: next, Events: events})
		}
		if again, err := g.commitLastAndStage(p, staging); err != nil || again {
			if err != nil {
				return err
			}
			continue
		}

		if p.staged == nil && !g.adopted && g.folded.Batches == 0 {
			if err := g.awaitProgress(); err != nil {
				return err
			}
			return errNothingNew
		}
		g.pos, g.adopted = next, false
		if keep {
			g.committing = p
			continue
		}
		// Caught up: commit the batch now. A healthy holder keeps its
		// lease while work keeps arriving, so that a steady load costs an
		// advance every AdvanceInterval instead of an acquire and a
		// release per batch; after a quiet spell it releases with a last
		// advance.
		hold := !yield && l.cfg.QuietSpell > 0
		p.keep = hold
		again, err := g.commitOrAdopt(p)
		if err != nil {
			return err
		}
		if again {
			continue
		}
		if hold {
			work, err := g.awaitWork()
			if err != nil {
				return err
			}
			if work {
				continue
			}
			if err := g.record(&pendingBatch{start: g.pos, next: g.pos}, CommitResult{}); err != nil {
				return err
			}
		}
		if err := g.awaitProgress(); err != nil {
			return err
		}
		l.logger.Info(msgLeaseReleased, "token", g.token, "last_id", g.pos.LastEventID, "open_gaps", len(g.pos.Gaps))
		return nil
	}
}

// awaitWork waits, while the grant holds its lease, for new events, a gap
// that became visible or one that timed out: true when there is work,
// false after QuietSpell without any (or once processing is paused). The
// holder looks every holdPoll, more often than an idle peer, since the
// lag of every event it waits for is in that wait.
func (g *grant) awaitWork() (bool, error) {
	l := g.l
	quietUntil := time.Now().Add(l.cfg.QuietSpell)
	for time.Now().Before(quietUntil) {
		if err := api.Sleep(g.ctx, l.cfg.holdPoll()); err != nil {
			return false, err
		}
		if _, err := g.pollProgress(); err != nil {
			return false, err
		}
		if st, _ := l.coord.Watch(); st.Cursor.Paused || l.yieldWanted(st) {
			return false, nil
		}
		st := fsm.State{Cursor: fsm.Cursor{LastEventID: g.pos.LastEventID}, Gaps: g.pos.Gaps}
		work, err := l.hasWork(g.ctx, st, time.Now())
		if err != nil || work {
			return work, err
		}
	}
	return false, nil
}

// read returns the next batch's events: the prefetch if there is one,
// else a fresh read. When the prefetch is not ready while a staged batch
// waits, it commits that batch first rather than keep its transaction open
// while the source answers; again says the position moved (adopted from
// the fence) and the batch must be read anew.
func (g *grant) read() (events []Event, again bool, err error) {
	if g.prefetch != nil && g.committing != nil {
		select {
		case r := <-g.prefetch:
			g.prefetch = fetched(r)
		default:
			c := g.committing
			g.committing = nil
			if again, err := g.commitOrAdopt(c); err != nil || again {
				return nil, again, err
			}
		}
	}
	if g.prefetch != nil {
		r := <-g.prefetch
		events, err, g.prefetch = r.events, r.err, nil
	} else {
		events, err = g.l.fetch(g.ctx, g.pos)
	}
	g.l.health.Source(ctxOr(g.ctx, err))
	return events, false, err
}

// commitLastAndStage commits the staged batch before p, if any, while p
// stages, and takes p's staging. If either fails, p is dropped; a fenced
// failure is resolved from the fence row (again: go on from there).
func (g *grant) commitLastAndStage(p *pendingBatch, staging <-chan stageResult) (again bool, err error) {
	var (
		commitErr error
		failed    *pendingBatch
	)
	if g.committing != nil {
		failed, g.committing = g.committing, nil
		commitErr = g.commit(failed)
	}
	var stageErr error
	if staging != nil {
		sr := <-staging
		p.staged, stageErr = sr.staged, sr.err
	}
	if commitErr == nil && stageErr == nil {
		return false, nil
	}
	if p.staged != nil {
		p.staged.Abort()
	}
	err, start := commitErr, failed
	if err == nil {
		err, start = stageErr, p
		if !errors.Is(err, ErrFenced) {
			g.l.health.Tracking(ctxOr(g.ctx, err))
		}
	}
	if !errors.Is(err, ErrFenced) {
		return false, fmt.Errorf("commit batch: %w", err)
	}
	return g.adoptFence(err, start.start)
}

// commitOrAdopt commits p and records it; when p is fenced, it decides from
// the fence row whether to go on from there (again) or end the grant.
func (g *grant) commitOrAdopt(p *pendingBatch) (again bool, err error) {
	err = g.commit(p)
	switch {
	case err == nil:
		return false, nil
	case !errors.Is(err, ErrFenced):
		return false, fmt.Errorf("commit batch: %w", err)
	}
	return g.adoptFence(err, p.start)
}

// commit commits p, the oldest batch in the air, and records it.
func (g *grant) commit(p *pendingBatch) error {
	var res CommitResult
	if p.staged != nil {
		qctx, cancel := g.l.dbContext(g.ctx)
		began := time.Now()
		var err error
		res, err = p.staged.Commit(qctx)
		cancel()
		if err != nil {
			if !errors.Is(err, ErrFenced) {
				g.l.health.Tracking(ctxOr(g.ctx, err))
			}
			return err
		}
		g.l.health.Tracking(nil)
		g.l.cfg.Metrics.batchCommitted(p, began)
		p.log(g.l.logger, g.token, res, time.Now())
	}
	return g.record(p, res)
}

// adoptFence decides what a batch refused as fenced means, start being
// where it began: a holder with an older token slipped a batch in before
// this one claimed the fence (go on from the fence: again), or this grant
// is over.
func (g *grant) adoptFence(fencedErr error, start Position) (again bool, err error) {
	if err := g.awaitProgress(); err != nil {
		return false, errors.Join(fencedErr, err)
	}
	qctx, cancel := g.l.dbContext(g.ctx)
	f, rerr := g.l.tracking.Fence(qctx)
	cancel()
	switch {
	case rerr != nil || f.Token > g.token:
		return false, fmt.Errorf("commit batch: %w", errors.Join(fencedErr, errLeaseLost))
	case f.Token == g.token && f.Position.Same(start):
		// Nobody moved the fence: the batch collided with rows that are
		// already there for events after it. Going on from the fence would
		// collide again.
		err := fmt.Errorf("the tracking database already has rows for events after its fence at event %d; "+
			"was it restored, or the fence reset, without geo_jobs and geo_dead_letters? %w", start.LastEventID, fencedErr)
		g.l.health.Tracking(err)
		return false, err
	}
	g.l.logger.Info("tracking database moved on before this batch; continuing from its fence", "token", g.token, "fence_last_id", f.Position.LastEventID)
	g.pos, g.adopted, g.prefetch = f.Position, true, nil
	return true, nil
}

// startPosition claims the tracking database for the grant's token and
// sets the position to continue from. The fence row is the truth: a holder
// may have committed a batch there and died before its release-and-advance
// reached Raft, and only the fence row knows the gaps it left open. The
// granted cursor is the leader's at grant time; the local replica may not
// have applied the last advance yet, which is no cause for alarm. A fresh
// tracking database is placed (place); one that GitLab's own log cursor
// has had since geocursor processed is taken over again (retake).
func (g *grant) startPosition() error {
	l := g.l
	qctx, cancel := l.dbContext(g.ctx)
	defer cancel()
	fence, err := l.tracking.Claim(qctx, g.token)
	if err != nil {
		if errors.Is(err, ErrFenced) {
			l.noteFencedClaim(qctx, g.token)
			return errors.Join(err, errLeaseLost)
		}
		l.health.Tracking(ctxOr(g.ctx, err))
		return fmt.Errorf("claim the tracking database (token %d): %w", g.token, err)
	}
	l.health.Tracking(nil)
	l.fencedClaims = 0
	granted := g.granted
	// A fence row that is not positioned and has never moved is a fresh
	// tracking database; one that moved and is not positioned was handed
	// back to GitLab's own log cursor.
	placed := !fence.Positioned && fence.Position.LastEventID == 0
	retaken := false
	if placed {
		if fence, err = g.place(qctx); err != nil {
			return err
		}
	} else if fence, retaken, err = g.retake(qctx, fence); err != nil {
		return err
	}
	if err := g.readHorizon(qctx); err != nil {
		return err
	}
	st, _ := l.coord.Watch()
	switch {
	case fence.Position.LastEventID < granted.LastEventID:
		return fmt.Errorf("the tracking database is at event %d but the replicated cursor is at %d: was the tracking database restored from an older backup? Restore a newer one, or move the cursor deliberately with `geocursor cursor set -event-id N -force`",
			fence.Position.LastEventID, granted.LastEventID)
	case fence.Position.LastEventID > granted.LastEventID && !placed && !retaken:
		l.logger.Warn("adopting the position of the tracking database: the previous holder committed a batch but did not advance the cursor",
			"token", g.token, "fence_last_id", fence.Position.LastEventID, "cursor_last_id", granted.LastEventID)
	}
	// Recorded in Raft with the next advance if the local replica differs.
	g.pos, g.adopted = fence.Position, !fence.Position.Same(positionOf(st))
	// The fence row is never behind the replicated cursor, and positions
	// only move forward, so a fence equal to the local replica is also
	// the leader's state. Were it not, the first delta would be refused
	// (fsm.ErrGapBase) and nothing recorded wrongly.
	g.replicatedGaps, g.replicatedKnown = g.pos.Gaps, !g.adopted
	return nil
}

// place positions the fence of a fresh tracking database where processing
// begins (design section 11): right after the row GitLab's own log cursor
// left in event_log_states, when the site switches over from it; else at
// source.start, after the newest event (head) or before the oldest one the
// primary keeps (oldest). A replicated cursor that has moved already means
// this is not the tracking database the group has been writing to.
func (g *grant) place(ctx context.Context) (Fence, error) {
	l := g.l
	if g.granted.LastEventID > 0 {
		err := fmt.Errorf("the tracking database has never been written to by geocursor, but the replicated cursor is at event %d: "+
			"point tracking.dsn at the database this group has been writing to (a fresh one would skip every event before %d)",
			g.granted.LastEventID, g.granted.LastEventID)
		l.health.Tracking(err)
		return Fence{}, err
	}
	var (
		start Position
		why   string
	)
	id, fromGitLab, err := l.tracking.GitLabCursor(ctx)
	switch {
	case err != nil:
		return Fence{}, fmt.Errorf("place the fence (token %d): %w", g.token, err)
	case fromGitLab:
		start.LastEventID, why = id, "after the last event GitLab's own log cursor processed (event_log_states)"
		if start.Gaps, err = g.adoptGitLabGaps(ctx, id, Position{}); err != nil {
			return Fence{}, fmt.Errorf("place the fence (token %d): %w", g.token, err)
		}
	case l.cfg.Start == StartOldest:
		oldest, err := l.source.Oldest(ctx)
		if err != nil {
			l.health.Source(ctxOr(ctx, err))
			return Fence{}, fmt.Errorf("place the fence (token %d): %w", g.token, err)
		}
		start.LastEventID, why = max(oldest-1, 0), "at the oldest event the primary keeps (source.start = oldest)"
	default:
		head, date, err := l.source.Head(ctx)
		if err != nil {
			l.health.Source(ctxOr(ctx, err))
			return Fence{}, fmt.Errorf("place the fence (token %d): %w", g.token, err)
		}
		start.LastEventID, start.LastEventDate = head, date
		why = "after the newest event; older ones are left to backfill (source.start = head)"
	}
	f, err := l.tracking.Place(ctx, g.token, start)
	if err != nil {
		if errors.Is(err, ErrFenced) {
			return Fence{}, errors.Join(err, errLeaseLost)
		}
		l.health.Tracking(ctxOr(ctx, err))
		return Fence{}, fmt.Errorf("place the fence (token %d): %w", g.token, err)
	}
	l.logger.Info("a fresh tracking database: processing begins "+why, "token", g.token, "last_id", start.LastEventID,
		"open_gaps", len(start.Gaps))
	return f, nil
}

// adoptGitLabGaps returns the gaps GitLab's own cursor left open at or
// below its last event (design section 13): the group takes them over as
// open gaps of its own, first seen when GitLab saw them, so that an event
// of theirs that commits later is processed once, and one that never does
// is given up after source.gap_timeout counted from GitLab's sighting. IDs
// above last come as new events anyway. When the site had been
// geocursor's before, decided is where geocursor left it, and the IDs it
// decided are not reopened (gitLabGapsToAdopt). The group removes them
// from GitLab's set only once its cursor has recorded them
// (gitlab.Watcher).
func (g *grant) adoptGitLabGaps(ctx context.Context, last int64, decided Position) ([]fsm.Gap, error) {
	l := g.l
	if l.cfg.GitLabGaps == nil {
		return nil, nil
	}
	all, err := l.cfg.GitLabGaps.OpenGaps(ctx)
	if err != nil {
		return nil, fmt.Errorf("adopt GitLab's open gaps: %w", err)
	}
	gaps := gitLabGapsToAdopt(all, last, decided)
	if over := len(gaps) - l.cfg.MaxGaps; over > 0 {
		l.logger.Warn("GitLab's gap set holds more gaps than geocursor keeps; the oldest IDs are given up",
			"count", over, "first_id", gaps[0].ID, "last_id", gaps[over-1].ID, "max_gaps", l.cfg.MaxGaps)
		gaps = gaps[over:]
	}
	if len(gaps) > 0 {
		l.logger.Info("adopting the gaps GitLab's own log cursor left open (geo:event_log:gaps)",
			"count", len(gaps), "first_id", gaps[0].ID, "last_id", gaps[len(gaps)-1].ID, "token", g.token)
	}
	return gaps, nil
}

// readHorizon reads the source's oldest event ID, the horizon below which
// the primary has pruned its log, at most every horizonInterval: a
// horizon above the cursor means events were pruned before this site saw
// them (pastHorizon).
func (g *grant) readHorizon(ctx context.Context) error {
	l := g.l
	if !l.horizonRead.IsZero() && time.Since(l.horizonRead) < horizonInterval {
		return nil
	}
	oldest, err := l.source.Oldest(ctx)
	if err != nil {
		l.health.Source(ctxOr(ctx, err))
		return fmt.Errorf("read the oldest event (token %d): %w", g.token, err)
	}
	l.horizon, l.horizonRead = oldest, time.Now()
	return nil
}

// nextPosition is NextPosition from the grant's position, first moved past
// the pruning horizon when the log was pruned past it by more than the gap
// set holds; the IDs given up below the horizon count as pruned.
func (g *grant) nextPosition(events []Event) (Position, []int64, pruned) {
	l := g.l
	start, p := pastHorizon(g.pos, l.horizon, l.cfg.MaxGaps-len(g.pos.Gaps))
	next, dropped := NextPosition(start, events, l.clock.now(), l.cfg.GapTimeout, l.cfg.MaxGaps)
	if p.count > 0 {
		l.logger.Error("the primary pruned events from its log before this site processed them: they are skipped",
			"first_id", p.unseenFirst, "last_id", p.unseenLast, "count", p.count, "oldest_id", l.horizon, "token", g.token)
	}
	below, dropped := belowHorizon(dropped, l.horizon)
	if below.count > 0 {
		l.logger.Error("the primary pruned events from its log before this site processed them (or they were rolled back): given up after source.gap_timeout",
			"first_id", below.unseenFirst, "last_id", below.unseenLast, "count", below.count, "oldest_id", l.horizon, "token", g.token)
		p.add(below)
	}
	return next, dropped, p
}

// msgGapDetected is GitLab's own line for IDs its cursor skipped
// (ee/lib/gitlab/geo/event_gap_tracking.rb), so that log alerting on
// geo.log keeps working.
const msgGapDetected = "Event log gap detected"

// logNewGaps logs the gaps next opens above the grant's position: IDs
// drawn from the sequence but not yet visible.
func (g *grant) logNewGaps(next Position) {
	var opened []int64
	for _, gap := range next.Gaps {
		if gap.ID > g.pos.LastEventID {
			opened = append(opened, gap.ID)
		}
	}
	if len(opened) == 0 {
		return
	}
	g.l.logger.Info(msgGapDetected, "previous_event_id", opened[0]-1, "current_event_id", next.LastEventID,
		"count", len(opened), "first_id", opened[0], "last_id", opened[len(opened)-1], "token", g.token)
}

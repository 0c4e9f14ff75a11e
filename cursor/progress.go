package cursor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// Recording a grant's progress in Raft: the release-and-advance of the
// batches it committed, at most one in flight, folded while the lease is
// kept through a backlog.

// record records p in Raft, or folds it into the next advance while the
// lease is kept and the last advance is recent or unanswered.
func (g *grant) record(p *pendingBatch, res CommitResult) error {
	g.folded.Events += uint64(len(p.events))
	g.folded.DeadLetters += uint64(res.DeadLetters)
	g.folded.GapsDropped += uint64(p.dropped)
	g.folded.PrunedUnseen += uint64(p.prunedUnseen)
	if len(p.events) > 0 {
		g.folded.Batches++
	}
	if p.keep {
		if time.Since(g.lastSent) < g.l.cfg.AdvanceInterval {
			return nil
		}
		// While Raft is slow (an election), fold rather than wait: the
		// next batch's transaction is open and must not sit idle.
		if done, err := g.pollProgress(); err != nil || !done {
			return err
		}
	}
	if err := g.awaitProgress(); err != nil {
		return err
	}
	adv := &fsm.Advance{
		LastEventID: p.next.LastEventID, LastEventDate: fsm.Nanos(p.next.LastEventDate),
		Keep: p.keep, Seq: g.seq, Events: g.folded.Events, DeadLetters: g.folded.DeadLetters,
		GapsDropped: g.folded.GapsDropped, PrunedUnseen: g.folded.PrunedUnseen, Batches: g.folded.Batches,
	}
	g.setGaps(adv, p.next.Gaps)
	a := &progressCall{
		cmd:    fsm.Command{Op: fsm.OpAdvance, Node: g.l.coord.ID(), Token: g.token, TTL: g.l.cfg.LeaseTTL, Advance: adv},
		lastID: p.next.LastEventID, gaps: p.next.Gaps, sent: time.Now(),
	}
	g.seq++
	g.folded, g.lastSent = fsm.Advance{}, a.sent
	g.inflight = a.start(g.ctx, g.l.coord)
	return nil
}

// settle takes the answer to the advance in flight. Its batches are
// committed in the tracking database whatever the answer: if the advance
// failed, the next holder adopts the position from the fence row.
func (g *grant) settle(a *progressCall) error {
	g.inflight = nil
	g.l.cfg.Metrics.advanced(a)
	if a.err == nil {
		g.l.clock.observe(a.res.Now)
	}
	// Until an advance is known to be applied, the replicated gap set is
	// unknown and the next advance carries the whole set.
	g.replicatedGaps, g.replicatedKnown = a.gaps, false
	if err := a.check(); err != nil {
		return err
	}
	g.replicatedKnown = true
	g.renewer.renewed()
	a.log(g.l.logger)
	return nil
}

// setGaps puts the open gaps after the advance into it: as a delta from
// the replicated set when the grant knows that set, which keeps the Raft
// entry small however many gaps are open, else as the whole set.
func (g *grant) setGaps(adv *fsm.Advance, gaps []fsm.Gap) {
	if !g.replicatedKnown {
		adv.Gaps = gaps
		return
	}
	adv.GapsDelta, adv.GapsBase = true, fsm.GapSum(g.replicatedGaps)
	adv.GapsClosed, adv.GapsOpened = gapDelta(g.replicatedGaps, gaps)
}

// awaitProgress waits for the advance in flight, if any.
func (g *grant) awaitProgress() error {
	if g.inflight == nil {
		return nil
	}
	return g.settle(<-g.inflight.done)
}

// pollProgress settles the advance in flight if it is answered, and tells
// whether none is left.
func (g *grant) pollProgress() (bool, error) {
	if g.inflight == nil {
		return true, nil
	}
	select {
	case a := <-g.inflight.done:
		return true, g.settle(a)
	default:
		return false, nil
	}
}

// progressCall is one release-and-advance on its way through Raft: it
// records the batches committed since the last one, with what its log line
// needs once it is applied.
type progressCall struct {
	cmd    fsm.Command
	lastID int64
	// gaps is the open-gap set once the advance is applied.
	gaps    []fsm.Gap
	sent    time.Time
	applied time.Time
	res     fsm.Result
	err     error
	// resolved says the answer came from a renew after the advance's own
	// answer was lost (see apply).
	resolved bool
	done     chan *progressCall
}

// start applies the advance in the background; done delivers the call once
// it has an outcome.
func (a *progressCall) start(ctx context.Context, coord Coordinator) *progressCall {
	a.done = make(chan *progressCall, 1)
	go func() {
		a.res, a.err = a.apply(ctx, coord)
		a.applied = time.Now()
		a.done <- a
	}()
	return a
}

// apply applies the advance. When its outcome is unknown (the leader died
// or lost leadership while applying it) and it keeps the lease, the holder
// finds out with a renew, whose answer counts the advances applied under
// the token: an advance that was applied is done, one that was not is sent
// again (its Seq makes that safe either way). So the death of a leader
// that does not hold the lease ends no grant: the holder's batches went on
// committing in the tracking database meanwhile, folded into the next
// advance, and its progress is recorded once a leader is back. An advance
// that releases the lease ends the grant anyway, and the next holder
// adopts its position from the fence row.
func (a *progressCall) apply(ctx context.Context, coord Coordinator) (fsm.Result, error) {
	res, err := coord.Apply(ctx, a.cmd)
	backoff := api.Backoff{Min: 10 * time.Millisecond, Max: 200 * time.Millisecond}
	for a.cmd.Advance.Keep && errors.Is(err, api.ErrUnknownOutcome) && ctx.Err() == nil {
		// A leader that keeps failing mid-request must not be asked in a
		// tight loop; the grant's context ends it when the lease cannot be
		// renewed in time.
		if backoff.Wait(ctx) != nil {
			break
		}
		renew := fsm.Command{Op: fsm.OpRenew, Node: a.cmd.Node, Token: a.cmd.Token, TTL: a.cmd.TTL}
		r, rerr := coord.Apply(ctx, renew)
		switch {
		case errors.Is(rerr, api.ErrUnknownOutcome):
			continue
		case rerr != nil:
			return res, errors.Join(err, rerr)
		case r.Err != nil:
			// The lease is gone, whatever became of the advance: the next
			// holder adopts the position from the fence row.
			return r, nil
		case r.Lease.Advances >= a.cmd.Advance.Seq:
			a.resolved = true
			return r, nil
		}
		res, err = coord.Apply(ctx, a.cmd)
	}
	return res, err
}

// check is the call's outcome for the grant: nil when recorded.
func (a *progressCall) check() error {
	token := a.cmd.Token
	if a.err != nil {
		// The batch is committed in the tracking database; whoever holds
		// the lease next adopts its position from the fence row.
		return fmt.Errorf("apply release-and-advance (token %d): %w", token, a.err)
	}
	if errors.Is(a.res.Err, fsm.ErrPaused) || errors.Is(a.res.Err, fsm.ErrGapBase) {
		// Paused after the batch was read with the lease kept, or a gap
		// delta made for a set the state does not hold: the lease is still
		// this peer's, the grant releases it on the way out, and the next
		// holder adopts the position from the fence row and records it
		// with the whole gap set.
		return fmt.Errorf("apply release-and-advance (token %d): %w", token, a.res.Err)
	}
	if a.res.Err != nil {
		return fmt.Errorf("apply release-and-advance (token %d): %w", token, errors.Join(a.res.Err, errLeaseLost))
	}
	return nil
}

// log records the advance's time through Raft.
func (a *progressCall) log(logger hclog.Logger) {
	logger.Debug(msgProgressRecorded, "token", a.cmd.Token, "last_id", a.lastID, "events", a.cmd.Advance.Events,
		"open_gaps", len(a.gaps), "delta", a.cmd.Advance.GapsDelta, "keep", a.cmd.Advance.Keep, "resolved", a.resolved, "raft_ms", ms(a.applied.Sub(a.sent)))
}

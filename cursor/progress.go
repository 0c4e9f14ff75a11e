package cursor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"

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
	a := &progressCall{
		cmd: fsm.Command{Op: fsm.OpAdvance, Node: g.l.coord.ID(), Token: g.token, TTL: g.l.cfg.LeaseTTL,
			Advance: &fsm.Advance{
				LastEventID: p.next.LastEventID, LastEventDate: fsm.Nanos(p.next.LastEventDate), Gaps: p.next.Gaps,
				Keep: p.keep, Seq: g.seq, Events: g.folded.Events, DeadLetters: g.folded.DeadLetters,
				GapsDropped: g.folded.GapsDropped, Batches: g.folded.Batches,
			}},
		lastID: p.next.LastEventID, openGaps: len(p.next.Gaps), sent: time.Now(),
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
	if a.err == nil {
		g.l.clock.observe(a.res.Now)
	}
	if err := a.check(); err != nil {
		return err
	}
	g.renewer.renewed()
	a.log(g.l.logger)
	return nil
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
	cmd      fsm.Command
	lastID   int64
	openGaps int
	sent     time.Time
	applied  time.Time
	res      fsm.Result
	err      error
	done     chan *progressCall
}

// start applies the advance in the background; done delivers the call once
// it has an outcome.
func (a *progressCall) start(ctx context.Context, coord Coordinator) *progressCall {
	a.done = make(chan *progressCall, 1)
	go func() {
		a.res, a.err = coord.Apply(ctx, a.cmd)
		a.applied = time.Now()
		a.done <- a
	}()
	return a
}

// check is the call's outcome for the grant: nil when recorded.
func (a *progressCall) check() error {
	token := a.cmd.Token
	if a.err != nil {
		// The batch is committed in the tracking database; whoever holds
		// the lease next adopts its position from the fence row.
		return fmt.Errorf("apply release-and-advance (token %d): %w", token, a.err)
	}
	if errors.Is(a.res.Err, fsm.ErrPaused) {
		// Paused after the batch was read with the lease kept: the lease
		// is still this peer's, and the grant releases it on the way out.
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
		"open_gaps", a.openGaps, "keep", a.cmd.Advance.Keep, "raft_ms", ms(a.applied.Sub(a.sent)))
}

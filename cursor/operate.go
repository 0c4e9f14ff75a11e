package cursor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// An operator's requests that this peer carries out because it reaches
// the tracking database: `geocursor cursor set` and `snapshot restore`
// (design section 12). Each takes the peer's turn (Loop.turn), so that it
// never runs beside one of the loop's grants.
//
// Each is called with the context of the operator's request, and every
// command it sends for it (reserve, acquire, set_cursor, restore,
// release) goes through the Coordinator with that context: the cluster
// forwards the operator's token from it to the leader, which takes
// reserve, set_cursor and restore only with that token, never on this
// peer's certificate alone. Never send them with a context of the loop's.

// fenceMover is what a cursor set needs of the tracking database beyond
// the loop's own port.
type fenceMover interface {
	MoveFence(ctx context.Context, token uint64, from Position, to Position, replay bool) (replayed int64, err error)
}

// eventCounter is what a cursor set needs of the source beyond the loop's
// own port.
type eventCounter interface {
	EventDate(ctx context.Context, id int64) (time.Time, error)
	CountBetween(ctx context.Context, after, upTo int64) (int64, error)
}

// opTimeout bounds an operator's request once it has the lease.
const opTimeout = 30 * time.Second

// SetCursor moves the cursor to req.EventID: under a lease of its own, it
// moves the fence row (forwards: the events in between are skipped and the
// open gaps given up; backwards, only with Force: the rows of the events
// after it are deleted, so that they are processed, and delivered, again),
// then the replicated cursor, and logs who did it.
func (l *Loop) SetCursor(ctx context.Context, req api.CursorSetRequest, who string) (api.CursorSetResponse, error) {
	resp := api.CursorSetResponse{To: req.EventID, By: who}
	mover, ok := l.tracking.(fenceMover)
	counter, ok2 := l.source.(eventCounter)
	if !ok || !ok2 {
		return resp, errors.New("this peer's databases cannot move the cursor")
	}
	if req.EventID < 0 {
		return resp, fmt.Errorf("%w: event_id %d is negative", api.ErrBadRequest, req.EventID)
	}
	if !req.Force {
		// Checked before the turn is taken, so that a typo costs the
		// holder no hand-over.
		if err := l.checkBelowHead(ctx, req.EventID); err != nil {
			return resp, err
		}
	}
	token, err := l.takeTurn(ctx)
	if err != nil {
		return resp, err
	}
	defer l.turn.Unlock()
	resp.Token = token
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	released := false
	defer func() {
		if !released {
			_ = l.release(octx, token)
		}
	}()

	fence, err := l.tracking.Claim(octx, token)
	if err != nil {
		return resp, fmt.Errorf("claim the tracking database (token %d): %w", token, err)
	}
	from := fence.Position
	resp.From = from.LastEventID
	back := req.EventID < from.LastEventID
	if back && !req.Force {
		return resp, fmt.Errorf("%w: the cursor is at %d; moving it back to %d processes the events after it again: pass -force to do so",
			fsm.ErrCursorBackwards, from.LastEventID, req.EventID)
	}
	to := Position{LastEventID: req.EventID}
	if to.LastEventDate, err = counter.EventDate(octx, req.EventID); err != nil {
		return resp, err
	}
	if !back {
		if resp.Skipped, err = counter.CountBetween(octx, from.LastEventID, req.EventID); err != nil {
			return resp, err
		}
		resp.GapsDropped = len(from.Gaps)
	}
	if resp.Replayed, err = mover.MoveFence(octx, token, from, to, back); err != nil {
		return resp, err
	}
	res, err := l.coord.Apply(octx, fsm.Command{Op: fsm.OpSetCursor, Node: l.coord.ID(), Token: token,
		SetCursor: &fsm.SetCursor{LastEventID: req.EventID, LastEventDate: fsm.Nanos(to.LastEventDate), Force: back}})
	if err == nil {
		err = res.Err
	}
	if err != nil {
		// The fence row has moved: the next holder adopts it if it is
		// ahead; one that moved back needs this command again.
		return resp, fmt.Errorf("the tracking database's fence row is at %d, but recording it in the group failed: %w; run the same cursor set again", req.EventID, err)
	}
	released = true
	l.awaitOwnCommand(octx, token)
	l.logger.Warn("cursor set by an operator", "by", who, "from", from.LastEventID, "to", req.EventID, "force", req.Force,
		"token", token, "skipped", resp.Skipped, "gaps_dropped", resp.GapsDropped, "replayed", resp.Replayed)
	return resp, nil
}

// checkBelowHead refuses a cursor set beyond the newest event the source
// holds: every event after it would be skipped as it comes, and GitLab's
// event_log_states would say the site is further than the primary.
func (l *Loop) checkBelowHead(ctx context.Context, id int64) error {
	qctx, cancel := l.dbContext(ctx)
	defer cancel()
	head, _, err := l.source.Head(qctx)
	if err != nil {
		return fmt.Errorf("read the source head: %w", err)
	}
	if id > head {
		return fmt.Errorf("%w: event %d is beyond the newest event in the source (%d): every event up to %d would be skipped as it comes; pass -force to do so",
			api.ErrBadRequest, id, head, id)
	}
	return nil
}

// Restore puts a saved state into a group that has processed nothing: the
// token is raised above the tracking database's, so that the next grant is
// newer than any the fence row has seen, and that grant then checks the
// fence against the restored cursor (adopting a fence ahead of it).
func (l *Loop) Restore(ctx context.Context, snap api.Snapshot, who string) (api.RestoreResponse, error) {
	resp := api.RestoreResponse{LastEventID: snap.Cursor.LastEventID, By: who}
	if snap.Format != api.SnapshotFormat {
		return resp, fmt.Errorf("%w: snapshot format %d, this agent reads format %d", api.ErrBadRequest, snap.Format, api.SnapshotFormat)
	}
	// The leader checks the restore it is sent (fsm.Command.CheckProposal);
	// checking the snapshot's own values here first refuses an insane one
	// before the lease is taken from the holder.
	early := fsm.Command{Op: fsm.OpRestore, Node: l.coord.ID(), Now: time.Now().UnixNano(), Restore: &fsm.Restore{
		Cursor: snap.Cursor, Gaps: snap.Gaps, Stats: snap.Stats, Token: snap.Token, Clock: snap.Clock}}
	if err := early.CheckProposal(); err != nil {
		return resp, fmt.Errorf("%w: the snapshot cannot be restored: %v", api.ErrBadRequest, err)
	}
	// The lease of its own keeps the other peers' grants out while the
	// state is replaced; the restore frees it.
	held, err := l.takeTurn(ctx)
	if err != nil {
		return resp, err
	}
	defer l.turn.Unlock()
	octx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	fence, err := l.tracking.Fence(octx)
	if err != nil {
		_ = l.release(octx, held)
		return resp, fmt.Errorf("read the fence row: %w", err)
	}
	token := max(snap.Token, fence.Token)
	res, err := l.coord.Apply(octx, fsm.Command{Op: fsm.OpRestore, Node: l.coord.ID(), Restore: &fsm.Restore{
		Cursor: snap.Cursor, Gaps: snap.Gaps, Stats: snap.Stats, Token: token, Clock: snap.Clock}})
	if err == nil {
		err = res.Err
	}
	if err != nil {
		_ = l.release(octx, held)
		return resp, fmt.Errorf("restore: %w", err)
	}
	resp.Token = res.Lease.Token
	for wctx, stop := context.WithTimeout(octx, 2*time.Second); ; {
		st, changed := l.coord.Watch()
		if st.Lease.Token >= resp.Token {
			stop()
			break
		}
		select {
		case <-changed:
		case <-wctx.Done():
		}
		if wctx.Err() != nil {
			stop()
			break
		}
	}
	l.logger.Warn("replicated state restored from a snapshot by an operator", "by", who, "last_id", snap.Cursor.LastEventID,
		"open_gaps", len(snap.Gaps), "token", resp.Token, "snapshot_taken_at", snap.TakenAt, "snapshot_from", snap.TakenFrom,
		"fence_last_id", fence.Position.LastEventID)
	return resp, nil
}

// awaitOwnCommand waits, briefly, until the local replica shows that this
// peer's grant of token has ended, so that the operator's next look at
// this node sees what was just done.
func (l *Loop) awaitOwnCommand(ctx context.Context, token uint64) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	for {
		st, changed := l.coord.Watch()
		if st.Lease.Token != token || st.Lease.Holder != l.coord.ID() {
			return
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return
		}
	}
}

// FenceState reads the fence row for `cursor show`.
func (l *Loop) FenceState(ctx context.Context) (api.Fence, error) {
	qctx, cancel := l.dbContext(ctx)
	defer cancel()
	f, err := l.tracking.Fence(qctx)
	if err != nil {
		return api.Fence{}, err
	}
	return api.Fence{Token: f.Token, LastEventID: f.Position.LastEventID, OpenGaps: len(f.Position.Gaps), Positioned: f.Positioned}, nil
}

// takeTurn waits for this peer's turn and the lease, and returns the
// token with the turn held. It reserves the next grant first (OpReserve):
// a holder that keeps its lease while work arrives hands it over at its
// next batch, and no other peer's loop takes it meanwhile. A holder that
// died is waited out: its lease expires.
func (l *Loop) takeTurn(ctx context.Context) (uint64, error) {
	backoff := api.Backoff{Min: 50 * time.Millisecond, Max: time.Second}
	for {
		if err := l.reserve(ctx); err != nil {
			return 0, err
		}
		l.turn.Lock()
		res, err := l.coord.Apply(ctx, fsm.Command{Op: fsm.OpAcquire, Node: l.coord.ID(), TTL: max(l.cfg.LeaseTTL, opTimeout)})
		if err == nil && res.Err == nil {
			return res.Lease.Token, nil
		}
		l.turn.Unlock()
		if err == nil && !errors.Is(res.Err, fsm.ErrLeaseHeld) {
			err = res.Err
		}
		if err != nil {
			return 0, fmt.Errorf("take the lease: %w", err)
		}
		if backoff.Wait(ctx) != nil {
			return 0, fmt.Errorf("take the lease: %w (held by %s)", res.Err, res.Lease.Holder)
		}
	}
}

// reserveTTL is how long an operator's reservation holds the next grant:
// long enough for a holder to finish its batch, or for a dead holder's
// lease to run out, and short enough that a request given up on does not
// stop processing for long. It is never over fsm.MaxReserveTTL, which the
// leader refuses; a reservation is renewed while the request waits.
func (l *Loop) reserveTTL() time.Duration {
	return min(max(2*l.cfg.LeaseTTL, 5*time.Second), fsm.MaxReserveTTL)
}

// reserve makes sure the next grant is reserved for this peer, renewing a
// reservation that has less than half its time left.
func (l *Loop) reserve(ctx context.Context) error {
	st, _ := l.coord.Watch()
	ttl := l.reserveTTL()
	if r := st.Reservation; r != nil && r.Node == l.coord.ID() && time.Until(fsm.Time(r.Until)) > ttl/2 {
		return nil
	}
	res, err := l.coord.Apply(ctx, fsm.Command{Op: fsm.OpReserve, Node: l.coord.ID(), TTL: ttl})
	if err == nil {
		err = res.Err
	}
	if err != nil {
		return fmt.Errorf("reserve the lease: %w", err)
	}
	return nil
}

// yieldWanted reports whether an operator's request (on this peer or
// another) has reserved the next grant: a holder then releases at its
// next batch instead of keeping the lease.
func (l *Loop) yieldWanted(st fsm.State) bool {
	return st.ReservedFor(time.Now().UnixNano()) != ""
}

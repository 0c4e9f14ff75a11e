package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// handlePause serves POST /v1/cursor/pause and /v1/cursor/resume on any
// node. Pausing stops new grants, so processing stops after the batch in
// flight; resuming lets the peers compete again. Both are idempotent.
// They take no body, or an empty object: like every other endpoint, they
// refuse unknown fields (and anything but one object) with a 400.
func (n *Node) handlePause(paused bool) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) (any, error) {
		if err := decodeOptionalBody(w, r, &struct{}{}); err != nil {
			return nil, err
		}
		return applyAnswer(n.Apply(r.Context(), fsm.Command{Op: fsm.OpSetPaused, Paused: paused}))
	}
}

// decodeOptionalBody is decodeBody for an endpoint whose body may be left
// out: an empty body (or one of white space only) is no body.
func decodeOptionalBody(w http.ResponseWriter, r *http.Request, dst any) error {
	data, err := io.ReadAll(r.Body)
	if err == nil && len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	// decodeBody reads the same bytes, and the same error after them
	// (a body over the limit is a 413 there).
	r.Body = io.NopCloser(io.MultiReader(bytes.NewReader(data), errReader{err}))
	return decodeBody(w, r, dst)
}

// errReader is a reader that fails with err, or ends (err nil).
type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	return 0, io.EOF
}

// Operator carries out the operator's requests that need the tracking
// database: a processing agent's cursor loop. A witness has none.
type Operator interface {
	SetCursor(ctx context.Context, req api.CursorSetRequest, who string) (api.CursorSetResponse, error)
	Restore(ctx context.Context, snap api.Snapshot, who string) (api.RestoreResponse, error)
	FenceState(ctx context.Context) (api.Fence, error)
}

// SetOperator installs the agent's Operator.
func (n *Node) SetOperator(o Operator) { n.operator.Store(&o) }

func (n *Node) operatorOrErr() (Operator, error) {
	if o := n.operator.Load(); o != nil {
		return *o, nil
	}
	return nil, fmt.Errorf("%w: %s has no tracking database (a witness): send this to a processing agent", api.ErrNotFound, n.cfg.NodeID)
}

// handleCursor serves GET /v1/cursor: the replicated cursor with its gaps,
// and the fence row if this node reaches the tracking database.
func (n *Node) handleCursor(w http.ResponseWriter, r *http.Request) (any, error) {
	st := n.fsm.State()
	out := api.CursorState{
		LastEventID:   st.Cursor.LastEventID,
		LastEventDate: timePtr(fsm.Time(st.Cursor.LastEventDate)),
		SafeEventID:   fsm.SafeEventID(st.Cursor.LastEventID, st.Gaps),
		Paused:        st.Cursor.Paused,
		Gaps:          st.Gaps,
		Lease:         api.Lease{Token: st.Lease.Token},
	}
	if out.Gaps == nil {
		out.Gaps = []fsm.Gap{}
	}
	if st.Lease.HeldAt(time.Now().UnixNano()) {
		h, exp := st.Lease.Holder, fsm.Time(st.Lease.ExpiresAt)
		out.Lease.Holder, out.Lease.ExpiresAt = &h, &exp
	}
	if o, err := n.operatorOrErr(); err == nil {
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if f, err := o.FenceState(ctx); err == nil {
			out.Fence = &f
		}
	}
	return out, nil
}

// handleCursorSet serves POST /v1/cursor/set on a processing agent.
func (n *Node) handleCursorSet(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.CursorSetRequest
	if err := decodeBody(w, r, &req); err != nil {
		return nil, err
	}
	o, err := n.operatorOrErr()
	if err != nil {
		return nil, err
	}
	who := callerOf(r.Context()).name()
	n.logger.Warn("cursor set requested", "by", who, "event_id", req.EventID, "force", req.Force)
	return o.SetCursor(r.Context(), req, who)
}

// handleSnapshot serves GET /v1/snapshot on the leader, from its state
// after a barrier: every command committed before is in it.
func (n *Node) handleSnapshot(w http.ResponseWriter, r *http.Request) (any, error) {
	if !n.IsLeader() {
		return nil, fmt.Errorf("%w: %s does not lead: save the snapshot from the leader", api.ErrNotLeader, n.cfg.NodeID)
	}
	if err := n.raft.Barrier(applyTimeout).Error(); err != nil {
		return nil, fmt.Errorf("barrier: %w", mapRaftError(err))
	}
	st := n.fsm.State()
	snap := api.Snapshot{
		Format: api.SnapshotFormat, TakenAt: time.Now().UTC(), TakenFrom: n.cfg.NodeID, Index: n.raft.AppliedIndex(),
		Token: st.Lease.Token, Cursor: st.Cursor, Gaps: st.Gaps, Stats: st.Stats, Clock: st.Clock,
	}
	snap.Cursor.Paused = false
	n.logger.Info("snapshot saved", "by", callerOf(r.Context()).name(), "last_id", st.Cursor.LastEventID, "index", snap.Index)
	return snap, nil
}

// handleRestore serves POST /v1/snapshot/restore on a processing agent.
func (n *Node) handleRestore(w http.ResponseWriter, r *http.Request) (any, error) {
	var snap api.Snapshot
	if err := decodeBody(w, r, &snap); err != nil {
		return nil, err
	}
	o, err := n.operatorOrErr()
	if err != nil {
		return nil, err
	}
	return o.Restore(r.Context(), snap, callerOf(r.Context()).name())
}

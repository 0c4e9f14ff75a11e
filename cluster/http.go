package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// route is one endpoint: who may call it, how big a body it takes, and
// its handler.
type route struct {
	pattern string
	access  access
	maxBody int64
	handler handlerFunc
}

// Body limits: a forwarded command may carry the whole gap set; nothing
// else needs more than a few hundred bytes.
const (
	maxCommandBody = api.MaxRequestBody
	maxSmallBody   = 64 << 10
)

// routes is the one table of the HTTP API. Every handler answers through
// wrap, which checks who is calling, bounds the body, encodes the reply
// and maps an error to its code and status in one place.
func (n *Node) routes() http.Handler {
	table := []route{
		{"GET " + api.PathHealth, accessOpen, 0, n.handleHealth},
		{"GET " + api.PathReady, accessOpen, 0, n.handleReady},
		{"GET " + api.PathStatus, accessRead, 0, n.handleStatus},
		{"GET " + api.PathMetrics, accessRead, 0, n.handleMetrics},
		{"GET " + api.PathRecent, accessRead, 0, n.handleRecent},
		{"POST " + api.PathJoin, accessPeer, maxSmallBody, n.handleJoin},
		{"POST " + api.PathRemove, accessRead, maxSmallBody, n.handleRemove},
		{"GET " + api.PathPeerInfo, accessPeer, 0, n.handlePeerInfo},
		{"POST " + api.PathApply, accessPeer, maxCommandBody, n.handleApply},
		{"POST " + api.PathLease + "{op}", accessOperator, maxSmallBody, n.handleLease},
		{"POST " + api.PathPause, accessOperator, maxSmallBody, n.handlePause(true)},
		{"POST " + api.PathResume, accessOperator, maxSmallBody, n.handlePause(false)},
		{"GET " + api.PathCursor, accessRead, 0, n.handleCursor},
		{"POST " + api.PathCursorSet, accessOperator, maxSmallBody, n.handleCursorSet},
		{"GET " + api.PathSnapshot, accessOperator, 0, n.handleSnapshot},
		{"POST " + api.PathRestore, accessOperator, maxCommandBody, n.handleRestore},
	}
	mux := http.NewServeMux()
	for _, rt := range table {
		mux.HandleFunc(rt.pattern, n.wrap(rt))
	}
	mux.Handle("GET "+api.PathUI, uiHandler()) // static: its data comes through the table
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Every reply, the mux's own 404 and 405 included: a browser must
		// take a JSON reply for what its Content-Type says, never sniff
		// it into HTML or a script.
		w.Header().Set("X-Content-Type-Options", "nosniff")
		mux.ServeHTTP(w, r)
	})
}

// handlerFunc serves one request: the reply to encode, or the error to
// answer with.
type handlerFunc func(w http.ResponseWriter, r *http.Request) (any, error)

// statusCoder is a reply that is served with a status of its own (a
// readiness answer that says not ready).
type statusCoder interface{ HTTPStatus() int }

// wrap turns rt into an http.HandlerFunc: the caller is identified and
// authorized first (and known to the handler through the request's
// context); a reply is encoded as JSON with status 200 (or its own), an
// error as {"error": {"code", "message"}} with the status of api's table.
func (n *Node) wrap(rt route) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c := n.identify(r)
		v, err := any(nil), n.authorize(c, rt.access)
		if err == nil && !n.raftUp.Load() && rt.pattern != "GET "+api.PathPeerInfo {
			err = fmt.Errorf("%w: %s is joining or forming its group; Raft is not running yet", api.ErrStarting, n.cfg.NodeID)
		}
		if err == nil {
			r.Body = http.MaxBytesReader(w, r.Body, max(rt.maxBody, 1))
			v, err = rt.handler(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
		}
		if err != nil {
			if errors.Is(err, api.ErrUnauthorized) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="geocursor"`)
			}
			writeJSON(w, api.HTTPStatus(err), map[string]any{"error": api.ErrorOf(err)})
			return
		}
		if h, ok := v.(http.Handler); ok { // a reply in another format than JSON
			h.ServeHTTP(w, r)
			return
		}
		status := http.StatusOK
		if sc, ok := v.(statusCoder); ok {
			status = sc.HTTPStatus()
		}
		writeJSON(w, status, v)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// decodeBody reads one JSON object, at most the route's body limit (413
// beyond it), rejecting unknown fields, so that a malformed request gets a
// 400 that says why.
func decodeBody(w http.ResponseWriter, r *http.Request, dst any) error {
	// Read the whole body before decoding, so that a body over the limit is
	// refused as too large (413) whatever its first bytes are, not as
	// malformed or as having data after the object.
	data, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return fmt.Errorf("%w: request body is larger than %d bytes", api.ErrTooLarge, tooBig.Limit)
		}
		return fmt.Errorf("%w: read request body: %v", api.ErrBadRequest, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return fmt.Errorf("%w: decode request body: %v", api.ErrBadRequest, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: request body has data after the JSON object", api.ErrBadRequest)
	}
	return nil
}

func (n *Node) handleHealth(w http.ResponseWriter, r *http.Request) (any, error) {
	if n.closing.Load() {
		return nil, api.ErrShutdown
	}
	return api.Health{Status: "ok", NodeID: n.cfg.NodeID, RaftState: n.raft.State().String()}, nil
}

func (n *Node) handleReady(w http.ResponseWriter, r *http.Request) (any, error) {
	if err := n.ready(r.Context()); err != nil {
		return api.Ready{Reason: err.Error()}, nil
	}
	id, _ := n.Leader()
	return api.Ready{Ready: true, Leader: id}, nil
}

// Readiness limits: a node is not ready while the last write to its Raft
// log failed (a full disk), while a follower has not heard from its
// leader for readyMaxSilence, or while it has applied more than
// readyMaxLag entries fewer than the leader.
const (
	readyMaxSilence = 5 * time.Second
	readyMaxLag     = 256
)

// ready says why this node should not get traffic, or nil: Raft's reasons
// (raftReady) first, then the agent's own (SetReadinessCheck).
func (n *Node) ready(ctx context.Context) error {
	if err := n.raftReady(ctx); err != nil {
		return err
	}
	if c := n.readinessCheck.Load(); c != nil {
		return (*c)()
	}
	return nil
}

// raftReady says why this node should not get traffic, or nil: it runs and
// is in the configuration, knows a leader, can write its Raft log, and is
// not far behind the leader.
func (n *Node) raftReady(ctx context.Context) error {
	if n.closing.Load() {
		return api.ErrShutdown
	}
	if err, at := n.logs.writeFailure(); err != nil {
		return fmt.Errorf("cannot write its raft log in %s (since %s): %v", n.cfg.DataDir, at.UTC().Format(time.RFC3339), err)
	}
	leaderID, _ := n.Leader()
	if leaderID == "" {
		return errors.New("no leader known")
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("read raft configuration: %w", err)
	}
	member := false
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == n.cfg.NodeID {
			member = true
		}
	}
	if !member {
		return errors.New("this node is not in the raft configuration (not joined yet, or removed)")
	}
	if n.IsLeader() {
		return nil
	}
	if silent := time.Since(n.raft.LastContact()); silent > readyMaxSilence {
		return fmt.Errorf("no word from the leader %s for %s", leaderID, silent.Round(time.Second))
	}
	// How far behind: the commit index the leader last sent (recent, by
	// the check above) against what this node has applied. Asking the
	// leader instead cost it a status document per probe: a stranger's
	// stream of readiness probes on the followers loaded the leader.
	if committed, applied := n.raft.CommitIndex(), n.raft.AppliedIndex(); committed > applied+readyMaxLag {
		return fmt.Errorf("far behind the leader: applied index %d, committed %d", applied, committed)
	}
	return nil
}

// handleApply serves commands forwarded by followers. It only runs them on
// the leader: a follower that receives one answers not_leader so the sender
// looks the leader up again, which keeps forwarding to one hop.
func (n *Node) handleApply(w http.ResponseWriter, r *http.Request) (any, error) {
	var cmd fsm.Command
	if err := decodeBody(w, r, &cmd); err != nil {
		return nil, err
	}
	if err := cmd.Validate(); err != nil {
		return nil, err
	}
	if err := n.authorizeCommand(callerOf(r.Context()), cmd); err != nil {
		return nil, err
	}
	if !n.IsLeader() || n.closing.Load() {
		// Refused before proposing: safe for the sender to try elsewhere.
		return nil, fmt.Errorf("%w: %s", api.ErrNotLeader, n.cfg.NodeID)
	}
	return applyAnswer(n.applyLocal(cmd))
}

// applyAnswer is the reply to a command: the state machine's answer, a
// refusal included, or the failure to apply it.
func applyAnswer(res fsm.Result, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	return api.NewApplyResponse(res), nil
}

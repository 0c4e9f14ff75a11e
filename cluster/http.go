package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/geocursor/geocursor/fsm"
)

func (n *Node) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", n.handleStatus)
	mux.HandleFunc("GET /v1/health", n.handleHealth)
	mux.HandleFunc("GET /v1/health/ready", n.handleReady)
	mux.HandleFunc("POST /v1/cluster/join", n.handleJoin)
	mux.HandleFunc("POST /v1/internal/apply", n.handleApply)
	mux.HandleFunc("POST /v1/lease/{op}", n.handleLease)
	mux.HandleFunc("POST /v1/cursor/pause", n.handlePause(true))
	mux.HandleFunc("POST /v1/cursor/resume", n.handlePause(false))
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, code string, err error) {
	writeJSON(w, status, map[string]any{"error": wireError{Code: code, Message: err.Error()}})
}

// statusFor maps an error from this package to an HTTP status.
func statusFor(err error) int {
	switch {
	case errors.Is(err, ErrNoLeader), errors.Is(err, ErrNotLeader), errors.Is(err, ErrShutdown):
		return http.StatusServiceUnavailable
	case errors.Is(err, ErrJoinConflict):
		return http.StatusConflict
	case errors.Is(err, ErrUnknownOutcome):
		// Retrying may apply the command twice; the caller decides.
		return http.StatusServiceUnavailable
	case errors.Is(err, fsm.ErrBadCommand):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// decodeBody reads one JSON object of at most maxBody bytes, rejecting
// unknown fields, so a malformed request gets a 400 that says why.
func decodeBody(w http.ResponseWriter, r *http.Request, dst any) bool {
	// Read the whole body before decoding, so that a body over the limit is
	// refused as too large (413) whatever its first bytes are, not as
	// malformed or as having data after the object.
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, "bad_request", fmt.Errorf("request body is larger than %d bytes", maxBody))
			return false
		}
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Errorf("read request body: %v", err))
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		writeError(w, http.StatusBadRequest, "bad_request", fmt.Errorf("decode request body: %v", err))
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		writeError(w, http.StatusBadRequest, "bad_request", errors.New("request body has data after the JSON object"))
		return false
	}
	return true
}

func (n *Node) handleHealth(w http.ResponseWriter, r *http.Request) {
	if n.closing.Load() {
		writeError(w, http.StatusServiceUnavailable, codeShutdown, ErrShutdown)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok", "node_id": n.cfg.NodeID, "raft_state": n.raft.State().String()})
}

func (n *Node) handleReady(w http.ResponseWriter, r *http.Request) {
	if err := n.ready(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"ready": false, "reason": err.Error()})
		return
	}
	id, _ := n.Leader()
	writeJSON(w, http.StatusOK, map[string]any{"ready": true, "leader": id})
}

func (n *Node) ready() error {
	if n.closing.Load() {
		return ErrShutdown
	}
	if id, _ := n.Leader(); id == "" {
		return errors.New("no leader known")
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("read raft configuration: %w", err)
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == n.cfg.NodeID {
			return nil
		}
	}
	return errors.New("this node is not in the raft configuration (not joined yet, or removed)")
}

// handleApply serves commands forwarded by followers. It only runs them on
// the leader: a follower that receives one answers not_leader so the sender
// looks the leader up again, which keeps forwarding to one hop.
func (n *Node) handleApply(w http.ResponseWriter, r *http.Request) {
	var cmd fsm.Command
	if !decodeBody(w, r, &cmd) {
		return
	}
	if err := cmd.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, fsm.Code(err), err)
		return
	}
	if !n.IsLeader() || n.closing.Load() {
		// Refused before proposing: safe for the sender to try elsewhere.
		writeError(w, http.StatusServiceUnavailable, codeNotLeader, fmt.Errorf("%w: %s", ErrNotLeader, n.cfg.NodeID))
		return
	}
	res, err := n.applyLocal(cmd)
	writeApplyResult(w, res, err)
}

// writeApplyResult answers a command: 200 with the state machine's answer
// (a refusal included, as error), or the transport-level error's status.
func writeApplyResult(w http.ResponseWriter, res fsm.Result, err error) {
	if err != nil {
		writeError(w, statusFor(err), errorCode(err), err)
		return
	}
	resp := applyResponse{Lease: res.Lease, Cursor: res.Cursor, Now: res.Now, Index: res.Index}
	if res.Err != nil {
		resp.Error = &wireError{Code: fsm.Code(res.Err), Message: res.Err.Error()}
	}
	writeJSON(w, http.StatusOK, resp)
}

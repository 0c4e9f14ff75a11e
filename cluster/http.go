package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// routes is the one table of the HTTP API. Every handler answers through
// wrap, which encodes the reply and maps an error to its code and status
// in one place.
func (n *Node) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathStatus, n.wrap(n.handleStatus))
	mux.HandleFunc("GET "+api.PathHealth, n.wrap(n.handleHealth))
	mux.HandleFunc("GET "+api.PathReady, n.wrap(n.handleReady))
	mux.HandleFunc("POST "+api.PathJoin, n.wrap(n.handleJoin))
	mux.HandleFunc("POST "+api.PathApply, n.wrap(n.handleApply))
	mux.HandleFunc("POST "+api.PathLease+"{op}", n.wrap(n.handleLease))
	mux.HandleFunc("POST "+api.PathPause, n.wrap(n.handlePause(true)))
	mux.HandleFunc("POST "+api.PathResume, n.wrap(n.handlePause(false)))
	return mux
}

// handlerFunc serves one request: the reply to encode, or the error to
// answer with.
type handlerFunc func(w http.ResponseWriter, r *http.Request) (any, error)

// statusCoder is a reply that is served with a status of its own (a
// readiness answer that says not ready).
type statusCoder interface{ HTTPStatus() int }

// wrap turns h into an http.HandlerFunc: a reply is encoded as JSON with
// status 200 (or its own), an error as {"error": {"code", "message"}} with
// the status of api's table.
func (n *Node) wrap(h handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, err := h(w, r)
		if err != nil {
			writeJSON(w, api.HTTPStatus(err), map[string]any{"error": api.ErrorOf(err)})
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

// decodeBody reads one JSON object of at most api.MaxRequestBody bytes,
// rejecting unknown fields, so that a malformed request gets a 400 that
// says why.
func decodeBody(w http.ResponseWriter, r *http.Request, dst any) error {
	// Read the whole body before decoding, so that a body over the limit is
	// refused as too large (413) whatever its first bytes are, not as
	// malformed or as having data after the object.
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, api.MaxRequestBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return fmt.Errorf("%w: request body is larger than %d bytes", api.ErrTooLarge, api.MaxRequestBody)
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
	if err := n.ready(); err != nil {
		return api.Ready{Reason: err.Error()}, nil
	}
	id, _ := n.Leader()
	return api.Ready{Ready: true, Leader: id}, nil
}

func (n *Node) ready() error {
	if n.closing.Load() {
		return api.ErrShutdown
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
func (n *Node) handleApply(w http.ResponseWriter, r *http.Request) (any, error) {
	var cmd fsm.Command
	if err := decodeBody(w, r, &cmd); err != nil {
		return nil, err
	}
	if err := cmd.Validate(); err != nil {
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

package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"sync/atomic"
	"time"

	"github.com/geocursor/geocursor/fsm"
)

// applyTimeout bounds one Raft apply on the leader.
const applyTimeout = 5 * time.Second

// Apply runs a state-machine command on the leader, wherever it is called,
// and returns the leader's answer. A follower forwards the command over the
// leader's HTTP API. While there is no leader it waits for one as long as
// ctx allows (at most a few election timeouts) and then returns ErrNoLeader.
// A refusal by the state machine is in Result.Err, not in the error.
//
// A forward that gets no answer within a few Raft timeouts (a leader cut
// off without a reset, or frozen) is tried again at the leader the node
// knows then. Each attempt is recorded in the history on its own, since an
// attempt that timed out may still have been applied.
func (n *Node) Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	if err := cmd.Validate(); err != nil {
		return fsm.Result{}, err
	}
	var res fsm.Result
	err := n.onLeader(ctx, func(ctx context.Context, leaderHTTP string) error {
		call := time.Now()
		var err error
		res, err = n.applyAt(ctx, leaderHTTP, cmd)
		n.record(call, cmd, res, err)
		return err
	})
	return res, err
}

func (n *Node) applyAt(ctx context.Context, leaderHTTP string, cmd fsm.Command) (fsm.Result, error) {
	if leaderHTTP == "" {
		return n.applyLocal(cmd)
	}
	var wire applyResponse
	if err := n.post(ctx, leaderHTTP, "/v1/internal/apply", cmd, &wire); err != nil {
		return fsm.Result{}, err
	}
	return wire.result(), nil
}

// onLeader calls fn with the leader's HTTP address, or "" when this node
// leads, retrying while leadership is moving. It is the one place where a
// request finds its way to the leader.
func (n *Node) onLeader(ctx context.Context, fn func(ctx context.Context, leaderHTTP string) error) error {
	// Bound the wait for a leader even if ctx has no deadline: a caller must
	// get a clear, retryable error, not a hang.
	wait := 4 * (n.cfg.Raft.HeartbeatTimeout + n.cfg.Raft.ElectionTimeout)
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	backoff := 10 * time.Millisecond
	var last error
	for {
		if n.closing.Load() {
			return ErrShutdown
		}
		err := n.tryLeader(ctx, fn)
		if err == nil || !retryable(err) {
			return err
		}
		last = err
		select {
		case <-ctx.Done():
			if errors.Is(last, ErrNotLeader) {
				last = ErrNoLeader
			}
			return fmt.Errorf("%w (after %s)", last, wait)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 200*time.Millisecond)
	}
}

func (n *Node) tryLeader(ctx context.Context, fn func(ctx context.Context, leaderHTTP string) error) error {
	if n.IsLeader() {
		return fn(ctx, "")
	}
	// A leader answers in milliseconds, or says it lost leadership within
	// its lease timeout; silence this long means it is cut off or frozen,
	// and a new leader may already exist.
	attempt := n.cfg.Raft.HeartbeatTimeout + n.cfg.Raft.ElectionTimeout + 500*time.Millisecond
	actx, cancel := context.WithTimeout(ctx, attempt)
	defer cancel()
	id, _ := n.Leader()
	if id == "" {
		return ErrNoLeader
	}
	m, ok := n.fsm.Member(id)
	if !ok || m.HTTPAddr == "" {
		return fmt.Errorf("%w: leader %s has not published its HTTP address yet", ErrNoLeader, id)
	}
	err := fn(actx, m.HTTPAddr)
	if err != nil && actx.Err() != nil && ctx.Err() == nil && !errors.Is(err, ErrUnknownOutcome) {
		// Not even written: the leader is unreachable; ask again.
		return fmt.Errorf("%w: leader %s at %s did not answer within %s", ErrNotLeader, id, m.HTTPAddr, attempt)
	}
	return err
}

func retryable(err error) bool {
	return errors.Is(err, ErrNoLeader) || errors.Is(err, ErrNotLeader)
}

// applyRecorded is applyLocal for the leader's own commands (revokes,
// member changes), recorded in the history like the commands of peers.
func (n *Node) applyRecorded(cmd fsm.Command) (fsm.Result, error) {
	call := time.Now()
	res, err := n.applyLocal(cmd)
	n.record(call, cmd, res, err)
	return res, err
}

// applyLocal stamps the leader's clock into the command and proposes it.
func (n *Node) applyLocal(cmd fsm.Command) (fsm.Result, error) {
	cmd.Now = time.Now().UnixNano()
	n.checkClock(cmd.Now)
	b, err := cmd.Encode()
	if err != nil {
		return fsm.Result{}, err
	}
	f := n.raft.Apply(b, applyTimeout)
	if err := f.Error(); err != nil {
		return fsm.Result{}, fmt.Errorf("apply %s: %w", cmd.Op, mapRaftError(err))
	}
	res, ok := f.Response().(fsm.Result)
	if !ok {
		return fsm.Result{}, fmt.Errorf("apply %s: unexpected response %T", cmd.Op, f.Response())
	}
	return res, nil
}

// wireError carries an error across HTTP with its sentinel code.
type wireError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

type applyResponse struct {
	Lease  fsm.Lease  `json:"lease"`
	Cursor fsm.Cursor `json:"cursor"`
	Now    int64      `json:"now"`
	Index  uint64     `json:"index,omitempty"`
	Error  *wireError `json:"error,omitempty"`
}

func (r applyResponse) result() fsm.Result {
	res := fsm.Result{Lease: r.Lease, Cursor: r.Cursor, Now: r.Now, Index: r.Index}
	if r.Error != nil {
		res.Err = fsm.ErrorFromCode(r.Error.Code, r.Error.Message)
	}
	return res
}

// Codes for the errors of this package on the wire.
const (
	codeNoLeader  = "no_leader"
	codeNotLeader = "not_leader"
	codeConflict  = "conflict"
	codeShutdown  = "shutting_down"
	codeUnknown   = "outcome_unknown"
)

func errorCode(err error) string {
	switch {
	case errors.Is(err, ErrNoLeader):
		return codeNoLeader
	case errors.Is(err, ErrNotLeader):
		return codeNotLeader
	case errors.Is(err, ErrJoinConflict):
		return codeConflict
	case errors.Is(err, ErrShutdown):
		return codeShutdown
	case errors.Is(err, ErrUnknownOutcome):
		return codeUnknown
	}
	if c := fsm.Code(err); c != "" {
		return c
	}
	return "internal"
}

func errorFromWire(status int, w *wireError) error {
	if w == nil {
		return fmt.Errorf("HTTP %d", status)
	}
	switch w.Code {
	case codeNoLeader:
		return fmt.Errorf("%w: %s", ErrNoLeader, w.Message)
	case codeNotLeader:
		// The node we reached is not (or no longer) the leader and applied
		// nothing: find the leader again.
		return fmt.Errorf("%w: %s", ErrNotLeader, w.Message)
	case codeShutdown:
		// The leader was shutting down while applying: it may have been
		// applied.
		return fmt.Errorf("%w: %s", ErrUnknownOutcome, w.Message)
	case codeConflict:
		return fmt.Errorf("%w: %s", ErrJoinConflict, w.Message)
	case codeUnknown:
		return fmt.Errorf("%w: %s", ErrUnknownOutcome, w.Message)
	}
	return errors.New(w.Message)
}

// maxBody bounds every request and response body this package reads.
const maxBody = 1 << 20

// post sends a JSON request to another node and decodes its JSON answer.
// A failure before the request was written (the node is down, or cannot be
// reached) is reported as ErrNotLeader, so that onLeader looks the leader up
// again and retries. A failure after it was written is ErrUnknownOutcome:
// the command may have been applied, and sending it again could apply it
// twice, so the caller decides.
func (n *Node) post(ctx context.Context, httpAddr, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("encode request for %s: %w", path, err)
	}
	var written atomic.Bool
	trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { written.Store(true) }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodPost, "http://"+httpAddr+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build request for %s: %w", httpAddr, err)
	}
	req.Header.Set("Content-Type", "application/json")
	lost := func(what string, err error) error {
		if written.Load() {
			return fmt.Errorf("%w: %s %s%s: %v", ErrUnknownOutcome, what, httpAddr, path, err)
		}
		return fmt.Errorf("%w: %s %s%s: %v", ErrNotLeader, what, httpAddr, path, err)
	}
	resp, err := n.httpClient.Do(req)
	if err != nil {
		return lost("forward to", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return lost("read answer from", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error *wireError `json:"error"`
		}
		_ = json.Unmarshal(data, &e)
		return errorFromWire(resp.StatusCode, e.Error)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%w: decode answer from %s%s: %v", ErrUnknownOutcome, httpAddr, path, err)
	}
	return nil
}

// clockSkewWarning is how far the state machine's clock may be ahead of
// this leader's before it says so: the state then runs on the clock of an
// earlier leader, and leases last that much longer in real time.
const clockSkewWarning = time.Second

// checkClock warns, at most once a minute, when this leader's clock is
// behind the state machine's: an earlier leader's clock was ahead, or this
// one's is behind. Nothing breaks (the state applies commands at its own
// clock until this leader's catches up), but an operator should fix NTP.
func (n *Node) checkClock(stamp int64) {
	behind := time.Duration(n.fsm.Clock() - stamp)
	if behind < clockSkewWarning {
		return
	}
	last := n.lastClockWarning.Load()
	if stamp-last < int64(time.Minute) || !n.lastClockWarning.CompareAndSwap(last, stamp) {
		return
	}
	n.logger.Warn("this leader's clock is behind the replicated state's clock: leases run on the state's clock until this one catches up; check NTP on every peer",
		"behind_ms", behind.Milliseconds())
}

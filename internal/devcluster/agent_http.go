package devcluster

import (
	"context"
	"fmt"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// The agent's HTTP API, through api.Client like every other caller: each
// error names the agent.

// Status fetches the agent's status document.
func (a *Agent) Status(ctx context.Context) (api.Status, error) {
	st, err := a.client.Status(ctx, a.HTTPAddr)
	if err != nil {
		return st, fmt.Errorf("status of %s: %w", a.ID, err)
	}
	return st, nil
}

// ReadyState asks the agent's readiness endpoint (a 503 is an answer).
func (a *Agent) ReadyState(ctx context.Context) (api.Ready, error) {
	r, err := a.client.Ready(ctx, a.HTTPAddr)
	if err != nil {
		return r, fmt.Errorf("readiness of %s: %w", a.ID, err)
	}
	return r, nil
}

// Lease sends a lease command (op is acquire, renew or release) through
// the agent. A refusal by the state machine is in Result.Err with a nil
// error.
func (a *Agent) Lease(ctx context.Context, op string, req api.LeaseRequest) (fsm.Result, error) {
	res, err := a.client.Lease(ctx, a.HTTPAddr, op, req)
	if err != nil {
		return res, fmt.Errorf("%s through %s: %w", op, a.ID, err)
	}
	return res, nil
}

// Join asks the agent to add req's node to the group.
func (a *Agent) Join(ctx context.Context, req api.JoinRequest) (api.JoinResponse, error) {
	resp, err := a.client.Join(ctx, a.HTTPAddr, req)
	if err != nil {
		return resp, fmt.Errorf("join %s through %s: %w", req.NodeID, a.ID, err)
	}
	return resp, nil
}

// Raw sends body as it is (nil for none) and returns the answer's status
// and body whatever they are: for a request no well-behaved caller would
// send, or one whose answer the caller wants to see as it came.
func (a *Agent) Raw(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	status, b, err := a.client.Raw(ctx, method, a.HTTPAddr, path, body)
	if err != nil {
		return status, b, fmt.Errorf("%s %s on %s: %w", method, path, a.ID, err)
	}
	return status, b, nil
}

// WaitReady polls the readiness endpoint until the agent says it is ready,
// for at most timeout. It fails at once if the process exits.
func (a *Agent) WaitReady(ctx context.Context, timeout time.Duration) error {
	return a.waitHealth(ctx, timeout, a.ID+" ready", "be ready", func(ctx context.Context) (bool, string) {
		r, err := a.client.Ready(ctx, a.HTTPAddr)
		if err != nil {
			return false, err.Error()
		}
		return r.Ready, "not ready: " + r.Reason
	})
}

// WaitLeading polls the status until the agent leads its group: a node
// that bootstrapped is then ready for others to join, whatever else its
// readiness waits for (GitLab's shared state may keep it not ready).
func (a *Agent) WaitLeading(ctx context.Context, timeout time.Duration) error {
	return a.waitHealth(ctx, timeout, a.ID+" leading", "lead", func(ctx context.Context) (bool, string) {
		st, err := a.client.Status(ctx, a.HTTPAddr)
		if err != nil {
			return false, err.Error()
		}
		if st.Leader == nil || st.Leader.ID != a.ID {
			return false, fmt.Sprintf("leader %+v", st.Leader)
		}
		return true, ""
	})
}

// WaitUp polls the health endpoint until it answers: the process has
// opened its stores and its Raft and HTTP ports. It fails at once if the
// process exits.
func (a *Agent) WaitUp(ctx context.Context, timeout time.Duration) error {
	return a.waitHealth(ctx, timeout, a.ID+" answering "+api.PathHealth, "start", func(ctx context.Context) (bool, string) {
		_, err := a.client.Health(ctx, a.HTTPAddr)
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
}

// waitHealth polls probe, each call bounded by a second, until it says
// yes.
func (a *Agent) waitHealth(ctx context.Context, timeout time.Duration, what, goal string, probe func(context.Context) (bool, string)) error {
	return WaitFor(ctx, timeout, what, func() (bool, string, error) {
		if !a.Running() {
			return false, "", fmt.Errorf("agent %s exited while waiting for it to %s (%s)\n%s", a.ID, goal, a.ExitState(), a.LogTail(20))
		}
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		ok, detail := probe(pctx)
		return ok, detail, nil
	})
}

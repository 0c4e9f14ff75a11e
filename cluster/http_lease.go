package cluster

import (
	"fmt"
	"net/http"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// leaseOps are the lease commands that POST /v1/lease/{op} accepts. Advance
// and revoke are left out on purpose: advance is the cursor loop's, after a
// fenced commit to the tracking database, and revoke is the leader's.
var leaseOps = map[string]fsm.Op{
	"acquire": fsm.OpAcquire,
	"renew":   fsm.OpRenew,
	"release": fsm.OpRelease,
}

// handleLease serves POST /v1/lease/{op}, op being acquire, renew or
// release, on any node: the command goes through Node.Apply, so a follower
// forwards it to the leader. It exists for operators' manual lease tests and
// for system tests that drive the lease from outside the processes.
//
// Request body (unknown fields are refused):
//
//	{"node": "node2", "token": 7, "ttl": "5s"}
//
// node is required; token names the grant for renew and release (acquire
// ignores it); ttl is a Go duration, required for acquire and renew. Give
// a member's node ID as node: a newly elected leader revokes a lease whose
// holder is not in the Raft configuration, and the leader revokes the lease
// of a member it cannot reach. The operator may name a witness too: that
// only processing nodes acquire binds the peers' certificates (see
// authorizeCommand), not the operator driving the lease by hand.
//
// Answers:
//   - 200 when the state machine ran the command, whether it granted it or
//     not: {"lease": {"holder", "token", "expires_at"}, "cursor": {...},
//     "error": {"code", "message"}}, where lease and cursor are the state
//     after the command (expires_at in Unix nanoseconds, stamped by the
//     leader) and error is absent on success, else carries the refusal's
//     stable code (lease_held, stale_token, lease_expired, paused; see
//     package api);
//   - 400 {"error": {"code": "bad_request"|"bad_command", ...}} for a
//     malformed body or an invalid command (413 when the body is too large);
//   - 404 {"error": {"code": "not_found", ...}} for an unknown op;
//   - 503 {"error": {"code": "no_leader"|"not_leader"|"shutting_down", ...}}
//     when no leader could be reached in time; the command was not
//     applied, retry;
//   - 503 {"error": {"code": "outcome_unknown", ...}} when leadership was
//     lost while applying, or a forwarded answer was lost: the command may
//     or may not have been applied;
//   - 500 for anything else.
func (n *Node) handleLease(w http.ResponseWriter, r *http.Request) (any, error) {
	name := r.PathValue("op")
	op, ok := leaseOps[name]
	if !ok {
		return nil, fmt.Errorf("%w: unknown lease operation %q: use acquire, renew or release", api.ErrNotFound, name)
	}
	var req api.LeaseRequest
	if err := decodeBody(w, r, &req); err != nil {
		return nil, err
	}
	cmd := fsm.Command{Op: op, Node: req.Node, Token: req.Token}
	if req.TTL != "" {
		ttl, err := time.ParseDuration(req.TTL)
		if err != nil {
			return nil, fmt.Errorf("%w: ttl %q is not a duration: write it like \"500ms\", \"5s\" or \"10m\"", api.ErrBadRequest, req.TTL)
		}
		cmd.TTL = ttl
	}
	return applyAnswer(n.Apply(r.Context(), cmd))
}

package cluster

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// validateJoin checks that r names a valid node ID and both its addresses,
// as the members table will hold them.
func validateJoin(r api.JoinRequest) error {
	if r.NodeID == "" || r.RaftAddr == "" || r.HTTPAddr == "" {
		return fmt.Errorf("%w: join needs node_id, raft_addr and http_addr", api.ErrBadRequest)
	}
	m := fsm.Member{ID: r.NodeID, RaftAddr: r.RaftAddr, HTTPAddr: r.HTTPAddr}
	if err := (fsm.Command{Op: fsm.OpSetMember, Member: &m}).Validate(); err != nil {
		return fmt.Errorf("%w: %v", api.ErrBadRequest, err)
	}
	v := fsm.Command{Op: fsm.OpSetVersion, Node: r.NodeID, Version: r.Version, Protocol: r.Protocol}
	if err := v.Validate(); err != nil {
		return fmt.Errorf("%w: %v", api.ErrBadRequest, err)
	}
	return nil
}

// Join asks the members at addrs (HTTP addresses), in turn, to add this
// node, retrying with backoff until ctx ends. A member that does not lead
// is asked who does, and the join goes there: the leader checks that the
// joiner's certificate names the node it joins as, so a join is never
// relayed. A refusal that retrying cannot fix (a node ID or address taken
// by another member, or a certificate for another node) ends it at once.
func (n *Node) Join(ctx context.Context, addrs []string) error {
	ctx = n.withOwnToken(ctx)
	req := joinRequestFor(n.self())
	req.NoState = !n.hadState
	backoff := api.Backoff{Min: 100 * time.Millisecond, Max: 2 * time.Second}
	lastErr := map[string]string{}
	for attempt := 1; ; attempt++ {
		for _, addr := range addrs {
			resp, via, err := n.joinVia(ctx, addr, req)
			if err == nil {
				n.logger.Info("joined the group", "via", via, "leader", resp.Leader, "already_member", resp.AlreadyMember, "demoted", resp.Demoted)
				return nil
			}
			if errors.Is(err, api.ErrJoinConflict) || errors.Is(err, api.ErrBadRequest) || errors.Is(err, api.ErrPermissionDenied) {
				return fmt.Errorf("join via %s refused: %w", via, err)
			}
			lastErr[addr] = err.Error()
			n.logger.Debug("join attempt failed", "via", addr, "attempt", attempt, "error", err)
		}
		if backoff.Wait(ctx) != nil {
			var parts []string
			for _, a := range addrs {
				parts = append(parts, fmt.Sprintf("%s (%s)", a, lastErr[a]))
			}
			return fmt.Errorf("join: no member answered before join_timeout: tried %s; check that -join names the HTTP address (http_addr) of a running member", strings.Join(parts, "; "))
		}
	}
}

// joinVia sends req to the member at addr, or, if it does not lead, to the
// leader it names; via is where the answer came from.
func (n *Node) joinVia(ctx context.Context, addr string, req api.JoinRequest) (resp api.JoinResponse, via string, err error) {
	resp, err = n.joinAt(ctx, addr, req)
	if !errors.Is(err, api.ErrNotLeader) {
		return resp, addr, err
	}
	st, serr := n.client.Status(ctx, addr)
	if serr != nil || st.Leader == nil || st.Leader.HTTPAddr == "" || st.Leader.HTTPAddr == addr {
		return resp, addr, err
	}
	resp, err = n.joinAt(ctx, st.Leader.HTTPAddr, req)
	return resp, st.Leader.HTTPAddr, err
}

// joinAt sends req to the member at addr. A leader of protocol 0 refuses
// a join that carries the witness flag or the advertised version and
// protocol (unknown fields): the node then joins without them, as every
// node of that release does, and counts as processing and as speaking
// protocol 0 until a leader that knows the fields hears them again.
func (n *Node) joinAt(ctx context.Context, addr string, req api.JoinRequest) (api.JoinResponse, error) {
	resp, err := n.client.Join(ctx, addr, req)
	newer := req.Witness || req.Version != "" || req.Protocol != 0
	if newer && errors.Is(err, api.ErrBadRequest) && strings.Contains(err.Error(), `unknown field "`) {
		req.Witness, req.Version, req.Protocol = false, "", 0
		resp, err = n.client.Join(ctx, addr, req)
	}
	return resp, err
}

// withOwnToken returns ctx with this node's own proof of the operator's
// consent, from its acl block, for its joins: the join token if it has
// one, else the operator token. A new node joins only with it, and a
// member changes its HTTP address, or says that it processes after it
// advertised that it does not, only with it; a stolen peer certificate
// has neither.
func (n *Node) withOwnToken(ctx context.Context) context.Context {
	if n.cfg.ACL == nil {
		return ctx
	}
	if t := n.cfg.ACL.JoinToken(); t != "" {
		return api.WithToken(ctx, t)
	}
	if t := n.cfg.ACL.operatorToken(); t != "" {
		return api.WithToken(ctx, t)
	}
	return ctx
}

// SetJoinToken sets the join token (acl.join_token; "" for none), which
// consents to a membership change as the operator token does (design
// section 10) and grants nothing else. SIGHUP sets it again.
func (a *ACL) SetJoinToken(token string) {
	b := []byte(token)
	a.join.Store(&b)
}

// JoinToken is the join token as set now.
func (a *ACL) JoinToken() string {
	if b := a.join.Load(); b != nil {
		return string(*b)
	}
	return ""
}

// consents reports whether c brings the operator's consent to a change of
// membership: there is no acl block, or c's token is the operator token
// or the join token (compared in constant time).
func (n *Node) consents(c caller) bool {
	a := n.cfg.ACL
	if a == nil || c.right == rightOperator {
		return true
	}
	b := a.join.Load()
	return b != nil && len(*b) > 0 && subtle.ConstantTimeCompare([]byte(c.token), *b) == 1
}

// errNoConsent is the refusal of a membership change that needs the
// operator's consent and came without it.
func errNoConsent(what string) error {
	return fmt.Errorf("%w: %s takes the operator's consent: the joining node sends its acl block's join_token (or operator_token), which must be this group's", api.ErrPermissionDenied, what)
}

// joinOnLeader adds (or updates) this node's own entry: here if this node
// leads, else at the leader's join endpoint.
func (n *Node) joinOnLeader(ctx context.Context, req api.JoinRequest) (api.JoinResponse, error) {
	var resp api.JoinResponse
	ctx = n.withOwnToken(ctx)
	err := n.onLeader(ctx, func(ctx context.Context, leaderHTTP string) error {
		var err error
		if leaderHTTP != "" {
			resp, err = n.joinAt(ctx, leaderHTTP, req)
		} else {
			resp, err = n.addMember(req, true)
		}
		return err
	})
	return resp, err
}

// self is this node's entry in the members table: its addresses, whether
// it processes, and the release and protocol it advertises.
func (n *Node) self() fsm.Member {
	return fsm.Member{ID: n.cfg.NodeID, RaftAddr: string(n.transport.LocalAddr()), HTTPAddr: n.cfg.HTTPAddr, Witness: n.cfg.Witness,
		Version: n.cfg.Version, Protocol: fsm.Protocol}
}

// joinRequestFor asks for m to be a member.
func joinRequestFor(m fsm.Member) api.JoinRequest {
	return api.JoinRequest{NodeID: m.ID, RaftAddr: m.RaftAddr, HTTPAddr: m.HTTPAddr, Witness: m.Witness, Version: m.Version, Protocol: m.Protocol}
}

// handleJoin serves POST /v1/cluster/join on the leader; another member
// answers not_leader and the joiner asks the leader itself. A peer joins
// only as the node its certificate names, and a member that advertised
// that it does not process says it does only with the operator's token.
func (n *Node) handleJoin(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.JoinRequest
	if err := decodeBody(w, r, &req); err != nil {
		return nil, err
	}
	if err := validateJoin(req); err != nil {
		return nil, err
	}
	c := callerOf(r.Context())
	if n.cfg.TLS != nil && c.peer != req.NodeID {
		return nil, fmt.Errorf("%w: the certificate of %s cannot join as %s", api.ErrPermissionDenied, c.peer, req.NodeID)
	}
	if !n.IsLeader() || n.closing.Load() {
		return nil, fmt.Errorf("%w: %s does not lead: join through the leader", api.ErrNotLeader, n.cfg.NodeID)
	}
	return n.addMember(req, n.consents(c))
}

// addMember runs on the leader. Joining twice is harmless, and a member
// may publish a new HTTP address of its own with the operator's consent;
// but a join never changes another member's Raft address or removes
// another member: a node ID known at another Raft address, or a Raft
// address that another member uses, is refused. A new node joins as a
// non-voter, so that one that cannot be reached cannot cost the group its
// quorum; promoteCaughtUp makes it a voter once it has caught up.
//
// Membership needs the operator's consent (consent: the operator token or
// the join token came with the join; design section 10):
//   - a node ID an operator removed stays out, consent or not, until an
//     operator lets it back in (fsm.OpSetRemoved);
//   - a node that is not in the Raft configuration joins only with it;
//   - a member changes its HTTP address only with it, so that a stolen
//     peer certificate cannot point the members table, and the operator
//     tokens that followers forward to the leader, at a server of its own;
//   - a member whose row says it does not process says that it does only
//     with it; otherwise the certificate of a witness could make its node
//     one that may acquire.
//
// A member that rejoins as it was (a restart, with or without its state)
// needs nothing: it is in the configuration already.
func (n *Node) addMember(req api.JoinRequest, consent bool) (api.JoinResponse, error) {
	resp := api.JoinResponse{Leader: n.cfg.NodeID}
	if n.gate.isRemoved(n.fsm.State(), req.NodeID) {
		return resp, fmt.Errorf("%w: node ID %s was removed by an operator and stays out until an operator lets it back in with `geocursor cluster remove -id %s -undo`",
			api.ErrPermissionDenied, req.NodeID, req.NodeID)
	}
	cur, known := n.fsm.Member(req.NodeID)
	if known && cur.Witness && !req.Witness && !consent {
		return resp, fmt.Errorf("%w: %s is a witness in the members table; it may advertise that it processes only with the operator's consent (a node sends the join_token or operator_token of its acl block)",
			api.ErrPermissionDenied, req.NodeID)
	}
	if known && cur.HTTPAddr != "" && cur.HTTPAddr != req.HTTPAddr && !consent {
		return resp, errNoConsent(fmt.Sprintf("moving member %s's http_addr from %s to %s", req.NodeID, cur.HTTPAddr, req.HTTPAddr))
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return resp, fmt.Errorf("read raft configuration: %w", mapRaftError(err))
	}
	for _, s := range f.Configuration().Servers {
		switch {
		case string(s.ID) == req.NodeID && string(s.Address) == req.RaftAddr:
			resp.AlreadyMember = true
			if req.NoState && s.Suffrage == raft.Voter {
				// It lost its state: see Open. A voter that has lost its
				// data counts for nothing towards quorum anyway, so
				// demoting it costs the group no availability.
				if err := n.raft.DemoteVoter(s.ID, 0, applyTimeout).Error(); err != nil {
					return resp, fmt.Errorf("demote %s, which rejoins without its raft state: %w", req.NodeID, mapRaftError(err))
				}
				resp.Demoted = true
				n.logger.Warn("a voter rejoined without its raft state (a wiped data directory?): made it a non-voter until it has caught up",
					"peer", req.NodeID, "raft_addr", req.RaftAddr)
			}
		case string(s.ID) == req.NodeID:
			return resp, fmt.Errorf("%w: node ID %s is already a member at raft address %s, not %s: give the new node another node_id, or remove the old one first with `geocursor cluster remove -id %s`",
				api.ErrJoinConflict, req.NodeID, s.Address, req.RaftAddr, req.NodeID)
		case string(s.Address) == req.RaftAddr:
			return resp, fmt.Errorf("%w: raft address %s is member %s's: give %s its own raft_addr, or remove %s first with `geocursor cluster remove -id %s`",
				api.ErrJoinConflict, req.RaftAddr, s.ID, req.NodeID, s.ID, s.ID)
		}
	}
	if !resp.AlreadyMember && !consent {
		return resp, errNoConsent(fmt.Sprintf("adding %s to the group", req.NodeID))
	}
	if !resp.AlreadyMember {
		if err := n.raft.AddNonvoter(raft.ServerID(req.NodeID), raft.ServerAddress(req.RaftAddr), 0, applyTimeout).Error(); err != nil {
			return resp, fmt.Errorf("add %s: %w", req.NodeID, mapRaftError(err))
		}
		n.logger.Info("added a non-voter; it becomes a voter once it has caught up", "peer", req.NodeID, "raft_addr", req.RaftAddr, "http_addr", req.HTTPAddr)
	}
	m := fsm.Member{ID: req.NodeID, RaftAddr: req.RaftAddr, HTTPAddr: req.HTTPAddr, Witness: req.Witness, Version: req.Version, Protocol: req.Protocol}
	if !known || cur != m {
		res, err := n.applyRecorded(fsm.Command{Op: fsm.OpSetMember, Member: &m})
		if err != nil {
			return resp, err
		}
		if res.Err != nil {
			return resp, res.Err
		}
	}
	return resp, nil
}

// Promotion: a non-voter is promoted once it answers its status with an
// applied index within promoteLag entries of the leader's.
const (
	promoteEvery = 250 * time.Millisecond
	promoteLag   = 64
)

// promoteCaughtUp makes every non-voter that has caught up a voter. It runs
// on the leader. Only addMember puts a node into the configuration, after
// a join with the operator's consent (or as it was, for a member that
// rejoins), so only such a node is promoted; an ID an operator removed is
// never promoted, even if its removal from the configuration failed.
func (n *Node) promoteCaughtUp(ctx context.Context) {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	st := n.fsm.State()
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter || n.gate.isRemoved(st, string(s.ID)) {
			continue
		}
		m, ok := st.Members[string(s.ID)]
		if !ok || m.HTTPAddr == "" {
			continue
		}
		sctx, cancel := context.WithTimeout(n.toMember(ctx, m.ID), probeTimeout)
		st, err := n.client.Status(sctx, m.HTTPAddr)
		cancel()
		if err != nil || st.NodeID != string(s.ID) {
			continue
		}
		if target := n.raft.AppliedIndex(); st.AppliedIndex+promoteLag < target {
			continue
		}
		if err := n.raft.AddVoter(s.ID, s.Address, 0, applyTimeout).Error(); err != nil {
			n.logger.Warn("promote a caught-up non-voter", "peer", s.ID, "error", mapRaftError(err))
			continue
		}
		n.logger.Info("promoted a caught-up non-voter to voter", "peer", s.ID, "applied_index", st.AppliedIndex)
	}
}

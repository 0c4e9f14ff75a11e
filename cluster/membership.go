package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// Removing members: `geocursor cluster remove` drops a dead peer from the
// Raft configuration, and leave_on_terminate has a stopping node remove
// itself. Both run on the leader.

// handleRemove serves POST /v1/cluster/remove on the leader; another
// member answers not_leader and the caller asks the leader itself (a
// removal is never relayed). The operator may remove any member; a peer
// only itself (leave_on_terminate).
func (n *Node) handleRemove(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.RemoveRequest
	if err := decodeBody(w, r, &req); err != nil {
		return nil, err
	}
	if !fsm.ValidNodeID(req.NodeID) {
		return nil, fmt.Errorf("%w: %q is not a node ID", api.ErrBadRequest, req.NodeID)
	}
	c := callerOf(r.Context())
	operator := n.cfg.ACL == nil || c.right == rightOperator
	self := c.peer != "" && c.peer == req.NodeID
	if req.Undo && !operator {
		return nil, fmt.Errorf("%w: letting a removed node ID back in takes the operator token", api.ErrPermissionDenied)
	}
	if !operator && !self {
		return nil, fmt.Errorf("%w: removing a member takes the operator token (a peer may only remove itself)", api.ErrPermissionDenied)
	}
	if !n.IsLeader() || n.closing.Load() {
		return nil, fmt.Errorf("%w: %s does not lead: remove through the leader", api.ErrNotLeader, n.cfg.NodeID)
	}
	if req.Undo {
		if err := n.setRemoved(req.NodeID, false); err != nil {
			return nil, err
		}
		n.logger.Warn("let a removed node ID back in: it may join again with the operator's consent", "peer", req.NodeID, "by", c.name())
		return api.RemoveResponse{}, nil
	}
	// A node that removes itself on its way out (leave_on_terminate: its
	// own peer certificate, or Leave where there is no TLS to tell) may
	// come back; a removal by anyone else is the operator's, and keeps the
	// ID out.
	keepOut := !self && !(req.Leave && c.peer == "")
	resp, err := n.removeMember(r.Context(), req, keepOut)
	if err == nil {
		n.logger.Warn("removed a member from the raft configuration", "peer", req.NodeID, "by", c.name(), "force", req.Force,
			"voters_left", resp.Voters, "kept_out", keepOut)
	}
	return resp, err
}

// setRemoved records that node ID id is removed (kept out of the group
// until an operator lets it back in) or is let back in. set_removed is
// gated (groupSpeaks): until every voter speaks protocol 1 this leader
// holds it, and answers joins by it, and proposes it once they do.
func (n *Node) setRemoved(id string, removed bool) error {
	if n.gate.isRemoved(n.fsm.State(), id) == removed {
		return nil
	}
	res, err := n.proposeGated(fsm.Command{Op: fsm.OpSetRemoved, Node: id, Removed: removed})
	if errors.Is(err, errHeld) {
		return nil
	}
	if err != nil {
		return err
	}
	return res.Err
}

// removeMember removes req.NodeID from the Raft configuration and the
// members table, and with keepOut records it as removed first, so that
// its certificate cannot join again until an operator lets it back in. It
// never removes the last voter, and without Force it refuses a removal
// after which the voters it can reach are no majority of the voters left:
// the group would stop (removing a live voter while another is down, say).
func (n *Node) removeMember(ctx context.Context, req api.RemoveRequest, keepOut bool) (api.RemoveResponse, error) {
	var resp api.RemoveResponse
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return resp, fmt.Errorf("read raft configuration: %w", mapRaftError(err))
	}
	var (
		target *raft.Server
		left   []raft.Server // the voters after the removal
	)
	for _, s := range f.Configuration().Servers {
		switch {
		case string(s.ID) == req.NodeID:
			target = &s
		case s.Suffrage == raft.Voter:
			left = append(left, s)
		}
	}
	if target == nil {
		return resp, fmt.Errorf("%w: %s is not a member of the raft configuration", api.ErrNotFound, req.NodeID)
	}
	resp.Voters = len(left)
	if target.Suffrage == raft.Voter {
		if len(left) == 0 {
			return resp, fmt.Errorf("%w: %s is the last voter; removing it would leave no group", api.ErrQuorum, req.NodeID)
		}
		reachable := 0
		for _, s := range left {
			if string(s.ID) == n.cfg.NodeID {
				reachable++
				continue
			}
			if m, ok := n.fsm.Member(string(s.ID)); ok && n.probe(ctx, m.HTTPAddr) {
				reachable++
			}
		}
		if need := len(left)/2 + 1; reachable < need && !req.Force {
			return resp, fmt.Errorf("%w: after removing %s, %d voters are left and only %d of them answer, fewer than the %d a majority needs: the group would stop. Bring the others back first, or pass -force",
				api.ErrQuorum, req.NodeID, len(left), reachable, need)
		}
	}
	if keepOut {
		// Before the removal: a node removed but not yet recorded could
		// join again in between.
		if err := n.setRemoved(req.NodeID, true); err != nil {
			return resp, fmt.Errorf("record %s as removed: %w", req.NodeID, err)
		}
	}
	if _, ok := n.fsm.Member(req.NodeID); ok {
		res, err := n.applyRecorded(fsm.Command{Op: fsm.OpRemoveMember, Node: req.NodeID})
		if err != nil {
			return resp, err
		}
		if res.Err != nil {
			return resp, res.Err
		}
	}
	if err := n.raft.RemoveServer(target.ID, 0, applyTimeout).Error(); err != nil {
		return resp, fmt.Errorf("remove %s from the raft configuration: %w", req.NodeID, mapRaftError(err))
	}
	return resp, nil
}

// leave removes this node from the group, through the leader, once it has
// handed over the lease and leadership (leave_on_terminate). A removal
// that would stop the group is refused, and the node just stops. It runs
// while the node closes, so it asks the leader directly rather than
// through onLeader, which refuses a closing node.
func (n *Node) leave(ctx context.Context) error {
	req := api.RemoveRequest{NodeID: n.cfg.NodeID, Leave: true}
	backoff := api.Backoff{Min: 50 * time.Millisecond, Max: 500 * time.Millisecond}
	for {
		err := errors.New("no leader known")
		if id, _ := n.Leader(); id == n.cfg.NodeID {
			// The hand-over failed: a leader cannot commit its own
			// removal and step down cleanly in the time left.
			err = errors.New("this node still leads")
		} else if m, ok := n.fsm.Member(id); ok && m.HTTPAddr != "" {
			_, err = n.client.Remove(n.toMember(ctx, id), m.HTTPAddr, req)
			if req.Leave && errors.Is(err, api.ErrBadRequest) && strings.Contains(err.Error(), `unknown field "leave"`) {
				// A leader of the release before the removed set: it
				// records no removal anyway.
				req.Leave = false
				_, err = n.client.Remove(n.toMember(ctx, id), m.HTTPAddr, req)
			}
			if err == nil || errors.Is(err, api.ErrQuorum) || errors.Is(err, api.ErrPermissionDenied) {
				return err
			}
		}
		if backoff.Wait(ctx) != nil {
			return err
		}
	}
}

// handlePeerInfo serves GET /v1/cluster/peer, also before Raft runs.
func (n *Node) handlePeerInfo(w http.ResponseWriter, r *http.Request) (any, error) {
	info := api.PeerInfo{NodeID: n.cfg.NodeID, RaftAddr: string(n.transport.LocalAddr()), HTTPAddr: n.cfg.HTTPAddr, HasState: n.hadState}
	if n.raftUp.Load() {
		info.Leader, _ = n.Leader()
		info.HasState = info.HasState || n.raft.LastIndex() > 0
	}
	return info, nil
}

// expectBootstrap is the start of a node with no state under
// bootstrap_expect = N: it asks the members of its join list who they are
// until it has heard from N nodes, itself included. If any of them is in
// a group already, it joins that group (as a node that lost its state, if
// the group knew it). If none is, the one with the lowest node ID
// bootstraps a group of one (alone is true for it) and the others join
// it; every node decides from the same answers, so exactly one group
// forms. More nodes than N answering is an error: the join lists differ,
// or bootstrap_expect is wrong.
func (n *Node) expectBootstrap(ctx context.Context) (alone bool, err error) {
	want := n.cfg.BootstrapExpect
	backoff := api.Backoff{Min: 100 * time.Millisecond, Max: time.Second}
	last := ""
	for {
		seen := map[string]api.PeerInfo{n.cfg.NodeID: {NodeID: n.cfg.NodeID}}
		grouped := ""
		for _, addr := range n.cfg.Join {
			if addr == n.cfg.HTTPAddr {
				continue
			}
			pctx, cancel := context.WithTimeout(ctx, probeTimeout)
			info, err := n.client.PeerInfo(pctx, addr)
			cancel()
			if err != nil {
				continue
			}
			seen[info.NodeID] = info
			if info.HasState {
				grouped = info.NodeID
			}
		}
		switch {
		case grouped != "":
			n.logger.Info("bootstrap_expect: a peer is in a group already; joining it", "peer", grouped)
			return false, n.Join(ctx, n.cfg.Join)
		case len(seen) > want:
			return false, fmt.Errorf("bootstrap_expect = %d, but %d nodes without state answered: give every node the same join list and bootstrap_expect", want, len(seen))
		case len(seen) == want:
			lowest := n.cfg.NodeID
			for id := range seen {
				lowest = min(lowest, id)
			}
			if lowest == n.cfg.NodeID {
				n.logger.Info("bootstrap_expect: all nodes are up and none is in a group; this node has the lowest ID and bootstraps the group", "nodes", want)
				return true, nil
			}
			n.logger.Info("bootstrap_expect: all nodes are up; joining the group that the node with the lowest ID bootstraps", "bootstrapper", lowest)
			return false, n.Join(ctx, n.cfg.Join)
		}
		if msg := fmt.Sprintf("%d of %d", len(seen), want); msg != last {
			n.logger.Info("bootstrap_expect: waiting for the other nodes", "answered", len(seen), "expect", want)
			last = msg
		}
		if backoff.Wait(ctx) != nil {
			return false, fmt.Errorf("bootstrap_expect = %d: only %d nodes answered before join_timeout; start the others, or check the join list", want, len(seen))
		}
	}
}

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

// validateJoin checks that r names a node and both its addresses.
func validateJoin(r api.JoinRequest) error {
	if r.NodeID == "" || r.RaftAddr == "" || r.HTTPAddr == "" {
		return fmt.Errorf("%w: join needs node_id, raft_addr and http_addr", api.ErrBadRequest)
	}
	return nil
}

// Join asks the members at addrs (HTTP addresses), in turn, to add this node
// as a voter, retrying with backoff until ctx ends. A refusal that retrying
// cannot fix (a node ID taken by another address) ends it at once.
func (n *Node) Join(ctx context.Context, addrs []string) error {
	req := joinRequestFor(n.self())
	backoff := api.Backoff{Min: 100 * time.Millisecond, Max: 2 * time.Second}
	lastErr := map[string]string{}
	for attempt := 1; ; attempt++ {
		for _, addr := range addrs {
			resp, err := n.client.Join(ctx, addr, req)
			if err == nil {
				n.logger.Info("joined the group", "via", addr, "leader", resp.Leader, "already_member", resp.AlreadyMember)
				return nil
			}
			if errors.Is(err, api.ErrJoinConflict) || errors.Is(err, api.ErrBadRequest) {
				return fmt.Errorf("join via %s refused: %w", addr, err)
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

// joinOnLeader adds (or updates) the member of req: here if this node
// leads, else through the leader's join endpoint.
func (n *Node) joinOnLeader(ctx context.Context, req api.JoinRequest) (api.JoinResponse, error) {
	var resp api.JoinResponse
	err := n.onLeader(ctx, func(ctx context.Context, leaderHTTP string) error {
		var err error
		if leaderHTTP != "" {
			resp, err = n.client.Join(ctx, leaderHTTP, req)
		} else {
			resp, err = n.addVoter(req)
		}
		return err
	})
	return resp, err
}

// self is this node's entry in the members table.
func (n *Node) self() fsm.Member {
	return fsm.Member{ID: n.cfg.NodeID, RaftAddr: string(n.transport.LocalAddr()), HTTPAddr: n.cfg.HTTPAddr}
}

// joinRequestFor asks for m to be a member.
func joinRequestFor(m fsm.Member) api.JoinRequest {
	return api.JoinRequest{NodeID: m.ID, RaftAddr: m.RaftAddr, HTTPAddr: m.HTTPAddr}
}

func (n *Node) handleJoin(w http.ResponseWriter, r *http.Request) (any, error) {
	var req api.JoinRequest
	if err := decodeBody(w, r, &req); err != nil {
		return nil, err
	}
	if err := validateJoin(req); err != nil {
		return nil, err
	}
	return n.joinOnLeader(r.Context(), req)
}

// addVoter runs on the leader. Joining twice is harmless; a node ID that
// the group knows at another Raft address is refused, since two processes
// would then share one identity; a new ID at the address of an old one
// replaces it (the old node's data was wiped and it came back renamed).
func (n *Node) addVoter(req api.JoinRequest) (api.JoinResponse, error) {
	resp := api.JoinResponse{Leader: n.cfg.NodeID}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return resp, fmt.Errorf("read raft configuration: %w", mapRaftError(err))
	}
	for _, s := range f.Configuration().Servers {
		switch {
		case string(s.ID) == req.NodeID && string(s.Address) == req.RaftAddr:
			resp.AlreadyMember = true
		case string(s.ID) == req.NodeID:
			return resp, fmt.Errorf("%w: node ID %s is already a member at raft address %s, not %s: give the new node another node_id, or remove the old one first",
				api.ErrJoinConflict, req.NodeID, s.Address, req.RaftAddr)
		case string(s.ID) == n.cfg.NodeID && string(s.Address) == req.RaftAddr:
			// This leader is alive at that address, so the joiner cannot be
			// its renamed successor: replacing it would remove the leader.
			return resp, fmt.Errorf("%w: raft address %s is the leader's own (node %s): give %s its own raft_addr",
				api.ErrJoinConflict, req.RaftAddr, s.ID, req.NodeID)
		case string(s.Address) == req.RaftAddr:
			n.logger.Warn("removing a member whose raft address a new node now uses", "old_id", s.ID, "new_id", req.NodeID, "raft_addr", req.RaftAddr)
			if err := n.raft.RemoveServer(s.ID, 0, applyTimeout).Error(); err != nil {
				return resp, fmt.Errorf("remove stale member %s: %w", s.ID, mapRaftError(err))
			}
			if _, err := n.applyRecorded(fsm.Command{Op: fsm.OpRemoveMember, Node: string(s.ID)}); err != nil {
				return resp, err
			}
		}
	}
	if !resp.AlreadyMember {
		if err := n.raft.AddVoter(raft.ServerID(req.NodeID), raft.ServerAddress(req.RaftAddr), 0, applyTimeout).Error(); err != nil {
			return resp, fmt.Errorf("add voter %s: %w", req.NodeID, mapRaftError(err))
		}
		n.logger.Info("added voter", "peer", req.NodeID, "raft_addr", req.RaftAddr, "http_addr", req.HTTPAddr)
	}
	m := fsm.Member{ID: req.NodeID, RaftAddr: req.RaftAddr, HTTPAddr: req.HTTPAddr}
	if cur, ok := n.fsm.Member(req.NodeID); !ok || cur != m {
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

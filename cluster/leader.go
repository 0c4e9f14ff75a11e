package cluster

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/raft"

	"github.com/geocursor/geocursor/fsm"
)

// startLeaderDuties watches Raft for two things: winning an election (then
// settle the members table and any lease held by a node that is gone) and
// failing heartbeats to the lease holder (then revoke its lease at once, so
// a standby need not wait for it to expire). It also makes sure this node's
// own HTTP address is published in the members table.
func (n *Node) startLeaderDuties() {
	events := make(chan raft.Observation, 64)
	n.observer = raft.NewObserver(events, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.RaftState, raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation, raft.LeaderObservation:
			return true
		}
		return false
	})
	n.raft.RegisterObserver(n.observer)

	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.runPromoter()
	}()

	if n.cfg.PreferFollower {
		n.wg.Add(1)
		go func() {
			defer n.wg.Done()
			n.runHandoff()
		}()
	}

	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		// A node may already lead when the observer is registered (a single
		// node bootstraps fast), so check once at start too.
		if n.IsLeader() {
			n.onElected()
		}
		for {
			select {
			case <-n.stop:
				return
			case o := <-events:
				switch d := o.Data.(type) {
				case raft.RaftState:
					if d == raft.Leader {
						n.peers.reset()
						n.onElected()
					}
				case raft.FailedHeartbeatObservation:
					n.peers.failed(d.PeerID)
					n.onHeartbeatFailed(d)
				case raft.ResumedHeartbeatObservation:
					n.peers.resumed(d.PeerID)
				case raft.LeaderObservation:
					if d.LeaderID != "" && string(d.LeaderID) != n.cfg.NodeID {
						n.publishSelf()
					}
				}
			}
		}
	}()
}

func (n *Node) onElected() {
	n.logger.Info("became leader")
	// Act only on a state that includes every entry of earlier terms.
	term := n.raft.CurrentTerm()
	if err := n.raft.Barrier(applyTimeout).Error(); err != nil {
		n.logger.Warn("barrier after election failed", "error", err)
		return
	}
	// From now on this term's local state holds every answered command:
	// the leader may refuse from it without proposing (applyLocal).
	n.caughtUpTerm.Store(term)
	self := n.self()
	st := n.fsm.State()
	if st.Members[self.ID] != self {
		if _, err := n.applyRecorded(fsm.Command{Op: fsm.OpSetMember, Member: &self}); err != nil {
			n.logger.Warn("publish own addresses", "error", err)
		}
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		n.logger.Warn("read raft configuration", "error", err)
		return
	}
	inConfig := map[string]bool{}
	for _, s := range f.Configuration().Servers {
		inConfig[string(s.ID)] = true
	}
	for id := range st.Members {
		if !inConfig[id] {
			if _, err := n.applyRecorded(fsm.Command{Op: fsm.OpRemoveMember, Node: id}); err != nil {
				n.logger.Warn("remove member no longer in the configuration", "peer", id, "error", err)
			}
		}
	}
	if h := st.Lease.Holder; h != "" && !inConfig[h] {
		n.revoke(st.Lease, "holder is no longer a member")
	}
}

// onHeartbeatFailed revokes the lease of a holder the leader cannot reach.
// One failed heartbeat is not enough (a connection can drop and come back
// at once); the holder must also have been silent for a third of the
// heartbeat timeout. Revoking a holder that is in fact alive costs only a
// handover: its writes are fenced by the token it no longer has.
func (n *Node) onHeartbeatFailed(o raft.FailedHeartbeatObservation) {
	if !n.IsLeader() {
		return
	}
	st := n.fsm.State()
	if st.Lease.Holder != string(o.PeerID) {
		return
	}
	silent := time.Since(o.LastContact)
	if !o.LastContact.IsZero() && silent < n.cfg.Raft.HeartbeatTimeout/3 {
		return
	}
	reason := "leader cannot reach the holder"
	if !o.LastContact.IsZero() {
		reason = fmt.Sprintf("leader has not reached the holder for %s", silent.Round(time.Millisecond))
	}
	n.revoke(st.Lease, reason)
}

func (n *Node) revoke(l fsm.Lease, reason string) {
	res, err := n.applyRecorded(fsm.Command{Op: fsm.OpRevoke, Token: l.Token, Reason: reason})
	switch {
	case err != nil:
		n.logger.Warn("revoke lease failed", "holder", l.Holder, "token", l.Token, "error", err)
	case res.Err != nil:
		n.logger.Debug("revoke lease refused", "holder", l.Holder, "token", l.Token, "error", res.Err)
	default:
		n.logger.Warn("revoked the lease of an unreachable holder", "holder", l.Holder, "token", l.Token, "reason", reason)
	}
}

// publishSelf makes sure the members table has this node's current
// addresses, e.g. after a restart with a new -http-addr. It is a join with
// the node's own details, which the leader treats as an update.
func (n *Node) publishSelf() {
	want := n.self()
	if cur, _ := n.fsm.Member(want.ID); cur == want {
		return
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		go func() {
			select {
			case <-n.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		if _, err := n.joinOnLeader(ctx, joinRequestFor(want)); err != nil {
			n.logger.Debug("publish own addresses", "error", err)
		}
	}()
}

// runPromoter promotes caught-up non-voters while this node leads, on a
// goroutine of its own so that a slow member cannot hold up a revoke.
func (n *Node) runPromoter() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	t := time.NewTicker(promoteEvery)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
			if n.IsLeader() {
				n.promoteCaughtUp(ctx)
			}
		}
	}
}

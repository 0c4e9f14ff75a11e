package cluster

import (
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// The lease holder is kept off the Raft leader. A holder that also leads
// costs two timeouts when it dies (an election, then the revoke), and its
// death stops Raft for everyone; a holder that follows costs only the
// revoke, and the death of a leader that does not hold the lease costs
// processing nothing, since the holder goes on committing through the
// election (its batches are fenced by its token, not by Raft).
//
// Two things keep them apart. At grant time the leader lets a follower
// take the lease first (DeferLease). When the holder leads anyway (it won
// an election, or no follower took the lease), the leader hands Raft
// leadership to a follower it can reach instead of handing over the
// lease: moving leadership is one vote round and pauses no batch, moving
// the lease would stop processing for a grant's retry delay.

// handoffSpacing is the least time between two leadership hand-offs of
// one node: a follower that takes leadership and loses it again at once
// (it cannot keep a majority) must not make the group elect in a loop. It
// is short, because every moment the holder leads, its death would cost an
// election: a 10-minute soak with 10 s found the holder leading at one
// kill in ten (1.9 s to resume, against 0.3-1.3 s for a following holder).
const handoffSpacing = 3 * time.Second

// peerFailingFor is how long a failed heartbeat marks a peer unreachable
// unless it answers again. Raft retries a failing peer at least every half
// heartbeat timeout, each failure observed anew; the mark runs out by
// itself so that a dropped observation (the observer does not block Raft)
// cannot mark a peer for good.
const peerFailingFor = 3 * time.Second

// peerHealth is what the leader's heartbeats say of each peer: which ones
// it failed to reach lately, and has not reached since.
type peerHealth struct {
	mu      sync.Mutex
	failing map[raft.ServerID]time.Time // the last failure
}

func (p *peerHealth) failed(id raft.ServerID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failing == nil {
		p.failing = make(map[raft.ServerID]time.Time)
	}
	p.failing[id] = time.Now()
}

func (p *peerHealth) resumed(id raft.ServerID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.failing, id)
}

// reset forgets everything: heartbeats of an earlier term say nothing of
// this one's.
func (p *peerHealth) reset() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.failing = nil
}

func (p *peerHealth) reachable(id raft.ServerID) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	last, failing := p.failing[id]
	return !failing || time.Since(last) >= peerFailingFor
}

// reachableVoter returns a voter other than this node that the leader's
// heartbeats reach, if any.
func (n *Node) reachableVoter() (raft.Server, bool) {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return raft.Server{}, false
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) != n.cfg.NodeID && s.Suffrage == raft.Voter && n.peers.reachable(s.ID) {
			return s, true
		}
	}
	return raft.Server{}, false
}

// DeferLease reports whether this node's cursor loop should let a follower
// take a free lease first: it leads, and a voter it can reach could hold
// the lease instead. A loop that defers still takes the lease when nobody
// else does (a follower that cannot reach the databases).
func (n *Node) DeferLease() bool {
	if !n.cfg.PreferFollower || !n.IsLeader() {
		return false
	}
	_, ok := n.reachableVoter()
	return ok
}

// runHandoff hands leadership to a reachable follower whenever this node
// leads and holds an unexpired lease: at most once per handoffSpacing
// after a hand-off, or a second after one that failed (the follower it
// chose is then taken for unreachable, and the next try picks another).
// It runs only with PreferFollower.
func (n *Node) runHandoff() {
	var next time.Time
	for {
		st, changed := n.fsm.Watch()
		if n.IsLeader() && st.Lease.Holder == n.cfg.NodeID && st.Lease.HeldAt(time.Now().UnixNano()) &&
			!time.Now().Before(next) && !n.closing.Load() {
			if to, ok := n.reachableVoter(); ok {
				next = time.Now().Add(handoffRetry)
				if n.handoff(to) {
					next = time.Now().Add(handoffSpacing)
				} else {
					n.peers.failed(to.ID)
				}
			}
		}
		select {
		case <-n.stop:
			return
		case <-changed:
		case <-time.After(time.Second):
		}
	}
}

// handoffRetry is how soon a failed hand-off is tried again.
const handoffRetry = time.Second

func (n *Node) handoff(to raft.Server) bool {
	began := time.Now()
	if err := n.raft.LeadershipTransferToServer(to.ID, to.Address).Error(); err != nil {
		n.logger.Warn("could not hand leadership to a follower; this node goes on leading and holding the lease",
			"to", to.ID, "error", err)
		return false
	}
	n.metrics.handoffs.Inc()
	n.logger.Info("handed leadership to a follower, so that the lease holder is not the leader",
		"to", to.ID, "took_ms", time.Since(began).Milliseconds())
	return true
}

package cluster

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/geocursor/geocursor/fsm"
)

// Two releases in one group (design section 14): every node advertises
// its release and protocol in its join, which the leader records with
// set_version; the leader proposes a command that a node of an older
// protocol would apply differently only once every voter advertises the
// protocol that added it (groupSpeaks), the way Consul and Nomad gate a
// feature on their servers' versions. Until then it keeps what it would
// have recorded (gate) and proposes it once the gate opens.

// groupSpeaks reports whether every voter of the Raft configuration
// advertises protocol p or later in the members table. A voter without a
// row, or whose row advertises nothing, speaks protocol 0. It is the one
// gate of every gated proposal (proposeGated).
func (n *Node) groupSpeaks(p int) bool {
	if p <= 0 {
		return true
	}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	st := n.fsm.State()
	for _, s := range f.Configuration().Servers {
		if s.Suffrage != raft.Voter {
			continue
		}
		if st.Members[string(s.ID)].Protocol < p {
			return false
		}
	}
	return true
}

// gate holds, on the leader, the commands it would have proposed but
// that the group does not speak yet: the latest set_witness and
// set_removed of each node. They live for one leadership: a node that
// stops leading drops them, and the next leader learns the witness flags
// again from the joins every member sends it (publishSelf); an operator's
// removal held back is lost with the leader that took it, as it is on a
// leader of protocol 0, which keeps none.
type gate struct {
	mu      sync.Mutex
	witness map[string]bool
	removed map[string]bool
}

// hold keeps cmd, a gated command, until the group speaks its protocol.
func (g *gate) hold(cmd fsm.Command) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch cmd.Op {
	case fsm.OpSetWitness:
		if g.witness == nil {
			g.witness = map[string]bool{}
		}
		g.witness[cmd.Node] = cmd.Witness
	case fsm.OpSetRemoved:
		if g.removed == nil {
			g.removed = map[string]bool{}
		}
		g.removed[cmd.Node] = cmd.Removed
	}
}

// isRemoved returns whether node id is removed as the leader means to
// record it: its held set_removed if there is one, else what the state
// says.
func (g *gate) isRemoved(st fsm.State, id string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if r, ok := g.removed[id]; ok {
		return r
	}
	return st.IsRemoved(id)
}

// held returns the commands held, set_removed first (a removal keeps a
// node out; it should not wait behind a witness flag).
func (g *gate) held() []fsm.Command {
	g.mu.Lock()
	defer g.mu.Unlock()
	var cmds []fsm.Command
	for id, r := range g.removed {
		cmds = append(cmds, fsm.Command{Op: fsm.OpSetRemoved, Node: id, Removed: r})
	}
	for id, w := range g.witness {
		cmds = append(cmds, fsm.Command{Op: fsm.OpSetWitness, Node: id, Witness: w})
	}
	return cmds
}

// done forgets cmd once it was proposed, unless a newer one replaced it.
func (g *gate) done(cmd fsm.Command) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch cmd.Op {
	case fsm.OpSetWitness:
		if w, ok := g.witness[cmd.Node]; ok && w == cmd.Witness {
			delete(g.witness, cmd.Node)
		}
	case fsm.OpSetRemoved:
		if r, ok := g.removed[cmd.Node]; ok && r == cmd.Removed {
			delete(g.removed, cmd.Node)
		}
	}
}

// forget drops what is held for cmd's node, which cmd supersedes.
func (g *gate) forget(cmd fsm.Command) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch cmd.Op {
	case fsm.OpSetWitness:
		delete(g.witness, cmd.Node)
	case fsm.OpSetRemoved:
		delete(g.removed, cmd.Node)
	}
}

func (g *gate) empty() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.witness) == 0 && len(g.removed) == 0
}

func (g *gate) reset() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.witness, g.removed = nil, nil
}

// errHeld says a gated command was held back, not proposed.
var errHeld = errors.New("held until every voter speaks the protocol")

// proposeGated proposes cmd, a leader's own command, if every voter
// speaks the protocol that added it; otherwise it holds it (gate) and
// returns errHeld. A command held before for the same node is replaced.
func (n *Node) proposeGated(cmd fsm.Command) (fsm.Result, error) {
	if p := cmd.Op.AddedIn(); !n.groupSpeaks(p) {
		n.gate.hold(cmd)
		n.logger.Info("holding a command back until every voter speaks its protocol", "op", cmd.Op, "peer", cmd.Node, "protocol", p)
		return fsm.Result{}, errHeld
	}
	n.gate.forget(cmd)
	return n.applyOwn(cmd)
}

// gateEvery is how often a leader with commands held checks the gate
// when the state does not change (a voter's removal from the
// configuration opens it without a state change).
const gateEvery = time.Second

// runGate proposes the commands held while this node leads, as soon as
// the gate opens: when a member's row changes (its set_version) or, at
// the latest, every gateEvery. A node that stops leading drops them.
func (n *Node) runGate() {
	t := time.NewTicker(gateEvery)
	defer t.Stop()
	for {
		_, changed := n.fsm.Watch()
		select {
		case <-n.stop:
			return
		case <-changed:
		case <-t.C:
		}
		if !n.IsLeader() {
			n.gate.reset()
			continue
		}
		n.releaseHeld()
	}
}

// releaseHeld proposes every command held whose protocol the group now
// speaks.
func (n *Node) releaseHeld() {
	if n.gate.empty() {
		return
	}
	for _, cmd := range n.gate.held() {
		if !n.groupSpeaks(cmd.Op.AddedIn()) {
			continue
		}
		res, err := n.applyOwn(cmd)
		if err == nil {
			err = res.Err
		}
		if err != nil {
			n.logger.Warn("propose a command held until every voter spoke its protocol", "op", cmd.Op, "peer", cmd.Node, "error", err)
			if !errors.Is(err, fsm.ErrBadCommand) {
				continue // try again at the next change
			}
		} else {
			n.logger.Info("every voter speaks the protocol now: proposed a command held back", "op", cmd.Op, "peer", cmd.Node)
		}
		n.gate.done(cmd)
	}
}

// checkSnapshots refuses to start on a snapshot newer than this release
// reads (fsm.ErrNewerState), naming both versions. Raft would try the
// next older snapshot instead and start from a state the log after it no
// longer matches.
func checkSnapshots(snaps raft.SnapshotStore, release string) error {
	metas, err := snaps.List()
	if err != nil {
		return fmt.Errorf("list snapshots: %w", err)
	}
	for _, m := range metas {
		_, rc, err := snaps.Open(m.ID)
		if err != nil {
			return fmt.Errorf("open snapshot %s: %w", m.ID, err)
		}
		err = fsm.CheckSnapshot(rc)
		rc.Close()
		if errors.Is(err, fsm.ErrNewerState) {
			return fmt.Errorf("snapshot %s: %w; this is geocursor %s: refusing to start", m.ID, err, release)
		}
	}
	return nil
}

package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/tlsutil"
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
	if c := callerOf(ctx); c.token != "" {
		// A command sent for a caller of this node's API (an operator's
		// pause, or a cursor set or restore that this node carries out)
		// goes with that caller's token: the leader takes reserve,
		// set_cursor, restore and set_paused only with the operator's
		// (authorizeCommand), never on this node's certificate alone.
		ctx = api.WithToken(ctx, c.token)
	}
	res, err := n.client.Apply(ctx, leaderHTTP, cmd)
	if errors.Is(err, api.ErrShutdown) {
		// The leader was shutting down while applying: it may have been
		// applied.
		err = fmt.Errorf("%w: %w", api.ErrUnknownOutcome, err)
	}
	return res, err
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
	backoff := api.Backoff{Min: 10 * time.Millisecond, Max: 200 * time.Millisecond}
	for {
		if n.closing.Load() {
			return api.ErrShutdown
		}
		err := n.tryLeader(ctx, fn)
		if err == nil || !retryable(err) {
			return err
		}
		if backoff.Wait(ctx) != nil {
			if !errors.Is(err, api.ErrNoLeader) {
				err = fmt.Errorf("%w: %w", api.ErrNoLeader, err)
			}
			return fmt.Errorf("%w (after %s)", err, wait)
		}
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
		return api.ErrNoLeader
	}
	m, ok := n.fsm.Member(id)
	if !ok || m.HTTPAddr == "" {
		return fmt.Errorf("%w: leader %s has not published its HTTP address yet", api.ErrNoLeader, id)
	}
	err := fn(n.toMember(actx, id), m.HTTPAddr)
	if err != nil && actx.Err() != nil && ctx.Err() == nil && !errors.Is(err, api.ErrUnknownOutcome) {
		// Not even written: the leader is unreachable; ask again.
		return fmt.Errorf("%w: leader %s at %s did not answer within %s", api.ErrNotLeader, id, m.HTTPAddr, attempt)
	}
	return err
}

// toMember returns ctx for requests meant for member id: with TLS, they
// go only to a server whose peer certificate names id (api.WithServerCheck),
// so that a forwarded operator's token never reaches a server that took
// over a member's address, or one that a members row points at wrongly.
func (n *Node) toMember(ctx context.Context, id string) context.Context {
	if n.cfg.TLS == nil {
		return ctx
	}
	return api.WithServerCheck(ctx, func(cs *tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return fmt.Errorf("the server meant to be %s presented no certificate", id)
		}
		got, ok := tlsutil.PeerID(cs.PeerCertificates[0])
		switch {
		case !ok:
			return fmt.Errorf("the server meant to be %s presented no peer certificate", id)
		case got != id:
			return fmt.Errorf("the server meant to be %s presented the peer certificate of %s: a members row points at another node's address", id, got)
		}
		return nil
	})
}

// retryable reports whether err says the command was not applied and the
// leader may be found again: none is known, the node asked is not it, or
// the request never reached it.
func retryable(err error) bool {
	return errors.Is(err, api.ErrNoLeader) || errors.Is(err, api.ErrNotLeader) || errors.Is(err, api.ErrNotSent)
}

// applyRecorded is applyLocal for the leader's own commands (revokes,
// member changes), recorded in the history like the commands of peers. A
// member's row goes into the log as set_member (its addresses) and, when
// they change, set_version (its advertisement) and set_witness (its
// witness flag; gated, see protocol.go): a node of protocol 0 applies the
// first and refuses the others.
func (n *Node) applyRecorded(cmd fsm.Command) (fsm.Result, error) {
	if cmd.Op == fsm.OpSetMember && cmd.Member != nil {
		return n.setMember(*cmd.Member)
	}
	return n.applyOwn(cmd)
}

// applyOwn is applyLocal, recorded in the history.
func (n *Node) applyOwn(cmd fsm.Command) (fsm.Result, error) {
	call := time.Now()
	res, err := n.applyLocal(cmd)
	n.record(call, cmd, res, err)
	return res, err
}

// setMember makes m the members table's row of m.ID, proposing only what
// differs from the row there is.
func (n *Node) setMember(m fsm.Member) (fsm.Result, error) {
	cur, known := n.fsm.Member(m.ID)
	addrs, curAddrs := m, cur
	addrs.Witness, addrs.Version, addrs.Protocol = false, "", 0
	curAddrs.Witness, curAddrs.Version, curAddrs.Protocol = false, "", 0
	var res fsm.Result
	if !known || curAddrs != addrs {
		var err error
		if res, err = n.applyOwn(fsm.Command{Op: fsm.OpSetMember, Member: &addrs}); err != nil || res.Err != nil {
			return res, err
		}
	}
	if cur.Version != m.Version || cur.Protocol != m.Protocol {
		var err error
		if res, err = n.applyOwn(fsm.Command{Op: fsm.OpSetVersion, Node: m.ID, Version: m.Version, Protocol: m.Protocol}); err != nil || res.Err != nil {
			return res, err
		}
		n.logger.Info("a member advertises its release and protocol", "peer", m.ID, "release", m.Version, "protocol", m.Protocol)
	}
	if cur.Witness == m.Witness {
		return res, nil
	}
	wres, err := n.proposeGated(fsm.Command{Op: fsm.OpSetWitness, Node: m.ID, Witness: m.Witness})
	if errors.Is(err, errHeld) {
		return res, nil
	}
	res = wres
	if err == nil && res.Err == nil {
		if m.Witness {
			n.logger.Info("a member advertises that it does not process (a witness): it will not be granted the lease", "peer", m.ID)
		} else if known {
			n.logger.Info("a member that was a witness advertises that it processes", "peer", m.ID)
		}
	}
	return res, err
}

// applyLocal is proposeLocal, with its answer counted in the metrics.
func (n *Node) applyLocal(cmd fsm.Command) (fsm.Result, error) {
	res, err := n.proposeLocal(cmd)
	n.metrics.answered(cmd, res, err)
	return res, err
}

// proposeLocal stamps the leader's clock into the command and proposes it,
// unless it can already see the command refused: one that admit refuses
// (an error), or one the state machine would refuse (then the refusal is
// answered with index 0, and nothing reaches the log).
func (n *Node) proposeLocal(cmd fsm.Command) (fsm.Result, error) {
	cmd.Now = time.Now().UnixNano()
	n.checkClock(cmd.Now)
	if err := n.admit(cmd); err != nil {
		return fsm.Result{}, err
	}
	if res, refused := n.refuseEarly(cmd); refused {
		return res, nil
	}
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

// admit refuses, before anything is proposed and whoever asked:
//   - what fsm.Command.CheckProposal refuses (a reservation longer than
//     fsm.MaxReserveTTL, a restored clock far ahead of this leader's);
//   - a lease command for a node that is not in the Raft configuration: a
//     lease that no member holds would stop processing until it expired.
//
// These are the leader's checks, not the state machine's, so that a log
// written while a leader of the release before led applies the same on
// every replica (design section 14).
func (n *Node) admit(cmd fsm.Command) error {
	if err := cmd.CheckProposal(); err != nil {
		return err
	}
	switch cmd.Op {
	case fsm.OpAcquire, fsm.OpRenew, fsm.OpRelease, fsm.OpAdvance, fsm.OpSetCursor, fsm.OpRestore, fsm.OpReserve:
	default:
		return nil
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("read raft configuration: %w", mapRaftError(err))
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == cmd.Node {
			return nil
		}
	}
	return fmt.Errorf("%w: %s: node %s is not a member of the cluster", fsm.ErrBadCommand, cmd.Op, cmd.Node)
}

// refuseEarly answers cmd from the local state, without proposing it, when
// the state machine would refuse it. The answer must be one a linearizable
// read would give: the local state must hold every command answered before
// cmd was called, which a new leader's does only once it has applied the
// entries of earlier terms (caughtUpTerm), and this node must still lead
// after the read (VerifyLeader: a majority followed it since), or a deposed
// leader would answer from a stale state. When either is in doubt, the
// command is proposed as usual.
func (n *Node) refuseEarly(cmd fsm.Command) (fsm.Result, bool) {
	if n.caughtUpTerm.Load() != n.raft.CurrentTerm() {
		return fsm.Result{}, false
	}
	res := n.fsm.Check(cmd)
	if res.Err == nil {
		return fsm.Result{}, false
	}
	if n.raft.VerifyLeader().Error() != nil || n.caughtUpTerm.Load() != n.raft.CurrentTerm() {
		return fsm.Result{}, false
	}
	return res, true
}

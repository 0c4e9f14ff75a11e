package cluster

import (
	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// leaseTracker follows the lease through the states this node applies and
// tells which changes of holder were failovers: the holder lost the lease
// without releasing it (revoked, or run out), or it released the lease
// after its last batch and another peer took over while it no longer
// answered. A clean handover (a release, then another peer's grant while
// the old holder still answers, as at a SIGTERM or a pause) is none.
//
// It sees the states a watcher of the FSM sees: changes that come while it
// is away are seen together. A revoke and the next grant are a retry delay
// apart (lease.retry_min), far longer than a watcher is away, so they are
// seen one by one; a handover seen as one change is settled by asking the
// old holder whether it answers (check).
type leaseTracker struct {
	prev    fsm.LeaseState
	started bool
	// pending is the failover of a revoked grant that no peer has taken
	// over from yet.
	pending *api.Failover
}

// observe takes the next state and returns the failovers it starts or
// completes (to record, replacing an earlier record of the same grant), and
// a handover that is a failover only if its old holder no longer answers
// (check, nil for none).
func (t *leaseTracker) observe(s fsm.LeaseState) (failovers []api.Failover, check *api.Failover) {
	if !t.started {
		t.prev, t.started = s, true
		return nil, nil
	}
	p := t.prev
	t.prev = s
	switch {
	case s.Lease.Token == p.Lease.Token:
		// The same grant: renewed, advanced, released or revoked.
		if p.Lease.Holder != "" && s.Lease.Holder == "" && s.RevokedFrom == p.Lease.Holder {
			f := api.Failover{Kind: api.FailoverRevoked, From: p.Lease.Holder, FromToken: p.Lease.Token, LostAt: fsm.Time(s.Clock)}
			t.pending = &f
			return []api.Failover{f}, nil
		}
		return nil, nil
	case s.Lease.Token < p.Lease.Token:
		// An older state (a snapshot restored): start over from it.
		t.pending = nil
		return nil, nil
	}

	// One or more new grants, the latest to s.LastHolder.
	to, taken := s.LastHolder, fsm.Time(s.Clock)
	if f := t.pending; f != nil {
		t.pending = nil
		done := *f
		done.To, done.ToToken, done.TakenAt = &to, s.Lease.Token, &taken
		return []api.Failover{done}, nil
	}
	from := p.Lease.Holder
	if from == "" {
		from = p.LastHolder // it released the lease after its last batch
	}
	if from == "" || from == to {
		return nil, nil
	}
	f := api.Failover{From: from, FromToken: p.Lease.Token, To: &to, ToToken: s.Lease.Token, TakenAt: &taken}
	if p.Lease.Holder != "" && p.Lease.ExpiresAt <= s.Clock {
		// The old grant still stood, and had run out when the new one
		// was made: nobody released or revoked it.
		f.Kind, f.LostAt = api.FailoverExpired, fsm.Time(p.Lease.ExpiresAt)
		return []api.Failover{f}, nil
	}
	f.Kind, f.LostAt = api.FailoverGone, taken
	return nil, &f
}

// activeHolder is the peer doing the work in s at now (Unix nanoseconds):
// the holder of an unexpired lease, or the last holder when it released
// the lease cleanly (it goes on first when events appear); "" when the
// lease was revoked or ran out and nobody took it since.
func activeHolder(s fsm.LeaseState, now int64) (holder string, held bool) {
	switch {
	case s.Lease.HeldAt(now):
		return s.Lease.Holder, true
	case s.Lease.Holder == "" && s.RevokedFrom == "":
		return s.LastHolder, false
	}
	return "", false
}

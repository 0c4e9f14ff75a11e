package linearize

import (
	"testing"

	"github.com/geocursor/geocursor/fsm"
)

// TestRetriedKeepAdvanceCountsOnce applies one release-and-advance that
// keeps the lease twice, as a follower does when the leader's answer to
// the first was lost and it sends the command again (see
// internal/chaos TestForwardedCommandAppliedOnceWhenAnswerLost). The
// contract in fsm/apply.go (State.advance: "a retried advance ... is
// stale, so counters are never added twice") holds only for an advance
// that released the lease: one that kept it was accepted again, and the
// batch's events, dead letters and the batch itself were counted twice.
// The cursor loop numbers its advances (Advance.Seq), which the state
// machine now checks.
func TestRetriedKeepAdvanceCountsOnce(t *testing.T) {
	var s fsm.State
	grant := s.Apply(fsm.Command{Op: fsm.OpAcquire, Node: "n1", TTL: ttl, Now: t0})
	if grant.Err != nil {
		t.Fatal(grant.Err)
	}
	adv := fsm.Command{Op: fsm.OpAdvance, Node: "n1", Token: grant.Lease.Token, TTL: ttl,
		Advance: &fsm.Advance{LastEventID: 1000, Keep: true, Seq: 1, Events: 1000, DeadLetters: 3}}
	first := adv
	first.Now = t0 + sec
	if res := s.Apply(first); res.Err != nil {
		t.Fatal(res.Err)
	}
	retry := adv
	retry.Now = t0 + sec + 10*ms
	res := s.Apply(retry)
	if s.Stats.EventsProcessed != 1000 || s.Stats.Batches != 1 || s.Stats.DeadLetters != 3 {
		t.Errorf("after one batch of 1000 events applied twice (retry answered %v): stats %+v, want 1000 events, 1 batch, 3 dead letters",
			res.Err, s.Stats)
	}
}

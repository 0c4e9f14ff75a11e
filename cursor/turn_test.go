package cursor

import (
	"testing"
	"time"

	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/internal/localcoord"
)

// deferringCoordinator is a local coordinator that says whether its peer
// leads the Raft group while a follower could hold the lease.
type deferringCoordinator struct {
	*localcoord.Coordinator
	leads bool
}

func (c deferringCoordinator) DeferLease() bool { return c.leads }

// Who waits how long for a free lease: the last holder not at all; a
// standby a retry delay, or a short one when the last holder lost the
// lease without releasing it (revoked, or run out); a peer that leads the
// Raft group longer than any standby.
func TestTurnDelayOrdersThePeers(t *testing.T) {
	cfg := LoopConfig{RetryMin: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond}
	now := time.Now().UnixNano()
	released := fsm.State{LastHolder: "b"}
	revoked := fsm.State{LastHolder: "b", RevokedFrom: "b"}
	expired := fsm.State{LastHolder: "b", Lease: fsm.Lease{Holder: "b", Token: 3, ExpiresAt: now - 1}}
	mine := fsm.State{LastHolder: "a"}
	cases := []struct {
		name     string
		st       fsm.State
		leads    bool
		yield    bool
		min, max time.Duration
	}{
		{"last holder", mine, false, false, 0, 0},
		{"standby after a release", released, false, false, cfg.RetryMin, cfg.RetryMax},
		{"standby after a revoke", revoked, false, false, 0, cfg.RetryMin / 2},
		{"standby after an expiry", expired, false, false, 0, cfg.RetryMin / 2},
		{"leader after a revoke", revoked, true, false, cfg.RetryMax + cfg.RetryMin, cfg.RetryMax + cfg.RetryMin/2 + cfg.RetryMax},
		{"leader that was the last holder", mine, true, false, cfg.RetryMax + cfg.RetryMin, 2 * cfg.RetryMax},
		{"peer that just failed", released, false, true, cfg.RetryMax + cfg.RetryMin, 2 * cfg.RetryMax},
	}
	for _, c := range cases {
		l := NewLoop(cfg, deferringCoordinator{localcoord.New("a"), c.leads}, nil, nil, nil, nil)
		for range 50 {
			if d := l.turnDelay(c.st, c.yield); d < c.min || d > c.max {
				t.Errorf("%s: waits %s, want %s to %s", c.name, d, c.min, c.max)
				break
			}
		}
	}
}

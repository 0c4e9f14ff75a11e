package cluster

import (
	"testing"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// leaseAt builds the lease part of a state: holder (or "" for free) with
// token, expiring at exp seconds, applied at clock seconds.
func leaseAt(holder string, token uint64, exp, clock int64, last, revokedFrom string) fsm.LeaseState {
	ls := fsm.LeaseState{Lease: fsm.Lease{Holder: holder, Token: token}, LastHolder: last, RevokedFrom: revokedFrom, Clock: clock * int64(time.Second)}
	if holder != "" {
		ls.Lease.ExpiresAt = exp * int64(time.Second)
	}
	return ls
}

func TestLeaseTrackerTellsFailoversFromHandovers(t *testing.T) {
	sec := func(s int64) time.Time { return fsm.Time(s * int64(time.Second)) }
	type want struct {
		kind, from, to   string // kind "": no failover
		fromToken, toTok uint64
		lostAt, takenAt  int64 // seconds; takenAt 0: not taken yet
		check            bool  // a handover to settle with a probe
	}
	cases := []struct {
		name   string
		states []fsm.LeaseState
		want   []want // what the last state yields
	}{
		{
			name: "renewals and advances of one grant are nothing",
			states: []fsm.LeaseState{
				leaseAt("node1", 5, 10, 5, "node1", ""),
				leaseAt("node1", 5, 12, 7, "node1", ""),
			},
		},
		{
			name: "a clean release is nothing",
			states: []fsm.LeaseState{
				leaseAt("node1", 5, 10, 5, "node1", ""),
				leaseAt("", 5, 0, 6, "node1", ""),
			},
		},
		{
			name: "the same holder's next grant after a release is nothing",
			states: []fsm.LeaseState{
				leaseAt("", 5, 0, 6, "node1", ""),
				leaseAt("node1", 6, 11, 6, "node1", ""),
			},
		},
		{
			name: "a revoke starts a failover that nobody has taken over yet",
			states: []fsm.LeaseState{
				leaseAt("node1", 5, 10, 5, "node1", ""),
				leaseAt("", 5, 0, 6, "node1", "node1"),
			},
			want: []want{{kind: api.FailoverRevoked, from: "node1", fromToken: 5, lostAt: 6}},
		},
		{
			name: "the next grant after a revoke completes its failover",
			states: []fsm.LeaseState{
				leaseAt("node1", 5, 10, 5, "node1", ""),
				leaseAt("", 5, 0, 6, "node1", "node1"),
				leaseAt("node2", 6, 12, 7, "node2", ""),
			},
			want: []want{{kind: api.FailoverRevoked, from: "node1", to: "node2", fromToken: 5, toTok: 6, lostAt: 6, takenAt: 7}},
		},
		{
			name: "a revoked holder that takes the lease again is still a failover",
			states: []fsm.LeaseState{
				leaseAt("node1", 5, 10, 5, "node1", ""),
				leaseAt("", 5, 0, 6, "node1", "node1"),
				leaseAt("", 5, 0, 6, "node1", ""), // its late advance settles the grant
				leaseAt("node1", 6, 12, 7, "node1", ""),
			},
			want: []want{{kind: api.FailoverRevoked, from: "node1", to: "node1", fromToken: 5, toTok: 6, lostAt: 6, takenAt: 7}},
		},
		{
			name: "a grant to another peer after the old lease ran out is an expiry",
			states: []fsm.LeaseState{
				leaseAt("node1", 5, 10, 5, "node1", ""),
				leaseAt("node3", 6, 16, 11, "node3", ""),
			},
			want: []want{{kind: api.FailoverExpired, from: "node1", to: "node3", fromToken: 5, toTok: 6, lostAt: 10, takenAt: 11}},
		},
		{
			name: "a grant to another peer after a clean release is settled by a probe",
			states: []fsm.LeaseState{
				leaseAt("node1", 5, 10, 5, "node1", ""),
				leaseAt("", 5, 0, 6, "node1", ""),
				leaseAt("node2", 6, 12, 7, "node2", ""),
			},
			want: []want{{kind: api.FailoverGone, from: "node1", to: "node2", fromToken: 5, toTok: 6, lostAt: 7, takenAt: 7, check: true}},
		},
		{
			name: "a release and another's grant seen as one change are settled by a probe",
			states: []fsm.LeaseState{
				leaseAt("node1", 5, 10, 5, "node1", ""),
				leaseAt("node2", 6, 12, 7, "node2", ""),
			},
			want: []want{{kind: api.FailoverGone, from: "node1", to: "node2", fromToken: 5, toTok: 6, lostAt: 7, takenAt: 7, check: true}},
		},
		{
			name: "a first grant is nothing",
			states: []fsm.LeaseState{
				leaseAt("", 0, 0, 1, "", ""),
				leaseAt("node1", 1, 6, 1, "node1", ""),
			},
		},
		{
			name: "an older state (a snapshot restored) is nothing",
			states: []fsm.LeaseState{
				leaseAt("node2", 9, 10, 5, "node2", ""),
				leaseAt("node1", 4, 10, 6, "node1", ""),
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var tr leaseTracker
			var got []api.Failover
			var check *api.Failover
			for _, s := range tc.states {
				got, check = tr.observe(s)
			}
			var gotAll []api.Failover
			gotAll = append(gotAll, got...)
			if check != nil {
				gotAll = append(gotAll, *check)
			}
			if len(gotAll) != len(tc.want) {
				t.Fatalf("got %d failovers %+v (check %v), want %d", len(gotAll), gotAll, check != nil, len(tc.want))
			}
			for i, w := range tc.want {
				g := gotAll[i]
				to := ""
				if g.To != nil {
					to = *g.To
				}
				if g.Kind != w.kind || g.From != w.from || to != w.to || g.FromToken != w.fromToken || g.ToToken != w.toTok {
					t.Errorf("failover %d = %s %s(%d) -> %s(%d), want %s %s(%d) -> %s(%d)",
						i, g.Kind, g.From, g.FromToken, to, g.ToToken, w.kind, w.from, w.fromToken, w.to, w.toTok)
				}
				if !g.LostAt.Equal(sec(w.lostAt)) {
					t.Errorf("failover %d lost at %s, want %s", i, g.LostAt, sec(w.lostAt))
				}
				switch {
				case w.takenAt == 0 && g.TakenAt != nil:
					t.Errorf("failover %d taken at %s, want not yet", i, g.TakenAt)
				case w.takenAt != 0 && (g.TakenAt == nil || !g.TakenAt.Equal(sec(w.takenAt))):
					t.Errorf("failover %d taken at %v, want %s", i, g.TakenAt, sec(w.takenAt))
				}
				if (check != nil) != w.check {
					t.Errorf("failover %d: settled by a probe = %v, want %v", i, check != nil, w.check)
				}
			}
		})
	}
}

func TestActiveHolderIsTheLastHolderBetweenBatches(t *testing.T) {
	now := int64(8 * time.Second)
	cases := []struct {
		name     string
		s        fsm.LeaseState
		holder   string
		wantHeld bool
	}{
		{"held", leaseAt("node1", 5, 10, 5, "node1", ""), "node1", true},
		{"released after a batch", leaseAt("", 5, 0, 6, "node1", ""), "node1", false},
		{"revoked", leaseAt("", 5, 0, 6, "node1", "node1"), "", false},
		{"ran out", leaseAt("node1", 5, 7, 5, "node1", ""), "", false},
		{"never granted", leaseAt("", 0, 0, 0, "", ""), "", false},
	}
	for _, tc := range cases {
		h, held := activeHolder(tc.s, now)
		if h != tc.holder || held != tc.wantHeld {
			t.Errorf("%s: activeHolder = %q, %v; want %q, %v", tc.name, h, held, tc.holder, tc.wantHeld)
		}
	}
}

func TestRecorderKeepsTheLastTenMinutes(t *testing.T) {
	var r recorder
	t0 := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)
	for i := range recentSamples + 25 {
		r.add(api.Sample{At: t0.Add(time.Duration(i) * time.Second), Token: uint64(i)})
	}
	all, _ := r.since(time.Time{})
	if len(all) != recentSamples {
		t.Fatalf("kept %d samples, want %d", len(all), recentSamples)
	}
	for i, s := range all {
		if want := uint64(25 + i); s.Token != want {
			t.Fatalf("sample %d has token %d, want %d: not oldest first", i, s.Token, want)
		}
	}
	last := all[len(all)-1].At
	newer, _ := r.since(last.Add(-3 * time.Second))
	if len(newer) != 3 {
		t.Errorf("since 3s before the newest: %d samples, want 3", len(newer))
	}

	for i := range recentFailovers + 5 {
		r.recordFailover(api.Failover{Kind: api.FailoverRevoked, From: "node1", FromToken: uint64(i)})
	}
	to := "node2"
	r.recordFailover(api.Failover{Kind: api.FailoverRevoked, From: "node1", FromToken: uint64(recentFailovers + 4), To: &to})
	_, fos := r.since(time.Time{})
	if len(fos) != recentFailovers {
		t.Fatalf("kept %d failovers, want %d", len(fos), recentFailovers)
	}
	if fos[0].FromToken != 5 || fos[len(fos)-1].To == nil {
		t.Errorf("failovers %+v: want the oldest dropped and the newest completed in place", fos)
	}
}

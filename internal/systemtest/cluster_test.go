// Package systemtest starts real geocursor agents as processes on loopback
// ports and checks the cluster from the outside: through the CLI binary and
// the HTTP API, as an operator would.
package systemtest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

// leaseTTL outlives every test, so that only the cluster (revocation, a
// restart) could take a lease away, never its expiry.
const leaseTTL = 10 * time.Minute

func TestClusterFormsThroughJoin(t *testing.T) {
	c := ts.StartCluster(t, 3, "", nil)
	leader := c.Leader(t)

	for _, a := range c.Agents {
		out := runCLI(t, 0, "cluster", "status", "-format", "json", "-addr", a.HTTPAddr)
		var st api.Status
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("cluster status -format json from %s: not a status document: %v\n%s", a.ID, err, out)
		}
		if st.NodeID != a.ID {
			t.Errorf("status from %s has node_id %q", a.ID, st.NodeID)
		}
		if st.Leader == nil || st.Leader.ID != leader.ID || st.Leader.HTTPAddr != leader.HTTPAddr || st.Leader.RaftAddr != leader.RaftAddr {
			t.Errorf("status from %s has leader %+v, want %s at raft %s, http %s", a.ID, st.Leader, leader.ID, leader.RaftAddr, leader.HTTPAddr)
		}
		if len(st.Members) != 3 {
			t.Errorf("status from %s lists %d members, want 3: %+v", a.ID, len(st.Members), st.Members)
		}
		for _, m := range st.Members {
			want := c.Agent(t, m.ID)
			if m.RaftAddr != want.RaftAddr || m.HTTPAddr != want.HTTPAddr || !m.Voter || !m.Reachable {
				t.Errorf("status from %s: member %+v, want a reachable voter at raft %s, http %s", a.ID, m, want.RaftAddr, want.HTTPAddr)
			}
			wantRole := "follower"
			if m.ID == leader.ID {
				wantRole = "leader"
			}
			if m.Role != wantRole {
				t.Errorf("status from %s: member %s has role %q, want %q", a.ID, m.ID, m.Role, wantRole)
			}
		}
	}

	table := runCLI(t, 0, "cluster", "status", "-addr", c.Agents[2].HTTPAddr)
	if !strings.Contains(table, "Leader") || !strings.Contains(table, leader.ID+" (raft "+leader.RaftAddr) {
		t.Errorf("table does not name leader %s:\n%s", leader.ID, table)
	}
	for _, a := range c.Agents {
		if !strings.Contains(table, a.ID) || !strings.Contains(table, a.HTTPAddr) {
			t.Errorf("table does not list %s at %s:\n%s", a.ID, a.HTTPAddr, table)
		}
	}
}

func TestLeaderKillElectsNewLeaderAndLeaseSurvives(t *testing.T) {
	c := ts.StartCluster(t, 3, "", nil)
	oldLeader := c.Leader(t)
	// The holder is a member that survives: the leader revokes the lease of
	// a holder it cannot reach or that is not a member, by design.
	followers := c.Followers(oldLeader)
	holder := followers[0]

	granted := lease(t, followers[1], "acquire", holder.ID, 0)
	if granted.Err != nil || granted.Lease.Holder != holder.ID || granted.Lease.Token == 0 {
		t.Fatalf("acquire for %s through follower %s: %+v, want a grant", holder.ID, followers[1].ID, granted)
	}
	token := granted.Lease.Token

	oldLeader.Kill(t)
	newLeader := c.Leader(t)
	if newLeader == oldLeader {
		t.Fatalf("killed leader %s is still reported as leader", oldLeader.ID)
	}
	follower := c.Followers(newLeader)[0]

	renewed := lease(t, follower, "renew", holder.ID, token)
	if renewed.Err != nil || renewed.Lease.Holder != holder.ID || renewed.Lease.Token != token {
		t.Errorf("renew of token %d through follower %s after the failover: %+v, want granted with the same token", token, follower.ID, renewed)
	}
	refused := lease(t, follower, "acquire", oldLeader.ID, 0)
	if !errors.Is(refused.Err, fsm.ErrLeaseHeld) {
		t.Errorf("acquire for %s while %s holds the lease: %+v, want %v", oldLeader.ID, holder.ID, refused, fsm.ErrLeaseHeld)
	}
	if refused.Lease.Holder != holder.ID || refused.Lease.Token != token {
		t.Errorf("refused acquire changed the lease: %+v, want holder %s token %d", refused.Lease, holder.ID, token)
	}
	for _, a := range c.Live() {
		checkLease(t, a, holder.ID, token)
	}

	target := mustStatus(t, newLeader).CommitIndex
	oldLeader.Restart(t)
	// The new leader may have handed leadership on since (it does when it
	// holds the lease itself, lease.prefer_follower): any leader but the
	// restarted node will do.
	ts.WaitFor(t, 20*time.Second, "restarted "+oldLeader.ID+" to rejoin and catch up", func() (bool, string) {
		st, err := oldLeader.Status(context.Background())
		switch {
		case err != nil:
			return false, err.Error()
		case st.Leader == nil || st.Leader.ID == oldLeader.ID:
			return false, fmt.Sprintf("leader %+v, want one of the nodes that stayed up", st.Leader)
		case len(st.Members) != 3:
			return false, fmt.Sprintf("%d members", len(st.Members))
		case st.AppliedIndex < target:
			return false, fmt.Sprintf("applied_index %d < leader's commit_index %d", st.AppliedIndex, target)
		}
		return true, ""
	})
	c.WaitFormed(t, 20*time.Second)
	checkLease(t, oldLeader, holder.ID, token)
}

func TestJoinTwiceIsHarmless(t *testing.T) {
	c := ts.StartCluster(t, 3, "", nil)
	node3 := c.Agents[2]
	before := mustStatus(t, c.Agents[0])

	// The same join again: the leader says it is a member already; a
	// follower relays no join (the joiner asks the leader itself).
	req := api.JoinRequest{NodeID: node3.ID, RaftAddr: node3.RaftAddr, HTTPAddr: node3.HTTPAddr}
	leader := c.Leader(t)
	for _, a := range c.Agents {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := a.Join(ctx, req)
		cancel()
		switch {
		case a == leader && err != nil:
			t.Fatalf("join again via the leader: %v", err)
		case a == leader && !resp.AlreadyMember:
			t.Errorf("join again via %s: %+v, want already_member", a.ID, resp)
		case a != leader && !errors.Is(err, api.ErrNotLeader):
			t.Errorf("join again via follower %s: %+v, %v; want not_leader", a.ID, resp, err)
		}
	}

	// A restart with -join: the node has Raft state, so it ignores -join.
	node3.Stop(t)
	node3.RestartWith(t, "-join", c.Agents[0].HTTPAddr)
	c.WaitFormed(t, 20*time.Second)
	if !strings.Contains(node3.Log(), "ignoring -join") {
		t.Errorf("%s restarted with state and -join, but its log does not say that -join is ignored:\n%s", node3.ID, node3.LogTail(20))
	}
	after := mustStatus(t, c.Agents[0])
	if len(after.Members) != len(before.Members) {
		t.Errorf("members changed from %+v to %+v", before.Members, after.Members)
	}
}

func TestJoinWithTakenNodeIDRefused(t *testing.T) {
	c := ts.StartCluster(t, 3, "", nil)
	leader := c.Leader(t)
	node2 := c.Agents[1]
	for _, via := range []*ts.Agent{leader, c.Followers(leader)[0]} {
		dup := ts.StartAgent(t, c.Dir, ts.AgentSpec{
			NodeID:   node2.ID,
			Join:     []string{via.HTTPAddr},
			ExtraHCL: `join_timeout = "3s"`,
		})
		if code := dup.WaitExit(t, 15*time.Second); code == 0 {
			t.Fatalf("second %s joining via %s exited with status 0, want a failure", node2.ID, via.ID)
		}
		log := dup.Log()
		want := fmt.Sprintf("node ID %s is already a member at raft address %s, not %s", node2.ID, node2.RaftAddr, dup.RaftAddr)
		if !strings.Contains(log, want) {
			t.Errorf("second %s joining via %s: output does not say %q:\n%s", node2.ID, via.ID, want, dup.LogTail(10))
		}
		// Joins go to the leader, whichever member -join names.
		if !strings.Contains(log, "geocursor: join via "+leader.HTTPAddr+" refused") {
			t.Errorf("second %s joining via %s: no one-line error on stderr:\n%s", node2.ID, via.ID, dup.LogTail(10))
		}
	}
	// The group is as it was: node2 at its own addresses, three members.
	c.WaitFormed(t, 10*time.Second)
}

func TestRestartWholeCluster(t *testing.T) {
	c := ts.StartCluster(t, 3, "", nil)
	leader := c.Leader(t)
	followers := c.Followers(leader)
	// The leader holds the lease and is stopped last, once the group has
	// lost its majority, so that no leader sees the holder go away and
	// revokes the lease.
	holder := leader
	granted := lease(t, followers[0], "acquire", holder.ID, 0)
	if granted.Err != nil || granted.Lease.Holder != holder.ID {
		t.Fatalf("acquire for %s: %+v", holder.ID, granted)
	}
	token := granted.Lease.Token
	beforeTerm := mustStatus(t, leader).Term

	for _, a := range append(followers, leader) {
		a.Stop(t)
	}

	// The holder comes back first, so the first leader of the new term can
	// reach it.
	holder.Restart(t)
	holder.WaitUp(t, 10*time.Second)
	for _, a := range followers {
		a.Restart(t)
	}
	c.WaitFormed(t, 30*time.Second)
	newLeader := c.Leader(t)
	if term := mustStatus(t, newLeader).Term; term <= beforeTerm {
		t.Errorf("term after the restart is %d, want above %d", term, beforeTerm)
	}
	for _, a := range c.Agents {
		checkLease(t, a, holder.ID, token)
	}

	// Tokens are never reused: the next grant after a release is token+1.
	other := followers[0]
	if ans := lease(t, other, "release", holder.ID, token); ans.Err != nil || ans.Lease.Holder != "" {
		t.Fatalf("release of token %d: %+v", token, ans)
	}
	next := lease(t, other, "acquire", other.ID, 0)
	if next.Err != nil || next.Lease.Token != token+1 {
		t.Errorf("acquire after release: %+v, want token %d", next, token+1)
	}
}

// lease posts a lease command and fails the test unless the request went
// through (a refusal by the state machine is in the answer's Err).
func lease(t *testing.T, via *ts.Agent, op, node string, token uint64) fsm.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	req := api.LeaseRequest{Node: node, Token: token}
	if op != "release" {
		req.TTL = leaseTTL.String()
	}
	res, err := via.Lease(ctx, op, req)
	if err != nil {
		t.Fatalf("%s for %s: %v", op, node, err)
	}
	return res
}

func mustStatus(t *testing.T, a *ts.Agent) api.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatalf("status of %s: %v", a.ID, err)
	}
	return st
}

// checkLease waits until a's replica shows the lease held by holder with
// token (a follower applies an entry a moment after the leader).
func checkLease(t *testing.T, a *ts.Agent, holder string, token uint64) {
	t.Helper()
	ts.WaitFor(t, 10*time.Second, fmt.Sprintf("%s to show the lease held by %s with token %d", a.ID, holder, token), func() (bool, string) {
		st, err := a.Status(context.Background())
		if err != nil {
			return false, err.Error()
		}
		l := st.Lease
		if l.Holder == nil || *l.Holder != holder || l.Token != token || l.ExpiresAt == nil {
			b, _ := json.Marshal(l)
			return false, "lease " + string(b)
		}
		return true, ""
	})
}

// runCLI runs the geocursor binary and fails the test unless it exits
// with wantCode; it returns stdout.
func runCLI(t *testing.T, wantCode int, args ...string) string {
	t.Helper()
	stdout, _ := runCLIBoth(t, wantCode, args...)
	return stdout
}

// runCLIOutput is runCLI returning stdout and stderr together, for a
// command whose error is the point.
func runCLIOutput(t *testing.T, wantCode int, args ...string) string {
	t.Helper()
	stdout, stderr := runCLIBoth(t, wantCode, args...)
	return stdout + stderr
}

func runCLIBoth(t *testing.T, wantCode int, args ...string) (string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, ts.BuildBinary(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("run geocursor %s: %v", strings.Join(args, " "), err)
	}
	if code != wantCode {
		t.Fatalf("geocursor %s: exit status %d, want %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, wantCode, stdout.String(), stderr.String())
	}
	return stdout.String(), stderr.String()
}

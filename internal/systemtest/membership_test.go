package systemtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/internal/loadgen"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

// Membership (issue 12): removing a dead peer, leaving on SIGTERM, forming
// one group without a designated first node, and readiness that tells the
// truth.

// A SIGKILLed node is removed with one command and the two voters left
// keep processing; removing a live voter while another is down is refused,
// since the group would stop.
func TestRemoveDeadPeerLeavesTwoVotersThatKeepProcessing(t *testing.T) {
	d := newProcDBs(t, false)
	c := startProcessing(t, d, procConfig{FastTimers: true})
	bg := startLoad(t, d, loadgen.Config{Writers: 4, Rate: 300, RollbackFraction: 0.02, HoldFraction: 0.02, HoldFor: 200 * time.Millisecond, Seed: 12})
	waitCursor(t, c.Agents, 50, 30*time.Second)

	leader := c.Leader(t)
	var dead, live *ts.Agent
	for _, a := range c.Followers(leader) {
		if dead == nil {
			dead = a
		} else {
			live = a
		}
	}
	dead.Kill(t)

	out := runCLIOutput(t, 1, "cluster", "remove", "-id", live.ID, "-addr", leader.HTTPAddr)
	if !strings.Contains(out, "only 1 of them answer") || !strings.Contains(out, "-force") {
		t.Errorf("removing live %s while %s is down: %q, want a refusal that names the quorum and -force", live.ID, dead.ID, out)
	}
	// Asked of a follower, the removal goes to the leader.
	out = runCLI(t, 0, "cluster", "remove", "-id", dead.ID, "-addr", live.HTTPAddr)
	if !strings.Contains(out, "Removed "+dead.ID) || !strings.Contains(out, "2 voters left") {
		t.Errorf("cluster remove of dead %s: %q", dead.ID, out)
	}
	ts.WaitFor(t, 10*time.Second, "two members, both voters, on the leader", func() (bool, string) {
		st := mustStatus(t, leader)
		if len(st.Members) != 2 {
			return false, fmt.Sprintf("%+v", st.Members)
		}
		for _, m := range st.Members {
			if m.ID == dead.ID || !m.Voter || !m.Reachable {
				return false, fmt.Sprintf("%+v", st.Members)
			}
		}
		return true, ""
	})
	if out := runCLIOutput(t, 1, "cluster", "remove", "-id", dead.ID, "-addr", leader.HTTPAddr); !strings.Contains(out, "not a member") {
		t.Errorf("removing %s twice: %q, want not a member", dead.ID, out)
	}
	// The two go on processing, exactly once.
	before := mustStatus(t, leader).Cursor.LastEventID
	waitCursor(t, []*ts.Agent{leader, live}, before+100, 30*time.Second)
	bg.stop(t)
	checkOutcome(t, d, c)
}

// With leave_on_terminate a stopped node takes itself out of the group.
func TestLeaveOnTerminateRemovesTheStoppedNode(t *testing.T) {
	c := ts.StartCluster(t, 3, "leave_on_terminate = true", nil)
	leader := c.Leader(t)
	f := c.Followers(leader)
	f[0].Stop(t)
	ts.WaitFor(t, 10*time.Second, f[0].ID+" gone from the configuration", func() (bool, string) {
		st := mustStatus(t, leader)
		for _, m := range st.Members {
			if m.ID == f[0].ID {
				return false, fmt.Sprintf("%+v", st.Members)
			}
		}
		return len(st.Members) == 2, fmt.Sprintf("%+v", st.Members)
	})
	if !strings.Contains(f[0].LogTail(30), "leave_on_terminate: left the group") {
		t.Errorf("%s's log does not say it left:\n%s", f[0].ID, f[0].LogTail(30))
	}
}

// Three nodes with bootstrap_expect = 3 and the same join list, started
// at once in a random order, form exactly one group, ten times in a row.
func TestBootstrapExpectFormsExactlyOneGroup(t *testing.T) {
	for round := 1; round <= 10; round++ {
		t.Run(fmt.Sprintf("round %d", round), func(t *testing.T) {
			dir := ts.TempDir(t, "geocursor-expect-")
			ids := []string{"node1", "node2", "node3"}
			http := map[string]string{}
			var join []string
			for _, id := range ids {
				http[id] = ts.FreeAddr(t)
				join = append(join, http[id])
			}
			order := rand.Perm(3)
			agents := make([]*ts.Agent, 3)
			var wg sync.WaitGroup
			for i, k := range order {
				id := ids[k]
				delay := time.Duration(rand.IntN(300)) * time.Millisecond
				wg.Go(func() {
					time.Sleep(delay)
					agents[i] = ts.StartAgent(t, dir, ts.AgentSpec{NodeID: id, HTTPAddr: http[id], Join: join,
						ExtraHCL: "bootstrap_expect = 3\njoin_timeout = \"30s\""})
				})
			}
			wg.Wait()
			ts.WaitFor(t, 30*time.Second, "one group of three voters", func() (bool, string) {
				leader := ""
				for _, a := range agents {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
					st, err := a.Status(ctx)
					cancel()
					if err != nil {
						return false, err.Error()
					}
					if st.Leader == nil {
						return false, a.ID + " knows no leader"
					}
					if leader != "" && st.Leader.ID != leader {
						// Two leaders: two groups (or a moment of an election).
						return false, fmt.Sprintf("%s sees leader %s, another sees %s", a.ID, st.Leader.ID, leader)
					}
					leader = st.Leader.ID
					voters := 0
					for _, m := range st.Members {
						if m.Voter {
							voters++
						}
					}
					if len(st.Members) != 3 || voters != 3 {
						return false, fmt.Sprintf("%s sees %+v", a.ID, st.Members)
					}
				}
				return true, ""
			})
			// Exactly one node bootstrapped.
			n := 0
			for _, a := range agents {
				if strings.Contains(a.LogTail(200), "bootstraps the group") {
					n++
				}
			}
			if n != 1 {
				t.Errorf("%d nodes bootstrapped a group, want exactly one", n)
			}
		})
	}
}

// A follower whose data directory is full cannot store Raft entries: it is
// not ready, says why, and is ready again once there is room.
func TestReadyIsFalseWhileTheRaftLogCannotBeWritten(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs for the data directory")
	}
	dir := ts.TempDir(t, "geocursor-full-")
	node1 := ts.StartAgent(t, dir, ts.AgentSpec{NodeID: "node1"})
	node1.WaitReady(t, 20*time.Second)
	node2 := ts.StartAgent(t, dir, ts.AgentSpec{NodeID: "node2", Join: []string{node1.HTTPAddr}})
	node3 := ts.StartAgent(t, dir, ts.AgentSpec{NodeID: "node3", Join: []string{node1.HTTPAddr}})
	for _, a := range []*ts.Agent{node2, node3} {
		a.WaitReady(t, 30*time.Second)
	}
	ts.WaitFor(t, 20*time.Second, "node3 to be a voter", func() (bool, string) {
		for _, m := range mustStatus(t, node1).Members {
			if m.ID == "node3" {
				return m.Voter, fmt.Sprintf("%+v", m)
			}
		}
		return false, "not a member"
	})
	// Move node3's data directory onto a 3 MiB tmpfs.
	node3.Stop(t)
	data, saved := node3.DataDir, filepath.Join(dir, "node3-saved")
	if out, err := exec.Command("cp", "-a", data, saved).CombinedOutput(); err != nil {
		t.Fatalf("save node3's data: %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", data).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs (%v: %s)", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", data).Run() })
	if out, err := exec.Command("sh", "-c", "cp -a "+saved+"/. "+data).CombinedOutput(); err != nil {
		t.Fatalf("restore node3's data onto the tmpfs: %v: %s", err, out)
	}
	node3.Restart(t)
	node3.WaitReady(t, 30*time.Second)

	// Fill the disk, then have the leader write entries.
	filler := filepath.Join(data, "filler")
	_ = exec.Command("dd", "if=/dev/zero", "of="+filler, "bs=64k").Run() // ends with ENOSPC
	if out, err := exec.Command("df", "-k", data).CombinedOutput(); err == nil {
		t.Logf("node3's data directory after filling it:\n%s", out)
	}
	// Grants to node1 over and over: each is an entry (refusals are not),
	// and enough of them soon need pages the full disk cannot give.
	stopWrites := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stopWrites:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, _ = node1.Lease(ctx, "acquire", api.LeaseRequest{Node: "node1", TTL: "10s"})
				cancel()
			}
		})
	}
	defer func() { close(stopWrites); wg.Wait() }()
	var reason string
	ts.WaitFor(t, 60*time.Second, "node3 not ready for want of disk", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		r, err := node3.ReadyState(ctx)
		if err != nil {
			return false, err.Error()
		}
		reason = r.Reason
		return !r.Ready && strings.Contains(r.Reason, "no space left on device"), fmt.Sprintf("%+v", r)
	})
	if !strings.Contains(reason, "cannot write its raft log") {
		t.Errorf("the reason %q does not say what cannot be written", reason)
	}
	if st := mustStatus(t, node3); st.Ready || !strings.Contains(st.NotReady, "no space left on device") {
		t.Errorf("node3's status: ready %v, %q; want not ready for want of disk", st.Ready, st.NotReady)
	}
	if table := runCLI(t, 0, "cluster", "status", "-addr", node3.HTTPAddr); !strings.Contains(table, "NOT READY") {
		t.Errorf("cluster status of node3 does not show it not ready:\n%s", table)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	ts.WaitFor(t, 30*time.Second, "node3 ready again once there is room", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		r, err := node3.ReadyState(ctx)
		if err != nil {
			return false, err.Error()
		}
		return r.Ready, r.Reason
	})
}

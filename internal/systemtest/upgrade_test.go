package systemtest

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/geocursor/geocursor/internal/loadgen"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

// Upgrades (design section 14, issue 19): a site rolls a group of the
// previous release (testsupport.PreviousRelease, built from its commit)
// over to this build one node at a time while it processes, and may take
// one node back.

// maxRollPause bounds the longest pause between committed jobs while the
// nodes are replaced one at a time with clean stops (issue 19).
const maxRollPause = 1500 * time.Millisecond

// rollDwell is how long each replaced node runs before the next one is
// stopped (issue 19).
const rollDwell = 10 * time.Second

// Three agents of the previous release process a steady load (~200
// events/s) with TLS and tokens; each is stopped with SIGTERM, started
// again with this build on the same data dir and config, and left ten
// seconds before the next. Every event is applied exactly once, and no
// pause between committed jobs during the roll is longer than
// maxRollPause. Then one node of the new build is taken back to the
// previous release under load: the group either goes on, every event
// still once, or the old node refuses to start, saying which versions.
func TestUpgradeRollUnderLoadThenDowngradeOneNode(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the previous release and rolls a processing group over to this build (about a minute)")
	}
	clk := newClock(t)
	oldBin := ts.BuildRelease(t, ts.PreviousRelease)
	newBin := ts.BuildBinary(t)
	clk.Logf("previous release: %s; this build: %s", binaryVersion(t, oldBin), binaryVersion(t, newBin))

	d := newProcDBs(t, false)
	// No gitlab block and no token files: the previous release's config
	// has neither. Its tls and acl blocks (tokens in the file) read the
	// same in both releases.
	p := procConfig{Secure: true}
	c := ts.StartSecureClusterOf(t, oldBin, 3, p.HCL(), d.Env())
	waitDatabases(t, c.Agents)
	clk.Logf("three agents of %s formed a group and reach both databases", ts.PreviousRelease)

	bg := startLoad(t, d, loadgen.Config{Writers: 4, Rate: 200, Seed: 19})
	waitCursor(t, c.Agents, 200, 30*time.Second)
	baseFrom := time.Now()
	dwell(t, c, 5*time.Second)

	rollFrom := time.Now()
	var steps []rollStep
	for _, a := range c.Agents {
		step := rollStep{node: a.ID, role: roleOf(t, c, a), stopped: time.Now()}
		a.Stop(t)
		a.RestartWithBinary(t, newBin)
		step.started = time.Now()
		dwell(t, c, rollDwell)
		c.WaitFormed(t, 30*time.Second)
		waitDatabases(t, c.Agents)
		steps = append(steps, step)
		clk.Logf("%s (%s) replaced with this build: stopped in %s, ran %s", a.ID, step.role,
			step.started.Sub(step.stopped).Round(time.Millisecond), rollDwell)
	}
	rollTo := time.Now()
	stats := bg.stop(t)
	clk.Logf("load stopped: %d events committed", stats.Committed)
	checkOutcome(t, d, c)

	times := jobTimes(t, d, baseFrom, rollTo)
	base := longestPause(times, baseFrom, rollFrom)
	roll := longestPause(times, rollFrom, rollTo)
	for i, s := range steps {
		to := rollTo
		if i+1 < len(steps) {
			to = steps[i+1].stopped
		}
		sp := longestPause(times, s.stopped, to)
		clk.Logf("FIGURE: upgrade of %s (%s, SIGTERM then this build): longest pause between committed jobs %s (%s after the stop)",
			s.node, s.role, sp.length().Round(time.Millisecond), sp.from.Sub(s.stopped).Round(time.Millisecond))
	}
	clk.Logf("FIGURE: upgrade roll %s -> this build, 3 nodes under ~200 events/s: longest pause between committed jobs %s (%s into the roll of %s, %d jobs); %s in the %s before the roll",
		ts.PreviousRelease, roll.length().Round(time.Millisecond), roll.from.Sub(rollFrom).Round(time.Millisecond),
		rollTo.Sub(rollFrom).Round(time.Second), len(times), base.length().Round(time.Millisecond), rollFrom.Sub(baseFrom).Round(time.Second))
	if roll.length() > maxRollPause {
		t.Errorf("the longest pause between committed jobs during the roll is %s (from %s to %s after the roll began), want at most %s",
			roll.length().Round(time.Millisecond), roll.from.Sub(rollFrom).Round(time.Millisecond), roll.to.Sub(rollFrom).Round(time.Millisecond), maxRollPause)
	}

	for _, a := range c.Agents {
		if w := warningMessages(warningLines(a.Log())); w != "" {
			clk.Logf("%s logged during the roll (both releases): %s", a.ID, w)
		}
	}

	downgradeOneNode(t, clk, d, c, oldBin)
}

// warningMessages counts the lines of an agent's log by message, for a
// look at what two releases in one group complain about.
func warningMessages(lines []string) string {
	counts := map[string]int{}
	var order []string
	for _, l := range lines {
		var entry struct {
			Message string `json:"@message"`
		}
		if json.Unmarshal([]byte(l), &entry) != nil {
			entry.Message = l
		}
		if counts[entry.Message] == 0 {
			order = append(order, entry.Message)
		}
		counts[entry.Message]++
	}
	var parts []string
	for _, m := range order {
		parts = append(parts, fmt.Sprintf("%q x%d", m, counts[m]))
	}
	return strings.Join(parts, "; ")
}

// downgradeOneNode takes a follower of the new build back to oldBin under
// load. Either outcome the design allows passes: the old node runs in the
// group and every event is still applied once, or it refuses to start
// with a message that names the versions.
func downgradeOneNode(t *testing.T, clk *testClock, d *procDBs, c *ts.Cluster, oldBin string) {
	t.Helper()
	leader := c.Leader(t)
	a := c.Followers(leader)[0]
	bg := startLoad(t, d, loadgen.Config{Writers: 4, Rate: 200, Seed: 20})
	dwell(t, c, 2*time.Second)
	from := logSize(t, a)
	a.Stop(t)
	a.RestartWithBinary(t, oldBin)
	clk.Logf("%s (follower) stopped and started again with %s", a.ID, ts.PreviousRelease)

	deadline := time.Now().Add(rollDwell)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for a.Running() && time.Now().Before(deadline) {
		for _, o := range c.Agents {
			if o != a && !o.Running() {
				t.Fatalf("%s exited while %s ran the previous release (%s)\n%s", o.ID, a.ID, o.ExitState(), o.LogTail(20))
			}
		}
		<-tick.C
	}
	logged := strings.Join(logSince(a, from), "\n")
	if !a.Running() {
		code := a.WaitExit(t, time.Second)
		clk.Logf("the downgrade is refused: %s exited with status %d:\n%s", a.ID, code, a.LogTail(10))
		if code == 0 || !strings.Contains(strings.ToLower(logged), "version") {
			t.Errorf("%s of %s exited with status %d without a message that names the versions:\n%s", a.ID, ts.PreviousRelease, code, logged)
		}
		bg.stop(t)
		checkOutcome(t, d, c) // the other two go on
		return
	}
	c.WaitFormed(t, 30*time.Second)
	waitDatabases(t, c.Agents)
	stats := bg.stop(t)
	if warnings := warningLines(logged); len(warnings) > 0 {
		clk.Logf("%s of %s logged %d warnings and errors since its start, among them:\n%s", a.ID, ts.PreviousRelease,
			len(warnings), strings.Join(warnings[:min(len(warnings), 8)], "\n"))
	}
	clk.Logf("the downgrade works: %s of %s runs in the group with two of this build (%d events committed meanwhile)",
		a.ID, ts.PreviousRelease, stats.Committed)
	checkOutcome(t, d, c)
}

// warningLines are the lines of an agent's log (hclog's JSON) at level
// warn or error.
func warningLines(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, `"@level":"warn"`) || strings.Contains(l, `"@level":"error"`) {
			out = append(out, l)
		}
	}
	return out
}

// rollStep is one node's replacement during the roll.
type rollStep struct {
	node, role       string
	stopped, started time.Time
}

// roleOf says whether a leads the group, holds the lease, both or neither,
// as the first agent that answers sees it.
func roleOf(t *testing.T, c *ts.Cluster, a *ts.Agent) string {
	t.Helper()
	st, err := anyStatus(c.Agents)
	if err != nil {
		t.Fatalf("status before stopping %s: %v", a.ID, err)
	}
	var roles []string
	if st.Leader != nil && st.Leader.ID == a.ID {
		roles = append(roles, "leader")
	}
	if st.Lease.Holder != nil && *st.Lease.Holder == a.ID {
		roles = append(roles, "lease holder")
	}
	if len(roles) == 0 {
		return "follower"
	}
	return strings.Join(roles, ", ")
}

// dwell lets the group run for d, and fails the test at once if an agent
// exits meanwhile.
func dwell(t *testing.T, c *ts.Cluster, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		for _, a := range c.Agents {
			if !a.Running() {
				t.Fatalf("%s exited (%s)\n%s", a.ID, a.ExitState(), a.LogTail(20))
			}
		}
		<-tick.C
	}
}

// binaryVersion is what `geocursor version` prints.
func binaryVersion(t *testing.T, bin string) string {
	t.Helper()
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s version: %v\n%s", bin, err, out)
	}
	return strings.TrimSpace(string(out))
}

// jobTimes are the created_at times of the geo_jobs rows written in
// [from, to], in order.
func jobTimes(t *testing.T, d *procDBs, from, to time.Time) []time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := d.Tracking.Query(ctx, `SELECT created_at FROM geo_jobs WHERE created_at >= $1 AND created_at <= $2 ORDER BY created_at`, from, to)
	if err != nil {
		t.Fatalf("read the job times: %v", err)
	}
	times, err := pgx.CollectRows(rows, pgx.RowTo[time.Time])
	if err != nil {
		t.Fatalf("read the job times: %v", err)
	}
	return times
}

// pause is a time without committed jobs.
type pause struct{ from, to time.Time }

func (p pause) length() time.Duration { return p.to.Sub(p.from) }

// longestPause returns the longest pause between consecutive job times
// in [from, to], whose edges count as jobs (as the benchmark's
// longestGaps does), so that a window without any is one pause.
func longestPause(times []time.Time, from, to time.Time) pause {
	best := pause{from, from}
	prev := from
	for _, tm := range times {
		if tm.Before(from) || tm.After(to) {
			continue
		}
		if tm.Sub(prev) > best.length() {
			best = pause{prev, tm}
		}
		prev = tm
	}
	if to.Sub(prev) > best.length() {
		best = pause{prev, to}
	}
	return best
}

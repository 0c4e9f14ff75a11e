package systemtest

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/geocursor/geocursor/internal/loadgen"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

// TestCursorPauseStopsProcessingAndResumeCatchesUp pauses processing with
// the CLI through a follower, writes events, checks that no peer processes
// them while paused, resumes, and checks that every event is then
// processed exactly once.
func TestCursorPauseStopsProcessingAndResumeCatchesUp(t *testing.T) {
	d := newProcDBs(t, false)
	c := startProcessing(t, d, procConfig{})
	bin := ts.BuildBinary(t)
	follower := c.Followers(c.Leader(t))[0]

	cli := func(verb string) {
		t.Helper()
		out, err := exec.Command(bin, "cursor", verb, "-addr", follower.HTTPAddr).CombinedOutput()
		if err != nil {
			t.Fatalf("geocursor cursor %s: %v: %s", verb, err, out)
		}
		if !strings.Contains(strings.ToLower(string(out)), verb) {
			t.Fatalf("geocursor cursor %s printed %q", verb, out)
		}
	}
	cli("pause")
	ts.WaitFor(t, 10*time.Second, "status to show the cursor paused", func() (bool, string) {
		st, err := anyStatus(c.Agents)
		if err != nil {
			return false, err.Error()
		}
		return st.Cursor.Paused && st.Lease.Holder == nil, leaseString(st)
	})
	before := mustStatus(t, c.Agents[0]).Cursor.LastEventID

	stats := startLoad(t, d, loadgen.Config{Writers: 4, Total: 500, Seed: 7}).wait(t, time.Minute)
	// Give the peers many poll intervals to (wrongly) pick the events up.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		st := mustStatus(t, c.Agents[1])
		if st.Cursor.LastEventID != before || st.Lease.Holder != nil {
			t.Fatalf("processing went on while paused: cursor %d (was %d), lease %s", st.Cursor.LastEventID, before, leaseString(st))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := queryInt(t, d.Tracking, `SELECT count(*) FROM geo_jobs`); n != 0 {
		t.Fatalf("%d jobs written while paused", n)
	}

	cli("resume")
	waitCursor(t, c.Agents, stats.LastID, 30*time.Second)
	checkOutcome(t, d, c)
}

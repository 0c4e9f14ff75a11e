package systemtest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/internal/loadgen"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

// The operator's cursor and snapshot commands (issue 12).

// cursorShow runs `cursor show -format json` against a.
func cursorShow(t *testing.T, a *ts.Agent) api.CursorState {
	t.Helper()
	var st api.CursorState
	out := runCLI(t, 0, "cursor", "show", "-format", "json", "-addr", a.HTTPAddr)
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("cursor show -format json: %v\n%s", err, out)
	}
	return st
}

// While a load runs, cursor set moves the cursor forwards past events not
// yet written (they are skipped) and, with -force, back (the events after
// it are processed again); the fence row and the replicated cursor agree
// after each, and no other event is skipped or repeated.
func TestCursorSetForwardsAndBackUnderLoad(t *testing.T) {
	d := newProcDBs(t, false)
	c := startProcessing(t, d, procConfig{FastTimers: true})
	bg := startLoad(t, d, loadgen.Config{Writers: 4, Rate: 300, Seed: 21})
	waitCursor(t, c.Agents, 300, 30*time.Second)
	a := c.Agents[1]

	// Forwards, past events the load has not written yet: beyond the
	// source head, which needs -force.
	head := sourceHead(t, d)
	skipTo := head + 400
	out := runCLI(t, 0, "cursor", "set", "-event-id", fmt.Sprint(skipTo), "-force", "-addr", a.HTTPAddr)
	if !strings.Contains(out, "Cursor moved forwards from") || !strings.Contains(out, fmt.Sprintf("to %d", skipTo)) {
		t.Errorf("cursor set forwards: %q", out)
	}
	// Gaps open at the set (IDs below skipFrom whose transactions had not
	// committed) are given up with it: those events may have no row.
	var (
		skipFrom, setTo int64
		setToken        uint64
		nSkipped, given int
	)
	if _, err := fmt.Sscanf(out, "Cursor moved forwards from %d to %d under token %d: %d events skipped, %d open gaps given up.",
		&skipFrom, &setTo, &setToken, &nSkipped, &given); err != nil {
		t.Fatalf("cursor set said %q: %v", out, err)
	}
	if st := cursorShow(t, a); st.LastEventID < skipTo || st.Fence == nil || st.Fence.LastEventID < skipTo {
		t.Errorf("after cursor set to %d: %+v (fence %+v)", skipTo, st, st.Fence)
	}
	waitCursor(t, c.Agents, skipTo+300, 60*time.Second)

	// Backwards without -force is refused and changes nothing.
	cur := mustStatus(t, a).Cursor.LastEventID
	back := skipTo + 100
	if out := runCLIOutput(t, 1, "cursor", "set", "-event-id", fmt.Sprint(back), "-addr", a.HTTPAddr); !strings.Contains(out, "pass -force") {
		t.Errorf("cursor set backwards without -force: %q", out)
	}
	replayFrom := time.Now()
	out = runCLI(t, 0, "cursor", "set", "-event-id", fmt.Sprint(back), "-force", "-addr", c.Agents[2].HTTPAddr)
	if !strings.Contains(out, "Cursor moved back") {
		t.Errorf("cursor set -force backwards: %q", out)
	}
	waitCursor(t, c.Agents, cur+200, 60*time.Second)
	bg.stop(t)

	// Catch up, then check: the replicated cursor and the fence agree; the
	// events in skipFrom+1..skipTo have no row, every other event exactly
	// one; those after back were processed again after the set.
	head = sourceHead(t, d)
	waitCursor(t, c.Agents, head, 60*time.Second)
	ctx := context.Background()
	ts.WaitFor(t, 20*time.Second, "the fence row and the replicated cursor to agree", func() (bool, string) {
		f, err := readFence(ctx, d)
		if err != nil {
			return false, err.Error()
		}
		st := mustStatus(t, a)
		return f.LastEventID == st.Cursor.LastEventID && f.LastEventID >= head, fmt.Sprintf("fence %d, cursor %d, head %d", f.LastEventID, st.Cursor.LastEventID, head)
	})
	src, err := readSourceIDs(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := readTracked(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	var (
		wrong   []string
		givenUp []int64
		skipped int
	)
	for _, id := range src {
		n := tr.jobs[id] + tr.deadLetters[id]
		want := 1
		if id > skipFrom && id <= skipTo {
			want, skipped = 0, skipped+1
		}
		if n == 0 && want == 1 && id <= skipFrom && len(givenUp) < given {
			givenUp = append(givenUp, id)
			continue
		}
		if n != want && len(wrong) < 10 {
			wrong = append(wrong, fmt.Sprintf("event %d has %d rows, want %d", id, n, want))
		}
	}
	if len(givenUp) > 0 {
		t.Logf("events %v were open gaps given up by the forward set (it gave up %d)", givenUp, given)
	}
	if len(wrong) > 0 {
		t.Errorf("after the cursor sets (skip %d..%d, back to %d): %s", skipFrom+1, skipTo, back, strings.Join(wrong, "; "))
	}
	if skipped == 0 {
		t.Errorf("no event fell in the skipped range %d..%d: the test proves nothing", skipFrom+1, skipTo)
	}
	early := queryInt(t, d.Tracking, `SELECT count(*) FROM geo_jobs WHERE event_id > $1 AND event_id <= $2 AND created_at < $3`, back, cur, replayFrom)
	if early != 0 {
		t.Errorf("%d jobs of events after %d were not written again after the cursor moved back", early, back)
	}
	for _, ag := range c.Agents {
		if strings.Contains(ag.LogTail(400), "cursor set by an operator") {
			return
		}
	}
	t.Error("no agent logged the audit line \"cursor set by an operator\"")
}

// snapshot save, wipe every data directory, a fresh group, snapshot
// restore: processing goes on where it was, every event exactly once.
func TestSnapshotSaveWipeRestore(t *testing.T) {
	d := newProcDBs(t, false)
	c := startProcessing(t, d, procConfig{FastTimers: true})
	bg := startLoad(t, d, loadgen.Config{Writers: 4, Rate: 300, HoldFraction: 0.02, HoldFor: 300 * time.Millisecond, Seed: 22})
	waitCursor(t, c.Agents, 500, 30*time.Second)
	bg.stop(t)
	waitCursor(t, c.Agents, sourceHead(t, d), 30*time.Second)

	file := filepath.Join(t.TempDir(), "state.json")
	out := runCLI(t, 0, "snapshot", "save", file, "-addr", c.Agents[1].HTTPAddr)
	if !strings.Contains(out, "Saved the replicated state") {
		t.Errorf("snapshot save: %q", out)
	}
	var snap api.Snapshot
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &snap); err != nil || snap.Cursor.LastEventID == 0 || snap.Token == 0 {
		t.Fatalf("the snapshot file: %+v, %v", snap, err)
	}
	before := mustStatus(t, c.Agents[0])

	// Everything Raft had is gone; the tracking database stays.
	for _, a := range c.Agents {
		a.Stop(t)
		if err := os.RemoveAll(a.DataDir); err != nil {
			t.Fatal(err)
		}
	}
	// A tracking database that has served for long has seen tokens far
	// beyond the few this test's group granted; a fresh group's grants are
	// fenced until the restore raises its token above the fence's. Without
	// this, the fresh group could count up to the fence's token by itself,
	// adopt the fence and no longer be fresh before the restore reaches it.
	if _, err := d.Tracking.Exec(context.Background(), `UPDATE geocursor_fence SET token = token + 1000000`); err != nil {
		t.Fatal(err)
	}
	c2 := startProcessing(t, d, procConfig{FastTimers: true})
	// Until the restore, every grant is fenced, and the agents say why and
	// what to do.
	ts.WaitFor(t, 30*time.Second, "an agent of the fresh group to say its grants are fenced by a token it never granted", func() (bool, string) {
		for _, a := range c2.Agents {
			if strings.Contains(a.Log(), "has seen a newer lease token than this group ever granted") {
				return true, ""
			}
		}
		return false, "not logged yet"
	})
	out = runCLI(t, 0, "snapshot", "restore", file, "-addr", c2.Agents[0].HTTPAddr)
	if !strings.Contains(out, "Restored") {
		t.Errorf("snapshot restore: %q", out)
	}
	st := mustStatus(t, c2.Agents[0]) // the node restored through shows it at once
	if st.Cursor.LastEventID != snap.Cursor.LastEventID || st.Stats.EventsProcessed != before.Stats.EventsProcessed {
		t.Errorf("after the restore: cursor %d, %d events; want %d, %d", st.Cursor.LastEventID, st.Stats.EventsProcessed, snap.Cursor.LastEventID, before.Stats.EventsProcessed)
	}
	// A second restore is refused: the group is no longer fresh.
	if out := runCLIOutput(t, 1, "snapshot", "restore", file, "-addr", c2.Agents[0].HTTPAddr); !strings.Contains(out, "processed events already") {
		t.Errorf("a second restore: %q", out)
	}
	bg = startLoad(t, d, loadgen.Config{Writers: 4, Rate: 300, HoldFraction: 0.02, HoldFor: 300 * time.Millisecond, Seed: 23})
	waitCursor(t, c2.Agents, snap.Cursor.LastEventID+300, 30*time.Second)
	bg.stop(t)
	checkOutcome(t, d, c2)
}

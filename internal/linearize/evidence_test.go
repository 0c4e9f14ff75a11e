package linearize

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// The soak's false alarms (issue 8): four windows of history.merged.jsonl,
// eleven entries each, in which CheckSafety ordered by stamp reported
// overlapping grants that the Raft log did not have. The histories were
// recorded before answers carried their Raft index; each *.raftlog.jsonl
// holds the window's commands in the order the state machine applied them,
// the one order in which replaying fsm.State.Apply gives every answer
// (checked below).
var evidence = []struct {
	history, log string
	windows      int
}{
	{"soak-overlapping-grants.jsonl", "soak-overlapping-grants.raftlog.jsonl", 3},
	{"soak-overlapping-grants-2.jsonl", "soak-overlapping-grants-2.raftlog.jsonl", 1},
}

const evidenceWindow = 11

func readJSONLines[T any](t *testing.T, path string) []T {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []T
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		out = append(out, v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// evidenceLogEntry is a LogEntry as the testdata stores it.
type evidenceLogEntry struct {
	Index uint64      `json:"index"`
	Cmd   fsm.Command `json:"cmd"`
}

// evidenceWindows splits a history and its log into the windows they hold.
func evidenceWindows(t *testing.T, historyFile, logFile string) (hist [][]api.HistoryEntry, logs [][]LogEntry) {
	t.Helper()
	entries := readJSONLines[api.HistoryEntry](t, filepath.Join("testdata", historyFile))
	stored := readJSONLines[evidenceLogEntry](t, filepath.Join("testdata", logFile))
	if len(entries) != len(stored) || len(entries)%evidenceWindow != 0 {
		t.Fatalf("%s has %d entries, %s %d: want whole windows of %d", historyFile, len(entries), logFile, len(stored), evidenceWindow)
	}
	for i := 0; i < len(entries); i += evidenceWindow {
		hist = append(hist, entries[i:i+evidenceWindow])
		var l []LogEntry
		for _, s := range stored[i : i+evidenceWindow] {
			l = append(l, LogEntry(s))
		}
		logs = append(logs, l)
	}
	return hist, logs
}

// windowStart is the state before a window's first command, as far as the
// window's answers tell: the lease and cursor its first entry shows, and the
// gaps its first advance reports open below that cursor.
func windowStart(win []api.HistoryEntry) fsm.State {
	var s fsm.State
	first := win[0]
	switch first.Cmd.Op {
	case fsm.OpAdvance:
		s.Lease = fsm.Lease{Holder: first.Cmd.Node, Token: first.Cmd.Token, ExpiresAt: 1 << 62}
		s.LastHolder = first.Cmd.Node
	case fsm.OpAcquire:
		s.Lease = fsm.Lease{Token: first.Lease.Token - 1}
		s.Cursor = *first.Cursor
		for _, e := range win {
			if e.Cmd.Op != fsm.OpAdvance {
				continue
			}
			for _, g := range e.Cmd.Advance.Gaps {
				if g.ID < s.Cursor.LastEventID {
					s.Gaps = append(s.Gaps, g)
				}
			}
			break
		}
	}
	return s
}

// replayAgrees replays log from start and reports the first answer in win
// that the replay does not reproduce.
func replayAgrees(win []api.HistoryEntry, log []LogEntry) error {
	byStamp := map[string]api.HistoryEntry{}
	for _, e := range win {
		byStamp[fmt.Sprintf("%s/%s/%d", e.Node, e.Cmd.Op, e.Now)] = e
	}
	s := windowStart(win)
	for _, l := range log {
		res := s.Apply(l.Cmd)
		e, ok := byStamp[fmt.Sprintf("%s/%s/%d", l.Cmd.Node, l.Cmd.Op, l.Cmd.Now)]
		if !ok {
			return fmt.Errorf("log entry %d (%s %s) is not in the window", l.Index, l.Cmd.Node, l.Cmd.Op)
		}
		if api.RefusalCode(res.Err) != e.Code || res.Lease.Holder != e.Lease.Holder || res.Lease.Token != e.Lease.Token ||
			res.Lease.ExpiresAt != e.Lease.ExpiresAt || res.Cursor.LastEventID != e.Cursor.LastEventID {
			return fmt.Errorf("log entry %d (%s %s): replay gives %q %+v cursor %d, %s was told %q %+v cursor %d",
				l.Index, l.Cmd.Node, l.Cmd.Op, api.RefusalCode(res.Err), res.Lease, res.Cursor.LastEventID,
				e.Node, e.Code, *e.Lease, e.Cursor.LastEventID)
		}
	}
	return nil
}

// TestSoakFalseAlarmWindowsHaveNoViolation: in every window, a refused
// acquire stamped after a release was applied before it, and CheckSafety,
// reasoning in apply order, finds nothing wrong.
func TestSoakFalseAlarmWindowsHaveNoViolation(t *testing.T) {
	for _, ev := range evidence {
		hist, logs := evidenceWindows(t, ev.history, ev.log)
		if len(hist) != ev.windows {
			t.Fatalf("%s: %d windows, want %d", ev.history, len(hist), ev.windows)
		}
		for w := range hist {
			t.Run(fmt.Sprintf("%s/window%d", ev.history, w), func(t *testing.T) {
				win, log := hist[w], logs[w]
				if err := replayAgrees(win, log); err != nil {
					t.Fatalf("the log is not the order the answers came from: %v", err)
				}
				if !stampsDisagreeWithLog(log) {
					t.Fatalf("no command in the window was applied out of stamp order: not the shape of the false alarm")
				}
				merged, rec := Reconcile(win, log, false)
				if rec.Matched != len(win) || len(rec.Unmatched)+len(rec.Orphans) != 0 {
					t.Fatalf("reconciliation: %s", rec)
				}
				if v := CheckSafety(merged); len(v) != 0 {
					t.Errorf("violations in a history the raft log explains: %v", v)
				}
			})
		}
	}
}

// stampsDisagreeWithLog reports whether some command was applied before
// one stamped earlier.
func stampsDisagreeWithLog(log []LogEntry) bool {
	return !sort.SliceIsSorted(log, func(i, j int) bool { return log[i].Cmd.Now < log[j].Cmd.Now })
}

// TestInjectedOverlapInSoakWindowIsCaught moves the grant of token 8013 to
// n1 in front of n2's release of token 8012 in the first window's log: the
// state machine would then have granted 8013 while 8012 was held and
// unexpired, which CheckSafety must report.
func TestInjectedOverlapInSoakWindowIsCaught(t *testing.T) {
	hist, logs := evidenceWindows(t, evidence[0].history, evidence[0].log)
	win, log := hist[0], append([]LogEntry(nil), logs[0]...)
	release, grant := -1, -1
	for i, l := range log {
		switch {
		case l.Cmd.Op == fsm.OpAdvance && l.Cmd.Token == 8012:
			release = i
		case l.Cmd.Op == fsm.OpAcquire && l.Cmd.Node == "n1" && release >= 0 && grant < 0:
			grant = i
		}
	}
	if release < 0 || grant != release+1 {
		t.Fatalf("window 0 does not have the release of 8012 followed by n1's grant (release at %d, grant at %d)", release, grant)
	}
	log[release].Cmd, log[grant].Cmd = log[grant].Cmd, log[release].Cmd
	merged, rec := Reconcile(win, log, false)
	if rec.Matched != len(win) {
		t.Fatalf("reconciliation: %s", rec)
	}
	if v := CheckSafety(merged); !hasViolation(v, "overlapping-grants") {
		t.Fatalf("a grant applied while token 8012 was held was not reported: %v", v)
	}
}

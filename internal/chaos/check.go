package chaos

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/internal/devcluster"
	"github.com/geocursor/geocursor/internal/linearize"
	"github.com/geocursor/geocursor/internal/loadgen"
)

// Report is what a run did and what the checks found. Problems are
// violations of the design's guarantees (or a check that could not be
// made); Notes are worth reading but break nothing.
type Report struct {
	Name     string        `json:"name"`
	Dir      string        `json:"dir"`
	Duration time.Duration `json:"duration_ns"`
	Faults   []*Fault      `json:"faults"`
	Load     loadgen.Stats `json:"load"`

	// SourceEvents are the committed events in the source; Processed the
	// rows in geo_jobs and geo_dead_letters together.
	SourceEvents int     `json:"source_events"`
	Processed    int     `json:"processed"`
	Lost         []int64 `json:"lost"`
	Doubled      []int64 `json:"doubled"`
	Phantom      []int64 `json:"phantom"`
	// Head is the source's highest event ID, Cursor the replicated cursor.
	Head   int64 `json:"head"`
	Cursor int64 `json:"cursor"`

	HistoryEntries int    `json:"history_entries"`
	RaftCommands   int    `json:"raft_commands"`
	RaftLogFrom    string `json:"raft_log_from"`
	Reconciliation string `json:"reconciliation"`
	// Linearizable is linearize's verdict on the reconciled history.
	Linearizable  string   `json:"linearizable"`
	CheckInfo     string   `json:"check_info"`
	Safety        []string `json:"safety"`
	Visualization string   `json:"visualization,omitempty"`

	Problems []string `json:"problems"`
	Notes    []string `json:"notes"`
}

// OK reports whether no problem was found.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

func (r *Report) problem(format string, args ...any) {
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

func (r *Report) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

// Summary is a few lines for a test log.
func (r *Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %d faults in %s; %d source events, %d processed, lost %d, doubled %d, phantom %d; cursor %d of head %d; %s",
		r.Name, len(r.Faults), r.Duration.Round(time.Second), r.SourceEvents, r.Processed,
		len(r.Lost), len(r.Doubled), len(r.Phantom), r.Cursor, r.Head, r.Linearizable)
	for _, f := range r.Faults {
		fmt.Fprintf(&b, "\n  %-16s target %-4s holder %-4s leader %-4s down %7s resume %7s (by %-4s) stall %7s recovered %7s after heal",
			f.Kind, orAll(f.Target), orNone(f.Holder), f.Leader, f.Healed.Sub(f.Start).Round(time.Millisecond),
			fmtDur(f.Resume), orNone(f.ResumedBy), fmtDur(f.Stall), fmtDur(f.Recovered.Sub(f.Healed)))
		if f.Note != "" {
			fmt.Fprintf(&b, "\n    note: %s", f.Note)
		}
		if f.Err != "" {
			fmt.Fprintf(&b, "\n    error: %s", f.Err)
		}
	}
	fmt.Fprintf(&b, "\n  history: %d entries, %d raft commands (%s); %s", r.HistoryEntries, r.RaftCommands, r.RaftLogFrom, r.Reconciliation)
	fmt.Fprintf(&b, "\n  check: %s", r.CheckInfo)
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "\n  note: %s", n)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "\n  PROBLEM: %s", p)
	}
	if r.Visualization != "" {
		fmt.Fprintf(&b, "\n  visualization: %s", r.Visualization)
	}
	return b.String()
}

func fmtDur(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return d.Round(time.Millisecond).String()
}

// catchUpTimeout bounds the wait for the cursor to reach the source's
// head once the load has stopped.
const catchUpTimeout = 90 * time.Second

// Finish heals every fault, stops the load, waits for the cursor to
// reach the source's head, stops the agents and checks everything. The
// report is also written to Dir/report.json. The error is for a check
// that could not run at all; violations are in the report.
func (c *Cluster) Finish(ctx context.Context) (*Report, error) {
	r := &Report{Name: c.opts.Name, Dir: c.opts.Dir, Faults: c.Faults}
	defer func() { r.Duration = time.Since(c.Started) }()
	if err := c.healAll(ctx); err != nil {
		r.problem("heal everything: %v", err)
	}
	var stats loadgen.Stats
	if c.load != nil {
		var err error
		stats, err = c.load.stop()
		if err != nil {
			r.problem("the load generator failed: %v", err)
		}
	}
	r.Load = stats
	if err := c.WaitFormed(ctx, recoverTimeout); err != nil {
		r.problem("the group is not whole after healing: %v", err)
	}
	src, err := c.sourceIDs(ctx)
	if err != nil {
		return r, err
	}
	r.SourceEvents = len(src)
	if len(src) > 0 {
		r.Head = src[len(src)-1]
	}
	if c.load != nil && int64(len(src)) != stats.Committed {
		r.note("the load generator counted %d committed events, the source holds %d", stats.Committed, len(src))
	}
	if err := c.waitCaughtUp(ctx, r, len(src)); err != nil {
		r.problem("%v", err)
	}
	if err := c.outcome(ctx, r, src); err != nil {
		return r, err
	}
	if err := c.waitQuiet(ctx, 20*time.Second); err != nil {
		r.note("replicas did not converge before stopping: %v", err)
	}
	for _, a := range c.Agents {
		if !a.Running() {
			continue // nothing to stop; WaitFormed above reported it
		}
		if err := a.Stop(15 * time.Second); err != nil {
			r.note("%v", err)
		}
	}
	c.monitor.stop()
	c.checkHistory(r)
	c.mu.Lock()
	r.Notes = append(r.Notes, c.notes...)
	c.mu.Unlock()
	for _, f := range r.Faults {
		if f.Err != "" {
			r.problem("%s: %s", f.Kind, f.Err)
		}
	}
	r.Duration = time.Since(c.Started)
	if b, err := json.MarshalIndent(r, "", "  "); err == nil {
		_ = os.WriteFile(filepath.Join(c.opts.Dir, "report.json"), b, 0o644)
	}
	return r, nil
}

func (c *Cluster) sourceIDs(ctx context.Context) ([]int64, error) {
	rows, err := c.sourcePool.Query(ctx, `SELECT id FROM geo_event_log ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("read the source's event IDs: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("read the source's event IDs: %w", err)
	}
	return ids, nil
}

// processedIDs returns every event ID in geo_jobs and geo_dead_letters,
// once per row.
func (c *Cluster) processedIDs(ctx context.Context) ([]int64, error) {
	conn, err := pgx.Connect(ctx, c.TrackingDSN)
	if err != nil {
		return nil, fmt.Errorf("connect to the tracking database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	rows, err := conn.Query(ctx, `SELECT event_id FROM geo_jobs UNION ALL SELECT event_id FROM geo_dead_letters`)
	if err != nil {
		return nil, fmt.Errorf("read processed event IDs: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// processedCount counts the rows of geo_jobs and geo_dead_letters.
func (c *Cluster) processedCount(ctx context.Context) (int, error) {
	conn, err := pgx.Connect(ctx, c.TrackingDSN)
	if err != nil {
		return 0, fmt.Errorf("connect to the tracking database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var n int
	err = conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM geo_jobs) + (SELECT count(*) FROM geo_dead_letters)`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count processed events: %w", err)
	}
	return n, nil
}

// cursor returns the highest replicated cursor any agent reports.
func (c *Cluster) cursor(ctx context.Context) int64 {
	best := int64(-1)
	for _, a := range c.Agents {
		if st, err := a.Status(ctx); err == nil && st.Cursor.LastEventID > best {
			best = st.Cursor.LastEventID
		}
	}
	return best
}

func (c *Cluster) waitCaughtUp(ctx context.Context, r *Report, want int) error {
	return devcluster.WaitEvery(ctx, catchUpTimeout, pollEvery, "the cursor to reach the source's head with every event processed", func() (bool, string, error) {
		r.Cursor = c.cursor(ctx)
		n, err := c.processedCount(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		return r.Cursor == r.Head && n >= want,
			fmt.Sprintf("cursor %d of head %d, %d of %d events processed", r.Cursor, r.Head, n, want), nil
	})
}

// outcome compares the source with the tracking database: every committed
// event exactly once in geo_jobs ∪ geo_dead_letters, nothing else.
func (c *Cluster) outcome(ctx context.Context, r *Report, src []int64) error {
	got, err := c.processedIDs(ctx)
	if err != nil {
		return err
	}
	r.Processed = len(got)
	count := make(map[int64]int, len(got))
	for _, id := range got {
		count[id]++
	}
	inSource := make(map[int64]bool, len(src))
	for _, id := range src {
		inSource[id] = true
		if count[id] == 0 {
			r.Lost = append(r.Lost, id)
		}
	}
	for id, n := range count {
		if n > 1 {
			r.Doubled = append(r.Doubled, id)
		}
		if !inSource[id] {
			r.Phantom = append(r.Phantom, id)
		}
	}
	sort.Slice(r.Doubled, func(i, j int) bool { return r.Doubled[i] < r.Doubled[j] })
	sort.Slice(r.Phantom, func(i, j int) bool { return r.Phantom[i] < r.Phantom[j] })
	if len(r.Lost) > 0 {
		r.problem("%d committed source events were never processed: %s", len(r.Lost), firstIDs(r.Lost))
	}
	if len(r.Doubled) > 0 {
		r.problem("%d events were processed more than once: %s", len(r.Doubled), firstIDs(r.Doubled))
	}
	if len(r.Phantom) > 0 {
		r.problem("%d processed events are not in the source: %s", len(r.Phantom), firstIDs(r.Phantom))
	}
	if r.Cursor != r.Head {
		r.problem("the cursor is at %d, the source's head at %d", r.Cursor, r.Head)
	}
	return nil
}

func firstIDs(ids []int64) string {
	var parts []string
	for i, id := range ids {
		if i == 10 {
			parts = append(parts, "...")
			break
		}
		parts = append(parts, fmt.Sprint(id))
	}
	return strings.Join(parts, " ")
}

// waitQuiet waits until every agent has applied the same log index, so
// that the logs read after stopping agree.
func (c *Cluster) waitQuiet(ctx context.Context, timeout time.Duration) error {
	return devcluster.WaitEvery(ctx, timeout, pollEvery, "every replica to apply the same index", func() (bool, string, error) {
		var applied []uint64
		for _, a := range c.Agents {
			st, err := a.Status(ctx)
			if err != nil {
				return false, err.Error(), nil
			}
			applied = append(applied, st.AppliedIndex, st.CommitIndex)
		}
		for _, v := range applied {
			if v != applied[0] {
				return false, fmt.Sprintf("applied/commit indexes %v", applied), nil
			}
		}
		return true, "", nil
	})
}

// checkHistory merges the agents' histories, reconciles them with the
// Raft log and checks them.
func (c *Cluster) checkHistory(r *Report) {
	var entries []api.HistoryEntry
	for _, a := range c.Agents {
		es, bad, err := readHistory(a.HistoryPath)
		if err != nil {
			r.problem("read the history of %s: %v", a.ID, err)
		}
		if bad > 0 {
			r.note("%s's history has %d unreadable lines (a write cut short by SIGKILL?)", a.ID, bad)
		}
		entries = append(entries, es...)
	}
	r.HistoryEntries = len(entries)

	var best *raftLog
	var logs []*raftLog
	for _, a := range c.Agents {
		l, err := readRaftLog(a.ID, a.DataDir)
		if err != nil {
			r.problem("%v", err)
			continue
		}
		logs = append(logs, l)
		if best == nil || l.last > best.last {
			best = l
		}
	}
	if best == nil {
		r.problem("no raft log could be read: the history cannot be reconciled")
		return
	}
	for _, l := range logs {
		if d := best.divergence(l); d != "" {
			r.problem("the raft logs of %s and %s diverge: %s", best.node, l.node, d)
		}
	}
	cmds, err := best.commands()
	if err != nil {
		r.problem("undecodable commands in the raft log of %s: %v", best.node, err)
	}
	complete := best.first <= 1
	r.RaftCommands = len(cmds)
	r.RaftLogFrom = fmt.Sprintf("log of %s, entries %d..%d", best.node, best.first, best.last)
	if !complete {
		r.note("the raft log starts at %d (compacted): unanswered commands cannot be ruled out", best.first)
	}

	merged, rec := linearize.Reconcile(entries, cmds, complete)
	r.Reconciliation = rec.String()
	for _, e := range rec.Unmatched {
		r.problem("%s was told %s (token %d, code %q, leader time %s) for a command that is not in the raft log",
			e.Node, e.Cmd.Op, e.Cmd.Token, e.Code, fsm.Time(e.Now).Format("15:04:05.000000"))
	}
	c.explainOrphans(r, rec.Orphans)
	if dups := retriedApplies(rec.Resolved, merged); len(dups) > 0 {
		if len(dups) > 10 {
			dups = append(dups[:10], "...")
		}
		r.note("commands applied again by a retry after an attempt whose answer was lost had been applied: %s", strings.Join(dups, "; "))
	}
	writeHistory(filepath.Join(c.opts.Dir, "history.merged.jsonl"), merged)

	ok, info := linearize.Check(merged)
	r.Linearizable = info.Verdict()
	r.CheckInfo = info.String()
	if !ok {
		r.problem("the command history is %s: %s", info.Verdict(), info)
		for _, f := range c.Faults {
			info.Annotate(string(f.Kind), f.Start.UnixNano(), f.Healed.UnixNano(), string(f.Kind)+" "+f.Target)
		}
		path := filepath.Join(c.opts.Dir, "history.html")
		if err := info.WriteVisualization(path); err != nil {
			r.problem("%v", err)
		} else {
			r.Visualization = path
		}
	}
	for _, v := range linearize.CheckSafety(merged) {
		r.Safety = append(r.Safety, v.String())
		r.problem("lease safety: %s", v)
	}
	c.resumeTimes(r, tokenHolders(cmds))
}

// explainOrphans sorts the commands nobody recorded into those whose
// issuer was killed while waiting for the answer (expected) and the rest:
// a command applied more often than its issuer asked, or an issuer that
// lost its answer without dying.
func (c *Cluster) explainOrphans(r *Report, orphans []api.HistoryEntry) {
	var unexplained []string
	for _, o := range orphans {
		at := fsm.Time(o.Now)
		explained := false
		for _, f := range c.Faults {
			switch f.Kind {
			case KillPeer, KillLeader, KillHolder, WipePeer:
			default:
				continue
			}
			if (f.Target == o.Node || o.Node == linearize.OrphanNode) &&
				!f.Start.Before(at.Add(-time.Second)) && f.Start.Before(at.Add(15*time.Second)) {
				explained = true
				break
			}
		}
		if !explained {
			unexplained = append(unexplained, fmt.Sprintf("%s %s token %d at %s",
				o.Node, o.Cmd.Op, o.Cmd.Token, at.Format("15:04:05.000000")))
		}
	}
	if len(orphans) > 0 {
		r.note("%d applied commands were not recorded by their issuer; %d of them while the issuer was not being killed", len(orphans), len(unexplained))
	}
	if len(unexplained) > 0 {
		if len(unexplained) > 10 {
			unexplained = append(unexplained[:10], "...")
		}
		r.note("applied but unrecorded with a live issuer (applied twice for one call?): %s", strings.Join(unexplained, "; "))
	}
}

// tokenHolders replays the log's commands and returns who got each grant.
func tokenHolders(log []linearize.LogEntry) map[uint64]string {
	var st fsm.State
	out := map[uint64]string{}
	for _, l := range log {
		res := st.Apply(l.Cmd)
		if l.Cmd.Op == fsm.OpAcquire && res.Err == nil {
			out[res.Lease.Token] = res.Lease.Holder
		}
	}
	return out
}

// resumeTimes finds, for each fault, the first batch committed after it
// began by a peer it did not disable, or by anyone once it was healed.
func (c *Cluster) resumeTimes(r *Report, holders map[uint64]string) {
	for _, f := range r.Faults {
		if f.Start.IsZero() {
			continue
		}
		prev := f.Start
		for _, obs := range c.monitor.since(f.Start) {
			if obs.At.After(f.Recovered) {
				break
			}
			f.Stall = max(f.Stall, obs.At.Sub(prev))
			prev = obs.At
		}
		victim := f.victim()
		for _, obs := range c.monitor.since(f.Start) {
			by := holders[obs.Token]
			if (victim == everyone || victim != "" && by == victim) && obs.At.Before(f.Healed) {
				continue
			}
			f.Resume, f.ResumedBy = obs.At.Sub(f.Start), by
			break
		}
	}
}

func readHistory(path string) ([]api.HistoryEntry, int, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	var out []api.HistoryEntry
	bad := 0
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var e api.HistoryEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			bad++
			continue
		}
		out = append(out, e)
	}
	return out, bad, sc.Err()
}

func writeHistory(path string, entries []api.HistoryEntry) {
	f, err := os.Create(path)
	if err != nil {
		return
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	enc := json.NewEncoder(w)
	sorted := append([]api.HistoryEntry(nil), entries...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Call < sorted[j].Call })
	for _, e := range sorted {
		_ = enc.Encode(e)
	}
	_ = w.Flush()
}

// retriedApplies finds calls that were applied twice: an attempt whose
// answer was lost but which the log shows applied, followed at once (a
// retry of the same call) by another attempt of the same command from the
// same node that was applied as well.
func retriedApplies(resolved, merged []api.HistoryEntry) []string {
	var out []string
	for _, first := range resolved {
		if first.Now > first.Return {
			continue // stamped after the caller gave up: not clearly this attempt
		}
		for _, e := range merged {
			if e.Node != first.Node || e.Call < first.Return || e.Call > first.Return+int64(time.Second) ||
				e.Now < e.Call || e.Now == first.Now || !sameCommand(e.Cmd, first.Cmd) ||
				(e.Error != "" && e.Now > e.Return) {
				continue
			}
			answer := "answered " + orOK(e.Code)
			if e.Error != "" {
				answer = "answer lost too"
			}
			lost := first.Error
			if len(lost) > 60 {
				lost = lost[:60] + "..."
			}
			out = append(out, fmt.Sprintf("%s %s token %d (lost answer: %s; applied at %s and again at %s, %s)",
				first.Node, first.Cmd.Op, first.Cmd.Token, lost,
				fsm.Time(first.Now).Format("15:04:05.000"), fsm.Time(e.Now).Format("15:04:05.000"), answer))
			break
		}
	}
	return out
}

func sameCommand(a, b fsm.Command) bool {
	a.Now, b.Now = 0, 0
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(ja) == string(jb)
}

func orOK(code string) string {
	if code == "" {
		return "ok"
	}
	return code
}

// KeepOnly removes everything in dir but the named files: what a passing
// run leaves of its logs, histories and Raft data.
func KeepOnly(dir string, keep ...string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range entries {
		if !slices.Contains(keep, e.Name()) {
			errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

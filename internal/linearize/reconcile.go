package linearize

import (
	"encoding/json"
	"fmt"
	"sort"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// OrphanNode is the Node of an entry that Reconcile made up for a command
// found in the Raft log that names no node (a revoke or a member change the
// leader issued).
const OrphanNode = "raft-log"

// LogEntry is one state-machine command of a Raft log, with its index. The
// command's Now is the leader's stamp, as proposed.
type LogEntry struct {
	Index uint64
	Cmd   fsm.Command
}

// Reconciliation is what Reconcile found.
type Reconciliation struct {
	// Matched is the number of answered entries found in the log.
	Matched int
	// Resolved are the unanswered entries found in the log: they were
	// applied, at the index and time now filled in.
	Resolved []api.HistoryEntry
	// NotApplied are the unanswered entries that a complete log does not
	// hold: they were never applied and are left out.
	NotApplied []api.HistoryEntry
	// Orphans are log commands that no entry accounts for, added to the
	// history as unanswered entries called at their leader time: their
	// issuer died before the answer came, or a command was applied more
	// often than it was recorded (a retried forward).
	Orphans []api.HistoryEntry
	// Unmatched are answered entries the log does not hold: an answer for
	// a command that was never applied, or a log that is not complete.
	Unmatched []api.HistoryEntry
	// Unlogged are refusals the leader answered without proposing them
	// (index 0, not in the log): it saw the state machine would refuse.
	Unlogged []api.HistoryEntry
}

func (r Reconciliation) String() string {
	return fmt.Sprintf("%d answered commands found in the raft log, %d refused before the log, %d unanswered found applied, %d unanswered never applied, %d applied but unrecorded, %d answered but not in the log",
		r.Matched, len(r.Unlogged), len(r.Resolved), len(r.NotApplied), len(r.Orphans), len(r.Unmatched))
}

// Reconcile lines entries up with log, the commands of a Raft log in log
// order. complete says the log starts at the group's first entry (nothing
// was compacted away), so that a command missing from it was never applied.
//
// It returns the history to check, every entry the log holds carrying its
// Raft index: the answered entries as they are (matched by the index their
// answer carries), the unanswered ones the log holds with their index and
// applied time filled in (still unanswered: what they returned is not
// known), and one unanswered entry per log command that no peer recorded.
func Reconcile(entries []api.HistoryEntry, log []LogEntry, complete bool) ([]api.HistoryEntry, Reconciliation) {
	var rec Reconciliation
	byKey := map[string][]int{} // command without Now -> log positions, ascending
	byIndex := make(map[uint64]int, len(log))
	for i, e := range log {
		k := key(e.Cmd)
		byKey[k] = append(byKey[k], i)
		byIndex[e.Index] = i
	}
	used := make([]bool, len(log))
	// An answer shows the time its command was applied at exactly; it
	// anchors the clock where the log alone cannot (a compacted log does
	// not know the clock at its start).
	anchors := map[uint64]int64{}

	out := make([]api.HistoryEntry, 0, len(entries))
	var pending []api.HistoryEntry
	for _, e := range entries {
		if e.Error != "" || e.Lease == nil {
			pending = append(pending, e)
			continue
		}
		i, found := -1, false
		if e.Index != 0 {
			i, found = byIndex[e.Index]
			found = found && !used[i] && key(log[i].Cmd) == key(e.Cmd)
		} else {
			// A history recorded before answers carried their index: the
			// applied time was the stamp then.
			for _, j := range byKey[key(e.Cmd)] {
				if !used[j] && log[j].Cmd.Now == e.Now {
					i, found = j, true
					break
				}
			}
		}
		switch {
		case found:
			used[i] = true
			e.Index = log[i].Index
			anchors[e.Index] = e.Now
			rec.Matched++
		case e.Index == 0 && e.Code != "":
			rec.Unlogged = append(rec.Unlogged, e)
		default:
			rec.Unmatched = append(rec.Unmatched, e)
		}
		out = append(out, e)
	}
	applied := appliedTimes(log, anchors)

	// An unanswered command was stamped after it was called: usually
	// before the caller gave up, possibly long after (a request delivered
	// once a partition healed). Identical commands (a node's acquires are
	// all alike) make the match ambiguous, so first give each unanswered
	// entry a copy stamped while it waited, then the rest the earliest
	// unclaimed copy stamped after its call.
	sort.SliceStable(pending, func(i, j int) bool { return pending[i].Call < pending[j].Call })
	found := make([]int, len(pending))
	stamp := func(i int) int64 { return log[i].Cmd.Now }
	for p, e := range pending {
		found[p] = -1
		for _, i := range byKey[key(e.Cmd)] {
			if !used[i] && stamp(i) >= e.Call && stamp(i) <= e.Return {
				used[i], found[p] = true, i
				break
			}
		}
	}
	for p, e := range pending {
		if found[p] >= 0 {
			continue
		}
		for _, i := range byKey[key(e.Cmd)] {
			if !used[i] && stamp(i) >= e.Call && (found[p] < 0 || stamp(i) < stamp(found[p])) {
				found[p] = i
			}
		}
		if found[p] >= 0 {
			used[found[p]] = true
		}
	}
	for p, e := range pending {
		switch {
		case found[p] >= 0:
			e.Now, e.Index = applied[found[p]], log[found[p]].Index
			rec.Resolved = append(rec.Resolved, e)
			out = append(out, e)
		case complete:
			rec.NotApplied = append(rec.NotApplied, e)
		default:
			out = append(out, e)
		}
	}

	for i, l := range log {
		if used[i] {
			continue
		}
		node := l.Cmd.Node
		if node == "" || l.Cmd.Op == fsm.OpRemoveMember {
			node = OrphanNode
		}
		cmd := l.Cmd
		cmd.Now = 0
		e := api.HistoryEntry{Node: node, Call: l.Cmd.Now, Cmd: cmd, Now: applied[i], Index: l.Index,
			Error: "not recorded by its issuer (found in the raft log)"}
		rec.Orphans = append(rec.Orphans, e)
		out = append(out, e)
	}
	return out, rec
}

// appliedTimes returns the time each log command was applied at, as
// fsm.State.Apply computes it: the later of its stamp and the clock, which
// is the latest applied time before it. anchors are applied times known
// from answers, by index.
func appliedTimes(log []LogEntry, anchors map[uint64]int64) []int64 {
	out := make([]int64, len(log))
	clock := int64(0)
	for i, l := range log {
		clock = max(clock, l.Cmd.Now, anchors[l.Index])
		out[i] = clock
	}
	return out
}

// key identifies a command apart from the leader's time.
func key(c fsm.Command) string {
	c.Now = 0
	b, err := json.Marshal(c)
	if err != nil {
		// A Command always encodes; keep distinct commands distinct anyway.
		return fmt.Sprintf("%#v", c)
	}
	return string(b)
}

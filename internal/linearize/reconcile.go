package linearize

import (
	"encoding/json"
	"fmt"
	"sort"

	"github.com/geocursor/geocursor/fsm"
)

// OrphanNode is the Node of an entry that Reconcile made up for a command
// found in the Raft log that names no node (a revoke or a member change the
// leader issued).
const OrphanNode = "raft-log"

// Reconciliation is what Reconcile found.
type Reconciliation struct {
	// Matched is the number of answered entries found in the log.
	Matched int
	// Resolved are the unanswered entries found in the log: they were
	// applied, at the leader time now filled in.
	Resolved []fsm.HistoryEntry
	// NotApplied are the unanswered entries that a complete log does not
	// hold: they were never applied and are left out.
	NotApplied []fsm.HistoryEntry
	// Orphans are log commands that no entry accounts for, added to the
	// history as unanswered entries called at their leader time: their
	// issuer died before the answer came, or a command was applied more
	// often than it was recorded (a retried forward).
	Orphans []fsm.HistoryEntry
	// Unmatched are answered entries the log does not hold: an answer for
	// a command that was never applied, or a log that is not complete.
	Unmatched []fsm.HistoryEntry
}

func (r Reconciliation) String() string {
	return fmt.Sprintf("%d answered commands found in the raft log, %d unanswered found applied, %d unanswered never applied, %d applied but unrecorded, %d answered but not in the log",
		r.Matched, len(r.Resolved), len(r.NotApplied), len(r.Orphans), len(r.Unmatched))
}

// Reconcile lines entries up with log, the commands of a Raft log in log
// order, each with the time its leader stamped. complete says the log
// starts at the group's first entry (nothing was compacted away), so that
// a command missing from it was never applied.
//
// It returns the history to check: the answered entries as they are, the
// unanswered ones the log holds with their leader time filled in (still
// unanswered: the model keeps both outcomes open), and one unanswered
// entry per log command that no peer recorded.
func Reconcile(entries []fsm.HistoryEntry, log []fsm.Command, complete bool) ([]fsm.HistoryEntry, Reconciliation) {
	var rec Reconciliation
	byKey := map[string][]int{} // command without Now -> log positions, ascending
	for i, c := range log {
		k := key(c)
		byKey[k] = append(byKey[k], i)
	}
	used := make([]bool, len(log))

	out := make([]fsm.HistoryEntry, 0, len(entries))
	var pending []fsm.HistoryEntry
	for _, e := range entries {
		if e.Error != "" || e.Lease == nil {
			pending = append(pending, e)
			continue
		}
		found := false
		for _, i := range byKey[key(e.Cmd)] {
			if !used[i] && log[i].Now == e.Now {
				used[i], found = true, true
				break
			}
		}
		if found {
			rec.Matched++
		} else {
			rec.Unmatched = append(rec.Unmatched, e)
		}
		out = append(out, e)
	}

	// An unanswered command was stamped after it was called: usually
	// before the caller gave up, possibly long after (a request delivered
	// once a partition healed). Identical commands (a node's acquires are
	// all alike) make the match ambiguous, so first give each unanswered
	// entry a copy stamped while it waited, then the rest the earliest
	// unclaimed copy stamped after its call.
	sort.SliceStable(pending, func(i, j int) bool { return pending[i].Call < pending[j].Call })
	found := make([]int, len(pending))
	for p, e := range pending {
		found[p] = -1
		for _, i := range byKey[key(e.Cmd)] {
			if !used[i] && log[i].Now >= e.Call && log[i].Now <= e.Return {
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
			if !used[i] && log[i].Now >= e.Call && (found[p] < 0 || log[i].Now < log[found[p]].Now) {
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
			e.Now = log[found[p]].Now
			rec.Resolved = append(rec.Resolved, e)
			out = append(out, e)
		case complete:
			rec.NotApplied = append(rec.NotApplied, e)
		default:
			out = append(out, e)
		}
	}

	for i, c := range log {
		if used[i] {
			continue
		}
		node := c.Node
		if node == "" || c.Op == fsm.OpRemoveMember {
			node = OrphanNode
		}
		cmd := c
		cmd.Now = 0
		e := fsm.HistoryEntry{Node: node, Call: c.Now, Cmd: cmd, Now: c.Now,
			Error: "not recorded by its issuer (found in the raft log)"}
		rec.Orphans = append(rec.Orphans, e)
		out = append(out, e)
	}
	return out, rec
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

package linearize

import (
	"fmt"
	"sort"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// Violation is a breach of a lease guarantee seen directly in a history.
type Violation struct {
	// Kind is token-reused, token-not-increasing, token-went-back,
	// overlapping-grants or unordered.
	Kind   string
	Detail string
}

func (v Violation) String() string { return v.Kind + ": " + v.Detail }

// CheckSafety checks the lease guarantees (design section 2.1) on what the
// peers saw, without a linearizability search: every grant has a new
// token; a grant that completed before another was called has the lower
// token; no answer shows a token older than an answer that came back
// before it was called; and no grant went to a peer while the state showed
// another peer's grant unexpired and not given up.
//
// Two orders are used, each for what only it can decide. Real time (call
// and return) decides what happened before what across peers: a grant
// answered before another was asked for. The apply order, the Raft index
// every applied entry carries (answered entries from their answer, the
// others from Reconcile), decides what the state machine saw when it made
// a grant: the leader stamps a command just before proposing it, so two
// commands proposed at once can be applied in the other order than their
// stamps, and ordering by stamp raises false alarms. A granted entry
// without an index cannot be placed and is reported as unordered; a
// refusal without one was answered before it reached the log, and counts
// only for what real time decides.
func CheckSafety(entries []api.HistoryEntry) []Violation {
	var out []Violation
	answered := make([]api.HistoryEntry, 0, len(entries))
	var applied, unplaced []api.HistoryEntry
	for _, e := range entries {
		isAnswer := e.Error == "" && e.Lease != nil && e.Now != 0
		switch {
		case e.Index != 0:
			applied = append(applied, e)
		case isAnswer && e.Code == "":
			out = append(out, Violation{"unordered", fmt.Sprintf("%s's %s (token %d) was granted but has no raft index: reconcile the history with the raft log first",
				e.Node, e.Cmd.Op, e.Cmd.Token)})
		case isAnswer:
			// A refusal the leader answered without proposing it: it shows
			// a state at a moment in real time, but has no place in the
			// apply order.
		default:
			unplaced = append(unplaced, e)
		}
		if isAnswer {
			answered = append(answered, e)
		}
	}
	sort.SliceStable(applied, func(i, j int) bool { return applied[i].Index < applied[j].Index })

	var grants []api.HistoryEntry
	seen := map[uint64]api.HistoryEntry{}
	for _, e := range applied {
		if e.Cmd.Op != fsm.OpAcquire || e.Code != "" || e.Lease == nil || e.Error != "" {
			continue
		}
		if prev, ok := seen[e.Lease.Token]; ok {
			out = append(out, Violation{"token-reused", fmt.Sprintf("token %d granted to %s (raft index %d) and to %s (raft index %d)",
				e.Lease.Token, prev.Lease.Holder, prev.Index, e.Lease.Holder, e.Index)})
			continue
		}
		seen[e.Lease.Token] = e
		grants = append(grants, e)
	}
	sort.SliceStable(grants, func(i, j int) bool { return grants[i].Lease.Token < grants[j].Lease.Token })
	out = append(out, realTimeOrder(answered, grants)...)

	for i := 1; i < len(grants); i++ {
		g1, g2 := grants[i-1], grants[i]
		// A gap in the tokens is a grant nobody saw the answer to; it may
		// have gone to g1's holder and been released since.
		if g1.Lease.Holder == g2.Lease.Holder || g2.Lease.Token != g1.Lease.Token+1 {
			continue
		}
		if v, ok := overlap(applied, unplaced, g1, g2); ok {
			out = append(out, v)
		}
	}
	return out
}

// realTimeOrder finds tokens out of real-time order: a grant with a higher
// token that had completed before a grant with a lower token was even
// called, and an answer showing an older token than an answer that had
// come back before its command was called.
func realTimeOrder(answered, grants []api.HistoryEntry) []Violation {
	var out []Violation
	minRet := -1 // index of the earliest answer among grants[i+1:]
	for i := len(grants) - 2; i >= 0; i-- {
		if minRet < 0 || grants[i+1].Return < grants[minRet].Return {
			minRet = i + 1
		}
		if g := grants[minRet]; g.Return < grants[i].Call {
			out = append(out, Violation{"token-not-increasing", fmt.Sprintf(
				"token %d was granted to %s (answered at %s) before token %d was asked for by %s (at %s)",
				g.Lease.Token, g.Lease.Holder, stamp(g.Return), grants[i].Lease.Token, grants[i].Node, stamp(grants[i].Call))})
		}
	}

	byReturn := append([]api.HistoryEntry(nil), answered...)
	sort.SliceStable(byReturn, func(i, j int) bool { return byReturn[i].Return < byReturn[j].Return })
	byCall := append([]api.HistoryEntry(nil), answered...)
	sort.SliceStable(byCall, func(i, j int) bool { return byCall[i].Call < byCall[j].Call })
	var top *api.HistoryEntry
	r := 0
	for _, e := range byCall {
		for r < len(byReturn) && byReturn[r].Return < e.Call {
			if top == nil || byReturn[r].Lease.Token > top.Lease.Token {
				top = &byReturn[r]
			}
			r++
		}
		if top != nil && e.Lease.Token < top.Lease.Token {
			out = append(out, Violation{"token-went-back", fmt.Sprintf("%s saw token %d (called at %s) after %s had seen token %d (answered at %s)",
				e.Node, e.Lease.Token, stamp(e.Call), top.Node, top.Lease.Token, stamp(top.Return))})
		}
	}
	return out
}

// overlap reports whether g2 was granted while, in apply order, the last
// answer that showed g1 before g2 had it still held and unexpired at g2's
// applied time, and no command applied in between could have freed it.
// applied is sorted by index; unplaced are the unanswered entries the Raft
// log could not place (it was compacted), any of which may have freed g1.
func overlap(applied, unplaced []api.HistoryEntry, g1, g2 api.HistoryEntry) (Violation, bool) {
	last := g1
	between := applied[sort.Search(len(applied), func(i int) bool { return applied[i].Index > g1.Index }):]
	for _, e := range between {
		if e.Index >= g2.Index {
			break
		}
		if e.Error == "" && e.Lease != nil && e.Lease.Token == g1.Lease.Token {
			last = e
		}
	}
	if last.Lease.Holder != g1.Lease.Holder || last.Lease.ExpiresAt <= g2.Now {
		return Violation{}, false
	}
	for _, e := range between {
		if e.Index >= g2.Index {
			break
		}
		// Applied after the last observation: granted, or its outcome is
		// unknown (given the benefit of the doubt).
		if e.Index > last.Index && frees(e.Cmd, g1) && (e.Error != "" || e.Lease == nil || e.Code == "") {
			return Violation{}, false
		}
	}
	for _, e := range unplaced {
		if frees(e.Cmd, g1) && e.Call <= g2.Return {
			return Violation{}, false
		}
	}
	return Violation{"overlapping-grants", fmt.Sprintf(
		"token %d granted to %s at %s (raft index %d) while token %d of %s was seen (by %s, raft index %d) held until %s, %s later",
		g2.Lease.Token, g2.Lease.Holder, stamp(g2.Now), g2.Index, g1.Lease.Token, g1.Lease.Holder, last.Node, last.Index,
		stamp(last.Lease.ExpiresAt), time.Duration(last.Lease.ExpiresAt-g2.Now))}, true
}

// frees reports whether c, applied, would end grant g.
func frees(c fsm.Command, g api.HistoryEntry) bool {
	switch c.Op {
	case fsm.OpRelease, fsm.OpRevoke:
		return c.Token == g.Lease.Token
	case fsm.OpAdvance:
		return c.Token == g.Lease.Token && c.Advance != nil && !c.Advance.Keep
	}
	return false
}

func stamp(ns int64) string { return fsm.Time(ns).Format("15:04:05.000000") }

package linearize

import (
	"fmt"
	"sort"
	"time"

	"github.com/geocursor/geocursor/fsm"
)

// Violation is a breach of a lease guarantee seen directly in a history.
type Violation struct {
	// Kind is token-reused, token-not-increasing, token-went-back or
	// overlapping-grants.
	Kind   string
	Detail string
}

func (v Violation) String() string { return v.Kind + ": " + v.Detail }

// CheckSafety checks the lease guarantees (design section 2.1) on what the
// peers saw, without a linearizability search: every grant has a new
// token; a grant that completed before another was called has the lower
// token; no answer shows a token older than an answer that came back
// before it was called; and no grant went to a peer while another peer's
// grant was last seen unexpired and not given up. Only answered entries
// (and unanswered ones whose leader time is known) count as observations;
// a command that may have freed the lease is given the benefit of the
// doubt.
//
// Real-time order (call and return) is used wherever order matters: the
// leader stamps a command's time just before proposing it, so two commands
// proposed at once can be applied in the other order than their stamps.
func CheckSafety(entries []fsm.HistoryEntry) []Violation {
	var out []Violation
	answered := make([]fsm.HistoryEntry, 0, len(entries))
	for _, e := range entries {
		if e.Error == "" && e.Lease != nil && e.Now != 0 {
			answered = append(answered, e)
		}
	}
	sort.SliceStable(answered, func(i, j int) bool { return answered[i].Now < answered[j].Now })

	var grants []fsm.HistoryEntry
	seen := map[uint64]fsm.HistoryEntry{}
	for _, e := range answered {
		if e.Cmd.Op != fsm.OpAcquire || e.Code != "" {
			continue
		}
		if prev, ok := seen[e.Lease.Token]; ok {
			out = append(out, Violation{"token-reused", fmt.Sprintf("token %d granted to %s at %s and to %s at %s",
				e.Lease.Token, prev.Lease.Holder, stamp(prev.Now), e.Lease.Holder, stamp(e.Now))})
			continue
		}
		seen[e.Lease.Token] = e
		grants = append(grants, e)
	}
	sort.SliceStable(grants, func(i, j int) bool { return grants[i].Lease.Token < grants[j].Lease.Token })

	// A grant with a higher token that had completed before a grant with a
	// lower token was even called.
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

	// An answer showing an older token than an answer that had come back
	// before its command was called.
	byReturn := append([]fsm.HistoryEntry(nil), answered...)
	sort.SliceStable(byReturn, func(i, j int) bool { return byReturn[i].Return < byReturn[j].Return })
	byCall := append([]fsm.HistoryEntry(nil), answered...)
	sort.SliceStable(byCall, func(i, j int) bool { return byCall[i].Call < byCall[j].Call })
	var top *fsm.HistoryEntry
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

	for i := 1; i < len(grants); i++ {
		g1, g2 := grants[i-1], grants[i]
		// A gap in the tokens is a grant nobody saw the answer to; it may
		// have gone to g1's holder and been released since.
		if g1.Lease.Holder == g2.Lease.Holder || g2.Lease.Token != g1.Lease.Token+1 {
			continue
		}
		if v, ok := overlap(entries, answered, g1, g2); ok {
			out = append(out, v)
		}
	}
	return out
}

// overlap reports whether g2 was granted while g1 was, by the last answer
// that showed g1 before g2's time, still held and unexpired, with no
// command in between that could have freed it.
func overlap(all, answered []fsm.HistoryEntry, g1, g2 fsm.HistoryEntry) (Violation, bool) {
	last := g1
	for _, e := range answered {
		if e.Now >= g2.Now {
			break
		}
		if e.Now >= last.Now && e.Lease.Token == g1.Lease.Token {
			last = e
		}
	}
	if last.Lease.Holder != g1.Lease.Holder || last.Lease.ExpiresAt <= g2.Now {
		return Violation{}, false
	}
	for _, e := range all {
		if !frees(e.Cmd, g1) {
			continue
		}
		at := e.Now
		if at == 0 {
			at = e.Call
		}
		// Whatever freed g1 was applied before g2, so it was stamped before
		// g2's answer came back (though perhaps after g2's own stamp).
		if at >= last.Now && at <= g2.Return && (e.Error != "" || e.Lease == nil || e.Code == "") {
			return Violation{}, false
		}
	}
	return Violation{"overlapping-grants", fmt.Sprintf(
		"token %d granted to %s at %s while token %d of %s was seen (by %s at %s) held until %s, %s later",
		g2.Lease.Token, g2.Lease.Holder, stamp(g2.Now), g1.Lease.Token, g1.Lease.Holder, last.Node, stamp(last.Now),
		stamp(last.Lease.ExpiresAt), time.Duration(last.Lease.ExpiresAt-g2.Now))}, true
}

// frees reports whether c, applied, would end grant g.
func frees(c fsm.Command, g fsm.HistoryEntry) bool {
	switch c.Op {
	case fsm.OpRelease, fsm.OpRevoke:
		return c.Token == g.Lease.Token
	case fsm.OpAdvance:
		return c.Token == g.Lease.Token && c.Advance != nil && !c.Advance.Keep
	}
	return false
}

func stamp(ns int64) string { return fsm.Time(ns).Format("15:04:05.000000") }

package linearize

import (
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// forever stands for "no upper bound" on a time. It leaves room to add a
// lease TTL (at most fsm.MaxTTL) without overflowing.
const forever = int64(1) << 62

// input is one command as the leader applied it.
type input struct {
	idx  int    // position in the checked history, for descriptions
	node string // the peer that issued (and recorded) it
	cmd  fsm.Command
	// call is when the peer called; it bounds an unknown leader time
	// (cmd.Now == 0) from below: the leader stamps after the call.
	call int64
	// index is the command's Raft index, 0 when the log could not place
	// it. A command with an index was applied, after every command with a
	// lower one.
	index uint64
}

// output is what the peer got back.
type output struct {
	// unknown: no answer came back; the command may or may not be applied.
	unknown bool
	lease   fsm.Lease
	cursor  fsm.Cursor
	code    string
}

// mstate is the model's state: the state machine's own state, without the
// members table and the counters (no answer shows them), so that equal
// states compare equal cheaply.
//
// After a command whose leader time is unknown set the lease's expiry, the
// expiry is known only to lie in [lo, hi]: loose is set and
// s.Lease.ExpiresAt is 0. The next answer that shows the lease pins it down.
//
// index is the Raft index of the last command with one applied so far, so
// that commands the log placed are applied in log order.
type mstate struct {
	s      fsm.State
	loose  bool
	lo, hi int64
	index  uint64
}

func initState() mstate { return mstate{} }

// trim drops what no answer shows. The clock goes too: every command is
// replayed at the time it was applied at (the answer's, or Reconcile's),
// which already is the later of its stamp and the clock.
func trim(s *fsm.State) {
	s.Members = nil
	s.Stats = fsm.Stats{}
	s.Clock = 0
}

func equalStates(a, b mstate) bool {
	if a.loose != b.loose || a.lo != b.lo || a.hi != b.hi || a.index != b.index ||
		a.s.Lease != b.s.Lease || a.s.Cursor != b.s.Cursor ||
		a.s.LastHolder != b.s.LastHolder || a.s.RevokedFrom != b.s.RevokedFrom ||
		len(a.s.Gaps) != len(b.s.Gaps) {
		return false
	}
	for i := range a.s.Gaps {
		if a.s.Gaps[i] != b.s.Gaps[i] {
			return false
		}
	}
	return true
}

func hashState(m mstate) uint64 {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s|%d|%d|%d|%d|%t|%d|%d", m.s.Lease.Holder, m.s.Lease.Token, m.s.Lease.ExpiresAt,
		m.s.Cursor.LastEventID, m.s.Cursor.LastEventDate, m.s.Cursor.Paused, len(m.s.Gaps), m.index)
	return h.Sum64()
}

// decides reports whether cmd's outcome depends on whether the lease has
// expired at the leader's time.
func decides(s fsm.State, cmd fsm.Command) bool {
	if s.Lease.Holder == "" {
		return false
	}
	switch cmd.Op {
	case fsm.OpAcquire:
		return s.Lease.Holder != cmd.Node
	case fsm.OpRenew:
		return true
	case fsm.OpAdvance:
		return cmd.Advance != nil && cmd.Advance.Keep
	}
	return false
}

// setsExpiry reports whether cmd, granted, gives the lease a new expiry
// computed from its leader time.
func setsExpiry(cmd fsm.Command) bool {
	switch cmd.Op {
	case fsm.OpAcquire, fsm.OpRenew:
		return true
	case fsm.OpAdvance:
		return cmd.Advance != nil && cmd.Advance.Keep
	}
	return false
}

// variant is one way a command can meet the state when the leader's time
// or the lease's expiry is known only as a range: a concrete expiry and
// time to replay Apply with, and the ranges narrowed to that outcome.
type variant struct {
	expiry       int64 // used only when the state is loose
	now          int64
	eLo, eHi     int64
	nowLo, nowHi int64
}

func variants(st mstate, in input) []variant {
	eLo, eHi := st.s.Lease.ExpiresAt, st.s.Lease.ExpiresAt
	if st.loose {
		eLo, eHi = st.lo, st.hi
	}
	nowLo, nowHi := in.cmd.Now, in.cmd.Now
	if in.cmd.Now == 0 {
		nowLo, nowHi = in.call, forever
	}
	exact := !st.loose && in.cmd.Now != 0
	if exact || !decides(st.s, in.cmd) {
		return []variant{{expiry: eLo, now: nowLo, eLo: eLo, eHi: eHi, nowLo: nowLo, nowHi: nowHi}}
	}
	var vs []variant
	// Still held at the leader's time: now < expiry.
	if nowLo < eHi {
		lo := max(eLo, nowLo+1)
		vs = append(vs, variant{expiry: lo, now: nowLo, eLo: lo, eHi: eHi, nowLo: nowLo, nowHi: min(nowHi, eHi-1)})
	}
	// Expired at the leader's time: now >= expiry.
	if nowHi >= eLo {
		now := max(nowLo, eLo)
		vs = append(vs, variant{expiry: eLo, now: now, eLo: eLo, eHi: min(eHi, nowHi), nowLo: now, nowHi: nowHi})
	}
	return vs
}

// step returns every state the command can leave behind, given what its
// peer saw; none if the answer cannot be explained from st.
func step(st mstate, in input, out output) []mstate {
	if in.index != 0 && in.index <= st.index {
		return nil // the log applied it before the last command
	}
	var next []mstate
	if out.unknown && in.index == 0 {
		next = append(next, st) // never applied
	}
	for _, v := range variants(st, in) {
		pre := st.s.Clone()
		if st.loose {
			pre.Lease.ExpiresAt = v.expiry
		}
		cmd := in.cmd
		cmd.Now = v.now
		res := pre.Apply(cmd)
		post := mstate{s: pre, index: max(st.index, in.index)}
		trim(&post.s)
		switch {
		case res.Err == nil && setsExpiry(cmd):
			if in.cmd.Now == 0 {
				post.loose = true
				post.lo, post.hi = v.nowLo+int64(cmd.TTL), min(v.nowHi+int64(cmd.TTL), forever)
			}
		case post.s.Lease.Holder == "":
			// Released, revoked or never granted: nothing expires.
		case st.loose:
			post.loose, post.lo, post.hi = true, v.eLo, v.eHi
		}
		if post.loose {
			post.s.Lease.ExpiresAt = 0
			if post.lo > post.hi {
				continue
			}
		}
		if out.unknown {
			next = append(next, post)
			continue
		}
		if api.RefusalCode(res.Err) != out.code || res.Lease.Holder != out.lease.Holder ||
			res.Lease.Token != out.lease.Token || res.Cursor != out.cursor {
			continue
		}
		if post.loose {
			// The answer shows the expiry: adopt it if it is possible.
			if out.lease.ExpiresAt < post.lo || out.lease.ExpiresAt > post.hi {
				continue
			}
			post.loose, post.lo, post.hi = false, 0, 0
			post.s.Lease.ExpiresAt = out.lease.ExpiresAt
		} else if res.Lease.ExpiresAt != out.lease.ExpiresAt {
			continue
		}
		next = append(next, post)
	}
	return next
}

func newModel() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Init: func() []interface{} { return []interface{}{initState()} },
		Step: func(state, in, out interface{}) []interface{} {
			var next []interface{}
			for _, s := range step(state.(mstate), in.(input), out.(output)) {
				next = append(next, s)
			}
			return next
		},
		Equal:             func(a, b interface{}) bool { return equalStates(a.(mstate), b.(mstate)) },
		Hash:              func(s interface{}) uint64 { return hashState(s.(mstate)) },
		DescribeOperation: func(in, out interface{}) string { return describeOp(in.(input), out.(output)) },
		DescribeState:     func(s interface{}) string { return describeState(s.(mstate)) },
	}
	return nm.ToModel()
}

// describeOp renders a command and its answer for the visualisation.
func describeOp(in input, out output) string {
	var b strings.Builder
	fmt.Fprintf(&b, "#%d %s: %s", in.idx, in.node, describeCmd(in.cmd))
	if in.index != 0 {
		fmt.Fprintf(&b, " [raft %d]", in.index)
	}
	b.WriteString(" → ")
	switch {
	case out.unknown:
		b.WriteString("? (no answer)")
	case out.code != "":
		fmt.Fprintf(&b, "refused %s; %s", out.code, describeLease(out.lease, in.cmd.Now))
	default:
		fmt.Fprintf(&b, "ok; %s, cursor %d", describeLease(out.lease, in.cmd.Now), out.cursor.LastEventID)
	}
	return b.String()
}

func describeCmd(c fsm.Command) string {
	var b strings.Builder
	b.WriteString(string(c.Op))
	if c.Node != "" && c.Op != fsm.OpSetMember {
		fmt.Fprintf(&b, " %s", c.Node)
	}
	if c.Token != 0 {
		fmt.Fprintf(&b, " token %d", c.Token)
	}
	if c.Advance != nil {
		a := c.Advance
		if a.GapsDelta {
			fmt.Fprintf(&b, " to %d (%d events, gaps -%d +%d", a.LastEventID, a.Events, len(a.GapsClosed), len(a.GapsOpened))
		} else {
			fmt.Fprintf(&b, " to %d (%d events, %d gaps", a.LastEventID, a.Events, len(a.Gaps))
		}
		if c.Advance.Keep {
			b.WriteString(", keep")
		}
		b.WriteString(")")
	}
	if c.Member != nil {
		fmt.Fprintf(&b, " %s", c.Member.ID)
	}
	if c.Op == fsm.OpSetPaused {
		fmt.Fprintf(&b, " %t", c.Paused)
	}
	if c.TTL != 0 {
		fmt.Fprintf(&b, " ttl %s", c.TTL)
	}
	if c.Now == 0 {
		b.WriteString(" @?")
	} else {
		fmt.Fprintf(&b, " @%s", fsm.Time(c.Now).Format("15:04:05.000000"))
	}
	return b.String()
}

func describeLease(l fsm.Lease, now int64) string {
	if l.Holder == "" {
		return fmt.Sprintf("lease free (token %d)", l.Token)
	}
	if now == 0 {
		return fmt.Sprintf("lease %s token %d until %s", l.Holder, l.Token, fsm.Time(l.ExpiresAt).Format("15:04:05.000"))
	}
	return fmt.Sprintf("lease %s token %d for %s", l.Holder, l.Token, time.Duration(l.ExpiresAt-now).Round(time.Millisecond))
}

func describeState(m mstate) string {
	var b strings.Builder
	switch {
	case m.s.Lease.Holder == "":
		fmt.Fprintf(&b, "lease free (token %d)", m.s.Lease.Token)
	case m.loose:
		fmt.Fprintf(&b, "lease %s token %d until %s..%s", m.s.Lease.Holder, m.s.Lease.Token,
			fsm.Time(m.lo).Format("15:04:05.000"), describeBound(m.hi))
	default:
		fmt.Fprintf(&b, "lease %s token %d until %s", m.s.Lease.Holder, m.s.Lease.Token,
			fsm.Time(m.s.Lease.ExpiresAt).Format("15:04:05.000"))
	}
	fmt.Fprintf(&b, "; cursor %d, %d gaps", m.s.Cursor.LastEventID, len(m.s.Gaps))
	if m.s.Cursor.Paused {
		b.WriteString(", paused")
	}
	return b.String()
}

func describeBound(t int64) string {
	if t >= forever {
		return "∞"
	}
	return fsm.Time(t).Format("15:04:05.000")
}

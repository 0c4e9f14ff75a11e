package cursor

import (
	"sort"
	"time"

	"github.com/geocursor/geocursor/fsm"
)

// Position is where the cursor stands in the source event log: every ID at or
// below LastEventID has been processed, is an open gap, or was dropped. It is
// the one shape of a position in this package: the replicated state
// (positionOf), the fence row (Fence.Position) and a batch's start and end
// all use it.
type Position struct {
	LastEventID int64
	// LastEventDate is the created_at of LastEventID (zero before the first
	// event).
	LastEventDate time.Time
	// Gaps are the open gaps, sorted by ID, all below LastEventID.
	Gaps []fsm.Gap
}

// positionOf is the position recorded in the replicated state.
func positionOf(st fsm.State) Position {
	return Position{
		LastEventID:   st.Cursor.LastEventID,
		LastEventDate: fsm.Time(st.Cursor.LastEventDate),
		Gaps:          append([]fsm.Gap(nil), st.Gaps...),
	}
}

// dateColumn is the fence row's last_event_date for p: NULL when the
// date is not known (a position placed from an ID alone).
func (p Position) dateColumn() *time.Time {
	if p.LastEventDate.IsZero() {
		return nil
	}
	d := p.LastEventDate.UTC()
	return &d
}

// GapIDs returns the IDs of the open gaps in ascending order.
func (p Position) GapIDs() []int64 {
	ids := make([]int64, len(p.Gaps))
	for i, g := range p.Gaps {
		ids[i] = g.ID
	}
	return ids
}

// Same reports whether p and q stand at the same event with the same open
// gaps. Gaps are compared by ID: holders stamp first-seen times of their
// own.
func (p Position) Same(q Position) bool {
	_, differ := gapsDiffer(p.Gaps, q.Gaps)
	return p.LastEventID == q.LastEventID && !differ
}

// gapsDiffer compares two gap sets by ID and returns the lowest ID in one
// but not the other.
func gapsDiffer(a, b []fsm.Gap) (int64, bool) {
	in := make(map[int64]int, len(a)+len(b))
	for _, g := range a {
		in[g.ID] |= 1
	}
	for _, g := range b {
		in[g.ID] |= 2
	}
	var (
		lowest int64
		differ bool
	)
	for id, where := range in {
		if where != 3 && (!differ || id < lowest) {
			lowest, differ = id, true
		}
	}
	return lowest, differ
}

// NextPosition works out, from a batch of events fetched at start, the
// position after it. It is a pure function of its arguments so that every
// holder, and the tests, compute the same answer.
//
//   - Events above start.LastEventID move LastEventID to the highest of them
//     (and LastEventDate to its CreatedAt).
//   - Every ID between start.LastEventID+1 and that highest ID that is not in
//     the batch is a new gap, first seen at now: its transaction took the ID
//     from the sequence but had not committed when the batch was read.
//   - Events whose IDs were open gaps close them.
//   - Open gaps first seen before now-gapTimeout are dropped: the
//     transaction most likely rolled back, and keeping the ID forever would
//     cost a probe on every batch. gapTimeout <= 0 disables this.
//   - If more than maxGaps gaps would remain open, the lowest IDs are dropped
//     until maxGaps remain, so that a jump of the sequence (setval, a restore)
//     cannot fill the replicated state with millions of gaps. maxGaps <= 0
//     means no limit.
//
// now is the state machine's time (stateClock), the timeline every holder
// stamps and ages gaps on. dropped lists every ID given up on, in ascending
// order. Note that a jump of N IDs yields about N dropped IDs: callers
// should log and count them, not carry the list around.
func NextPosition(start Position, events []Event, now time.Time, gapTimeout time.Duration, maxGaps int) (next Position, dropped []int64) {
	seen := make(map[int64]struct{}, len(events))
	next.LastEventID = start.LastEventID
	next.LastEventDate = start.LastEventDate
	var ahead []int64 // IDs above the start position, ascending
	for _, ev := range events {
		if _, dup := seen[ev.ID]; dup {
			continue
		}
		seen[ev.ID] = struct{}{}
		if ev.ID > start.LastEventID {
			ahead = append(ahead, ev.ID)
			if ev.ID > next.LastEventID {
				next.LastEventID = ev.ID
				next.LastEventDate = ev.CreatedAt
			}
		}
	}
	sort.Slice(ahead, func(i, j int) bool { return ahead[i] < ahead[j] })

	// Existing gaps that are still open and not yet too old. They are all
	// below start.LastEventID, so they sort before any new gap.
	old := append([]fsm.Gap(nil), start.Gaps...)
	sort.Slice(old, func(i, j int) bool { return old[i].ID < old[j].ID })
	var open []fsm.Gap
	cutoff := now.Add(-gapTimeout).UnixNano()
	for _, g := range old {
		if _, closed := seen[g.ID]; closed {
			continue
		}
		if gapTimeout > 0 && g.FirstSeen < cutoff {
			dropped = append(dropped, g.ID)
			continue
		}
		open = append(open, g)
	}

	// New gaps: the holes between the start position and the new head. The
	// lowest of all open gaps go first when there are too many, so count
	// before building, and never build a gap only to drop it.
	missing := next.LastEventID - start.LastEventID - int64(len(ahead))
	extra := int64(0)
	if total := int64(len(open)) + missing; maxGaps > 0 && total > int64(maxGaps) {
		extra = total - int64(maxGaps)
	}
	if n := min(extra, int64(len(open))); n > 0 {
		for _, g := range open[:n] {
			dropped = append(dropped, g.ID)
		}
		open = append([]fsm.Gap(nil), open[n:]...)
		extra -= n
	}
	first := now.UnixNano()
	id := start.LastEventID + 1
	for _, present := range ahead {
		for ; id < present; id++ {
			if extra > 0 {
				dropped = append(dropped, id)
				extra--
				continue
			}
			open = append(open, fsm.Gap{ID: id, FirstSeen: first})
		}
		id = present + 1
	}

	sort.Slice(dropped, func(i, j int) bool { return dropped[i] < dropped[j] })
	next.Gaps = open
	return next, dropped
}

// gapDelta is the change from the open gaps from to those of to, both
// sorted by ID: the IDs that left, and the gaps that joined.
func gapDelta(from, to []fsm.Gap) (closed []int64, opened []fsm.Gap) {
	i, j := 0, 0
	for i < len(from) || j < len(to) {
		switch {
		case j == len(to) || (i < len(from) && from[i].ID < to[j].ID):
			closed = append(closed, from[i].ID)
			i++
		case i == len(from) || to[j].ID < from[i].ID:
			opened = append(opened, to[j])
			j++
		default:
			i++
			j++
		}
	}
	return closed, opened
}

// pruned is what the horizon check found: IDs the primary pruned from its
// log before this site processed them.
type pruned struct {
	// unseenFirst..unseenLast were never reached by the cursor; count is
	// their number (0: none).
	unseenFirst, unseenLast int64
	count                   int64
}

// add counts q's IDs with p's.
func (p *pruned) add(q pruned) {
	switch {
	case q.count == 0:
	case p.count == 0:
		*p = q
	default:
		p.unseenFirst, p.unseenLast, p.count = min(p.unseenFirst, q.unseenFirst), max(p.unseenLast, q.unseenLast), p.count+q.count
	}
}

// pastHorizon moves start past the source's oldest retained event ID,
// oldest (0: unknown, or an empty log), when the IDs between the cursor
// and oldest are more than room, the gap set's room: the cursor moves to
// oldest-1 and they count as pruned unseen, since no writer holds that many
// IDs in flight. Fewer are left to become open gaps, like any ID the
// cursor passes unseen: an ID below the oldest visible one may have been
// pruned, or rolled back, or it may belong to a transaction that took it
// before the oldest visible event took its ID and has not committed yet
// (a fresh log's first events, or a prune up to a recent ID). The three
// cannot be told apart until it shows, or source.gap_timeout passes; then
// it is given up, and counted pruned (belowHorizon).
func pastHorizon(start Position, oldest int64, room int) (Position, pruned) {
	var p pruned
	if oldest <= 0 || oldest-1-start.LastEventID <= int64(max(room, 0)) {
		return start, p
	}
	p.unseenFirst, p.unseenLast, p.count = start.LastEventID+1, oldest-1, oldest-1-start.LastEventID
	start.LastEventID = oldest - 1
	return start, p
}

// belowHorizon splits the IDs given up on into those below oldest (0:
// unknown), which the primary no longer keeps and which count as pruned
// unseen, and the rest, given up as rolled back.
func belowHorizon(ids []int64, oldest int64) (below pruned, rest []int64) {
	for _, id := range ids {
		if oldest <= 0 || id >= oldest {
			rest = append(rest, id)
			continue
		}
		below.add(pruned{unseenFirst: id, unseenLast: id, count: 1})
	}
	return below, rest
}

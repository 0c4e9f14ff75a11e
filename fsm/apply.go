package fsm

import (
	"slices"
	"time"
)

// Apply applies one validated command to s and returns the outcome. It is
// deterministic: it reads nothing but s and c, so replicas that apply the
// same log hold the same state.
//
// The command is applied at the later of its stamp (c.Now) and s.Clock,
// and the clock moves there whether the command is granted or refused:
// it was applied at that time either way. Apart from the clock, a refused
// command leaves s unchanged. A command that does not validate is not
// applied at all and leaves even the clock alone.
func (s *State) Apply(c Command) Result {
	if err := c.Validate(); err != nil {
		return s.result(err)
	}
	c.Now = s.appliedAt(c)
	s.Clock = c.Now
	err := s.refusal(c)
	if err == nil {
		s.effect(c)
	}
	res := s.result(err)
	res.Now = c.Now
	return res
}

// Check returns the refusal s would answer c with if it were applied now,
// or nil if it would be granted, without changing s: Apply is Check
// followed by the command's effect. The leader uses it to refuse commands
// without writing them to the log.
func (s *State) Check(c Command) error {
	if err := c.Validate(); err != nil {
		return err
	}
	c.Now = s.appliedAt(c)
	return s.refusal(c)
}

// at is the time a command stamped at stamp is applied at.
func (s *State) at(stamp int64) int64 { return max(stamp, s.Clock) }

// appliedAt is the time c is applied at: at its stamp, or, for a command
// added after protocol 0, at the state's clock whatever its stamp (see
// Apply).
func (s *State) appliedAt(c Command) int64 {
	if c.Op.AddedIn() > 0 {
		return s.Clock
	}
	return s.at(c.Now)
}

func (s *State) result(err error) Result {
	return Result{Lease: s.Lease, Cursor: s.Cursor, Err: err}
}

// refusal is the rule of each command (documented on its Op): the error it
// is refused with, or nil.
func (s *State) refusal(c Command) error {
	switch c.Op {
	case OpAcquire:
		return s.acquireRefusal(c)
	case OpRenew:
		if err := s.checkGrant(c.Node, c.Token); err != nil {
			return err
		}
		if c.Now >= s.Lease.ExpiresAt {
			return refuse(ErrLeaseExpired, "token %d expired %s ago", c.Token, time.Duration(c.Now-s.Lease.ExpiresAt))
		}
	case OpRelease:
		return s.checkGrant(c.Node, c.Token)
	case OpAdvance:
		return s.advanceRefusal(c)
	case OpRevoke:
		if c.Token != s.Lease.Token || s.Lease.Holder == "" {
			return refuse(ErrStaleToken, "token %d is not a current grant (token %d, holder %q)",
				c.Token, s.Lease.Token, s.Lease.Holder)
		}
	case OpSetCursor:
		if err := s.checkGrant(c.Node, c.Token); err != nil {
			return err
		}
		if !s.Lease.HeldAt(c.Now) {
			return refuse(ErrLeaseExpired, "token %d expired %s ago", c.Token, time.Duration(c.Now-s.Lease.ExpiresAt))
		}
		if to := c.SetCursor.LastEventID; to < s.Cursor.LastEventID && !c.SetCursor.Force {
			return refuse(ErrCursorBackwards, "from %d to %d without force", s.Cursor.LastEventID, to)
		}
	case OpSetRemoved:
		if c.Removed && !s.IsRemoved(c.Node) && len(s.Removed) >= MaxRemoved {
			return refuse(ErrBadCommand, "%d node IDs are removed already, the most the state keeps: let some back in first", len(s.Removed))
		}
	case OpRestore:
		if s.Speaks(1) {
			// A node of protocol 0 applies any token and clock; while a
			// member may be one, so does this one (see Speaks).
			if err := restoreBounds(c.Restore); err != nil {
				return refuse(ErrBadCommand, "%v", err)
			}
		}
		if s.Cursor.LastEventID != 0 || s.Stats.EventsProcessed != 0 {
			return refuse(ErrNotFresh, "the cursor is at %d after %d events: restore into a fresh group",
				s.Cursor.LastEventID, s.Stats.EventsProcessed)
		}
		if s.Lease.HeldAt(c.Now) && s.Lease.Holder != c.Node {
			return refuse(ErrLeaseHeld, "held by %s (token %d)", s.Lease.Holder, s.Lease.Token)
		}
	}
	return nil
}

// effect changes s as the granted command c does.
func (s *State) effect(c Command) {
	switch c.Op {
	case OpAcquire:
		s.Lease = Lease{Holder: c.Node, Token: s.Lease.Token + 1, ExpiresAt: c.Now + int64(c.TTL)}
		s.LastHolder = c.Node
		s.RevokedFrom = ""
		// The grant refused nobody it was reserved for: the reservation
		// was this node's, or has run out.
		s.Reservation = nil
	case OpReserve:
		s.Reservation = &Reservation{Node: c.Node, Until: c.Now + int64(c.TTL)}
	case OpRenew:
		s.Lease.ExpiresAt = c.Now + int64(c.TTL)
	case OpRelease:
		s.Lease.Holder, s.Lease.ExpiresAt = "", 0
		s.RevokedFrom = ""
	case OpAdvance:
		s.advanceEffect(c)
	case OpRevoke:
		s.RevokedFrom = s.Lease.Holder
		s.Lease.Holder, s.Lease.ExpiresAt = "", 0
	case OpSetMember:
		if s.Members == nil {
			s.Members = make(map[string]Member)
		}
		m, cur := *c.Member, s.Members[c.Member.ID]
		m.Witness, m.Version, m.Protocol = cur.Witness, cur.Version, cur.Protocol
		s.Members[m.ID] = m
	case OpSetWitness:
		if m, ok := s.Members[c.Node]; ok {
			m.Witness = c.Witness
			s.Members[c.Node] = m
		}
	case OpSetVersion:
		if m, ok := s.Members[c.Node]; ok {
			m.Version, m.Protocol = c.Version, c.Protocol
			s.Members[c.Node] = m
		}
	case OpRemoveMember:
		delete(s.Members, c.Node)
	case OpSetRemoved:
		i, found := slices.BinarySearch(s.Removed, c.Node)
		switch {
		case c.Removed && !found:
			s.Removed = slices.Insert(s.Removed, i, c.Node)
		case !c.Removed && found:
			s.Removed = slices.Delete(s.Removed, i, i+1)
			if len(s.Removed) == 0 {
				s.Removed = nil
			}
		}
	case OpSetPaused:
		s.Cursor.Paused = c.Paused
	case OpSetCursor:
		s.Cursor.LastEventID = c.SetCursor.LastEventID
		if c.SetCursor.LastEventDate != 0 {
			s.Cursor.LastEventDate = c.SetCursor.LastEventDate
		}
		s.Gaps, s.GapsSum = nil, 0
		s.Lease.Holder, s.Lease.ExpiresAt = "", 0
		s.RevokedFrom = ""
	case OpRestore:
		r := c.Restore
		paused := s.Cursor.Paused
		s.Cursor = r.Cursor
		s.Cursor.Paused = paused
		s.Gaps = append([]Gap(nil), r.Gaps...)
		if len(s.Gaps) == 0 {
			s.Gaps = nil
		}
		s.GapsSum = GapSum(s.Gaps)
		s.Stats = r.Stats
		s.Lease = Lease{Token: max(s.Lease.Token, r.Token)}
		s.RevokedFrom = ""
		s.Reservation = nil
		s.Clock = max(s.Clock, r.Clock)
	}
}

func (s *State) acquireRefusal(c Command) error {
	if s.Cursor.Paused {
		return refuse(ErrPaused, "processing is paused")
	}
	if s.Lease.HeldAt(c.Now) && s.Lease.Holder != c.Node {
		return refuse(ErrLeaseHeld, "held by %s (token %d) for another %s",
			s.Lease.Holder, s.Lease.Token, time.Duration(s.Lease.ExpiresAt-c.Now))
	}
	if r := s.ReservedFor(c.Now); r != "" && r != c.Node {
		return refuse(ErrLeaseHeld, "the next grant is reserved for an operator's request on %s for another %s",
			r, time.Duration(s.Reservation.Until-c.Now))
	}
	return nil
}

// checkGrant reports whether token names the current grant held by node.
func (s *State) checkGrant(node string, token uint64) error {
	if token != s.Lease.Token || s.Lease.Holder != node {
		return refuse(ErrStaleToken, "token %d of %s is not the current grant (token %d, holder %q)",
			token, node, s.Lease.Token, s.Lease.Holder)
	}
	return nil
}

func (s *State) advanceRefusal(c Command) error {
	a := c.Advance
	// The grant may have expired or been revoked since: the batch was
	// committed under this token, so it is recorded as long as no newer
	// grant exists. A newer holder learns the same position from the
	// tracking database's fence row instead. A grant already released
	// (a retried advance whose first answer was lost) is stale, so counters
	// are never added twice.
	current := s.Lease.Holder == c.Node || (s.Lease.Holder == "" && s.RevokedFrom == c.Node)
	if c.Token != s.Lease.Token || !current {
		return refuse(ErrStaleToken, "token %d of %s is not the current grant (token %d, holder %q)",
			c.Token, c.Node, s.Lease.Token, s.Lease.Holder)
	}
	if a.Seq != 0 && a.Seq != s.Lease.Advances+1 {
		return refuse(ErrStaleToken, "advance %d of token %d is not the next one (%d applied): a retry of an applied advance",
			a.Seq, c.Token, s.Lease.Advances)
	}
	if a.LastEventID < s.Cursor.LastEventID {
		return refuse(ErrCursorBackwards, "from %d to %d", s.Cursor.LastEventID, a.LastEventID)
	}
	if a.Keep && s.Lease.Holder == "" {
		return refuse(ErrStaleToken, "token %d was revoked; it cannot be kept", c.Token)
	}
	if a.Keep && s.Cursor.Paused {
		return refuse(ErrPaused, "processing is paused; token %d cannot be kept", c.Token)
	}
	if a.Keep && !s.Lease.HeldAt(c.Now) {
		return refuse(ErrLeaseExpired, "token %d expired %s ago; it cannot be kept", c.Token, time.Duration(c.Now-s.Lease.ExpiresAt))
	}
	// A gap is an ID the cursor passed without processing. An ID at or
	// below the old cursor that is not an open gap was processed (or given
	// up on) already: reopening it would apply it twice.
	if !a.GapsDelta {
		open := make(map[int64]bool, len(s.Gaps))
		for _, g := range s.Gaps {
			open[g.ID] = true
		}
		for _, g := range a.Gaps {
			if g.ID <= s.Cursor.LastEventID && !open[g.ID] {
				return refuse(ErrBadCommand, "gap %d is at or below the cursor (%d) but was not open", g.ID, s.Cursor.LastEventID)
			}
		}
		return nil
	}
	if sum := s.GapsSum; a.GapsBase != sum {
		return refuse(ErrGapBase, "the delta was made for open gaps with sum %x, the state's %d open gaps have sum %x", a.GapsBase, len(s.Gaps), sum)
	}
	for _, g := range a.GapsOpened {
		if g.ID <= s.Cursor.LastEventID {
			return refuse(ErrBadCommand, "opened gap %d is at or below the cursor (%d)", g.ID, s.Cursor.LastEventID)
		}
	}
	closed := 0
	for _, id := range a.GapsClosed {
		if HasGap(s.Gaps, id) {
			closed++
		}
	}
	if closed != len(a.GapsClosed) {
		return refuse(ErrBadCommand, "%d of the %d closed gaps are not open", len(a.GapsClosed)-closed, len(a.GapsClosed))
	}
	if n := len(s.Gaps) - closed + len(a.GapsOpened); n > MaxGaps {
		return refuse(ErrBadCommand, "the delta leaves %d open gaps, more than %d", n, MaxGaps)
	}
	return nil
}

func (s *State) advanceEffect(c Command) {
	a := c.Advance
	s.Lease.Advances++
	s.Cursor.LastEventID = a.LastEventID
	if a.LastEventDate != 0 {
		s.Cursor.LastEventDate = a.LastEventDate
	}
	if a.GapsDelta {
		s.Gaps, s.GapsSum = applyGapDelta(s.Gaps, s.GapsSum, a.GapsClosed, a.GapsOpened)
	} else {
		s.Gaps = append([]Gap(nil), a.Gaps...)
		s.GapsSum = GapSum(s.Gaps)
	}
	s.Stats.EventsProcessed += a.Events
	s.Stats.DeadLetters += a.DeadLetters
	s.Stats.GapsDropped += a.GapsDropped
	s.Stats.EventsPrunedUnseen += a.PrunedUnseen
	switch {
	case a.Batches > 0:
		s.Stats.Batches += a.Batches
	case a.Events > 0:
		s.Stats.Batches++
	}
	if a.Keep {
		s.Lease.ExpiresAt = c.Now + int64(c.TTL)
	} else {
		s.Lease.Holder, s.Lease.ExpiresAt = "", 0
		s.RevokedFrom = ""
	}
}

// applyGapDelta returns open without closed, with opened merged in, and
// the set's GapSum moved from sum by what changed; all three are sorted by
// ID, and every opened ID is above every open one (it is above the
// cursor), so the result is too. With nothing closed it appends in place:
// the state owns its gap slice (Clone copies it), and an append leaves
// what a shallow copy sees as it was.
func applyGapDelta(open []Gap, sum uint64, closed []int64, opened []Gap) ([]Gap, uint64) {
	for _, g := range opened {
		sum += mixGapID(g.ID)
	}
	if len(closed) == 0 {
		if len(opened) == 0 {
			return open, sum
		}
		return append(open, opened...), sum
	}
	var next []Gap // nil when empty, as a full set of none decodes
	for _, g := range open {
		if _, found := slices.BinarySearch(closed, g.ID); found {
			sum -= mixGapID(g.ID)
		} else {
			next = append(next, g)
		}
	}
	return append(next, opened...), sum
}

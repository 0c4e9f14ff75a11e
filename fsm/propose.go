package fsm

import "time"

// CheckProposal returns why a leader must not propose c, stamped with its
// clock (c.Now), or nil. It adds to Validate the bounds that only the
// leader enforces, because they depend on its clock or because a leader of
// the release before did not check them: the state machine itself never
// calls it, so a log written under that release applies the same on every
// replica (design section 14).
//
//   - reserve: a TTL of at most MaxReserveTTL;
//   - restore: a token of at most MaxRestoreToken and a clock from 1970
//     to MaxClock (which the state machine also checks once every member
//     speaks protocol 1), at most MaxClockAhead ahead of the leader's.
//
// Refusals wrap ErrBadCommand.
func (c Command) CheckProposal() error {
	if err := c.Validate(); err != nil {
		return err
	}
	switch c.Op {
	case OpReserve:
		if c.TTL > MaxReserveTTL {
			return refuse(ErrBadCommand, "reserve: ttl %s is longer than %s: an operator's request reserves the next grant for twice the lease TTL and renews it while it waits",
				c.TTL, MaxReserveTTL)
		}
	case OpRestore:
		if err := restoreBounds(c.Restore); err != nil {
			return refuse(ErrBadCommand, "restore: %v", err)
		}
		if ahead := time.Duration(c.Restore.Clock - c.Now); ahead > MaxClockAhead {
			return refuse(ErrBadCommand, "restore: the snapshot's clock %s is %s ahead of the leader's (%s): more than %s; a saved state's clock is when it was saved, so check the snapshot and the clocks (NTP)",
				Time(c.Restore.Clock).Format(time.RFC3339Nano), ahead.Round(time.Second), Time(c.Now).Format(time.RFC3339Nano), MaxClockAhead)
		}
	}
	return nil
}

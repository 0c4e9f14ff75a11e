package cursor

import (
	"sync"
	"time"

	"github.com/geocursor/geocursor/fsm"
)

// stateClock estimates the replicated state machine's clock (fsm.State.Clock)
// between commands: the latest applied time this peer has seen, plus how
// long ago, by this process's monotonic clock, it saw it. Gaps are stamped
// and aged on it rather than on the wall clock, so that every holder ages a
// gap on one timeline whatever its own clock says: a holder whose clock is
// hours ahead must not drop gaps another holder opened a second ago. It
// never goes backwards.
type stateClock struct {
	mu    sync.Mutex
	at    int64     // a state-machine time, Unix nanoseconds
	local time.Time // when it was seen, with its monotonic reading
}

// observe takes an applied time from an answer or the local replica; one
// behind the estimate changes nothing.
func (c *stateClock) observe(applied int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if applied > c.nowLocked() {
		c.at, c.local = applied, time.Now()
	}
}

// now returns the estimate. Before anything was observed it is the wall
// clock.
func (c *stateClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return fsm.Time(c.nowLocked())
}

func (c *stateClock) nowLocked() int64 {
	if c.local.IsZero() {
		return time.Now().UnixNano()
	}
	return c.at + int64(time.Since(c.local))
}

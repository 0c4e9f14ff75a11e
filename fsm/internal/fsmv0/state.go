package fsmv0

import (
	"cmp"
	"slices"
	"time"
)

// Lease is the exclusive right to process the next batch of events.
//
// Invariant: Token only ever grows; every grant (acquire) takes Token+1, so a
// token identifies one grant for the lifetime of the cluster and the tracking
// database can refuse writes from any grant older than the newest it has seen.
type Lease struct {
	// Holder is the node ID of the peer holding the lease, or "" when free.
	Holder string `json:"holder"`
	// Token is the fencing token of the latest grant (0 before the first).
	Token uint64 `json:"token"`
	// ExpiresAt is the leader-stamped expiry in Unix nanoseconds.
	ExpiresAt int64 `json:"expires_at"`
	// Advances counts the advances applied under Token, so that a retried
	// advance (its first answer lost) is recognised and not counted twice.
	Advances uint64 `json:"advances,omitempty"`
}

// HeldAt reports whether the lease is held by someone and not yet expired at
// the instant now (Unix nanoseconds).
func (l Lease) HeldAt(now int64) bool {
	return l.Holder != "" && now < l.ExpiresAt
}

// Gap is an event ID the cursor moved past while it was not yet visible in the
// source: its transaction had taken the ID from the sequence but not
// committed. It is re-checked on every batch until it appears or times out.
type Gap struct {
	ID int64 `json:"id"`
	// FirstSeen is when a holder first noticed the gap, in Unix nanoseconds.
	FirstSeen int64 `json:"first_seen"`
}

// HasGap reports whether gaps, sorted by ID as every gap set is, holds id:
// a binary search, so that a delta costs what it carries, not what is open.
func HasGap(gaps []Gap, id int64) bool {
	_, found := slices.BinarySearchFunc(gaps, id, func(g Gap, id int64) int { return cmp.Compare(g.ID, id) })
	return found
}

// GapSum is a checksum of the IDs of gaps (first-seen times are left
// out: they are the holders' notes, not the position). A gap delta names
// the sum of the set it was made from. It is the sum of a 64-bit mix of
// each ID, so that it is the same in any order and the state can move it
// by what a delta changes (applyGapDelta) instead of hashing 10,000 gaps
// on every advance. The sum of no gaps is 0.
func GapSum(gaps []Gap) uint64 {
	var sum uint64
	for _, g := range gaps {
		sum += mixGapID(g.ID)
	}
	return sum
}

// mixGapID is SplitMix64's finalizer: every bit of the ID moves every bit
// of the result, so that sums of different sets rarely agree.
func mixGapID(id int64) uint64 {
	x := uint64(id) + 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// SafeEventID is the safe cursor of a position: the highest event ID at
// and below which every event is processed or given up, one below the
// lowest open gap, else last. It is what a site reports to the primary
// (GitLab's event_log_states), which prunes its event log below it, so it
// never runs ahead of an open gap.
func SafeEventID(last int64, gaps []Gap) int64 {
	safe := last
	for _, g := range gaps {
		safe = min(safe, g.ID-1)
	}
	return safe
}

// Cursor is the position in the source event log.
type Cursor struct {
	// LastEventID is the highest event ID processed; every ID at or below it
	// has been processed, is an open gap, or was dropped after gap_timeout.
	LastEventID int64 `json:"last_event_id"`
	// LastEventDate is geo_event_log.created_at of LastEventID, Unix nanoseconds.
	LastEventDate int64 `json:"last_event_date"`
	// Paused stops every peer from acquiring the lease.
	Paused bool `json:"paused"`
}

// Member is how other peers reach one node.
type Member struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
}

// Stats are cumulative counters, advanced by release-and-advance.
type Stats struct {
	EventsProcessed uint64 `json:"events_processed"`
	Batches         uint64 `json:"batches"`
	DeadLetters     uint64 `json:"dead_letters"`
	GapsDropped     uint64 `json:"gaps_dropped"`
	// EventsPrunedUnseen counts the event IDs the primary pruned from its
	// log before this site processed them (design section 11).
	EventsPrunedUnseen uint64 `json:"events_pruned_unseen"`
}

// State is the whole replicated state. It is a plain value: the zero State is
// the state of a fresh cluster, and Clone gives a copy that shares nothing.
type State struct {
	Lease  Lease  `json:"lease"`
	Cursor Cursor `json:"cursor"`
	// Gaps are the open gaps, sorted by ID, each ID below Cursor.LastEventID.
	Gaps []Gap `json:"gaps"`
	// Members maps node ID to addresses.
	Members map[string]Member `json:"members"`
	Stats   Stats             `json:"stats"`
	// LastHolder is the node that held the lease most recently; it may go on
	// at once when work appears, while standbys wait a random delay first.
	LastHolder string `json:"last_holder"`
	// RevokedFrom is the holder whose current grant the leader revoked, so
	// that the batch it may already have committed can still be recorded
	// by advance; "" once that grant is settled or superseded.
	RevokedFrom string `json:"revoked_from,omitempty"`
	// Clock is the time the last command was applied at, in Unix
	// nanoseconds: the later of its leader stamp and the clock before it.
	// It never goes backwards, whatever the leaders' clocks do: two
	// commands stamped at once can be applied in the other order, and a
	// new leader's clock can be behind the old one's. Lease expiry is
	// decided on this clock, never on a stamp alone.
	Clock int64 `json:"clock,omitempty"`
	// GapsSum is GapSum(Gaps), kept as the gaps change so that checking a
	// delta's base costs nothing however many gaps are open.
	GapsSum uint64 `json:"gaps_sum,omitempty"`
	// Reservation, when set, holds the next grant for an operator's
	// request on one node (OpReserve).
	Reservation *Reservation `json:"reservation,omitempty"`
}

// Reservation is the next grant held for Node until Until (Unix
// nanoseconds, state clock).
type Reservation struct {
	Node  string `json:"node"`
	Until int64  `json:"until"`
}

// ReservedFor returns the node the next grant is reserved for at now, or
// "" when there is no reservation or it has run out.
func (s State) ReservedFor(now int64) string {
	if r := s.Reservation; r != nil && now < r.Until {
		return r.Node
	}
	return ""
}

// Clone returns a deep copy of s.
func (s State) Clone() State {
	c := s
	c.Gaps = append([]Gap(nil), s.Gaps...)
	if s.Members != nil {
		c.Members = make(map[string]Member, len(s.Members))
		for k, v := range s.Members {
			c.Members[k] = v
		}
	}
	return c
}

// Nanos converts t to the Unix-nanosecond form used in the state (0 for the
// zero time).
func Nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// Time converts Unix nanoseconds from the state back to a UTC time (the zero
// time for 0).
func Time(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

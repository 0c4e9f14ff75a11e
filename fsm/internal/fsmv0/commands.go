package fsmv0

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"regexp"
	"strconv"
	"time"
)

// Op names a command. The names are stored in the Raft log: never rename one.
type Op string

const (
	// OpAcquire grants the lease to Node for TTL from Now, with Token+1, when
	// the lease is free, expired at Now, or already held by Node (a peer that
	// restarted takes a fresh grant; its older token is fenced off).
	// Refused with ErrPaused while paused and ErrLeaseHeld while another
	// peer's lease is unexpired at Now.
	OpAcquire Op = "acquire"

	// OpRenew extends Node's lease to Now+TTL. Refused with ErrStaleToken
	// unless Token is the current grant held by Node, and with
	// ErrLeaseExpired once the lease expired at Now: a holder that could not
	// renew in time must stop, even if nobody has taken over yet.
	OpRenew Op = "renew"

	// OpRelease frees the lease. Refused with ErrStaleToken unless Token is
	// the current grant held by Node.
	OpRelease Op = "release"

	// OpAdvance is release-and-advance: it records a batch that the holder of
	// Token committed to the tracking database (new cursor, new gap set,
	// counters) and then frees the lease, or with Keep renews it to Now+TTL
	// so a holder with more work pending goes on without a new grant.
	// With Keep it is also refused with ErrLeaseExpired once the lease has
	// expired, like renew, and with ErrPaused while paused. Gaps at or below the old cursor that were not
	// open are refused with ErrBadCommand: that would process an ID twice.
	// Refused with ErrStaleToken unless Token is the current grant of Node
	// (also after expiry or revocation: the batch was fenced by that very
	// token, so recording it is correct as long as no newer grant exists;
	// but not once the grant was released, so a retried advance is not
	// counted twice), and with ErrCursorBackwards when LastEventID is below
	// the cursor.
	OpAdvance Op = "advance"

	// OpRevoke frees the lease of grant Token because the leader saw its
	// holder die or vanish. Refused with ErrStaleToken when Token is not
	// the current grant or the lease is already free, so a late revoke never
	// frees a newer grant.
	OpRevoke Op = "revoke"

	// OpSetMember records how to reach Member (insert or replace).
	OpSetMember Op = "set_member"

	// OpRemoveMember forgets Node's addresses.
	OpRemoveMember Op = "remove_member"

	// OpSetPaused pauses or resumes processing. Pausing does not revoke a
	// current grant; it stops new grants.
	OpSetPaused Op = "set_paused"

	// OpSetCursor is `geocursor cursor set`: the holder of Token, which
	// has moved the tracking database's fence row to the same place under
	// that token, moves the cursor to SetCursor.LastEventID, closes every
	// gap and frees the lease. Refused with ErrStaleToken unless Token is
	// the current, unexpired grant of Node, and with ErrCursorBackwards
	// when the cursor would move back without Force.
	OpSetCursor Op = "set_cursor"

	// OpRestore is `geocursor snapshot restore`: it puts a saved state
	// (cursor, gaps, counters) into a group that has processed nothing
	// yet, with the token raised to at least Restore.Token, so that the
	// next grant is newer than any the tracking database has seen. Refused
	// with ErrNotFresh once the group has processed events, and with
	// ErrLeaseHeld while another peer holds the lease.
	OpRestore Op = "restore"

	// OpReserve reserves the next grant for Node until Now+TTL: an
	// operator's request (cursor set, snapshot restore) that needs the
	// lease asks the holder to hand it over. While the reservation lasts,
	// an acquire from any other node is refused with ErrLeaseHeld, and a
	// holder that sees it releases at its next batch instead of keeping
	// the lease. Node's own grant ends the reservation. Never refused.
	OpReserve Op = "reserve"
)

// MaxTTL bounds a lease's TTL, so that Now+TTL cannot overflow and a typo
// cannot hand one peer the lease for a century.
const MaxTTL = 24 * time.Hour

// Caps on what a command may carry, so that no command can grow the log
// or the state without bound: MaxGaps open gaps (the cursor loop drops the
// lowest beyond it), addresses and revoke reasons of at most MaxAddrLen and
// MaxReasonLen bytes.
const (
	MaxGaps      = 10000
	MaxAddrLen   = 255
	MaxReasonLen = 512
)

// nodeIDPattern is what a node ID may be: 1 to 63 letters, digits, '.',
// '_' or '-', starting with a letter or digit, so that it is safe to print
// and also a DNS label of its certificate's name.
var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidNodeID reports whether id may name a node.
func ValidNodeID(id string) bool { return nodeIDPattern.MatchString(id) }

// Command is one entry of the Raft log. Only the fields its Op documents
// are meaningful.
type Command struct {
	Op    Op     `json:"op"`
	Node  string `json:"node,omitempty"`
	Token uint64 `json:"token,omitempty"`
	// TTL is the lease duration for acquire, renew and advance with Keep.
	TTL time.Duration `json:"ttl,omitempty"`
	// Now is stamped by the leader just before proposing (Unix
	// nanoseconds). The command is applied at the later of Now and the
	// state's clock, so a stamp that is behind changes nothing.
	Now int64 `json:"now,omitempty"`

	Advance   *Advance   `json:"advance,omitempty"`
	SetCursor *SetCursor `json:"set_cursor,omitempty"`
	Restore   *Restore   `json:"restore,omitempty"`
	Member    *Member    `json:"member,omitempty"`
	Paused    bool       `json:"paused,omitempty"`
	// Reason is free text recorded with a revoke, for logs.
	Reason string `json:"reason,omitempty"`
}

// Advance is the payload of OpAdvance.
type Advance struct {
	LastEventID   int64 `json:"last_event_id"`
	LastEventDate int64 `json:"last_event_date"`
	// Gaps is the complete open-gap set after the batch, sorted by ID,
	// unless GapsDelta is set.
	Gaps []Gap `json:"gaps"`
	// GapsDelta says the advance carries the change to the open gaps
	// instead of the whole set, so that a Raft entry stays small however
	// many gaps are open: GapsClosed (filled or dropped) leave the set,
	// GapsOpened (new, each above the cursor before) join it, both sorted
	// by ID. GapsBase is GapSum of the set it was computed from; the
	// advance is refused with ErrGapBase if the state's set differs, so a
	// delta can never be applied to a set it was not made for.
	GapsDelta  bool    `json:"gaps_delta,omitempty"`
	GapsOpened []Gap   `json:"gaps_opened,omitempty"`
	GapsClosed []int64 `json:"gaps_closed,omitempty"`
	GapsBase   uint64  `json:"gaps_base,omitempty"`
	// Keep renews the lease instead of releasing it.
	Keep bool `json:"keep,omitempty"`
	// Seq numbers the advances under one token from 1. When set, an advance
	// is applied only if it is the next one (Lease.Advances+1): a retry of
	// an advance that was applied already is refused with ErrStaleToken
	// instead of counting its batch twice. 0 skips the check.
	Seq uint64 `json:"seq,omitempty"`

	Events      uint64 `json:"events"`
	DeadLetters uint64 `json:"dead_letters"`
	GapsDropped uint64 `json:"gaps_dropped"`
	// PrunedUnseen counts the IDs the cursor moved past because the
	// primary had pruned them before they were processed.
	PrunedUnseen uint64 `json:"pruned_unseen,omitempty"`
	// Batches counts the batches with events that this advance records: a
	// holder working through a backlog records several at a time. 0 counts
	// as one if Events is set, as agents that sent one advance per batch
	// did not set it.
	Batches uint64 `json:"batches,omitempty"`
}

// SetCursor is the payload of OpSetCursor.
type SetCursor struct {
	LastEventID   int64 `json:"last_event_id"`
	LastEventDate int64 `json:"last_event_date,omitempty"`
	// Force allows moving the cursor back (the events after it are
	// processed again).
	Force bool `json:"force,omitempty"`
}

// Restore is the payload of OpRestore: a saved state.
type Restore struct {
	Cursor Cursor `json:"cursor"`
	Gaps   []Gap  `json:"gaps"`
	Stats  Stats  `json:"stats"`
	// Token is the lowest the lease token may be after the restore: the
	// saved token, or the tracking database's, whichever is higher.
	Token uint64 `json:"token"`
	Clock int64  `json:"clock,omitempty"`
}

// Result is what applying a command returns. Err is nil or wraps one of the
// sentinel errors; Lease and Cursor are the state after the command.
type Result struct {
	Lease  Lease
	Cursor Cursor
	// Now is the time the command was applied at: the later of the
	// leader's stamp and the state's clock (see State.Apply), so that a
	// history checker can replay the command exactly.
	Now int64
	// Index is the command's Raft log index, set by FSM.Apply; 0 when the
	// command was applied outside Raft. It orders commands as every replica
	// applied them.
	Index uint64
	Err   error
}

// Encode serialises c for the Raft log.
func (c Command) Encode() ([]byte, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode %s command: %w", c.Op, err)
	}
	return b, nil
}

// DecodeCommand parses a log entry and checks that it is well formed.
func DecodeCommand(b []byte) (Command, error) {
	var c Command
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return Command{}, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	// More() misses a stray closing bracket; only a clean end will do.
	if _, err := dec.Token(); err != io.EOF {
		return Command{}, fmt.Errorf("%w: trailing data after command", ErrBadCommand)
	}
	if err := c.Validate(); err != nil {
		return Command{}, err
	}
	return c, nil
}

// Validate checks the fields that c.Op needs, and that nothing in c is
// malformed or over its cap.
func (c Command) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrBadCommand, c.Op, fmt.Sprintf(format, args...))
	}
	if c.Node != "" && !ValidNodeID(c.Node) {
		return bad("node %q is not a valid node ID", c.Node)
	}
	if len(c.Reason) > MaxReasonLen {
		return bad("reason is %d bytes long, more than %d", len(c.Reason), MaxReasonLen)
	}
	switch c.Op {
	case OpAcquire, OpRenew, OpReserve:
		if c.Node == "" {
			return bad("node is required")
		}
		if c.TTL <= 0 || c.TTL > MaxTTL {
			return bad("ttl must be positive and at most %s, got %s", MaxTTL, c.TTL)
		}
	case OpRelease:
		if c.Node == "" {
			return bad("node is required")
		}
	case OpAdvance:
		if c.Node == "" {
			return bad("node is required")
		}
		if c.Advance == nil {
			return bad("advance payload is required")
		}
		if c.Advance.Keep && (c.TTL <= 0 || c.TTL > MaxTTL) {
			return bad("ttl must be positive and at most %s to keep the lease, got %s", MaxTTL, c.TTL)
		}
		if c.Advance.LastEventID < 0 {
			return bad("last_event_id %d is negative", c.Advance.LastEventID)
		}
		a := c.Advance
		if a.GapsDelta && len(a.Gaps) > 0 {
			return bad("a gap delta carries no gap set, got %d gaps", len(a.Gaps))
		}
		if !a.GapsDelta && (len(a.GapsOpened) > 0 || len(a.GapsClosed) > 0 || a.GapsBase != 0) {
			return bad("gaps_opened, gaps_closed and gaps_base need gaps_delta")
		}
		if err := checkGapIDs("gaps", a.Gaps, a.LastEventID); err != nil {
			return bad("%v", err)
		}
		if err := checkGapIDs("gaps_opened", a.GapsOpened, a.LastEventID); err != nil {
			return bad("%v", err)
		}
		if len(a.GapsClosed) > MaxGaps {
			return bad("%d closed gaps, more than %d", len(a.GapsClosed), MaxGaps)
		}
		for i, id := range a.GapsClosed {
			if id <= 0 || (i > 0 && id <= a.GapsClosed[i-1]) {
				return bad("gaps_closed are not positive, sorted and unique at %d", id)
			}
		}
	case OpRevoke:
		if c.Token == 0 {
			return bad("token is required")
		}
	case OpSetCursor:
		if c.Node == "" || c.Token == 0 || c.SetCursor == nil {
			return bad("node, token and the set_cursor payload are required")
		}
		if c.SetCursor.LastEventID < 0 {
			return bad("last_event_id %d is negative", c.SetCursor.LastEventID)
		}
	case OpRestore:
		r := c.Restore
		if c.Node == "" || r == nil {
			return bad("node and the restore payload are required")
		}
		if r.Cursor.LastEventID < 0 {
			return bad("last_event_id %d is negative", r.Cursor.LastEventID)
		}
		if err := checkGapIDs("gaps", r.Gaps, r.Cursor.LastEventID); err != nil {
			return bad("%v", err)
		}
	case OpSetMember:
		m := c.Member
		if m == nil || m.ID == "" || m.RaftAddr == "" {
			return bad("member id and raft_addr are required")
		}
		if !ValidNodeID(m.ID) {
			return bad("member %q is not a valid node ID", m.ID)
		}
		if err := checkAddr(m.RaftAddr); err != nil {
			return bad("raft_addr %q: %v", m.RaftAddr, err)
		}
		if m.HTTPAddr != "" {
			if err := checkAddr(m.HTTPAddr); err != nil {
				return bad("http_addr %q: %v", m.HTTPAddr, err)
			}
		}
	case OpRemoveMember:
		if c.Node == "" {
			return bad("node is required")
		}
	case OpSetPaused:
	default:
		return fmt.Errorf("%w: unknown op %q", ErrBadCommand, c.Op)
	}
	return nil
}

// checkGapIDs checks that gaps are at most MaxGaps, sorted and unique, and
// each in 1..last-1.
func checkGapIDs(field string, gaps []Gap, last int64) error {
	if len(gaps) > MaxGaps {
		return fmt.Errorf("%d %s, more than %d", len(gaps), field, MaxGaps)
	}
	for i, g := range gaps {
		if g.ID <= 0 || g.ID >= last {
			return fmt.Errorf("%s: gap %d is outside 1..%d", field, g.ID, last-1)
		}
		if i > 0 && g.ID <= gaps[i-1].ID {
			return fmt.Errorf("%s are not sorted and unique at %d", field, g.ID)
		}
	}
	return nil
}

// checkAddr checks that addr is HOST:PORT, printable and within its cap.
func checkAddr(addr string) error {
	if len(addr) > MaxAddrLen {
		return fmt.Errorf("longer than %d bytes", MaxAddrLen)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return fmt.Errorf("not HOST:PORT")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	for _, r := range host {
		if r <= ' ' || r > '~' {
			return fmt.Errorf("the host has a character that is not printable ASCII")
		}
	}
	return nil
}

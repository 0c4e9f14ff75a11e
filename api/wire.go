package api

import (
	"time"

	"github.com/geocursor/geocursor/fsm"
)

// The endpoints (design section 7).
const (
	PathStatus      = "/v1/status"
	PathHealth      = "/v1/health"
	PathReady       = "/v1/health/ready"
	PathJoin        = "/v1/cluster/join"
	PathRemove      = "/v1/cluster/remove"
	PathPeerInfo    = "/v1/cluster/peer"
	PathApply       = "/v1/internal/apply"
	PathLease       = "/v1/lease/" // + acquire, renew or release
	PathPause       = "/v1/cursor/pause"
	PathResume      = "/v1/cursor/resume"
	PathCursor      = "/v1/cursor"
	PathCursorSet   = "/v1/cursor/set"
	PathSnapshot    = "/v1/snapshot"
	PathRestore     = "/v1/snapshot/restore"
	MaxRequestBody  = 1 << 20
	maxResponseBody = 8 << 20
)

// JoinRequest asks the group to add a member.
type JoinRequest struct {
	NodeID   string `json:"node_id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
	// NoState says the joiner has no Raft state: if the group knows it as a
	// voter, it lost its data and must be a non-voter until it catches up.
	NoState bool `json:"no_state,omitempty"`
	// Witness says the joiner does not process (it has no source): the
	// leader never grants it the lease. A member that said so may say it
	// processes only with the operator's token. A leader of the release
	// before refuses the field; a joiner then joins without it.
	Witness bool `json:"witness,omitempty"`
	// Version and Protocol are the release the joiner runs and the
	// protocol it speaks (design section 14); the leader records them in
	// its members row. A leader of protocol 0 refuses the fields; a joiner
	// then joins without them, and counts as speaking protocol 0.
	Version  string `json:"version,omitempty"`
	Protocol int    `json:"protocol,omitempty"`
}

// PeerInfo is what a node tells a peer that is joining or bootstrapping
// (bootstrap_expect): who it is, and whether it is in a group already.
type PeerInfo struct {
	NodeID   string `json:"node_id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
	// HasState says it has Raft state: it belongs to a group, and a node
	// that finds one never bootstraps another.
	HasState bool `json:"has_state"`
	// Leader is the leader it knows, "" for none.
	Leader string `json:"leader,omitempty"`
}

// RemoveRequest asks the leader to drop a member from the group. Force
// removes it even when the voters left that answer are no majority.
//
// Undo lets a removed node ID back in (`cluster remove -id ID -undo`):
// the leader records every ID the operator removes and refuses its joins
// until then. Leave says the node removes itself on its way out
// (leave_on_terminate), which records nothing: it may come back.
type RemoveRequest struct {
	NodeID string `json:"node_id"`
	Force  bool   `json:"force,omitempty"`
	Undo   bool   `json:"undo,omitempty"`
	Leave  bool   `json:"leave,omitempty"`
}

// RemoveResponse says how many voters are left.
type RemoveResponse struct {
	Voters int `json:"voters"`
}

// JoinResponse is the leader's answer to a join.
type JoinResponse struct {
	Leader string `json:"leader"`
	// AlreadyMember is true when the node was in the group already.
	AlreadyMember bool `json:"already_member"`
	// Demoted is true when the node was a voter and rejoined with no Raft
	// state: it is a non-voter until it has caught up.
	Demoted bool `json:"demoted,omitempty"`
}

// LeaseRequest is the body of POST /v1/lease/{acquire,renew,release}.
type LeaseRequest struct {
	Node  string `json:"node"`
	Token uint64 `json:"token"`
	// TTL is a Go duration ("5s", "10m"); required for acquire and renew.
	TTL string `json:"ttl,omitempty"`
}

// ApplyResponse is the answer to a state-machine command: the state after
// it (lease and cursor), the time it was applied at, its Raft index, and
// the refusal if the state machine refused it. A refusal is an answer
// (HTTP 200), not a failure of the request.
type ApplyResponse struct {
	Lease  fsm.Lease  `json:"lease"`
	Cursor fsm.Cursor `json:"cursor"`
	Now    int64      `json:"now"`
	Index  uint64     `json:"index,omitempty"`
	Error  *Error     `json:"error,omitempty"`
}

// NewApplyResponse is the answer that carries res.
func NewApplyResponse(res fsm.Result) ApplyResponse {
	a := ApplyResponse{Lease: res.Lease, Cursor: res.Cursor, Now: res.Now, Index: res.Index}
	if res.Err != nil {
		a.Error = ErrorOf(res.Err)
	}
	return a
}

// Result turns the answer back into the result it carries; a refusal
// matches its sentinel with errors.Is.
func (a ApplyResponse) Result() fsm.Result {
	res := fsm.Result{Lease: a.Lease, Cursor: a.Cursor, Now: a.Now, Index: a.Index}
	if a.Error != nil {
		res.Err = a.Error.Err()
	}
	return res
}

// CursorSetRequest is the body of POST /v1/cursor/set: move the cursor to
// EventID. Force allows moving it back (the events after it are processed
// again).
type CursorSetRequest struct {
	EventID int64 `json:"event_id"`
	Force   bool  `json:"force,omitempty"`
}

// CursorSetResponse says what a cursor set did.
type CursorSetResponse struct {
	// From is where the tracking database stood, To where it stands now.
	From int64 `json:"from"`
	To   int64 `json:"to"`
	// Token is the grant it was done under.
	Token uint64 `json:"token"`
	// Skipped counts the source events between From and To that will
	// never be processed (forwards), GapsDropped the open gaps given up;
	// Replayed the processed events after To that will be processed
	// again (backwards).
	Skipped     int64 `json:"skipped"`
	GapsDropped int   `json:"gaps_dropped"`
	Replayed    int64 `json:"replayed"`
	// By names who asked, as the audit line does.
	By string `json:"by"`
}

// CursorState is the answer of GET /v1/cursor: the replicated cursor with
// its gaps, and the tracking database's fence row as this node reads it.
type CursorState struct {
	LastEventID   int64      `json:"last_event_id"`
	LastEventDate *time.Time `json:"last_event_date"`
	SafeEventID   int64      `json:"safe_event_id"`
	Paused        bool       `json:"paused"`
	Gaps          []fsm.Gap  `json:"gaps"`
	Lease         Lease      `json:"lease"`
	// Fence is null on a node without a tracking database.
	Fence *Fence `json:"fence"`
}

// Fence is the tracking database's fence row.
type Fence struct {
	Token       uint64 `json:"token"`
	LastEventID int64  `json:"last_event_id"`
	OpenGaps    int    `json:"open_gaps"`
	Positioned  bool   `json:"positioned"`
}

// Snapshot is the replicated state as `geocursor snapshot save` writes it
// and `snapshot restore` reads it back. Members are left out: a restored
// group has its own.
type Snapshot struct {
	// Format is SnapshotFormat.
	Format    int       `json:"format"`
	TakenAt   time.Time `json:"taken_at"`
	TakenFrom string    `json:"taken_from"`
	// Index is the Raft index of the state saved.
	Index  uint64     `json:"index"`
	Token  uint64     `json:"token"`
	Cursor fsm.Cursor `json:"cursor"`
	Gaps   []fsm.Gap  `json:"gaps"`
	Stats  fsm.Stats  `json:"stats"`
	Clock  int64      `json:"clock"`
}

// SnapshotFormat is the format of the snapshots this version writes.
const SnapshotFormat = 1

// RestoreResponse says what a restore did.
type RestoreResponse struct {
	LastEventID int64  `json:"last_event_id"`
	Token       uint64 `json:"token"`
	By          string `json:"by"`
}

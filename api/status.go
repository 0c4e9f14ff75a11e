package api

import (
	"time"

	"github.com/geocursor/geocursor/fsm"
)

// Status is the document of GET /v1/status and `geocursor cluster status
// -format json` (design section 7). Fields may be added, never renamed.
type Status struct {
	NodeID string `json:"node_id"`
	// Version and Commit are the release and the commit the answering
	// node was built from, so that a rolling upgrade shows who runs what.
	Version string `json:"version"`
	Commit  string `json:"commit"`
	// Ready is what GET /v1/health/ready answers; NotReady says why not.
	Ready        bool      `json:"ready"`
	NotReady     string    `json:"not_ready,omitempty"`
	Leader       *Leader   `json:"leader"`
	Term         uint64    `json:"term"`
	CommitIndex  uint64    `json:"commit_index"`
	AppliedIndex uint64    `json:"applied_index"`
	Members      []Member  `json:"members"`
	Lease        Lease     `json:"lease"`
	Cursor       Cursor    `json:"cursor"`
	Stats        fsm.Stats `json:"stats"`
	// Databases is this node's view of its databases; absent on a witness.
	Databases *Databases `json:"databases,omitempty"`
	// Delivery is this node's view of delivery to GitLab (design section
	// 11); absent without a delivery block.
	Delivery *Delivery `json:"delivery,omitempty"`
	// GitLab is this node's view of GitLab's shared state (design section
	// 13); absent without a gitlab block.
	GitLab *GitLab `json:"gitlab,omitempty"`
}

// GitLab shows what GitLab's shared state allows: the site's role, who
// holds GitLab's log cursor lease, and why the site processes nothing if
// it does not.
type GitLab struct {
	// SiteName is gitlab.site_name, the geo_nodes row read.
	SiteName string `json:"site_name"`
	// Role is "secondary", "primary" (promoted), "missing" (no row of
	// that name) or "unknown" (not read yet); RoleError the last failed
	// read.
	Role      string `json:"role"`
	RoleError string `json:"role_error,omitempty"`
	// CursorLease is who holds GitLab's cursor lease key: one of the
	// GitLabLease values; CursorLeaseHolder the other process's value.
	CursorLease       string `json:"cursor_lease"`
	CursorLeaseHolder string `json:"cursor_lease_holder,omitempty"`
	// SharedStateRedis is "ok" or the last error.
	SharedStateRedis string `json:"shared_state_redis"`
	// GitLabGaps is the size of GitLab's gap set (geo:event_log:gaps) at
	// the last look; null before.
	GitLabGaps *int `json:"gitlab_gaps"`
	// Blocked says why this site processes and delivers nothing now; ""
	// when it may.
	Blocked string `json:"blocked,omitempty"`
}

// The values of GitLab.CursorLease.
const (
	GitLabLeaseHeld      = "held by this group"
	GitLabLeaseOldCursor = "held by another process (geo-logcursor)"
	GitLabLeaseUnknown   = "unknown"
)

// Delivery shows how far the jobs in geo_jobs have been handed to GitLab's
// Sidekiq and Rails cache, as the answering node last read it.
type Delivery struct {
	// Backlog is the jobs written and not yet delivered: an upper bound,
	// counted in geo_jobs IDs (a rolled-back batch leaves unused IDs).
	Backlog int64 `json:"backlog"`
	// LastJobID and LastEventID are the last job delivered (or skipped)
	// and its event.
	LastJobID   int64 `json:"last_job_id"`
	LastEventID int64 `json:"last_event_id"`
	// Delivered counts the jobs handed to Redis since delivery began.
	Delivered int64 `json:"delivered"`
	// LostInRedis counts jobs Sidekiq's Redis acknowledged and then lost
	// (it restarted without its data): they are not pushed again.
	LostInRedis int64 `json:"lost_in_redis"`
	// SidekiqRedis and CacheRedis are "ok", the last error, or
	// "not configured".
	SidekiqRedis string `json:"sidekiq_redis"`
	CacheRedis   string `json:"cache_redis"`
	// RateLimit is delivery.rate_limit (jobs per second; 0: none).
	RateLimit float64 `json:"rate_limit"`
	// TrackingError is the last error of the tracking database in a
	// delivery round, "" when the last round reached it.
	TrackingError string `json:"tracking_error,omitempty"`
	// Blocked says why delivery waits for GitLab's shared state (gitlab
	// block: the site was promoted, or geo-logcursor runs), "" when not.
	Blocked string `json:"blocked,omitempty"`
	// ReadAt is when the node last read the figures; null before.
	ReadAt *time.Time `json:"read_at"`
}

// DeliveryNotConfigured is the state of a Redis without its block.
const DeliveryNotConfigured = "not configured"

// Leader is the leader as the answering node knows it; null when there is
// none.
type Leader struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
}

// Member is one server of the Raft configuration. Role is leader,
// follower, candidate (the answering node only) or nonvoter; Reachable
// says whether its health check answered the answering node just now.
// Version and Protocol are the release and protocol its members row
// advertises: "" and 0 for a node of protocol 0 (design section 14).
type Member struct {
	ID        string `json:"id"`
	RaftAddr  string `json:"raft_addr"`
	HTTPAddr  string `json:"http_addr"`
	Role      string `json:"role"`
	Voter     bool   `json:"voter"`
	Reachable bool   `json:"reachable"`
	Version   string `json:"version"`
	Protocol  int    `json:"protocol"`
}

// Lease shows the lease. Holder is null when the lease is free or has
// expired; Token is the latest grant either way.
type Lease struct {
	Holder    *string    `json:"holder"`
	Token     uint64     `json:"token"`
	ExpiresAt *time.Time `json:"expires_at"`
}

// Cursor is the position in the event log and how far behind the source
// it is. Source figures are null where the answering node cannot know them
// (a witness, or the source is unreachable).
type Cursor struct {
	LastEventID         int64      `json:"last_event_id"`
	LastEventDate       *time.Time `json:"last_event_date"`
	SourceLastEventID   *int64     `json:"source_last_event_id"`
	SourceLastEventDate *time.Time `json:"source_last_event_date"`
	LagEvents           *int64     `json:"lag_events"`
	LagSeconds          *float64   `json:"lag_seconds"`
	OpenGaps            int        `json:"open_gaps"`
	Paused              bool       `json:"paused"`
	// SafeEventID is the safe cursor: every event at or below it is
	// processed or given up. It is what GitLab's event_log_states holds.
	SafeEventID int64 `json:"safe_event_id"`
	// SafeEventDate is the created_at of the event at the safe cursor (of
	// the newest one below it, when that ID is not in the source): the
	// last_event_date while no gap is open, else as the answering node
	// last read it from the source; null where it cannot know.
	SafeEventDate *time.Time `json:"safe_event_date"`
}

// Databases says whether the answering node can reach its databases: "ok"
// or the last error.
type Databases struct {
	Source   string `json:"source"`
	Tracking string `json:"tracking"`
}

// DatabaseOK is the value of a Databases field for a reachable database.
const DatabaseOK = "ok"

// ErrorText is what a status field records of err: its message, "" for
// none.
func ErrorText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// OKOr is a status field's value for a database or Redis whose last error
// is errText: DatabaseOK when there was none.
func OKOr(errText string) string {
	if errText == "" {
		return DatabaseOK
	}
	return errText
}

// Health is the answer of GET /v1/health: the process and Raft run.
type Health struct {
	Status    string `json:"status"`
	NodeID    string `json:"node_id"`
	RaftState string `json:"raft_state"`
}

// Ready is the answer of GET /v1/health/ready: 200 when the node knows a
// leader and is in the configuration, else 503 with the reason.
type Ready struct {
	Ready  bool   `json:"ready"`
	Leader string `json:"leader,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// HTTPStatus is the status Ready is served with.
func (r Ready) HTTPStatus() int {
	if r.Ready {
		return 200
	}
	return 503
}

package api

import (
	"context"
	"net/http"
	"net/url"
	"time"
)

// PathRecent is GET /v1/recent: the answering node's last minutes (design
// section 12, the status page's history). PathUI is the status page.
const (
	PathRecent = "/v1/recent"
	PathUI     = "/ui/"
)

// Recent is the document of GET /v1/recent: what the answering node saw
// over the last minutes, one sample a second, with the recent failovers
// and dead letters. It is this node's own record, kept in memory: a node
// that restarted has only the minutes since. Fields may be added, never
// renamed.
type Recent struct {
	NodeID string `json:"node_id"`
	// IntervalSeconds is the time between two samples.
	IntervalSeconds float64 `json:"interval_seconds"`
	// Current is a sample taken for this answer, not kept.
	Current Sample `json:"current"`
	// Samples are the kept samples, oldest first: at most the last ten
	// minutes, and only those taken after since when the request asks
	// for that (?since=RFC 3339 time).
	Samples []Sample `json:"samples"`
	// Failovers are the last times the lease changed hands without a clean
	// release, oldest first.
	Failovers []Failover `json:"failovers"`
	// DeadLetters are the newest rows of geo_dead_letters; absent on a
	// node without a tracking database (a witness).
	DeadLetters *DeadLetters `json:"dead_letters,omitempty"`
}

// Sample is the state of the cluster as one node saw it at one time.
type Sample struct {
	At time.Time `json:"at"`
	// Leader is the Raft leader known then; null when none.
	Leader *string `json:"leader"`
	// Holder is the peer doing the work: the one holding the lease or,
	// between two batches, the last holder, which released it and goes on
	// first when events appear. Null when nobody does: the lease was
	// revoked or ran out, and no other peer has taken it yet.
	Holder *string `json:"holder"`
	// Held says whether the lease itself was held (not between batches).
	Held bool `json:"held"`
	// Token is the fencing token of the latest grant.
	Token           uint64 `json:"token"`
	LastEventID     int64  `json:"last_event_id"`
	SafeEventID     int64  `json:"safe_event_id"`
	EventsProcessed uint64 `json:"events_processed"`
	DeadLetters     uint64 `json:"dead_letters"`
	OpenGaps        int    `json:"open_gaps"`
	Paused          bool   `json:"paused"`
	// LagEvents and LagSeconds are as in the status document: null where
	// this node cannot know them (a witness, or the source unreachable).
	LagEvents  *int64   `json:"lag_events"`
	LagSeconds *float64 `json:"lag_seconds"`
	// DeliveryBacklog is the delivery backlog as in the status document;
	// null without a delivery block.
	DeliveryBacklog *int64 `json:"delivery_backlog"`
}

// Failover is one time the lease changed hands without a clean release.
type Failover struct {
	// Kind says how the old holder lost the lease:
	//   - "revoked": the leader revoked it (it could not reach the holder,
	//     or the holder was no longer a member);
	//   - "expired": the lease ran out and another peer took it;
	//   - "gone": the old holder had released the lease after its last
	//     batch, and another peer took over while it no longer answered.
	Kind string `json:"kind"`
	// From is the old holder and FromToken its grant.
	From      string `json:"from"`
	FromToken uint64 `json:"from_token"`
	// LostAt is when the old holder lost the lease (the revoke, the
	// expiry; for "gone", when the new holder took it).
	LostAt time.Time `json:"lost_at"`
	// To is the new holder, ToToken its grant and TakenAt when it took
	// the lease; null and zero while no peer has taken it yet.
	To      *string    `json:"to"`
	ToToken uint64     `json:"to_token,omitempty"`
	TakenAt *time.Time `json:"taken_at"`
}

// The kinds of Failover.
const (
	FailoverRevoked = "revoked"
	FailoverExpired = "expired"
	FailoverGone    = "gone"
)

// DeadLetters are the newest dead letters of this node's tracking
// database, newest first, as last read.
type DeadLetters struct {
	Recent []DeadLetter `json:"recent"`
	// Error is why the last read failed ("" when it did not); Recent is
	// then what an earlier read found.
	Error string `json:"error,omitempty"`
	// ReadAt is when Recent was read; null before the first read.
	ReadAt *time.Time `json:"read_at"`
}

// DeadLetter is one row of geo_dead_letters: an event that could not be
// turned into a job.
type DeadLetter struct {
	EventID   int64     `json:"event_id"`
	Reason    string    `json:"reason"`
	CreatedAt time.Time `json:"created_at"`
}

// Recent fetches the recent history of the agent at addr; a non-zero since
// asks only for the samples taken after it.
func (c *Client) Recent(ctx context.Context, addr string, since time.Time) (Recent, error) {
	path := PathRecent
	if !since.IsZero() {
		path += "?since=" + url.QueryEscape(since.UTC().Format(time.RFC3339Nano))
	}
	var r Recent
	err := c.send(ctx, http.MethodGet, addr, path, nil, &r, nil)
	return r, err
}

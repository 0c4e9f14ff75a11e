package cluster

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/geocursor/geocursor/fsm"
)

// Status is the document of GET /v1/status and `geocursor cluster status
// -format json`. Fields may be added, never renamed.
type Status struct {
	NodeID       string         `json:"node_id"`
	Leader       *StatusLeader  `json:"leader"`
	Term         uint64         `json:"term"`
	CommitIndex  uint64         `json:"commit_index"`
	AppliedIndex uint64         `json:"applied_index"`
	Members      []StatusMember `json:"members"`
	Lease        StatusLease    `json:"lease"`
	Cursor       StatusCursor   `json:"cursor"`
	Stats        fsm.Stats      `json:"stats"`
	// Databases is this node's view of its databases; absent on a witness.
	Databases *StatusDatabases `json:"databases,omitempty"`
}

// StatusLeader is the leader as this node knows it; null when there is none.
type StatusLeader struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
}

// StatusMember is one server of the Raft configuration. Role is leader,
// follower, candidate (this node only) or nonvoter; Reachable says whether
// its HTTP health check answered this node just now.
type StatusMember struct {
	ID        string `json:"id"`
	RaftAddr  string `json:"raft_addr"`
	HTTPAddr  string `json:"http_addr"`
	Role      string `json:"role"`
	Voter     bool   `json:"voter"`
	Reachable bool   `json:"reachable"`
}

// StatusLease shows the lease. Holder is null when the lease is free or
// has expired; Token is the latest grant either way.
type StatusLease struct {
	Holder    *string    `json:"holder"`
	Token     uint64     `json:"token"`
	ExpiresAt *time.Time `json:"expires_at"`
}

// StatusCursor is the position in the event log and how far behind the
// source it is. Source figures are null where this node cannot know them
// (a witness, or the source is unreachable).
type StatusCursor struct {
	LastEventID         int64      `json:"last_event_id"`
	LastEventDate       *time.Time `json:"last_event_date"`
	SourceLastEventID   *int64     `json:"source_last_event_id"`
	SourceLastEventDate *time.Time `json:"source_last_event_date"`
	LagEvents           *int64     `json:"lag_events"`
	LagSeconds          *float64   `json:"lag_seconds"`
	OpenGaps            int        `json:"open_gaps"`
	Paused              bool       `json:"paused"`
}

// StatusDatabases says whether this node can reach its databases: "ok" or
// the last error.
type StatusDatabases struct {
	Source   string `json:"source"`
	Tracking string `json:"tracking"`
}

// Progress is what the local cursor loop knows that Raft does not.
type Progress struct {
	SourceHeadID   int64
	SourceHeadDate time.Time
	SourceHeadOK   bool   // false until the head was read once
	SourceError    string // "" when reachable
	TrackingError  string
}

// SetProgress installs the function that reports the local cursor loop's
// view of the databases for the status document.
func (n *Node) SetProgress(f func() Progress) { n.progress.Store(&f) }

// Status builds the status document from this node's replica of the state,
// asking every other member whether it is reachable.
func (n *Node) Status(ctx context.Context) Status {
	st := n.fsm.State()
	leaderID, leaderAddr := n.Leader()
	out := Status{
		NodeID:       n.cfg.NodeID,
		Term:         n.raft.CurrentTerm(),
		CommitIndex:  n.raft.CommitIndex(),
		AppliedIndex: n.raft.AppliedIndex(),
		Stats:        st.Stats,
	}
	if leaderID != "" {
		out.Leader = &StatusLeader{ID: leaderID, RaftAddr: leaderAddr, HTTPAddr: st.Members[leaderID].HTTPAddr}
	}

	var servers []raft.Server
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		servers = f.Configuration().Servers
	}
	out.Members = make([]StatusMember, len(servers))
	var wg sync.WaitGroup
	for i, s := range servers {
		id := string(s.ID)
		voter := s.Suffrage == raft.Voter
		m := StatusMember{ID: id, RaftAddr: string(s.Address), HTTPAddr: st.Members[id].HTTPAddr, Voter: voter}
		switch {
		case id == n.cfg.NodeID:
			m.Role = roleName(n.raft.State())
		case id == leaderID:
			m.Role = "leader"
		case voter:
			m.Role = "follower"
		default:
			m.Role = "nonvoter"
		}
		out.Members[i] = m
		if id == n.cfg.NodeID {
			out.Members[i].Reachable = true
			continue
		}
		wg.Add(1)
		go func(i int, httpAddr string) {
			defer wg.Done()
			out.Members[i].Reachable = n.probe(ctx, httpAddr)
		}(i, m.HTTPAddr)
	}
	wg.Wait()

	now := time.Now()
	out.Lease.Token = st.Lease.Token
	if st.Lease.HeldAt(now.UnixNano()) {
		h := st.Lease.Holder
		exp := fsm.Time(st.Lease.ExpiresAt)
		out.Lease.Holder, out.Lease.ExpiresAt = &h, &exp
	}

	c := &out.Cursor
	c.LastEventID = st.Cursor.LastEventID
	c.LastEventDate = timePtr(fsm.Time(st.Cursor.LastEventDate))
	c.OpenGaps = len(st.Gaps)
	c.Paused = st.Cursor.Paused
	if pf := n.progress.Load(); pf != nil {
		p := (*pf)()
		out.Databases = &StatusDatabases{Source: okOr(p.SourceError), Tracking: okOr(p.TrackingError)}
		if p.SourceHeadOK {
			head := max(p.SourceHeadID, st.Cursor.LastEventID)
			lag := head - st.Cursor.LastEventID
			c.SourceLastEventID = &head
			c.SourceLastEventDate = timePtr(p.SourceHeadDate)
			c.LagEvents = &lag
			secs := 0.0
			if lag > 0 && st.Cursor.LastEventDate != 0 && !p.SourceHeadDate.IsZero() {
				secs = max(p.SourceHeadDate.Sub(fsm.Time(st.Cursor.LastEventDate)).Seconds(), 0)
			}
			c.LagSeconds = &secs
		}
	}
	return out
}

func (n *Node) handleStatus(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	writeJSON(w, http.StatusOK, n.Status(ctx))
}

// probe reports whether the member at httpAddr answers its health check.
func (n *Node) probe(ctx context.Context, httpAddr string) bool {
	if httpAddr == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+httpAddr+"/v1/health", nil)
	if err != nil {
		return false
	}
	resp, err := n.httpClient.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func roleName(s raft.RaftState) string {
	switch s {
	case raft.Leader:
		return "leader"
	case raft.Candidate:
		return "candidate"
	case raft.Shutdown:
		return "shutdown"
	}
	return "follower"
}

func okOr(errText string) string {
	if errText == "" {
		return "ok"
	}
	return errText
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

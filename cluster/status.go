package cluster

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// StatusSource adds to the status document what this node knows beyond
// Raft: the cursor loop's view of the source and the tracking database.
// AddStatus is called with the document built from the local replica and
// must not block.
type StatusSource interface {
	AddStatus(st *api.Status)
}

// SetStatusSource installs what adds the databases' view to the status.
func (n *Node) SetStatusSource(s StatusSource) { n.statusSource.Store(&s) }

// ReadinessCheck says why this node should not get traffic beyond Raft's
// own reasons (GitLab's shared state: the site was promoted, or
// geo-logcursor runs), nil when it may. It must not block.
type ReadinessCheck func() error

// SetReadinessCheck installs a check that GET /v1/health/ready and the
// status's ready field consult after Raft's own.
func (n *Node) SetReadinessCheck(c ReadinessCheck) { n.readinessCheck.Store(&c) }

// Status builds the status document from this node's replica of the state,
// asking every other member whether it is reachable.
func (n *Node) Status(ctx context.Context) api.Status {
	st := n.fsm.State()
	leaderID, leaderAddr := n.Leader()
	out := api.Status{
		NodeID:       n.cfg.NodeID,
		Version:      n.cfg.Version,
		Commit:       n.cfg.Commit,
		Term:         n.raft.CurrentTerm(),
		CommitIndex:  n.raft.CommitIndex(),
		AppliedIndex: n.raft.AppliedIndex(),
		Stats:        st.Stats,
	}
	if leaderID != "" {
		out.Leader = &api.Leader{ID: leaderID, RaftAddr: leaderAddr, HTTPAddr: st.Members[leaderID].HTTPAddr}
	}

	var servers []raft.Server
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		servers = f.Configuration().Servers
	}
	out.Members = make([]api.Member, len(servers))
	var wg sync.WaitGroup
	for i, s := range servers {
		id := string(s.ID)
		voter := s.Suffrage == raft.Voter
		row := st.Members[id]
		m := api.Member{ID: id, RaftAddr: string(s.Address), HTTPAddr: row.HTTPAddr, Voter: voter, Version: row.Version, Protocol: row.Protocol}
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
		wg.Go(func() { out.Members[i].Reachable = n.probe(ctx, m.HTTPAddr) })
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
	c.SafeEventID = fsm.SafeEventID(st.Cursor.LastEventID, st.Gaps)
	c.Paused = st.Cursor.Paused
	if err := n.ready(ctx); err != nil {
		out.NotReady = err.Error()
	} else {
		out.Ready = true
	}
	if src := n.statusSource.Load(); src != nil {
		(*src).AddStatus(&out)
	}
	return out
}

func (n *Node) handleStatus(w http.ResponseWriter, r *http.Request) (any, error) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	return n.Status(ctx), nil
}

// probeTimeout bounds a member's health check for the status document.
const probeTimeout = 500 * time.Millisecond

// probe reports whether the member at httpAddr answers its health check.
func (n *Node) probe(ctx context.Context, httpAddr string) bool {
	if httpAddr == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	_, err := n.client.Health(ctx, httpAddr)
	return err == nil
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

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}

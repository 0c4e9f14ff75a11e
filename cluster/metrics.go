package cluster

import (
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// GET /v1/metrics (design section 12): the node's registry in Prometheus's
// text format. The node registers what it knows itself: its Raft state,
// the replicated state as its replica has it, what its status source
// knows of the databases (the same figures as GET /v1/status), and the
// refusals and revocations it answered as leader. The agent registers the
// cursor's collectors and Raft's own metrics in the same registry.

// nodeMetrics are the node's collectors and the handler that serves them.
type nodeMetrics struct {
	handler     http.Handler
	refusals    *prometheus.CounterVec
	revocations prometheus.Counter
	handoffs    prometheus.Counter
}

// newNodeMetrics registers n's collectors with reg, a registry of the
// node's own (nil: a new one), and returns them.
func newNodeMetrics(n *Node, reg *prometheus.Registry) (*nodeMetrics, error) {
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	leader := " Counted by the node that answered as leader, since its start."
	m := &nodeMetrics{
		handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geocursor_lease_refusals_total",
			Help: "Lease commands (acquire, renew, release, advance) the state machine refused, by op and by the " +
				"refusal's error code (lease_held, stale_token, lease_expired, paused, ...)." + leader,
		}, []string{"op", "code"}),
		revocations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geocursor_lease_revocations_total",
			Help: "Leases revoked because the leader could not reach their holder, or the holder left the cluster." + leader,
		}),
		handoffs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geocursor_leadership_handoffs_total",
			Help: "Times this node, leading while it held the lease, handed Raft leadership to a follower, since its start.",
		}),
	}
	// The refusals a healthy cluster sees, at 0 from the start.
	for _, op := range []fsm.Op{fsm.OpAcquire, fsm.OpRenew, fsm.OpAdvance} {
		for _, err := range []error{fsm.ErrLeaseHeld, fsm.ErrStaleToken, fsm.ErrLeaseExpired, fsm.ErrPaused} {
			m.refusals.WithLabelValues(string(op), api.Code(err))
		}
	}
	for _, c := range []prometheus.Collector{
		m.refusals, m.revocations, m.handoffs, newStateCollector(n),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// handleMetrics answers with the registry's text format: the reply is a
// handler, which wrap lets write the answer itself.
func (n *Node) handleMetrics(w http.ResponseWriter, r *http.Request) (any, error) {
	return n.metrics.handler, nil
}

// answered counts what the leader answered to cmd.
func (m *nodeMetrics) answered(cmd fsm.Command, res fsm.Result, err error) {
	if m == nil {
		return
	}
	switch cmd.Op {
	case fsm.OpAcquire, fsm.OpRenew, fsm.OpRelease, fsm.OpAdvance:
		if code := api.RefusalCode(res.Err); code != "" {
			m.refusals.WithLabelValues(string(cmd.Op), code).Inc()
		} else if code := api.RefusalCode(err); code != "" {
			m.refusals.WithLabelValues(string(cmd.Op), code).Inc() // not a member
		}
	case fsm.OpRevoke:
		if err == nil && res.Err == nil {
			m.revocations.Inc()
		}
	}
}

// stateCollector reads, at every scrape, the node's Raft state, its replica
// of the replicated state, and its status source: gauges that are true now,
// not counted events.
type stateCollector struct {
	n *Node

	raftLeader, raftTerm, raftCommit, raftApplied, raftContact *prometheus.Desc
	leaseHeld, leaseToken                                      *prometheus.Desc
	cursorLast, cursorPaused, openGaps                         *prometheus.Desc
	lagEvents, lagSeconds, databaseUp, deliveryBacklog         *prometheus.Desc
	// GitLab's gauges, under GitLab's names and with GitLab's meaning.
	geoCursorID, geoCursorTime, geoLastID, geoLastTime, geoMaxID *prometheus.Desc
}

func newStateCollector(n *Node) *stateCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	replica := " As this node's replica of the state has it, the same on every node."
	source := " As this node last read the source; absent where it has no source (a witness) or has not read it yet."
	// GitLab's gauges carry GitLab's labels, so that dashboards and alerts
	// that select the site match (name and url, both the site's name).
	var siteLabels prometheus.Labels
	if n.cfg.SiteName != "" {
		siteLabels = prometheus.Labels{"name": n.cfg.SiteName, "url": n.cfg.SiteName}
	}
	geo := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, siteLabels) }
	return &stateCollector{
		n:           n,
		raftLeader:  d("geocursor_raft_is_leader", "1 while this node is the Raft leader, else 0."),
		raftTerm:    d("geocursor_raft_term", "This node's current Raft term."),
		raftCommit:  d("geocursor_raft_commit_index", "The highest Raft log index this node knows to be committed."),
		raftApplied: d("geocursor_raft_applied_index", "The highest Raft log index this node has applied to its state machine."),
		raftContact: d("geocursor_raft_last_contact_seconds",
			"Seconds since this follower last heard from the leader; 0 on the leader; absent before the first contact."),
		leaseHeld: d("geocursor_lease_held", "1 while this node holds an unexpired lease, the one peer that processes events, else 0."+replica),
		leaseToken: d("geocursor_lease_token",
			"The fencing token of the latest lease grant: it grows by one with every grant."+replica),
		cursorLast: d("geocursor_cursor_last_event_id",
			"The replicated cursor: the highest event ID processed (open gaps may lie below it; see geo_cursor_last_event_id)."+replica),
		cursorPaused: d("geocursor_cursor_paused", "1 while processing is paused (geocursor cursor pause), else 0."+replica),
		openGaps:     d("geocursor_open_gaps", "Skipped event IDs below the cursor still waited for (transactions not yet committed)."+replica),
		lagEvents:    d("geocursor_lag_events", "Events between the replicated cursor and the source head."+source),
		lagSeconds: d("geocursor_lag_seconds",
			"Seconds between the created_at of the event at the replicated cursor and that of the source head."+source),
		databaseUp: d("geocursor_database_up",
			"1 when this node's last call to the database answered, else 0: source, tracking, sidekiq_redis, cache_redis "+
				"(the two Redis only with their delivery block).", "database"),
		deliveryBacklog: d("geocursor_delivery_backlog_jobs",
			"Jobs written to geo_jobs and not yet delivered to GitLab, as this node's deliverer last read it (an upper bound, "+
				"counted in job IDs); absent without a delivery block."),
		geoCursorID: geo("geo_cursor_last_event_id",
			"Last database ID of the event log processed by the secondary: the safe cursor, every event at or below it "+
				"processed or given up (what event_log_states holds)."+replica),
		geoCursorTime: geo("geo_cursor_last_event_timestamp",
			"Last UNIX timestamp of the event log processed by the secondary: the created_at of the event at "+
				"geo_cursor_last_event_id (while a gap is open, of the newest event at or below it, as this node last read "+
				"the source)."),
		geoLastID:   geo("geo_last_event_id", "Database ID of the latest event log entry on the primary."+source),
		geoLastTime: geo("geo_last_event_timestamp", "UNIX timestamp of the latest event log entry on the primary."+source),
		geoMaxID:    geo("geo_event_log_max_id", "Highest ID present in the Geo event log."+source),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.raftLeader, c.raftTerm, c.raftCommit, c.raftApplied, c.raftContact,
		c.leaseHeld, c.leaseToken, c.cursorLast, c.cursorPaused, c.openGaps, c.lagEvents, c.lagSeconds,
		c.databaseUp, c.deliveryBacklog, c.geoCursorID, c.geoCursorTime, c.geoLastID, c.geoLastTime, c.geoMaxID} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	leader := n.raft.State() == raft.Leader
	gauge(c.raftLeader, boolValue(leader))
	gauge(c.raftTerm, float64(n.raft.CurrentTerm()))
	gauge(c.raftCommit, float64(n.raft.CommitIndex()))
	gauge(c.raftApplied, float64(n.raft.AppliedIndex()))
	if leader {
		gauge(c.raftContact, 0)
	} else if last := n.raft.LastContact(); !last.IsZero() {
		gauge(c.raftContact, time.Since(last).Seconds())
	}

	st := n.fsm.State()
	gauge(c.leaseHeld, boolValue(st.Lease.HeldAt(time.Now().UnixNano()) && st.Lease.Holder == n.cfg.NodeID))
	gauge(c.leaseToken, float64(st.Lease.Token))
	gauge(c.cursorLast, float64(st.Cursor.LastEventID))
	gauge(c.cursorPaused, boolValue(st.Cursor.Paused))
	gauge(c.openGaps, float64(len(st.Gaps)))

	// What the databases say comes from the status source, as in the
	// status document, so that both always agree.
	doc := api.Status{Cursor: api.Cursor{
		LastEventID:   st.Cursor.LastEventID,
		LastEventDate: timePtr(fsm.Time(st.Cursor.LastEventDate)),
		OpenGaps:      len(st.Gaps),
		SafeEventID:   fsm.SafeEventID(st.Cursor.LastEventID, st.Gaps),
		Paused:        st.Cursor.Paused,
	}}
	if src := n.statusSource.Load(); src != nil {
		(*src).AddStatus(&doc)
	}
	cur := doc.Cursor
	gauge(c.geoCursorID, float64(cur.SafeEventID))
	if cur.SafeEventDate != nil {
		gauge(c.geoCursorTime, float64(cur.SafeEventDate.Unix()))
	}
	if cur.SourceLastEventID != nil {
		// The head is the newest row of geo_event_log, so its ID is the
		// log's highest: both of GitLab's gauges show it.
		gauge(c.geoLastID, float64(*cur.SourceLastEventID))
		gauge(c.geoMaxID, float64(*cur.SourceLastEventID))
	}
	if cur.SourceLastEventDate != nil {
		gauge(c.geoLastTime, float64(cur.SourceLastEventDate.Unix()))
	}
	if cur.LagEvents != nil {
		gauge(c.lagEvents, float64(*cur.LagEvents))
	}
	if cur.LagSeconds != nil {
		gauge(c.lagSeconds, *cur.LagSeconds)
	}
	if db := doc.Databases; db != nil {
		gauge(c.databaseUp, boolValue(db.Source == api.DatabaseOK), "source")
		gauge(c.databaseUp, boolValue(db.Tracking == api.DatabaseOK), "tracking")
	}
	if dl := doc.Delivery; dl != nil {
		gauge(c.deliveryBacklog, float64(dl.Backlog))
		for name, state := range map[string]string{"sidekiq_redis": dl.SidekiqRedis, "cache_redis": dl.CacheRedis} {
			if state != api.DeliveryNotConfigured {
				gauge(c.databaseUp, boolValue(state == api.DatabaseOK), name)
			}
		}
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

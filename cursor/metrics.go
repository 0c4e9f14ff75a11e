package cursor

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the cursor's Prometheus collectors (design section 12): what
// this process did while it held the lease (package delivery has its
// own). Every counter is this process's own, counted on the peer that
// did the work, so a counter moves on whichever node holds the lease and
// starts from zero when the agent restarts; sum them over the nodes.
//
// A nil *Metrics records nothing, so a loop or deliverer built without one
// (the tests) works unchanged.
type Metrics struct {
	events      *prometheus.CounterVec
	deadLetters *prometheus.CounterVec
	batches     prometheus.Counter
	gapsDropped prometheus.Counter
	pruned      prometheus.Counter
	grants      prometheus.Counter
	failovers   prometheus.Counter

	batchSeconds   prometheus.Histogram
	fetchSeconds   prometheus.Histogram
	commitSeconds  prometheus.Histogram
	advanceSeconds prometheus.Histogram
}

// durationBuckets span 1 ms to 10 s: a healthy batch step takes a few
// milliseconds, a step waiting out a database timeout or a Raft election
// seconds.
var durationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// What an event became, the values of geocursor_events_processed_total's
// kind: the job kinds of geo_jobs, with the names of other geo events
// folded into "other" so that a primary cannot grow the label's values,
// and "dead_letter" for an event given up.
const (
	eventKindOther      = "other"
	eventKindDeadLetter = "dead_letter"
)

var eventKinds = []string{KindSync, KindDelete, KindCacheInvalidation, eventKindOther, eventKindDeadLetter}

// Why an event became a dead letter, the values of
// geocursor_dead_letters_total's reason: a bounded set, each one of the
// rules of classifyOne.
const (
	reasonNoReference      = "no_reference"       // the log row points at neither table
	reasonBothReferences   = "both_references"    // the log row points at both
	reasonMissingRow       = "missing_row"        // the row it points at does not exist
	reasonNoEventName      = "no_event_name"      // geo_events.event_name is empty
	reasonBadPayload       = "bad_payload"        // the payload is not a JSON object
	reasonNoModelRecordID  = "no_model_record_id" // created/updated/deleted without an integer model_record_id
	reasonNoReplicableName = "no_replicable_name" // created/updated/deleted with an empty replicable_name
	reasonOther            = "other"
)

var deadLetterReasons = []string{reasonNoReference, reasonBothReferences, reasonMissingRow, reasonNoEventName,
	reasonBadPayload, reasonNoModelRecordID, reasonNoReplicableName, reasonOther}

// NewMetrics creates the cursor's collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	holder := " Counted by the peer that processed the batch (the lease holder), since its start."
	histogram := func(name, help string) prometheus.Histogram {
		return prometheus.NewHistogram(prometheus.HistogramOpts{Name: name, Help: help + holder, Buckets: durationBuckets})
	}
	m := &Metrics{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geocursor_events_processed_total",
			Help: "Events of the source's event log committed to the tracking database, by what they became: sync, delete, " +
				"cache_invalidation, other (a geo event of another name) or dead_letter." + holder,
		}, []string{"kind"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geocursor_dead_letters_total",
			Help: "Events written to geo_dead_letters instead of geo_jobs, by why: no_reference, both_references, missing_row, " +
				"no_event_name, bad_payload, no_model_record_id, no_replicable_name, other." + holder,
		}, []string{"reason"}),
		batches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geocursor_batches_total",
			Help: "Batches with events committed to the tracking database." + holder,
		}),
		gapsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geocursor_gaps_dropped_total",
			Help: "Skipped event IDs given up on: older than source.gap_timeout (most likely rolled back) or beyond the cap " +
				"on open gaps, and not below the oldest event the primary keeps (those count as pruned)." + holder,
		}),
		pruned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geocursor_events_pruned_unseen_total",
			Help: "Event IDs the primary pruned from its log before this site processed them: below the oldest event it " +
				"keeps, and given up after source.gap_timeout, or at once when more than the gap set holds." + holder,
		}),
		grants: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geocursor_lease_grants_total",
			Help: "Leases granted to this node: each grant starts a run of batches under a new fencing token. " +
				"Counted by the node that was granted, since its start.",
		}),
		failovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "geocursor_failovers_total",
			Help: "Leases this node took over from another peer, the last holder (which was revoked, failed, or let its lease " +
				"expire). Counted by the node that took over, since its start.",
		}),
		batchSeconds: histogram("geocursor_batch_duration_seconds",
			"Time from the start of a batch's read to its commit in the tracking database, the wait for the batch before it included."),
		fetchSeconds: histogram("geocursor_fetch_duration_seconds",
			"Time of one read of a batch from the source database, failed reads included."),
		commitSeconds: histogram("geocursor_tracking_commit_duration_seconds",
			"Time of one batch's commit in the tracking database: fence check, registry writes and COMMIT."),
		advanceSeconds: histogram("geocursor_raft_advance_duration_seconds",
			"Time of one release-and-advance through Raft, from sending it to the leader's answer."),
	}
	// Every label value exists from the start at 0, so that a rate over
	// it is defined before the first event of its kind.
	for _, k := range eventKinds {
		m.events.WithLabelValues(k)
	}
	for _, r := range deadLetterReasons {
		m.deadLetters.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.events, m.deadLetters, m.batches, m.gapsDropped, m.pruned, m.grants, m.failovers,
		m.batchSeconds, m.fetchSeconds, m.commitSeconds, m.advanceSeconds} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// effectCounts counts a batch's events by what they became.
type effectCounts struct {
	kinds   map[string]int
	reasons map[string]int
}

// countEffects counts eff's jobs by kind and its dead letters by reason.
func countEffects(eff effects) effectCounts {
	c := effectCounts{kinds: make(map[string]int, 4)}
	for _, j := range eff.Jobs {
		c.kinds[jobKind(j.Kind)]++
	}
	if len(eff.DeadLetters) > 0 {
		c.kinds[eventKindDeadLetter] = len(eff.DeadLetters)
		c.reasons = make(map[string]int, 2)
		for _, d := range eff.DeadLetters {
			c.reasons[deadLetterReason(d.Reason)]++
		}
	}
	return c
}

// countedBatch is a staged batch that can say what its events became;
// *Staged can, the tests' fakes need not.
type countedBatch interface{ effectCounts() effectCounts }

func (s *Staged) effectCounts() effectCounts { return countEffects(s.eff) }

// jobKind is the kind label of a job of kind k.
func jobKind(k string) string {
	switch k {
	case KindSync, KindDelete, KindCacheInvalidation:
		return k
	}
	return eventKindOther
}

// deadLetterReason is the reason label of a dead letter's reason, as
// classifyOne words it (effects_test.go and metrics_test.go pin the
// wording down).
func deadLetterReason(reason string) string {
	switch {
	case strings.Contains(reason, "has no geo_event_id or cache_invalidation_event_id"):
		return reasonNoReference
	case strings.Contains(reason, "has both a geo_event_id and a cache_invalidation_event_id"):
		return reasonBothReferences
	case strings.HasSuffix(reason, "does not exist"):
		return reasonMissingRow
	case strings.HasSuffix(reason, "has no event_name"):
		return reasonNoEventName
	case strings.HasSuffix(reason, "payload is not a JSON object"), strings.HasPrefix(reason, "encode cache invalidation payload"):
		return reasonBadPayload
	case strings.HasSuffix(reason, "payload has no integer model_record_id"):
		return reasonNoModelRecordID
	case strings.HasSuffix(reason, "replicable_name is empty"):
		return reasonNoReplicableName
	}
	return reasonOther
}

// batchCommitted records a batch committed in the tracking database: its
// events, what it gave up, and how long it and its commit (begun at
// commitStart) took.
func (m *Metrics) batchCommitted(p *pendingBatch, commitStart time.Time) {
	if m == nil {
		return
	}
	now := time.Now()
	m.commitSeconds.Observe(now.Sub(commitStart).Seconds())
	if len(p.events) > 0 {
		m.batches.Inc()
		m.batchSeconds.Observe(now.Sub(p.batchStart).Seconds())
	}
	if cb, ok := p.staged.(countedBatch); ok {
		c := cb.effectCounts()
		for k, n := range c.kinds {
			m.events.WithLabelValues(k).Add(float64(n))
		}
		for r, n := range c.reasons {
			m.deadLetters.WithLabelValues(r).Add(float64(n))
		}
	}
	m.gapsDropped.Add(float64(p.dropped))
	m.pruned.Add(float64(p.prunedUnseen))
}

// granted records a lease granted to this node; takeover says the last
// holder was another peer.
func (m *Metrics) granted(takeover bool) {
	if m == nil {
		return
	}
	m.grants.Inc()
	if takeover {
		m.failovers.Inc()
	}
}

// fetchStarted times one read of a batch from the source: call its result
// when the read is done.
func (m *Metrics) fetchStarted() func() {
	if m == nil {
		return func() {}
	}
	start := time.Now()
	return func() { m.fetchSeconds.Observe(time.Since(start).Seconds()) }
}

// advanced records the time of a release-and-advance that Raft answered.
func (m *Metrics) advanced(a *progressCall) {
	if m == nil || a.err != nil {
		return
	}
	m.advanceSeconds.Observe(a.applied.Sub(a.sent).Seconds())
}

package cluster

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// The history GET /v1/recent serves, for the status page: one sample a
// second for ten minutes, the last failovers, the newest dead letters.
const (
	sampleEvery     = time.Second
	recentSamples   = 600
	recentFailovers = 20
	// freshHandover is how recent a handover must be for the recorder to
	// ask the old holder whether it still answers: one replayed from the
	// Raft log at start is long settled, and its holder's state now says
	// nothing about then.
	freshHandover = 2 * time.Second
	// deadLetterLimit is how many dead letters are served, and
	// deadLetterEvery how often they are read at most.
	deadLetterLimit = 20
	deadLetterEvery = time.Second
	deadLetterWait  = time.Second
)

// DeadLetterSource reads the newest rows of this node's geo_dead_letters,
// newest first, for GET /v1/recent. A node without a tracking database (a
// witness) has none. RecentDeadLetters is called at most once a second,
// from a request, and must honour ctx.
type DeadLetterSource interface {
	RecentDeadLetters(ctx context.Context, limit int) ([]api.DeadLetter, error)
}

// SetDeadLetterSource installs what reads the dead letters.
func (n *Node) SetDeadLetterSource(s DeadLetterSource) { n.recent.deadLetterSource.Store(&s) }

// recorder keeps the node's recent history in memory: a ring of samples,
// the last failovers and the last reading of the dead letters. Its
// goroutine (runRecent) is the only writer of samples and failovers.
type recorder struct {
	mu        sync.Mutex
	samples   []api.Sample // a ring: samples[start] is the oldest once full
	start     int
	failovers []api.Failover // oldest first

	deadLetterSource atomic.Pointer[DeadLetterSource]
	// deadLetters is the last reading, tried at lastTry; dlMu is held
	// while reading, so that concurrent requests ask the database once.
	dlMu        sync.Mutex
	deadLetters api.DeadLetters
	lastTry     time.Time
}

// add keeps s, dropping the oldest sample once the ring is full.
func (r *recorder) add(s api.Sample) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.samples) < recentSamples {
		r.samples = append(r.samples, s)
		return
	}
	r.samples[r.start] = s
	r.start = (r.start + 1) % len(r.samples)
}

// since returns the samples taken after t (all of them for the zero time)
// and the failovers, oldest first.
func (r *recorder) since(t time.Time) ([]api.Sample, []api.Failover) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]api.Sample, 0, len(r.samples))
	for _, s := range append(r.samples[r.start:len(r.samples):len(r.samples)], r.samples[:r.start]...) {
		if s.At.After(t) {
			out = append(out, s)
		}
	}
	return out, slices.Clone(r.failovers)
}

// recordFailover keeps f, replacing the record of the same lost grant (a
// revoke is recorded when it happens, and again once a peer took over).
func (r *recorder) recordFailover(f api.Failover) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, old := range r.failovers {
		if old.From == f.From && old.FromToken == f.FromToken {
			r.failovers[i] = f
			return
		}
	}
	r.failovers = append(r.failovers, f)
	if len(r.failovers) > recentFailovers {
		r.failovers = slices.Delete(r.failovers, 0, len(r.failovers)-recentFailovers)
	}
}

// startRecent starts the recorder's goroutine, which n.stop ends.
func (n *Node) startRecent() {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.runRecent()
	}()
}

// runRecent samples the state every second and follows every change of
// the lease for failovers.
func (n *Node) runRecent() {
	var probes sync.WaitGroup
	defer probes.Wait()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()

	var tracker leaseTracker
	ls, changed := n.fsm.WatchLease()
	tracker.observe(ls)
	n.recent.add(n.sample(time.Now()))
	for {
		select {
		case <-n.stop:
			return
		case now := <-tick.C:
			n.recent.add(n.sample(now))
		case <-changed:
			ls, changed = n.fsm.WatchLease()
			failovers, check := tracker.observe(ls)
			for _, f := range failovers {
				if time.Since(f.LostAt) < sampleEvery*recentSamples {
					n.recent.recordFailover(f)
				}
			}
			if check != nil && time.Since(*check.TakenAt) < freshHandover {
				f := *check
				probes.Go(func() { n.checkGone(ctx, f) })
			}
		}
	}
}

// checkGone records f, a handover from a holder that had released the
// lease cleanly, as a failover if that holder no longer answers.
func (n *Node) checkGone(ctx context.Context, f api.Failover) {
	if f.From == n.cfg.NodeID {
		return // this node answers
	}
	m, ok := n.fsm.Member(f.From)
	if ok && n.probe(ctx, m.HTTPAddr) {
		return
	}
	if ctx.Err() == nil {
		n.recent.recordFailover(f)
	}
}

// sample is the state as this node sees it at now.
func (n *Node) sample(now time.Time) api.Sample {
	st := n.fsm.State()
	s := api.Sample{
		At:              now.UTC(),
		Token:           st.Lease.Token,
		LastEventID:     st.Cursor.LastEventID,
		SafeEventID:     fsm.SafeEventID(st.Cursor.LastEventID, st.Gaps),
		EventsProcessed: st.Stats.EventsProcessed,
		DeadLetters:     st.Stats.DeadLetters,
		OpenGaps:        len(st.Gaps),
		Paused:          st.Cursor.Paused,
	}
	if id, _ := n.Leader(); id != "" {
		s.Leader = &id
	}
	ls := fsm.LeaseState{Lease: st.Lease, LastHolder: st.LastHolder, RevokedFrom: st.RevokedFrom, Clock: st.Clock}
	if h, held := activeHolder(ls, now.UnixNano()); h != "" {
		s.Holder, s.Held = &h, held
	}
	// The lag is the status document's: the status sources measure it
	// from the replicated cursor.
	if src := n.statusSource.Load(); src != nil {
		doc := api.Status{Cursor: api.Cursor{LastEventID: st.Cursor.LastEventID, LastEventDate: timePtr(fsm.Time(st.Cursor.LastEventDate))}}
		(*src).AddStatus(&doc)
		s.LagEvents, s.LagSeconds = doc.Cursor.LagEvents, doc.Cursor.LagSeconds
		if doc.Delivery != nil {
			b := doc.Delivery.Backlog
			s.DeliveryBacklog = &b
		}
	}
	return s
}

// readDeadLetters returns the last reading of the dead letters, reading
// them again when it is older than deadLetterEvery; nil on a node without
// a tracking database.
func (n *Node) readDeadLetters(ctx context.Context) *api.DeadLetters {
	src := n.recent.deadLetterSource.Load()
	if src == nil {
		return nil
	}
	r := &n.recent
	r.dlMu.Lock()
	defer r.dlMu.Unlock()
	if time.Since(r.lastTry) >= deadLetterEvery {
		r.lastTry = time.Now()
		qctx, cancel := context.WithTimeout(ctx, deadLetterWait)
		rows, err := (*src).RecentDeadLetters(qctx, deadLetterLimit)
		cancel()
		if err != nil {
			r.deadLetters.Error = err.Error()
		} else {
			at := time.Now().UTC()
			r.deadLetters = api.DeadLetters{Recent: rows, ReadAt: &at}
		}
	}
	out := r.deadLetters
	out.Recent = slices.Clone(out.Recent)
	if out.Recent == nil {
		out.Recent = []api.DeadLetter{}
	}
	return &out
}

// handleRecent serves GET /v1/recent[?since=RFC3339].
func (n *Node) handleRecent(w http.ResponseWriter, r *http.Request) (any, error) {
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return nil, fmt.Errorf("%w: since must be an RFC 3339 time: %v", api.ErrBadRequest, err)
		}
		since = t
	}
	samples, failovers := n.recent.since(since)
	if failovers == nil {
		failovers = []api.Failover{}
	}
	return api.Recent{
		NodeID:          n.cfg.NodeID,
		IntervalSeconds: sampleEvery.Seconds(),
		Current:         n.sample(time.Now()),
		Samples:         samples,
		Failovers:       failovers,
		DeadLetters:     n.readDeadLetters(r.Context()),
	}, nil
}

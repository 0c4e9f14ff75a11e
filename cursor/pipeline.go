package cursor

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/geocursor/geocursor/fsm"
)

// The pipeline's pieces: a batch between its fetch and its advance, and
// the calls that run in the background while the batch before commits
// (fetching the next batch, staging it; recording progress in Raft is in
// progress.go). Each
// background call ends with its context at the latest and delivers one
// result on a buffered channel, so it never blocks on an owner that has
// stopped listening.

// pendingBatch is a batch between its fetch and its advance.
type pendingBatch struct {
	start   Position
	events  []Event
	next    Position
	dropped int
	// prunedUnseen counts the IDs the batch moves past because the primary
	// pruned them unseen.
	prunedUnseen int64
	keep         bool
	batchStart   time.Time
	fetched      time.Time
	// staged is nil for a batch with nothing to write: an adopted position
	// recorded in Raft with no new event.
	staged StagedBatch
}

// log records where a committed batch's time went: reading it, staging
// and committing it (the wait for the batch before it included).
func (p *pendingBatch) log(logger hclog.Logger, token uint64, res CommitResult, committed time.Time) {
	if len(p.events) == 0 {
		return
	}
	logger.Debug(msgBatchCommitted, "token", token, "first_id", p.events[0].ID, "last_id", p.events[len(p.events)-1].ID,
		"count", len(p.events), "dead_letters", res.DeadLetters, "open_gaps", len(p.next.Gaps),
		"duration_ms", ms(committed.Sub(p.batchStart)), "fetch_ms", ms(p.fetched.Sub(p.batchStart)),
		"commit_ms", ms(committed.Sub(p.fetched)))
}

type fetchResult struct {
	events []Event
	err    error
}

// fetch reads the batch after pos.
func (l *Loop) fetch(ctx context.Context, pos Position) ([]Event, error) {
	qctx, cancel := l.dbContext(ctx)
	defer cancel()
	defer l.cfg.Metrics.fetchStarted()()
	return l.source.Fetch(qctx, pos.LastEventID, l.gapIDs(ctx, pos, time.Now()), l.cfg.BatchSize)
}

// A batch looks for its open gaps in the source along with the events
// after the cursor: a primary-key probe each. Up to manyGaps open gaps
// that is cheap and every batch does it, so that an event that was slow to
// commit is processed at the next batch. Beyond (a burst of rollbacks, or
// a gap_timeout of hours), a probe of 10,000 gaps in every batch's fetch
// took the drain to 0.54 of the rate without, and one every 250 ms still
// to 0.66: the batch waited for it. So a large set is probed apart from
// the batches by a query that only says which IDs are visible
// (index-only); a batch then fetches just those. A probe is due every
// manyGapsProbeInterval, or probeCostFactor times as long as the last one
// took, whichever is longer: probing 10,000 gaps takes 10-40 ms of the
// database's time on a busy machine, and so it never takes more than a
// twentieth of it. What a late event waits longest is that interval and
// one batch.
const (
	manyGaps              = 1000
	manyGapsProbeInterval = 250 * time.Millisecond
	probeCostFactor       = 20
)

// gapProbe probes a large gap set in the background, one probe at a time,
// and hands the IDs it found visible to the next batch. A grant fetches
// from a goroutine of its own, so it is locked.
type gapProbe struct {
	mu      sync.Mutex
	last    time.Time
	running bool
	// took is how long the last probe took.
	took time.Duration
	// found are visible gap IDs no batch has fetched yet.
	found []int64
}

// gapIDs returns the gap IDs the batch after pos fetches at now: all of them
// for a small set; for a large one, those a probe found visible (and still
// open in pos), starting the next probe when it is due.
func (l *Loop) gapIDs(ctx context.Context, pos Position, now time.Time) []int64 {
	if len(pos.Gaps) <= manyGaps {
		return pos.GapIDs()
	}
	p := &l.batchProbe
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running && now.Sub(p.last) >= max(manyGapsProbeInterval, probeCostFactor*p.took) {
		p.running, p.last = true, now
		ids := pos.GapIDs()
		go l.probeGaps(ctx, ids)
	}
	var open []int64
	for _, id := range p.found {
		if fsm.HasGap(pos.Gaps, id) {
			open = append(open, id)
		}
	}
	p.found = nil
	return open
}

// probeGaps looks for ids in the source and keeps those it finds for the
// next batch. A failed probe finds nothing: the next one is due soon, and
// the batch's own fetch reports a source that is down.
func (l *Loop) probeGaps(ctx context.Context, ids []int64) {
	qctx, cancel := l.dbContext(ctx)
	began := time.Now()
	visible, err := l.source.Visible(qctx, ids)
	took := time.Since(began)
	cancel()
	p := &l.batchProbe
	p.mu.Lock()
	defer p.mu.Unlock()
	p.running, p.took = false, took
	if err != nil {
		if ctx.Err() == nil {
			l.logger.Debug("probe of the open gaps failed", "gaps", len(ids), "error", err)
		}
		return
	}
	p.found = append(p.found, visible...)
}

// fetchAsync reads the batch after pos in the background.
func (l *Loop) fetchAsync(ctx context.Context, pos Position) <-chan fetchResult {
	ch := make(chan fetchResult, 1)
	go func() {
		events, err := l.fetch(ctx, pos)
		ch <- fetchResult{events, err}
	}()
	return ch
}

// fetched is a channel that delivers r, for a prefetch taken early.
func fetched(r fetchResult) <-chan fetchResult {
	ch := make(chan fetchResult, 1)
	ch <- r
	return ch
}

type stageResult struct {
	staged StagedBatch
	err    error
}

// stageAsync stages b in the background.
func (l *Loop) stageAsync(ctx context.Context, b Batch) <-chan stageResult {
	ch := make(chan stageResult, 1)
	go func() {
		qctx, cancel := l.dbContext(ctx)
		defer cancel()
		staged, err := l.tracking.Stage(qctx, b)
		ch <- stageResult{staged, err}
	}()
	return ch
}

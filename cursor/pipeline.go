package cursor

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
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
	return l.source.Fetch(qctx, pos.LastEventID, l.batchProbe.ids(pos, time.Now()), l.cfg.BatchSize)
}

// A batch looks for its open gaps in the source along with the events
// after the cursor: a primary-key probe each. Up to manyGaps open gaps
// that is cheap and every batch does it, so that an event that was slow to
// commit is processed at the next batch. Beyond (a burst of rollbacks, or
// a gap_timeout of hours), probing them all cost a batch 15 ms with
// 10,000 open gaps, half the drain rate: the set is then probed at most
// every manyGapsProbeInterval, which is what such an event waits longest.
const (
	manyGaps              = 1000
	manyGapsProbeInterval = 250 * time.Millisecond
)

// gapProbe decides which batches probe a large gap set. A grant fetches
// from a goroutine of its own, so it is locked.
type gapProbe struct {
	mu   sync.Mutex
	last time.Time
}

// ids returns the gap IDs the batch after pos probes at now.
func (p *gapProbe) ids(pos Position, now time.Time) []int64 {
	if len(pos.Gaps) <= manyGaps {
		return pos.GapIDs()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if now.Sub(p.last) < manyGapsProbeInterval {
		return nil
	}
	p.last = now
	return pos.GapIDs()
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

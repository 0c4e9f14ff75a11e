// Package loadgen writes GitLab Geo events into a source database the way
// GitLab's primary does, for tests, benchmarks and demos of geocursor.
//
// It owns the source schema used in tests (SourceSchema) and the writers
// that fill it. It is the only part of geocursor that writes to a source
// database; geocursor itself only reads it.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Config controls Run. The zero value (with Total or a cancellable context)
// is valid: one writer, as fast as possible, only well-formed events.
type Config struct {
	// Writers is the number of concurrent writer goroutines, each running
	// its own transactions, so commit order differs from ID order.
	// 0 means 1. The pool needs at least this many connections for the
	// writers to really run in parallel.
	Writers int
	// Rate is the target number of transactions per second across all
	// writers (rolled-back ones included); 0 means as fast as possible.
	Rate float64
	// Total stops Run after this many committed events; 0 means run until
	// the context is done.
	Total int
	// RollbackFraction of transactions insert their rows and then roll
	// back, leaving permanent gaps in the geo_event_log IDs.
	RollbackFraction float64
	// HoldFraction of transactions stay open for HoldFor after inserting
	// their rows, so that higher IDs commit before them (transient gaps).
	HoldFraction float64
	HoldFor      time.Duration
	// CacheInvalidationFraction of events are cache invalidations instead
	// of geo_events.
	CacheInvalidationFraction float64
	// BadFraction of events are deliberately malformed: half are "updated"
	// events whose payload lacks model_record_id, half are geo_event_log
	// rows that reference nothing.
	BadFraction float64
	// Records is the size of the model_record_id key space, kept small so
	// that the same record gets several events; 0 means DefaultRecords.
	Records int
	// EventsPerTx is how many events each transaction writes (0 means 1),
	// as a busy primary commits several in one; it needs Total == 0.
	EventsPerTx int
	// Seed makes the sequence of events each writer produces repeatable
	// (the interleaving of writers is not).
	Seed int64
	// OnCommit, if set, is called after each COMMIT with the geo_event_log
	// IDs that the transaction committed and the time COMMIT returned. It
	// is called from several goroutines at once and should be quick.
	OnCommit func(ids []int64, committedAt time.Time)
}

// DefaultRecords is the model_record_id key space when Config.Records is 0.
const DefaultRecords = 1000

// commitTimeout bounds a COMMIT. A commit is not cancelled with the run's
// context: an interrupted COMMIT leaves it unknown whether the event
// exists, and Stats and OnCommit must be exact.
const commitTimeout = 30 * time.Second

func (c Config) withDefaults() Config {
	if c.Writers == 0 {
		c.Writers = 1
	}
	if c.Records == 0 {
		c.Records = DefaultRecords
	}
	if c.EventsPerTx == 0 {
		c.EventsPerTx = 1
	}
	return c
}

// Validate reports the first setting that is out of range.
func (c Config) Validate() error {
	switch {
	case c.Writers < 0:
		return fmt.Errorf("writers must be at least 1, got %d", c.Writers)
	case c.Rate < 0:
		return fmt.Errorf("rate must be 0 (unlimited) or positive, got %v", c.Rate)
	case c.Total < 0:
		return fmt.Errorf("total must be 0 (until stopped) or positive, got %d", c.Total)
	case c.HoldFor < 0:
		return fmt.Errorf("hold-for must not be negative, got %v", c.HoldFor)
	case c.Records < 0:
		return fmt.Errorf("records must be positive, got %d", c.Records)
	case c.EventsPerTx < 0 || c.EventsPerTx > 1000:
		return fmt.Errorf("events per transaction must be 1 to 1000, got %d", c.EventsPerTx)
	case c.EventsPerTx > 1 && c.Total != 0:
		return fmt.Errorf("events per transaction above 1 needs total 0 (run until stopped)")
	}
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"rollback fraction", c.RollbackFraction},
		{"hold fraction", c.HoldFraction},
		{"cache invalidation fraction", c.CacheInvalidationFraction},
		{"bad fraction", c.BadFraction},
	} {
		if !(f.v >= 0 && f.v <= 1) {
			return fmt.Errorf("%s must be between 0 and 1, got %v", f.name, f.v)
		}
	}
	return nil
}

// Stats counts what Run did. Committed counts are exact: every event
// counted as committed exists in the source, and no other does.
type Stats struct {
	// Committed is the number of geo_event_log rows committed.
	Committed int64 `json:"committed"`
	// RolledBack is the number of transactions deliberately rolled back.
	RolledBack int64 `json:"rolled_back"`
	// Aborted is the number of transactions abandoned because the context
	// ended before they committed.
	Aborted int64 `json:"aborted"`
	// Held is the number of committed transactions that were held open.
	Held int64 `json:"held"`
	// CacheInvalidations is the number of committed cache invalidations.
	CacheInvalidations int64 `json:"cache_invalidations"`
	// Bad is BadPayload + BadNoReference, all committed.
	Bad            int64 `json:"bad"`
	BadPayload     int64 `json:"bad_payload"`
	BadNoReference int64 `json:"bad_no_reference"`
	// FirstID and LastID are the lowest and highest committed
	// geo_event_log IDs, 0 if none.
	FirstID int64 `json:"first_id"`
	LastID  int64 `json:"last_id"`
	// Elapsed is the wall time Run took.
	Elapsed time.Duration `json:"-"`
}

func (s *Stats) add(o Stats) {
	s.Committed += o.Committed
	s.RolledBack += o.RolledBack
	s.Aborted += o.Aborted
	s.Held += o.Held
	s.CacheInvalidations += o.CacheInvalidations
	s.Bad += o.Bad
	s.BadPayload += o.BadPayload
	s.BadNoReference += o.BadNoReference
	if o.FirstID != 0 && (s.FirstID == 0 || o.FirstID < s.FirstID) {
		s.FirstID = o.FirstID
	}
	if o.LastID > s.LastID {
		s.LastID = o.LastID
	}
}

func (s *Stats) addID(id int64) {
	if s.FirstID == 0 || id < s.FirstID {
		s.FirstID = id
	}
	if id > s.LastID {
		s.LastID = id
	}
}

// Run writes events until cfg.Total events have committed or ctx is done.
// The schema must exist (CreateSourceSchema).
//
// It returns nil when it reached Total, or when ctx ended and Total is 0.
// If ctx ends before Total is reached it returns ctx's error; if a write
// fails it stops all writers and returns that error. Stats are valid in
// every case.
func Run(ctx context.Context, pool *pgxpool.Pool, cfg Config) (Stats, error) {
	if err := cfg.Validate(); err != nil {
		return Stats{}, fmt.Errorf("loadgen: %w", err)
	}
	cfg = cfg.withDefaults()
	start := time.Now()

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	r := &run{pool: pool, cfg: cfg}
	if cfg.Rate > 0 {
		r.pace = &pacer{interval: time.Duration(float64(time.Second) / cfg.Rate)}
	}

	results := make([]Stats, cfg.Writers)
	errs := make([]error, cfg.Writers)
	var wg sync.WaitGroup
	for i := range cfg.Writers {
		w := &writer{
			run: r,
			// Distinct, repeatable streams per writer.
			rng: rand.New(rand.NewPCG(uint64(cfg.Seed), uint64(i))),
		}
		wg.Go(func() {
			errs[i] = w.loop(ctx)
			results[i] = w.stats
			if errs[i] != nil {
				cancel(errs[i])
			}
		})
	}
	wg.Wait()

	var total Stats
	for _, s := range results {
		total.add(s)
	}
	total.Elapsed = time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return total, err
	}
	if cfg.Total > 0 && total.Committed < int64(cfg.Total) {
		return total, fmt.Errorf("loadgen: stopped after %d of %d events: %w",
			total.Committed, cfg.Total, context.Cause(ctx))
	}
	return total, nil
}

// run is the state shared by the writers of one Run.
type run struct {
	pool *pgxpool.Pool
	cfg  Config
	pace *pacer // nil: unlimited
	// claimed counts commits started or done, so that concurrent writers
	// together commit exactly cfg.Total events.
	claimed atomic.Int64
}

// claim reserves one commit; false means Total is reached.
func (r *run) claim() bool {
	if r.cfg.Total == 0 {
		return true
	}
	if r.claimed.Add(1) > int64(r.cfg.Total) {
		r.claimed.Add(-1)
		return false
	}
	return true
}

func (r *run) unclaim() {
	if r.cfg.Total != 0 {
		r.claimed.Add(-1)
	}
}

func (r *run) done() bool {
	return r.cfg.Total != 0 && r.claimed.Load() >= int64(r.cfg.Total)
}

// eventKind is what a transaction inserts.
type eventKind int

const (
	kindGeoEvent          eventKind = iota // geo_events row + log row
	kindCacheInvalidation                  // geo_cache_invalidation_events row + log row
	kindBadPayload                         // "updated" geo_events row without model_record_id + log row
	kindBadNoReference                     // log row that references nothing
)

type event struct {
	kind       eventKind
	replicable string
	name       string
	payload    map[string]any
	key        string
}

type writer struct {
	*run
	rng   *rand.Rand
	stats Stats
}

// loop runs transactions until the run is done, ctx ends (nil) or a write
// fails (the error).
func (w *writer) loop(ctx context.Context) error {
	for !w.done() {
		if err := w.pace.wait(ctx); err != nil {
			return nil
		}
		// Draw everything up front so that the stream of events depends
		// only on the seed, not on how a transaction ended.
		rollback := w.rng.Float64() < w.cfg.RollbackFraction
		hold := w.rng.Float64() < w.cfg.HoldFraction
		evs := make([]event, w.cfg.EventsPerTx)
		for i := range evs {
			evs[i] = w.nextEvent()
		}
		if !rollback && !w.claim() {
			return nil
		}
		err := w.write(ctx, evs, rollback, hold)
		if err == nil {
			continue
		}
		if !rollback {
			w.unclaim()
		}
		if ctx.Err() != nil {
			w.stats.Aborted++
			return nil
		}
		return err
	}
	return nil
}

// write runs one transaction as GitLab does: for each event, the
// referenced row first, then the geo_event_log row pointing at it.
func (w *writer) write(ctx context.Context, evs []event, rollback, hold bool) error {
	tx, err := w.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin event transaction: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			// The context may be gone; the rollback must still happen so
			// the connection goes back to the pool clean.
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()

	logIDs := make([]int64, 0, len(evs))
	for _, ev := range evs {
		logID, err := insertEvent(ctx, tx, ev)
		if err != nil {
			return err
		}
		logIDs = append(logIDs, logID)
	}
	last := logIDs[len(logIDs)-1]

	if hold && w.cfg.HoldFor > 0 {
		if err := sleep(ctx, w.cfg.HoldFor); err != nil {
			return fmt.Errorf("hold transaction for geo_event_log %d: %w", last, err)
		}
	}
	if rollback {
		if err := tx.Rollback(ctx); err != nil {
			return fmt.Errorf("roll back geo_event_log %d: %w", last, err)
		}
		committed = true // nothing left for the deferred rollback to do
		w.stats.RolledBack++
		return nil
	}

	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), commitTimeout)
	defer cancel()
	if err := tx.Commit(cctx); err != nil {
		return fmt.Errorf("commit geo_event_log %d: %w", last, err)
	}
	committed = true
	committedAt := time.Now()

	for i, ev := range evs {
		w.stats.Committed++
		w.stats.addID(logIDs[i])
		if hold {
			w.stats.Held++
		}
		switch ev.kind {
		case kindCacheInvalidation:
			w.stats.CacheInvalidations++
		case kindBadPayload:
			w.stats.Bad++
			w.stats.BadPayload++
		case kindBadNoReference:
			w.stats.Bad++
			w.stats.BadNoReference++
		}
	}
	if w.cfg.OnCommit != nil {
		w.cfg.OnCommit(logIDs, committedAt)
	}
	return nil
}

// insertEvent inserts ev's rows and returns its geo_event_log ID.
func insertEvent(ctx context.Context, tx pgx.Tx, ev event) (int64, error) {
	var logID int64
	switch ev.kind {
	case kindGeoEvent, kindBadPayload:
		var eventID int64
		if err := tx.QueryRow(ctx,
			`INSERT INTO geo_events (replicable_name, event_name, payload, created_at)
			 VALUES ($1, $2, $3, now()) RETURNING id`,
			ev.replicable, ev.name, ev.payload).Scan(&eventID); err != nil {
			return 0, fmt.Errorf("insert geo_events (%s %s): %w", ev.replicable, ev.name, err)
		}
		if err := tx.QueryRow(ctx,
			`INSERT INTO geo_event_log (created_at, geo_event_id)
			 VALUES (now() AT TIME ZONE 'utc', $1) RETURNING id`,
			eventID).Scan(&logID); err != nil {
			return 0, fmt.Errorf("insert geo_event_log for geo_events %d: %w", eventID, err)
		}
	case kindCacheInvalidation:
		var cacheID int64
		if err := tx.QueryRow(ctx,
			`INSERT INTO geo_cache_invalidation_events (key) VALUES ($1) RETURNING id`,
			ev.key).Scan(&cacheID); err != nil {
			return 0, fmt.Errorf("insert geo_cache_invalidation_events (%s): %w", ev.key, err)
		}
		if err := tx.QueryRow(ctx,
			`INSERT INTO geo_event_log (created_at, cache_invalidation_event_id)
			 VALUES (now() AT TIME ZONE 'utc', $1) RETURNING id`,
			cacheID).Scan(&logID); err != nil {
			return 0, fmt.Errorf("insert geo_event_log for cache invalidation %d: %w", cacheID, err)
		}
	case kindBadNoReference:
		if err := tx.QueryRow(ctx,
			`INSERT INTO geo_event_log (created_at) VALUES (now() AT TIME ZONE 'utc') RETURNING id`,
		).Scan(&logID); err != nil {
			return 0, fmt.Errorf("insert geo_event_log without reference: %w", err)
		}
	}
	return logID, nil
}

// Replicables and event names with their weights, roughly as a busy GitLab
// instance produces them.
var (
	replicableWeights = []weighted{
		{"project_repository", 30}, {"lfs_object", 20}, {"package_file", 15},
		{"upload", 15}, {"job_artifact", 15}, {"snippet_repository", 5},
	}
	eventNameWeights = []weighted{
		{"updated", 70}, {"created", 15}, {"deleted", 10},
		{"renamed", 3}, {"reset_checksum", 2},
	}
)

type weighted struct {
	name   string
	weight int
}

func pick(rng *rand.Rand, ws []weighted) string {
	total := 0
	for _, w := range ws {
		total += w.weight
	}
	n := rng.IntN(total)
	for _, w := range ws {
		if n < w.weight {
			return w.name
		}
		n -= w.weight
	}
	return ws[len(ws)-1].name
}

// nextEvent draws the next event from the writer's stream. It always makes
// the same number of draws so that the stream depends only on the seed.
func (w *writer) nextEvent() event {
	bad := w.rng.Float64() < w.cfg.BadFraction
	badNoRef := w.rng.IntN(2) == 0
	cache := w.rng.Float64() < w.cfg.CacheInvalidationFraction
	replicable := pick(w.rng, replicableWeights)
	name := pick(w.rng, eventNameWeights)
	id := 1 + w.rng.IntN(w.cfg.Records)

	switch {
	case bad && badNoRef:
		return event{kind: kindBadNoReference}
	case bad:
		return event{kind: kindBadPayload, replicable: replicable, name: "updated",
			payload: map[string]any{"note": "model_record_id deliberately missing"}}
	case cache:
		return event{kind: kindCacheInvalidation, key: fmt.Sprintf("geo:%s:%d", replicable, id)}
	}
	payload := map[string]any{"model_record_id": id}
	switch name {
	case "deleted":
		payload["blob_path"] = fmt.Sprintf("%s/%d", replicable, id)
	case "renamed":
		payload["old_path"] = fmt.Sprintf("group/old-%d", id)
		payload["new_path"] = fmt.Sprintf("group/new-%d", id)
	}
	return event{kind: kindGeoEvent, replicable: replicable, name: name, payload: payload}
}

// pacer spreads transactions of all writers evenly over time. A writer that
// falls behind does not earn a burst to catch up.
type pacer struct {
	interval time.Duration
	mu       sync.Mutex
	next     time.Time
}

func (p *pacer) wait(ctx context.Context) error {
	if p == nil {
		return ctx.Err()
	}
	p.mu.Lock()
	now := time.Now()
	if p.next.Before(now) {
		p.next = now
	}
	slot := p.next
	p.next = p.next.Add(p.interval)
	p.mu.Unlock()
	return sleep(ctx, time.Until(slot))
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// bulkCacheEvery makes every 20th bulk-loaded event (5%) a cache
// invalidation. A fixed pattern, unlike Run's random draw, lets each
// INSERT compute its row's IDs arithmetically from its position, without
// a staging table, which keeps a 1,000,000 event load within seconds.
const bulkCacheEvery = 20

// BulkLoad appends n well-formed events to the source in one transaction,
// set-based, to prepare a large backlog in seconds. The new geo_event_log
// IDs are contiguous; each row references its own geo_events row, or, for
// every 20th, a geo_cache_invalidation_events row. Replicable, event name
// and model_record_id are pseudo-random, depending only on seed and the
// position within the load.
//
// It locks the three tables for its duration, so concurrent writers wait
// instead of taking IDs in the middle of the range.
func BulkLoad(ctx context.Context, pool *pgxpool.Pool, n int, seed int64) error {
	if n <= 0 {
		return fmt.Errorf("bulk load: n must be positive, got %d", n)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("bulk load: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit

	// SHARE ROW EXCLUSIVE blocks inserts (which take their ID from the
	// sequence only after locking the table) and other bulk loads. The
	// tables are locked in the order Run's writers lock them (the
	// referenced row first, then geo_event_log): the other order deadlocks
	// with a writer that has inserted its geo_events row.
	if _, err := tx.Exec(ctx, `LOCK TABLE geo_events, geo_cache_invalidation_events, geo_event_log
		IN SHARE ROW EXCLUSIVE MODE`); err != nil {
		return fmt.Errorf("bulk load: lock source tables: %w", err)
	}

	nCache := int64(n / bulkCacheEvery)
	nEvents := int64(n) - nCache
	logStart, err := reserveIDs(ctx, tx, "geo_event_log_id_seq", int64(n))
	if err != nil {
		return err
	}
	eventStart, err := reserveIDs(ctx, tx, "geo_events_id_seq", nEvents)
	if err != nil {
		return err
	}
	cacheStart, err := reserveIDs(ctx, tx, "geo_cache_invalidation_events_id_seq", nCache)
	if err != nil {
		return err
	}

	// Position i (0-based) is a cache invalidation when i % every = every-1.
	// The geo_events rows before it number i - (i+1)/every, the cache
	// invalidations i/every. hashint8extended(i, salt) & 2147483647 is a
	// repeatable non-negative pseudo-random number per position.
	if nEvents > 0 {
		if _, err := tx.Exec(ctx, `
			INSERT INTO geo_events (id, replicable_name, event_name, payload, created_at)
			SELECT $1 + i - (i + 1) / $3,
			       CASE WHEN r_rep < 30 THEN 'project_repository'
			            WHEN r_rep < 50 THEN 'lfs_object'
			            WHEN r_rep < 65 THEN 'package_file'
			            WHEN r_rep < 80 THEN 'upload'
			            WHEN r_rep < 95 THEN 'job_artifact'
			            ELSE 'snippet_repository' END,
			       CASE WHEN r_name < 70 THEN 'updated'
			            WHEN r_name < 85 THEN 'created'
			            WHEN r_name < 95 THEN 'deleted'
			            WHEN r_name < 98 THEN 'renamed'
			            ELSE 'reset_checksum' END,
			       jsonb_build_object('model_record_id', 1 + r_rec),
			       now()
			FROM (
			    SELECT i,
			           (hashint8extended(i, $4) & 2147483647) % 100 AS r_rep,
			           (hashint8extended(i, $4 + 1) & 2147483647) % 100 AS r_name,
			           (hashint8extended(i, $4 + 2) & 2147483647) % $5 AS r_rec
			    FROM generate_series(0::bigint, $2::bigint - 1) AS i
			    WHERE i % $3 <> $3 - 1
			) AS draws`,
			eventStart, n, bulkCacheEvery, seed, DefaultRecords); err != nil {
			return fmt.Errorf("bulk load: insert %d geo_events: %w", nEvents, err)
		}
	}
	if nCache > 0 {
		if _, err := tx.Exec(ctx, `
			INSERT INTO geo_cache_invalidation_events (id, key)
			SELECT $1 + i / $3, 'geo:bulk:' || (1 + (hashint8extended(i, $4 + 2) & 2147483647) % $5)
			FROM generate_series(0::bigint, $2::bigint - 1) AS i
			WHERE i % $3 = $3 - 1`,
			cacheStart, n, bulkCacheEvery, seed, DefaultRecords); err != nil {
			return fmt.Errorf("bulk load: insert %d cache invalidations: %w", nCache, err)
		}
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO geo_event_log (id, created_at, geo_event_id, cache_invalidation_event_id)
		SELECT $1 + i, now() AT TIME ZONE 'utc',
		       CASE WHEN i % $5 <> $5 - 1 THEN $2 + i - (i + 1) / $5 END,
		       CASE WHEN i % $5 = $5 - 1 THEN $3 + i / $5 END
		FROM generate_series(0::bigint, $4::bigint - 1) AS i`,
		logStart, eventStart, cacheStart, n, bulkCacheEvery); err != nil {
		return fmt.Errorf("bulk load: insert %d geo_event_log rows: %w", n, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("bulk load: commit %d events: %w", n, err)
	}

	// Fresh statistics so that readers get good plans on the first query
	// after a big load, instead of waiting for autovacuum.
	if _, err := pool.Exec(ctx, "ANALYZE geo_event_log, geo_events, geo_cache_invalidation_events"); err != nil {
		return fmt.Errorf("bulk load: analyze: %w", err)
	}
	return nil
}

// reserveIDs takes k consecutive values from a sequence and returns the
// first. The caller must hold a lock that keeps other inserters from
// calling nextval on it meanwhile.
func reserveIDs(ctx context.Context, tx pgx.Tx, seq string, k int64) (int64, error) {
	if k == 0 {
		return 0, nil
	}
	var start int64
	if err := tx.QueryRow(ctx, "SELECT nextval($1::regclass)", seq).Scan(&start); err != nil {
		return 0, fmt.Errorf("bulk load: reserve %d ids from %s: %w", k, seq, err)
	}
	if k > 1 {
		if _, err := tx.Exec(ctx, "SELECT setval($1::regclass, $2)", seq, start+k-1); err != nil {
			return 0, fmt.Errorf("bulk load: reserve %d ids from %s: %w", k, seq, err)
		}
	}
	return start, nil
}

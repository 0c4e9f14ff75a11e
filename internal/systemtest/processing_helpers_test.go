package systemtest

// Helpers for the processing tests: PostgreSQL servers holding a source and
// a tracking database, agent configurations that point at them, background
// load, and the outcome check every processing test ends with.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/cursor"
	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/internal/pgserver"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

// procDBs are the two databases of a processing test, each with a pool the
// test uses to write the source and to read the outcome.
type procDBs struct {
	SourceServer, TrackingServer *pgserver.Server
	SourceDSN, TrackingDSN       string
	Source, Tracking             *pgxpool.Pool
}

// newProcDBs starts PostgreSQL and creates an empty source database with
// GitLab's event log tables and an empty tracking database (the agents
// create its tables). With separateTracking the tracking database gets a
// server of its own, with full durability, so that a test can crash it
// without taking the source down or losing committed batches; otherwise
// both live on one fast server.
func newProcDBs(t *testing.T, separateTracking bool) *procDBs {
	t.Helper()
	d := &procDBs{}
	d.SourceServer = ts.StartPostgres(t, pgserver.Options{Fast: true})
	d.TrackingServer = d.SourceServer
	if separateTracking {
		d.TrackingServer = ts.StartPostgres(t, pgserver.Options{})
	}
	d.SourceDSN = ts.NewDatabase(t, d.SourceServer, "gitlabhq_production")
	d.TrackingDSN = ts.NewDatabase(t, d.TrackingServer, "gitlabhq_geo_tracking")
	d.Source = newPool(t, d.SourceDSN, 16)
	d.Tracking = newPool(t, d.TrackingDSN, 4)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := loadgen.CreateSourceSchema(ctx, d.Source); err != nil {
		t.Fatalf("create the source schema: %v", err)
	}
	return d
}

// Env is the environment that hands the DSNs to the agents, as an operator
// would (the config reads them with env.NAME).
func (d *procDBs) Env() []string {
	return []string{"GEOCURSOR_SOURCE_DSN=" + d.SourceDSN, "GEOCURSOR_TRACKING_DSN=" + d.TrackingDSN}
}

func newPool(t *testing.T, dsn string, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("parse DSN: %v", err)
	}
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// procConfig is what differs between the agents' configurations in the
// processing tests. The zero value is the defaults with both databases.
type procConfig struct {
	// FastTimers shortens the lease TTL to 2s and the Raft timers to 300ms,
	// so that a failover takes about a second.
	FastTimers bool
	BatchSize  int    // 0: the default
	GapTimeout string // "": the default
	// Secure runs the agents with TLS and tokens.
	Secure bool
	// Start is source.start; "" means "oldest", since most tests check
	// that every event in the source is processed.
	Start string
	// Delivery, if set, adds a delivery block.
	Delivery *procDelivery
	// LeaderMayHold turns lease.prefer_follower off, so that the Raft
	// leader holds the lease as often as a follower does.
	LeaderMayHold bool
	// SharedStateRedisURL, if set, adds a gitlab block for the site
	// loadgen.SecondarySite with this shared-state Redis.
	SharedStateRedisURL string
}

// procDelivery is the agents' delivery block. The Redis URLs reach the
// agents through the environment (env.GEOCURSOR_*_REDIS_URL), as an
// operator's passwords would.
type procDelivery struct {
	SidekiqRedisURL string // "": no sidekiq block
	Queue           string // "": the default queue
	Namespace       string
	CacheRedisURL   string // "": no cache block
	CacheNamespace  string // "": the default, cache:gitlab
}

// env is what the block's env references need.
func (p procConfig) env() []string {
	var env []string
	if p.SharedStateRedisURL != "" {
		env = append(env, "GEOCURSOR_SHARED_STATE_REDIS_URL="+p.SharedStateRedisURL)
	}
	if dl := p.Delivery; dl != nil {
		if dl.SidekiqRedisURL != "" {
			env = append(env, "GEOCURSOR_SIDEKIQ_REDIS_URL="+dl.SidekiqRedisURL)
		}
		if dl.CacheRedisURL != "" {
			env = append(env, "GEOCURSOR_CACHE_REDIS_URL="+dl.CacheRedisURL)
		}
	}
	return env
}

// HCL is the part of the agent configuration after the addresses.
func (p procConfig) HCL() string {
	var b strings.Builder
	if p.FastTimers || p.LeaderMayHold {
		b.WriteString("lease {\n")
		if p.FastTimers {
			b.WriteString("  ttl       = \"2s\"\n  retry_min = \"50ms\"\n  retry_max = \"200ms\"\n")
		}
		if p.LeaderMayHold {
			b.WriteString("  prefer_follower = false\n")
		}
		b.WriteString("}\n")
	}
	if p.FastTimers {
		b.WriteString(`
raft {
  heartbeat_timeout = "300ms"
  election_timeout  = "300ms"
}
`)
	}
	start := p.Start
	if start == "" {
		start = "oldest"
	}
	fmt.Fprintf(&b, "source {\n  dsn = env.GEOCURSOR_SOURCE_DSN\n  start = %q\n", start)
	if p.BatchSize > 0 {
		fmt.Fprintf(&b, "  batch_size = %d\n", p.BatchSize)
	}
	if p.GapTimeout != "" {
		fmt.Fprintf(&b, "  gap_timeout = %q\n", p.GapTimeout)
	}
	b.WriteString("}\ntracking {\n  dsn = env.GEOCURSOR_TRACKING_DSN\n}\n")
	if p.SharedStateRedisURL != "" {
		fmt.Fprintf(&b, "gitlab {\n  site_name = %q\n  shared_state_redis_url = env.GEOCURSOR_SHARED_STATE_REDIS_URL\n}\n", loadgen.SecondarySite)
	}
	if dl := p.Delivery; dl != nil {
		b.WriteString("delivery {\n")
		if dl.SidekiqRedisURL != "" {
			b.WriteString("  sidekiq {\n    redis_url = env.GEOCURSOR_SIDEKIQ_REDIS_URL\n")
			if dl.Queue != "" {
				fmt.Fprintf(&b, "    queue = %q\n", dl.Queue)
			}
			fmt.Fprintf(&b, "    namespace = %q\n  }\n", dl.Namespace)
		}
		if dl.CacheRedisURL != "" {
			b.WriteString("  cache {\n    redis_url = env.GEOCURSOR_CACHE_REDIS_URL\n")
			if dl.CacheNamespace != "" {
				fmt.Fprintf(&b, "    namespace = %q\n", dl.CacheNamespace)
			}
			b.WriteString("  }\n")
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// startProcessing starts three processing agents on the databases and
// waits until every one of them has connected to both.
func startProcessing(t *testing.T, d *procDBs, p procConfig) *ts.Cluster {
	t.Helper()
	start := ts.StartCluster
	if p.Secure {
		start = ts.StartSecureCluster
	}
	c := start(t, 3, p.HCL(), append(d.Env(), p.env()...))
	waitDatabases(t, c.Agents)
	return c
}

// waitDatabases waits until every one of agents has connected to both
// databases.
func waitDatabases(t *testing.T, agents []*ts.Agent) {
	t.Helper()
	ts.WaitFor(t, 30*time.Second, "every agent to reach both databases", func() (bool, string) {
		for _, a := range agents {
			st, err := statusOf(a)
			if err != nil {
				return false, err.Error()
			}
			if st.Databases == nil || st.Databases.Source != "ok" || st.Databases.Tracking != "ok" {
				return false, fmt.Sprintf("%s: databases %+v", a.ID, st.Databases)
			}
		}
		return true, ""
	})
}

func statusOf(a *ts.Agent) (api.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := a.Status(ctx)
	return st, err
}

// anyStatus returns the status from the first of agents that answers.
func anyStatus(agents []*ts.Agent) (api.Status, error) {
	var errs []error
	for _, a := range agents {
		st, err := statusOf(a)
		if err == nil {
			return st, nil
		}
		errs = append(errs, err)
	}
	return api.Status{}, fmt.Errorf("no agent answered: %w", errors.Join(errs...))
}

// background is a load generator running in its own goroutine.
type background struct {
	cancel context.CancelFunc
	done   chan struct{}
	stats  loadgen.Stats
	err    error
}

// startLoad runs loadgen.Run on the source in the background until Total
// events have committed or stop is called. The test fails if the load
// fails or is still running when the test ends.
func startLoad(t *testing.T, d *procDBs, cfg loadgen.Config) *background {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	bg := &background{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(bg.done)
		bg.stats, bg.err = loadgen.Run(ctx, d.Source, cfg)
	}()
	t.Cleanup(func() {
		cancel()
		<-bg.done
	})
	return bg
}

// stop ends a load started without Total and returns what it wrote.
func (bg *background) stop(t *testing.T) loadgen.Stats {
	t.Helper()
	bg.cancel()
	<-bg.done
	if bg.err != nil && !errors.Is(bg.err, context.Canceled) {
		t.Fatalf("load: %v", bg.err)
	}
	return bg.stats
}

// wait waits for a load with a Total to finish and returns what it wrote.
func (bg *background) wait(t *testing.T, timeout time.Duration) loadgen.Stats {
	t.Helper()
	select {
	case <-bg.done:
	case <-time.After(timeout):
		bg.cancel()
		<-bg.done
		t.Fatalf("load did not finish within %s (%d events committed)", timeout, bg.stats.Committed)
	}
	if bg.err != nil {
		t.Fatalf("load: %v", bg.err)
	}
	return bg.stats
}

// queryRower is a pool, a connection or a transaction.
type queryRower interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// insertGeoEvent writes a geo_events row and the geo_event_log row pointing
// at it, as GitLab's primary does, and returns the log row's ID. Pass a
// transaction to leave them uncommitted.
func insertGeoEvent(t *testing.T, q queryRower, replicable, event, payload string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var geoID int64
	if err := q.QueryRow(ctx, `INSERT INTO geo_events (replicable_name, event_name, payload, created_at)
VALUES ($1, $2, $3::jsonb, now()) RETURNING id`, replicable, event, payload).Scan(&geoID); err != nil {
		t.Fatalf("insert geo_events (%s %s %s): %v", replicable, event, payload, err)
	}
	return insertLogRow(t, q, &geoID, nil)
}

// insertLogRow writes a geo_event_log row with the given references (nil
// is NULL) and returns its ID.
func insertLogRow(t *testing.T, q queryRower, geoEventID, cacheID *int64) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var id int64
	if err := q.QueryRow(ctx, `INSERT INTO geo_event_log (created_at, geo_event_id, cache_invalidation_event_id)
VALUES (now() AT TIME ZONE 'utc', $1, $2) RETURNING id`, geoEventID, cacheID).Scan(&id); err != nil {
		t.Fatalf("insert geo_event_log: %v", err)
	}
	return id
}

// commitEvents runs write in one source transaction and commits it.
func commitEvents(t *testing.T, d *procDBs, write func(tx pgx.Tx)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tx, err := d.Source.Begin(ctx)
	if err != nil {
		t.Fatalf("begin source transaction: %v", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	write(tx)
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit source transaction: %v", err)
	}
}

func queryInt(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var v int64
	if err := pool.QueryRow(ctx, sql, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// sourceHead is the highest committed event ID (0 for an empty log).
func sourceHead(t *testing.T, d *procDBs) int64 {
	t.Helper()
	return queryInt(t, d.Source, `SELECT coalesce(max(id), 0) FROM geo_event_log`)
}

// fenceRow is the tracking database's fence row.
type fenceRow struct {
	Token, LastEventID int64
	Gaps               string
}

func readFence(ctx context.Context, d *procDBs) (fenceRow, error) {
	var f fenceRow
	err := d.Tracking.QueryRow(ctx, `SELECT token, last_event_id, `+cursor.FenceGapsSQL+` FROM geocursor_fence WHERE id = 1`).
		Scan(&f.Token, &f.LastEventID, &f.Gaps)
	return f, err
}

// waitCursor waits until the replicated cursor on the first agent that
// answers is at least id, and returns its status.
func waitCursor(t *testing.T, agents []*ts.Agent, id int64, timeout time.Duration) api.Status {
	t.Helper()
	var st api.Status
	ts.WaitFor(t, timeout, fmt.Sprintf("the cursor to reach event %d", id), func() (bool, string) {
		var err error
		st, err = anyStatus(agents)
		if err != nil {
			return false, err.Error()
		}
		return st.Cursor.LastEventID >= id, fmt.Sprintf("cursor at %d, lease %s", st.Cursor.LastEventID, leaseString(st))
	})
	return st
}

func leaseString(st api.Status) string {
	holder := "none"
	if st.Lease.Holder != nil {
		holder = *st.Lease.Holder
	}
	return fmt.Sprintf("holder %s token %d", holder, st.Lease.Token)
}

// trackedIDs are the event IDs in the tracking database, with where each
// appears.
type trackedIDs struct {
	jobs, deadLetters map[int64]int
}

func readTracked(ctx context.Context, d *procDBs) (trackedIDs, error) {
	out := trackedIDs{jobs: map[int64]int{}, deadLetters: map[int64]int{}}
	for _, q := range []struct {
		sql string
		dst map[int64]int
	}{
		{`SELECT event_id FROM geo_jobs`, out.jobs},
		{`SELECT event_id FROM geo_dead_letters`, out.deadLetters},
	} {
		rows, err := d.Tracking.Query(ctx, q.sql)
		if err != nil {
			return out, fmt.Errorf("%s: %w", q.sql, err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return out, fmt.Errorf("%s: %w", q.sql, err)
		}
		for _, id := range ids {
			q.dst[id]++
		}
	}
	return out, nil
}

func readSourceIDs(ctx context.Context, d *procDBs) ([]int64, error) {
	rows, err := d.Source.Query(ctx, `SELECT id FROM geo_event_log ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("read source IDs: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// exactlyOnce compares the committed source events with the tracking
// database: every source ID must appear exactly once across geo_jobs and
// geo_dead_letters, and nothing else may appear. It returns "" when that
// holds, else a description with counts and examples.
func exactlyOnce(ctx context.Context, d *procDBs) (string, error) {
	src, err := readSourceIDs(ctx, d)
	if err != nil {
		return "", err
	}
	tr, err := readTracked(ctx, d)
	if err != nil {
		return "", err
	}
	inSource := make(map[int64]bool, len(src))
	var missing, doubled, unknown []int64
	for _, id := range src {
		inSource[id] = true
		switch n := tr.jobs[id] + tr.deadLetters[id]; {
		case n == 0:
			missing = append(missing, id)
		case n > 1:
			doubled = append(doubled, id)
		}
	}
	for _, m := range []map[int64]int{tr.jobs, tr.deadLetters} {
		for id := range m {
			if !inSource[id] {
				unknown = append(unknown, id)
			}
		}
	}
	if len(missing)+len(doubled)+len(unknown) == 0 {
		return "", nil
	}
	sort.Slice(unknown, func(i, j int) bool { return unknown[i] < unknown[j] })
	unknown = dedup(unknown)
	var b strings.Builder
	fmt.Fprintf(&b, "of %d committed source events: %d missing from geo_jobs and geo_dead_letters %s, %d applied more than once %s; %d event IDs in the tracking database that the source does not have %s",
		len(src), len(missing), examples(missing), len(doubled), examplesWith(doubled, tr), len(unknown), examples(unknown))
	return b.String(), nil
}

func dedup(ids []int64) []int64 {
	var out []int64
	for i, id := range ids {
		if i == 0 || ids[i-1] != id {
			out = append(out, id)
		}
	}
	return out
}

func examples(ids []int64) string {
	if len(ids) == 0 {
		return ""
	}
	n := min(len(ids), 10)
	s := fmt.Sprint(ids[:n])
	if len(ids) > n {
		s = strings.TrimSuffix(s, "]") + " ...]"
	}
	return "(e.g. " + s + ")"
}

func examplesWith(ids []int64, tr trackedIDs) string {
	if len(ids) == 0 {
		return ""
	}
	var parts []string
	for _, id := range ids[:min(len(ids), 10)] {
		parts = append(parts, fmt.Sprintf("%d: %d jobs + %d dead letters", id, tr.jobs[id], tr.deadLetters[id]))
	}
	return "(e.g. " + strings.Join(parts, ", ") + ")"
}

type registryKey struct {
	name string
	id   int64
}

// registryMismatch compares geo_registry with what the source says it must
// be: for every (replicable_name, model_record_id) of a created, updated or
// deleted event with a valid integer model_record_id, the row exists with
// last_event_id = the ID of the key's last event, unless that event is a
// delete; no other rows exist. It returns "" when they match.
func registryMismatch(ctx context.Context, d *procDBs) (string, error) {
	rows, err := d.Source.Query(ctx, `
SELECT l.id, e.replicable_name, e.event_name, e.payload::text
FROM geo_event_log l JOIN geo_events e ON e.id = l.geo_event_id
WHERE l.cache_invalidation_event_id IS NULL AND e.event_name IN ('created', 'updated', 'deleted')
ORDER BY l.id`)
	if err != nil {
		return "", fmt.Errorf("read source events: %w", err)
	}
	type last struct {
		eventID int64
		deleted bool
	}
	want := map[registryKey]last{}
	for rows.Next() {
		var (
			id                int64
			name, ev, payload string
		)
		if err := rows.Scan(&id, &name, &ev, &payload); err != nil {
			rows.Close()
			return "", fmt.Errorf("read source events: %w", err)
		}
		mid, ok := validModelRecordID(payload)
		if !ok || name == "" {
			continue
		}
		want[registryKey{name, mid}] = last{id, ev == "deleted"} // rows come in ID order
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("read source events: %w", err)
	}

	got := map[registryKey]int64{}
	rrows, err := d.Tracking.Query(ctx, `SELECT replicable_name, model_record_id, last_event_id FROM geo_registry`)
	if err != nil {
		return "", fmt.Errorf("read geo_registry: %w", err)
	}
	for rrows.Next() {
		var (
			k  registryKey
			id int64
		)
		if err := rrows.Scan(&k.name, &k.id, &id); err != nil {
			rrows.Close()
			return "", fmt.Errorf("read geo_registry: %w", err)
		}
		got[k] = id
	}
	if err := rrows.Err(); err != nil {
		return "", fmt.Errorf("read geo_registry: %w", err)
	}

	var absent, stale, resurrected, extra []string
	for k, w := range want {
		id, ok := got[k]
		switch {
		case w.deleted && ok:
			resurrected = append(resurrected, fmt.Sprintf("%s/%d: row with last_event_id %d, last event %d is a delete", k.name, k.id, id, w.eventID))
		case !w.deleted && !ok:
			absent = append(absent, fmt.Sprintf("%s/%d: no row, last event %d", k.name, k.id, w.eventID))
		case !w.deleted && id != w.eventID:
			stale = append(stale, fmt.Sprintf("%s/%d: last_event_id %d, want %d", k.name, k.id, id, w.eventID))
		}
	}
	for k, id := range got {
		if _, ok := want[k]; !ok {
			extra = append(extra, fmt.Sprintf("%s/%d: last_event_id %d", k.name, k.id, id))
		}
	}
	if len(absent)+len(stale)+len(resurrected)+len(extra) == 0 {
		return "", nil
	}
	return fmt.Sprintf("geo_registry (%d rows) does not match the %d records of the source: %d missing %s, %d with the wrong last_event_id %s, %d present though deleted %s, %d not in the source %s",
		len(got), len(want), len(absent), someOf(absent), len(stale), someOf(stale), len(resurrected), someOf(resurrected), len(extra), someOf(extra)), nil
}

func someOf(s []string) string {
	if len(s) == 0 {
		return ""
	}
	sort.Strings(s)
	n := min(len(s), 5)
	return "(e.g. " + strings.Join(s[:n], "; ") + ")"
}

// validModelRecordID reads payload.model_record_id as the design defines
// it: the payload is a JSON object and the field a JSON integer that fits
// in a bigint.
func validModelRecordID(payload string) (int64, bool) {
	p := bytes.TrimSpace([]byte(payload))
	if len(p) == 0 || p[0] != '{' {
		return 0, false
	}
	var fields map[string]json.RawMessage
	if json.Unmarshal(p, &fields) != nil {
		return 0, false
	}
	raw, ok := fields["model_record_id"]
	if !ok {
		return 0, false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if dec.Decode(&v) != nil {
		return 0, false
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, false
	}
	id, err := n.Int64()
	return id, err == nil
}

// checkOutcome is how every processing test ends, once its load has
// stopped: it waits until the cursor (in every live agent's status and in
// the fence row) stands at the source head and every committed event is in
// the tracking database, then checks that each committed event was applied
// exactly once and that the registry matches the source.
func checkOutcome(t *testing.T, d *procDBs, c *ts.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	head := sourceHead(t, d)
	committed := queryInt(t, d.Source, `SELECT count(*) FROM geo_event_log`)
	start := time.Now()
	caughtUp, detail := ts.Poll(60*time.Second, 100*time.Millisecond, func() (bool, string) {
		f, err := readFence(ctx, d)
		if err != nil {
			return false, "read the fence row: " + err.Error()
		}
		if f.LastEventID != head {
			return false, fmt.Sprintf("geocursor_fence.last_event_id %d, source head %d", f.LastEventID, head)
		}
		for _, a := range c.Live() {
			st, err := statusOf(a)
			if err != nil {
				return false, err.Error()
			}
			if st.Cursor.LastEventID != head {
				return false, fmt.Sprintf("%s: status cursor.last_event_id %d, source head %d (lease %s)", a.ID, st.Cursor.LastEventID, head, leaseString(st))
			}
		}
		tracked := queryInt(t, d.Tracking, `SELECT (SELECT count(*) FROM geo_jobs) + (SELECT count(*) FROM geo_dead_letters)`)
		if tracked != committed {
			return false, fmt.Sprintf("cursor at the head %d, but %d jobs and dead letters for %d committed events", head, tracked, committed)
		}
		return true, ""
	})
	if !caughtUp {
		t.Errorf("processing did not catch up with the source within 60s after the writes stopped: %s", detail)
	} else {
		t.Logf("caught up with the source head %d (%d committed events) %s into the check", head, committed, time.Since(start).Round(time.Millisecond))
	}

	if msg, err := exactlyOnce(ctx, d); err != nil {
		t.Fatalf("check exactly once: %v", err)
	} else if msg != "" {
		t.Errorf("not exactly once: %s", msg)
	}
	if msg, err := registryMismatch(ctx, d); err != nil {
		t.Fatalf("check the registry: %v", err)
	} else if msg != "" {
		t.Errorf("%s", msg)
	}
	if !caughtUp {
		t.FailNow()
	}
}

// logSize is the current length of an agent's log, to read only what it
// writes afterwards.
func logSize(t *testing.T, a *ts.Agent) int64 {
	t.Helper()
	fi, err := os.Stat(a.LogPath)
	if err != nil {
		t.Fatalf("stat %s: %v", a.LogPath, err)
	}
	return fi.Size()
}

// logSince returns the lines an agent logged after offset.
func logSince(a *ts.Agent, offset int64) []string {
	b, err := os.ReadFile(a.LogPath)
	if err != nil || int64(len(b)) < offset {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b[offset:]), "\n"), "\n")
}

// testClock stamps log lines with the time since the test started, so
// that a slow run shows where its time went.
type testClock struct {
	t     *testing.T
	start time.Time
}

func newClock(t *testing.T) *testClock { return &testClock{t: t, start: time.Now()} }

func (c *testClock) Logf(format string, args ...any) {
	c.t.Helper()
	c.t.Logf("[%5.1fs] "+format, append([]any{time.Since(c.start).Seconds()}, args...)...)
}

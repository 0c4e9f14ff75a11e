package cursor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/geocursor/geocursor/fsm"
	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrFenced is returned (wrapped, with the details) by Commit when the
// tracking database has already seen a newer token, or stands at a different
// position than the batch started from. Nothing was written. The holder must
// stop: its lease is gone, or another holder has moved the cursor; the next
// holder adopts the position in the fence row.
var ErrFenced = errors.New("fenced")

// Tracking writes processed events to this site's tracking database.
//
// Every write goes through Commit, which applies one batch in one transaction
// fenced by the lease token, so a holder that lost its lease (paused,
// partitioned, or simply slow) can never write.
type Tracking struct {
	pool   *pgxpool.Pool
	name   string // host:port/dbname, for errors and logs
	logger hclog.Logger
}

// idleInTransactionTimeout makes the server end a tracking session that
// sits inside a transaction without sending anything. A healthy holder never
// does: Commit sends its statements back to back. A holder that was paused
// (SIGSTOP, a VM freeze) or cut off in the middle of Commit still holds the
// fence row lock, and without this the next holder's Claim would wait on it
// for as long as the pause lasts; ending the session rolls the stale batch
// back and frees the row. The value is the default lease TTL: far longer
// than any gap between a healthy holder's statements.
const idleInTransactionTimeout = "5s"

// OpenTracking connects to the tracking database and brings its schema up to
// date. Several agents may open the same database at once; the migrations
// serialize on an advisory lock. Errors are one line naming the database.
func OpenTracking(ctx context.Context, dsn string, logger hclog.Logger) (*Tracking, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	pool, name, err := openPool(ctx, "tracking", dsn, map[string]string{
		"idle_in_transaction_session_timeout": idleInTransactionTimeout,
	})
	if err != nil {
		return nil, err
	}
	if err := migrate(ctx, pool, logger); err != nil {
		pool.Close()
		return nil, dbErrorf("tracking", name, err, "%s", describeMigration(err))
	}
	logger.Info("connected to tracking database", "database", name)
	return &Tracking{pool: pool, name: name, logger: logger}, nil
}

// describeMigration keeps what migrate said it was doing and replaces the
// driver's text with the server's message.
func describeMigration(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		msg := err.Error()
		// err is "<what>: ERROR: <message> (SQLSTATE xxxxx)"; keep <what>.
		if i := len(msg) - len(pgErr.Error()); i > 0 && msg[i:] == pgErr.Error() {
			return msg[:i] + pgErr.Message
		}
		return pgErr.Message
	}
	return describe(err)
}

// Close closes the connections. It waits for a Commit in flight to finish.
func (t *Tracking) Close() {
	t.pool.Close()
}

// Ping checks that the tracking database answers.
func (t *Tracking) Ping(ctx context.Context) error {
	if err := t.pool.Ping(ctx); err != nil {
		return dbErrorf("tracking", t.name, err, "%s", describe(err))
	}
	return nil
}

// Fence is the fence row: the highest token that committed a batch and the
// position that batch left.
type Fence struct {
	Token    uint64
	Position Position
}

// Fence reads the fence row. A new holder compares it with the cursor in the
// Raft group: if the previous holder died after its commit here but before
// its release-and-advance, the fence is ahead and is the truth.
func (t *Tracking) Fence(ctx context.Context) (Fence, error) {
	var (
		token, lastID int64
		lastDate      *time.Time
		gapsJSON      string
	)
	err := t.pool.QueryRow(ctx,
		`SELECT token, last_event_id, last_event_date, gaps::text FROM geocursor_fence WHERE id = 1`).
		Scan(&token, &lastID, &lastDate, &gapsJSON)
	if err != nil {
		return Fence{}, fmt.Errorf("read the fence row: %w", err)
	}
	f, err := fenceFromRow(token, lastID, lastDate, gapsJSON)
	if err != nil {
		return Fence{}, fmt.Errorf("read the fence row: %w", err)
	}
	return f, nil
}

// fenceFromRow builds a Fence from the columns of the fence row.
func fenceFromRow(token, lastID int64, lastDate *time.Time, gapsJSON string) (Fence, error) {
	gaps, err := decodeGaps(gapsJSON)
	if err != nil {
		return Fence{}, err
	}
	f := Fence{Token: uint64(token), Position: Position{LastEventID: lastID, Gaps: gaps}}
	if lastDate != nil {
		f.Position.LastEventDate = lastDate.UTC()
	}
	return f, nil
}

// Batch is one unit of work for Commit.
type Batch struct {
	// Token is the fencing token of the lease the batch was processed under.
	Token uint64
	// Start is the position the batch was fetched from: what the holder
	// believes the fence row says.
	Start Position
	// Next is the position after the batch, from Advance.
	Next Position
	// Events are the fetched events: each is above Start.LastEventID or one
	// of Start's gaps.
	Events []Event
}

// CommitResult counts what a Commit wrote.
type CommitResult struct {
	Jobs, DeadLetters int
	// RegistryUpserts and RegistryDeletes count registry rows actually
	// changed; an event older than the row (a late gap) changes nothing.
	RegistryUpserts, RegistryDeletes int
}

// Commit applies b in one transaction: Stage, then the staged batch's
// Commit.
//
// If Commit returns an error other than ErrFenced, the outcome may be unknown
// (the connection can fail during COMMIT): read the fence to find out before
// retrying, since a retry of a batch that did commit is refused as fenced.
func (t *Tracking) Commit(ctx context.Context, b Batch) (CommitResult, error) {
	st, err := t.Stage(ctx, b)
	if err != nil {
		return CommitResult{}, err
	}
	return st.Commit(ctx)
}

// Staged is a batch whose transaction is open, with the writes that take no
// lock done: its geo_jobs and geo_dead_letters rows, invisible to others
// until Commit. Its Commit then takes the fence row's lock, and a staged
// batch may wait for it while the batch before it commits: that is how the
// holder inserts the next batch's rows while the last one commits. Exactly
// one of Commit and Abort must be called.
type Staged struct {
	t        *Tracking
	conn     *pgxpool.Conn
	b        Batch
	events   []Event
	eff      effects
	res      CommitResult
	nextGaps string
	began    time.Time
}

// Stage checks b, opens its transaction on a connection of its own and
// inserts its jobs and dead letters, in one round trip.
func (t *Tracking) Stage(ctx context.Context, b Batch) (StagedBatch, error) {
	events, err := checkBatch(b)
	if err != nil {
		return nil, err
	}
	if b.Token > math.MaxInt64 {
		return nil, fmt.Errorf("commit batch (token %d): token does not fit in a bigint", b.Token)
	}
	nextGaps, err := json.Marshal(nonNil(b.Next.Gaps))
	if err != nil {
		return nil, fmt.Errorf("commit batch (token %d): encode gaps: %w", b.Token, err)
	}
	s := &Staged{t: t, b: b, events: events, eff: classify(events), nextGaps: string(nextGaps), began: time.Now()}
	if s.conn, err = t.pool.Acquire(ctx); err != nil {
		return nil, s.errorf("%w", err)
	}
	pb := &pgx.Batch{}
	pb.Queue(`BEGIN`)
	queueRows(pb, s.eff, &s.res)
	if err := s.conn.SendBatch(ctx, pb).Close(); err != nil {
		s.Abort()
		return nil, s.failed(err)
	}
	return s, nil
}

// failed describes err, a failure of the batch's statements. A row for one
// of the batch's events that already exists means another holder committed
// the same events first: this batch is fenced out, as it would have been
// by the fence row. Staged batches insert their rows before they take the
// fence row's lock, so that is how a stale holder racing the current one
// usually learns it.
func (s *Staged) failed(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" &&
		(pgErr.TableName == "geo_jobs" || pgErr.TableName == "geo_dead_letters") {
		return fmt.Errorf("%w: token %d: events %d..%d were committed by another holder (%s)",
			ErrFenced, s.b.Token, firstID(s.events), lastID(s.events), pgErr.Detail)
	}
	return s.errorf("%w", err)
}

// Commit locks the fence row, refuses the batch with ErrFenced (rolling it
// back) if the row holds a newer token or a different start position than
// the batch's, writes the registry changes, moves the fence to the batch's
// Next under its token and commits. All but the COMMIT go in one round
// trip: the fence is checked when its row comes back, and a refused batch
// has done its registry writes for nothing. That is rare; a round trip on
// every batch is not.
func (s *Staged) Commit(ctx context.Context) (CommitResult, error) {
	if s.conn == nil {
		return CommitResult{}, s.errorf("the batch was already committed or aborted")
	}
	defer s.Abort() // releases the connection; a no-op rollback after COMMIT
	b := s.b
	var lastDate *time.Time
	if !b.Next.LastEventDate.IsZero() {
		d := b.Next.LastEventDate.UTC()
		lastDate = &d
	}
	var fenceErr error
	pb := &pgx.Batch{}
	pb.Queue(`SELECT token, last_event_id, gaps::text FROM geocursor_fence WHERE id = 1 FOR UPDATE`).
		QueryRow(func(row pgx.Row) error {
			fenceErr = checkFence(row, b)
			return fenceErr
		})
	res := s.res
	queueRegistry(pb, s.eff, b.Start.LastEventID, tombstoneFloor(b.Next), &res)
	pb.Queue(`UPDATE geocursor_fence
SET token = $1, last_event_id = $2, last_event_date = $3, gaps = $4::jsonb, updated_at = clock_timestamp()
WHERE id = 1`, int64(b.Token), b.Next.LastEventID, lastDate, s.nextGaps)
	if err := s.conn.SendBatch(ctx, pb).Close(); err != nil {
		if fenceErr != nil {
			return CommitResult{}, fenceErr
		}
		return CommitResult{}, s.failed(err)
	}
	if _, err := s.conn.Exec(ctx, `COMMIT`); err != nil {
		return CommitResult{}, s.errorf("%w", err)
	}
	s.t.logger.Debug("committed batch", "token", b.Token, "first_id", firstID(s.events), "last_id", lastID(s.events),
		"count", len(s.events), "jobs", res.Jobs, "dead_letters", res.DeadLetters,
		"duration_ms", time.Since(s.began).Milliseconds())
	return res, nil
}

// Abort rolls the staged batch back, unless it was committed, and gives
// its connection back. It is safe to call more than once.
func (s *Staged) Abort() {
	if s.conn == nil {
		return
	}
	if s.conn.Conn().PgConn().TxStatus() != 'I' {
		rollback(context.Background(), s.conn.Conn())
	}
	// Release destroys a connection still inside a transaction.
	s.conn.Release()
	s.conn = nil
}

func (s *Staged) errorf(format string, args ...any) error {
	return fmt.Errorf("commit batch (token %d, events %d..%d): %w",
		s.b.Token, firstID(s.events), lastID(s.events), fmt.Errorf(format, args...))
}

// checkBatch returns b's events sorted by ID after checking that each one is
// new to Start: above its last event or one of its gaps, and not repeated.
// Anything else would apply an event twice.
func checkBatch(b Batch) ([]Event, error) {
	events := append([]Event(nil), b.Events...)
	sort.Slice(events, func(i, j int) bool { return events[i].ID < events[j].ID })
	gaps := make(map[int64]bool, len(b.Start.Gaps))
	for _, g := range b.Start.Gaps {
		gaps[g.ID] = true
	}
	for i, ev := range events {
		if i > 0 && events[i-1].ID == ev.ID {
			return nil, fmt.Errorf("commit batch (token %d): event %d appears twice", b.Token, ev.ID)
		}
		if ev.ID <= b.Start.LastEventID && !gaps[ev.ID] {
			return nil, fmt.Errorf("commit batch (token %d): event %d is at or below the start position %d and not an open gap",
				b.Token, ev.ID, b.Start.LastEventID)
		}
	}
	return events, nil
}

// checkFence refuses the batch unless the fence row, read with its lock
// held, is where the batch starts. Holding the row lock to the end of the
// transaction is what makes the check and the writes one step: a stale
// holder blocked on the lock sees the newer row once it is released.
func checkFence(row pgx.Row, b Batch) error {
	var (
		token, lastID int64
		gapsJSON      string
	)
	if err := row.Scan(&token, &lastID, &gapsJSON); err != nil {
		return fmt.Errorf("commit batch (token %d): lock the fence row: %w", b.Token, err)
	}
	if uint64(token) > b.Token {
		return fmt.Errorf("%w: token %d is older than token %d in the tracking database", ErrFenced, b.Token, token)
	}
	if lastID != b.Start.LastEventID {
		return fmt.Errorf("%w: batch starts at event %d but the tracking database is at %d", ErrFenced, b.Start.LastEventID, lastID)
	}
	gaps, err := decodeGaps(gapsJSON)
	if err != nil {
		return fmt.Errorf("commit batch (token %d): read the fence row: %w", b.Token, err)
	}
	if id, differ := gapsDiffer(b.Start.Gaps, gaps); differ {
		return fmt.Errorf("%w: batch starts at event %d with %d open gaps but the tracking database has %d (they differ at gap %d)",
			ErrFenced, b.Start.LastEventID, len(b.Start.Gaps), len(gaps), id)
	}
	return nil
}

// rollback ends the transaction on conn after a failure, best effort: if
// it fails, the connection is still inside the transaction and the pool
// destroys it on release.
func rollback(ctx context.Context, conn *pgx.Conn) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	conn.Exec(rctx, `ROLLBACK`) //nolint:errcheck // see above
}

// gapsDiffer compares two gap sets by ID (the first-seen times may differ
// between holders) and returns the lowest ID in one but not the other.
func gapsDiffer(a, b []fsm.Gap) (int64, bool) {
	in := make(map[int64]int, len(a)+len(b))
	for _, g := range a {
		in[g.ID] |= 1
	}
	for _, g := range b {
		in[g.ID] |= 2
	}
	var (
		lowest int64
		differ bool
	)
	for id, where := range in {
		if where != 3 && (!differ || id < lowest) {
			lowest, differ = id, true
		}
	}
	return lowest, differ
}

// The statements that write a batch's effects: one statement per kind of
// write, each taking its rows as arrays, so that a batch of any size is a
// handful of statements sent in one round trip. The counts land in res.

// queueRows adds the inserts of eff's jobs and dead letters to pb. They
// take no lock another batch could want: each event is in one batch only.
func queueRows(pb *pgx.Batch, eff effects, res *CommitResult) {
	if len(eff.Jobs) > 0 {
		n := len(eff.Jobs)
		ids, kinds, names, models, payloads := make([]int64, n), make([]string, n), make([]*string, n), make([]*int64, n), make([]string, n)
		for i, j := range eff.Jobs {
			ids[i], kinds[i], names[i], models[i], payloads[i] = j.EventID, j.Kind, j.ReplicableName, j.ModelRecordID, string(j.Payload)
		}
		pb.Queue(`INSERT INTO geo_jobs (event_id, kind, replicable_name, model_record_id, payload)
SELECT j.event_id, j.kind, j.replicable_name, j.model_record_id, j.payload::jsonb
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[])
    AS j(event_id, kind, replicable_name, model_record_id, payload)
ORDER BY j.event_id`, ids, kinds, names, models, payloads).
			Exec(func(ct pgconn.CommandTag) error { res.Jobs = int(ct.RowsAffected()); return nil })
	}

	if len(eff.DeadLetters) > 0 {
		n := len(eff.DeadLetters)
		ids, reasons, rows := make([]int64, n), make([]string, n), make([]string, n)
		for i, d := range eff.DeadLetters {
			ids[i], reasons[i], rows[i] = d.EventID, d.Reason, string(d.Row)
		}
		pb.Queue(`INSERT INTO geo_dead_letters (event_id, reason, "row")
SELECT d.event_id, d.reason, d.body::jsonb
FROM unnest($1::bigint[], $2::text[], $3::text[]) AS d(event_id, reason, body)
ORDER BY d.event_id`, ids, reasons, rows).
			Exec(func(ct pgconn.CommandTag) error { res.DeadLetters = int(ct.RowsAffected()); return nil })
	}
}

// queueRegistry adds eff's registry and tombstone writes to pb. start is
// the last event ID before the batch (events above it are not late),
// tombstoneFloor the lowest ID that can still arrive late after it. They
// must run under the fence row's lock, after the batch before.
func queueRegistry(pb *pgx.Batch, eff effects, start, tombstoneFloor int64, res *CommitResult) {
	// A registry row only moves forward in event order. An event above the
	// start position is newer than anything the tracking database has
	// seen, so only a late event (an open gap filled) can be older than
	// the row, or than a tombstone left by a delete of a record that no
	// longer has a row.
	var fresh, late, del registryColumns
	for _, op := range eff.Registry {
		switch {
		case op.Delete:
			del.add(op)
		case op.EventID > start:
			fresh.add(op)
		default:
			late.add(op)
		}
	}

	if len(fresh.names) > 0 {
		pb.Queue(upsertRegistry(""), fresh.names, fresh.models, fresh.eventIDs).
			Exec(func(ct pgconn.CommandTag) error { res.RegistryUpserts += int(ct.RowsAffected()); return nil })
	}
	if len(late.names) > 0 {
		pb.Queue(upsertRegistry(`
WHERE NOT EXISTS (
    SELECT 1 FROM geo_registry_tombstones t
    WHERE t.replicable_name = u.replicable_name AND t.model_record_id = u.model_record_id
      AND t.last_event_id > u.event_id)`), late.names, late.models, late.eventIDs).
			Exec(func(ct pgconn.CommandTag) error { res.RegistryUpserts += int(ct.RowsAffected()); return nil })
	}

	if len(del.names) > 0 {
		pb.Queue(`DELETE FROM geo_registry r
USING unnest($1::text[], $2::bigint[], $3::bigint[]) AS d(replicable_name, model_record_id, event_id)
WHERE r.replicable_name = d.replicable_name AND r.model_record_id = d.model_record_id
  AND r.last_event_id < d.event_id`, del.names, del.models, del.eventIDs).
			Exec(func(ct pgconn.CommandTag) error { res.RegistryDeletes = int(ct.RowsAffected()); return nil })
	}

	// A tombstone guards a deleted record against the late events that can
	// still arrive: those in the gaps left open below it. A delete above
	// every open gap needs none, and a tombstone falls due once the gaps
	// below it are filled or given up. So the table holds only the deletes
	// since the oldest open gap, instead of one row per record ever deleted,
	// and a drain without gaps never touches it.
	var tomb registryColumns
	for i, id := range del.eventIDs {
		if id > tombstoneFloor {
			tomb.names = append(tomb.names, del.names[i])
			tomb.models = append(tomb.models, del.models[i])
			tomb.eventIDs = append(tomb.eventIDs, id)
		}
	}
	if len(tomb.names) > 0 {
		pb.Queue(`INSERT INTO geo_registry_tombstones (replicable_name, model_record_id, last_event_id)
SELECT d.replicable_name, d.model_record_id, d.event_id
FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS d(replicable_name, model_record_id, event_id)
ORDER BY d.replicable_name, d.model_record_id
ON CONFLICT (replicable_name, model_record_id) DO UPDATE
SET last_event_id = EXCLUDED.last_event_id
WHERE geo_registry_tombstones.last_event_id < EXCLUDED.last_event_id`, tomb.names, tomb.models, tomb.eventIDs)
	}
	pb.Queue(`DELETE FROM geo_registry_tombstones WHERE last_event_id < $1`, tombstoneFloor)
}

// registryColumns holds registry ops as the arrays a statement unnests.
type registryColumns struct {
	names    []string
	models   []int64
	eventIDs []int64
}

func (c *registryColumns) add(op registryOp) {
	c.names = append(c.names, op.ReplicableName)
	c.models = append(c.models, op.ModelRecordID)
	c.eventIDs = append(c.eventIDs, op.EventID)
}

// upsertRegistry is the statement that marks registry rows pending as of
// their event, with where filtering the rows to write. The row moves only
// forward in event order.
func upsertRegistry(where string) string {
	return `INSERT INTO geo_registry (replicable_name, model_record_id, state, last_event_id, updated_at)
SELECT u.replicable_name, u.model_record_id, 'pending', u.event_id, clock_timestamp()
FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(replicable_name, model_record_id, event_id)` + where + `
ORDER BY u.replicable_name, u.model_record_id
ON CONFLICT (replicable_name, model_record_id) DO UPDATE
SET state = 'pending', last_event_id = EXCLUDED.last_event_id, updated_at = EXCLUDED.updated_at
WHERE geo_registry.last_event_id < EXCLUDED.last_event_id`
}

// tombstoneFloor is the lowest event ID that can still arrive late after a
// batch that leaves next: its lowest open gap, or none (MaxInt64).
func tombstoneFloor(next Position) int64 {
	floor := int64(math.MaxInt64)
	for _, g := range next.Gaps {
		floor = min(floor, g.ID)
	}
	return floor
}

func decodeGaps(s string) ([]fsm.Gap, error) {
	var gaps []fsm.Gap
	if err := json.Unmarshal([]byte(s), &gaps); err != nil {
		return nil, fmt.Errorf("decode gaps: %w", err)
	}
	if len(gaps) == 0 {
		return nil, nil
	}
	sort.Slice(gaps, func(i, j int) bool { return gaps[i].ID < gaps[j].ID })
	return gaps, nil
}

func nonNil(gaps []fsm.Gap) []fsm.Gap {
	if gaps == nil {
		return []fsm.Gap{}
	}
	return gaps
}

func firstID(events []Event) int64 {
	if len(events) == 0 {
		return 0
	}
	return events[0].ID
}

func lastID(events []Event) int64 {
	if len(events) == 0 {
		return 0
	}
	return events[len(events)-1].ID
}

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

// Commit applies b in one transaction: it locks the fence row, refuses the
// batch with ErrFenced if the row holds a newer token or a different start
// position, writes the jobs, dead letters and registry changes, and moves the
// fence to b.Next under b.Token.
//
// If Commit returns an error other than ErrFenced, the outcome may be unknown
// (the connection can fail during COMMIT): read the fence to find out before
// retrying, since a retry of a batch that did commit is refused as fenced.
func (t *Tracking) Commit(ctx context.Context, b Batch) (CommitResult, error) {
	var res CommitResult
	events, err := checkBatch(b)
	if err != nil {
		return res, err
	}
	if b.Token > math.MaxInt64 {
		return res, fmt.Errorf("commit batch (token %d): token does not fit in a bigint", b.Token)
	}
	nextGaps, err := json.Marshal(nonNil(b.Next.Gaps))
	if err != nil {
		return res, fmt.Errorf("commit batch (token %d): encode gaps: %w", b.Token, err)
	}
	eff := classify(events)
	var lastDate *time.Time
	if !b.Next.LastEventDate.IsZero() {
		d := b.Next.LastEventDate.UTC()
		lastDate = &d
	}
	began := time.Now()

	conn, err := t.pool.Acquire(ctx)
	if err != nil {
		return res, fmt.Errorf("commit batch (token %d): %w", b.Token, err)
	}
	// Release destroys a connection left inside a transaction.
	defer conn.Release()

	// The whole transaction but its COMMIT goes in one round trip: the
	// fence row is locked first, the effects and the new fence follow, and
	// the fence is checked when its row comes back. A refused batch has
	// done its writes for nothing and is rolled back; it is rare, and a
	// round trip on every batch is not.
	var fenceErr error
	pb := &pgx.Batch{}
	pb.Queue(`BEGIN`)
	pb.Queue(`SELECT token, last_event_id, gaps::text FROM geocursor_fence WHERE id = 1 FOR UPDATE`).
		QueryRow(func(row pgx.Row) error {
			fenceErr = checkFence(row, b)
			return fenceErr
		})
	queueEffects(pb, eff, b.Start.LastEventID, tombstoneFloor(b.Next), &res)
	pb.Queue(`UPDATE geocursor_fence
SET token = $1, last_event_id = $2, last_event_date = $3, gaps = $4::jsonb, updated_at = clock_timestamp()
WHERE id = 1`, int64(b.Token), b.Next.LastEventID, lastDate, string(nextGaps))
	if err := conn.SendBatch(ctx, pb).Close(); err != nil {
		rollback(ctx, conn.Conn())
		if fenceErr != nil {
			return CommitResult{}, fenceErr
		}
		return CommitResult{}, fmt.Errorf("commit batch (token %d, events %d..%d): %w",
			b.Token, firstID(events), lastID(events), err)
	}
	if _, err := conn.Exec(ctx, `COMMIT`); err != nil {
		rollback(ctx, conn.Conn())
		return CommitResult{}, fmt.Errorf("commit batch (token %d, events %d..%d): %w",
			b.Token, firstID(events), lastID(events), err)
	}
	t.logger.Debug("committed batch", "token", b.Token, "first_id", firstID(events), "last_id", lastID(events),
		"count", len(events), "jobs", res.Jobs, "dead_letters", res.DeadLetters,
		"duration_ms", time.Since(began).Milliseconds())
	return res, nil
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

// queueEffects adds the statements that write eff to pb: one statement per
// kind of write, each taking its rows as arrays, so a batch of any size is a
// handful of statements sent in one round trip. start is the last event ID
// before the batch (events above it are not late), tombstoneFloor the lowest
// ID that can still arrive late after it. The counts land in res.
func queueEffects(pb *pgx.Batch, eff effects, start, tombstoneFloor int64, res *CommitResult) {
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

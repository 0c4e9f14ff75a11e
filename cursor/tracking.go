package cursor

import (
	"context"
	"errors"
	"fmt"
	"github.com/geocursor/geocursor/internal/pgdb"
	"math"
	"sort"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/fsm"
)

// Tracking writes processed events to this site's tracking database.
//
// Every write goes through Commit, which applies one batch in one transaction
// fenced by the lease token, so a holder that lost its lease (paused,
// partitioned, or simply slow) can never write.
type Tracking struct {
	pool   *pgxpool.Pool
	name   string // host:port/dbname, for errors and logs
	logger hclog.Logger
	// notifyJobs makes a batch that wrote jobs wake the deliverers
	// (NOTIFY JobsChannel) when it commits.
	notifyJobs atomic.Bool
}

// NotifyJobs makes every committed batch that wrote jobs send a
// notification the deliverers listen for, so that delivery starts at once
// instead of at their next poll.
func (t *Tracking) NotifyJobs() { t.notifyJobs.Store(true) }

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
	pool, name, err := pgdb.Open(ctx, "tracking", dsn, map[string]string{
		"idle_in_transaction_session_timeout": idleInTransactionTimeout,
	})
	if err != nil {
		return nil, err
	}
	if err := migrate(ctx, pool, logger); err != nil {
		pool.Close()
		return nil, pgdb.Errorf("tracking", name, err, "%s", describeMigration(err))
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
	return pgdb.Describe(err)
}

// saveEventLogState keeps GitLab's event_log_states at one row holding $1,
// as GitLab's own cursor does (it updates its one row in place). An
// operator's cursor set uses it; batches use followEventLogState.
const saveEventLogState = `WITH gone AS (DELETE FROM event_log_states WHERE event_id <> $1)
INSERT INTO event_log_states (event_id, created_at) VALUES ($1, now() AT TIME ZONE 'utc')
ON CONFLICT (event_id) DO NOTHING`

// followEventLogState moves event_log_states after a batch whose safe
// cursor is $1 (design section 13, "what GitLab believes was processed").
// Without a geocursor_delivery row (no delivery block ever ran) that is $1,
// as GitLab's own cursor would have it. With one, the batch leaves its mark
// (geocursor_delivery_marks) and the row moves to the safe cursor of the
// newest mark that delivery has passed: never ahead of a job that is not in
// Redis yet. The row only moves forward. The statement's snapshot does not
// see the mark it inserts, so the new mark is read from RETURNING.
const followEventLogState = `WITH d AS (SELECT last_job_id FROM geocursor_delivery WHERE id = 1),
mark AS (
  INSERT INTO geocursor_delivery_marks (max_job_id, safe_event_id)
  SELECT COALESCE((SELECT max(id) FROM geo_jobs), 0), $1::bigint FROM d
  ON CONFLICT (max_job_id) DO UPDATE SET safe_event_id = GREATEST(geocursor_delivery_marks.safe_event_id, EXCLUDED.safe_event_id)
  RETURNING max_job_id, safe_event_id),
t AS (
  SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM d) THEN $1::bigint ELSE GREATEST(
    (SELECT m.safe_event_id FROM geocursor_delivery_marks m, d WHERE m.max_job_id <= d.last_job_id ORDER BY m.max_job_id DESC LIMIT 1),
    (SELECT mark.safe_event_id FROM mark, d WHERE mark.max_job_id <= d.last_job_id)) END AS id),
gone AS (DELETE FROM event_log_states WHERE event_id < (SELECT id FROM t))
INSERT INTO event_log_states (event_id, created_at)
SELECT id, now() AT TIME ZONE 'utc' FROM t
WHERE id > 0 AND id > COALESCE((SELECT max(event_id) FROM event_log_states), 0)
ON CONFLICT (event_id) DO NOTHING`

// DeliveredEventLogState moves event_log_states after a delivery round
// moved geocursor_delivery.last_job_id (in the same transaction): to the
// safe cursor of the newest mark delivery has now passed, forward only.
// The marks below that one are no longer needed. Package delivery runs it.
const DeliveredEventLogState = `WITH t AS (
  SELECT m.max_job_id, m.safe_event_id AS id FROM geocursor_delivery_marks m, geocursor_delivery d
  WHERE d.id = 1 AND m.max_job_id <= d.last_job_id ORDER BY m.max_job_id DESC LIMIT 1),
pruned AS (DELETE FROM geocursor_delivery_marks WHERE max_job_id < (SELECT max_job_id FROM t)),
gone AS (DELETE FROM event_log_states WHERE event_id < (SELECT id FROM t))
INSERT INTO event_log_states (event_id, created_at)
SELECT id, now() AT TIME ZONE 'utc' FROM t
WHERE id > COALESCE((SELECT max(event_id) FROM event_log_states), 0)
ON CONFLICT (event_id) DO NOTHING`

// JobsChannel is the NOTIFY channel of committed jobs, which the
// deliverers (package delivery) LISTEN on.
const JobsChannel = "geocursor_jobs"

// DB returns the tracking database's pool and its name (host:port/dbname)
// for the packages that read the tables it keeps (delivery).
func (t *Tracking) DB() (*pgxpool.Pool, string) { return t.pool, t.name }

// Close closes the connections. It waits for a Commit in flight to finish.
func (t *Tracking) Close() {
	t.pool.Close()
}

// Ping checks that the tracking database answers.
func (t *Tracking) Ping(ctx context.Context) error {
	if err := t.pool.Ping(ctx); err != nil {
		return pgdb.Errorf("tracking", t.name, err, "%s", pgdb.Describe(err))
	}
	return nil
}

// Batch is one unit of work: the events read under one token from Start.
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

// Staged is a batch whose transaction is open, with the writes that take no
// lock done: its geo_jobs and geo_dead_letters rows, invisible to others
// until Commit. Its Commit then takes the fence row's lock, and a staged
// batch may wait for it while the batch before it commits: that is how the
// holder inserts the next batch's rows while the last one commits. Exactly
// one of Commit and Abort must be called.
type Staged struct {
	t      *Tracking
	conn   *pgxpool.Conn
	b      Batch
	events []Event
	eff    effects
	res    CommitResult
	began  time.Time
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
	s := &Staged{t: t, b: b, events: events, eff: classify(events), began: time.Now()}
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
	lastDate := b.Next.dateColumn()
	var fenceErr error
	pb := &pgx.Batch{}
	pb.Queue(checkFenceQuery).
		QueryRow(func(row pgx.Row) error {
			fenceErr = checkFence(row, b)
			return fenceErr
		})
	res := s.res
	queueRegistry(pb, s.eff, b.Start.LastEventID, tombstoneFloor(b.Next), &res)
	// The open gaps change by what this batch closed and opened; the row
	// keeps their count and checksum, never the set.
	queueGapChanges(pb, b.Start.Gaps, b.Next.Gaps)
	pb.Queue(`UPDATE geocursor_fence
SET token = $1, last_event_id = $2, last_event_date = $3, gaps_count = $4, gaps_sum = $5, positioned = true, updated_at = clock_timestamp()
WHERE id = 1`, int64(b.Token), b.Next.LastEventID, lastDate, len(b.Next.Gaps), int64(fsm.GapSum(b.Next.Gaps)))
	// GitLab's view of the site's cursor, in the same transaction: the
	// safe cursor, never ahead of an open gap (design section 11) nor,
	// with delivery, of a job not yet in Redis (section 13).
	if safe := fsm.SafeEventID(b.Next.LastEventID, b.Next.Gaps); safe > 0 {
		pb.Queue(followEventLogState, safe)
	}
	if len(s.eff.Jobs) > 0 && s.t.notifyJobs.Load() {
		pb.Queue(`SELECT pg_notify($1, '')`, JobsChannel)
	}
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
		pgdb.Rollback(context.Background(), s.conn.Conn())
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

package delivery

import (
	"context"
	"errors"
	"github.com/geocursor/geocursor/internal/pgdb"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/cursor"
)

// The tracking database's side of delivery: the geocursor_delivery row,
// how far delivery has come, and the jobs after it.

// store is the tracking database as delivery sees it. The tables are the
// tracking schema's (package cursor migrates them); delivery reads
// geo_jobs and owns the geocursor_delivery row.
type store struct {
	pool *pgxpool.Pool
	name string // host:port/dbname, for errors
}

// deliveryLock is the transaction-scoped advisory lock a delivery round
// holds, so that the agents' deliverers take turns instead of all pushing
// the same jobs (which the Redis watermark would make harmless, but
// wasteful). Held by a transaction, it is freed when the session ends or
// idle_in_transaction_session_timeout ends a paused one. "geodeliv".
const deliveryLock int64 = 0x67656f64656c6976

// deliveryLockWait bounds the wait for another agent's round.
const deliveryLockWait = "2s"

// deliveryRow is the geocursor_delivery row.
type deliveryRow struct {
	epoch string
	// lastJobID: every job at or below it was delivered or skipped.
	lastJobID       int64
	lastEventID     int64
	lastPushedJobID int64
	delivered       int64
	lostInRedis     int64
	lastPushAt      *time.Time
	lastPushJobs    int
	// maxJobID is the newest job's ID (0: none), read with the row.
	maxJobID int64
}

// deliveryJob is one geo_jobs row to deliver.
type deliveryJob struct {
	id             int64
	eventID        int64
	kind           string
	replicableName string
	eventName      string
	payload        []byte
	createdAt      time.Time
}

// startDelivery creates the geocursor_delivery row if no agent has, at the
// jobs written so far: those were written while geo_jobs was the queue and
// stay there. It reports whether it created the row, and the row.
func (t *store) startDelivery(ctx context.Context) (created bool, row deliveryRow, err error) {
	tag, err := t.pool.Exec(ctx, `
INSERT INTO geocursor_delivery (id, epoch, started_after_job_id, last_job_id)
SELECT 1, md5(random()::text || clock_timestamp()::text), m.id, m.id
FROM (SELECT COALESCE(max(id), 0) AS id FROM geo_jobs) m
ON CONFLICT (id) DO NOTHING`)
	if err != nil {
		return false, row, pgdb.Errorf("tracking", t.name, err, "create the geocursor_delivery row: %s", pgdb.Describe(err))
	}
	row, err = readDeliveryRow(ctx, t.pool)
	if err != nil {
		return false, row, pgdb.Errorf("tracking", t.name, err, "read the geocursor_delivery row: %s", pgdb.Describe(err))
	}
	return tag.RowsAffected() == 1, row, nil
}

// querier is what readDeliveryRow needs: a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func readDeliveryRow(ctx context.Context, q querier) (deliveryRow, error) {
	var r deliveryRow
	err := q.QueryRow(ctx, `
SELECT epoch, last_job_id, last_event_id, last_pushed_job_id, delivered, lost_in_redis, last_push_at, last_push_jobs,
       COALESCE((SELECT id FROM geo_jobs ORDER BY id DESC LIMIT 1), 0)
FROM geocursor_delivery WHERE id = 1`).
		Scan(&r.epoch, &r.lastJobID, &r.lastEventID, &r.lastPushedJobID, &r.delivered, &r.lostInRedis, &r.lastPushAt, &r.lastPushJobs, &r.maxJobID)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, errors.New("the geocursor_delivery row is missing")
	}
	return r, err
}

// deliveryRound is one turn of delivery: a transaction holding the
// delivery lock, the row as it found it, and the jobs after it.
type deliveryRound struct {
	tx   pgx.Tx
	row  deliveryRow
	jobs []deliveryJob
}

// beginRound opens a round: it waits for the delivery lock (another agent
// may be in its round), then reads the row and up to limit jobs after it,
// in ID order. Jobs commit in ID order (each batch allocates its IDs
// before it takes the fence lock, and batches commit one after the other
// under it), so no job can appear below one already read.
func (t *store) beginRound(ctx context.Context, limit int) (*deliveryRound, error) {
	tx, err := t.pool.Begin(ctx)
	if err != nil {
		return nil, pgdb.Errorf("tracking", t.name, err, "begin a delivery round: %s", pgdb.Describe(err))
	}
	r := &deliveryRound{tx: tx}
	ok := false
	defer func() {
		if !ok {
			r.abort()
		}
	}()
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '`+deliveryLockWait+`'`); err != nil {
		return nil, pgdb.Errorf("tracking", t.name, err, "begin a delivery round: %s", pgdb.Describe(err))
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, deliveryLock); err != nil {
		return nil, pgdb.Errorf("tracking", t.name, err, "wait for the delivery lock: %s", pgdb.Describe(err))
	}
	if r.row, err = readDeliveryRow(ctx, tx); err != nil {
		return nil, pgdb.Errorf("tracking", t.name, err, "read the geocursor_delivery row: %s", pgdb.Describe(err))
	}
	rows, err := tx.Query(ctx, `
SELECT id, event_id, kind, COALESCE(replicable_name, ''), COALESCE(event_name, ''), payload::text, created_at
FROM geo_jobs WHERE id > $1 ORDER BY id LIMIT $2`, r.row.lastJobID, limit)
	if err != nil {
		return nil, pgdb.Errorf("tracking", t.name, err, "read the jobs after %d: %s", r.row.lastJobID, pgdb.Describe(err))
	}
	for rows.Next() {
		var j deliveryJob
		var payload string
		if err := rows.Scan(&j.id, &j.eventID, &j.kind, &j.replicableName, &j.eventName, &payload, &j.createdAt); err != nil {
			rows.Close()
			return nil, pgdb.Errorf("tracking", t.name, err, "read the jobs after %d: %s", r.row.lastJobID, pgdb.Describe(err))
		}
		j.payload = []byte(payload)
		r.jobs = append(r.jobs, j)
	}
	if err := rows.Err(); err != nil {
		return nil, pgdb.Errorf("tracking", t.name, err, "read the jobs after %d: %s", r.row.lastJobID, pgdb.Describe(err))
	}
	ok = true
	return r, nil
}

// roundOutcome is what a round did, for its record.
type roundOutcome struct {
	// delivered are the IDs of the jobs handed to Redis (pushed now, or
	// found pushed by an earlier round).
	delivered []int64
	// pushedTop is the highest job ID pushed to Sidekiq, 0 for none.
	pushedTop int64
	// lostInRedis counts jobs Redis acknowledged once and has forgotten.
	lostInRedis int64
	// sidekiqJobs and cacheJobs count the delivered jobs by target.
	sidekiqJobs, cacheJobs int
}

// deliveredToSidekiq counts the jobs with IDs from..to that were recorded
// as delivered to Sidekiq: what a Redis that forgot that range lost. Cache
// invalidations in the range, and jobs written before delivery began, were
// never in Sidekiq's Redis.
func (r *deliveryRound) deliveredToSidekiq(ctx context.Context, t *store, from, to int64) (int64, error) {
	var n int64
	err := r.tx.QueryRow(ctx, `
SELECT count(*) FROM geo_jobs
WHERE id BETWEEN $1 AND $2 AND kind <> $3 AND delivered_at IS NOT NULL`, from, to, cursor.KindCacheInvalidation).Scan(&n)
	if err != nil {
		return 0, pgdb.Errorf("tracking", t.name, err, "count the jobs %d..%d delivered to Sidekiq: %s", from, to, pgdb.Describe(err))
	}
	return n, nil
}

// addLost counts n jobs as lost in Redis, outside any round: for a round
// that saw the loss and then failed after its push had moved Redis's
// watermark past it.
func (t *store) addLost(ctx context.Context, n int64) error {
	_, err := t.pool.Exec(ctx, `UPDATE geocursor_delivery SET lost_in_redis = lost_in_redis + $1, updated_at = clock_timestamp() WHERE id = 1`, n)
	if err != nil {
		return pgdb.Errorf("tracking", t.name, err, "count %d jobs lost in Redis: %s", n, pgdb.Describe(err))
	}
	return nil
}

// commit records the round: its jobs' delivered_at, and the row moved past
// every job the round read.
func (r *deliveryRound) commit(ctx context.Context, t *store, out roundOutcome) error {
	defer r.abort()
	last := r.jobs[len(r.jobs)-1]
	b := &pgx.Batch{}
	if len(out.delivered) > 0 {
		b.Queue(`UPDATE geo_jobs SET delivered_at = clock_timestamp() WHERE id = ANY($1) AND delivered_at IS NULL`, out.delivered)
	}
	b.Queue(`UPDATE geocursor_delivery
SET last_job_id = $1, last_event_id = $2, last_pushed_job_id = GREATEST(last_pushed_job_id, $3),
    delivered = delivered + $4, lost_in_redis = lost_in_redis + $5,
    last_push_at = clock_timestamp(), last_push_jobs = $6, updated_at = clock_timestamp()
WHERE id = 1`, last.id, last.eventID, out.pushedTop, len(out.delivered), out.lostInRedis, len(r.jobs))
	// What GitLab believes was processed follows what is in Redis.
	b.Queue(cursor.DeliveredEventLogState)
	if err := r.tx.SendBatch(ctx, b).Close(); err != nil {
		return pgdb.Errorf("tracking", t.name, err, "record the delivery of jobs %d..%d: %s", r.jobs[0].id, last.id, pgdb.Describe(err))
	}
	if err := r.tx.Commit(ctx); err != nil {
		return pgdb.Errorf("tracking", t.name, err, "record the delivery of jobs %d..%d: %s", r.jobs[0].id, last.id, pgdb.Describe(err))
	}
	return nil
}

// abort ends the round without recording anything; safe after commit.
func (r *deliveryRound) abort() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = r.tx.Rollback(ctx)
}

// listenJobs opens a connection of its own to the tracking database that
// listens for the notification a committed batch with jobs sends.
func (t *store) listenJobs(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, t.pool.Config().ConnConfig.Copy())
	if err != nil {
		return nil, pgdb.Errorf("tracking", t.name, err, "connect to listen for new jobs: %s", pgdb.Describe(err))
	}
	if _, err := conn.Exec(ctx, `LISTEN `+cursor.JobsChannel); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, pgdb.Errorf("tracking", t.name, err, "listen for new jobs: %s", pgdb.Describe(err))
	}
	return conn, nil
}

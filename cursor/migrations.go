package cursor

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// migrationLock is the advisory lock key every agent takes before it looks
// at or changes the schema, so that agents starting together apply each
// migration once, one after the other. The value is "geocurso" in ASCII; it
// only has to differ from any other application's key in the database.
const migrationLock int64 = 0x67656f637572736f

// migration is one schema version. Migrations are append-only: a released
// migration is never edited, a change is a new version.
type migration struct {
	version int
	name    string
	sql     string
	// needs is the oldest schema version an agent must know to run on a
	// database this migration was applied to (recorded as needs_version,
	// from schema 6 on): 0 when an agent of an earlier schema may go on
	// writing around it (it only adds what that agent can ignore). A
	// migration that changes what a batch must write sets it to its own
	// version, and the agents before it then refuse to start
	// (ErrSchemaNewer) instead of writing batches it would misread.
	needs int
}

// ErrSchemaNewer: the tracking schema was migrated by a newer agent that
// agents of this schema must not run beside (design section 14).
var ErrSchemaNewer = errors.New("tracking schema is newer than this agent can run on")

var migrations = []migration{
	{version: 1, name: "initial schema", sql: `
CREATE TABLE geo_registry (
    replicable_name text NOT NULL,
    model_record_id bigint NOT NULL,
    state text NOT NULL,
    last_event_id bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (replicable_name, model_record_id)
);

-- A deleted record leaves a tombstone so that a created or updated event
-- with a lower ID, seen late because it was a gap, cannot bring it back.
CREATE TABLE geo_registry_tombstones (
    replicable_name text NOT NULL,
    model_record_id bigint NOT NULL,
    last_event_id bigint NOT NULL,
    PRIMARY KEY (replicable_name, model_record_id)
);

CREATE TABLE geo_jobs (
    id bigserial PRIMARY KEY,
    event_id bigint NOT NULL UNIQUE,
    kind text NOT NULL,
    replicable_name text,
    model_record_id bigint,
    payload jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE geo_dead_letters (
    id bigserial PRIMARY KEY,
    event_id bigint NOT NULL UNIQUE,
    reason text NOT NULL,
    "row" jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The fence: the highest token that has committed a batch, and the position
-- that batch left, so that the next holder can go on even when the last one
-- died between its commit here and its release in the Raft group.
CREATE TABLE geocursor_fence (
    id int PRIMARY KEY CHECK (id = 1),
    token bigint NOT NULL,
    last_event_id bigint NOT NULL,
    last_event_date timestamptz,
    gaps jsonb NOT NULL DEFAULT '[]',
    updated_at timestamptz NOT NULL
);
INSERT INTO geocursor_fence (id, token, last_event_id, updated_at)
VALUES (1, 0, 0, clock_timestamp())
ON CONFLICT DO NOTHING;
`},
	{version: 2, name: "prune tombstones by event ID", sql: `
-- Every batch deletes the tombstones below the oldest open gap: they can no
-- longer guard against anything. The index keeps that a short range scan
-- while a long-open gap lets them pile up.
CREATE INDEX geo_registry_tombstones_last_event_id ON geo_registry_tombstones (last_event_id);
`},
	{version: 3, name: "delivery to GitLab and event_log_states", sql: `
-- What Geo::EventWorker is called with: the geo event's own name (kind is
-- sync for both created and updated), and when the job reached Redis.
ALTER TABLE geo_jobs ADD COLUMN event_name text;
ALTER TABLE geo_jobs ADD COLUMN delivered_at timestamptz;

-- How far delivery has come: every job with an id at or below
-- last_job_id has been handed to Redis, or skipped (a dead letter never
-- is a job). The row is created by the first agent that runs with a
-- delivery block, at the jobs written by then: those stay in geo_jobs.
-- epoch names this tracking database to the Redis it delivers to, whose
-- watermark is kept per epoch. last_push_at and last_push_jobs pace
-- delivery.rate_limit across all agents.
CREATE TABLE geocursor_delivery (
    id int PRIMARY KEY CHECK (id = 1),
    epoch text NOT NULL,
    started_after_job_id bigint NOT NULL,
    last_job_id bigint NOT NULL,
    last_event_id bigint NOT NULL DEFAULT 0,
    delivered bigint NOT NULL DEFAULT 0,
    last_pushed_job_id bigint NOT NULL DEFAULT 0,
    lost_in_redis bigint NOT NULL DEFAULT 0,
    last_push_at timestamptz,
    last_push_jobs int NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- GitLab's own table (its migrations create it the same way): the one row
-- is the site's cursor as GitLab reports it to the primary. geocursor keeps
-- it at the safe cursor. A site that ran GitLab's log cursor has it with
-- that cursor's last position, which a fresh geocursor continues from.
CREATE TABLE IF NOT EXISTS event_log_states (
    event_id bigint NOT NULL PRIMARY KEY,
    created_at timestamp without time zone
);

-- Whether the fence was ever positioned: a fresh tracking database starts
-- where source.start (or GitLab's event_log_states row) says.
ALTER TABLE geocursor_fence ADD COLUMN positioned boolean NOT NULL DEFAULT false;
UPDATE geocursor_fence SET positioned = true WHERE last_event_id > 0 OR token > 0;
`},
	{version: 4, name: "open gaps as rows", sql: `
-- The fence row carried the whole gap set as JSON, rewritten by every
-- batch: with 10,000 open gaps a few hundred kilobytes per commit. The set
-- is now one row per gap, a batch inserts and deletes what changed, and
-- the fence row keeps the count and a checksum (fsm.GapSum, set by the
-- next claim) that a batch's start is checked against.
CREATE TABLE geocursor_fence_gaps (
    id bigint PRIMARY KEY,
    first_seen bigint NOT NULL
);
INSERT INTO geocursor_fence_gaps (id, first_seen)
SELECT (g->>'id')::bigint, (g->>'first_seen')::bigint
FROM geocursor_fence f, jsonb_array_elements(f.gaps) g WHERE f.id = 1
ON CONFLICT DO NOTHING;
ALTER TABLE geocursor_fence ADD COLUMN gaps_count int NOT NULL DEFAULT 0;
ALTER TABLE geocursor_fence ADD COLUMN gaps_sum bigint;
UPDATE geocursor_fence SET gaps_count = jsonb_array_length(gaps), gaps = '[]';
-- fsm.GapSum of no gaps is 0; with gaps, the next claim computes it.
UPDATE geocursor_fence SET gaps_sum = 0 WHERE gaps_count = 0;
COMMENT ON COLUMN geocursor_fence.gaps IS 'unused since schema version 4: the open gaps are the rows of geocursor_fence_gaps';
-- Room on the page for the one row's new versions: its updates stay HOT.
ALTER TABLE geocursor_fence SET (fillfactor = 50);
`},
	{version: 5, name: "event_log_states follows delivery", sql: `
-- With a delivery row, event_log_states (what GitLab believes this site
-- processed) must not run ahead of the jobs in Sidekiq's Redis. Each batch
-- leaves a mark: the highest geo_jobs ID once it committed, and the safe
-- cursor then. Every event at or below a mark's safe cursor has its jobs at
-- or below its max_job_id, so once delivery has passed max_job_id the safe
-- cursor is delivered too. Batches that write no job share their mark.
CREATE TABLE geocursor_delivery_marks (
    max_job_id bigint PRIMARY KEY,
    safe_event_id bigint NOT NULL
);
`},
	{version: 6, name: "which agents may run on the schema", sql: `
-- A newer agent's migration records the oldest schema version an agent
-- must know to run on it (migration.needs); NULL: any agent may, as every
-- migration so far. An agent that finds a needs_version above the newest
-- schema it knows refuses to start, naming both; one that finds a newer
-- schema without it warns and runs.
ALTER TABLE geocursor_schema_migrations ADD COLUMN needs_version int;
`},
}

// migrate brings the tracking schema up to the newest version. Each
// migration runs in its own transaction under migrationLock: an agent that
// waited for the lock re-reads the applied versions and finds the work done.
func migrate(ctx context.Context, pool *pgxpool.Pool, logger hclog.Logger) error {
	applied, needs, err := appliedVersions(ctx, pool)
	if err != nil {
		return err
	}
	if err := checkSchema(applied, needs, logger); err != nil {
		return err
	}
	for _, m := range migrations {
		if applied[m.version] {
			continue
		}
		ran, err := apply(ctx, pool, m)
		if err != nil {
			return fmt.Errorf("migrate to version %d (%s): %w", m.version, m.name, err)
		}
		if ran {
			logger.Info("applied tracking schema migration", "version", m.version, "name", m.name)
		}
	}
	return nil
}

// checkSchema refuses a schema that a newer agent migrated and that this
// one must not run on (a needs_version above the newest version it knows),
// with an error naming both versions, and warns about one it may run on:
// a node of this release that restarts half-way through an upgrade to a
// release whose migrations only add still starts.
func checkSchema(applied map[int]bool, needs int, logger hclog.Logger) error {
	newest := 0
	for v := range applied {
		newest = max(newest, v)
	}
	known := migrations[len(migrations)-1].version
	if needs > known {
		return fmt.Errorf("%w: the tracking database's schema is at version %d and needs agents that know schema version %d or later; this agent knows schema version %d at most: run the newer release on this node",
			ErrSchemaNewer, newest, needs, known)
	}
	if newest > known {
		logger.Warn("tracking schema is newer than this agent", "schema_version", newest, "agent_version", known)
	}
	return nil
}

// appliedVersions creates the version table if needed and returns the
// versions recorded in it and the highest needs_version of them (0 for
// none).
func appliedVersions(ctx context.Context, pool *pgxpool.Pool) (applied map[int]bool, needs int, err error) {
	applied = make(map[int]bool)
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// CREATE TABLE IF NOT EXISTS is not safe against itself running
		// concurrently (both can pass the check); the lock makes it so.
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
			return fmt.Errorf("take the migration lock: %w", err)
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS geocursor_schema_migrations (
    version int PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
)`); err != nil {
			return fmt.Errorf("create geocursor_schema_migrations: %w", err)
		}
		// needs_version exists from schema 6 on: read through to_jsonb, so
		// the same query reads a table before it.
		rows, err := tx.Query(ctx, `SELECT version, coalesce((to_jsonb(m)->>'needs_version')::int, 0) FROM geocursor_schema_migrations m`)
		if err != nil {
			return fmt.Errorf("read geocursor_schema_migrations: %w", err)
		}
		type row struct{ Version, Needs int32 }
		versions, err := pgx.CollectRows(rows, pgx.RowToStructByPos[row])
		if err != nil {
			return fmt.Errorf("read geocursor_schema_migrations: %w", err)
		}
		for _, v := range versions {
			applied[int(v.Version)] = true
			needs = max(needs, int(v.Needs))
		}
		return nil
	})
	return applied, needs, err
}

// apply runs m unless another agent did while this one waited for the lock;
// ran tells which.
func apply(ctx context.Context, pool *pgxpool.Pool, m migration) (ran bool, err error) {
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLock); err != nil {
			return fmt.Errorf("take the migration lock: %w", err)
		}
		var done bool
		if err := tx.QueryRow(ctx,
			`SELECT EXISTS (SELECT 1 FROM geocursor_schema_migrations WHERE version = $1)`,
			m.version).Scan(&done); err != nil {
			return fmt.Errorf("check version: %w", err)
		}
		if done {
			return nil
		}
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx,
			`INSERT INTO geocursor_schema_migrations (version, applied_at) VALUES ($1, clock_timestamp())`,
			m.version); err != nil {
			return fmt.Errorf("record version: %w", err)
		}
		if m.needs > 0 {
			if _, err := tx.Exec(ctx, `UPDATE geocursor_schema_migrations SET needs_version = $2 WHERE version = $1`, m.version, m.needs); err != nil {
				return fmt.Errorf("record the schema version agents need: %w", err)
			}
		}
		ran = true
		return nil
	})
	return ran, err
}

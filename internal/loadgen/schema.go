package loadgen

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// SourceSchema is the part of GitLab's primary schema that geocursor reads
// (design.md section 5). Every table has its own sequence used as the
// column default, because gaps in geo_event_log come precisely from IDs
// that nextval handed out to transactions that had not committed yet.
//
// There are no foreign keys, unlike GitLab: tests must be able to write
// rows whose reference points nowhere to exercise dead letters.
//
// The statements are idempotent so that CreateSourceSchema can run against
// a database that already has the tables.
const SourceSchema = `
CREATE SEQUENCE IF NOT EXISTS geo_events_id_seq;
CREATE TABLE IF NOT EXISTS geo_events (
    id bigint DEFAULT nextval('geo_events_id_seq'::regclass) NOT NULL,
    replicable_name character varying(255) NOT NULL,
    event_name character varying(255) NOT NULL,
    payload jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone NOT NULL,
    CONSTRAINT geo_events_pkey PRIMARY KEY (id)
);
ALTER SEQUENCE geo_events_id_seq OWNED BY geo_events.id;

CREATE SEQUENCE IF NOT EXISTS geo_cache_invalidation_events_id_seq;
CREATE TABLE IF NOT EXISTS geo_cache_invalidation_events (
    id bigint DEFAULT nextval('geo_cache_invalidation_events_id_seq'::regclass) NOT NULL,
    key character varying NOT NULL,
    CONSTRAINT geo_cache_invalidation_events_pkey PRIMARY KEY (id)
);
ALTER SEQUENCE geo_cache_invalidation_events_id_seq OWNED BY geo_cache_invalidation_events.id;

CREATE SEQUENCE IF NOT EXISTS geo_event_log_id_seq;
CREATE TABLE IF NOT EXISTS geo_event_log (
    id bigint DEFAULT nextval('geo_event_log_id_seq'::regclass) NOT NULL,
    created_at timestamp without time zone NOT NULL,
    repository_updated_event_id bigint,
    repository_deleted_event_id bigint,
    cache_invalidation_event_id bigint,
    geo_event_id bigint,
    CONSTRAINT geo_event_log_pkey PRIMARY KEY (id)
);
ALTER SEQUENCE geo_event_log_id_seq OWNED BY geo_event_log.id;

-- The Geo sites, as GitLab's db/structure.sql has them (the columns
-- geocursor reads, and those without defaults): a primary and the
-- secondary the tests' agents run for (SecondarySite).
CREATE TABLE IF NOT EXISTS geo_nodes (
    id bigserial PRIMARY KEY,
    "primary" boolean DEFAULT false NOT NULL,
    enabled boolean DEFAULT true NOT NULL,
    url character varying NOT NULL,
    name character varying NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS index_geo_nodes_on_name ON geo_nodes USING btree (name);
INSERT INTO geo_nodes ("primary", url, name) VALUES
    (true, 'https://primary.example.com/', 'primary-1'),
    (false, 'https://secondary.example.com/', '` + SecondarySite + `')
ON CONFLICT (name) DO NOTHING;
`

// SecondarySite is the geo_nodes name of the secondary site whose agents
// the tests and tools run (gitlab.site_name).
const SecondarySite = "secondary-1"

// schemaLockKey serialises concurrent CreateSourceSchema calls: two
// sessions racing on CREATE TABLE IF NOT EXISTS can still fail with a
// duplicate key in the catalog.
const schemaLockKey = 0x67656f637572 // "geocur"

// Beginner starts transactions; *pgxpool.Pool, *pgx.Conn and pgx.Tx all
// satisfy it.
type Beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// CreateSourceSchema creates the source tables if they do not exist. It is
// safe to call repeatedly and from several processes at once.
func CreateSourceSchema(ctx context.Context, db Beginner) error {
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("create source schema: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(schemaLockKey)); err != nil {
		return fmt.Errorf("create source schema: take advisory lock: %w", err)
	}
	// No arguments: pgx uses the simple protocol, which accepts several
	// statements in one call.
	if _, err := tx.Exec(ctx, SourceSchema); err != nil {
		return fmt.Errorf("create source schema: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("create source schema: commit: %w", err)
	}
	return nil
}

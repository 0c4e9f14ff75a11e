package cursor

import (
	"context"
	"errors"
	"fmt"
	"github.com/geocursor/geocursor/internal/pgdb"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Source reads GitLab's Geo event log.
//
// It only ever runs plain SELECTs, so it works against a hot-standby replica:
// no writes, no temporary tables, no LISTEN. Every read uses the primary key
// of geo_event_log, so a poll costs an index probe however long the log is.
type Source struct {
	pool   *pgxpool.Pool
	name   string // host:port/dbname, for errors and logs; never the password
	logger hclog.Logger
}

// sourceTables are the tables the source reads, with the columns it uses. The
// check at open time selects exactly these, so a missing table, a missing
// column and a missing grant are all reported before the first batch.
var sourceTables = []struct{ table, columns string }{
	{"geo_event_log", "id, created_at, geo_event_id, cache_invalidation_event_id"},
	{"geo_events", "id, replicable_name, event_name, payload, created_at"},
	{"geo_cache_invalidation_events", "id, key"},
}

// OpenSource connects to the source database and checks that the event log
// tables exist and are readable. Its errors are one line that names the
// database (never the password) and, where it can, says what to fix.
func OpenSource(ctx context.Context, dsn string, logger hclog.Logger) (*Source, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	pool, name, err := pgdb.Open(ctx, "source", dsn, nil)
	if err != nil {
		return nil, err
	}
	s := &Source{pool: pool, name: name, logger: logger}
	if err := s.checkTables(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	logger.Info("connected to source database", "database", name)
	return s, nil
}

func (s *Source) checkTables(ctx context.Context) error {
	for _, t := range sourceTables {
		// LIMIT 0 plans the query, which checks the table, the columns and
		// the SELECT grant, without reading a row.
		q := "SELECT " + t.columns + " FROM " + t.table + " LIMIT 0"
		rows, err := s.pool.Query(ctx, q)
		if err == nil {
			rows.Close()
			err = rows.Err()
		}
		if err == nil {
			continue
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			switch pgErr.Code {
			case "42P01": // undefined_table
				return pgdb.Errorf("source", s.name, err, "table %s does not exist: point source.dsn at the primary's database (or a replica of it)", t.table)
			case "42703": // undefined_column
				return pgdb.Errorf("source", s.name, err, "table %s: %s: this does not look like GitLab's Geo event log", t.table, pgErr.Message)
			case "42501": // insufficient_privilege
				return pgdb.Errorf("source", s.name, err, "cannot read table %s: %s: grant SELECT on it to the user in source.dsn", t.table, pgErr.Message)
			}
		}
		return pgdb.Errorf("source", s.name, err, "check table %s: %s", t.table, pgdb.Describe(err))
	}
	return nil
}

// fetchQuery reads the next events after $1 (at most $2 of them) and the
// rows of the open gaps ($3) in one statement. The gap branch is bounded by
// id <= $1 so that a row is never returned twice, and it does not count
// against the limit: gaps are few and must be picked up as soon as they are
// visible, however far behind the cursor is.
//
// The referenced rows are joined LATERAL, each subquery fenced with OFFSET 0
// so the planner cannot flatten it into a plain join: it must look each row
// up by primary key. A plain LEFT JOIN lets it hash the whole
// geo_cache_invalidation_events table on every batch, because that table is
// small next to the others (50,000 rows behind a 1,000,000 event log): 8 of
// the 10 ms the fetch took, where the lookups take 2 ms in all.
const fetchQuery = `
SELECT l.id, l.created_at, l.geo_event_id, l.cache_invalidation_event_id,
       e.id, e.replicable_name, e.event_name, e.payload::text, e.created_at,
       c.id, c.key
FROM (
    (SELECT id, created_at, geo_event_id, cache_invalidation_event_id
     FROM geo_event_log WHERE id > $1 ORDER BY id LIMIT $2)
    UNION ALL
    (SELECT id, created_at, geo_event_id, cache_invalidation_event_id
     FROM geo_event_log WHERE id = ANY($3::bigint[]) AND id <= $1)
) AS l
LEFT JOIN LATERAL (
    SELECT id, replicable_name, event_name, payload, created_at
    FROM geo_events WHERE id = l.geo_event_id OFFSET 0
) AS e ON true
LEFT JOIN LATERAL (
    SELECT id, key
    FROM geo_cache_invalidation_events WHERE id = l.cache_invalidation_event_id OFFSET 0
) AS c ON true
ORDER BY l.id`

// Fetch returns up to limit events with an ID above after, in ID order, plus
// every event whose ID is in gaps (those do not count against limit), all
// sorted by ID. Gap IDs that are still not visible are simply absent.
func (s *Source) Fetch(ctx context.Context, after int64, gaps []int64, limit int) ([]Event, error) {
	if limit < 1 {
		return nil, fmt.Errorf("fetch events after %d: limit must be positive, got %d", after, limit)
	}
	if gaps == nil {
		gaps = []int64{}
	}
	rows, err := s.pool.Query(ctx, fetchQuery, after, limit, gaps)
	if err != nil {
		return nil, fmt.Errorf("fetch events after %d: %w", after, err)
	}
	events := make([]Event, 0, min(limit, 1024)+len(gaps))
	for rows.Next() {
		var (
			ev                Event
			geoID, cacheID    *int64
			geoRN, geoEN, key *string
			geoPayload        []byte
			geoCreated        *time.Time
		)
		if err := rows.Scan(&ev.ID, &ev.CreatedAt, &ev.GeoEventID, &ev.CacheInvalidationEventID,
			&geoID, &geoRN, &geoEN, &geoPayload, &geoCreated, &cacheID, &key); err != nil {
			rows.Close()
			return nil, fmt.Errorf("fetch events after %d: read row: %w", after, err)
		}
		ev.CreatedAt = ev.CreatedAt.UTC()
		if geoID != nil {
			ev.GeoEvent = &GeoEvent{ID: *geoID, Payload: geoPayload}
			if geoRN != nil {
				ev.GeoEvent.ReplicableName = *geoRN
			}
			if geoEN != nil {
				ev.GeoEvent.EventName = *geoEN
			}
			if geoCreated != nil {
				ev.GeoEvent.CreatedAt = geoCreated.UTC()
			}
		}
		if cacheID != nil {
			ev.CacheInvalidation = &CacheInvalidation{ID: *cacheID}
			if key != nil {
				ev.CacheInvalidation.Key = *key
			}
		}
		events = append(events, ev)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("fetch events after %d: %w", after, err)
	}
	return events, nil
}

// pendingQuery is the idle poll: is there an event after $1, or one of the
// gaps $2? Every idle peer runs it every poll interval, so it must stay two
// primary-key probes whatever the plan. "EXISTS (... WHERE id > $1)" does
// not: once pgx's prepared statement gets PostgreSQL's generic plan (after
// five runs), that is a sequential scan expecting a third of the table to
// match, and at the head of a 1,000,000 event log it reads every row to find
// none, 50 ms per poll. ORDER BY id LIMIT 1 in a scalar subquery (EXISTS
// would drop both) makes the index the only sensible plan.
const pendingQuery = `
SELECT (SELECT id FROM geo_event_log WHERE id > $1 ORDER BY id LIMIT 1) IS NOT NULL
    OR EXISTS (SELECT 1 FROM geo_event_log WHERE id = ANY($2::bigint[]))`

// visibleQuery returns which of the IDs $1 are in the log: an index-only
// probe per ID that reads no row data.
const visibleQuery = `SELECT id FROM geo_event_log WHERE id = ANY($1::bigint[]) ORDER BY id`

// oldestQuery reads the oldest event the primary still keeps.
const oldestQuery = `SELECT id FROM geo_event_log ORDER BY id LIMIT 1`

// headQuery reads the newest event, for the status.
const headQuery = `SELECT id, created_at FROM geo_event_log ORDER BY id DESC LIMIT 1`

// Visible returns the IDs of ids that are in the log now, in ID order: the
// probe of a large gap set, which a batch fetches only once they show.
func (s *Source) Visible(ctx context.Context, ids []int64) ([]int64, error) {
	rows, err := s.pool.Query(ctx, visibleQuery, ids)
	if err != nil {
		return nil, fmt.Errorf("probe %d open gaps: %w", len(ids), err)
	}
	found, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("probe %d open gaps: %w", len(ids), err)
	}
	return found, nil
}

// Pending reports whether there is any event after the cursor or in one of
// the open gaps. It is the idle poll, run without the lease, so it is two
// primary-key probes and reads no row data.
func (s *Source) Pending(ctx context.Context, after int64, gaps []int64) (bool, error) {
	if gaps == nil {
		gaps = []int64{}
	}
	var pending bool
	err := s.pool.QueryRow(ctx, pendingQuery, after, gaps).Scan(&pending)
	if err != nil {
		return false, fmt.Errorf("check for events after %d: %w", after, err)
	}
	return pending, nil
}

// Head returns the highest event ID in the source and its created_at, or
// (0, zero time) when the log is empty. It is used to report lag.
func (s *Source) Head(ctx context.Context) (int64, time.Time, error) {
	var (
		id        int64
		createdAt time.Time
	)
	err := s.pool.QueryRow(ctx, headQuery).Scan(&id, &createdAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, time.Time{}, nil
	}
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("read the newest event: %w", err)
	}
	return id, createdAt.UTC(), nil
}

// Oldest returns the lowest event ID in the source, 0 when the log is
// empty: the primary prunes its log from below (Geo::PruneEventLogWorker).
func (s *Source) Oldest(ctx context.Context) (int64, error) {
	var id int64
	err := s.pool.QueryRow(ctx, oldestQuery).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read the oldest event: %w", err)
	}
	return id, nil
}

// DB returns the source's pool, for the packages that read GitLab's other
// tables there (gitlab: geo_nodes).
func (s *Source) DB() *pgxpool.Pool { return s.pool }

// Close closes the connections. It waits for queries in flight to finish.
func (s *Source) Close() {
	s.pool.Close()
}

// EventDate returns the created_at of event id, or the zero time when the
// source has no such event.
func (s *Source) EventDate(ctx context.Context, id int64) (time.Time, error) {
	var at time.Time
	err := s.pool.QueryRow(ctx, `SELECT created_at FROM geo_event_log WHERE id = $1`, id).Scan(&at)
	if errors.Is(err, pgx.ErrNoRows) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("read event %d: %w", id, err)
	}
	return at.UTC(), nil
}

// CountBetween counts the events with IDs in after+1..upTo.
func (s *Source) CountBetween(ctx context.Context, after, upTo int64) (int64, error) {
	var n int64
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM geo_event_log WHERE id > $1 AND id <= $2`, after, upTo).Scan(&n); err != nil {
		return 0, fmt.Errorf("count the events %d..%d: %w", after+1, upTo, err)
	}
	return n, nil
}

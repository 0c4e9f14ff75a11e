package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/cursor"
)

// The drain's ceiling (issue 13, target 1): what the tracking database
// takes from one connection writing the rows a drain writes, geo_jobs
// with COPY and the registry with one set-based upsert from arrays, one
// transaction per 1,000 events, with the fence row moved in each, and no
// source reads (the rows are read before the clock starts) and no Raft.

const ceilingMethod = "one connection; the backlog's rows are read from the source before timing; per 1,000 events one " +
	"transaction: COPY into geo_jobs, one INSERT ... SELECT unnest(...) ON CONFLICT upsert of geo_registry (one row per key, " +
	"the key's last event), one UPDATE of geocursor_fence; on a fresh tracking database migrated by geocursor; the rate " +
	"is events / wall time of the loop."

// ceilingRow is one event as a drain writes it.
type ceilingRow struct {
	eventID    int64
	kind       string
	replicable *string
	eventName  *string
	model      *int64
	payload    string
}

// loadCeilingRows reads the backlog 1..head as the drain would turn it
// into jobs (dead letters and cache invalidations as jobs of their kind).
func loadCeilingRows(ctx context.Context, source *pgxpool.Pool, head int64) ([]ceilingRow, error) {
	rows, err := source.Query(ctx, `
SELECT l.id, e.replicable_name, e.event_name, e.payload::text, (e.payload->>'model_record_id')::bigint, c.key
FROM geo_event_log l
LEFT JOIN geo_events e ON e.id = l.geo_event_id
LEFT JOIN geo_cache_invalidation_events c ON c.id = l.cache_invalidation_event_id
WHERE l.id <= $1 ORDER BY l.id`, head)
	if err != nil {
		return nil, err
	}
	out := make([]ceilingRow, 0, head)
	var (
		id           int64
		name, event  *string
		payload, key *string
		model        *int64
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &name, &event, &payload, &model, &key}, func() error {
		r := ceilingRow{eventID: id, replicable: name, eventName: event, model: model}
		switch {
		case key != nil:
			r.kind, r.payload = cursor.KindCacheInvalidation, fmt.Sprintf(`{"key": %q}`, *key)
		case event == nil:
			return nil
		case *event == "deleted":
			r.kind, r.payload = cursor.KindDelete, *payload
		case *event == "created" || *event == "updated":
			r.kind, r.payload = cursor.KindSync, *payload
		default:
			r.kind, r.payload = *event, *payload
		}
		out = append(out, r)
		return nil
	})
	return out, err
}

// ceiling writes rows into the tracking database at dsn and returns the
// rate.
func (b *bench) ceiling(ctx context.Context, dsn string, rows []ceilingRow, n int) (drainRun, error) {
	tr, err := cursor.OpenTracking(ctx, dsn, nil) // the schema, as geocursor makes it
	if err != nil {
		return drainRun{}, err
	}
	tr.Close()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return drainRun{}, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	start := time.Now()
	for lo := 0; lo < len(rows); lo += batchSize {
		hi := min(lo+batchSize, len(rows))
		if err := ceilingBatch(ctx, conn, rows[lo:hi]); err != nil {
			return drainRun{}, fmt.Errorf("ceiling batch at event %d: %w", rows[lo].eventID, err)
		}
	}
	secs := time.Since(start).Seconds()
	r := drainRun{MeasuredEvents: int64(len(rows)), Seconds: round3(secs), WallS: round(secs), EventsPerS: round(float64(len(rows)) / secs)}
	b.logf("drain: ceiling %d wrote %d events in %.3fs: %.0f events/s", n, len(rows), secs, r.EventsPerS)
	return r, nil
}

func ceilingBatch(ctx context.Context, conn *pgx.Conn, batch []ceilingRow) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"geo_jobs"},
		[]string{"event_id", "kind", "replicable_name", "event_name", "model_record_id", "payload"},
		pgx.CopyFromSlice(len(batch), func(i int) ([]any, error) {
			r := batch[i]
			return []any{r.eventID, r.kind, r.replicable, r.eventName, r.model, r.payload}, nil
		})); err != nil {
		return fmt.Errorf("copy geo_jobs: %w", err)
	}
	type key struct {
		name  string
		model int64
	}
	type op struct {
		id  int64
		del bool
	}
	last := map[key]op{}
	for _, r := range batch {
		if (r.kind == cursor.KindSync || r.kind == cursor.KindDelete) && r.replicable != nil && r.model != nil {
			last[key{*r.replicable, *r.model}] = op{r.eventID, r.kind == cursor.KindDelete}
		}
	}
	var names, models, ids, dNames, dModels, dIDs = []string{}, []int64{}, []int64{}, []string{}, []int64{}, []int64{}
	for k, o := range last {
		if o.del {
			dNames, dModels, dIDs = append(dNames, k.name), append(dModels, k.model), append(dIDs, o.id)
		} else {
			names, models, ids = append(names, k.name), append(models, k.model), append(ids, o.id)
		}
	}
	pb := &pgx.Batch{}
	pb.Queue(`DELETE FROM geo_registry r
USING unnest($1::text[], $2::bigint[], $3::bigint[]) AS d(replicable_name, model_record_id, event_id)
WHERE r.replicable_name = d.replicable_name AND r.model_record_id = d.model_record_id AND r.last_event_id < d.event_id`, dNames, dModels, dIDs)
	pb.Queue(`INSERT INTO geo_registry (replicable_name, model_record_id, state, last_event_id, updated_at)
SELECT u.replicable_name, u.model_record_id, 'pending', u.event_id, clock_timestamp()
FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS u(replicable_name, model_record_id, event_id)
ON CONFLICT (replicable_name, model_record_id) DO UPDATE
SET state = 'pending', last_event_id = EXCLUDED.last_event_id, updated_at = EXCLUDED.updated_at
WHERE geo_registry.last_event_id < EXCLUDED.last_event_id`, names, models, ids)
	pb.Queue(`UPDATE geocursor_fence SET token = 1, last_event_id = $1, gaps_count = 0, positioned = true, updated_at = clock_timestamp() WHERE id = 1`,
		batch[len(batch)-1].eventID)
	if err := tx.SendBatch(ctx, pb).Close(); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

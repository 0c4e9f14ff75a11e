package cursor

import (
	"math"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The statements that write a batch's effects: one statement per kind of
// write, each taking its rows as arrays, so that a batch of any size is a
// handful of statements sent in one round trip. The counts land in res.

// queueRows adds the inserts of eff's jobs and dead letters to pb. They
// take no lock another batch could want: each event is in one batch only.
func queueRows(pb *pgx.Batch, eff effects, res *CommitResult) {
	if len(eff.Jobs) > 0 {
		n := len(eff.Jobs)
		ids, kinds, names, events, models, payloads := make([]int64, n), make([]string, n), make([]*string, n), make([]*string, n), make([]*int64, n), make([]string, n)
		for i, j := range eff.Jobs {
			ids[i], kinds[i], names[i], events[i], models[i], payloads[i] = j.EventID, j.Kind, j.ReplicableName, j.EventName, j.ModelRecordID, string(j.Payload)
		}
		pb.Queue(`INSERT INTO geo_jobs (event_id, kind, replicable_name, event_name, model_record_id, payload)
SELECT j.event_id, j.kind, j.replicable_name, j.event_name, j.model_record_id, j.payload::jsonb
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[])
    AS j(event_id, kind, replicable_name, event_name, model_record_id, payload)
ORDER BY j.event_id`, ids, kinds, names, events, models, payloads).
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

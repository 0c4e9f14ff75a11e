package cursor

import (
	"context"
	"github.com/geocursor/geocursor/internal/pgdb"

	"github.com/jackc/pgx/v5"

	"github.com/geocursor/geocursor/api"
)

// RecentDeadLetters reads the newest limit rows of geo_dead_letters, newest
// first, for the status page (cluster.DeadLetterSource). It walks the
// primary key backwards, so it costs the same however many there are.
func (t *Tracking) RecentDeadLetters(ctx context.Context, limit int) ([]api.DeadLetter, error) {
	rows, err := t.pool.Query(ctx,
		`SELECT event_id, reason, created_at FROM geo_dead_letters ORDER BY id DESC LIMIT $1`, limit)
	if err != nil {
		return nil, pgdb.Errorf("tracking", t.name, err, "read geo_dead_letters: %s", pgdb.Describe(err))
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (api.DeadLetter, error) {
		var d api.DeadLetter
		err := row.Scan(&d.EventID, &d.Reason, &d.CreatedAt)
		d.CreatedAt = d.CreatedAt.UTC()
		return d, err
	})
	if err != nil {
		return nil, pgdb.Errorf("tracking", t.name, err, "read geo_dead_letters: %s", pgdb.Describe(err))
	}
	return out, nil
}

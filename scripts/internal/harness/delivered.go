package harness

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/cursor"
	"github.com/geocursor/geocursor/delivery"
	"github.com/geocursor/geocursor/internal/sidekiqserver"
)

// Delivered compares the jobs of geo events in geo_jobs with what Sidekiq
// performed: each exactly once, matched by the job ID geocursor gives it
// (delivery.JobJID). With CheckExactlyOnce (source to geo_jobs) it closes
// the chain from the source to GitLab's workers.
type Delivered struct {
	// Jobs counts the geo_jobs rows of geo events since delivery began.
	Jobs int64
	// Performed counts what Sidekiq performed.
	Performed int64
	// Missing counts jobs not performed (yet); Doubled the extra runs;
	// Unknown the runs of jobs geo_jobs does not have.
	Missing, Doubled, Unknown int64
}

// OK reports whether nothing was performed twice or invented.
func (d Delivered) OK() bool { return d.Doubled == 0 && d.Unknown == 0 }

func (d Delivered) String() string {
	verdict := "OK: every job performed exactly once"
	switch {
	case !d.OK():
		verdict = "FAILED"
	case d.Missing > 0:
		verdict = fmt.Sprintf("OK so far: nothing doubled, %d not performed yet", d.Missing)
	}
	return fmt.Sprintf("%d jobs of geo events in geo_jobs, %d performed by Sidekiq; missing %d, doubled %d, unknown %d: %s",
		d.Jobs, d.Performed, d.Missing, d.Doubled, d.Unknown, verdict)
}

// CheckDelivered reads the jobs to deliver from the tracking database and
// matches them with performed.
func CheckDelivered(ctx context.Context, tracking *pgxpool.Pool, performed []sidekiqserver.Performed) (Delivered, error) {
	var d Delivered
	var epoch string
	var start int64
	if err := tracking.QueryRow(ctx, `SELECT epoch, started_after_job_id FROM geocursor_delivery WHERE id = 1`).Scan(&epoch, &start); err != nil {
		return d, fmt.Errorf("read geocursor_delivery: %w", err)
	}
	rows, err := tracking.Query(ctx, `SELECT id FROM geo_jobs WHERE kind <> $1 AND id > $2`, cursor.KindCacheInvalidation, start)
	if err != nil {
		return d, fmt.Errorf("read geo_jobs: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return d, fmt.Errorf("read geo_jobs: %w", err)
	}
	want := make(map[string]int, len(ids))
	for _, id := range ids {
		want[delivery.JobJID(epoch, id)] = 0
	}
	d.Jobs, d.Performed = int64(len(ids)), int64(len(performed))
	for _, p := range performed {
		n, ok := want[p.JID]
		if !ok {
			d.Unknown++
			continue
		}
		if n > 0 {
			d.Doubled++
		}
		want[p.JID] = n + 1
	}
	for _, n := range want {
		if n == 0 {
			d.Missing++
		}
	}
	return d, nil
}

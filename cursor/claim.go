package cursor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Claim records token as the newest grant in the fence row and returns the
// position there, in one transaction. A new holder claims before it reads
// anything, so from that moment a holder with an older token (paused, cut
// off from Raft, or revoked) can no longer commit: without the claim it
// could still commit until the new holder's first batch. Refused with
// ErrFenced if the row already holds a newer token.
func (t *Tracking) Claim(ctx context.Context, token uint64) (Fence, error) {
	if token > math.MaxInt64 {
		return Fence{}, fmt.Errorf("claim fence (token %d): token does not fit in a bigint", token)
	}
	var (
		prev, lastID int64
		lastDate     *time.Time
		gapsJSON     string
	)
	err := t.pool.QueryRow(ctx, `
WITH prev AS (SELECT token FROM geocursor_fence WHERE id = 1 FOR UPDATE)
UPDATE geocursor_fence AS f
SET token = GREATEST(f.token, $1), updated_at = clock_timestamp()
FROM prev
WHERE f.id = 1
RETURNING prev.token, f.last_event_id, f.last_event_date, f.gaps::text`, int64(token)).
		Scan(&prev, &lastID, &lastDate, &gapsJSON)
	if err != nil {
		return Fence{}, dbErrorf("tracking", t.name, err, "claim the fence row (token %d): %s", token, describe(err))
	}
	if uint64(prev) > token {
		return Fence{}, fmt.Errorf("%w: token %d is older than token %d in the tracking database", ErrFenced, token, prev)
	}
	// The fence now holds token (the claim raised it to at least that).
	f, err := fenceFromRow(int64(token), lastID, lastDate, gapsJSON)
	if err != nil {
		return Fence{}, fmt.Errorf("claim the fence row (token %d): %w", token, err)
	}
	return f, nil
}

// IsPermanent reports whether a database error is one that retrying cannot
// fix: bad credentials, a database, table or column that does not exist, a
// missing grant, or a DSN that does not parse. Network failures, timeouts
// and a server that is starting or shutting down are not permanent.
func IsPermanent(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "28": // invalid authorization
			return true
		}
		switch pgErr.Code {
		case "3D000", "42P01", "42703", "42501":
			return true
		}
		return false
	}
	var pcErr *pgconn.ParseConfigError
	return errors.As(err, &pcErr)
}

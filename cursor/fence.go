package cursor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/geocursor/geocursor/fsm"
)

// ErrFenced is returned (wrapped, with the details) when the tracking
// database has already seen a newer token than the batch's, or stands at a
// different position than the batch started from. Nothing was written. The
// holder must stop: its lease is gone, or another holder has moved the
// cursor; the next holder adopts the position in the fence row.
var ErrFenced = errors.New("fenced")

// Fence is the fence row: the highest token that claimed the tracking
// database or committed a batch there, and the position the last batch
// left. It is the truth about where processing stands: a holder can die
// between its commit here and its release-and-advance in Raft.
type Fence struct {
	Token    uint64
	Position Position
}

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

// Fence reads the fence row. A new holder compares it with the cursor in the
// Raft group: if the previous holder died after its commit here but before
// its release-and-advance, the fence is ahead and is the truth.
func (t *Tracking) Fence(ctx context.Context) (Fence, error) {
	var (
		token, lastID int64
		lastDate      *time.Time
		gapsJSON      string
	)
	err := t.pool.QueryRow(ctx,
		`SELECT token, last_event_id, last_event_date, gaps::text FROM geocursor_fence WHERE id = 1`).
		Scan(&token, &lastID, &lastDate, &gapsJSON)
	if err != nil {
		return Fence{}, fmt.Errorf("read the fence row: %w", err)
	}
	f, err := fenceFromRow(token, lastID, lastDate, gapsJSON)
	if err != nil {
		return Fence{}, fmt.Errorf("read the fence row: %w", err)
	}
	return f, nil
}

// fenceFromRow builds a Fence from the columns of the fence row.
func fenceFromRow(token, lastID int64, lastDate *time.Time, gapsJSON string) (Fence, error) {
	gaps, err := decodeGaps(gapsJSON)
	if err != nil {
		return Fence{}, err
	}
	f := Fence{Token: uint64(token), Position: Position{LastEventID: lastID, Gaps: gaps}}
	if lastDate != nil {
		f.Position.LastEventDate = lastDate.UTC()
	}
	return f, nil
}

// checkFence refuses the batch unless the fence row, read with its lock
// held, is where the batch starts. Holding the row lock to the end of the
// transaction is what makes the check and the writes one step: a stale
// holder blocked on the lock sees the newer row once it is released.
func checkFence(row pgx.Row, b Batch) error {
	var (
		token, lastID int64
		gapsJSON      string
	)
	if err := row.Scan(&token, &lastID, &gapsJSON); err != nil {
		return fmt.Errorf("commit batch (token %d): lock the fence row: %w", b.Token, err)
	}
	if uint64(token) > b.Token {
		return fmt.Errorf("%w: token %d is older than token %d in the tracking database", ErrFenced, b.Token, token)
	}
	if lastID != b.Start.LastEventID {
		return fmt.Errorf("%w: batch starts at event %d but the tracking database is at %d", ErrFenced, b.Start.LastEventID, lastID)
	}
	gaps, err := decodeGaps(gapsJSON)
	if err != nil {
		return fmt.Errorf("commit batch (token %d): read the fence row: %w", b.Token, err)
	}
	if id, differ := gapsDiffer(b.Start.Gaps, gaps); differ {
		return fmt.Errorf("%w: batch starts at event %d with %d open gaps but the tracking database has %d (they differ at gap %d)",
			ErrFenced, b.Start.LastEventID, len(b.Start.Gaps), len(gaps), id)
	}
	return nil
}

// decodeGaps reads the fence row's gaps column.
func decodeGaps(s string) ([]fsm.Gap, error) {
	var gaps []fsm.Gap
	if err := json.Unmarshal([]byte(s), &gaps); err != nil {
		return nil, fmt.Errorf("decode gaps: %w", err)
	}
	if len(gaps) == 0 {
		return nil, nil
	}
	sort.Slice(gaps, func(i, j int) bool { return gaps[i].ID < gaps[j].ID })
	return gaps, nil
}

// encodeGaps is the fence row's gaps column for gaps: never null.
func encodeGaps(gaps []fsm.Gap) (string, error) {
	if gaps == nil {
		gaps = []fsm.Gap{}
	}
	b, err := json.Marshal(gaps)
	return string(b), err
}

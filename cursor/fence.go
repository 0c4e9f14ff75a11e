package cursor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/geocursor/geocursor/internal/pgdb"
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
	// Positioned is false in a fresh tracking database until the first
	// holder places the fence where processing begins (Place).
	Positioned bool
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
	var f Fence
	err := pgx.BeginFunc(ctx, t.pool, func(tx pgx.Tx) error {
		var (
			prev, lastID int64
			lastDate     *time.Time
			gapsJSON     string
			positioned   bool
			count        int
			sum          *int64
		)
		err := tx.QueryRow(ctx, `
WITH prev AS (SELECT token FROM geocursor_fence WHERE id = 1 FOR UPDATE)
UPDATE geocursor_fence AS f
SET token = GREATEST(f.token, $1), updated_at = clock_timestamp()
FROM prev
WHERE f.id = 1
RETURNING prev.token, f.last_event_id, f.last_event_date, `+FenceGapsSQL+`, f.positioned, f.gaps_count, f.gaps_sum`, int64(token)).
			Scan(&prev, &lastID, &lastDate, &gapsJSON, &positioned, &count, &sum)
		if err != nil {
			return pgdb.Errorf("tracking", t.name, err, "claim the fence row (token %d): %s", token, pgdb.Describe(err))
		}
		if uint64(prev) > token {
			return fmt.Errorf("%w: token %d is older than token %d in the tracking database", ErrFenced, token, prev)
		}
		// The fence now holds token (the claim raised it to at least that).
		if f, err = fenceFromRow(int64(token), lastID, lastDate, gapsJSON); err != nil {
			return fmt.Errorf("claim the fence row (token %d): %w", token, err)
		}
		f.Positioned = positioned
		// The count and checksum a batch is checked against: set here after
		// the upgrade to schema 4, and checked against the rows otherwise.
		want := int64(fsm.GapSum(f.Position.Gaps))
		switch {
		case sum == nil:
			if _, err := tx.Exec(ctx, `UPDATE geocursor_fence SET gaps_count = $1, gaps_sum = $2 WHERE id = 1`, len(f.Position.Gaps), want); err != nil {
				return pgdb.Errorf("tracking", t.name, err, "claim the fence row (token %d): %s", token, pgdb.Describe(err))
			}
		case *sum != want || count != len(f.Position.Gaps):
			return fmt.Errorf("claim the fence row (token %d): the fence row counts %d open gaps with checksum %x, geocursor_fence_gaps holds %d with %x: was one of them changed by hand?",
				token, count, *sum, len(f.Position.Gaps), want)
		}
		return nil
	})
	if err != nil {
		return Fence{}, err
	}
	return f, nil
}

// FenceGapsSQL is an SQL expression for the fence's open gaps, as the JSON
// array [{"id", "first_seen"}, ...] in ID order (the harness reads them
// with it, too).
const FenceGapsSQL = `(SELECT coalesce(jsonb_agg(jsonb_build_object('id', g.id, 'first_seen', g.first_seen) ORDER BY g.id), '[]'::jsonb)::text FROM geocursor_fence_gaps g)`

// Place positions the fence row of a fresh tracking database at start,
// under token, the grant that claimed it. Refused with ErrFenced if the
// row was positioned meanwhile or holds another token: the holder that did
// it goes on from there.
func (t *Tracking) Place(ctx context.Context, token uint64, start Position) (Fence, error) {
	if token > math.MaxInt64 {
		return Fence{}, fmt.Errorf("place fence (token %d): token does not fit in a bigint", token)
	}
	lastDate := start.dateColumn()
	err := pgx.BeginFunc(ctx, t.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
UPDATE geocursor_fence
SET last_event_id = $2, last_event_date = $3, gaps_count = $4, gaps_sum = $5, positioned = true, updated_at = clock_timestamp()
WHERE id = 1 AND token = $1 AND NOT positioned`, int64(token), start.LastEventID, lastDate, len(start.Gaps), int64(fsm.GapSum(start.Gaps)))
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("%w: the fence row was placed, or claimed by a newer token, before token %d placed it", ErrFenced, token)
		}
		return replaceGaps(ctx, tx, start.Gaps)
	})
	if errors.Is(err, ErrFenced) {
		return Fence{}, err
	}
	if err != nil {
		return Fence{}, pgdb.Errorf("tracking", t.name, err, "place the fence row at event %d (token %d): %s", start.LastEventID, token, pgdb.Describe(err))
	}
	return Fence{Token: token, Position: start, Positioned: true}, nil
}

// GitLabCursor reads GitLab's event_log_states: the event ID of its one
// row (the highest, should there be several), and whether there is one.
func (t *Tracking) GitLabCursor(ctx context.Context) (int64, bool, error) {
	var id int64
	err := t.pool.QueryRow(ctx, `SELECT event_id FROM event_log_states ORDER BY event_id DESC LIMIT 1`).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, pgdb.Errorf("tracking", t.name, err, "read event_log_states: %s", pgdb.Describe(err))
	}
	return id, true, nil
}

// Fence reads the fence row. A new holder compares it with the cursor in the
// Raft group: if the previous holder died after its commit here but before
// its release-and-advance, the fence is ahead and is the truth.
func (t *Tracking) Fence(ctx context.Context) (Fence, error) {
	var (
		token, lastID int64
		lastDate      *time.Time
		gapsJSON      string
		positioned    bool
	)
	err := t.pool.QueryRow(ctx,
		`SELECT token, last_event_id, last_event_date, `+FenceGapsSQL+`, positioned FROM geocursor_fence WHERE id = 1`).
		Scan(&token, &lastID, &lastDate, &gapsJSON, &positioned)
	if err != nil {
		return Fence{}, fmt.Errorf("read the fence row: %w", err)
	}
	f, err := fenceFromRow(token, lastID, lastDate, gapsJSON)
	if err != nil {
		return Fence{}, fmt.Errorf("read the fence row: %w", err)
	}
	f.Positioned = positioned
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
		count         int
		sum           *int64
	)
	if err := row.Scan(&token, &lastID, &count, &sum); err != nil {
		return fmt.Errorf("commit batch (token %d): lock the fence row: %w", b.Token, err)
	}
	if uint64(token) > b.Token {
		return fmt.Errorf("%w: token %d is older than token %d in the tracking database", ErrFenced, b.Token, token)
	}
	if lastID != b.Start.LastEventID {
		return fmt.Errorf("%w: batch starts at event %d but the tracking database is at %d", ErrFenced, b.Start.LastEventID, lastID)
	}
	if count != len(b.Start.Gaps) {
		return fmt.Errorf("%w: batch starts at event %d with %d open gaps but the tracking database has %d",
			ErrFenced, b.Start.LastEventID, len(b.Start.Gaps), count)
	}
	if want := int64(fsm.GapSum(b.Start.Gaps)); sum == nil || *sum != want {
		return fmt.Errorf("%w: batch starts at event %d with %d open gaps but the tracking database has %d others (checksum %s, the batch's %x)",
			ErrFenced, b.Start.LastEventID, len(b.Start.Gaps), count, describeSum(sum), uint64(want))
	}
	return nil
}

// describeSum shows the fence row's gap checksum, unset until the first
// claim after an upgrade to schema 4.
func describeSum(sum *int64) string {
	if sum == nil {
		return "not yet set"
	}
	return fmt.Sprintf("%x", uint64(*sum))
}

// checkFenceQuery locks the fence row and reads what checkFence compares.
const checkFenceQuery = `SELECT token, last_event_id, gaps_count, gaps_sum FROM geocursor_fence WHERE id = 1 FOR UPDATE`

// queueGapChanges adds to pb the changes to geocursor_fence_gaps from the
// open gaps of from to those of to.
func queueGapChanges(pb *pgx.Batch, from, to []fsm.Gap) {
	closed, opened := gapDelta(from, to)
	if len(closed) > 0 {
		pb.Queue(`DELETE FROM geocursor_fence_gaps WHERE id = ANY($1)`, closed)
	}
	if len(opened) > 0 {
		ids, first := make([]int64, len(opened)), make([]int64, len(opened))
		for i, g := range opened {
			ids[i], first[i] = g.ID, g.FirstSeen
		}
		pb.Queue(`INSERT INTO geocursor_fence_gaps (id, first_seen) SELECT * FROM unnest($1::bigint[], $2::bigint[])`, ids, first)
	}
}

// replaceGaps makes geocursor_fence_gaps hold exactly gaps.
func replaceGaps(ctx context.Context, tx pgx.Tx, gaps []fsm.Gap) error {
	if _, err := tx.Exec(ctx, `DELETE FROM geocursor_fence_gaps`); err != nil {
		return err
	}
	pb := &pgx.Batch{}
	queueGapChanges(pb, nil, gaps)
	return tx.SendBatch(ctx, pb).Close()
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

// MoveFence is `cursor set` in the tracking database, under token (which
// claimed the fence): in one transaction it checks that the fence row is
// still at from, moves it to to with no open gap, keeps event_log_states
// at to, and with replay deletes the rows of the events after to, so that
// they are processed again. It returns how many events will be.
func (t *Tracking) MoveFence(ctx context.Context, token uint64, from, to Position, replay bool) (replayed int64, err error) {
	err = pgx.BeginFunc(ctx, t.pool, func(tx pgx.Tx) error {
		var (
			cur, lastID int64
			gapsJSON    string
		)
		if err := tx.QueryRow(ctx, `SELECT token, last_event_id, `+FenceGapsSQL+` FROM geocursor_fence WHERE id = 1 FOR UPDATE`).
			Scan(&cur, &lastID, &gapsJSON); err != nil {
			return fmt.Errorf("lock the fence row: %w", err)
		}
		if uint64(cur) > token {
			return fmt.Errorf("%w: token %d is older than token %d in the tracking database", ErrFenced, token, cur)
		}
		gaps, err := decodeGaps(gapsJSON)
		if err != nil {
			return err
		}
		if lastID != from.LastEventID {
			return fmt.Errorf("%w: the fence row moved from %d to %d meanwhile", ErrFenced, from.LastEventID, lastID)
		}
		if _, differ := gapsDiffer(from.Gaps, gaps); differ {
			return fmt.Errorf("%w: the fence row's gaps changed meanwhile", ErrFenced)
		}
		if replay {
			for _, table := range []string{"geo_jobs", "geo_dead_letters"} {
				tag, err := tx.Exec(ctx, `DELETE FROM `+table+` WHERE event_id > $1`, to.LastEventID)
				if err != nil {
					return fmt.Errorf("delete the %s rows after event %d: %w", table, to.LastEventID, err)
				}
				replayed += tag.RowsAffected()
			}
		}
		date := to.dateColumn()
		if _, err := tx.Exec(ctx, `UPDATE geocursor_fence
SET token = $1, last_event_id = $2, last_event_date = $3, gaps_count = 0, gaps_sum = $4, positioned = true, updated_at = clock_timestamp()
WHERE id = 1`, int64(token), to.LastEventID, date, int64(fsm.GapSum(nil))); err != nil {
			return fmt.Errorf("move the fence row: %w", err)
		}
		if err := replaceGaps(ctx, tx, nil); err != nil {
			return fmt.Errorf("close the open gaps: %w", err)
		}
		// The operator's position is delivered as far as event_log_states
		// goes: the marks of earlier positions would otherwise move it
		// back up past an earlier position (followEventLogState).
		if _, err := tx.Exec(ctx, `DELETE FROM geocursor_delivery_marks`); err != nil {
			return fmt.Errorf("reset the delivery marks: %w", err)
		}
		if to.LastEventID > 0 {
			if _, err := tx.Exec(ctx, saveEventLogState, to.LastEventID); err != nil {
				return fmt.Errorf("move event_log_states: %w", err)
			}
		} else if _, err := tx.Exec(ctx, `DELETE FROM event_log_states`); err != nil {
			return fmt.Errorf("clear event_log_states: %w", err)
		}
		return nil
	})
	if err != nil && !errors.Is(err, ErrFenced) {
		err = pgdb.Errorf("tracking", t.name, err, "move the fence row to %d (token %d): %s", to.LastEventID, token, pgdb.Describe(err))
	}
	return replayed, err
}

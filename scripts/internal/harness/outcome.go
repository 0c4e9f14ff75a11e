package harness

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Outcome compares the events committed in the source with what the
// tracking database holds: every source event must be in exactly one of
// geo_jobs and geo_dead_letters (design section 6).
type Outcome struct {
	// SourceEvents is the number of geo_event_log rows.
	SourceEvents int64 `json:"source_events"`
	// Jobs and DeadLetters count the rows of each table.
	Jobs        int64 `json:"jobs"`
	DeadLetters int64 `json:"dead_letters"`
	// Lost counts source events at or below the fence's position, not in
	// an open gap, that have no row: events skipped for good.
	Lost int64 `json:"lost"`
	// Pending counts source events without a row that are above the fence
	// or in one of its open gaps: not processed yet, not lost.
	Pending int64 `json:"pending"`
	// Doubled counts the extra rows of events that have more than one.
	Doubled int64 `json:"doubled"`
	// Unknown counts rows whose event ID is not in the source.
	Unknown int64 `json:"unknown"`
	// Examples holds up to five IDs of each kind of problem.
	LostIDs    []int64 `json:"lost_ids,omitempty"`
	DoubledIDs []int64 `json:"doubled_ids,omitempty"`
	UnknownIDs []int64 `json:"unknown_ids,omitempty"`
	// FenceLastEventID is the fence's position when the check ran.
	FenceLastEventID int64 `json:"fence_last_event_id"`
}

// OK reports whether nothing was lost, doubled or invented.
func (o Outcome) OK() bool { return o.Lost == 0 && o.Doubled == 0 && o.Unknown == 0 }

// Complete reports whether every source event has been processed.
func (o Outcome) Complete() bool { return o.OK() && o.Pending == 0 }

func (o Outcome) String() string {
	verdict := "OK: every event exactly once"
	switch {
	case !o.OK():
		verdict = "FAILED"
	case o.Pending > 0:
		verdict = fmt.Sprintf("OK so far: nothing lost or doubled, %d not processed yet", o.Pending)
	}
	s := fmt.Sprintf("%d events in the source; %d jobs + %d dead letters = %d rows; lost %d, doubled %d, unknown %d, pending %d: %s",
		o.SourceEvents, o.Jobs, o.DeadLetters, o.Jobs+o.DeadLetters, o.Lost, o.Doubled, o.Unknown, o.Pending, verdict)
	if len(o.LostIDs) > 0 {
		s += fmt.Sprintf("; lost e.g. %v", o.LostIDs)
	}
	if len(o.DoubledIDs) > 0 {
		s += fmt.Sprintf("; doubled e.g. %v", o.DoubledIDs)
	}
	if len(o.UnknownIDs) > 0 {
		s += fmt.Sprintf("; unknown e.g. %v", o.UnknownIDs)
	}
	return s
}

const maxExamples = 5

// CheckExactlyOnce reads every event ID of the source and every event ID
// of geo_jobs and geo_dead_letters, both in order, and merges them. It
// reads the fence first, so that an event processed while the check runs
// counts as pending at worst, never as lost.
func CheckExactlyOnce(ctx context.Context, source, tracking *pgxpool.Pool) (Outcome, error) {
	var o Outcome
	fence, err := ReadFence(ctx, tracking)
	if err != nil {
		return o, err
	}
	o.FenceLastEventID = fence.LastEventID
	// The tracking side is read before the source so that an event
	// committed in between shows as pending, never as unknown.
	trackingIDs, err := readIDs(ctx, tracking,
		`SELECT event_id, 0 FROM geo_jobs UNION ALL SELECT event_id, 1 FROM geo_dead_letters ORDER BY 1`, &o.Jobs, &o.DeadLetters)
	if err != nil {
		return o, fmt.Errorf("read processed event IDs: %w", err)
	}
	var ignored int64
	sourceIDs, err := readIDs(ctx, source, `SELECT id, 0 FROM geo_event_log ORDER BY id`, &o.SourceEvents, &ignored)
	if err != nil {
		return o, fmt.Errorf("read source event IDs: %w", err)
	}
	gaps := make(map[int64]bool, len(fence.Gaps))
	for _, g := range fence.Gaps {
		gaps[g] = true
	}

	i, j := 0, 0
	for i < len(sourceIDs) || j < len(trackingIDs) {
		switch {
		case j >= len(trackingIDs) || (i < len(sourceIDs) && sourceIDs[i] < trackingIDs[j]):
			id := sourceIDs[i]
			if id <= fence.LastEventID && !gaps[id] {
				o.Lost++
				o.LostIDs = example(o.LostIDs, id)
			} else {
				o.Pending++
			}
			i++
		case i >= len(sourceIDs) || trackingIDs[j] < sourceIDs[i]:
			o.Unknown++
			o.UnknownIDs = example(o.UnknownIDs, trackingIDs[j])
			j++
		default: // equal
			id := sourceIDs[i]
			n := 0
			for j < len(trackingIDs) && trackingIDs[j] == id {
				n++
				j++
			}
			if n > 1 {
				o.Doubled += int64(n - 1)
				o.DoubledIDs = example(o.DoubledIDs, id)
			}
			i++
		}
	}
	return o, nil
}

// readIDs runs query, which yields (id, kind) ordered by id, and counts
// the rows of kind 0 and 1.
func readIDs(ctx context.Context, pool *pgxpool.Pool, query string, kind0, kind1 *int64) ([]int64, error) {
	rows, err := pool.Query(ctx, query)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var (
		ids      []int64
		id, kind int64
	)
	_, err = pgx.ForEachRow(rows, []any{&id, &kind}, func() error {
		ids = append(ids, id)
		if kind == 0 {
			*kind0++
		} else {
			*kind1++
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if !slices.IsSorted(ids) {
		return nil, fmt.Errorf("the database returned IDs out of order")
	}
	return ids, nil
}

func example(ids []int64, id int64) []int64 {
	if len(ids) < maxExamples {
		ids = append(ids, id)
	}
	return ids
}

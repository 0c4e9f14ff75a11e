package cursor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// The date of the safe cursor. GitLab's geo_cursor_last_event_timestamp is
// the created_at of the event at the cursor it reports, and geocursor
// reports the safe cursor (design section 11). While no gap is open the
// safe cursor is the replicated cursor, whose date the state holds. With a
// gap open it is one below the lowest gap, an event the state holds no
// date for: the loop reads it from the source instead, once a
// HeadInterval while a gap is open, with the source head (watchHead).

// eventDater is a source that can date an event; *Source can, the tests'
// fakes need not.
type eventDater interface {
	// DateAtOrBelow is the created_at of the newest event at or below id;
	// ok is false when there is none (pruned, or never written).
	DateAtOrBelow(ctx context.Context, id int64) (date time.Time, ok bool, err error)
}

// dateAtOrBelowQuery is one backward primary-key probe.
const dateAtOrBelowQuery = `SELECT created_at FROM geo_event_log WHERE id <= $1 ORDER BY id DESC LIMIT 1`

// DateAtOrBelow is the created_at of the newest event at or below id. The
// event at id itself may be missing (an ID given up as a gap), and then
// the event before it is as close as the log can tell.
func (s *Source) DateAtOrBelow(ctx context.Context, id int64) (time.Time, bool, error) {
	var d time.Time
	err := s.pool.QueryRow(ctx, dateAtOrBelowQuery, id).Scan(&d)
	if errors.Is(err, pgx.ErrNoRows) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("read the date of event %d: %w", id, err)
	}
	return d.UTC(), true, nil
}

// readSafeDate reads the date of the safe cursor when a gap holds it below
// the replicated cursor, and records it in the health for the status.
func (l *Loop) readSafeDate(ctx context.Context) {
	d, ok := l.source.(eventDater)
	if !ok {
		return
	}
	st, _ := l.coord.Watch()
	safe := fsm.SafeEventID(st.Cursor.LastEventID, st.Gaps)
	if safe >= st.Cursor.LastEventID || safe <= 0 {
		return
	}
	date, found, err := d.DateAtOrBelow(ctx, safe)
	if err != nil || !found {
		return // the status shows the source's health; the date waits
	}
	l.health.SafeDate(safe, date)
}

// safeDate is the date of the safe cursor at id, as read from the source.
type safeDate struct {
	id   int64
	date time.Time
}

// SafeDate records the date of the safe cursor at id.
func (h *Health) SafeDate(id int64, date time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.safe = safeDate{id: id, date: date}
}

// addStatus fills in c.SafeEventDate from the replicated cursor already in
// c: its last_event_date while no gap is open, else the date read for the
// safe cursor, or for one below it read a moment ago (the safe cursor only
// moves forward, so that date is never later than the true one). The
// caller holds the health's lock.
func (s safeDate) addStatus(c *api.Cursor) {
	switch {
	case c.SafeEventID == c.LastEventID:
		c.SafeEventDate = c.LastEventDate
	case s.id > 0 && s.id <= c.SafeEventID:
		d := s.date
		c.SafeEventDate = &d
	}
}

package cursor

import (
	"sync"
	"time"

	"github.com/geocursor/geocursor/api"
)

// Health is this peer's view of its two databases, for the status document:
// whether each answered its last call, and the newest event in the source.
// Each field has one writer, the method named after it; the cursor loop and
// the connect step of the agent report through them, and the status
// document reads them through AddStatus.
type Health struct {
	mu       sync.Mutex
	source   string // "" when the last call answered, else why not
	tracking string
	head     sourceHead
	// ahead is the cursor the status last found beyond the head as read;
	// AddStatus is its writer.
	ahead aheadOfHead
	// safe is the safe cursor's date as last read while a gap held it
	// below the replicated cursor (safedate.go).
	safe safeDate
}

// sourceHead is the newest event in the source, as last read.
type sourceHead struct {
	id   int64
	date time.Time
	ok   bool // read at least once, and the source answered since
	// reads counts the heads recorded, so that the status can tell a
	// head read after it saw a cursor from one read before.
	reads uint64
}

// aheadOfHead is a replicated cursor that the status found beyond the
// head as read, with the number of head reads recorded then.
type aheadOfHead struct {
	cursor int64
	reads  uint64
}

// NewHealth returns the health of a peer that has not reached either
// database yet.
func NewHealth() *Health {
	return &Health{source: "connecting", tracking: "waiting for the source database"}
}

// Source records the outcome of a call to the source database.
func (h *Health) Source(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.source = api.ErrorText(err)
	if err != nil {
		h.head.ok = false
	}
}

// Tracking records the outcome of a call to the tracking database.
func (h *Health) Tracking(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.tracking = api.ErrorText(err)
}

// Head records the newest event read from the source.
func (h *Health) Head(id int64, date time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.head = sourceHead{id: id, date: date, ok: true, reads: h.head.reads + 1}
	h.source = ""
}

// AddStatus fills in the databases and, once the source head is known, the
// source head and the lag behind it, measured from the replicated cursor
// already in st.
//
// The head is read every second or so, and a busy holder moves the cursor
// past the head as last read in between: then the source holds at least
// the cursor's events, and the head is taken as the cursor (lag 0). But a
// cursor set beyond the source (`cursor set -force`) is not one the source
// will catch up with soon: once a head read that began after the status
// first saw this cursor still finds the source behind it, the status
// shows the real head and a negative lag.
func (h *Health) AddStatus(st *api.Status) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st.Databases = &api.Databases{Source: api.OKOr(h.source), Tracking: api.OKOr(h.tracking)}
	h.safe.addStatus(&st.Cursor)
	if !h.head.ok {
		return
	}
	c := &st.Cursor
	head := h.head.id
	if c.LastEventID > head {
		if h.ahead.cursor != c.LastEventID {
			h.ahead = aheadOfHead{cursor: c.LastEventID, reads: h.head.reads}
		}
		// The read recorded next may have begun before the cursor was
		// seen; the one after it began after.
		if h.head.reads < h.ahead.reads+2 {
			head = c.LastEventID
		}
	}
	lag := head - c.LastEventID
	secs := 0.0
	if lag > 0 && c.LastEventDate != nil && !h.head.date.IsZero() {
		secs = max(h.head.date.Sub(*c.LastEventDate).Seconds(), 0)
	}
	c.SourceLastEventID, c.LagEvents, c.LagSeconds = &head, &lag, &secs
	if !h.head.date.IsZero() {
		d := h.head.date
		c.SourceLastEventDate = &d
	}
}

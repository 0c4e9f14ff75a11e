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
	// safe is the safe cursor's date as last read while a gap held it
	// below the replicated cursor (safedate.go).
	safe safeDate
}

// sourceHead is the newest event in the source, as last read.
type sourceHead struct {
	id   int64
	date time.Time
	ok   bool // read at least once, and the source answered since
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
	h.source = errText(err)
	if err != nil {
		h.head.ok = false
	}
}

// Tracking records the outcome of a call to the tracking database.
func (h *Health) Tracking(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.tracking = errText(err)
}

// Head records the newest event read from the source.
func (h *Health) Head(id int64, date time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.head = sourceHead{id: id, date: date, ok: true}
	h.source = ""
}

// AddStatus fills in the databases and, once the source head is known, the
// source head and the lag behind it, measured from the replicated cursor
// already in st.
func (h *Health) AddStatus(st *api.Status) {
	h.mu.Lock()
	defer h.mu.Unlock()
	st.Databases = &api.Databases{Source: okOr(h.source), Tracking: okOr(h.tracking)}
	h.safe.addStatus(&st.Cursor)
	if !h.head.ok {
		return
	}
	c := &st.Cursor
	head := max(h.head.id, c.LastEventID)
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

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func okOr(errText string) string {
	if errText == "" {
		return api.DatabaseOK
	}
	return errText
}

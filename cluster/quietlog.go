package cluster

import (
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// quietLogger is hashicorp/raft's logger with its repeats held back: raft
// logs every failed heartbeat and append to an unreachable peer (with a
// backoff of milliseconds), so a member that is down, or a non-voter that
// never came up, wrote over a hundred lines a second on the leader and
// buried everything else. A line of the same level, message and peer is
// written at most once per quietWindow; the next one that gets through
// says how many were held back. Lines at info and below pass unchanged.
type quietLogger struct {
	hclog.Logger
	st *quietState
}

// quietState is shared by a quietLogger and the loggers made from it
// (Named, With), so that raft's sub-loggers share one budget.
type quietState struct {
	mu   sync.Mutex
	seen map[quietKey]*quietEntry
}

type quietKey struct {
	level   hclog.Level
	message string
	peer    string
}

type quietEntry struct {
	last time.Time
	held int
}

// quietWindow is how long a repeated warning or error is held back.
const quietWindow = 10 * time.Second

// quietMaxKeys bounds the memory of repeats: past it, the oldest half is
// forgotten (a forgotten line is written again at its next repeat).
const quietMaxKeys = 1024

func newQuietLogger(l hclog.Logger) hclog.Logger {
	return &quietLogger{Logger: l, st: &quietState{seen: map[quietKey]*quietEntry{}}}
}

// admit decides whether a line goes out, and with how many repeats held
// back before it.
func (s *quietState) admit(k quietKey, now time.Time) (bool, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.seen[k]
	if e == nil {
		if len(s.seen) >= quietMaxKeys {
			s.forgetOldest()
		}
		s.seen[k] = &quietEntry{last: now}
		return true, 0
	}
	if now.Sub(e.last) < quietWindow {
		e.held++
		return false, 0
	}
	held := e.held
	e.last, e.held = now, 0
	return true, held
}

func (s *quietState) forgetOldest() {
	var cut time.Time
	for _, e := range s.seen {
		if cut.IsZero() || e.last.Before(cut) {
			cut = e.last
		}
	}
	// Forget everything older than the midpoint between the oldest entry
	// and now, at least the oldest.
	mid := cut.Add(time.Since(cut) / 2)
	for k, e := range s.seen {
		if !e.last.After(mid) {
			delete(s.seen, k)
		}
	}
}

func (q *quietLogger) Log(level hclog.Level, msg string, args ...any) {
	if level < hclog.Warn {
		q.Logger.Log(level, msg, args...)
		return
	}
	ok, held := q.st.admit(quietKey{level: level, message: msg, peer: peerOf(args)}, time.Now())
	if !ok {
		return
	}
	if held > 0 {
		args = append(args, "repeats_held_back", held, "window", quietWindow.String())
	}
	q.Logger.Log(level, msg, args...)
}

func (q *quietLogger) Warn(msg string, args ...any)  { q.Log(hclog.Warn, msg, args...) }
func (q *quietLogger) Error(msg string, args ...any) { q.Log(hclog.Error, msg, args...) }

func (q *quietLogger) Named(name string) hclog.Logger {
	return &quietLogger{Logger: q.Logger.Named(name), st: q.st}
}

func (q *quietLogger) ResetNamed(name string) hclog.Logger {
	return &quietLogger{Logger: q.Logger.ResetNamed(name), st: q.st}
}

func (q *quietLogger) With(args ...any) hclog.Logger {
	return &quietLogger{Logger: q.Logger.With(args...), st: q.st}
}

// peerOf is the peer a raft line is about: the value of its "peer" field
// (raft writes the address or ID there), "" for none.
func peerOf(args []any) string {
	for i := 0; i+1 < len(args); i += 2 {
		if k, ok := args[i].(string); ok && k == "peer" {
			return fmt.Sprint(args[i+1])
		}
	}
	return ""
}

package cluster

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// A leader whose non-voter is unreachable logs each failed heartbeat
// once per window, with the count held back; other peers' lines and
// info lines pass.
func TestRepeatedRaftErrorsAreHeldBack(t *testing.T) {
	var buf bytes.Buffer
	l := newQuietLogger(hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Trace}))
	for i := 0; i < 200; i++ {
		l.Error("failed to heartbeat to", "peer", "10.0.0.9:8471", "error", "connection refused")
	}
	l.Named("sub").Error("failed to heartbeat to", "peer", "10.0.0.8:8471", "error", "connection refused")
	l.Info("entering follower state")
	l.Info("entering follower state")
	out := buf.String()
	if n := strings.Count(out, "10.0.0.9"); n != 1 {
		t.Errorf("%d lines about the unreachable peer, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, "10.0.0.8") || strings.Count(out, "entering follower state") != 2 {
		t.Errorf("another peer's line or an info line was held back:\n%s", out)
	}

	// After the window the next repeat goes out, saying how many were held.
	q := l.(*quietLogger)
	q.st.mu.Lock()
	for _, e := range q.st.seen {
		e.last = e.last.Add(-quietWindow - time.Second)
	}
	q.st.mu.Unlock()
	buf.Reset()
	l.Error("failed to heartbeat to", "peer", "10.0.0.9:8471", "error", "connection refused")
	if !strings.Contains(buf.String(), "repeats_held_back=199") {
		t.Errorf("the line after the window does not count the 199 held back: %s", buf.String())
	}
}

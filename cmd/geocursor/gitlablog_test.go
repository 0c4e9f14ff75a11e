package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

// lockedBuffer is a bytes.Buffer that counts Write calls, safe for the
// concurrency test.
type lockedBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writes++
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// fixedTime is 2026-12-07T22:06:41.123456789 UTC, given in UTC+2 so that
// the conversion to UTC is tested too.
var fixedTime = time.Date(2026, 12, 8, 0, 6, 41, 123456789, time.FixedZone("EET", 2*3600))

func newTestJSONLogger(name string, out *lockedBuffer, level hclog.Level) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      level,
		Output:     newGitLabLogWriter(out),
		JSONFormat: true,
		TimeFn:     func() time.Time { return fixedTime },
	})
}

func TestGitLabLogWriterShape(t *testing.T) {
	pid := strconv.Itoa(os.Getpid())
	tests := []struct {
		name string
		log  func(l hclog.Logger)
		want string
	}{
		{
			name: "info with fields",
			log:  func(l hclog.Logger) { l.Info("Cache invalidation", "token", "abc", "node_id", "n1") },
			want: `{"severity":"INFO","time":"2026-12-07T22:06:41.123Z","pid":` + pid +
				`,"class":"cursor","message":"Cache invalidation","node_id":"n1","token":"abc"}`,
		},
		{
			name: "trace is DEBUG",
			log:  func(l hclog.Logger) { l.Trace("t") },
			want: `{"severity":"DEBUG","time":"2026-12-07T22:06:41.123Z","pid":` + pid + `,"class":"cursor","message":"t"}`,
		},
		{
			name: "debug",
			log:  func(l hclog.Logger) { l.Debug("d") },
			want: `{"severity":"DEBUG","time":"2026-12-07T22:06:41.123Z","pid":` + pid + `,"class":"cursor","message":"d"}`,
		},
		{
			name: "warn",
			log:  func(l hclog.Logger) { l.Warn("w") },
			want: `{"severity":"WARN","time":"2026-12-07T22:06:41.123Z","pid":` + pid + `,"class":"cursor","message":"w"}`,
		},
		{
			name: "error with an error value",
			log:  func(l hclog.Logger) { l.Error("e", "error", errors.New("boom")) },
			want: `{"severity":"ERROR","time":"2026-12-07T22:06:41.123Z","pid":` + pid + `,"class":"cursor","message":"e","error":"boom"}`,
		},
		{
			name: "values are copied unchanged",
			log: func(l hclog.Logger) {
				l.Info("m", "event_id", int64(9007199254740993), "delay", 0.25, "ok", true, "nested", map[string]int{"a": 1}, "none", nil)
			},
			want: `{"severity":"INFO","time":"2026-12-07T22:06:41.123Z","pid":` + pid +
				`,"class":"cursor","message":"m","delay":0.25,"event_id":9007199254740993,"nested":{"a":1},"none":null,"ok":true}`,
		},
		{
			name: "the agent's pid field takes pid's place",
			log:  func(l hclog.Logger) { l.With("pid", 4242, "node_id", "n1").Info("m") },
			want: `{"severity":"INFO","time":"2026-12-07T22:06:41.123Z","pid":4242,"class":"cursor","message":"m","node_id":"n1"}`,
		},
		{
			name: "correlation_id and gitlab_host go where GitLab writes them",
			log: func(l hclog.Logger) {
				l.Info("m", "gitlab_host", "geo2.example.com", "correlation_id", "01HXYZ", "event_id", 7)
			},
			want: `{"severity":"INFO","time":"2026-12-07T22:06:41.123Z","correlation_id":"01HXYZ","pid":` + pid +
				`,"gitlab_host":"geo2.example.com","class":"cursor","message":"m","event_id":7}`,
		},
		{
			name: "a class field replaces the module",
			log:  func(l hclog.Logger) { l.Info("m", "class", "Gitlab::Geo::LogCursor::Daemon") },
			want: `{"severity":"INFO","time":"2026-12-07T22:06:41.123Z","pid":` + pid +
				`,"class":"Gitlab::Geo::LogCursor::Daemon","message":"m"}`,
		},
		{
			name: "sub-logger module",
			log:  func(l hclog.Logger) { l.Named("delivery").Info("m") },
			want: `{"severity":"INFO","time":"2026-12-07T22:06:41.123Z","pid":` + pid + `,"class":"cursor.delivery","message":"m"}`,
		},
		{
			name: "HTML characters in the message stay as hclog wrote them",
			log:  func(l hclog.Logger) { l.Info("a <b> & c") },
			want: `{"severity":"INFO","time":"2026-12-07T22:06:41.123Z","pid":` + pid +
				`,"class":"cursor","message":"a \u003cb\u003e \u0026 c"}`,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out lockedBuffer
			tc.log(newTestJSONLogger("cursor", &out, hclog.Trace))
			if got := out.String(); got != tc.want+"\n" {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
			if !json.Valid(bytes.TrimSpace(out.b.Bytes())) {
				t.Errorf("output is not valid JSON: %s", out.String())
			}
			if out.writes != 1 {
				t.Errorf("%d writes to the underlying writer, want 1", out.writes)
			}
		})
	}
}

func TestGitLabLogWriterNoModule(t *testing.T) {
	var out lockedBuffer
	newTestJSONLogger("", &out, hclog.Info).Info("m")
	want := `{"severity":"INFO","time":"2026-12-07T22:06:41.123Z","pid":` + strconv.Itoa(os.Getpid()) + `,"message":"m"}` + "\n"
	if got := out.String(); got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestGitLabLogWriterPassThrough(t *testing.T) {
	tests := []struct {
		name, in string
	}{
		{"plain text", "2026-12-07T22:06:41.123Z [INFO]  cursor: hello: node_id=n1\n"},
		{"JSON array", "[1,2,3]\n"},
		{"JSON object without @level", `{"severity":"INFO","message":"already GitLab's"}` + "\n"},
		{"@level not a string", `{"@level":3,"@message":"m"}` + "\n"},
		{"broken JSON", `{"@level":"info","@message":` + "\n"},
		{"two objects on a line", `{"@level":"info"}{"@level":"info"}` + "\n"},
		{"empty line", "\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out lockedBuffer
			w := newGitLabLogWriter(&out)
			n, err := w.Write([]byte(tc.in))
			if err != nil || n != len(tc.in) {
				t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(tc.in))
			}
			if got := out.String(); got != tc.in {
				t.Errorf("got %q, want it unchanged %q", got, tc.in)
			}
		})
	}

	// A real hclog text logger's lines pass through too.
	var out lockedBuffer
	l := hclog.New(&hclog.LoggerOptions{Name: "cursor", Output: newGitLabLogWriter(&out), TimeFn: func() time.Time { return fixedTime }})
	l.Info("hello", "node_id", "n1")
	if got := out.String(); !strings.Contains(got, "[INFO]  cursor: hello: node_id=n1") || strings.Contains(got, "severity") {
		t.Errorf("text line changed: %q", got)
	}
}

func TestGitLabLogWriterSeveralLinesInOneWrite(t *testing.T) {
	var out lockedBuffer
	w := newGitLabLogWriter(&out).(*gitlabLogWriter)
	w.pid = 7
	in := `{"@level":"info","@message":"a","@module":"m","@timestamp":"2026-12-07T22:06:41.999999Z"}` + "\n" +
		"not json\n" +
		`{"@level":"warn","@message":"b","@timestamp":"2026-12-07T23:06:41.000001+01:00","k":1}`
	n, err := w.Write([]byte(in))
	if err != nil || n != len(in) {
		t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(in))
	}
	want := `{"severity":"INFO","time":"2026-12-07T22:06:41.999Z","pid":7,"class":"m","message":"a"}` + "\n" +
		"not json\n" +
		`{"severity":"WARN","time":"2026-12-07T22:06:41.000Z","pid":7,"message":"b","k":1}`
	if got := out.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	if out.writes != 1 {
		t.Errorf("%d writes to the underlying writer, want 1", out.writes)
	}
}

func TestGitLabLogWriterMissingOrOddTimestamp(t *testing.T) {
	var out lockedBuffer
	w := newGitLabLogWriter(&out).(*gitlabLogWriter)
	w.pid = 7
	w.now = func() time.Time { return fixedTime }
	// hclog with DisableTime writes no @timestamp; a custom TimeFormat may
	// not parse. Both get the time of the write.
	hclog.New(&hclog.LoggerOptions{Output: w, JSONFormat: true, DisableTime: true}).Info("a")
	hclog.New(&hclog.LoggerOptions{Output: w, JSONFormat: true, TimeFormat: time.Kitchen}).Info("b")
	want := `{"severity":"INFO","time":"2026-12-07T22:06:41.123Z","pid":7,"message":"a"}` + "\n" +
		`{"severity":"INFO","time":"2026-12-07T22:06:41.123Z","pid":7,"message":"b"}` + "\n"
	if got := out.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

func TestGitLabLogWriterWriteError(t *testing.T) {
	w := newGitLabLogWriter(failingWriter{})
	if n, err := w.Write([]byte(`{"@level":"info","@message":"m"}` + "\n")); err == nil || n != 0 {
		t.Errorf("Write = %d, %v; want 0 and the underlying error", n, err)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

// Two loggers, as the agent and Raft have, share one writer; every line
// must come out whole.
func TestGitLabLogWriterConcurrent(t *testing.T) {
	var out lockedBuffer
	w := newGitLabLogWriter(&out)
	opts := func(name string) *hclog.LoggerOptions {
		return &hclog.LoggerOptions{Name: name, Output: w, JSONFormat: true, Level: hclog.Trace}
	}
	loggers := []hclog.Logger{hclog.New(opts("agent")), hclog.New(opts("raft"))}

	const goroutines, perGoroutine = 8, 200
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			l := loggers[g%len(loggers)]
			for i := 0; i < perGoroutine; i++ {
				l.Info("message "+strings.Repeat("x", i), "g", g, "i", i)
			}
		}(g)
	}
	wg.Wait()

	seen := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(out.String()))
	sc.Buffer(nil, 1<<20)
	lines := 0
	for sc.Scan() {
		lines++
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %d is not JSON (interleaved?): %v: %q", lines, err, sc.Text())
		}
		if m["severity"] != "INFO" || (m["class"] != "agent" && m["class"] != "raft") {
			t.Fatalf("line %d has the wrong shape: %q", lines, sc.Text())
		}
		seen[fmt.Sprint(m["g"], "/", m["i"])] = true
	}
	if lines != goroutines*perGoroutine || len(seen) != lines {
		t.Errorf("%d lines, %d distinct; want %d", lines, len(seen), goroutines*perGoroutine)
	}
}

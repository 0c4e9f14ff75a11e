package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// gitlabLogTimeFormat is Ruby's Time#utc.iso8601(3), the "time" of every
// geo.log line: Labkit::Logging::JsonLogger#format_message (gitlab-labkit,
// the superclass of lib/gitlab/json_logger.rb) writes
// timestamp.utc.iso8601(3), e.g. "2026-12-07T22:06:41.123Z" (milliseconds,
// truncated, always "Z").
const gitlabLogTimeFormat = "2006-01-02T15:04:05.000Z"

// gitlabLogWriter turns hclog's JSON lines into lines shaped like GitLab's
// log/geo.log, so that tooling that reads the Geo log cursor's lines keeps
// working. GitLab writes geo.log with Gitlab::Geo::Logger
// (ee/lib/gitlab/geo/logger.rb: a Gitlab::JsonLogger with exclude_context!),
// and the log cursor's lines come from Gitlab::Geo::LogCursor::Logger
// (ee/lib/gitlab/geo/log_cursor/logger.rb). One GitLab line is a JSON object
// whose keys come in this order:
//
//	severity        Ruby Logger's label: "DEBUG", "INFO", "WARN", "ERROR"
//	time            UTC, ISO 8601 with milliseconds and "Z"
//	correlation_id  Labkit's current id (null when none)
//	pid, gitlab_host, class, message   from the log cursor's base_log_data
//	...             the call's own fields (event_id, cursor_delay_s, ...)
//
// and later keys with the same name replace earlier values in place (Ruby's
// Hash#merge).
//
// Each hclog JSON line ({"@level":..,"@message":..,"@module":..,
// "@timestamp":.., fields...}) becomes
//
//	{"severity":..,"time":..,"pid":..,"class":..,"message":..,fields...}
//
// with severity the upper-cased level (trace becomes DEBUG: Ruby's Logger
// has no trace), time the @timestamp converted to UTC at millisecond
// precision, pid this process's id, class the @module (left out when the
// logger has no name), message the @message, and every other field, @caller
// included, copied unchanged in hclog's order. A field named like one of
// the leading keys (correlation_id and gitlab_host included) takes that
// key's place, as in Ruby: the agent's own "pid" field replaces the pid.
// Lines that are not a JSON object with a string "@level" are written
// unchanged.
//
// A Write may hold one line (hclog writes each entry in one call) or more;
// each newline-terminated line is converted on its own, and a trailing
// fragment without a newline is converted (or passed through) as if it were
// a line, without a newline added. All output of one Write goes to the
// underlying writer in one Write call, under a mutex, so loggers sharing the
// writer do not interleave.
type gitlabLogWriter struct {
	mu  sync.Mutex
	out io.Writer
	pid int
	now func() time.Time
	buf bytes.Buffer
}

// newGitLabLogWriter returns a writer that converts hclog JSON lines to
// geo.log's shape and writes them to out.
func newGitLabLogWriter(out io.Writer) io.Writer {
	return &gitlabLogWriter{out: out, pid: os.Getpid(), now: time.Now}
}

func (w *gitlabLogWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()

	w.buf.Reset()
	rest := p
	for len(rest) > 0 {
		line := rest
		nl := false
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest, nl = rest[:i], rest[i+1:], true
		} else {
			rest = nil
		}
		if conv, ok := w.convert(line); ok {
			w.buf.Write(conv)
		} else {
			w.buf.Write(line)
		}
		if nl {
			w.buf.WriteByte('\n')
		}
	}
	if _, err := w.out.Write(w.buf.Bytes()); err != nil {
		return 0, err
	}
	return len(p), nil
}

// gitlabLogField is one key of an output line with its JSON value.
type gitlabLogField struct {
	key string
	val json.RawMessage
}

// convert returns line in geo.log's shape, or false if line is not an
// hclog JSON entry.
func (w *gitlabLogWriter) convert(line []byte) ([]byte, bool) {
	fields, ok := parseJSONObject(line)
	if !ok {
		return nil, false
	}
	var level, timestamp string
	var message, module json.RawMessage
	haveLevel := false
	var rest []gitlabLogField
	for _, f := range fields {
		switch f.key {
		case "@level":
			if json.Unmarshal(f.val, &level) != nil {
				return nil, false
			}
			haveLevel = true
		case "@timestamp":
			_ = json.Unmarshal(f.val, &timestamp)
		case "@message":
			message = f.val
		case "@module":
			module = f.val
		default:
			rest = append(rest, f)
		}
	}
	if !haveLevel {
		return nil, false
	}

	t, err := time.Parse(time.RFC3339Nano, timestamp)
	if err != nil {
		t = w.now()
	}
	if message == nil {
		message = json.RawMessage(`""`)
	}

	out := make([]gitlabLogField, 0, len(rest)+5)
	out = append(out,
		gitlabLogField{"severity", jsonString(gitlabSeverity(level))},
		gitlabLogField{"time", jsonString(t.UTC().Format(gitlabLogTimeFormat))},
		gitlabLogField{"pid", json.RawMessage(strconv.Itoa(w.pid))},
	)
	if module != nil {
		out = append(out, gitlabLogField{"class", module})
	}
	out = append(out, gitlabLogField{"message", message})
	for _, f := range rest {
		out = mergeField(out, f)
	}

	var b bytes.Buffer
	b.WriteByte('{')
	for i, f := range out {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(jsonString(f.key))
		b.WriteByte(':')
		b.Write(f.val)
	}
	b.WriteByte('}')
	return b.Bytes(), true
}

// mergeField sets f in fields as Ruby's Hash#merge would: an existing key
// keeps its place and takes the new value, a new key goes at the end.
// correlation_id and gitlab_host, which GitLab writes among the leading
// keys, go to GitLab's places when they first appear.
func mergeField(fields []gitlabLogField, f gitlabLogField) []gitlabLogField {
	for i := range fields {
		if fields[i].key == f.key {
			fields[i].val = f.val
			return fields
		}
	}
	var after string
	switch f.key {
	case "correlation_id":
		after = "time" // severity, time, correlation_id, pid, ...
	case "gitlab_host":
		after = "pid" // ..., pid, gitlab_host, class, message
	default:
		return append(fields, f)
	}
	for i := range fields {
		if fields[i].key == after {
			fields = append(fields, gitlabLogField{})
			copy(fields[i+2:], fields[i+1:])
			fields[i+1] = f
			return fields
		}
	}
	return append(fields, f)
}

// gitlabSeverity maps an hclog level to Ruby Logger's severity label.
func gitlabSeverity(level string) string {
	switch level {
	case "trace", "debug":
		return "DEBUG"
	case "info":
		return "INFO"
	case "warn":
		return "WARN"
	case "error":
		return "ERROR"
	default:
		return strings.ToUpper(level)
	}
}

// parseJSONObject returns the keys of a JSON object in their order, each
// with its value compacted, or false if line is not exactly one object.
func parseJSONObject(line []byte) ([]gitlabLogField, bool) {
	line = bytes.TrimRight(line, "\r")
	dec := json.NewDecoder(bytes.NewReader(line))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, false
	}
	var fields []gitlabLogField
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, false
		}
		key, ok := tok.(string)
		if !ok {
			return nil, false
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, false
		}
		var c bytes.Buffer
		if err := json.Compact(&c, raw); err != nil {
			return nil, false
		}
		fields = append(fields, gitlabLogField{key, json.RawMessage(c.Bytes())})
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, false
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, false // trailing data after the object
	}
	return fields, true
}

// jsonString returns s as a JSON string (no HTML escaping: the strings
// built here are level names, times and field names).
func jsonString(s string) json.RawMessage {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

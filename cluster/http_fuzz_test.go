package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/config"
	"github.com/geocursor/geocursor/fsm"
)

// httpFuzzDeadline bounds one request through the handlers. On a leader that
// is healthy every request is a local Raft apply or a read, which takes
// milliseconds; the margin is for the race detector and a busy machine.
const httpFuzzDeadline = 3 * time.Second

// startHTTPTestNode opens a real one-node group on free loopback ports, waits
// until it leads and has published its addresses, and closes it when tb
// ends.
// The fuzz node's tokens: its API asks for them, as every production
// node's does.
const (
	fuzzOperatorToken = "fuzz-operator-token-0123456789"
	fuzzReadToken     = "fuzz-read-token-0123456789abcd"
)

func startHTTPTestNode(tb testing.TB) *Node {
	tb.Helper()
	dir := tb.TempDir()
	var (
		n   *Node
		err error
	)
	// Free ports can be taken between the probe and Open by another test
	// process (fuzz workers run in parallel): try a few pairs.
	for attempt := 0; attempt < 5; attempt++ {
		cfg := Config{
			NodeID:   "fuzz1",
			DataDir:  filepath.Join(dir, fmt.Sprintf("node-%d", attempt)),
			HTTPAddr: freeLoopbackAddr(tb),
			RaftAddr: freeLoopbackAddr(tb),
			Raft: config.RaftConfig{
				HeartbeatTimeout:  200 * time.Millisecond,
				ElectionTimeout:   200 * time.Millisecond,
				SnapshotThreshold: 1024,
				SnapshotInterval:  30 * time.Second,
				TrailingLogs:      1024,
			},
			Logger:        hclog.NewNullLogger(),
			ACL:           NewACL(fuzzOperatorToken, fuzzReadToken),
			OperatorToken: fuzzOperatorToken,
		}
		n, err = Open(context.Background(), cfg)
		if err == nil {
			break
		}
		if !strings.Contains(err.Error(), "listen on") {
			tb.Fatalf("open node: %v", err)
		}
	}
	if err != nil {
		tb.Fatalf("open node: %v", err)
	}
	tb.Cleanup(func() {
		if err := n.Close(); err != nil {
			tb.Errorf("close node: %v", err)
		}
	})

	deadline := time.Now().Add(15 * time.Second)
	for {
		m, published := n.State().Members[n.ID()]
		if n.IsLeader() && published && m.HTTPAddr == n.cfg.HTTPAddr {
			return n
		}
		if time.Now().After(deadline) {
			tb.Fatalf("node did not become leader with its addresses published within 15s (leader: %v, member: %+v)", n.IsLeader(), m)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func freeLoopbackAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("find a free port: %v", err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		tb.Fatalf("find a free port: %v", err)
	}
	return addr
}

// httpResult is one request's outcome.
type httpResult struct {
	code    int
	header  http.Header
	body    []byte
	pattern string // the route that matched, "" when none did
}

// serveHTTP sends one request through the node's handler (no network) with
// a deadline, and fails tb if the handler does not finish within it.
func serveHTTP(tb testing.TB, h http.Handler, method, target, token string, body []byte) httpResult {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), httpFuzzDeadline)
	defer cancel()
	req := httptest.NewRequestWithContext(ctx, method, target, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	var pattern string
	if mux, ok := h.(*http.ServeMux); ok {
		_, pattern = mux.Handler(req)
	}
	rec := httptest.NewRecorder()
	start := time.Now()
	h.ServeHTTP(rec, req)
	if err := ctx.Err(); err != nil {
		tb.Fatalf("%s %s took %s, past the %s deadline (%v)", method, target, time.Since(start).Round(time.Millisecond), httpFuzzDeadline, err)
	}
	return httpResult{code: rec.Code, header: rec.Header(), body: rec.Body.Bytes(), pattern: pattern}
}

// httpFuzzRoute is a request line the fuzzer can pick. Op marks the lease
// route, whose last segment is the fuzzed op.
type httpFuzzRoute struct {
	method, path string
	op           bool
	// need is what the route asks of its caller; limit its body limit
	// (0: it reads no body).
	need  access
	limit int
}

var httpFuzzRoutes = []httpFuzzRoute{
	{method: http.MethodGet, path: "/v1/status", need: accessRead},
	{method: http.MethodGet, path: "/v1/health"},
	{method: http.MethodGet, path: "/v1/health/ready"},
	{method: http.MethodPost, path: "/v1/cluster/join", need: accessPeer, limit: maxSmallBody},
	{method: http.MethodPost, path: "/v1/internal/apply", need: accessPeer, limit: maxCommandBody},
	{method: http.MethodPost, path: "/v1/lease/", op: true, need: accessOperator, limit: maxSmallBody},
	// Wrong methods and paths: the mux answers these itself.
	{method: http.MethodPost, path: "/v1/status"},
	{method: http.MethodGet, path: "/v1/cluster/join"},
	{method: http.MethodPut, path: "/v1/internal/apply"},
	{method: http.MethodGet, path: "/v1/lease/", op: true},
	{method: http.MethodPost, path: "/v1/nope"},
	// Appended, not inserted: the committed corpus names routes by index.
	{method: http.MethodPost, path: "/v1/cursor/pause", need: accessOperator},
	{method: http.MethodPost, path: "/v1/cursor/resume", need: accessOperator},
	{method: http.MethodGet, path: "/v1/cursor/pause"},
}

// fuzzTokens are the credentials a fuzzed request may carry: none, the
// read token, the operator token, and one that is neither.
var fuzzTokens = []struct {
	token string
	right right
}{
	{"", rightNone}, {fuzzReadToken, rightRead}, {fuzzOperatorToken, rightOperator}, {"not-a-token-of-this-node", rightNone},
}

// allows reports whether a caller with right may call a route that asks
// for need, on a node without TLS.
func allows(need access, r right) bool {
	switch need {
	case accessRead:
		return r >= rightRead
	case accessOperator, accessPeer:
		return r == rightOperator
	}
	return true
}

// decodesStrictly reports whether body is what decodeBody accepts into a
// value of dst's type: one JSON value, no unknown fields, nothing after it.
func decodesStrictly(body []byte, dst any) bool {
	if len(body) > api.MaxRequestBody {
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return false
	}
	_, err := dec.Token()
	return err == io.EOF
}

// FuzzHTTPRequests sends fuzzed bodies, with fuzzed credentials, to every
// route of a real leader's API, which asks for tokens as production nodes
// do. Whatever the input: no panic, no 5xx but 503, a JSON body from every
// route handler, 401 or 403 for a caller without the right, 4xx for a body
// that does not decode, 413 for one over its route's limit, and an answer
// within httpFuzzDeadline.
func FuzzHTTPRequests(f *testing.F) {
	n := startHTTPTestNode(f)
	h := n.routes()
	self := api.JoinRequest{NodeID: n.ID(), RaftAddr: string(n.transport.LocalAddr()), HTTPAddr: n.cfg.HTTPAddr}

	seeds := []struct {
		route uint8
		op    string
		body  string
		pad   bool
	}{
		{4, "", `{"op":"set_paused","paused":true}`, false},
		{0, "", "", false},
		{1, "", "", false},
		{2, "", "", false},
		{3, "", `{"node_id":"fuzz1","raft_addr":"` + self.RaftAddr + `","http_addr":"` + self.HTTPAddr + `"}`, false},
		{3, "", `{"node_id":"fuzz1","raft_addr":"127.0.0.1:1","http_addr":"127.0.0.1:2"}`, false},
		{3, "", `{"node_id":"other","raft_addr":"` + self.RaftAddr + `","http_addr":"127.0.0.1:2"}`, false},
		{3, "", `{"node_id":""}`, false},
		{3, "", `{"node_id":1}`, false},
		{3, "", `{"nodeid":"x"}`, false},
		{3, "", `{}}`, false},
		{3, "", `{}`, true},
		{4, "", `{"op":"acquire","node":"n1","ttl":5000000000}`, false},
		{4, "", `{"op":"renew","node":"n1","token":1,"ttl":5000000000}`, false},
		{4, "", `{"op":"release","node":"n1","token":1}`, false},
		{4, "", `{"op":"advance","node":"n1","token":1,"advance":{"last_event_id":10,"gaps":[{"id":3}],"events":7}}`, false},
		{4, "", `{"op":"revoke","token":1,"reason":"fuzz"}`, false},
		{4, "", `{"op":"set_member","member":{"id":"x","raft_addr":"127.0.0.1:9"}}`, false},
		{4, "", `{"op":"remove_member","node":"x"}`, false},
		{4, "", `{"op":"set_paused","paused":true}`, false},
		{4, "", `{"op":"set_paused","paused":false}`, false},
		{4, "", `{"op":"nope"}`, false},
		{4, "", `{"op":"acquire","node":"n1","ttl":-1}`, false},
		{4, "", `{"op":"acquire","node":"n1","ttl":"5s"}`, false},
		{4, "", `[]`, false},
		{4, "", `{`, false},
		{4, "", `null`, false},
		{4, "", `{"op":"set_paused"} x`, true},
		{5, "acquire", `{"node":"n2","ttl":"5s"}`, false},
		{5, "renew", `{"node":"n2","token":2,"ttl":"1s"}`, false},
		{5, "release", `{"node":"n2","token":2}`, false},
		{5, "advance", `{"node":"n2"}`, false},
		{5, "acquire", `{"node":"n2","ttl":"forever"}`, false},
		{5, "acquire", `{"node":"n2","ttl":"48h"}`, false},
		{5, "", `{}`, false},
		{5, "..", `{}`, false},
		{5, "a/b", `{}`, false},
		{6, "", `{}`, false},
		{7, "", ``, false},
		{8, "", `{"op":"set_paused"}`, false},
		{9, "acquire", `{}`, false},
		{10, "", ``, false},
		{11, "", `{"ignored":true}`, false},
		{12, "", ``, false},
		{13, "", ``, false},
	}
	for i, s := range seeds {
		// Most seeds with the operator token, so that the fuzzer starts
		// past the authorization; every fourth with another credential.
		auth := uint8(2)
		if i%4 == 0 {
			auth = uint8(i / 4 % len(fuzzTokens))
		}
		f.Add(s.route, s.op, []byte(s.body), s.pad, auth)
	}

	f.Fuzz(func(t *testing.T, route uint8, op string, body []byte, pad bool, auth uint8) {
		rt := httpFuzzRoutes[int(route)%len(httpFuzzRoutes)]
		cred := fuzzTokens[int(auth)%len(fuzzTokens)]
		target := rt.path
		if rt.op {
			target += url.PathEscape(op)
		}
		if pad {
			// Past the limit whatever the body is: trailing spaces after a
			// valid object must not make it a 400.
			body = append(body[:len(body):len(body)], bytes.Repeat([]byte(" "), api.MaxRequestBody+1)...)
		}

		// A valid join under another node ID would add a voter that does
		// not exist, and the group would lose its quorum: a real effect,
		// not a fault, so such inputs are left out.
		if rt.method == http.MethodPost && rt.path == "/v1/cluster/join" {
			var jr api.JoinRequest
			if decodesStrictly(body, &jr) && validateJoin(jr) == nil && jr.NodeID != self.NodeID && jr.RaftAddr != self.RaftAddr {
				t.Skip("a valid join of another node changes the membership")
			}
		}

		res := serveHTTP(t, h, rt.method, target, cred.token, body)
		checkHTTPResult(t, rt, target, body, cred.token, cred.right, res)
	})
}

func checkHTTPResult(t *testing.T, rt httpFuzzRoute, target string, body []byte, token string, r right, res httpResult) {
	t.Helper()
	desc := fmt.Sprintf("%s %s (body %d bytes %.80q, token %q)", rt.method, target, len(body), body, token)
	if res.code >= 500 && res.code != http.StatusServiceUnavailable {
		t.Fatalf("%s: status %d: %s", desc, res.code, res.body)
	}
	routed := res.pattern != "" && (res.code < 300 || res.code >= 400)
	if routed {
		if ct := res.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type %q, want application/json", desc, ct)
		}
		if !json.Valid(res.body) {
			t.Errorf("%s: status %d, body is not JSON: %q", desc, res.code, res.body)
		}
		if res.code >= 400 {
			var e struct {
				Error *api.Error `json:"error"`
			}
			// /v1/health/ready answers 503 with its own document.
			if !strings.HasPrefix(target, "/v1/health") && (json.Unmarshal(res.body, &e) != nil || e.Error == nil || e.Error.Code == "" || e.Error.Message == "") {
				t.Errorf("%s: status %d without an error code and message: %s", desc, res.code, res.body)
			}
		}
	}
	if !routed {
		return
	}
	// Who may not call the route is refused before anything else: 401
	// without a token, 403 with one that lacks the right.
	if !allows(rt.need, r) {
		want := http.StatusForbidden
		if token == "" {
			want = http.StatusUnauthorized
		}
		if res.code != want || !strings.Contains(string(res.body), `"permission_denied"`) {
			t.Errorf("%s: status %d for a caller without the right, want %d permission_denied: %s", desc, res.code, want, res.body)
		}
		return
	}
	if rt.method != http.MethodPost {
		return
	}

	var dst any
	switch {
	case rt.path == "/v1/cluster/join":
		dst = &api.JoinRequest{}
	case rt.path == "/v1/internal/apply":
		dst = &fsm.Command{}
	case rt.op:
		dst = &api.LeaseRequest{}
	}
	if dst == nil {
		return
	}
	if len(body) > rt.limit {
		// The lease route refuses an unknown op before reading the body.
		if res.code != http.StatusRequestEntityTooLarge && res.code != http.StatusNotFound {
			t.Errorf("%s: status %d for a body over %d bytes, want 413", desc, res.code, rt.limit)
		}
		return
	}
	if !decodesStrictly(body, dst) && (res.code < 400 || res.code >= 500) {
		t.Errorf("%s: status %d for a body that does not decode, want 4xx: %s", desc, res.code, res.body)
	}
}

// TestOversizedAndMalformedBodiesRejected checks each kind of bad body on
// the two endpoints that take one from other nodes: 400 with a bad_request
// error for what does not decode, 413 for more than 1 MiB, and that a good
// body is accepted, so the refusals are about the body.
func TestOversizedAndMalformedBodiesRejected(t *testing.T) {
	n := startHTTPTestNode(t)
	h := n.routes()
	selfJoin := fmt.Sprintf(`{"node_id":%q,"raft_addr":%q,"http_addr":%q}`, n.ID(), n.transport.LocalAddr(), n.cfg.HTTPAddr)

	huge := func(prefix, suffix string) string {
		return prefix + strings.Repeat("a", 2<<20) + suffix
	}
	tests := []struct {
		name     string
		path     string
		body     string
		wantCode int
		wantErr  string // the error code in the body; "" for a 200
	}{
		{"apply: good body", "/v1/internal/apply", `{"op":"set_paused","paused":false}`, 200, ""},
		{"apply: empty body", "/v1/internal/apply", ``, 400, "bad_request"},
		{"apply: open brace", "/v1/internal/apply", `{`, 400, "bad_request"},
		{"apply: array", "/v1/internal/apply", `[]`, 400, "bad_request"},
		{"apply: unknown field", "/v1/internal/apply", `{"op":"set_paused","pause":true}`, 400, "bad_request"},
		{"apply: trailing brace", "/v1/internal/apply", `{"op":"set_paused"}}`, 400, "bad_request"},
		{"apply: second object", "/v1/internal/apply", `{"op":"set_paused"}{"op":"set_paused"}`, 400, "bad_request"},
		{"apply: 2 MiB string", "/v1/internal/apply", huge(`{"op":"revoke","token":1,"reason":"`, `"}`), 413, "bad_request"},
		{"apply: 2 MiB of spaces after a good object", "/v1/internal/apply", `{"op":"set_paused"}` + strings.Repeat(" ", 2<<20), 413, "bad_request"},
		{"apply: 2 MiB of garbage", "/v1/internal/apply", huge("x", ""), 413, "bad_request"},
		{"apply: op is a number", "/v1/internal/apply", `{"op":5}`, 400, "bad_request"},
		{"apply: token is a string", "/v1/internal/apply", `{"op":"revoke","token":"1"}`, 400, "bad_request"},
		{"apply: ttl is a duration string", "/v1/internal/apply", `{"op":"acquire","node":"n1","ttl":"5s"}`, 400, "bad_request"},
		{"apply: negative token", "/v1/internal/apply", `{"op":"revoke","token":-1}`, 400, "bad_request"},
		{"apply: null", "/v1/internal/apply", `null`, 400, "bad_command"},
		{"apply: no op", "/v1/internal/apply", `{}`, 400, "bad_command"},
		{"apply: invalid command", "/v1/internal/apply", `{"op":"acquire","node":"n1"}`, 400, "bad_command"},

		{"join: good body", "/v1/cluster/join", selfJoin, 200, ""},
		{"join: empty body", "/v1/cluster/join", ``, 400, "bad_request"},
		{"join: open brace", "/v1/cluster/join", `{`, 400, "bad_request"},
		{"join: array", "/v1/cluster/join", `[]`, 400, "bad_request"},
		{"join: unknown field", "/v1/cluster/join", `{"node_id":"n2","raft_addr":"127.0.0.1:1","http_addr":"127.0.0.1:2","voter":true}`, 400, "bad_request"},
		{"join: trailing brace", "/v1/cluster/join", selfJoin + `}`, 400, "bad_request"},
		{"join: 2 MiB string", "/v1/cluster/join", huge(`{"node_id":"`, `"}`), 413, "bad_request"},
		{"join: 2 MiB of spaces after a good object", "/v1/cluster/join", selfJoin + strings.Repeat(" ", 2<<20), 413, "bad_request"},
		{"join: node_id is a number", "/v1/cluster/join", `{"node_id":2,"raft_addr":"127.0.0.1:1","http_addr":"127.0.0.1:2"}`, 400, "bad_request"},
		{"join: raft_addr is a list", "/v1/cluster/join", `{"node_id":"n2","raft_addr":["127.0.0.1:1"],"http_addr":"127.0.0.1:2"}`, 400, "bad_request"},
		{"join: null", "/v1/cluster/join", `null`, 400, "bad_request"},
		{"join: missing fields", "/v1/cluster/join", `{"node_id":"n2"}`, 400, "bad_request"},
		{"join: another ID at the leader's raft address", "/v1/cluster/join",
			fmt.Sprintf(`{"node_id":"impostor","raft_addr":%q,"http_addr":"127.0.0.1:2"}`, n.transport.LocalAddr()), 409, api.Code(api.ErrJoinConflict)},
		{"join: the leader's ID at another raft address", "/v1/cluster/join",
			fmt.Sprintf(`{"node_id":%q,"raft_addr":"127.0.0.1:1","http_addr":"127.0.0.1:2"}`, n.ID()), 409, api.Code(api.ErrJoinConflict)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := serveHTTP(t, h, http.MethodPost, tt.path, fuzzOperatorToken, []byte(tt.body))
			if res.code != tt.wantCode {
				t.Fatalf("status %d, want %d: %s", res.code, tt.wantCode, res.body)
			}
			if ct := res.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			var e struct {
				Error *api.Error `json:"error"`
			}
			if err := json.Unmarshal(res.body, &e); err != nil {
				t.Fatalf("body is not JSON: %v: %q", err, res.body)
			}
			switch {
			case tt.wantErr == "" && e.Error != nil:
				t.Errorf("unexpected error %+v", e.Error)
			case tt.wantErr != "" && (e.Error == nil || e.Error.Code != tt.wantErr || e.Error.Message == ""):
				t.Errorf("error %+v, want code %q with a message", e.Error, tt.wantErr)
			}
		})
	}
	// None of the refused joins may have changed the group.
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	if s := f.Configuration().Servers; len(s) != 1 || string(s[0].ID) != n.ID() {
		t.Errorf("raft configuration changed: %+v", s)
	}
	if !n.IsLeader() {
		t.Error("the node lost leadership")
	}
	if err := n.ready(context.Background()); err != nil {
		t.Errorf("node not ready after the requests: %v", err)
	}
}

package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/geocursor/geocursor/fsm"
)

// The tests below run the client against httptest servers that answer as
// an agent would, or break the connection at a chosen point, and check
// what the caller is told. None of them sleeps: a test that needs
// something to happen between two attempts (a server coming up) does it
// from the client's own trace hooks.

// fastRetries retries quickly, so that a test of the retry path takes
// milliseconds.
var fastRetries = ClientOptions{Timeout: 2 * time.Second, Retries: 3, Backoff: Backoff{Min: time.Millisecond, Max: 5 * time.Millisecond}}

// serve starts a server for h that is closed when the test ends and
// returns its address as host:port.
func serve(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// answer writes v as a JSON answer with status.
func answer(t *testing.T, w http.ResponseWriter, status int, v any) {
	t.Helper()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		t.Errorf("encode answer: %v", err)
	}
}

// errorAnswer is the body of a failed request as the agents serve it.
func errorAnswer(code, message string) map[string]any {
	return map[string]any{"error": map[string]string{"code": code, "message": message}}
}

// matchesOnly fails the test unless err is an error that matches want
// and no other error of the table, nor one of the client's own; with want
// nil, unless it is an error that matches none of them.
func matchesOnly(t *testing.T, what string, err, want error) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want one that matches %v", what, want)
		return
	}
	if want != nil && !errors.Is(err, want) {
		t.Errorf("%s: %v, want it to match %v", what, err, want)
		return
	}
	others := append([]error{ErrNotSent, ErrUnknownOutcome}, fsm.Refusals...)
	for _, s := range wireCodes {
		others = append(others, s.err)
	}
	for _, other := range others {
		if other != want && errors.Is(err, other) {
			t.Errorf("%s: %v matches %v too", what, err, other)
		}
	}
}

// TestErrorAnswerMatchesItsSentinel serves every code of the table as the
// failure of a whole request (a non-200 answer with an error object) and
// checks that each kind of request returns the error of that code, with
// the server's message.
func TestErrorAnswerMatchesItsSentinel(t *testing.T) {
	ctx := context.Background()
	c := NewClient(ClientOptions{})
	for _, s := range wireCodes {
		for _, msg := range []string{s.err.Error(), fmt.Sprintf("%v: said the server about %s", s.err, s.code)} {
			addr := serve(t, func(w http.ResponseWriter, r *http.Request) {
				answer(t, w, HTTPStatus(s.err), errorAnswer(s.code, msg))
			})
			calls := map[string]func() error{
				"Status": func() error { _, err := c.Status(ctx, addr); return err },
				"Health": func() error { _, err := c.Health(ctx, addr); return err },
				"Join":   func() error { _, err := c.Join(ctx, addr, JoinRequest{NodeID: "n4"}); return err },
				"Apply":  func() error { _, err := c.Apply(ctx, addr, fsm.Command{Op: fsm.OpAcquire}); return err },
				"Lease": func() error {
					_, err := c.Lease(ctx, addr, "acquire", LeaseRequest{Node: "n1", TTL: "5s"})
					return err
				},
				"SetPaused": func() error { _, err := c.SetPaused(ctx, addr, true); return err },
			}
			for name, call := range calls {
				err := call()
				what := fmt.Sprintf("%s answered HTTP %d %s", name, HTTPStatus(s.err), s.code)
				matchesOnly(t, what, err, s.err)
				if err != nil && !strings.HasSuffix(err.Error(), ": "+msg) {
					t.Errorf("%s: %q does not end with the server's message %q", what, err, msg)
				}
			}
		}
	}
}

// TestRefusalInAnswerIsResultErr serves every state-machine refusal inside
// a 200 answer and checks that the command methods return it in
// Result.Err, with its message and the state that came with it, and no
// error: the request went through. It also checks what each method sent.
func TestRefusalInAnswerIsResultErr(t *testing.T) {
	ctx := context.Background()
	c := NewClient(ClientOptions{})
	lease := fsm.Lease{Holder: "n2", Token: 7, ExpiresAt: 1234}
	for _, refusal := range fsm.Refusals {
		refused := fmt.Errorf("%w: held by n2 (token 7) for another 3s", refusal)
		type request struct{ method, path, body string }
		got := make(chan request, 1)
		addr := serve(t, func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			got <- request{r.Method, r.URL.Path, strings.TrimSpace(string(b))}
			answer(t, w, http.StatusOK, NewApplyResponse(fsm.Result{Lease: lease, Now: 99, Index: 12, Err: refused}))
		})
		for _, tc := range []struct {
			name             string
			call             func() (fsm.Result, error)
			wantPath, wantIn string
		}{
			{"Apply", func() (fsm.Result, error) {
				return c.Apply(ctx, addr, fsm.Command{Op: fsm.OpRenew, Node: "n1", Token: 7, TTL: time.Second})
			}, PathApply, `{"op":"renew","node":"n1","token":7,"ttl":1000000000}`},
			{"Lease", func() (fsm.Result, error) {
				return c.Lease(ctx, addr, "acquire", LeaseRequest{Node: "n1", TTL: "5s"})
			}, PathLease + "acquire", `{"node":"n1","token":0,"ttl":"5s"}`},
			{"SetPaused(true)", func() (fsm.Result, error) { return c.SetPaused(ctx, addr, true) }, PathPause, ""},
			{"SetPaused(false)", func() (fsm.Result, error) { return c.SetPaused(ctx, addr, false) }, PathResume, ""},
		} {
			res, err := tc.call()
			req := <-got
			what := fmt.Sprintf("%s refused with %v", tc.name, refusal)
			if req.method != http.MethodPost || req.path != tc.wantPath || req.body != tc.wantIn {
				t.Errorf("%s: sent %s %s %s, want POST %s %s", what, req.method, req.path, req.body, tc.wantPath, tc.wantIn)
			}
			if err != nil {
				t.Errorf("%s: error %v, want the refusal in the result", what, err)
				continue
			}
			matchesOnly(t, what, res.Err, refusal)
			if res.Err != nil && res.Err.Error() != refused.Error() {
				t.Errorf("%s: message %q, want %q", what, res.Err, refused)
			}
			if res.Lease != lease || res.Now != 99 || res.Index != 12 {
				t.Errorf("%s: result %+v, want lease %+v, now 99, index 12", what, res, lease)
			}
		}
	}
}

// TestAnswersWithoutErrorObject checks the answers that carry no error of
// the table: a failure page of something that is not an agent, and
// answers whose body does not decode. An undecodable answer to a POST may
// follow an applied command, so its outcome is unknown; one to a GET is a
// plain error.
func TestAnswersWithoutErrorObject(t *testing.T) {
	ctx := context.Background()
	c := NewClient(ClientOptions{})
	addr := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/proxy/") {
			http.Error(w, "bad gateway: upstream went away", http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"lease": {"holder": `) // cut short
	})

	_, err := c.Lease(ctx, addr, "acquire", LeaseRequest{Node: "n1", TTL: "1s"})
	matchesOnly(t, "Lease answered 200 with a truncated body", err, ErrUnknownOutcome)
	if _, err := c.Apply(ctx, addr, fsm.Command{Op: fsm.OpAcquire}); !errors.Is(err, ErrUnknownOutcome) {
		t.Errorf("Apply answered 200 with a truncated body: %v, want it to match %v", err, ErrUnknownOutcome)
	}

	_, err = c.Status(ctx, addr)
	if err == nil || !strings.Contains(err.Error(), "decode the answer") {
		t.Errorf("Status answered 200 with a truncated body: %v, want a decode error", err)
	}
	matchesOnly(t, "Status answered 200 with a truncated body", err, nil)

	_, err = c.Status(ctx, "http://"+addr+"/proxy")
	if err == nil || !strings.Contains(err.Error(), "HTTP 502: bad gateway: upstream went away") {
		t.Errorf("Status answered 502 with a text page: %v, want the status and the page", err)
	}
	matchesOnly(t, "Status answered 502 with a text page", err, nil)
}

// TestReadyAcceptsNotReady checks that a node that is not ready answers
// 503 with the reason, which Ready returns as an answer, not an error; an
// error object in a 503 is still an error.
func TestReadyAcceptsNotReady(t *testing.T) {
	ctx := context.Background()
	c := NewClient(ClientOptions{})
	for _, want := range []Ready{{Ready: true, Leader: "n1"}, {Reason: "no leader known"}} {
		addr := serve(t, func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodGet || r.URL.Path != PathReady {
				t.Errorf("Ready sent %s %s, want GET %s", r.Method, r.URL.Path, PathReady)
			}
			answer(t, w, want.HTTPStatus(), want)
		})
		got, err := c.Ready(ctx, addr)
		if err != nil || got != want {
			t.Errorf("Ready answered HTTP %d %+v: got %+v, %v", want.HTTPStatus(), want, got, err)
		}
	}

	addr := serve(t, func(w http.ResponseWriter, r *http.Request) {
		answer(t, w, http.StatusServiceUnavailable, errorAnswer("shutting_down", "node n1 is shutting down"))
	})
	_, err := c.Ready(ctx, addr)
	matchesOnly(t, "Ready answered 503 shutting_down", err, ErrShutdown)
}

// refusedAddr returns an address on which nothing listens: connecting to
// it is refused at once.
func refusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// withFailedDials returns ctx with a trace that counts the dials that
// failed and calls onFail after each: the client's requests report to it
// in addition to the client's own trace.
func withFailedDials(ctx context.Context, failed *atomic.Int32, onFail func(n int32)) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		ConnectDone: func(_, _ string, err error) {
			if err != nil {
				n := failed.Add(1)
				if onFail != nil {
					onFail(n)
				}
			}
		},
	})
}

// TestNotSentIsRetriedUntilTheServerIsUp has nothing listen on the
// address at the first attempt and a server come up right after it: the
// client sends the command again, and the server sees it once.
func TestNotSentIsRetriedUntilTheServerIsUp(t *testing.T) {
	addr := refusedAddr(t)
	var served atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		answer(t, w, http.StatusOK, NewApplyResponse(fsm.Result{Lease: fsm.Lease{Holder: "n1", Token: 1}}))
	}))
	t.Cleanup(srv.Close)
	// The server comes up when the first dial has failed, before the
	// client's backoff is over.
	var failed atomic.Int32
	ctx := withFailedDials(context.Background(), &failed, func(n int32) {
		if n != 1 {
			return
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("listen on %s again: %v", addr, err)
			return
		}
		srv.Listener.Close()
		srv.Listener = ln
		srv.Start()
	})

	res, err := NewClient(fastRetries).Lease(ctx, addr, "acquire", LeaseRequest{Node: "n1", TTL: "1s"})
	if err != nil || res.Lease.Token != 1 {
		t.Fatalf("Lease with the server up after the first dial: %+v, %v; want the grant", res, err)
	}
	if n := failed.Load(); n != 1 {
		t.Errorf("%d failed dials, want 1", n)
	}
	if n := served.Load(); n != 1 {
		t.Errorf("the server saw the command %d times, want once", n)
	}
}

// TestNotSentFailsAfterTheRetries has nothing listen at all: the client
// tries 1+Retries times and says the request was never sent.
func TestNotSentFailsAfterTheRetries(t *testing.T) {
	addr := refusedAddr(t)
	for _, retries := range []int{0, 3} {
		opts := fastRetries
		opts.Retries = retries
		var failed atomic.Int32
		ctx := withFailedDials(context.Background(), &failed, nil)
		_, err := NewClient(opts).Apply(ctx, addr, fsm.Command{Op: fsm.OpAcquire, Node: "n1", TTL: time.Second})
		matchesOnly(t, fmt.Sprintf("Apply to a closed port with %d retries", retries), err, ErrNotSent)
		if n := failed.Load(); n != int32(retries+1) {
			t.Errorf("with %d retries: %d dials, want %d", retries, n, retries+1)
		}
	}
}

// TestNotSentIsNotRetriedOnceCanceled checks that a request whose context
// has ended is not sent again.
func TestNotSentIsNotRetriedOnceCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var failed atomic.Int32
	start := time.Now()
	_, err := NewClient(ClientOptions{Retries: 3, Backoff: Backoff{Min: time.Second, Max: time.Second}}).
		Status(withFailedDials(ctx, &failed, nil), refusedAddr(t))
	if !errors.Is(err, ErrNotSent) {
		t.Errorf("Status with a canceled context: %v, want it to match %v", err, ErrNotSent)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("Status with a canceled context took %s: it waited to retry", took)
	}
}

// dropAfterReading is a handler that reads the whole request, counts it,
// and closes the connection without an answer: what a server that dies
// after applying a command looks like to the client.
func dropAfterReading(t *testing.T, count *atomic.Int32) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.ReadAll(r.Body); err != nil {
			t.Errorf("read request: %v", err)
		}
		count.Add(1)
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		conn.Close()
	}
}

// TestDeliveredIsNotRetried drops the connection after the server has
// read the request: the command may have been applied, so the client must
// not send it again, also with retries allowed and on a connection that
// an earlier request used, and must say that the outcome is unknown.
func TestDeliveredIsNotRetried(t *testing.T) {
	c := NewClient(fastRetries)
	var dropped atomic.Int32
	drop := dropAfterReading(t, &dropped)
	addr := serve(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == PathStatus {
			answer(t, w, http.StatusOK, Status{NodeID: "n1"})
			return
		}
		drop(w, r)
	})
	calls := []struct {
		name string
		call func(context.Context) error
	}{
		{"Apply", func(ctx context.Context) error {
			_, err := c.Apply(ctx, addr, fsm.Command{Op: fsm.OpAcquire})
			return err
		}},
		{"Lease", func(ctx context.Context) error {
			_, err := c.Lease(ctx, addr, "renew", LeaseRequest{Node: "n1", Token: 3, TTL: "1s"})
			return err
		}},
		{"SetPaused", func(ctx context.Context) error { _, err := c.SetPaused(ctx, addr, true); return err }},
		{"Join", func(ctx context.Context) error { _, err := c.Join(ctx, addr, JoinRequest{NodeID: "n4"}); return err }},
		{"Raw", func(ctx context.Context) error {
			_, _, err := c.Raw(ctx, http.MethodPost, addr, PathApply, []byte(`{}`))
			return err
		}},
	}
	for _, reuse := range []bool{false, true} {
		for _, tc := range calls {
			if reuse {
				// Leave a kept-alive connection for the command, on which
				// the transport itself retries requests it deems safe to.
				if _, err := c.Status(context.Background(), addr); err != nil {
					t.Fatalf("Status: %v", err)
				}
			}
			var reused atomic.Bool
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
				GotConn: func(info httptrace.GotConnInfo) { reused.Store(info.Reused) },
			})
			dropped.Store(0)
			err := tc.call(ctx)
			what := fmt.Sprintf("%s dropped after delivery (connection reused: %v)", tc.name, reuse)
			if reused.Load() != reuse {
				t.Errorf("%s: the connection was reused: %v", what, reused.Load())
			}
			matchesOnly(t, what, err, ErrUnknownOutcome)
			if n := dropped.Load(); n != 1 {
				t.Errorf("%s: the server saw it %d times, want once", what, n)
			}
		}
	}
}

// TestTimeoutAfterDeliveryIsNotRetried has the server hold the answer
// past the client's timeout: sent, so not sent again, outcome unknown.
func TestTimeoutAfterDeliveryIsNotRetried(t *testing.T) {
	var served atomic.Int32
	release := make(chan struct{})
	addr := serve(t, func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	t.Cleanup(func() { close(release) }) // before the server closes: it waits for its handlers
	opts := fastRetries
	opts.Timeout = 100 * time.Millisecond
	_, err := NewClient(opts).Lease(context.Background(), addr, "acquire", LeaseRequest{Node: "n1", TTL: "1s"})
	matchesOnly(t, "Lease answered after the timeout", err, ErrUnknownOutcome)
	if n := served.Load(); n != 1 {
		t.Errorf("the server saw the command %d times, want once", n)
	}
}

// TestRawSendsAndReturnsAsIs checks that Raw sends the body unchanged and
// returns any answer, an error status included, without an error.
func TestRawSendsAndReturnsAsIs(t *testing.T) {
	const sent = `{"node": "n1", "ttl": "1s", "extra": true}`
	addr := serve(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.URL.Path != PathLease+"acquire" || string(b) != sent ||
			r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("Raw sent %s %s %q (Content-Type %q)", r.Method, r.URL.Path, b, r.Header.Get("Content-Type"))
		}
		answer(t, w, http.StatusBadRequest, errorAnswer("bad_request", "unknown field \"extra\""))
	})
	status, body, err := NewClient(ClientOptions{}).Raw(context.Background(), http.MethodPost, addr, PathLease+"acquire", []byte(sent))
	if err != nil || status != http.StatusBadRequest || !strings.Contains(string(body), `"code":"bad_request"`) {
		t.Errorf("Raw: HTTP %d %s, %v; want the 400 answer as it came", status, body, err)
	}
}

func TestRecentAsksForTheSamplesSinceATime(t *testing.T) {
	since := time.Date(2026, 11, 25, 10, 0, 0, 123456789, time.UTC)
	var query, auth string
	addr := serve(t, func(w http.ResponseWriter, r *http.Request) {
		query, auth = r.URL.Query().Get("since"), r.Header.Get("Authorization")
		if r.URL.Path != PathRecent {
			t.Errorf("path %s, want %s", r.URL.Path, PathRecent)
		}
		answer(t, w, http.StatusOK, Recent{NodeID: "node2", IntervalSeconds: 1, Samples: []Sample{{At: since.Add(time.Second), Token: 7}}})
	})
	c := NewClient(ClientOptions{Token: "read-token-0123456789"})
	r, err := c.Recent(context.Background(), addr, since)
	if err != nil {
		t.Fatalf("Recent: %v", err)
	}
	if query != since.Format(time.RFC3339Nano) || auth != "Bearer read-token-0123456789" {
		t.Errorf("since %q, Authorization %q: want %s and the token", query, auth, since.Format(time.RFC3339Nano))
	}
	if r.NodeID != "node2" || len(r.Samples) != 1 || r.Samples[0].Token != 7 {
		t.Errorf("Recent = %+v", r)
	}
	if _, err := c.Recent(context.Background(), addr, time.Time{}); err != nil || query != "" {
		t.Errorf("Recent without since: %v, since %q, want none", err, query)
	}
}

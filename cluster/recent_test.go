package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// fakeDeadLetters is a DeadLetterSource that counts its reads.
type fakeDeadLetters struct {
	reads atomic.Int64
	err   error
}

func (f *fakeDeadLetters) RecentDeadLetters(ctx context.Context, limit int) ([]api.DeadLetter, error) {
	f.reads.Add(1)
	if f.err != nil {
		return nil, f.err
	}
	return []api.DeadLetter{{EventID: 7, Reason: "geo_events row 99 does not exist", CreatedAt: time.Now().UTC()}}[:min(limit, 1)], nil
}

func getRecent(t *testing.T, n *Node, query, token string) (int, api.Recent, []byte) {
	t.Helper()
	res := serveHTTP(t, n.routes(), http.MethodGet, api.PathRecent+query, token, nil)
	var r api.Recent
	if res.code == http.StatusOK {
		if err := json.Unmarshal(res.body, &r); err != nil {
			t.Fatalf("decode %s: %v: %s", api.PathRecent, err, res.body)
		}
	}
	return res.code, r, res.body
}

func TestRecentNeedsTheReadTokenAndKeepsTheLastMinutes(t *testing.T) {
	n := startHTTPTestNode(t)

	if code, _, body := getRecent(t, n, "", ""); code != http.StatusUnauthorized || !strings.Contains(string(body), "permission_denied") {
		t.Fatalf("without a token: %d %s, want 401 permission_denied", code, body)
	}
	if code, _, body := getRecent(t, n, "", "not-a-token-of-this-node"); code != http.StatusForbidden {
		t.Fatalf("with a wrong token: %d %s, want 403", code, body)
	}
	if code, _, body := getRecent(t, n, "?since=yesterday", fuzzReadToken); code != http.StatusBadRequest {
		t.Fatalf("with a bad since: %d %s, want 400", code, body)
	}

	// A revoke and the next grant: one failover, completed once the lease
	// is taken again.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	apply := func(cmd fsm.Command) fsm.Result {
		t.Helper()
		res, err := n.Apply(ctx, cmd)
		if err != nil || res.Err != nil {
			t.Fatalf("%s: %v %v", cmd.Op, err, res.Err)
		}
		return res
	}
	tok := apply(fsm.Command{Op: fsm.OpAcquire, Node: n.ID(), TTL: time.Minute}).Lease.Token
	if _, err := n.applyLocal(fsm.Command{Op: fsm.OpRevoke, Token: tok, Reason: "test"}); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	apply(fsm.Command{Op: fsm.OpAcquire, Node: n.ID(), TTL: time.Minute})

	var r api.Recent
	deadline := time.Now().Add(10 * time.Second)
	for {
		var code int
		var body []byte
		code, r, body = getRecent(t, n, "", fuzzReadToken)
		if code != http.StatusOK {
			t.Fatalf("with the read token: %d %s", code, body)
		}
		if len(r.Samples) >= 2 && len(r.Failovers) == 1 && r.Failovers[0].To != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no two samples and one completed failover within 10s: %+v", r)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if r.NodeID != n.ID() || r.IntervalSeconds != 1 {
		t.Errorf("node_id %q, interval %v: want %s, 1", r.NodeID, r.IntervalSeconds, n.ID())
	}
	if c := r.Current; c.Holder == nil || *c.Holder != n.ID() || !c.Held || c.Leader == nil || *c.Leader != n.ID() || c.Token != tok+1 {
		t.Errorf("current sample %+v: want %s leading and holding token %d", c, n.ID(), tok+1)
	}
	f := r.Failovers[0]
	if f.Kind != api.FailoverRevoked || f.From != n.ID() || f.FromToken != tok || *f.To != n.ID() || f.ToToken != tok+1 || f.TakenAt.Before(f.LostAt) {
		t.Errorf("failover %+v: want %s's token %d revoked and token %d taken after", f, n.ID(), tok, tok+1)
	}
	if r.DeadLetters != nil {
		t.Errorf("dead letters %+v on a node without a tracking database, want none", r.DeadLetters)
	}
	for i := 1; i < len(r.Samples); i++ {
		if !r.Samples[i].At.After(r.Samples[i-1].At) {
			t.Fatalf("samples not oldest first: %s then %s", r.Samples[i-1].At, r.Samples[i].At)
		}
	}

	// since: only what is newer.
	last := r.Samples[len(r.Samples)-1].At
	_, newer, _ := getRecent(t, n, "?since="+url.QueryEscape(last.Format(time.RFC3339Nano)), fuzzReadToken)
	for _, s := range newer.Samples {
		if !s.At.After(last) {
			t.Errorf("since %s returned a sample of %s", last, s.At)
		}
	}

	// Dead letters come from the source, read at most once a second.
	src := &fakeDeadLetters{}
	n.SetDeadLetterSource(src)
	for range 5 {
		_, r, _ = getRecent(t, n, "", fuzzOperatorToken)
	}
	if r.DeadLetters == nil || len(r.DeadLetters.Recent) != 1 || r.DeadLetters.Recent[0].EventID != 7 || r.DeadLetters.ReadAt == nil {
		t.Fatalf("dead letters %+v, want the one of the source", r.DeadLetters)
	}
	if got := src.reads.Load(); got != 1 {
		t.Errorf("5 requests within a second read the dead letters %d times, want 1", got)
	}
	src.err = errors.New("tracking database: connection refused")
	time.Sleep(deadLetterEvery)
	_, r, _ = getRecent(t, n, "", fuzzReadToken)
	if r.DeadLetters == nil || r.DeadLetters.Error == "" || len(r.DeadLetters.Recent) != 1 {
		t.Errorf("after a failed read: %+v, want the error and the last reading", r.DeadLetters)
	}
}

func TestStatusPageIsServedWithoutATokenAndLoadsNothingFromOutside(t *testing.T) {
	n := startHTTPTestNode(t)
	h := n.routes()
	for _, tc := range []struct {
		path, contentType, contains string
	}{
		{api.PathUI, "text/html", `<script src="app.js"`},
		{api.PathUI + "app.js", "javascript", "sessionStorage"},
		{api.PathUI + "style.css", "text/css", ":root"},
	} {
		res := serveHTTP(t, h, http.MethodGet, tc.path, "", nil)
		if res.code != http.StatusOK {
			t.Errorf("GET %s without a token: %d, want 200", tc.path, res.code)
			continue
		}
		if ct := res.header.Get("Content-Type"); !strings.Contains(ct, tc.contentType) {
			t.Errorf("GET %s: Content-Type %q, want %s", tc.path, ct, tc.contentType)
		}
		if !strings.Contains(string(res.body), tc.contains) {
			t.Errorf("GET %s: body lacks %q", tc.path, tc.contains)
		}
		csp := res.header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("GET %s: Content-Security-Policy %q lacks %q", tc.path, csp, want)
			}
		}
		// Nothing the page loads comes from another host.
		for _, ref := range []string{"http://", "https://", "//fonts", "cdn"} {
			if strings.Contains(strings.ReplaceAll(string(res.body), "http://www.w3.org/2000/svg", ""), ref) {
				t.Errorf("GET %s: the file refers to %q", tc.path, ref)
			}
		}
	}
	if res := serveHTTP(t, h, http.MethodGet, "/ui", "", nil); res.code != http.StatusTemporaryRedirect && res.code != http.StatusMovedPermanently {
		t.Errorf("GET /ui: %d, want a redirect to /ui/", res.code)
	}
	if res := serveHTTP(t, h, http.MethodPost, api.PathUI, "", nil); res.code != http.StatusMethodNotAllowed {
		t.Errorf("POST /ui/: %d, want 405", res.code)
	}
}

package cluster

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// fakeSource is a status source that knows a source head, the databases
// and delivery, as a processing node's does.
type fakeSource struct{}

func (fakeSource) AddStatus(st *api.Status) {
	head, lag, secs := int64(120), int64(120)-st.Cursor.LastEventID, 4.5
	date := time.Unix(1_800_000_000, 0)
	st.Cursor.SourceLastEventID, st.Cursor.LagEvents, st.Cursor.LagSeconds = &head, &lag, &secs
	st.Cursor.SourceLastEventDate = &date
	st.Cursor.SafeEventDate = &date
	st.Databases = &api.Databases{Source: api.DatabaseOK, Tracking: "connection refused"}
	st.Delivery = &api.Delivery{Backlog: 7, SidekiqRedis: api.DatabaseOK, CacheRedis: api.DeliveryNotConfigured}
}

func scrape(t *testing.T, n *Node) map[string]*dto.MetricFamily {
	t.Helper()
	res := serveHTTP(t, n.routes(), http.MethodGet, api.PathMetrics, fuzzReadToken, nil)
	if res.code != http.StatusOK {
		t.Fatalf("GET %s: status %d: %s", api.PathMetrics, res.code, res.body)
	}
	if ct := res.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q, want Prometheus's text format", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(res.body))
	if err != nil {
		t.Fatalf("parse the scrape: %v\n%s", err, res.body)
	}
	return fams
}

// value is the value of the series of name whose labels include labels
// (name=value pairs); ok is false when there is none.
func value(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(labels); i += 2 {
			if have[labels[i]] != labels[i+1] {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

func TestMetricsNeedTheReadToken(t *testing.T) {
	n := startHTTPTestNode(t)
	for _, c := range []struct {
		token string
		want  int
	}{{"", http.StatusUnauthorized}, {"not-a-token", http.StatusForbidden}, {fuzzReadToken, http.StatusOK}, {fuzzOperatorToken, http.StatusOK}} {
		res := serveHTTP(t, n.routes(), http.MethodGet, api.PathMetrics, c.token, nil)
		if res.code != c.want {
			t.Errorf("token %q: status %d, want %d: %s", c.token, res.code, c.want, res.body)
		}
		if c.want != http.StatusOK && !strings.Contains(string(res.body), `"permission_denied"`) {
			t.Errorf("token %q: %s, want a permission_denied error", c.token, res.body)
		}
	}
}

func TestMetricsShowRaftTheReplicaAndTheStatusSource(t *testing.T) {
	n := startHTTPTestNode(t)
	ctx := context.Background()
	res, err := n.Apply(ctx, fsm.Command{Op: fsm.OpAcquire, Node: n.ID(), TTL: time.Minute})
	if err != nil || res.Err != nil {
		t.Fatalf("acquire: %v %v", err, res.Err)
	}
	if r, err := n.Apply(ctx, fsm.Command{Op: fsm.OpRenew, Node: n.ID(), Token: res.Lease.Token + 5, TTL: time.Minute}); err != nil || r.Err == nil {
		t.Fatalf("renew with a stale token: %v %v, want stale_token", err, r.Err)
	}
	n.revoke(res.Lease, "test")

	fams := scrape(t, n)
	for _, w := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"geocursor_raft_is_leader", nil, 1},
		{"geocursor_lease_token", nil, float64(res.Lease.Token)},
		{"geocursor_lease_held", nil, 0},
		{"geocursor_lease_refusals_total", []string{"op", "renew", "code", "stale_token"}, 1},
		{"geocursor_lease_revocations_total", nil, 1},
		{"geo_cursor_last_event_id", nil, 0},
		{"geocursor_open_gaps", nil, 0},
	} {
		if got, ok := value(fams, w.name, w.labels...); !ok || got != w.want {
			t.Errorf("%s%v = %v (present %v), want %v", w.name, w.labels, got, ok, w.want)
		}
	}
	if term, _ := value(fams, "geocursor_raft_term"); term < 1 {
		t.Errorf("geocursor_raft_term = %v, want at least 1", term)
	}
	// Without a status source (a witness) nothing is said of databases.
	for _, name := range []string{"geo_last_event_id", "geocursor_lag_events", "geocursor_database_up", "geocursor_delivery_backlog_jobs", "geo_cursor_last_event_timestamp"} {
		if _, ok := fams[name]; ok {
			t.Errorf("%s present on a node without a source", name)
		}
	}
	for name, f := range fams {
		if f.GetHelp() == "" {
			t.Errorf("%s has no HELP", name)
		}
	}

	n.SetStatusSource(fakeSource{})
	fams = scrape(t, n)
	for _, w := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"geo_last_event_id", nil, 120},
		{"geo_event_log_max_id", nil, 120},
		{"geo_last_event_timestamp", nil, 1_800_000_000},
		{"geo_cursor_last_event_timestamp", nil, 1_800_000_000},
		{"geocursor_lag_events", nil, 120},
		{"geocursor_lag_seconds", nil, 4.5},
		{"geocursor_database_up", []string{"database", "source"}, 1},
		{"geocursor_database_up", []string{"database", "tracking"}, 0},
		{"geocursor_database_up", []string{"database", "sidekiq_redis"}, 1},
		{"geocursor_delivery_backlog_jobs", nil, 7},
	} {
		if got, ok := value(fams, w.name, w.labels...); !ok || got != w.want {
			t.Errorf("%s%v = %v (present %v), want %v", w.name, w.labels, got, ok, w.want)
		}
	}
	if _, ok := value(fams, "geocursor_database_up", "database", "cache_redis"); ok {
		t.Error("cache_redis is up or down, but it has no delivery block")
	}
}

package systemtest

// The metrics test: three secured agents process a live load and deliver to
// Redis while the test scrapes GET /v1/metrics from each, as Prometheus
// would, with the read token.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/internal/redisserver"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

// dashboardPath is the Grafana dashboard shipped in dist/, from this
// package's directory.
const dashboardPath = "../../dist/grafana/geocursor.json"

// scrapeOf is one node's scrape: metric families by name.
type scrapeOf map[string]*dto.MetricFamily

func scrapeAgent(t *testing.T, c *api.Client, a *ts.Agent) scrapeOf {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	text, err := c.Metrics(ctx, a.HTTPAddr)
	if err != nil {
		t.Fatalf("scrape %s: %v", a.ID, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		t.Fatalf("parse the scrape of %s: %v\n%s", a.ID, err, text)
	}
	return fams
}

// gauge is the value of the one series of name (with the labels given as
// name, value pairs); ok is false when there is none.
func (s scrapeOf) gauge(name string, labels ...string) (float64, bool) {
	for key, v := range s.samples(name) {
		if matchLabels(key, labels) {
			return v, true
		}
	}
	return 0, false
}

func matchLabels(key string, labels []string) bool {
	for i := 0; i+1 < len(labels); i += 2 {
		if !strings.Contains(key, fmt.Sprintf("%s=%q", labels[i], labels[i+1])) {
			return false
		}
	}
	return true
}

// samples flattens family name into its samples, keyed by sample name and
// labels: a counter or gauge is one sample per series, a histogram its
// buckets, sum and count, a summary its sum and count.
func (s scrapeOf) samples(name string) map[string]float64 {
	out := map[string]float64{}
	f := s[name]
	if f == nil {
		return out
	}
	for _, m := range f.GetMetric() {
		var ls []string
		for _, l := range m.GetLabel() {
			ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
		}
		key := name + "{" + strings.Join(ls, ",") + "}"
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			out[key] = m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			out[key] = m.GetGauge().GetValue()
		case dto.MetricType_HISTOGRAM:
			h := m.GetHistogram()
			out[key+"_count"], out[key+"_sum"] = float64(h.GetSampleCount()), h.GetSampleSum()
			for _, b := range h.GetBucket() {
				out[fmt.Sprintf("%s_bucket{le=%g}", key, b.GetUpperBound())] = float64(b.GetCumulativeCount())
			}
		case dto.MetricType_SUMMARY:
			out[key+"_count"], out[key+"_sum"] = float64(m.GetSummary().GetSampleCount()), m.GetSummary().GetSampleSum()
		default:
			out[key] = m.GetUntyped().GetValue()
		}
	}
	return out
}

// histogramCount is the number of observations of histogram name.
func (s scrapeOf) histogramCount(name string) uint64 {
	var n uint64
	if f := s[name]; f != nil {
		for _, m := range f.GetMetric() {
			n += m.GetHistogram().GetSampleCount()
		}
	}
	return n
}

// has reports whether the scrape holds a series that a query naming name
// selects: a family of that name, or the _bucket, _sum or _count series of
// a histogram or summary.
func (s scrapeOf) has(name string) bool {
	if f := s[name]; f != nil && len(f.GetMetric()) > 0 {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		if f := s[base]; f != nil && len(f.GetMetric()) > 0 &&
			(f.GetType() == dto.MetricType_HISTOGRAM || (f.GetType() == dto.MetricType_SUMMARY && suffix != "_bucket")) {
			return true
		}
	}
	return false
}

// dashboardMetrics reads the dashboard and returns the names of the
// geocursor and GitLab metrics its queries select.
func dashboardMetrics(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatalf("read the dashboard: %v", err)
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("the dashboard is not JSON: %v", err)
	}
	var exprs []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if s, ok := e.(string); ok && k == "expr" {
					exprs = append(exprs, s)
				}
				walk(e)
			}
		case []any:
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(doc)
	if len(exprs) < 10 {
		t.Fatalf("the dashboard has %d queries; its panels lost their expr fields?", len(exprs))
	}
	name := regexp.MustCompile(`\bgeo(?:cursor)?_[A-Za-z0-9_:]*`)
	seen := map[string]bool{}
	for _, e := range exprs {
		for _, n := range name.FindAllString(e, -1) {
			seen[n] = true
		}
	}
	var names []string
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// metricsHCL is the agents' configuration after the addresses: processing,
// and delivery to a Sidekiq Redis and a Rails cache Redis (two databases
// of one server).
func metricsHCL() string {
	return procConfig{Secure: true}.HCL() + `
delivery {
  sidekiq {
    redis_url = env.GEOCURSOR_SIDEKIQ_REDIS_URL
  }
  cache {
    redis_url = env.GEOCURSOR_CACHE_REDIS_URL
    namespace = "cache:gitlab"
  }
}
`
}

func TestMetricsScrapedFromALiveClusterAgreeWithStatus(t *testing.T) {
	clk := newClock(t)
	d := newProcDBs(t, false)
	r := ts.StartRedis(t, redisserver.Options{AppendFsync: "no"})
	env := append(d.Env(),
		"GEOCURSOR_SIDEKIQ_REDIS_URL=redis://"+r.Addr()+"/0",
		"GEOCURSOR_CACHE_REDIS_URL=redis://"+r.Addr()+"/1")
	c := ts.StartSecureCluster(t, 3, metricsHCL(), env)
	ts.WaitFor(t, 30*time.Second, "every agent to reach both databases", func() (bool, string) {
		for _, a := range c.Agents {
			st, err := statusOf(a)
			if err != nil {
				return false, err.Error()
			}
			if st.Databases == nil || st.Databases.Source != "ok" || st.Databases.Tracking != "ok" || st.Delivery == nil {
				return false, fmt.Sprintf("%s: databases %+v, delivery %+v", a.ID, st.Databases, st.Delivery)
			}
		}
		return true, ""
	})
	clk.Logf("three secured agents up, delivering to Redis")
	sec := c.Security
	reader, err := sec.Client(sec.ReadToken)
	if err != nil {
		t.Fatal(err)
	}
	anonymous, err := sec.Client("")
	if err != nil {
		t.Fatal(err)
	}

	// Without a token: 401, with the error object every endpoint uses.
	for _, a := range c.Agents {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		code, body, err := anonymous.Raw(ctx, http.MethodGet, a.HTTPAddr, api.PathMetrics, nil)
		cancel()
		if err != nil || code != http.StatusUnauthorized || !strings.Contains(string(body), `"permission_denied"`) {
			t.Errorf("%s: GET %s without a token: %d %s (%v), want 401 permission_denied", a.ID, api.PathMetrics, code, body, err)
		}
	}

	// Rolled-back transactions leave gaps that stay open (gap_timeout is an
	// hour), so the safe cursor ends below the replicated one: GitLab's
	// timestamp then comes from the source.
	bg := startLoad(t, d, loadgen.Config{
		Writers: 4, Rate: 600,
		RollbackFraction: 0.02, HoldFraction: 0.02, HoldFor: 200 * time.Millisecond,
		CacheInvalidationFraction: 0.1, BadFraction: 0.02, Seed: 12,
	})
	scrapeAll := func() []scrapeOf {
		out := make([]scrapeOf, len(c.Agents))
		for i, a := range c.Agents {
			out[i] = scrapeAgent(t, reader, a)
		}
		return out
	}
	processed := func(scrapes []scrapeOf) (events, batches float64) {
		for _, s := range scrapes {
			for _, v := range s.samples("geocursor_events_processed_total") {
				events += v
			}
			b, _ := s.gauge("geocursor_batches_total")
			batches += b
		}
		return events, batches
	}
	var first, second []scrapeOf
	ts.WaitFor(t, 30*time.Second, "the holder to commit 20 batches", func() (bool, string) {
		first = scrapeAll()
		events, batches := processed(first)
		return batches >= 20, fmt.Sprintf("%v events in %v batches", events, batches)
	})
	before, _ := processed(first)
	ts.WaitFor(t, 30*time.Second, "1000 more events to be counted", func() (bool, string) {
		second = scrapeAll()
		after, _ := processed(second)
		return after >= before+1000, fmt.Sprintf("%v events counted, %v at the first scrape", after, before)
	})
	stats := bg.stop(t)
	clk.Logf("load: %d events committed (%d rolled back, %d bad, %d cache invalidations); scraped twice",
		stats.Committed, stats.RolledBack, stats.Bad, stats.CacheInvalidations)

	// Counters, histograms and summaries only grow between two scrapes of
	// one process.
	for i, a := range c.Agents {
		checked := 0
		for name, f := range second[i] {
			switch f.GetType() {
			case dto.MetricType_COUNTER, dto.MetricType_HISTOGRAM, dto.MetricType_SUMMARY:
			default:
				continue
			}
			before := first[i].samples(name)
			for key, v := range second[i].samples(name) {
				was, ok := before[key]
				if !ok {
					continue // a series born between the scrapes
				}
				checked++
				if v < was {
					t.Errorf("%s: %s went from %v to %v between two scrapes", a.ID, key, was, v)
				}
			}
		}
		if checked < 50 {
			t.Errorf("%s: only %d counter samples in both scrapes", a.ID, checked)
		}
	}

	// The holder's histograms fill: the node that processed the most
	// batches timed every step of them.
	holder, most := 0, -1.0
	for i := range c.Agents {
		if n, _ := second[i].gauge("geocursor_batches_total"); n > most {
			holder, most = i, n
		}
	}
	if most <= 0 {
		t.Fatalf("no node counted a batch: %v", most)
	}
	for _, h := range []string{"geocursor_batch_duration_seconds", "geocursor_fetch_duration_seconds",
		"geocursor_tracking_commit_duration_seconds", "geocursor_raft_advance_duration_seconds"} {
		if n := second[holder].histogramCount(h); n == 0 {
			t.Errorf("%s (the holder, %v batches): %s has no observations", c.Agents[holder].ID, most, h)
		}
	}

	// Once the load has stopped and the cursor stands at the head, every
	// node's GitLab gauges say what its status says, and what the source
	// says.
	head := sourceHead(t, d)
	waitCursor(t, c.Agents, head, 60*time.Second)
	clk.Logf("the cursor reached the head %d", head)
	final := make([]scrapeOf, len(c.Agents))
	for i, a := range c.Agents {
		ts.WaitFor(t, 20*time.Second, a.ID+"'s metrics to agree with its status", func() (bool, string) {
			st, err := statusOf(a)
			if err != nil {
				return false, err.Error()
			}
			s := scrapeAgent(t, reader, a)
			final[i] = s
			if msg := gaugesDisagree(t, d, s, st, head); msg != "" {
				return false, msg
			}
			return true, ""
		})
	}
	st := mustStatus(t, c.Agents[0])
	if stats.RolledBack > 0 && st.Cursor.SafeEventID >= st.Cursor.LastEventID {
		t.Errorf("after %d rolled-back transactions no gap holds the safe cursor (%d) below the cursor (%d)",
			stats.RolledBack, st.Cursor.SafeEventID, st.Cursor.LastEventID)
	}
	clk.Logf("GitLab's gauges agree with the status on every node: safe cursor %d (date %v), cursor %d, head %d, %d open gaps",
		st.Cursor.SafeEventID, st.Cursor.SafeEventDate, st.Cursor.LastEventID, head, st.Cursor.OpenGaps)

	// Every metric the dashboard queries exists in the scrape of some node.
	names := dashboardMetrics(t)
	for _, n := range names {
		found := false
		for _, s := range append(final, second...) {
			found = found || s.has(n)
		}
		if !found {
			t.Errorf("the dashboard queries %s, which no node exports", n)
		}
	}
	clk.Logf("the dashboard's %d metrics are all exported", len(names))
}

// gaugesDisagree compares a node's scrape with its status and the source:
// "" when GitLab's gauges and geocursor's say the same as the status.
func gaugesDisagree(t *testing.T, d *procDBs, s scrapeOf, st api.Status, head int64) string {
	t.Helper()
	var diffs []string
	want := func(name string, want float64, labels ...string) {
		got, ok := s.gauge(name, labels...)
		if !ok || got != want {
			diffs = append(diffs, fmt.Sprintf("%s%v = %v (present %v), status says %v", name, labels, got, ok, want))
		}
	}
	cur := st.Cursor
	want("geo_cursor_last_event_id", float64(cur.SafeEventID))
	if cur.SafeEventDate == nil {
		diffs = append(diffs, "status has no safe_event_date")
	} else {
		want("geo_cursor_last_event_timestamp", float64(cur.SafeEventDate.Unix()))
		// The date of the safe cursor is that of the newest event at or
		// below it, as the source has it.
		if src := queryInt(t, d.Source, `SELECT floor(extract(epoch FROM created_at))::bigint FROM geo_event_log WHERE id <= $1 ORDER BY id DESC LIMIT 1`, cur.SafeEventID); src != cur.SafeEventDate.Unix() {
			diffs = append(diffs, fmt.Sprintf("safe_event_date %v, the source's created_at at or below %d is %d", cur.SafeEventDate, cur.SafeEventID, src))
		}
	}
	if cur.SourceLastEventID == nil || cur.SourceLastEventDate == nil {
		return strings.Join(append(diffs, "status has no source head"), "; ")
	}
	want("geo_last_event_id", float64(*cur.SourceLastEventID))
	want("geo_last_event_id", float64(head))
	want("geo_event_log_max_id", float64(head))
	want("geo_last_event_timestamp", float64(cur.SourceLastEventDate.Unix()))
	want("geocursor_cursor_last_event_id", float64(cur.LastEventID))
	want("geocursor_open_gaps", float64(cur.OpenGaps))
	if cur.LagEvents != nil {
		want("geocursor_lag_events", float64(*cur.LagEvents))
	}
	for _, db := range []string{"source", "tracking", "sidekiq_redis", "cache_redis"} {
		want("geocursor_database_up", 1, "database", db)
	}
	if st.Delivery != nil {
		want("geocursor_delivery_backlog_jobs", float64(st.Delivery.Backlog))
	}
	return strings.Join(diffs, "; ")
}

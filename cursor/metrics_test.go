package cursor

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// Every way classifyOne gives an event up has a reason label of its own:
// a reason's wording that changes must not fall into "other" unnoticed.
func TestDeadLetterReasonNamesEveryRule(t *testing.T) {
	both := cache(7, "k")
	both.GeoEventID = ptr(int64(1))
	tests := []struct {
		event Event
		want  string
	}{
		{Event{ID: 1, CreatedAt: eventTime(1)}, reasonNoReference},
		{both, reasonBothReferences},
		{Event{ID: 2, CreatedAt: eventTime(2), GeoEventID: ptr(int64(77))}, reasonMissingRow},
		{Event{ID: 3, CreatedAt: eventTime(3), CacheInvalidationEventID: ptr(int64(88))}, reasonMissingRow},
		{geo(4, "lfs_object", "", `{}`), reasonNoEventName},
		{geo(5, "lfs_object", "created", `[1]`), reasonBadPayload},
		{geo(6, "lfs_object", "reset_checksum", `{nope`), reasonBadPayload},
		{geo(7, "lfs_object", "deleted", `{"model_record_id": "7"}`), reasonNoModelRecordID},
		{geo(8, "", "created", `{"model_record_id": 7}`), reasonNoReplicableName},
	}
	for _, tt := range tests {
		_, _, reason := classifyOne(tt.event)
		if reason == "" {
			t.Fatalf("event %d: not a dead letter", tt.event.ID)
		}
		if got := deadLetterReason(reason); got != tt.want {
			t.Errorf("reason %q: label %q, want %q", reason, got, tt.want)
		}
	}
	if got := deadLetterReason("something new"); got != reasonOther {
		t.Errorf("an unknown reason: label %q, want %q", got, reasonOther)
	}
}

// A primary's own event names do not become label values: they are
// "other", so the kind label has a fixed set of values.
func TestCountEffectsBoundsKinds(t *testing.T) {
	eff := classify([]Event{
		geo(1, "lfs_object", "created", `{"model_record_id": 1}`),
		geo(2, "lfs_object", "updated", `{"model_record_id": 1}`),
		geo(3, "lfs_object", "deleted", `{"model_record_id": 1}`),
		geo(4, "project_repository", "reset_checksum", `{"model_record_id": 3}`),
		geo(5, "container_repository", "renamed", `{}`),
		cache(6, "projects/1"),
		{ID: 7, CreatedAt: eventTime(7)},
		geo(8, "lfs_object", "created", `{}`),
	})
	c := countEffects(eff)
	want := map[string]int{KindSync: 2, KindDelete: 1, KindCacheInvalidation: 1, eventKindOther: 2, eventKindDeadLetter: 2}
	for k, n := range want {
		if c.kinds[k] != n {
			t.Errorf("kind %s: %d, want %d (all: %v)", k, c.kinds[k], n, c.kinds)
		}
	}
	if len(c.kinds) != len(want) {
		t.Errorf("kinds %v, want only %v", c.kinds, want)
	}
	if c.reasons[reasonNoReference] != 1 || c.reasons[reasonNoModelRecordID] != 1 || len(c.reasons) != 2 {
		t.Errorf("reasons %v, want one no_reference and one no_model_record_id", c.reasons)
	}
}

func TestMetricsRecordBatches(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	events := []Event{geo(1, "lfs_object", "created", `{"model_record_id": 1}`), {ID: 2, CreatedAt: eventTime(2)}}
	staged := &Staged{eff: classify(events)}
	p := &pendingBatch{events: events, dropped: 3, prunedUnseen: 4, batchStart: time.Now().Add(-20 * time.Millisecond), staged: staged}
	m.batchCommitted(p, time.Now().Add(-5*time.Millisecond))
	done := m.fetchStarted()
	done()
	m.advanced(&progressCall{sent: time.Now().Add(-time.Millisecond), applied: time.Now()})
	m.advanced(&progressCall{err: errors.New("no leader")}) // not timed
	m.granted(false)
	m.granted(true)

	for _, c := range []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"sync", m.events.WithLabelValues(KindSync), 1},
		{"dead_letter", m.events.WithLabelValues(eventKindDeadLetter), 1},
		{"no_reference", m.deadLetters.WithLabelValues(reasonNoReference), 1},
		{"batches", m.batches, 1},
		{"gaps dropped", m.gapsDropped, 3},
		{"pruned", m.pruned, 4},
		{"grants", m.grants, 2},
		{"failovers", m.failovers, 1},
	} {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	for name, h := range map[string]prometheus.Histogram{"batch": m.batchSeconds, "fetch": m.fetchSeconds, "commit": m.commitSeconds, "advance": m.advanceSeconds} {
		var d dto.Metric
		if err := h.Write(&d); err != nil {
			t.Fatal(err)
		}
		if n := d.GetHistogram().GetSampleCount(); n != 1 {
			t.Errorf("%s histogram: %d observations, want 1", name, n)
		}
	}
	// The pedantic registry checks every HELP and type while gathering.
	if _, err := reg.Gather(); err != nil {
		t.Fatalf("gather: %v", err)
	}
	if n, err := testutil.GatherAndCount(reg, "geocursor_raft_advance_duration_seconds"); err != nil || n != 1 {
		t.Errorf("advance histogram: %d series, %v", n, err)
	}
}

// A loop without metrics records nothing and does not fail.
func TestNilMetricsRecordNothing(t *testing.T) {
	var m *Metrics
	m.batchCommitted(&pendingBatch{}, time.Now())
	m.fetchStarted()()
	m.advanced(&progressCall{})
	m.granted(true)
}

package delivery

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetricsRecordDelivery(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.jobsDelivered(roundOutcome{sidekiqJobs: 5, cacheJobs: 2})
	m.redisCall(targetSidekiq, errors.New("connection refused"))
	m.redisCall(targetCache, nil)
	for _, c := range []struct {
		name string
		c    prometheus.Collector
		want float64
	}{
		{"sidekiq delivered", m.delivered.WithLabelValues(targetSidekiq), 5},
		{"cache delivered", m.delivered.WithLabelValues(targetCache), 2},
		{"sidekiq errors", m.redisErrors.WithLabelValues(targetSidekiq), 1},
		{"cache errors", m.redisErrors.WithLabelValues(targetCache), 0},
	} {
		if got := testutil.ToFloat64(c.c); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	// The pedantic registry checks every HELP and type while gathering.
	if _, err := reg.Gather(); err != nil {
		t.Fatalf("gather: %v", err)
	}
}

// A deliverer without metrics records nothing and does not fail.
func TestNilMetricsRecordNothing(t *testing.T) {
	var m *Metrics
	m.jobsDelivered(roundOutcome{sidekiqJobs: 1})
	m.redisCall(targetCache, errors.New("x"))
}

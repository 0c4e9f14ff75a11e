package delivery

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the deliverer's Prometheus collectors (design section 12):
// what this process handed to Redis, and Redis's failures. Each counter is
// this process's own, counted by the agent that won the delivery round, so
// sum them over the nodes.
//
// A nil *Metrics records nothing, so a deliverer built without one (the
// tests) works unchanged.
type Metrics struct {
	delivered   *prometheus.CounterVec
	redisErrors *prometheus.CounterVec
}

// Delivery targets, the values of the target label.
const (
	targetSidekiq = "sidekiq"
	targetCache   = "cache"
)

// NewMetrics creates the deliverer's collectors and registers them with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geocursor_delivery_jobs_delivered_total",
			Help: "Jobs handed to GitLab by this process's deliverer, by target: sidekiq (Geo::EventWorker jobs pushed) " +
				"or cache (Rails cache keys deleted). Counted by the agent that delivered them, since its start.",
		}, []string{"target"}),
		redisErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geocursor_redis_errors_total",
			Help: "Failed delivery calls to Redis, by target: sidekiq (Sidekiq's Redis) or cache (the Rails cache). " +
				"Counted by the agent whose call failed, since its start.",
		}, []string{"target"}),
	}
	// Every label value exists from the start at 0, so that a rate over
	// it is defined before the first job.
	for _, t := range []string{targetSidekiq, targetCache} {
		m.delivered.WithLabelValues(t)
		m.redisErrors.WithLabelValues(t)
	}
	for _, c := range []prometheus.Collector{m.delivered, m.redisErrors} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// jobsDelivered records a delivery round's jobs, once it is committed.
func (m *Metrics) jobsDelivered(out roundOutcome) {
	if m == nil {
		return
	}
	m.delivered.WithLabelValues(targetSidekiq).Add(float64(out.sidekiqJobs))
	m.delivered.WithLabelValues(targetCache).Add(float64(out.cacheJobs))
}

// redisCall records the outcome of a delivery call to target's Redis.
func (m *Metrics) redisCall(target string, err error) {
	if m == nil || err == nil {
		return
	}
	m.redisErrors.WithLabelValues(target).Inc()
}

// Package delivery hands the jobs that processing wrote into the tracking
// database's geo_jobs to GitLab (design section 11): each job of a geo
// event to Sidekiq's Redis as the Geo::EventWorker job GitLab's own client
// writes, each cache invalidation to the Rails cache as the key Rails
// deletes. Every agent with a delivery block runs a Deliverer; the agents
// take turns through a lock in the tracking database.
//
// It owns the geocursor_delivery row, the delivered_at of geo_jobs, and
// the exactly-once rule on the Redis side (a watermark pushed in the same
// script as the jobs). It must not write the event log's effects (package
// cursor does, fenced by the lease) and knows nothing of Raft.
//
// Where things are:
//
//	deliverer.go   the Deliverer: rounds, retries, what the status shows
//	store.go       the tracking database's side: the row, a round's jobs
//	redis.go       the Redis side: Sidekiq jobs, the push script, cache keys
//	metrics.go     the Prometheus collectors of delivery
package delivery

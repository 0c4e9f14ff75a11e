package delivery

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/redis/go-redis/v9"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/cursor"
)

// Config is where and how fast jobs are delivered (design section
// 11). Either target may be nil: its jobs then stay in geo_jobs only.
type Config struct {
	Sidekiq *SidekiqTarget
	Cache   *CacheTarget
	// RateLimit caps the jobs delivered per second across all agents (0:
	// no cap), for a Sidekiq that a burst on the primary must not flood.
	RateLimit float64
	// BatchSize is the most jobs one round delivers; 0 means 1000.
	BatchSize int
	// PollInterval is how often a deliverer looks for jobs when no
	// notification woke it; 0 means one second.
	PollInterval time.Duration
	// Metrics records what is delivered and Redis's failures (nil:
	// nothing).
	Metrics *Metrics
	// Gate, when set, may close delivery (GitLab's shared state: the site
	// was promoted, or GitLab's own cursor runs); no round starts while
	// it is closed.
	Gate Gate
}

// Gate says whether this site may deliver now: "" when it may, else why
// not (package gitlab's Watcher).
type Gate interface {
	Closed() string
}

// gateInterval is how often a deliverer whose gate is closed looks again.
const gateInterval = 100 * time.Millisecond

func (c Config) withDefaults() Config {
	if c.BatchSize <= 0 {
		c.BatchSize = 1000
	}
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
	return c
}

// roundSize is how many jobs a round takes: with a rate limit, at most a
// quarter second's worth, so that pacing never holds a round's transaction
// idle for long.
func (c Config) roundSize() int {
	if c.RateLimit <= 0 {
		return c.BatchSize
	}
	return max(1, min(c.BatchSize, int(math.Ceil(c.RateLimit/4))))
}

// Deliverer hands the jobs in geo_jobs to GitLab: each job of a geo event
// to Sidekiq as a Geo::EventWorker job, each cache invalidation to the
// Rails cache as a key deleted. Every agent with a delivery block runs
// one, independently of the lease: processing the event log goes on into
// geo_jobs whatever Redis does, and delivery catches up.
//
// A round takes the tracking database's delivery lock, reads the jobs after
// the row's last_job_id, delivers them and moves the row past them, in one
// transaction. Each job reaches Sidekiq once: the push is a Redis script
// that skips jobs at or below the watermark it keeps with them
// (pushScript), so a round that pushed and then died before its commit,
// or a deliverer that was paused and resumed, pushes nothing twice.
type Deliverer struct {
	cfg      Config
	tracking *store
	logger   hclog.Logger
	wake     chan struct{}

	mu     sync.Mutex
	status deliveryStatus
}

// deliveryStatus is what the status document shows; each field is written
// by the round that learns it.
type deliveryStatus struct {
	row      deliveryRow
	read     time.Time // when row was read; zero before the first round
	tracking string    // "" or the last error of the tracking database
	sidekiq  string    // "" or the last error of Sidekiq's Redis
	cache    string
	blocked  string // why the gate stops delivery, "" when it does not
}

// NewDeliverer returns a deliverer of tracking's jobs; Run starts it. It
// asks tracking to notify it of new jobs.
func NewDeliverer(cfg Config, tracking *cursor.Tracking, logger hclog.Logger) *Deliverer {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	tracking.NotifyJobs()
	pool, name := tracking.DB()
	return &Deliverer{cfg: cfg.withDefaults(), tracking: &store{pool: pool, name: name}, logger: logger, wake: make(chan struct{}, 1)}
}

// Close closes the Redis clients.
func (d *Deliverer) Close() {
	if d.cfg.Sidekiq != nil {
		_ = d.cfg.Sidekiq.Client.Close()
	}
	if d.cfg.Cache != nil {
		_ = d.cfg.Cache.Client.Close()
	}
}

// Run delivers until ctx ends. Failures (Redis down, the tracking
// database unreachable) are logged, shown in the status and retried with
// backoff; they never stop processing.
func (d *Deliverer) Run(ctx context.Context) error {
	if err := d.start(ctx); err != nil {
		return err
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.listen(ctx)
	}()
	defer wg.Wait()

	backoff := api.Backoff{Min: 100 * time.Millisecond, Max: 5 * time.Second}
	var checked time.Time
	for {
		if d.cfg.Gate != nil {
			if why := d.cfg.Gate.Closed(); why != "" {
				d.setBlocked(why)
				if api.Sleep(ctx, gateInterval) != nil {
					return nil
				}
				continue
			}
			d.setBlocked("")
		}
		n, err := d.round(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			wait := backoff.Next()
			d.logger.Warn("delivery failed; retrying", "error", err, "retry_in_ms", wait.Milliseconds())
			if api.Sleep(ctx, wait) != nil {
				return nil
			}
			continue
		}
		backoff.Reset()
		if n > 0 {
			continue // more may be waiting
		}
		if time.Since(checked) >= d.cfg.PollInterval {
			d.checkRedis(ctx)
			checked = time.Now()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-d.wake:
		case <-time.After(d.cfg.PollInterval):
		}
	}
}

// start creates the delivery row if no agent has yet, and checks what the
// Redis servers promise to keep.
func (d *Deliverer) start(ctx context.Context) error {
	backoff := api.Backoff{Min: 500 * time.Millisecond, Max: 10 * time.Second}
	for {
		created, row, err := d.tracking.startDelivery(ctx)
		if err == nil {
			if created {
				d.logger.Info("delivery starts: jobs written before it stay in geo_jobs only", "after_job_id", row.lastJobID)
			}
			d.setRow(row)
			break
		}
		d.setTracking(err)
		if ctx.Err() != nil {
			return nil
		}
		wait := backoff.Next()
		d.logger.Warn("cannot start delivery; retrying", "error", err, "retry_in_ms", wait.Milliseconds())
		if api.Sleep(ctx, wait) != nil {
			return nil
		}
	}
	if s := d.cfg.Sidekiq; s != nil {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if risk := durability(cctx, s.Client); risk != "" {
			d.logger.Warn("Sidekiq's Redis may lose jobs: "+risk, "redis", s.Name)
		}
		if risk := replication(cctx, s.Client, s.MinReplicas); risk != "" {
			d.logger.Warn("Sidekiq's Redis replication: "+risk, "redis", s.Name, "min_replicas", s.MinReplicas)
		}
		cancel()
	} else {
		d.logger.Info("no delivery.sidekiq block: the jobs of geo events stay in geo_jobs")
	}
	if d.cfg.Cache == nil {
		d.logger.Info("no delivery.cache block: cache invalidations stay in geo_jobs")
	}
	return nil
}

// listen wakes the deliverer at every committed batch with jobs, for as
// long as ctx lasts, reconnecting when the connection fails. Without it
// the deliverer still polls.
func (d *Deliverer) listen(ctx context.Context) {
	backoff := api.Backoff{Min: 500 * time.Millisecond, Max: 10 * time.Second}
	for ctx.Err() == nil {
		conn, err := d.tracking.listenJobs(ctx)
		if err != nil {
			if api.Sleep(ctx, backoff.Next()) != nil {
				return
			}
			continue
		}
		backoff.Reset()
		for {
			if _, err := conn.WaitForNotification(ctx); err != nil {
				break
			}
			select {
			case d.wake <- struct{}{}:
			default:
			}
		}
		conn.Close(context.WithoutCancel(ctx))
	}
}

// round delivers the next jobs, if any, and tells how many it read.
func (d *Deliverer) round(ctx context.Context) (int, error) {
	if err := d.pace(ctx); err != nil {
		return 0, err
	}
	r, err := d.tracking.beginRound(ctx, d.cfg.roundSize())
	if err != nil {
		d.setTracking(err)
		return 0, err
	}
	d.setRow(r.row)
	if len(r.jobs) == 0 {
		r.abort()
		return 0, nil
	}
	out, err := d.deliver(ctx, r)
	if err != nil {
		r.abort()
		return 0, err
	}
	if err := r.commit(ctx, d.tracking, out); err != nil {
		d.setTracking(err)
		return 0, err
	}
	d.cfg.Metrics.jobsDelivered(out)
	last := r.jobs[len(r.jobs)-1]
	row := r.row
	row.lastJobID, row.lastEventID = last.id, last.eventID
	row.delivered += int64(len(out.delivered))
	row.lostInRedis += out.lostInRedis
	row.lastPushedJobID = max(row.lastPushedJobID, out.pushedTop)
	d.setRow(row)
	d.logger.Debug("jobs delivered", "first_job_id", r.jobs[0].id, "last_job_id", last.id, "last_id", last.eventID,
		"count", len(out.delivered), "read", len(r.jobs))
	return len(r.jobs), nil
}

// pace waits, under a rate limit, until the jobs of the last round (any
// agent's) have had their time.
func (d *Deliverer) pace(ctx context.Context) error {
	if d.cfg.RateLimit <= 0 {
		return nil
	}
	d.mu.Lock()
	row := d.status.row
	d.mu.Unlock()
	if row.lastPushAt == nil || row.lastPushJobs == 0 {
		return nil
	}
	due := row.lastPushAt.Add(time.Duration(float64(row.lastPushJobs) / d.cfg.RateLimit * float64(time.Second)))
	if wait := time.Until(due); wait > 0 {
		return api.Sleep(ctx, wait)
	}
	return nil
}

// deliver hands a round's jobs to Redis: cache keys deleted, geo events
// pushed to Sidekiq. Dead letters are never jobs.
func (d *Deliverer) deliver(ctx context.Context, r *deliveryRound) (roundOutcome, error) {
	var (
		out        roundOutcome
		keys       []string
		keyJobs    []int64
		events     []deliveryJob
		eventIDs   []int64
		unreadable int
	)
	for _, j := range r.jobs {
		if j.kind == cursor.KindCacheInvalidation {
			var p struct {
				Key *string `json:"key"`
			}
			if err := json.Unmarshal(j.payload, &p); err != nil || p.Key == nil {
				unreadable++ // classify writes {"key": ...}; left in geo_jobs
				continue
			}
			keys, keyJobs = append(keys, *p.Key), append(keyJobs, j.id)
			continue
		}
		events, eventIDs = append(events, j), append(eventIDs, j.id)
	}
	if unreadable > 0 {
		d.logger.Warn("cache invalidation jobs without a key are left in geo_jobs", "count", unreadable)
	}
	if c := d.cfg.Cache; c != nil && len(keys) > 0 {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := c.deleteKeys(cctx, keys)
		cancel()
		d.setCache(err)
		if err != nil {
			return out, err
		}
		out.delivered, out.cacheJobs = append(out.delivered, keyJobs...), len(keyJobs)
	}
	if s := d.cfg.Sidekiq; s != nil && len(events) > 0 {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		res, err := s.push(cctx, r.row.epoch, events, time.Now())
		cancel()
		d.setSidekiq(err)
		var waiting *tooFewReplicasError
		if err != nil && !errors.As(err, &waiting) {
			return out, err
		}
		if last := r.row.lastPushedJobID; last > 0 && res.before < last {
			// Redis acknowledged jobs up to last and has forgotten them:
			// it restarted without its data, or failed over to a replica
			// that lagged. They may have run already; pushing them again
			// could run them twice, so they are reported instead. (Before
			// the first push, last is 0 and a fresh Redis's -1 is no loss.)
			from := max(res.before, 0) + 1
			const lostMsg = "Sidekiq's Redis lost jobs it had acknowledged: it restarted without its data, or failed over to a replica that lagged (which min_replicas prevents); they are not pushed again"
			lost, lerr := r.deliveredToSidekiq(ctx, d.tracking, from, last)
			if lerr != nil {
				// The push has moved the watermark past the loss: the log
				// is its only record.
				d.logger.Error(lostMsg, "redis", s.Name, "first_job_id", from, "last_job_id", last, "count_error", lerr)
				d.setTracking(lerr)
				return out, lerr
			}
			d.logger.Error(lostMsg, "redis", s.Name, "first_job_id", from, "last_job_id", last, "count", lost)
			if waiting != nil {
				// This round fails, but its push has moved the watermark
				// past the loss, so no later round would see it: it is
				// counted now, outside the round.
				if lerr := d.tracking.addLost(ctx, lost); lerr != nil {
					d.setTracking(lerr)
				}
			}
			out.lostInRedis = lost
		}
		if err != nil {
			return out, err
		}
		out.pushedTop = events[len(events)-1].id
		out.delivered, out.sidekiqJobs = append(out.delivered, eventIDs...), len(eventIDs)
	}
	return out, nil
}

// checkRedis pings the Redis servers while there is nothing to deliver,
// so that an idle agent's status says whether it could deliver: without
// it, the error of a push that failed during an outage would stay in the
// status of every agent that has not won a round since. A failed ping is
// not a failed delivery call and is left out of the metrics.
func (d *Deliverer) checkRedis(ctx context.Context) {
	ping := func(c *redis.Client) string {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		return api.ErrorText(c.Ping(cctx).Err())
	}
	var sidekiq, cache string
	if s := d.cfg.Sidekiq; s != nil {
		sidekiq = ping(s.Client)
	}
	if c := d.cfg.Cache; c != nil {
		cache = ping(c.Client)
	}
	if ctx.Err() != nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.status.sidekiq, d.status.cache = sidekiq, cache
}

func (d *Deliverer) setRow(row deliveryRow) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.status.row, d.status.read, d.status.tracking = row, time.Now(), ""
}

func (d *Deliverer) setBlocked(why string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.status.blocked = why
}

func (d *Deliverer) setTracking(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.status.tracking = api.ErrorText(err)
}

func (d *Deliverer) setSidekiq(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.status.sidekiq = api.ErrorText(err)
	d.cfg.Metrics.redisCall(targetSidekiq, err)
}

func (d *Deliverer) setCache(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.status.cache = api.ErrorText(err)
	d.cfg.Metrics.redisCall(targetCache, err)
}

// AddStatus adds the delivery object to the status document.
func (d *Deliverer) AddStatus(st *api.Status) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.status
	ds := &api.Delivery{
		Backlog:       max(s.row.maxJobID-s.row.lastJobID, 0),
		LastJobID:     s.row.lastJobID,
		LastEventID:   s.row.lastEventID,
		Delivered:     s.row.delivered,
		LostInRedis:   s.row.lostInRedis,
		RateLimit:     d.cfg.RateLimit,
		TrackingError: s.tracking,
		Blocked:       s.blocked,
		SidekiqRedis:  api.DeliveryNotConfigured,
		CacheRedis:    api.DeliveryNotConfigured,
	}
	if !s.read.IsZero() {
		t := s.read.UTC()
		ds.ReadAt = &t
	}
	if d.cfg.Sidekiq != nil {
		ds.SidekiqRedis = api.OKOr(s.sidekiq)
	}
	if d.cfg.Cache != nil {
		ds.CacheRedis = api.OKOr(s.cache)
	}
	st.Delivery = ds
}

package main

import (
	"context"
	"fmt"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/cluster"
	"github.com/geocursor/geocursor/config"
	"github.com/geocursor/geocursor/cursor"
	"github.com/geocursor/geocursor/delivery"
	"github.com/geocursor/geocursor/gitlab"
	"github.com/geocursor/geocursor/internal/pgdb"
)

// runCursor connects to both databases and runs the processing loop until
// ctx ends. A database that is down at start is retried with backoff (the
// node keeps serving as a voter meanwhile); a mistake that retrying cannot
// fix, such as a wrong password or a missing table, stops the agent with
// that error.
func runCursor(ctx context.Context, cfg *config.Config, node *cluster.Node, reg prometheus.Registerer, logger hclog.Logger) error {
	metrics, err := cursor.NewMetrics(reg)
	if err != nil {
		return err
	}
	health := cursor.NewHealth()
	node.SetStatusSource(health)
	source, err := connect(ctx, logger, "source", func(ctx context.Context) (*cursor.Source, error) {
		return cursor.OpenSource(ctx, cfg.Source.DSN, logger.Named("source"))
	}, health.Source)
	if err != nil {
		return err
	}
	defer source.Close()
	tracking, err := connect(ctx, logger, "tracking", func(ctx context.Context) (*cursor.Tracking, error) {
		return cursor.OpenTracking(ctx, cfg.Tracking.DSN, logger.Named("tracking"))
	}, health.Tracking)
	if err != nil {
		return err
	}
	defer tracking.Close()
	node.SetDeadLetterSource(tracking)

	watcher, closeWatcher, err := newGitLabWatcher(ctx, cfg.GitLab, node, source, tracking, reg, logger.Named("gitlab"))
	if err != nil {
		return err
	}
	defer closeWatcher()
	var gate processGate
	statuses := statusSources{health}
	if watcher != nil {
		gate = watcher
		statuses = append(statuses, watcher)
		wctx, stopWatcher := context.WithCancel(context.WithoutCancel(ctx))
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			watcher.Run(wctx)
		}()
		// The watcher outlives the loop and the deliverer (deferred
		// first, run last), so that GitLab's lease is released only once
		// neither can act.
		defer func() { stopWatcher(); <-watched }()
	}

	deliverer, err := newDeliverer(cfg.Delivery, tracking, reg, gate, logger.Named("delivery"))
	if err != nil {
		return err
	}
	if deliverer != nil {
		defer deliverer.Close()
		statuses = append(statuses, deliverer)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := deliverer.Run(ctx); err != nil {
				logger.Error("delivery stopped", "error", err)
			}
		}()
		defer func() { <-done }()
	}

	node.SetStatusSource(statuses)
	loop := cursor.NewLoop(cursor.LoopConfig{
		Start:        cfg.Source.Start,
		BatchSize:    cfg.Source.BatchSize,
		PollInterval: cfg.Source.PollInterval,
		GapTimeout:   cfg.Source.GapTimeout,
		LeaseTTL:     cfg.Lease.TTL,
		RetryMin:     cfg.Lease.RetryMin,
		RetryMax:     cfg.Lease.RetryMax,
		Metrics:      metrics,
		Gate:         gate,
		GitLabGaps:   gitLabGaps(watcher),
	}, node, source, tracking, health, logger.Named("cursor"))
	node.SetOperator(loop)
	logger.Info("cursor started", "batch_size", cfg.Source.BatchSize, "poll_interval", cfg.Source.PollInterval.String(),
		"lease_ttl", cfg.Lease.TTL.String())
	return loop.Run(ctx)
}

// processGate is what may close processing and delivery: GitLab's shared state
// (gitlab.Watcher), or nil.
type processGate interface{ Closed() string }

// gitLabGaps is w as the loop's source of GitLab's open gaps, nil without
// a gitlab block (a nil *Watcher must not become a non-nil interface).
func gitLabGaps(w *gitlab.Watcher) cursor.GitLabGaps {
	if w == nil {
		return nil
	}
	return w
}

// statusSources adds what each of its sources knows to the status.
type statusSources []cluster.StatusSource

func (s statusSources) AddStatus(st *api.Status) {
	for _, src := range s {
		src.AddStatus(st)
	}
}

// newDeliverer sets up delivery to GitLab from the delivery block (nil
// without one).
func newDeliverer(dc *config.DeliveryConfig, tracking *cursor.Tracking, reg prometheus.Registerer, gate processGate, logger hclog.Logger) (*delivery.Deliverer, error) {
	if dc == nil {
		return nil, nil
	}
	metrics, err := delivery.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	cfg := delivery.Config{RateLimit: dc.RateLimit, Metrics: metrics}
	if gate != nil {
		cfg.Gate = gate
	}
	if s := dc.Sidekiq; s != nil {
		client, name, err := delivery.OpenRedis(s.RedisURL, s.Sentinels)
		if err != nil {
			return nil, fmt.Errorf("delivery.sidekiq.redis_url: %w", err)
		}
		cfg.Sidekiq = &delivery.SidekiqTarget{Client: client, Queue: s.Queue, Namespace: s.Namespace, Name: name, MinReplicas: s.MinReplicas}
	}
	if c := dc.Cache; c != nil {
		client, name, err := delivery.OpenRedis(c.RedisURL, c.Sentinels)
		if err != nil {
			return nil, fmt.Errorf("delivery.cache.redis_url: %w", err)
		}
		cfg.Cache = &delivery.CacheTarget{Client: client, Namespace: c.Namespace, Name: name}
	}
	logger.Info("delivering jobs to GitLab", "sidekiq", cfg.Sidekiq != nil, "cache", cfg.Cache != nil, "rate_limit", dc.RateLimit)
	return delivery.NewDeliverer(cfg, tracking, logger), nil
}

// connect opens one database, retrying while the failure may pass, and
// reports each failure to report (the database's health).
func connect[T any](ctx context.Context, logger hclog.Logger, role string, open func(context.Context) (T, error), report func(error)) (T, error) {
	backoff := api.Backoff{Min: 500 * time.Millisecond, Max: 10 * time.Second}
	for {
		octx, cancel := context.WithTimeout(ctx, 15*time.Second)
		db, err := open(octx)
		cancel()
		if err == nil {
			report(nil)
			return db, nil
		}
		var zero T
		if ctx.Err() != nil {
			return zero, ctx.Err()
		}
		if pgdb.IsPermanent(err) {
			return zero, err
		}
		report(err)
		wait := backoff.Next()
		logger.Warn(fmt.Sprintf("cannot reach the %s database; retrying", role), "error", err, "retry_in_ms", wait.Milliseconds())
		if api.Sleep(ctx, wait) != nil {
			return zero, ctx.Err()
		}
	}
}

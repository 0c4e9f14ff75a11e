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

	deliverer, err := newDeliverer(cfg.Delivery, tracking, reg, logger.Named("delivery"))
	if err != nil {
		return err
	}
	if deliverer != nil {
		defer deliverer.Close()
		node.SetStatusSource(statusSources{health, deliverer})
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := deliverer.Run(ctx); err != nil {
				logger.Error("delivery stopped", "error", err)
			}
		}()
		defer func() { <-done }()
	}

	loop := cursor.NewLoop(cursor.LoopConfig{
		Start:        cfg.Source.Start,
		BatchSize:    cfg.Source.BatchSize,
		PollInterval: cfg.Source.PollInterval,
		GapTimeout:   cfg.Source.GapTimeout,
		LeaseTTL:     cfg.Lease.TTL,
		RetryMin:     cfg.Lease.RetryMin,
		RetryMax:     cfg.Lease.RetryMax,
		Metrics:      metrics,
	}, node, source, tracking, health, logger.Named("cursor"))
	node.SetOperator(loop)
	logger.Info("cursor started", "batch_size", cfg.Source.BatchSize, "poll_interval", cfg.Source.PollInterval.String(),
		"lease_ttl", cfg.Lease.TTL.String())
	return loop.Run(ctx)
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
func newDeliverer(dc *config.DeliveryConfig, tracking *cursor.Tracking, reg prometheus.Registerer, logger hclog.Logger) (*delivery.Deliverer, error) {
	if dc == nil {
		return nil, nil
	}
	metrics, err := delivery.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	cfg := delivery.Config{RateLimit: dc.RateLimit, Metrics: metrics}
	if s := dc.Sidekiq; s != nil {
		client, name, err := delivery.OpenRedis(s.RedisURL)
		if err != nil {
			return nil, fmt.Errorf("delivery.sidekiq.redis_url: %w", err)
		}
		cfg.Sidekiq = &delivery.SidekiqTarget{Client: client, Queue: s.Queue, Namespace: s.Namespace, Name: name}
	}
	if c := dc.Cache; c != nil {
		client, name, err := delivery.OpenRedis(c.RedisURL)
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

package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/geocursor/geocursor/cluster"
	"github.com/geocursor/geocursor/config"
	"github.com/geocursor/geocursor/cursor"
)

// runCursor connects to both databases and runs the processing loop until
// ctx ends. A database that is down at start is retried with backoff (the
// node keeps serving as a voter meanwhile); a mistake that retrying cannot
// fix, such as a wrong password or a missing table, stops the agent with
// that error.
func runCursor(ctx context.Context, cfg *config.Config, node *cluster.Node, logger hclog.Logger) error {
	var sourceErr, trackingErr atomic.Value // string: why the database cannot be reached yet
	sourceErr.Store("connecting")
	trackingErr.Store("waiting for the source database")
	node.SetProgress(func() cluster.Progress {
		return cluster.Progress{SourceError: sourceErr.Load().(string), TrackingError: trackingErr.Load().(string)}
	})
	source, err := connect(ctx, logger, "source", func(ctx context.Context) (*cursor.Source, error) {
		return cursor.OpenSource(ctx, cfg.Source.DSN, logger.Named("source"))
	}, &sourceErr)
	if err != nil {
		return err
	}
	defer source.Close()
	tracking, err := connect(ctx, logger, "tracking", func(ctx context.Context) (*cursor.Tracking, error) {
		return cursor.OpenTracking(ctx, cfg.Tracking.DSN, logger.Named("tracking"))
	}, &trackingErr)
	if err != nil {
		return err
	}
	defer tracking.Close()

	loop := cursor.NewLoop(cursor.LoopConfig{
		BatchSize:    cfg.Source.BatchSize,
		PollInterval: cfg.Source.PollInterval,
		GapTimeout:   cfg.Source.GapTimeout,
		LeaseTTL:     cfg.Lease.TTL,
		RetryMin:     cfg.Lease.RetryMin,
		RetryMax:     cfg.Lease.RetryMax,
	}, node, source, tracking, logger.Named("cursor"))
	node.SetProgress(func() cluster.Progress {
		p := loop.Progress()
		return cluster.Progress{
			SourceHeadID: p.SourceHeadID, SourceHeadDate: p.SourceHeadDate, SourceHeadOK: p.SourceHeadOK,
			SourceError: p.SourceError, TrackingError: p.TrackingError,
		}
	})
	logger.Info("cursor started", "batch_size", cfg.Source.BatchSize, "poll_interval", cfg.Source.PollInterval.String(),
		"lease_ttl", cfg.Lease.TTL.String())
	return loop.Run(ctx)
}

// connect opens one database, retrying while the failure may pass.
func connect[T any](ctx context.Context, logger hclog.Logger, role string, open func(context.Context) (T, error), lastErr *atomic.Value) (T, error) {
	wait := 500 * time.Millisecond
	for {
		octx, cancel := context.WithTimeout(ctx, 15*time.Second)
		db, err := open(octx)
		cancel()
		if err == nil {
			lastErr.Store("")
			return db, nil
		}
		var zero T
		if ctx.Err() != nil {
			return zero, ctx.Err()
		}
		if cursor.IsPermanent(err) {
			return zero, err
		}
		lastErr.Store(err.Error())
		logger.Warn(fmt.Sprintf("cannot reach the %s database; retrying", role), "error", err, "retry_in_ms", wait.Milliseconds())
		select {
		case <-ctx.Done():
			return zero, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, 10*time.Second)
	}
}

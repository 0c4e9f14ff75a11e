package main

import (
	"context"

	"github.com/hashicorp/go-hclog"

	"github.com/geocursor/geocursor/cluster"
	"github.com/geocursor/geocursor/config"
)

// runCursor runs the processing loop until ctx ends.
func runCursor(ctx context.Context, cfg *config.Config, node *cluster.Node, logger hclog.Logger) error {
	logger.Warn("event processing is not built yet: this node acts as a witness")
	<-ctx.Done()
	return nil
}

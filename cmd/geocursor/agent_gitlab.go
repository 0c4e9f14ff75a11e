package main

import (
	"context"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/geocursor/geocursor/cluster"
	"github.com/geocursor/geocursor/config"
	"github.com/geocursor/geocursor/cursor"
	"github.com/geocursor/geocursor/delivery"
	"github.com/geocursor/geocursor/gitlab"
)

// newGitLabWatcher sets up the watch of GitLab's shared state from the
// gitlab block (nil without one): its lease, its gaps and the site's role.
// The caller runs it and hands its gate to the loop and the deliverer.
func newGitLabWatcher(ctx context.Context, gc *config.GitLabConfig, node *cluster.Node, source *cursor.Source, tracking *cursor.Tracking,
	reg prometheus.Registerer, logger hclog.Logger) (*gitlab.Watcher, func(), error) {
	if gc == nil {
		logger.Info("no gitlab block: GitLab's cursor lease, its gap set and the site's role are not watched; " +
			"make sure geo-logcursor stays stopped")
		return nil, func() {}, nil
	}
	client, name, err := delivery.OpenRedis(gc.SharedStateRedisURL, gc.Sentinels)
	if err != nil {
		return nil, nil, &usageError{msg: "gitlab.shared_state_redis_url: " + err.Error()}
	}
	if rec, err := gitlab.InRecovery(ctx, source.DB()); err == nil && !rec {
		logger.Warn("the source database is not a standby (pg_is_in_recovery() is false): it looks like the primary's own database. "+
			"Point source.dsn at this site's replica: a job can otherwise run before the row it names has reached this site's database",
			"site_name", gc.SiteName)
	}
	w := gitlab.NewWatcher(gitlab.WatcherConfig{
		SiteName:  gc.SiteName,
		Lease:     &gitlab.CursorLease{Client: client, Value: gitlab.LeaseValue(gc.SiteName)},
		Gaps:      &gitlab.GapSet{Client: client},
		RedisName: name,
		Source:    source.DB(),
		Cursor: func() int64 {
			// While GitLab's own cursor has the site (handed back, or run
			// past the fence), the IDs in its set are its own whatever the
			// replicated cursor says: none is the group's until a grant
			// has taken the site over again.
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if theirs, err := tracking.GitLabHasSite(cctx); err != nil || theirs {
				return 0
			}
			st, _ := node.Watch()
			return st.Cursor.LastEventID
		},
		Logger: logger,
	})
	if err := w.Register(reg); err != nil {
		client.Close()
		return nil, nil, err
	}
	node.SetReadinessCheck(w.Ready)
	logger.Info("watching GitLab's shared state", "site_name", gc.SiteName, "shared_state_redis", name, "lease_key", gitlab.CursorLeaseKey)
	return w, func() { client.Close() }, nil
}

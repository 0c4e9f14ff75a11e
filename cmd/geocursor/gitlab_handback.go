package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geocursor/geocursor/config"
	"github.com/geocursor/geocursor/cursor"
	"github.com/geocursor/geocursor/delivery"
	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/gitlab"
)

// handbackTimeout bounds the whole handback: one Redis claim, one tracking
// transaction, two Redis writes. GitLab's cursor lease is held for
// gitlab.CursorLeaseTTL; the gap write renews it first.
const handbackTimeout = 20 * time.Second

// runGitLabHandback is `geocursor gitlab handback -config FILE [-force]`
// (operator): with every agent stopped, it hands the site back to GitLab's
// own log cursor, against the tracking database and the shared-state Redis
// the agents' config file names. The work is cursor.Tracking.HandBack's;
// this holds GitLab's cursor lease around it and reports.
func runGitLabHandback(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("gitlab handback", stderr)
	configPath := fs.String("config", "", "the agents' HCL configuration file; its tracking and gitlab blocks name the databases and the shared-state Redis (required)")
	force := fs.Bool("force", false, "hand back even though jobs in geo_jobs are not delivered to GitLab's Redis yet: they stay there undelivered")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *configPath == "" {
		return usagef("gitlab handback: -config FILE is required: the configuration file the agents run with")
	}
	cfg, err := config.Load(*configPath, os.Environ(), config.Overrides{})
	if err != nil {
		return &usageError{msg: err.Error()}
	}
	switch {
	case cfg.GitLab == nil:
		return usagef("gitlab handback: %s has no gitlab block: the handback writes geocursor's open gaps into GitLab's shared-state Redis, which that block names", *configPath)
	case cfg.Tracking == nil || cfg.Tracking.DSN == "":
		return usagef("gitlab handback: %s has no tracking dsn: set tracking.dsn or GEOCURSOR_TRACKING_DSN to the site's tracking database", *configPath)
	}
	site := cfg.GitLab.SiteName
	// go-redis would print its own lines about a Redis that does not
	// answer; the command's one line says it.
	redis.SetLogger(quietRedisLogger{})
	client, redisName, err := delivery.OpenRedis(cfg.GitLab.SharedStateRedisURL, cfg.GitLab.Sentinels)
	if err != nil {
		return usagef("gitlab handback: gitlab.shared_state_redis_url: %v", err)
	}
	defer client.Close()

	ctx, cancel := context.WithTimeout(context.Background(), handbackTimeout)
	defer cancel()
	// The handback holds GitLab's cursor lease under a value of its own:
	// neither geo-logcursor nor an agent started meanwhile can begin
	// before it is done.
	lease := &gitlab.CursorLease{Client: client, Value: gitlab.LeaseValue(site) + ":handback"}
	claim, err := lease.Claim(ctx)
	if err != nil {
		return fmt.Errorf("gitlab handback: shared-state Redis %s: %v", redisName, err)
	}
	if !claim.Ours {
		return leaseHeldError(claim, site)
	}
	defer func() {
		rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer rcancel()
		if err := lease.Release(rctx); err != nil {
			fmt.Fprintf(stderr, "geocursor: gitlab handback: %v; it expires by itself within %s\n", err, gitlab.CursorLeaseTTL)
		}
	}()

	tracking, err := cursor.OpenTracking(ctx, cfg.Tracking.DSN, nil)
	if err != nil {
		return fmt.Errorf("gitlab handback: %w", err)
	}
	defer tracking.Close()
	set := &gitlab.GapSet{Client: client}
	hb, err := tracking.HandBack(ctx, *force, func(ctx context.Context, through int64, gaps []fsm.Gap) error {
		if c, err := lease.Claim(ctx); err != nil || !c.Ours {
			if err == nil {
				err = fmt.Errorf("GitLab's cursor lease was taken by %q meanwhile", c.Holder)
			}
			return err
		}
		// What is left in the set at or below the fence is the group's
		// (adopted or processed, not yet removed by an agent): GitLab's
		// cursor would process it again.
		if _, err := set.RemoveThrough(ctx, through); err != nil {
			return err
		}
		return set.WriteBack(ctx, toGitLabGaps(gaps))
	})
	switch {
	case errors.Is(err, cursor.ErrUndelivered):
		return fmt.Errorf("gitlab handback: %d jobs in geo_jobs are not delivered to GitLab's Redis yet: start the agents until delivery has caught up "+
			"(cluster status shows the backlog), or pass -force to hand back anyway, which leaves them in geo_jobs undelivered", hb.Undelivered)
	case err != nil:
		return fmt.Errorf("gitlab handback: nothing was handed back: %w", err)
	}
	printHandback(stdout, hb, *force, redisName)
	return nil
}

// leaseHeldError says who holds GitLab's cursor lease and what to do.
func leaseHeldError(c gitlab.Claim, site string) error {
	switch c.Holder {
	case gitlab.LeaseValue(site):
		return fmt.Errorf("gitlab handback: geocursor agents of %q still hold GitLab's cursor lease (%s, %.0fs left): stop every agent first "+
			"(a clean stop releases it at once; one that was killed holds it until it expires)", site, gitlab.CursorLeaseKey, c.TTL.Seconds())
	case gitlab.LeaseValue(site) + ":handback":
		return fmt.Errorf("gitlab handback: another handback holds GitLab's cursor lease (%s, %.0fs left): wait for it to finish", gitlab.CursorLeaseKey, c.TTL.Seconds())
	}
	return fmt.Errorf("gitlab handback: GitLab's geo-logcursor is running already (it holds %s = %q): stop it (gitlab-ctl stop geo-logcursor) "+
		"and every agent, and hand back before it starts again; it may have replayed events geocursor had processed", gitlab.CursorLeaseKey, c.Holder)
}

// toGitLabGaps turns open gaps into members of GitLab's gap set.
func toGitLabGaps(gaps []fsm.Gap) []gitlab.Gap {
	out := make([]gitlab.Gap, len(gaps))
	for i, g := range gaps {
		out[i] = gitlab.Gap{ID: g.ID, FirstSeen: fsm.Time(g.FirstSeen)}
	}
	return out
}

// printHandback says what the handback did and what comes next.
func printHandback(w io.Writer, hb cursor.Handback, force bool, redisName string) {
	last := hb.Fence.Position.LastEventID
	switch hb.Outcome {
	case cursor.NothingToHandBack:
		fmt.Fprintln(w, "Nothing to hand back: geocursor has processed no event with this tracking database. geo-logcursor starts as on a fresh site.")
	case cursor.AlreadyHandedBack:
		fmt.Fprintf(w, "Handed back already at event %d (event_log_states is at %d); no agent has taken the site over since. Nothing changed.\n",
			last, hb.EventLogState)
	case cursor.GitLabCursorAhead:
		fmt.Fprintf(w, "GitLab's own log cursor has run since geocursor stopped: event_log_states is at %d, past geocursor's position %d. It has the site already; nothing changed.\n",
			hb.EventLogState, last)
	default:
		gaps := hb.Fence.Position.Gaps
		fmt.Fprintf(w, "Handed the site back to GitLab's own log cursor at event %d.\n", last)
		fmt.Fprintf(w, "  event_log_states  %d -> %d: geo-logcursor goes on after event %d\n", hb.EventLogState, last, last)
		if len(gaps) == 0 {
			fmt.Fprintf(w, "  open gaps         none (%s %s holds no gap of geocursor's)\n", redisName, gitlab.GapSetKey)
		} else {
			fmt.Fprintf(w, "  open gaps         %d written into %s %s (IDs %d..%d), for geo-logcursor to process as they commit\n",
				len(gaps), redisName, gitlab.GapSetKey, gaps[0].ID, gaps[len(gaps)-1].ID)
		}
		if hb.Undelivered > 0 && force {
			fmt.Fprintf(w, "  undelivered jobs  %d left in geo_jobs (-force): delivered only if the agents start again\n", hb.Undelivered)
		}
		fmt.Fprintln(w, "  fence row         no longer positioned: starting the agents again takes the site over from event_log_states")
		fmt.Fprintln(w, "Next: gitlab-ctl start geo-logcursor (with geo_logcursor['enable'] = true in gitlab.rb), and leave the agents stopped.")
	}
}

// quietRedisLogger drops go-redis's own lines.
type quietRedisLogger struct{}

func (quietRedisLogger) Printf(context.Context, string, ...any) {}

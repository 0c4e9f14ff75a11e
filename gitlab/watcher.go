package gitlab

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// Intervals of the Watcher. The lease key is renewed every second, far
// inside its 30 s expiry; while geo-logcursor holds it, it is tried four
// times a second, so processing begins within a second of its release.
// The role is read every two seconds, so a promotion stops processing and
// delivery well within five. Adopted gaps are removed from GitLab's set
// every few seconds once the replicated cursor has passed them.
const (
	claimInterval   = time.Second
	blockedInterval = 250 * time.Millisecond
	roleInterval    = 2 * time.Second
	sweepInterval   = 3 * time.Second
	// holdMargin: a hold confirmed less than CursorLeaseTTL-holdMargin ago
	// still covers the group while the shared-state Redis does not answer
	// (nobody else can SET NX a key that has not expired).
	holdMargin  = 5 * time.Second
	callTimeout = 2 * time.Second
)

// WatcherConfig is what a Watcher watches.
type WatcherConfig struct {
	// SiteName is GitLab's geo_nodes.name of this site (gitlab.site_name).
	SiteName string
	Lease    *CursorLease
	Gaps     *GapSet
	// RedisName names the shared-state Redis in logs and status.
	RedisName string
	// Source reads geo_nodes.
	Source Querier
	// Cursor returns the replicated cursor's last event ID (the local
	// replica, so only what a majority has): the adopted gaps at or below
	// it are the group's and leave GitLab's set.
	Cursor func() int64
	Logger hclog.Logger
}

// Watcher watches GitLab's shared state for one agent: it holds GitLab's
// cursor lease for the group, reads the site's role, and removes the gaps
// the group owns from GitLab's set. Its gate (Closed) tells the cursor loop
// and the deliverer whether this site may process and deliver now.
type Watcher struct {
	cfg    WatcherConfig
	logger hclog.Logger

	mu sync.Mutex
	st watchState
}

// watchState is what the Watcher last learned; each field is written by
// the check that learns it.
type watchState struct {
	role    Role
	roleErr string
	claim   Claim
	// claimed is when a claim last found the key the group's; redisErr is
	// the last claim's error, "" when it reached Redis.
	claimed  time.Time
	redisErr string
	// gapsInSet is the size of GitLab's gap set at the last sweep (-1:
	// not read yet).
	gapsInSet int
	// closed is the reason last logged, to log each change once.
	closed string
}

// NewWatcher returns a Watcher; Run starts it. Until its first checks it
// says the site may not process.
func NewWatcher(cfg WatcherConfig) *Watcher {
	if cfg.Logger == nil {
		cfg.Logger = hclog.NewNullLogger()
	}
	return &Watcher{cfg: cfg, logger: cfg.Logger, st: watchState{role: RoleUnknown, gapsInSet: -1, closed: "starting"}}
}

// Run checks GitLab's shared state until ctx ends, then releases GitLab's
// cursor lease if the group holds it, so that geo-logcursor can start at
// once after the last agent stopped (another agent that still runs takes
// it again within a second).
func (w *Watcher) Run(ctx context.Context) {
	var roleRead, swept time.Time
	for ctx.Err() == nil {
		now := time.Now()
		if now.Sub(roleRead) >= roleInterval {
			w.checkRole(ctx)
			roleRead = now
		}
		w.claim(ctx)
		if w.Closed() == "" && now.Sub(swept) >= sweepInterval {
			w.sweep(ctx)
			swept = now
		}
		w.logChange()
		wait := claimInterval
		if w.leaseBlocked() {
			wait = blockedInterval
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), callTimeout)
	defer cancel()
	if err := w.cfg.Lease.Release(rctx); err != nil {
		w.logger.Warn("could not release GitLab's cursor lease on the way out; it expires by itself", "error", err, "ttl_s", CursorLeaseTTL.Seconds())
	}
}

func (w *Watcher) checkRole(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	role, err := ReadRole(cctx, w.cfg.Source, w.cfg.SiteName)
	cancel()
	if ctx.Err() != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		// The last role read stays: a source that does not answer stops
		// processing by itself, and a blip must not stop delivery.
		w.st.roleErr = err.Error()
		return
	}
	w.st.role, w.st.roleErr = role, ""
}

func (w *Watcher) claim(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	c, err := w.cfg.Lease.Claim(cctx)
	cancel()
	if ctx.Err() != nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.st.redisErr = err.Error()
		return
	}
	w.st.redisErr, w.st.claim = "", c
	if c.Ours {
		w.st.claimed = time.Now()
	}
}

// sweep removes from GitLab's gap set the gaps the group owns: every ID at
// or below the replicated cursor was adopted as an open gap of the group
// or processed by it (the set is written only by geo-logcursor, which does
// not run while the group holds its lease).
func (w *Watcher) sweep(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	cursor := w.cfg.Cursor()
	removed := 0
	if cursor > 0 {
		n, err := w.cfg.Gaps.RemoveThrough(cctx, cursor)
		if err != nil {
			w.logger.Warn("could not remove adopted gaps from GitLab's gap set; retrying", "error", err)
			return
		}
		removed = n
	}
	left, err := w.cfg.Gaps.Client.ZCard(cctx, GapSetKey).Result()
	if err != nil {
		return
	}
	if removed > 0 {
		w.logger.Info("removed the gaps the group owns from GitLab's gap set", "count", removed, "through_id", cursor, "left", left)
	}
	w.mu.Lock()
	w.st.gapsInSet = int(left)
	w.mu.Unlock()
}

// Closed says why this site may not process events or deliver jobs now,
// "" when it may.
func (w *Watcher) Closed() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if why := w.roleClosed(); why != "" {
		return why
	}
	return w.leaseClosed(time.Now())
}

func (w *Watcher) roleClosed() string {
	switch w.st.role {
	case RoleSecondary:
		return ""
	case RolePrimary:
		return fmt.Sprintf("this site (%q) is a primary in geo_nodes: it was promoted, and a primary has no log cursor; "+
			"geocursor processes and delivers nothing until geo_nodes says secondary again", w.cfg.SiteName)
	case RoleMissing:
		return fmt.Sprintf("no geo_nodes row is named %q: set gitlab.site_name to this site's name in GitLab (Admin > Geo > Sites)", w.cfg.SiteName)
	}
	why := "this site's role is not read yet"
	if w.st.roleErr != "" {
		why += ": " + w.st.roleErr
	}
	return why
}

// leaseBlocked reports whether the lease half of the gate is closed.
func (w *Watcher) leaseBlocked() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.leaseClosed(time.Now()) != ""
}

// leaseClosed is the lease half of Closed; w.mu is held.
func (w *Watcher) leaseClosed(now time.Time) string {
	st := w.st
	switch {
	case st.claim.Ours && now.Sub(st.claimed) < CursorLeaseTTL-holdMargin:
		return ""
	case !st.claim.Ours && st.claim.Holder != "" && st.redisErr == "":
		return fmt.Sprintf("GitLab's geo-logcursor holds its cursor lease (%s = %q, %.0fs left): two cursors would deliver every job twice; "+
			"stop it with `gitlab-ctl stop geo-logcursor` (and geo_logcursor['enable'] = false in gitlab.rb); geocursor begins within a second of its lease going",
			CursorLeaseKey, st.claim.Holder, st.claim.TTL.Seconds())
	case st.redisErr != "":
		return "cannot hold GitLab's cursor lease in the shared-state Redis " + w.cfg.RedisName + " (" + st.redisErr +
			"): without it geo-logcursor could run too; processing waits for the Redis"
	}
	return "GitLab's cursor lease is not claimed yet"
}

// logChange logs each change of the gate once, with what to do.
func (w *Watcher) logChange() {
	why := w.Closed()
	w.mu.Lock()
	prev := w.st.closed
	w.st.closed = why
	w.mu.Unlock()
	switch {
	case why == prev:
	case why == "":
		w.logger.Info("GitLab's shared state allows processing: this site is a secondary and the group holds GitLab's cursor lease",
			"site_name", w.cfg.SiteName, "key", CursorLeaseKey)
	default:
		w.logger.Warn("processing and delivery stop: "+why, "site_name", w.cfg.SiteName)
	}
}

// Ready is the readiness check: not ready while the gate is closed.
func (w *Watcher) Ready() error {
	if why := w.Closed(); why != "" {
		return fmt.Errorf("%s", why)
	}
	return nil
}

// OpenGaps reads GitLab's gap set as open gaps of the state machine, first
// seen when GitLab saw them: what a site taking over from geo-logcursor
// adopts.
func (w *Watcher) OpenGaps(ctx context.Context) ([]fsm.Gap, error) {
	gaps, err := w.cfg.Gaps.Read(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]fsm.Gap, len(gaps))
	for i, g := range gaps {
		out[i] = fsm.Gap{ID: g.ID, FirstSeen: g.FirstSeen.UnixNano()}
	}
	return out, nil
}

// AddStatus adds the gitlab object to the status document.
func (w *Watcher) AddStatus(st *api.Status) {
	closed := w.Closed()
	w.mu.Lock()
	defer w.mu.Unlock()
	g := &api.GitLab{
		SiteName:         w.cfg.SiteName,
		Role:             string(w.st.role),
		RoleError:        w.st.roleErr,
		SharedStateRedis: api.DatabaseOK,
		Blocked:          closed,
	}
	switch {
	case w.st.redisErr != "":
		g.SharedStateRedis = w.st.redisErr
		g.CursorLease = api.GitLabLeaseUnknown
	case w.st.claim.Ours:
		g.CursorLease = api.GitLabLeaseHeld
	case w.st.claim.Holder != "":
		g.CursorLease, g.CursorLeaseHolder = api.GitLabLeaseOldCursor, w.st.claim.Holder
	default:
		g.CursorLease = api.GitLabLeaseUnknown
	}
	if w.st.gapsInSet >= 0 {
		n := w.st.gapsInSet
		g.GitLabGaps = &n
	}
	st.GitLab = g
}

// Register adds the Watcher's gauges to reg: whether GitLab's own cursor
// holds its lease, whether the site is a primary, and whether processing
// is closed for any reason, so that alerts can say which.
func (w *Watcher) Register(reg prometheus.Registerer) error {
	gauge := func(name, help string, f func(st watchState) bool) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 {
			w.mu.Lock()
			defer w.mu.Unlock()
			if f(w.st) {
				return 1
			}
			return 0
		})
	}
	for _, c := range []prometheus.Collector{
		gauge("geocursor_gitlab_old_cursor_running",
			"1 while another process (GitLab's geo-logcursor) holds GitLab's log cursor lease, so that geocursor processes nothing, else 0.",
			func(st watchState) bool { return !st.claim.Ours && st.claim.Holder != "" && st.redisErr == "" }),
		gauge("geocursor_gitlab_site_primary",
			"1 while geo_nodes says this site is a primary (promoted), so that geocursor processes nothing, else 0.",
			func(st watchState) bool { return st.role == RolePrimary }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "geocursor_gitlab_blocked",
			Help: "1 while GitLab's shared state keeps this site from processing and delivering (promoted, geo-logcursor running, " +
				"the shared-state Redis unreachable, the site's role unknown), else 0.",
		}, func() float64 {
			if w.Closed() != "" {
				return 1
			}
			return 0
		}),
	} {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	return nil
}

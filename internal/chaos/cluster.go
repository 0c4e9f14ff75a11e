package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/internal/devcluster"
	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/internal/pgserver"
	"github.com/geocursor/geocursor/internal/redisserver"
)

// Options configures a Cluster. Zero values take the defaults below.
type Options struct {
	// Name labels the run in logs and the report.
	Name string
	// Dir receives configs, Raft data, agent logs, histories and the
	// report. It is not removed: the caller decides what to keep.
	Dir string
	// Peers is the group size (default 3).
	Peers int
	// Binary is the geocursor binary; built into Dir when empty.
	Binary string
	// Source and Tracking are running servers to create this run's
	// databases on. Nil: Start starts one each and Close stops them.
	Source, Tracking *pgserver.Server
	// LeaseTTL is the agents' lease.ttl (default 2s): the fallback that
	// bounds a frozen holder's turn.
	LeaseTTL time.Duration
	// BatchSize is source.batch_size (default 200).
	BatchSize int
	// Load drives the source while the cluster runs; the zero value means
	// DefaultLoad.
	Load loadgen.Config
	// NoLoad leaves the source empty: the lease stays free and the cursor
	// loops idle, for tests that drive the lease themselves.
	NoLoad bool
	// Plaintext runs the agents without TLS and tokens (insecure = true);
	// by default they run with both, as in production.
	Plaintext bool
	// Seed makes the choice of targets repeatable (the rest is timing).
	Seed uint64
	// LogLevel is the agents' log_level (default info).
	LogLevel string
	// Logf receives progress lines.
	Logf func(format string, args ...any)
	// OnFault, if set, is called with each fault once it has been healed
	// and the group has recovered (or failed to).
	OnFault func(Fault)
}

// DefaultLoad is a steady mixed load: concurrent writers, held and rolled
// back transactions (gaps), cache invalidations and malformed events.
var DefaultLoad = loadgen.Config{
	Writers: 4, Rate: 150,
	RollbackFraction: 0.02, HoldFraction: 0.05, HoldFor: 300 * time.Millisecond,
	CacheInvalidationFraction: 0.05, BadFraction: 0.02,
}

func (o Options) withDefaults() Options {
	if o.Name == "" {
		o.Name = "chaos"
	}
	if o.Peers == 0 {
		o.Peers = 3
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = 2 * time.Second
	}
	if o.BatchSize == 0 {
		o.BatchSize = 200
	}
	if o.Load.Writers == 0 && o.Load.Rate == 0 {
		o.Load = DefaultLoad
	}
	if o.Seed == 0 {
		o.Seed = rand.Uint64()
	}
	if o.LogLevel == "" {
		o.LogLevel = "info"
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	return o
}

// Cluster is a geocursor group running in network namespaces with its two
// databases, a steady load on the source, and a record of the faults
// injected into it.
type Cluster struct {
	opts   Options
	Net    *Net
	Agents []*Agent
	// procs is the group as devcluster sees it, for its waits and lookups.
	procs *devcluster.Cluster
	// Security is the agents' CA and tokens; nil with Options.Plaintext.
	Security *devcluster.Security

	Source, Tracking *pgserver.Server
	ownPG            []*pgserver.Server
	// SourceDSN and TrackingDSN reach the databases from the root
	// namespace, past the proxies.
	SourceDSN, TrackingDSN string
	srcProxies, trkProxies []*Proxy
	sourcePool             *pgxpool.Pool
	// SharedState is GitLab's shared-state Redis of the site: the agents
	// run with a gitlab block, as a site does, and reach it through a
	// proxy each (stateProxies), like the databases.
	SharedState  *redisserver.Server
	stateProxies []*Proxy

	load    *load
	monitor *monitor

	rng     *rand.Rand
	mu      sync.Mutex
	Faults  []*Fault
	notes   []string
	Started time.Time
}

// Start sets up the network, databases, proxies and agents, waits until
// the group has formed, and starts the load. On error everything created
// so far is removed.
func Start(ctx context.Context, opts Options) (_ *Cluster, err error) {
	opts = opts.withDefaults()
	if opts.Dir == "" {
		return nil, errors.New("chaos: Options.Dir is required")
	}
	if entries, err := os.ReadDir(opts.Dir); err == nil && len(entries) > 0 {
		// Agents would find the Raft state of an earlier run there.
		return nil, fmt.Errorf("chaos: %s is not empty: give each run a new directory", opts.Dir)
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", opts.Dir, err)
	}
	c := &Cluster{opts: opts, rng: rand.New(rand.NewPCG(opts.Seed, 0x6763)), Started: time.Now(),
		procs: &devcluster.Cluster{PollEvery: pollEvery}}
	defer func() {
		if err != nil {
			if cerr := c.Close(); cerr != nil {
				opts.Logf("chaos: clean up after failed start: %v", cerr)
			}
		}
	}()
	if c.Net, err = NewNet(ctx, opts.Peers, opts.Logf); err != nil {
		return nil, err
	}
	if err := c.startDatabases(ctx); err != nil {
		return nil, err
	}
	if opts.Binary == "" {
		if opts.Binary, err = devcluster.Build(ctx, filepath.Join(opts.Dir, "bin")); err != nil {
			return nil, err
		}
		c.opts.Binary = opts.Binary
	}
	if !opts.Plaintext {
		if c.Security, err = devcluster.NewSecurity(filepath.Join(opts.Dir, "tls")); err != nil {
			return nil, err
		}
	}
	for i, h := range c.Net.Hosts {
		src, err := NewProxy(net.JoinHostPort(c.Net.HostIP, "0"), net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Source.Port)))
		if err != nil {
			return nil, err
		}
		c.srcProxies = append(c.srcProxies, src)
		trk, err := NewProxy(net.JoinHostPort(c.Net.HostIP, "0"), net.JoinHostPort("127.0.0.1", strconv.Itoa(c.Tracking.Port)))
		if err != nil {
			return nil, err
		}
		c.trkProxies = append(c.trkProxies, trk)
		state, err := NewProxy(net.JoinHostPort(c.Net.HostIP, "0"), c.SharedState.Addr())
		if err != nil {
			return nil, err
		}
		c.stateProxies = append(c.stateProxies, state)
		env := []string{
			"GEOCURSOR_SOURCE_DSN=" + viaProxy(c.SourceDSN, src.Addr()),
			"GEOCURSOR_TRACKING_DSN=" + viaProxy(c.TrackingDSN, trk.Addr()),
			"GEOCURSOR_SHARED_STATE_REDIS_URL=redis://" + state.Addr() + "/0",
		}
		// The first agent bootstraps; the others join it.
		var join []string
		if i > 0 {
			join = []string{c.Agents[0].HTTPAddr}
		}
		a, err := newAgent(fmt.Sprintf("n%d", i+1), h, opts.Dir, opts.Binary, c.agentHCL(), env, join, c.Security)
		if err != nil {
			return nil, err
		}
		c.Agents = append(c.Agents, a)
		c.procs.Agents = append(c.procs.Agents, a.Agent)
	}

	c.monitor = startMonitor(c.TrackingDSN, opts.Logf)
	first := c.Agents[0]
	if err := first.Start(); err != nil {
		return nil, err
	}
	if err := first.WaitReady(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	for _, a := range c.Agents[1:] {
		if err := a.Start(); err != nil {
			return nil, err
		}
	}
	if err := c.WaitFormed(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	opts.Logf("chaos: %s: %d agents formed a group (dir %s)", opts.Name, len(c.Agents), opts.Dir)
	if !opts.NoLoad {
		if c.load, err = startLoad(ctx, c.SourceDSN, opts.Load, opts.Seed); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// agentHCL is the part of every agent's config that is the same for all.
// The Raft log is never compacted, so that the checker can read every
// command the group applied.
func (c *Cluster) agentHCL() string {
	return fmt.Sprintf(`join_timeout = "30s"
insecure     = %t
log_level    = %q

lease {
  ttl       = %q
  retry_min = "100ms"
  retry_max = "300ms"
}

source {
  dsn           = env.GEOCURSOR_SOURCE_DSN
  batch_size    = %d
  poll_interval = "25ms"
  gap_timeout   = "1h"
  start         = "oldest"
}

tracking {
  dsn = env.GEOCURSOR_TRACKING_DSN
}

gitlab {
  site_name              = %q
  shared_state_redis_url = env.GEOCURSOR_SHARED_STATE_REDIS_URL
}

raft {
  snapshot_threshold = 1000000000
  trailing_logs      = 1000000000
}
`, c.opts.Plaintext, c.opts.LogLevel, c.opts.LeaseTTL.String(), c.opts.BatchSize, loadgen.SecondarySite)
}

// viaProxy rewrites dsn to connect through the proxy at addr, with a
// connect timeout so that a cut connection attempt ends.
func viaProxy(dsn, addr string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return dsn
	}
	u.Host = addr
	q := u.Query()
	q.Set("connect_timeout", "5")
	u.RawQuery = q.Encode()
	return u.String()
}

func (c *Cluster) startDatabases(ctx context.Context) error {
	var err error
	c.Source, c.Tracking = c.opts.Source, c.opts.Tracking
	if c.Source == nil {
		// The source is never restarted: speed over durability is fine.
		if c.Source, err = pgserver.Start(ctx, pgserver.Options{Fast: true}); err != nil {
			return fmt.Errorf("start the source PostgreSQL: %w", err)
		}
		c.ownPG = append(c.ownPG, c.Source)
		if err := TrackServer(c.Source); err != nil {
			return err
		}
	}
	if c.Tracking == nil {
		// The tracking database is crashed and restarted by a nemesis:
		// it must keep what it acknowledged.
		if c.Tracking, err = pgserver.Start(ctx, pgserver.Options{}); err != nil {
			return fmt.Errorf("start the tracking PostgreSQL: %w", err)
		}
		c.ownPG = append(c.ownPG, c.Tracking)
		if err := TrackServer(c.Tracking); err != nil {
			return err
		}
	}
	// GitLab's shared-state Redis, for the gitlab block: never faulted
	// itself (the nemeses cut the agents' proxies to it with the rest).
	if c.SharedState, err = redisserver.Start(ctx, redisserver.Options{AppendFsync: "everysec"}); err != nil {
		return fmt.Errorf("start the shared-state Redis: %w", err)
	}
	base := "chaos_" + c.Net.ID
	if c.SourceDSN, err = c.Source.CreateDatabase(ctx, base+"_source"); err != nil {
		return err
	}
	if c.TrackingDSN, err = c.Tracking.CreateDatabase(ctx, base+"_tracking"); err != nil {
		return err
	}
	// A shared server carries the WAL of earlier runs; a checkpoint keeps
	// the crash recovery of restart-db about this run's writes only.
	if err := checkpoint(ctx, c.TrackingDSN); err != nil {
		return err
	}
	c.sourcePool, err = pgxpool.New(ctx, c.SourceDSN)
	if err != nil {
		return fmt.Errorf("connect to the source: %w", err)
	}
	if err := loadgen.CreateSourceSchema(ctx, c.sourcePool); err != nil {
		return err
	}
	return nil
}

// Close stops the load and every agent and removes the network, proxies
// and any PostgreSQL server it started. It keeps Dir.
func (c *Cluster) Close() error {
	var errs []error
	if c.load != nil {
		c.load.stop()
	}
	for _, a := range c.Agents {
		if err := a.Kill(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.monitor != nil {
		c.monitor.stop()
	}
	for _, p := range append(append(c.srcProxies, c.trkProxies...), c.stateProxies...) {
		p.Close()
	}
	if c.SharedState != nil {
		if err := c.SharedState.Cleanup(); err != nil {
			errs = append(errs, err)
		}
	}
	if c.sourcePool != nil {
		c.sourcePool.Close()
	}
	if c.Net != nil {
		if err := c.Net.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, s := range c.ownPG {
		if err := s.Cleanup(); err != nil {
			errs = append(errs, err)
		} else {
			UntrackServer(s)
		}
	}
	c.ownPG = nil
	return errors.Join(errs...)
}

// Logf logs through Options.Logf.
func (c *Cluster) Logf(format string, args ...any) { c.opts.Logf(format, args...) }

// Dir is where the run keeps its files.
func (c *Cluster) Dir() string { return c.opts.Dir }

// of returns the agent that is p: procs holds the same agents in the
// same order.
func (c *Cluster) of(p *devcluster.Agent) *Agent {
	return c.Agents[slices.Index(c.procs.Agents, p)]
}

// note records something worth reporting that is not a violation.
func (c *Cluster) note(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	c.mu.Lock()
	c.notes = append(c.notes, msg)
	c.mu.Unlock()
	c.opts.Logf("chaos: %s", msg)
}

// pollEvery is how often the waits of the package ask again.
const pollEvery = 50 * time.Millisecond

// WaitFormed waits until every agent runs and sees all agents as
// reachable voters and the same leader. It fails at once if an agent
// exits.
func (c *Cluster) WaitFormed(ctx context.Context, timeout time.Duration) error {
	return c.procs.WaitFormed(ctx, timeout)
}

// Leader returns the agent that the running, unpaused agents agree leads.
func (c *Cluster) Leader(ctx context.Context, timeout time.Duration) (*Agent, error) {
	p, err := c.procs.Leader(ctx, timeout)
	if err != nil {
		return nil, err
	}
	return c.of(p), nil
}

// Holder returns the agent that holds the lease, as the first running,
// unpaused agent that answers sees it, waiting up to timeout for the
// lease to be held (a holder releases it between batches when there is
// little work).
func (c *Cluster) Holder(ctx context.Context, timeout time.Duration) (*Agent, uint64, error) {
	var (
		holder *Agent
		token  uint64
	)
	err := devcluster.WaitEvery(ctx, timeout, pollEvery, "a lease holder", func() (bool, string, error) {
		p, st, err := c.procs.Holder(ctx)
		switch {
		case err != nil:
			return false, err.Error(), nil
		case p == nil:
			return false, "the lease is free", nil
		}
		holder, token = c.of(p), st.Lease.Token
		return true, "", nil
	})
	return holder, token, err
}

// healAll undoes every fault still in place: partitions, cut proxies,
// paused and dead agents.
func (c *Cluster) healAll(ctx context.Context) error {
	var errs []error
	if err := c.Net.Heal(ctx); err != nil {
		errs = append(errs, err)
	}
	for _, p := range append(c.srcProxies, c.trkProxies...) {
		p.Heal()
	}
	if err := c.Tracking.StartAgain(ctx); err != nil {
		errs = append(errs, err)
	}
	for _, a := range c.Agents {
		if a.Paused() {
			if err := a.Signal(syscall.SIGCONT); err != nil {
				errs = append(errs, err)
			}
		}
		if !a.Running() {
			c.note("%s was not running at heal (%s); restarting it", a.ID, a.ExitState())
			if err := a.Restart(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (c *Cluster) others(a *Agent) []*Agent {
	var out []*Agent
	for _, o := range c.Agents {
		if o != a {
			out = append(out, o)
		}
	}
	return out
}

func httpAddrs(agents []*Agent) string {
	var out []string
	for _, a := range agents {
		out = append(out, a.HTTPAddr)
	}
	return strings.Join(out, ",")
}

func checkpoint(ctx context.Context, dsn string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect for a checkpoint: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

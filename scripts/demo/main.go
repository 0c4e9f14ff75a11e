// Command demo runs geocursor the way the README's first command shows it:
// a throwaway PostgreSQL with a GitLab-like source database and a tracking
// database, a throwaway Redis with a real Sidekiq running GitLab's
// Geo::EventWorker (one that records what it performs), three agents
// (node1 bootstraps, node2 and node3 join it) that deliver every job to
// that Sidekiq and every cache invalidation to the Redis, and a load
// generator writing events continuously. Every 3s it prints `geocursor
// cluster status` and what Sidekiq performed last. On Ctrl-C (or SIGTERM,
// or at -duration) it stops everything it started, removes what it made,
// and prints two checks: every event processed exactly once, and every
// job performed by Sidekiq exactly once.
//
//	scripts/demo.sh                  # until Ctrl-C
//	scripts/demo.sh -duration 40s -rate 500 -keep
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/internal/devcluster"
	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/internal/pgserver"
	"github.com/geocursor/geocursor/internal/redisserver"
	"github.com/geocursor/geocursor/internal/sidekiqserver"
	"github.com/geocursor/geocursor/scripts/internal/harness"
)

// exitFailure is the exit status of a failed run, as for geocursor
// itself; a usage error exits with harness.ExitUsage.
const exitFailure = 1

const (
	statusEvery = 3 * time.Second
	// catchUpWait bounds the wait, after the load stops, for the cursor to
	// process the last events before the agents are stopped.
	catchUpWait = 15 * time.Second
	writers     = 4
)

// fixedPorts are the HTTP and Raft ports of node1..node3 when they are
// free: node1's HTTP address is the CLI's default.
var fixedPorts = [][2]int{{8470, 8471}, {8480, 8481}, {8490, 8491}}

type options struct {
	duration time.Duration
	rate     float64
	keep     bool
	// plaintext runs the agents without TLS and tokens.
	plaintext bool
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	opts, err := parseFlags(args)
	if code, done := harness.FlagsDone("demo", os.Stderr, err); done {
		return code
	}
	d := &demo{opts: opts, out: os.Stdout}
	return d.run()
}

func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.DurationVar(&o.duration, "duration", 0, "how long to run; 0 runs until Ctrl-C")
	fs.Float64Var(&o.rate, "rate", 200, "events per second the load generator writes (rolled-back ones included)")
	fs.BoolVar(&o.keep, "keep", false, "keep the demo directory (configs, logs, Raft data) and the stopped PostgreSQL data directory")
	fs.BoolVar(&o.plaintext, "plaintext", false, "run the agents without TLS and tokens (by default they have both, as in production)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: scripts/demo.sh [-duration D] [-rate N] [-keep] [-plaintext]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected argument %q (flags start with -)", fs.Arg(0))
	case o.duration < 0:
		return o, fmt.Errorf("-duration must not be negative, got %s", o.duration)
	case o.rate <= 0:
		return o, fmt.Errorf("-rate must be positive, got %v", o.rate)
	}
	return o, nil
}

// demo is one run: what it started, so that it can stop it in order.
type demo struct {
	opts     options
	out      io.Writer
	loadFrom time.Time // when the load generator started

	dir      string // the demo directory
	pg       *pgserver.Server
	redis    *redisserver.Server
	sidekiq  *sidekiqserver.Server
	cluster  *devcluster.Cluster
	source   *pgxpool.Pool
	tracking *pgxpool.Pool
	binary   string
	// security is the agents' CA and tokens; nil with -plaintext.
	security *devcluster.Security

	written atomic.Int64 // events committed by the load generator

	// mu guards what the hard exit (a second Ctrl-C) reads while setUp
	// may still be writing it.
	mu     sync.Mutex
	agents []*devcluster.Agent
}

// record runs f, which stores a resource the hard exit needs, under mu.
func (d *demo) record(f func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	f()
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintln(d.out, fmt.Sprintf(format, args...))
}

func (d *demo) run() int {
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	warning := harness.HandleSignals(func(sig os.Signal) {
		d.say("\n%s: stopping (Ctrl-C again to exit at once)...", sig)
		stop()
	}, d.hardExit)
	if warning != nil {
		fmt.Fprintf(os.Stderr, "demo: warning: %v (stop the demo itself, not go run)\n", warning)
	}

	err := d.setUp(ctx)
	if err == nil {
		err = d.runLoad(ctx)
	}
	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		d.showLogTails()
	}
	if ok := d.tearDown(); !ok || (err != nil && ctx.Err() == nil) {
		return exitFailure
	}
	return 0
}

// setUp starts PostgreSQL, creates the databases, builds the binary and
// starts the agents.
func (d *demo) setUp(ctx context.Context) error {
	d.say("geocursor demo: PostgreSQL, Redis, Sidekiq, three agents and a load generator (-h for options)")
	pg, err := pgserver.Start(ctx, pgserver.Options{})
	d.record(func() { d.pg = pg })
	if errors.Is(err, pgserver.ErrNotInstalled) {
		fmt.Fprintf(os.Stderr, "demo: the PostgreSQL server binaries are missing. Install Debian's package and run the demo again:\n    apt-get install -y postgresql\n(%v)\n", err)
		os.Exit(exitFailure)
	}
	if err != nil {
		return fmt.Errorf("start PostgreSQL: %w", err)
	}
	d.say("PostgreSQL %s on 127.0.0.1:%d (data in %s)", harness.PGVersion(ctx, d.pg), d.pg.Port, d.pg.Dir)

	dbs, err := harness.CreateDatabases(ctx, d.pg, writers+2, 2)
	d.source, d.tracking = dbs.Source, dbs.Tracking
	if err != nil {
		return err
	}
	sourceDSN, trackingDSN := dbs.SourceDSN, dbs.TrackingDSN
	d.say("databases: source %s (GitLab's event log layout), tracking %s", harness.SourceDB, harness.TrackingDB)

	rs, err := redisserver.Start(ctx, redisserver.Options{})
	d.record(func() { d.redis = rs })
	if errors.Is(err, redisserver.ErrNotInstalled) {
		fmt.Fprintf(os.Stderr, "demo: redis-server is missing. Install Debian's package and run the demo again:\n    apt-get install -y redis-server\n(%v)\n", err)
		os.Exit(exitFailure)
	}
	if err != nil {
		return fmt.Errorf("start Redis: %w", err)
	}
	sk, err := sidekiqserver.Start(ctx, sidekiqserver.Options{RedisURL: rs.URL(), Queue: "default"})
	d.record(func() { d.sidekiq = sk })
	if errors.Is(err, sidekiqserver.ErrNotInstalled) {
		fmt.Fprintf(os.Stderr, "demo: Sidekiq is missing. Install Debian's package and run the demo again:\n    apt-get install -y ruby-sidekiq\n(%v)\n", err)
		os.Exit(exitFailure)
	}
	if err != nil {
		return fmt.Errorf("start Sidekiq: %w", err)
	}
	d.say("Redis on %s (append-only file synced on every write); Sidekiq running GitLab's Geo::EventWorker on queue default (log in %s)", rs.Addr(), sk.Dir)

	dir, err := os.MkdirTemp("", "geocursor-demo-")
	if err != nil {
		return fmt.Errorf("create the demo directory: %w", err)
	}
	d.record(func() { d.dir = dir })
	d.say("building geocursor into %s ...", d.dir)
	if d.binary, err = devcluster.Build(ctx, d.dir); err != nil {
		return err
	}

	if !d.opts.plaintext {
		if d.security, err = devcluster.NewSecurity(filepath.Join(d.dir, "tls")); err != nil {
			return err
		}
		d.say("TLS: a CA of the demo's own and a peer certificate per node in %s; tokens for reading and operating", d.security.Dir)
	}
	d.cluster = &devcluster.Cluster{
		Binary: d.binary, Dir: d.dir, Supervised: true, Addrs: demoAddrs, Security: d.security,
		OnAgent: func(a *devcluster.Agent) { d.record(func() { d.agents = append(d.agents, a) }) },
	}
	d.say("starting node1 (bootstraps the group), node2 and node3 (-join node1) ...")
	env := append(harness.AgentEnv(sourceDSN, trackingDSN),
		"GEOCURSOR_SIDEKIQ_REDIS_URL="+rs.URL(), "GEOCURSOR_CACHE_REDIS_URL="+cacheURL(rs),
		"GEOCURSOR_SHARED_STATE_REDIS_URL=redis://"+rs.Addr()+"/2")
	if err := d.cluster.Start(ctx, 3, harness.AgentHCL("info", 1000)+deliveryHCL, env); err != nil {
		return fmt.Errorf("start the agents: %w", err)
	}
	d.say("")
	for _, a := range d.cluster.Agents {
		d.say("  %s  pid %-7d http %-16s raft %-16s config %s", a.ID, a.Pid(), a.HTTPAddr, a.RaftAddr, a.ConfigPath)
	}
	d.say("  logs: %s", filepath.Join(d.dir, "node*", "agent.log"))
	return nil
}

// deliveryHCL hands every job to the demo's Sidekiq and every cache
// invalidation to its Redis, as on a GitLab site (design section 11).
const deliveryHCL = `
delivery {
  sidekiq {
    redis_url = env.GEOCURSOR_SIDEKIQ_REDIS_URL
    queue     = "default"
  }
  cache {
    redis_url = env.GEOCURSOR_CACHE_REDIS_URL
    namespace = "cache:gitlab"
  }
}

# GitLab's shared state (database 2 of the same Redis stands in for it):
# the agents hold GitLab's cursor lease and process while geo_nodes says
# the site is a secondary.
gitlab {
  site_name              = "` + loadgen.SecondarySite + `"
  shared_state_redis_url = env.GEOCURSOR_SHARED_STATE_REDIS_URL
}
`

// cacheURL is the demo's Rails cache: database 1 of the same Redis.
func cacheURL(rs *redisserver.Server) string { return "redis://" + rs.Addr() + "/1" }

// demoAddrs gives node i its well-known ports when both are free, and free
// ports otherwise.
func demoAddrs(i int) (string, string, error) {
	if i <= len(fixedPorts) {
		h := fmt.Sprintf("127.0.0.1:%d", fixedPorts[i-1][0])
		r := fmt.Sprintf("127.0.0.1:%d", fixedPorts[i-1][1])
		if devcluster.AddrFree(h) && devcluster.AddrFree(r) {
			return h, r, nil
		}
		fmt.Printf("  node%d: %s or %s is taken; using free ports instead\n", i, h, r)
	}
	h, err := devcluster.FreeAddr()
	if err != nil {
		return "", "", err
	}
	r, err := devcluster.FreeAddr()
	return h, r, err
}

// runLoad writes events until ctx ends or -duration passes, printing the
// status every few seconds, then stops the load and checks the outcome.
func (d *demo) runLoad(ctx context.Context) error {
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	if d.opts.duration > 0 {
		var cancel context.CancelFunc
		loadCtx, cancel = context.WithTimeout(loadCtx, d.opts.duration)
		defer cancel()
	}
	cfg := loadgen.Config{
		Writers:                   writers,
		Rate:                      d.opts.rate,
		RollbackFraction:          0.02,
		HoldFraction:              0.02,
		HoldFor:                   400 * time.Millisecond,
		CacheInvalidationFraction: 0.05,
		BadFraction:               0.002,
		Seed:                      time.Now().UnixNano(),
		OnCommit:                  func(ids []int64, _ time.Time) { d.written.Add(int64(len(ids))) },
	}
	type result struct {
		stats loadgen.Stats
		err   error
	}
	done := make(chan result, 1)
	d.loadFrom = time.Now()
	go func() {
		st, err := loadgen.Run(loadCtx, d.source, cfg)
		done <- result{st, err}
	}()
	d.say("\nwriting ~%.0f events/s with %d writers (2%% rolled back, 2%% held open for %s, 5%% cache invalidations, 0.2%% malformed)",
		d.opts.rate, writers, cfg.HoldFor)
	d.printHowTo(ctx)

	tick := time.NewTicker(statusEvery)
	defer tick.Stop()
	var res result
loop:
	for {
		select {
		case res = <-done:
			break loop
		case <-tick.C:
			d.printStatus(ctx)
		}
	}
	if res.err != nil && ctx.Err() == nil && loadCtx.Err() == nil {
		return fmt.Errorf("load generator: %w", res.err)
	}
	s := res.stats
	d.say("\nload generator stopped: %d events committed (%d held open, %d cache invalidations, %d malformed), %d transactions rolled back",
		s.Committed, s.Held, s.CacheInvalidations, s.Bad, s.RolledBack)
	return nil
}

// printHowTo waits briefly for the first holder, so that it can print its
// pid, and says how to watch and disturb the cluster by hand.
func (d *demo) printHowTo(ctx context.Context) {
	var holder *devcluster.Agent
	_ = devcluster.WaitFor(ctx, 5*time.Second, "a lease holder", func() (bool, string, error) {
		h, _, err := d.cluster.Holder(ctx)
		holder = h
		return h != nil, fmt.Sprint(err), nil
	})
	first := d.cluster.Agents[0]
	d.say("\nwatch it by hand in another terminal:")
	if sec := d.security; sec != nil {
		args := sec.CLIArgs(sec.ReadToken)
		d.say("    export GEOCURSOR_CACERT=%s GEOCURSOR_TOKEN=%s", args[1], sec.ReadToken)
		d.say("    (the operator token, for cursor pause and resume: %s)", sec.OperatorToken)
	}
	d.say("    %s cluster status -addr %s", d.binary, first.HTTPAddr)
	if first.HTTPAddr == "127.0.0.1:8470" {
		d.say("    (-addr may be left out: %s is the default)", first.HTTPAddr)
	}
	d.say("kill the active peer and watch another one take over within about a second:")
	if holder != nil {
		d.say("    kill -9 %d    # %s, which holds the lease now", holder.Pid(), holder.ID)
	} else {
		d.say("    kill -9 <pid of the holder>   (pids above; the holder is shown in each status)")
	}
	d.say("")
}

// printStatus prints the one-line header and `geocursor cluster status` as
// a person would run it.
func (d *demo) printStatus(ctx context.Context) {
	holder := "none"
	if h, _, err := d.cluster.Holder(ctx); err == nil && h != nil {
		holder = fmt.Sprintf("%s (pid %d)", h.ID, h.Pid())
	}
	var down []string
	for _, a := range d.cluster.Agents {
		if !a.Running() {
			down = append(down, fmt.Sprintf("%s (%s)", a.ID, a.ExitState()))
		}
	}
	line := fmt.Sprintf("=== %s: %d events written; lease holder %s", time.Since(d.loadFrom).Round(time.Second), d.written.Load(), holder)
	if len(down) > 0 {
		line += "; not running: " + strings.Join(down, ", ")
	}
	d.say("%s", line)
	live := d.cluster.Live()
	if len(live) == 0 {
		d.say("(no agent is running)")
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	args := []string{"cluster", "status", "-addr", live[0].HTTPAddr}
	if sec := d.security; sec != nil {
		args = append(args, sec.CLIArgs(sec.ReadToken)...)
	}
	cmd := exec.CommandContext(cctx, d.binary, args...)
	cmd.Stdout, cmd.Stderr = d.out, d.out
	_ = cmd.Run() // its one-line error, if any, is printed too
	if performed, err := d.sidekiq.Performed(); err == nil && len(performed) > 0 {
		p := performed[len(performed)-1]
		d.say("Sidekiq  performed %d Geo::EventWorker jobs; the last: perform(%q, %q, %s) jid %s, %.0f ms after it was enqueued",
			len(performed), p.ReplicableName, p.EventName, p.Payload, p.JID, (p.PerformedAt-p.EnqueuedAt)*1000)
	}
	d.say("")
}

// tearDown waits for the cursor to catch up, stops the agents and
// PostgreSQL, removes the demo's files and prints the exactly-once check.
// It is safe after a partial setUp, and reports whether the check passed.
func (d *demo) tearDown() bool {
	var (
		outcome     harness.Outcome
		checkErr    = errors.New("not checked: the demo did not get as far as writing events")
		delivered   harness.Delivered
		deliveryErr = checkErr
	)
	if d.cluster != nil && d.tracking != nil && len(d.cluster.Live()) > 0 {
		outcome, checkErr = d.catchUp()
		if checkErr == nil {
			delivered, deliveryErr = d.deliveryCaughtUp()
		}
	}
	if d.cluster != nil {
		d.say("stopping the agents (SIGTERM) ...")
		if err := d.cluster.Close(); err != nil {
			d.say("  %v", err)
		}
	}
	harness.ClosePools(d.source, d.tracking)
	if d.sidekiq != nil {
		d.say("stopping Sidekiq and Redis ...")
		if err := d.sidekiq.Cleanup(); err != nil {
			d.say("  %v", err)
		}
	}
	if d.redis != nil {
		if err := d.redis.Cleanup(); err != nil {
			d.say("  %v", err)
		}
	}
	if d.pg != nil {
		d.say("stopping PostgreSQL ...")
		var err error
		if d.opts.keep {
			err = d.pg.Stop()
		} else {
			err = d.pg.Cleanup()
		}
		if err != nil {
			d.say("  %v", err)
		}
	}
	if d.dir != "" {
		if d.opts.keep {
			d.say("kept %s (configs, logs, Raft data) and %s (PostgreSQL data, stopped)", d.dir, d.pg.Dir)
		} else if err := os.RemoveAll(d.dir); err != nil {
			d.say("remove %s: %v", d.dir, err)
		}
	}
	if checkErr != nil {
		d.say("\nexactly-once check: %v", checkErr)
		return false
	}
	d.say("\nexactly-once check: %s", outcome)
	if deliveryErr != nil {
		d.say("delivery check: %v", deliveryErr)
		return false
	}
	d.say("delivery check: %s", delivered)
	return outcome.OK() && delivered.OK() && delivered.Missing == 0
}

// deliveryCaughtUp waits until Sidekiq has performed every job (or
// catchUpWait passes) and returns the last check.
func (d *demo) deliveryCaughtUp() (harness.Delivered, error) {
	d.say("waiting up to %s for Sidekiq to perform the last jobs ...", catchUpWait)
	ctx, cancel := context.WithTimeout(context.Background(), catchUpWait)
	defer cancel()
	for {
		performed, err := d.sidekiq.Performed()
		if err != nil {
			return harness.Delivered{}, err
		}
		dl, err := harness.CheckDelivered(ctx, d.tracking, performed)
		if err != nil || dl.Missing == 0 || !dl.OK() {
			return dl, err
		}
		select {
		case <-ctx.Done():
			return dl, nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// catchUp waits until every committed event is processed (or catchUpWait
// passes) and returns the last check.
func (d *demo) catchUp() (harness.Outcome, error) {
	d.say("waiting up to %s for the cursor to process the last events ...", catchUpWait)
	ctx, cancel := context.WithTimeout(context.Background(), catchUpWait)
	defer cancel()
	var (
		o   harness.Outcome
		err error
	)
	for {
		o, err = harness.CheckExactlyOnce(ctx, d.source, d.tracking)
		if err != nil || o.Complete() || !o.OK() {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
			continue
		}
		break
	}
	if err != nil && ctx.Err() != nil && o.SourceEvents > 0 {
		return o, nil // the last successful check
	}
	return o, err
}

// hardExit is the second Ctrl-C: kill everything at once and go.
func (d *demo) hardExit(sig os.Signal) {
	fmt.Fprintf(os.Stderr, "\n%s again: killing the agents and PostgreSQL and exiting now\n", sig)
	d.mu.Lock()
	agents, pg, dir, rs, sk := d.agents, d.pg, d.dir, d.redis, d.sidekiq
	d.mu.Unlock()
	if sk != nil {
		_ = sk.Kill()
		_ = sk.Cleanup()
	}
	if rs != nil {
		_ = rs.Kill()
		_ = rs.Cleanup()
	}
	harness.HardStop(agents, pg, d.opts.keep, dir, d.opts.keep, func(err error) {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
	})
	os.Exit(130)
}

// showLogTails prints the end of each agent's log after a failure.
func (d *demo) showLogTails() {
	harness.ShowLogTails(d.cluster, 10, func(a *devcluster.Agent) string { return a.LogPath })
}

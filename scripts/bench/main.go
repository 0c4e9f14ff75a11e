// Command bench measures geocursor against the figures in the issues and
// prints one JSON document on stdout (progress goes to stderr):
//
//   - drain: a backlog of -events events, three agents vs the same cursor
//     loop in process with coordination turned off ("plain");
//   - lag: commit in the source → job row in the tracking database, under a
//     steady 1,000 events/s;
//   - failover: under 500 events/s, SIGKILL of the lease holder (the time
//     to the next committed job) and of the Raft leader while a follower
//     holds the lease (the longest gap between committed jobs);
//   - delivery: agents delivering to Sidekiq's Redis drain the backlog
//     again into a fresh tracking database (push rate beside drain rate),
//     then the lag from the source commit to the perform in a real Sidekiq;
//   - gaps: a backlog with 10,000 open gaps beside the same backlog
//     without, each drained by fresh agents: the rate, the advance
//     entries' size in the Raft log and their Raft cost;
//   - flat: a -flat-events backlog (10M) drained by fresh agents: the
//     rate, RSS, Raft directory and tracking database size of each tenth;
//   - the Raft cost per batch (from the agents' debug logs) and the peak RSS
//     of each agent; an exactly-once check at the end.
//
// Everything runs on this machine: one durable PostgreSQL, three agents on
// loopback, with TLS and tokens as in production (-security plain runs
// them without; -security both runs every part without, then with, each
// on a fresh tracking database, and reports both side by side).
//
//	scripts/bench.sh                                   # everything, ~12 min
//	scripts/bench.sh -only drain -events 200000
//	scripts/bench.sh -only failover -failover-runs 5
//	scripts/bench.sh -security both                    # TLS+tokens vs plain
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/internal/devcluster"
	"github.com/geocursor/geocursor/internal/pgserver"
	"github.com/geocursor/geocursor/scripts/internal/harness"
)

// exitFailure is the exit status of a failed run; a usage error exits with
// harness.ExitUsage.
const exitFailure = 1

var allParts = []string{"drain", "lag", "failover", "delivery", "gaps", "flat", "strangers"}

// The cluster's security: TLS and tokens, or neither.
const (
	securityTLS   = "tls"
	securityPlain = "plain"
)

type options struct {
	parts        []string
	events       int
	failoverRuns int
	lagRate      float64
	lagFor       time.Duration
	failoverRate float64
	flatEvents   int
	keep         bool
	// securities are the variants to run, in order.
	securities []string
}

func (o options) has(part string) bool { return slices.Contains(o.parts, part) }

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	opts, err := parseFlags(args)
	if code, done := harness.FlagsDone("bench", os.Stderr, err); done {
		return code
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b := &bench{opts: opts, started: time.Now(), rss: map[string]int64{}}
	b.report.Command = strings.TrimSpace("scripts/bench.sh " + strings.Join(args, " "))
	warning := harness.HandleSignals(func(sig os.Signal) {
		b.logf("%s: stopping; the figures so far are printed (signal again to exit at once)", sig)
		cancel()
	}, b.hardExit)
	if warning != nil {
		b.logf("warning: %v", warning)
	}

	err = b.run(ctx)
	if err != nil {
		b.report.Errors = append(b.report.Errors, err.Error())
		b.logf("error: %v", err)
		b.showLogTails()
	}
	b.tearDown()
	b.finish()
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(b.report); err != nil {
		fmt.Fprintf(os.Stderr, "bench: encode the report: %v\n", err)
		return exitFailure
	}
	if err != nil || len(b.report.Errors) > 0 {
		return exitFailure
	}
	return 0
}

func parseFlags(args []string) (options, error) {
	o := options{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	only := fs.String("only", strings.Join(allParts, ","), "comma-separated parts to run: drain, lag, failover, delivery, gaps, flat, strangers")
	fs.IntVar(&o.events, "events", 1_000_000, "backlog size for the drain")
	fs.IntVar(&o.failoverRuns, "failover-runs", 20, "failover runs of each kind (holder SIGKILL / leader SIGKILL)")
	fs.Float64Var(&o.lagRate, "lag-rate", 1000, "events per second during the lag measurement")
	fs.DurationVar(&o.lagFor, "lag-duration", 30*time.Second, "how long the lag measurement writes")
	fs.Float64Var(&o.failoverRate, "failover-rate", 500, "events per second during the failover runs")
	fs.IntVar(&o.flatEvents, "flat-events", 10_000_000, "backlog size for the flat-over-time drain")
	fs.BoolVar(&o.keep, "keep", false, "keep the work directory (configs, agent logs, Raft data)")
	security := fs.String("security", securityTLS, "the agents' security: tls (TLS and tokens), plain, or both (plain, then tls, side by side)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: scripts/bench.sh [flags]   (JSON on stdout, progress on stderr)\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (flags start with -)", fs.Arg(0))
	}
	switch *security {
	case securityTLS, securityPlain:
		o.securities = []string{*security}
	case "both":
		o.securities = []string{securityPlain, securityTLS}
	default:
		return o, fmt.Errorf("-security %q is not tls, plain or both", *security)
	}
	for _, p := range strings.Split(*only, ",") {
		p = strings.TrimSpace(p)
		if !slices.Contains(allParts, p) {
			return o, fmt.Errorf("-only: unknown part %q (the parts are %s)", p, strings.Join(allParts, ", "))
		}
		if !slices.Contains(o.parts, p) {
			o.parts = append(o.parts, p)
		}
	}
	switch {
	case o.events < 1:
		return o, fmt.Errorf("-events must be positive, got %d", o.events)
	case o.flatEvents < 10*flatChunks:
		return o, fmt.Errorf("-flat-events must be at least %d, got %d", 10*flatChunks, o.flatEvents)
	case o.failoverRuns < 1:
		return o, fmt.Errorf("-failover-runs must be positive, got %d", o.failoverRuns)
	case o.lagRate <= 0 || o.failoverRate <= 0:
		return o, errors.New("-lag-rate and -failover-rate must be positive")
	case o.lagFor <= 0:
		return o, fmt.Errorf("-lag-duration must be positive, got %s", o.lagFor)
	}
	return o, nil
}

// bench is one run: what it started and what it measured.
type bench struct {
	opts    options
	started time.Time
	report  report

	dir         string
	binary      string
	pg          *pgserver.Server
	sourceDSN   string
	trackingDSN string
	source      *pgxpool.Pool
	tracking    *pgxpool.Pool
	cluster     *devcluster.Cluster
	// extraHCL and extraEnv are added to the agents' configuration and
	// environment (the delivery part's delivery block).
	extraHCL string
	extraEnv []string
	// security is the variant running now; secure its CA and tokens.
	security string
	secure   *devcluster.Security

	// mu guards what the hard exit reads while the run may be changing it.
	mu     sync.Mutex
	agents []*devcluster.Agent

	rss map[string]int64 // peak VmHWM per node ID over all its processes
}

func (b *bench) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench %5.0fs: %s\n", time.Since(b.started).Seconds(), fmt.Sprintf(format, args...))
}

func (b *bench) run(ctx context.Context) error {
	b.report.Machine = describeMachine()
	b.logf("machine: %d CPUs, %s, load average %s", b.report.Machine.CPUs, b.report.Machine.Go, b.report.Machine.LoadAvgStart)
	if err := b.setUp(ctx); err != nil {
		return err
	}
	b.report.Security = b.opts.securities
	for i, sec := range b.opts.securities {
		if i > 0 {
			if err := b.nextVariant(ctx, sec); err != nil {
				return err
			}
		}
		b.security = sec
		if len(b.opts.securities) > 1 {
			b.report.variant = sec
		}
		b.logf("=== the cluster runs %s", describeSecurity(sec))
		if err := b.runParts(ctx); err != nil {
			return fmt.Errorf("%s: %w", sec, err)
		}
		if len(b.opts.securities) > 1 {
			b.report.stash(sec)
		}
	}
	b.report.compareSecurity(lagPhase(b.opts.lagRate))
	return nil
}

func describeSecurity(sec string) string {
	if sec == securityPlain {
		return "without TLS and tokens"
	}
	return "with TLS and tokens"
}

// runParts runs the chosen parts on the current variant's cluster and
// checks everything it processed.
func (b *bench) runParts(ctx context.Context) error {
	// The gap and flat drains first: they run agents of their own on
	// databases of their own, and the drain needs to start the main
	// cluster itself.
	for _, part := range []struct {
		name string
		run  func(context.Context) error
	}{
		{"gaps", b.gaps}, {"flat", b.flat}, {"drain", b.drain}, {"lag", b.lag}, {"failover", b.failover}, {"delivery", b.delivery}, {"strangers", b.strangers},
	} {
		if !b.opts.has(part.name) {
			continue
		}
		if err := part.run(ctx); err != nil {
			return fmt.Errorf("%s: %w", part.name, err)
		}
	}
	return b.finalCheck(ctx)
}

// nextVariant stops the last variant's cluster and gives the next one a
// fresh tracking database, so that it drains the same source from the
// start.
func (b *bench) nextVariant(ctx context.Context, sec string) error {
	b.sampleRSS()
	if err := b.cluster.Close(); err != nil {
		b.logf("stop the agents: %v", err)
	}
	b.cluster = nil
	dsn, err := b.pg.CreateDatabase(ctx, "tracking_"+sec)
	if err != nil {
		return err
	}
	pool, err := harness.OpenPool(ctx, dsn, 4)
	if err != nil {
		return err
	}
	b.tracking.Close()
	b.trackingDSN, b.tracking = dsn, pool
	return nil
}

// setUp starts PostgreSQL (durable settings, as in production), creates
// the source and tracking databases and builds the binary.
func (b *bench) setUp(ctx context.Context) error {
	pg, err := pgserver.Start(ctx, pgserver.Options{CommitTimestamps: true})
	b.mu.Lock()
	b.pg = pg
	b.mu.Unlock()
	if err != nil {
		return fmt.Errorf("start PostgreSQL: %w", err)
	}
	b.report.Machine.Postgres = harness.PGVersion(ctx, pg)
	b.report.Config.Durable = true
	b.logf("PostgreSQL %s on 127.0.0.1:%d, durable settings (fsync on)", b.report.Machine.Postgres, pg.Port)
	dbs, err := harness.CreateDatabases(ctx, pg, 16, 4)
	b.sourceDSN, b.trackingDSN, b.source, b.tracking = dbs.SourceDSN, dbs.TrackingDSN, dbs.Source, dbs.Tracking
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "geocursor-bench-")
	if err != nil {
		return fmt.Errorf("create the work directory: %w", err)
	}
	b.mu.Lock()
	b.dir = dir
	b.mu.Unlock()
	b.logf("building geocursor into %s", dir)
	b.binary, err = devcluster.Build(ctx, dir)
	return err
}

// startCluster starts the three agents on the source and the tracking
// database, with debug logs (for the Raft cost per batch) and batches of
// 1,000 events, and waits until each reaches both databases.
func (b *bench) startCluster(ctx context.Context) error {
	if b.cluster != nil {
		return nil
	}
	if b.security == securityTLS && b.secure == nil {
		sec, err := devcluster.NewSecurity(filepath.Join(b.dir, "tls"))
		if err != nil {
			return err
		}
		b.secure = sec
	}
	var security *devcluster.Security
	if b.security == securityTLS {
		security = b.secure
	}
	dir, err := os.MkdirTemp(b.dir, b.security+"-")
	if err != nil {
		return err
	}
	b.cluster = &devcluster.Cluster{
		Binary: b.binary, Dir: dir, Supervised: true, Security: security,
		OnAgent: func(a *devcluster.Agent) {
			b.mu.Lock()
			b.agents = append(b.agents, a)
			b.mu.Unlock()
		},
	}
	b.report.Config.AgentHCL = harness.AgentHCL("debug", batchSize)
	env := append(harness.AgentEnv(b.sourceDSN, b.trackingDSN), b.extraEnv...)
	if err := b.cluster.Start(ctx, 3, b.report.Config.AgentHCL+b.extraHCL, env); err != nil {
		return fmt.Errorf("start the agents: %w", err)
	}
	for _, a := range b.cluster.Agents {
		b.logf("%s: pid %d, http %s, raft %s", a.ID, a.Pid(), a.HTTPAddr, a.RaftAddr)
	}
	return b.waitWhole(ctx)
}

// batchSize is the agents' source.batch_size, and the plain loop's.
const batchSize = 1000

// waitWhole waits until every agent runs, all agree on a leader, see each
// other reachable, and reach both databases.
func (b *bench) waitWhole(ctx context.Context) error {
	if err := b.cluster.WaitFormed(ctx, 60*time.Second); err != nil {
		return err
	}
	return devcluster.WaitFor(ctx, 60*time.Second, "every agent to reach both databases", func() (bool, string, error) {
		for _, a := range b.cluster.Agents {
			sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			st, err := a.Status(sctx)
			cancel()
			if err != nil {
				return false, err.Error(), nil
			}
			if st.Databases == nil || st.Databases.Source != "ok" || st.Databases.Tracking != "ok" {
				return false, fmt.Sprintf("%s: databases %+v", a.ID, st.Databases), nil
			}
		}
		return true, "", nil
	})
}

// sampleRSS records the peak RSS of every running agent.
func (b *bench) sampleRSS(agents ...*devcluster.Agent) {
	if len(agents) == 0 && b.cluster != nil {
		agents = b.cluster.Live()
	}
	for _, a := range agents {
		if v, err := a.PeakRSS(); err == nil && v > b.rss[a.ID] {
			b.rss[a.ID] = v
		}
	}
}

// waitCaughtUp waits until the tracking database's fence is at the source
// head, then until every source event has its row. The first wait is two
// index probes per poll; the full check reads every ID, so it runs only
// once the fence says it should pass.
func (b *bench) waitCaughtUp(ctx context.Context, timeout time.Duration) (harness.Outcome, error) {
	deadline := time.Now().Add(timeout)
	err := devcluster.WaitEvery(ctx, timeout, 50*time.Millisecond, "the fence to reach the source head", func() (bool, string, error) {
		head, err := harness.SourceHead(ctx, b.source)
		if err != nil {
			return false, err.Error(), nil
		}
		f, err := harness.ReadFence(ctx, b.tracking)
		if err != nil {
			return false, err.Error(), nil
		}
		// Open gaps may be IDs of aborted transactions, which stay open
		// until source.gap_timeout: the full check below tells.
		return f.LastEventID >= head, fmt.Sprintf("fence at %d with %d open gaps, source head %d", f.LastEventID, len(f.Gaps), head), nil
	})
	if err != nil {
		return harness.Outcome{}, err
	}
	var o harness.Outcome
	err = devcluster.WaitEvery(ctx, max(time.Until(deadline), time.Second), 500*time.Millisecond, "the cursor to process every source event", func() (bool, string, error) {
		var err error
		o, err = harness.CheckExactlyOnce(ctx, b.source, b.tracking)
		if err != nil {
			return false, err.Error(), nil
		}
		if !o.OK() {
			return false, "", fmt.Errorf("exactly-once check failed: %s", o)
		}
		return o.Complete(), o.String(), nil
	})
	return o, err
}

// finalCheck compares the whole source with the whole tracking database
// once every run is over.
func (b *bench) finalCheck(ctx context.Context) error {
	if b.cluster == nil {
		return nil
	}
	b.logf("exactly-once check of everything the agents processed ...")
	o, err := b.waitCaughtUp(ctx, 2*time.Minute)
	b.report.ExactlyOnce = &o
	if err != nil {
		return err
	}
	b.logf("exactly-once: %s", o)
	return nil
}

// tearDown stops the agents (recording their peak RSS just before),
// PostgreSQL, and removes the work directory unless -keep.
func (b *bench) tearDown() {
	if b.cluster != nil {
		b.sampleRSS()
		if err := b.cluster.Close(); err != nil {
			b.logf("stop the agents: %v", err)
		}
	}
	harness.ClosePools(b.source, b.tracking)
	if b.pg != nil {
		if err := b.pg.Cleanup(); err != nil {
			b.logf("stop PostgreSQL: %v", err)
		}
	}
	if b.dir != "" {
		if b.opts.keep {
			b.logf("kept %s", b.dir)
		} else if err := os.RemoveAll(b.dir); err != nil {
			b.logf("remove %s: %v", b.dir, err)
		}
	}
}

// hardExit is the second signal: kill everything and go.
func (b *bench) hardExit(sig os.Signal) {
	b.logf("%s again: killing the agents and PostgreSQL and exiting now", sig)
	b.mu.Lock()
	agents, pg, dir := b.agents, b.pg, b.dir
	b.mu.Unlock()
	harness.HardStop(agents, pg, false, dir, b.opts.keep, func(err error) { b.logf("%v", err) })
	os.Exit(130)
}

func (b *bench) showLogTails() {
	harness.ShowLogTails(b.cluster, 8, func(a *devcluster.Agent) string { return a.ID })
}

// finish fills in what is known only at the end.
func (b *bench) finish() {
	r := &b.report
	r.ElapsedS = round(time.Since(b.started).Seconds())
	r.Machine.LoadAvgEnd = loadAvg()
	if len(b.rss) > 0 {
		r.PeakRSSMB = map[string]float64{}
		for id, v := range b.rss {
			r.PeakRSSMB[id] = round(float64(v) / (1 << 20))
		}
	}
	if r.ExactlyOnce != nil {
		r.check("exactly once after every run: lost + doubled + unknown", float64(r.ExactlyOnce.Lost+r.ExactlyOnce.Doubled+r.ExactlyOnce.Unknown), "== 0", r.ExactlyOnce.OK())
	}
	r.TargetsMet = true
	for _, t := range r.Targets {
		r.TargetsMet = r.TargetsMet && t.Met
	}
	b.logf("summary (figure, value, target):")
	for _, t := range r.Targets {
		verdict := "met"
		if !t.Met {
			verdict = "MISSED"
		}
		fmt.Fprintf(os.Stderr, "    %-62s %12.3f  %-10s %s\n", t.Figure, t.Value, t.Target, verdict)
	}
	for id, v := range r.PeakRSSMB {
		fmt.Fprintf(os.Stderr, "    peak RSS %-53s %12.1f MB\n", id, v)
	}
}

// describeMachine says what the figures were measured on.
func describeMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), LoadAvgStart: loadAvg()}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		m.MemTotal = strings.Join(strings.Fields(strings.TrimPrefix(line, "MemTotal:")), " ")
	}
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// Command soak runs a geocursor group under a random schedule of faults
// for a while, against a steady load, then checks everything and prints a
// one-screen summary: faults by kind, failovers and how long processing
// took to resume, events processed, lost and doubled, and the verdict of
// the linearizability check.
//
//	sudo go run ./scripts/soak -duration 10m
//	sudo go run ./scripts/soak -duration 2m -nemeses kill-holder,partition-leader -seed 7
//
// It needs root, iproute2 and PostgreSQL's server binaries (see
// internal/chaos). Exit status 0 when every check passed, 1 on a violation
// or a runtime failure, 2 on a usage error. Files (agent logs, histories,
// report.json, and history.html when the check fails) stay in -out.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/geocursor/geocursor/internal/chaos"
	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/scripts/internal/harness"
)

// exitRuntime is the exit status of a violation or a runtime failure; a
// usage error exits with harness.ExitUsage.
const exitRuntime = 1

type options struct {
	duration time.Duration
	peers    int
	rate     float64
	seed     uint64
	out      string
	kinds    []chaos.Kind
	ttl      time.Duration
	verbose  bool
	keep     bool
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if code, done := harness.FlagsDone("soak", stderr, err); done {
		return code
	}
	if err := chaos.Available(); err != nil {
		fmt.Fprintf(stderr, "soak: %v\n", err)
		return exitRuntime
	}
	// The first SIGINT/SIGTERM ends the schedule early and still checks;
	// a second one aborts.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	logf := func(format string, args ...any) {
		if opts.verbose {
			fmt.Fprintf(stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05.000")}, args...)...)
		}
	}
	progress := func(format string, args ...any) {
		fmt.Fprintf(stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	load := chaos.DefaultLoad
	load.Rate = opts.rate
	progress("soak: starting %d peers, load %.0f events/s, seed %d, files in %s", opts.peers, opts.rate, opts.seed, opts.out)
	setupCtx, cancelSetup := context.WithTimeout(ctx, 5*time.Minute)
	c, err := chaos.Start(setupCtx, chaos.Options{
		Name: "soak", Dir: opts.out, Peers: opts.peers, LeaseTTL: opts.ttl,
		Load: load, Seed: opts.seed, Logf: logf,
		OnFault: func(f chaos.Fault) {
			if f.Err != "" {
				progress("soak: %-16s %-4s FAILED: %s", f.Kind, orAll(f.Target), f.Err)
				return
			}
			progress("soak: %-16s %-4s down %s, recovered %s after heal", f.Kind, orAll(f.Target),
				f.Healed.Sub(f.Start).Round(time.Millisecond), f.Recovered.Sub(f.Healed).Round(time.Millisecond))
		},
	})
	cancelSetup()
	if err != nil {
		fmt.Fprintf(stderr, "soak: %v\n", err)
		return exitRuntime
	}
	passed := false
	defer func() {
		if err := c.Close(); err != nil {
			fmt.Fprintf(stderr, "soak: clean up: %v\n", err)
		}
		// A passing run's agents' data, logs and binary come to some
		// 250 MB; only its report is worth keeping.
		if passed && !opts.keep {
			if err := chaos.KeepOnly(opts.out, "report.json"); err != nil {
				fmt.Fprintf(stderr, "soak: clean up %s: %v\n", opts.out, err)
			}
		}
	}()

	began := time.Now()
	until := began.Add(opts.duration)
	progress("soak: injecting random faults (%s) until %s", kindList(opts.kinds), until.Format("15:04:05"))
	_ = c.Settle(ctx, 3*time.Second)
	if err := c.Schedule(ctx, until, opts.kinds...); err != nil && ctx.Err() == nil {
		progress("soak: schedule: %v", err)
	}
	if ctx.Err() != nil {
		progress("soak: interrupted; healing and checking what ran (signal again to abort)")
		stop()
	}

	progress("soak: healing, draining and checking")
	finishCtx, cancelFinish := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancelFinish()
	rep, err := c.Finish(finishCtx)
	if err != nil {
		fmt.Fprintf(stderr, "soak: check: %v\n", err)
		return exitRuntime
	}
	printSummary(stdout, rep, opts, time.Since(began), c.Net.Mode)
	if !rep.OK() {
		return exitRuntime
	}
	passed = true
	return 0
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	var kinds string
	fs.DurationVar(&o.duration, "duration", 10*time.Minute, "how long to inject faults")
	fs.IntVar(&o.peers, "peers", 3, "number of geocursor agents")
	fs.Float64Var(&o.rate, "rate", chaos.DefaultLoad.Rate, "source events per second written by the load generator")
	fs.Uint64Var(&o.seed, "seed", 0, "seed for the choice of faults and targets (0: random)")
	fs.StringVar(&o.out, "out", "", "directory for logs, histories and the report (default: a new geocursor-soak-* under $TMPDIR)")
	fs.StringVar(&kinds, "nemeses", "", "comma-separated nemeses to draw from (default: all): "+kindList(chaos.Kinds))
	fs.DurationVar(&o.ttl, "lease-ttl", 2*time.Second, "the agents' lease.ttl")
	fs.BoolVar(&o.verbose, "v", false, "log every step of the harness")
	fs.BoolVar(&o.keep, "keep", false, "keep every file of a run that passes, not only report.json (a failed run keeps everything)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: soak [-duration 10m] [-nemeses a,b] [-seed N] [-out DIR] [-rate N] [-peers N] [-lease-ttl D] [-keep] [-v]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if o.duration <= 0 {
		return o, fmt.Errorf("-duration must be positive, got %s", o.duration)
	}
	if o.peers < 3 {
		return o, fmt.Errorf("-peers must be at least 3 (a majority must survive one fault), got %d", o.peers)
	}
	if o.rate <= 0 {
		return o, fmt.Errorf("-rate must be positive, got %v", o.rate)
	}
	if err := (loadgen.Config{Rate: o.rate}).Validate(); err != nil {
		return o, fmt.Errorf("-rate: %v", err)
	}
	if o.ttl < 500*time.Millisecond {
		return o, fmt.Errorf("-lease-ttl must be at least 500ms, got %s", o.ttl)
	}
	if kinds != "" {
		for _, s := range strings.Split(kinds, ",") {
			k, err := chaos.ParseKind(strings.TrimSpace(s))
			if err != nil {
				return o, fmt.Errorf("-nemeses: %v", err)
			}
			o.kinds = append(o.kinds, k)
		}
	}
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano())
	}
	if o.out == "" {
		dir, err := os.MkdirTemp("", "geocursor-soak-"+time.Now().Format("20060102-150405")+"-")
		if err != nil {
			return o, fmt.Errorf("create the output directory: %v", err)
		}
		o.out = dir
	}
	o.out, _ = filepath.Abs(o.out)
	return o, nil
}

// printSummary prints the one-screen result.
func printSummary(w io.Writer, r *chaos.Report, o options, took time.Duration, mode string) {
	fmt.Fprintf(w, "\ngeocursor soak: %s of faults (%s in all), %d peers, seed %d, partitions by %s\n",
		o.duration, took.Round(time.Second), o.peers, o.seed, mode)

	type agg struct {
		n, failed int
		resume    []time.Duration
		stall     []time.Duration
		down      []time.Duration
	}
	byKind := map[chaos.Kind]*agg{}
	var failovers []time.Duration
	for _, f := range r.Faults {
		a := byKind[f.Kind]
		if a == nil {
			a = &agg{}
			byKind[f.Kind] = a
		}
		a.n++
		if f.Err != "" {
			a.failed++
		}
		if f.Resume > 0 {
			a.resume = append(a.resume, f.Resume)
		}
		if f.Stall > 0 {
			a.stall = append(a.stall, f.Stall)
		}
		a.down = append(a.down, f.Healed.Sub(f.Start))
		if f.DisablesHolder() && f.ResumedBy != "" && f.ResumedBy != f.Holder {
			failovers = append(failovers, f.Resume)
		}
	}
	fmt.Fprintf(w, "\nfaults injected: %d\n", len(r.Faults))
	fmt.Fprintf(w, "  %-17s %3s %4s  %-26s  %-26s\n", "kind", "n", "err", "resume min/median/max", "stall min/median/max")
	kinds := make([]string, 0, len(byKind))
	for k := range byKind {
		kinds = append(kinds, string(k))
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		a := byKind[chaos.Kind(k)]
		fmt.Fprintf(w, "  %-17s %3d %4d  %-26s  %-26s\n", k, a.n, a.failed, mmm(a.resume), mmm(a.stall))
	}
	fmt.Fprintf(w, "failovers (holder disabled, another peer took over): %d, fault to next batch committed %s\n", len(failovers), mmm(failovers))
	fmt.Fprintf(w, "  (resume: fault to the next batch committed by a peer the fault left working; stall: longest time without a committed batch until recovered)\n")

	fmt.Fprintf(w, "\nevents: %d committed in the source (%d rolled back), %d processed; lost %d, doubled %d, phantom %d; cursor %d, source head %d\n",
		r.SourceEvents, r.Load.RolledBack, r.Processed, len(r.Lost), len(r.Doubled), len(r.Phantom), r.Cursor, r.Head)
	fmt.Fprintf(w, "history: %d recorded commands, %d in the raft log; %s\n", r.HistoryEntries, r.RaftCommands, r.Reconciliation)
	fmt.Fprintf(w, "linearizability: %s\n", r.CheckInfo)
	if len(r.Safety) == 0 {
		fmt.Fprintf(w, "lease safety: no token reused or reordered, no overlapping grants\n")
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(w, "VIOLATION: %s\n", p)
	}
	if r.OK() && !o.keep {
		fmt.Fprintf(w, "files: %s (report.json only; -keep keeps everything)\n", r.Dir)
	} else {
		fmt.Fprintf(w, "files: %s\n", r.Dir)
	}
	if r.Visualization != "" {
		fmt.Fprintf(w, "history visualization: %s\n", r.Visualization)
	}
	if r.OK() {
		fmt.Fprintf(w, "RESULT: PASS\n")
	} else {
		fmt.Fprintf(w, "RESULT: FAIL (%d violations)\n", len(r.Problems))
	}
}

// mmm formats min/median/max.
func mmm(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	r := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	return r(s[0]) + " / " + r(s[len(s)/2]) + " / " + r(s[len(s)-1])
}

func kindList(ks []chaos.Kind) string {
	if len(ks) == 0 {
		return "all nemeses"
	}
	var s []string
	for _, k := range ks {
		s = append(s, string(k))
	}
	return strings.Join(s, ",")
}

func orAll(s string) string {
	if s == "" {
		return "all"
	}
	return s
}

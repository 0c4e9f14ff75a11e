// Command loadgen writes GitLab Geo events into a source database the way
// GitLab's primary does, to drive geocursor in demos and benchmarks.
//
//	go run ./scripts/loadgen -dsn postgres://... -create-schema -writers 8 -rate 500 -rollback 0.01
//	go run ./scripts/loadgen -create-schema -bulk 1000000
//
// It prints a one-line JSON summary when it stops (after -total events, or
// on SIGINT/SIGTERM).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/scripts/internal/harness"
)

// Exit statuses, as for geocursor itself (design.md section 3).
const (
	exitRuntime = 1
	exitUsage   = harness.ExitUsage
)

// options are the parsed command line.
type options struct {
	dsn          string
	createSchema bool
	bulk         int
	cfg          loadgen.Config
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	opts, err := parseFlags(args, stderr)
	if code, done := harness.FlagsDone("loadgen", stderr, err); done {
		return code
	}
	poolCfg, err := pgxpool.ParseConfig(opts.dsn)
	if err != nil {
		fmt.Fprintf(stderr, "loadgen: -dsn is not a valid PostgreSQL connection string: %s\n", oneLine(err))
		return exitUsage
	}
	// One connection per writer, so that held transactions do not stall
	// the others, plus one for schema and bulk work.
	poolCfg.MaxConns = int32(max(opts.cfg.Writers, 1) + 1)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	summary, err := execute(ctx, poolCfg, opts)
	if err != nil {
		fmt.Fprintf(stderr, "loadgen: %s\n", oneLine(err))
		return exitRuntime
	}
	line, err := json.Marshal(summary)
	if err != nil {
		fmt.Fprintf(stderr, "loadgen: encode summary: %v\n", err)
		return exitRuntime
	}
	fmt.Fprintln(stdout, string(line))
	return 0
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	// The flag package would print the whole usage on any mistake; we
	// print one line that names the mistake, and the usage only for -h.
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.dsn, "dsn", os.Getenv("GEOCURSOR_SOURCE_DSN"), "source database DSN (default $GEOCURSOR_SOURCE_DSN)")
	fs.BoolVar(&o.createSchema, "create-schema", false, "create the source tables if they do not exist")
	fs.IntVar(&o.bulk, "bulk", 0, "bulk-load this many events in one transaction, then exit")
	fs.IntVar(&o.cfg.Writers, "writers", 4, "concurrent writers (commit order then differs from ID order)")
	fs.Float64Var(&o.cfg.Rate, "rate", 0, "transactions per second across writers; 0 = as fast as possible")
	fs.IntVar(&o.cfg.Total, "total", 0, "stop after this many committed events; 0 = until interrupted")
	fs.Float64Var(&o.cfg.RollbackFraction, "rollback", 0, "fraction of transactions rolled back (permanent ID gaps)")
	fs.Float64Var(&o.cfg.HoldFraction, "hold", 0, "fraction of transactions held open for -hold-for before commit")
	fs.DurationVar(&o.cfg.HoldFor, "hold-for", time.Second, "how long held transactions stay open")
	fs.Float64Var(&o.cfg.BadFraction, "bad", 0, "fraction of deliberately malformed events")
	fs.Float64Var(&o.cfg.CacheInvalidationFraction, "cache", 0.05, "fraction of cache invalidation events")
	fs.IntVar(&o.cfg.Records, "records", loadgen.DefaultRecords, "model_record_id key space")
	fs.Int64Var(&o.cfg.Seed, "seed", 1, "random seed")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fmt.Fprintln(stderr, "Usage: loadgen [flags]")
			fs.PrintDefaults()
			return o, err
		}
		return o, fmt.Errorf("%w (see -h)", err)
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q: all settings are flags (see -h)", fs.Arg(0))
	}
	if o.dsn == "" {
		return o, errors.New("no source database: set -dsn or GEOCURSOR_SOURCE_DSN")
	}
	if o.bulk < 0 {
		return o, fmt.Errorf("-bulk must not be negative (0 writes no backlog), got %d", o.bulk)
	}
	if o.cfg.Writers < 1 {
		return o, fmt.Errorf("-writers must be at least 1, got %d", o.cfg.Writers)
	}
	if o.cfg.Records < 1 {
		return o, fmt.Errorf("-records must be at least 1, got %d", o.cfg.Records)
	}
	if err := o.cfg.Validate(); err != nil {
		return o, fmt.Errorf("invalid flags: %w", err)
	}
	return o, nil
}

// runSummary is the one-line JSON report of a run.
type runSummary struct {
	Mode string `json:"mode"` // "run"
	loadgen.Stats
	ElapsedMS    int64   `json:"elapsed_ms"`
	EventsPerSec float64 `json:"events_per_sec"`
	Interrupted  bool    `json:"interrupted"`
}

// bulkSummary is the one-line JSON report of a bulk load.
type bulkSummary struct {
	Mode         string  `json:"mode"` // "bulk"
	Committed    int64   `json:"committed"`
	ElapsedMS    int64   `json:"elapsed_ms"`
	EventsPerSec float64 `json:"events_per_sec"`
}

func execute(ctx context.Context, poolCfg *pgxpool.Config, o options) (any, error) {
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return nil, fmt.Errorf("connect to source database: %w", err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return nil, fmt.Errorf("connect to source database (check -dsn and that the server runs): %w", err)
	}
	if o.createSchema {
		if err := loadgen.CreateSourceSchema(ctx, pool); err != nil {
			return nil, err
		}
	}

	start := time.Now()
	if o.bulk > 0 {
		if err := loadgen.BulkLoad(ctx, pool, o.bulk, o.cfg.Seed); err != nil {
			return nil, withSchemaHint(err)
		}
		elapsed := time.Since(start)
		return bulkSummary{
			Mode:         "bulk",
			Committed:    int64(o.bulk),
			ElapsedMS:    elapsed.Milliseconds(),
			EventsPerSec: float64(o.bulk) / elapsed.Seconds(),
		}, nil
	}

	stats, err := loadgen.Run(ctx, pool, o.cfg)
	err = withSchemaHint(err)
	interrupted := ctx.Err() != nil
	// Being interrupted is how an unbounded run ends; it is not a failure.
	if err != nil && !(interrupted && errors.Is(err, context.Canceled)) {
		return nil, fmt.Errorf("%w (committed %d events before the failure)", err, stats.Committed)
	}
	s := runSummary{
		Mode:        "run",
		Stats:       stats,
		ElapsedMS:   stats.Elapsed.Milliseconds(),
		Interrupted: interrupted,
	}
	if secs := stats.Elapsed.Seconds(); secs > 0 {
		s.EventsPerSec = float64(stats.Committed) / secs
	}
	return s, nil
}

// undefinedTable is PostgreSQL's SQLSTATE for a missing relation.
const undefinedTable = "42P01"

// withSchemaHint tells the user how to fix the most likely first-run
// mistake: pointing the generator at a database without the source tables.
func withSchemaHint(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == undefinedTable {
		return fmt.Errorf("%w (add -create-schema to create the source tables)", err)
	}
	return err
}

// oneLine flattens an error for the single stderr line the exit contract
// promises; pgx puts one line per connection attempt in its errors.
func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}

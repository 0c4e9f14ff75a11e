package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/geocursor/geocursor/internal/pgserver"
	"github.com/geocursor/geocursor/internal/testsupport"
)

// Environment of the tests.
const (
	// envRuns repeats each nemesis scenario N times (default 1), for
	// failover figures.
	envRuns = "CHAOS_RUNS"
	// envOut is where runs keep their files (default os.TempDir()).
	envOut = "GEOCURSOR_CHAOS_OUT"
	// envKeep=1 keeps the files of passing runs too.
	envKeep = "GEOCURSOR_CHAOS_KEEP"
)

// faultsPerScenario is sized so that the package runs in about five
// minutes on two cores.
const faultsPerScenario = 3

// shared holds what all tests use: two PostgreSQL servers (source and
// tracking; each run creates its own databases) and the agent binary.
var shared struct {
	once     sync.Once
	err      error
	src, trk *pgserver.Server
	bin      string
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, s := range []*pgserver.Server{shared.src, shared.trk} {
		if s != nil && s.Cleanup() == nil {
			UntrackServer(s)
		}
	}
	if err := testsupport.RemoveBinary(); err != nil {
		fmt.Fprintf(os.Stderr, "remove the agent binary: %v\n", err)
	}
	os.Exit(code)
}

// setup skips the test where the harness cannot run and returns the
// shared servers and binary.
func setup(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("chaos tests skipped in -short mode")
	}
	if err := Available(); err != nil {
		t.Skipf("chaos tests skipped: %v", err)
	}
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		// Servers left by a test process that was killed go first.
		if err := Sweep(ctx, t.Logf); err != nil {
			t.Logf("sweep of leftovers: %v", err)
		}
		if shared.src, shared.err = pgserver.Start(ctx, pgserver.Options{Fast: true}); shared.err != nil {
			return
		}
		if shared.err = TrackServer(shared.src); shared.err != nil {
			return
		}
		// The tracking server is crashed by restart-db: keep it durable.
		if shared.trk, shared.err = pgserver.Start(ctx, pgserver.Options{}); shared.err != nil {
			return
		}
		shared.err = TrackServer(shared.trk)
	})
	if errors.Is(shared.err, pgserver.ErrNotInstalled) {
		t.Skipf("chaos tests skipped: %v", shared.err)
	}
	if shared.err != nil {
		t.Fatalf("set up the chaos tests: %v", shared.err)
	}
	shared.bin = testsupport.BuildBinary(t)
}

func TestNemesisKillPeer(t *testing.T)        { runNemesis(t, KillPeer) }
func TestNemesisKillLeader(t *testing.T)      { runNemesis(t, KillLeader) }
func TestNemesisKillHolder(t *testing.T)      { runNemesis(t, KillHolder) }
func TestNemesisPauseHolder(t *testing.T)     { runNemesis(t, PauseHolder) }
func TestNemesisPauseLeader(t *testing.T)     { runNemesis(t, PauseLeader) }
func TestNemesisPartitionHolder(t *testing.T) { runNemesis(t, PartitionHolder) }
func TestNemesisPartitionLeader(t *testing.T) { runNemesis(t, PartitionLeader) }
func TestNemesisPartitionDB(t *testing.T)     { runNemesis(t, PartitionDB) }
func TestNemesisMajorityLoss(t *testing.T)    { runNemesis(t, MajorityLoss) }
func TestNemesisRestartDB(t *testing.T)       { runNemesis(t, RestartDB) }
func TestNemesisWipePeer(t *testing.T)        { runNemesis(t, WipePeer) }

// runNemesis runs CHAOS_RUNS scenarios of kind: a fresh group under load,
// a few faults of that kind, then the full check.
func runNemesis(t *testing.T, kind Kind) {
	setup(t)
	runs := 1
	if s := os.Getenv(envRuns); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s must be a positive number, got %q", envRuns, s)
		}
		runs = n
	}
	base := filepath.Join(outBase(), "geocursor-chaos-"+t.Name())
	if err := os.RemoveAll(base); err != nil {
		t.Fatal(err)
	}
	var resumes, stalls []time.Duration
	failed, lost, doubled, linearizable := 0, 0, 0, 0
	for i := 1; i <= runs; i++ {
		rep := runScenario(t, kind, filepath.Join(base, fmt.Sprintf("run%d", i)), uint64(i))
		if rep == nil {
			failed++
			continue
		}
		if !rep.OK() {
			failed++
		}
		lost += len(rep.Lost)
		doubled += len(rep.Doubled)
		if rep.Linearizable == "linearizable" {
			linearizable++
		}
		for _, f := range rep.Faults {
			if f.Resume > 0 {
				resumes = append(resumes, f.Resume)
			}
			if f.Stall > 0 {
				stalls = append(stalls, f.Stall)
			}
		}
	}
	if runs > 1 {
		t.Logf("%s: %d runs, %d failed; lost %d, doubled %d; %d of %d histories linearizable; resume after fault %s; longest stall %s",
			kind, runs, failed, lost, doubled, linearizable, runs, durationStats(resumes), durationStats(stalls))
	}
}

func runScenario(t *testing.T, kind Kind, dir string, seed uint64) *Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c, err := Start(ctx, Options{
		Name: string(kind), Dir: dir, Binary: shared.bin,
		Source: shared.src, Tracking: shared.trk, Seed: seed,
		Logf: t.Logf,
	})
	if err != nil {
		t.Errorf("%s: start the group: %v (files in %s)", kind, err, dir)
		return nil
	}
	defer func() {
		if err := c.Close(); err != nil {
			t.Errorf("clean up: %v", err)
		}
	}()
	if err := c.Settle(ctx, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	for range faultsPerScenario {
		if _, err := c.Inject(ctx, kind); err != nil {
			break // recorded in the report
		}
		if err := c.Settle(ctx, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := c.Finish(ctx)
	if err != nil {
		t.Errorf("%s: check: %v (files in %s)", kind, err, dir)
		return nil
	}
	t.Log(rep.Summary())
	if !rep.OK() {
		t.Errorf("%s: %d problems:\n  %s\nfiles (logs, histories, raft data, report.json%s) kept in %s",
			kind, len(rep.Problems), strings.Join(rep.Problems, "\n  "), visualized(rep), dir)
		return rep
	}
	if os.Getenv(envKeep) != "1" {
		if err := KeepOnly(dir, "report.json"); err != nil {
			t.Logf("clean up %s: %v", dir, err)
		}
	}
	return rep
}

func visualized(r *Report) string {
	if r.Visualization == "" {
		return ""
	}
	return ", history.html"
}

func outBase() string {
	if d := os.Getenv(envOut); d != "" {
		return d
	}
	return os.TempDir()
}

func durationStats(ds []time.Duration) string {
	if len(ds) == 0 {
		return "none seen"
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return fmt.Sprintf("min %s, median %s, max %s over %d faults",
		ds[0].Round(time.Millisecond), ds[len(ds)/2].Round(time.Millisecond), ds[len(ds)-1].Round(time.Millisecond), len(ds))
}

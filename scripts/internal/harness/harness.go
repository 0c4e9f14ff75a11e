// Package harness is what the scripts share besides the agent processes
// (internal/devcluster): handling flag errors, creating and connecting to
// the two databases, reading the tracking database's fence, the
// exactly-once check of a run, tying the script's life to the terminal
// that started it, and its exit on a second signal.
//
// It only reads the tracking database and never writes the source; the
// load generator (internal/loadgen) does that.
package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/cursor"
	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/internal/pgserver"
)

// Database names used by the demo and the benchmark, as on a Geo site.
const (
	SourceDB   = "gitlabhq_production"
	TrackingDB = "gitlabhq_geo_tracking"
)

// OpenPool connects to dsn with at most maxConns connections.
func OpenPool(ctx context.Context, dsn string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse DSN: %w", err)
	}
	cfg.MaxConns = maxConns
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", cfg.ConnConfig.Database, err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to %s: %w", cfg.ConnConfig.Database, err)
	}
	return pool, nil
}

// AgentHCL is the part of an agent's configuration after its addresses for
// a processing agent whose DSNs come from GEOCURSOR_SOURCE_DSN and
// GEOCURSOR_TRACKING_DSN (see AgentEnv). The scripts check that every
// event in the source was processed, so they start from the oldest.
func AgentHCL(logLevel string, batchSize int) string {
	return fmt.Sprintf(`log_level = %q

source {
  dsn        = env.GEOCURSOR_SOURCE_DSN
  batch_size = %d
  start      = "oldest"
}

tracking {
  dsn = env.GEOCURSOR_TRACKING_DSN
}
`, logLevel, batchSize)
}

// AgentEnv hands the DSNs to the agents, as an operator would.
func AgentEnv(sourceDSN, trackingDSN string) []string {
	return []string{"GEOCURSOR_SOURCE_DSN=" + sourceDSN, "GEOCURSOR_TRACKING_DSN=" + trackingDSN}
}

// Fence is the tracking database's fence row.
type Fence struct {
	Token       int64
	LastEventID int64
	Gaps        []int64
	UpdatedAt   time.Time
}

// ReadFence reads the fence row. Before any agent has opened the tracking
// database there is none: it returns a zero Fence and no error.
func ReadFence(ctx context.Context, tracking *pgxpool.Pool) (Fence, error) {
	var (
		f    Fence
		gaps string
	)
	err := tracking.QueryRow(ctx, `SELECT token, last_event_id, `+cursor.FenceGapsSQL+`, updated_at FROM geocursor_fence WHERE id = 1`).
		Scan(&f.Token, &f.LastEventID, &gaps, &f.UpdatedAt)
	if err != nil {
		if strings.Contains(err.Error(), "does not exist") || strings.Contains(err.Error(), "no rows") {
			return Fence{}, nil
		}
		return Fence{}, fmt.Errorf("read the fence row: %w", err)
	}
	var gs []fsm.Gap
	if err := json.Unmarshal([]byte(gaps), &gs); err != nil {
		return Fence{}, fmt.Errorf("decode the fence row's gaps: %w", err)
	}
	for _, g := range gs {
		f.Gaps = append(f.Gaps, g.ID)
	}
	return f, nil
}

// SourceHead returns the highest committed event ID in the source, 0 if
// there is none.
func SourceHead(ctx context.Context, source *pgxpool.Pool) (int64, error) {
	var head int64
	if err := source.QueryRow(ctx, `SELECT coalesce(max(id), 0) FROM geo_event_log`).Scan(&head); err != nil {
		return 0, fmt.Errorf("read the source head: %w", err)
	}
	return head, nil
}

// KillPostgres ends s at once, for a script that must exit now: it sends
// SIGQUIT (immediate shutdown) to the postmaster named in its pid file,
// and falls back to pg_ctl's immediate stop if there is none.
func KillPostgres(s *pgserver.Server) error {
	// pgserver keeps the data directory in Dir/data.
	b, err := os.ReadFile(filepath.Join(s.Dir, "data", "postmaster.pid"))
	if err == nil {
		first, _, _ := strings.Cut(string(b), "\n")
		if pid, perr := strconv.Atoi(strings.TrimSpace(first)); perr == nil && pid > 0 {
			if err := syscall.Kill(pid, syscall.SIGQUIT); err == nil || errors.Is(err, syscall.ESRCH) {
				return nil
			}
		}
	}
	return s.StopImmediate()
}

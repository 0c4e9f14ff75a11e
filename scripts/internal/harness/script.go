package harness

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/internal/devcluster"
	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/internal/pgserver"
)

// ExitUsage is a script's exit status for a usage error, as for geocursor
// itself.
const ExitUsage = 2

// FlagsDone handles the error of a script's flag parsing. After -h
// (flag.ErrHelp) the script is done with status 0; after another error it
// prints "name: error" on stderr and is done with ExitUsage. With no error
// it is not done.
func FlagsDone(name string, stderr io.Writer, err error) (code int, done bool) {
	if errors.Is(err, flag.ErrHelp) {
		return 0, true
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return ExitUsage, true
	}
	return 0, false
}

// Databases are a run's source and tracking databases.
type Databases struct {
	SourceDSN, TrackingDSN string
	Source, Tracking       *pgxpool.Pool
}

// CreateDatabases creates SourceDB and TrackingDB on pg, connects to them
// with at most sourceConns and trackingConns connections, and creates the
// source tables. On an error it returns what it opened so far, for the
// caller to close.
func CreateDatabases(ctx context.Context, pg *pgserver.Server, sourceConns, trackingConns int32) (Databases, error) {
	var (
		d   Databases
		err error
	)
	if d.SourceDSN, err = pg.CreateDatabase(ctx, SourceDB); err != nil {
		return d, err
	}
	if d.TrackingDSN, err = pg.CreateDatabase(ctx, TrackingDB); err != nil {
		return d, err
	}
	if d.Source, err = OpenPool(ctx, d.SourceDSN, sourceConns); err != nil {
		return d, err
	}
	if d.Tracking, err = OpenPool(ctx, d.TrackingDSN, trackingConns); err != nil {
		return d, err
	}
	return d, loadgen.CreateSourceSchema(ctx, d.Source)
}

// ClosePools closes the pools that are not nil.
func ClosePools(pools ...*pgxpool.Pool) {
	for _, p := range pools {
		if p != nil {
			p.Close()
		}
	}
}

// PGVersion returns the server_version of s, "?" if it cannot tell.
func PGVersion(ctx context.Context, s *pgserver.Server) string {
	pool, err := OpenPool(ctx, s.DSN("postgres"), 1)
	if err != nil {
		return "?"
	}
	defer pool.Close()
	var v string
	if err := pool.QueryRow(ctx, "SHOW server_version").Scan(&v); err != nil {
		return "?"
	}
	return v
}

// HardStop is a script's exit on a second signal, before os.Exit: it kills
// the agents and PostgreSQL at once (passing what fails to logErr), then
// removes PostgreSQL's directory unless keepPG and dir unless keepDir. pg
// may be nil and dir empty.
func HardStop(agents []*devcluster.Agent, pg *pgserver.Server, keepPG bool, dir string, keepDir bool, logErr func(error)) {
	for _, a := range agents {
		if err := a.Kill(); err != nil {
			logErr(err)
		}
	}
	if pg != nil {
		if err := KillPostgres(pg); err != nil {
			logErr(err)
		}
		if !keepPG {
			// The postmaster may still be writing for a moment.
			time.Sleep(300 * time.Millisecond)
			_ = os.RemoveAll(pg.Dir)
		}
	}
	if dir != "" && !keepDir {
		_ = os.RemoveAll(dir)
	}
}

// ShowLogTails prints the last n lines of each agent's log on stderr after
// a failure, each under a header naming it by label.
func ShowLogTails(c *devcluster.Cluster, n int, label func(*devcluster.Agent) string) {
	if c == nil {
		return
	}
	for _, a := range c.Agents {
		fmt.Fprintf(os.Stderr, "--- last lines of %s ---\n%s\n", label(a), a.LogTail(n))
	}
}

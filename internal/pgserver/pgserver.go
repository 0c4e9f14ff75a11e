// Package pgserver runs a throwaway PostgreSQL server for tests, benchmarks
// and local scripts. It owns one base directory per server (data directory,
// server log and Unix socket) and removes it in Cleanup.
//
// It must not depend on package testing: scripts use it too. Test helpers
// that fail a test live in internal/testsupport.
package pgserver

import (
	"context"
	"errors"
	"fmt"
	"github.com/geocursor/geocursor/internal/childproc"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNotInstalled is returned by Start when the PostgreSQL server binaries
// (initdb, pg_ctl, postgres) cannot be found.
var ErrNotInstalled = errors.New("postgresql server binaries not found " +
	"(looked in $PG_BIN, /usr/lib/postgresql/*/bin and `pg_config --bindir`); " +
	"install Debian's postgresql-15 package: apt-get install -y postgresql")

const (
	// startTimeout bounds pg_ctl's wait for the server to accept connections.
	startTimeout = 60 * time.Second
	// startAttempts covers the small race between picking a free port and
	// the server binding it: another process may take the port in between.
	startAttempts = 3
	// superuser is the role initdb creates and every DSN connects as.
	superuser = "postgres"
)

// Options configures a server.
type Options struct {
	// Fast trades durability for speed: fsync=off, synchronous_commit=off
	// and full_page_writes=off. It must stay false for tests that check
	// what survives a crash.
	Fast bool
	// CommitTimestamps turns on track_commit_timestamp, so that
	// pg_xact_commit_timestamp(xmin) tells when a row's transaction
	// committed, by the server's clock.
	CommitTimestamps bool
	// Logf, if set, receives one line per command run against the server.
	Logf func(format string, args ...any)
}

// Server is a PostgreSQL server listening on 127.0.0.1:Port, started by
// Start. Its methods are safe for concurrent use.
type Server struct {
	// Dir is the base directory holding the data directory, the server log
	// and the Unix socket.
	Dir string
	// Port is the TCP port on 127.0.0.1. It stays the same across restarts.
	Port int

	binDir  string
	dataDir string
	logFile string
	asUser  string // run server binaries through runuser as this user; "" = as ourselves
	logf    func(format string, args ...any)

	mu      sync.Mutex
	running bool
}

// Start creates a fresh cluster with initdb in a new temporary directory
// and starts it, waiting until it accepts connections. The caller must call
// Cleanup when done.
//
// PostgreSQL refuses to run as root, so when the process runs as root the
// server binaries run as the "postgres" system user through runuser.
func Start(ctx context.Context, opts Options) (*Server, error) {
	binDir, err := findBinDir(ctx)
	if err != nil {
		return nil, err
	}
	s := &Server{binDir: binDir, logf: opts.Logf}
	if s.logf == nil {
		s.logf = func(string, ...any) {}
	}

	var uid, gid int = -1, -1
	if os.Geteuid() == 0 {
		uid, gid, err = lookupUser(superuser)
		if err != nil {
			return nil, err
		}
		if _, err := exec.LookPath("runuser"); err != nil {
			return nil, fmt.Errorf("running as root needs runuser to start PostgreSQL as %q (install util-linux): %w", superuser, err)
		}
		s.asUser = superuser
	}

	// Not t.TempDir: its parents may be private to root, and the postgres
	// user must be able to reach the data directory.
	s.Dir, err = os.MkdirTemp("", "geocursor-pg-*")
	if err != nil {
		return nil, fmt.Errorf("create base directory: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(s.Dir)
		}
	}()
	if err := os.Chmod(s.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("make base directory %s traversable: %w", s.Dir, err)
	}
	s.dataDir = filepath.Join(s.Dir, "data")
	s.logFile = filepath.Join(s.Dir, "postgres.log")
	if err := os.Mkdir(s.dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	if uid >= 0 {
		// The server writes its log and socket into the base directory and
		// insists on owning its data directory.
		for _, p := range []string{s.Dir, s.dataDir} {
			if err := os.Chown(p, uid, gid); err != nil {
				return nil, fmt.Errorf("hand %s to user %s: %w", p, superuser, err)
			}
		}
	}

	// --no-sync only skips initdb's final flush; the running server's
	// durability is governed by the settings written below.
	if err := s.run(ctx, "initdb", "-D", s.dataDir, "-A", "trust", "-U", superuser,
		"-E", "UTF8", "--no-locale", "--no-sync"); err != nil {
		return nil, err
	}

	for attempt := 1; ; attempt++ {
		s.Port, err = childproc.FreePort()
		if err != nil {
			return nil, err
		}
		if err := s.writeConfig(opts); err != nil {
			return nil, err
		}
		err = s.StartAgain(ctx)
		if err == nil {
			break
		}
		if attempt >= startAttempts || ctx.Err() != nil || !strings.Contains(s.LogTail(), "could not bind") {
			return nil, err
		}
		s.logf("pgserver: port %d was taken before the server bound it; retrying", s.Port)
	}
	ok = true
	return s, nil
}

// DSN returns a connection string for database on this server.
func (s *Server) DSN(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(superuser),
		Host:     net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// CreateDatabase creates a database and returns its DSN.
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	conn, err := pgx.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return "", fmt.Errorf("connect to create database %q: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("create database %q: %w", name, err)
	}
	return s.DSN(name), nil
}

// StartAgain starts a stopped server on the same port and data directory,
// waiting until it accepts connections. Starting a running server is a no-op.
func (s *Server) StartAgain(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		return nil
	}
	err := s.run(ctx, "pg_ctl", "start", "-w", "-t", strconv.Itoa(int(startTimeout/time.Second)),
		"-D", s.dataDir, "-l", s.logFile)
	if err != nil {
		// pg_ctl may have given up while the postmaster still runs; make
		// sure no half-started server outlives the error.
		_ = s.run(context.WithoutCancel(ctx), "pg_ctl", "stop", "-m", "immediate", "-w", "-D", s.dataDir)
		return fmt.Errorf("start postgres on port %d: %w\nserver log (tail):\n%s", s.Port, err, s.LogTail())
	}
	s.running = true
	return nil
}

// Stop shuts the server down cleanly (pg_ctl stop -m fast). Stopping a
// stopped server is a no-op.
func (s *Server) Stop() error {
	return s.stop("fast")
}

// StopImmediate kills the server without a shutdown checkpoint
// (pg_ctl stop -m immediate), as a crash would: the next start runs
// crash recovery. Stopping a stopped server is a no-op.
func (s *Server) StopImmediate() error {
	return s.stop("immediate")
}

func (s *Server) stop(mode string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running {
		return nil
	}
	// Not cancellable: a half-stopped server is worse than a slow stop.
	if err := s.run(context.Background(), "pg_ctl", "stop", "-m", mode, "-w", "-D", s.dataDir); err != nil {
		return fmt.Errorf("stop postgres (mode %s) on port %d: %w", mode, s.Port, err)
	}
	s.running = false
	return nil
}

// Restart simulates a crash of the database: it stops the server
// immediately, keeps it down for downFor, then starts it again on the same
// port.
func (s *Server) Restart(ctx context.Context, downFor time.Duration) error {
	if err := s.StopImmediate(); err != nil {
		return err
	}
	t := time.NewTimer(downFor)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return fmt.Errorf("restart postgres on port %d: %w", s.Port, ctx.Err())
	}
	return s.StartAgain(ctx)
}

// Cleanup stops the server and removes its base directory. It is safe to
// call more than once.
func (s *Server) Cleanup() error {
	stopErr := s.Stop()
	if stopErr != nil {
		// The directory is about to go away; do not leave a server behind.
		if err := s.StopImmediate(); err == nil {
			stopErr = nil
		}
	}
	if err := os.RemoveAll(s.Dir); err != nil {
		return errors.Join(stopErr, fmt.Errorf("remove %s: %w", s.Dir, err))
	}
	return stopErr
}

// LogTail returns the end of the server log, for diagnosing failures.
func (s *Server) LogTail() string { return childproc.LogTail(s.logFile) }

// writeConfig appends our settings to postgresql.conf; later lines win, so
// rewriting for a new port on a retry is just another append.
func (s *Server) writeConfig(opts Options) error {
	var b strings.Builder
	b.WriteString("\n# written by geocursor internal/pgserver\n")
	fmt.Fprintf(&b, "listen_addresses = '127.0.0.1'\n")
	fmt.Fprintf(&b, "port = %d\n", s.Port)
	fmt.Fprintf(&b, "unix_socket_directories = '%s'\n", strings.ReplaceAll(s.Dir, "'", "''"))
	b.WriteString("max_connections = 200\n")
	// Throughput settings that cost no durability: bigger WAL buffers and
	// fewer checkpoints during bulk loads (a 1,000,000 event backlog loads
	// about twice as fast).
	b.WriteString("wal_buffers = '16MB'\nmax_wal_size = '2GB'\n")
	if opts.Fast {
		b.WriteString("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
	}
	if opts.CommitTimestamps {
		b.WriteString("track_commit_timestamp = on\n")
	}
	path := filepath.Join(s.dataDir, "postgresql.conf")
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	if _, err := f.WriteString(b.String()); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// run runs one server binary, as the postgres user when we are root, and
// returns its output in the error when it fails.
func (s *Server) run(ctx context.Context, name string, args ...string) error {
	bin := filepath.Join(s.binDir, name)
	var cmd *exec.Cmd
	if s.asUser != "" {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", s.asUser, "--", bin}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, bin, args...)
	}
	// The postgres user may not be able to enter our working directory.
	cmd.Dir = s.Dir
	// pg_ctl hands the server's output to the log file, but guard against
	// a child holding our output pipe open forever.
	cmd.WaitDelay = 5 * time.Second
	s.logf("pgserver: %s %s", name, strings.Join(args, " "))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// findBinDir locates the directory holding initdb and pg_ctl: $PG_BIN,
// else the highest /usr/lib/postgresql/*/bin (Debian keeps server binaries
// off PATH), else `pg_config --bindir`.
func findBinDir(ctx context.Context) (string, error) {
	if dir := os.Getenv("PG_BIN"); dir != "" {
		if !hasServerBinaries(dir) {
			return "", fmt.Errorf("PG_BIN=%s has no initdb and pg_ctl: %w", dir, ErrNotInstalled)
		}
		return dir, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		return versionOf(dirs[i]) > versionOf(dirs[j])
	})
	for _, dir := range dirs {
		if hasServerBinaries(dir) {
			return dir, nil
		}
	}
	if out, err := exec.CommandContext(ctx, "pg_config", "--bindir").Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); hasServerBinaries(dir) {
			return dir, nil
		}
	}
	return "", ErrNotInstalled
}

// versionOf parses the major version from /usr/lib/postgresql/VERSION/bin,
// so that 15 sorts above 9.6.
func versionOf(binDir string) float64 {
	v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	if err != nil {
		return -1
	}
	return v
}

func hasServerBinaries(dir string) bool {
	for _, name := range []string{"initdb", "pg_ctl", "postgres"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

func lookupUser(name string) (uid, gid int, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		return -1, -1, fmt.Errorf("PostgreSQL refuses to run as root and there is no %q user to run it as "+
			"(Debian's postgresql package creates it): %w", name, err)
	}
	uid, err = strconv.Atoi(u.Uid)
	if err != nil {
		return -1, -1, fmt.Errorf("parse uid of user %q: %w", name, err)
	}
	gid, err = strconv.Atoi(u.Gid)
	if err != nil {
		return -1, -1, fmt.Errorf("parse gid of user %q: %w", name, err)
	}
	return uid, gid, nil
}

// Package redisserver runs a throwaway Redis server for tests, benchmarks
// and local scripts: Debian's redis-server as a child process on a free
// loopback port, with an append-only file so that what it acknowledged
// survives a kill. It owns one base directory per server (configuration,
// data directory with the AOF, server log) and removes it in Cleanup.
// A server may replicate another (Options.ReplicaOf), and a Group runs a
// master, its replicas and the Sentinels that watch them (sentinel.go).
//
// It must not depend on package testing: scripts use it too. Test helpers
// that fail a test live in internal/testsupport.
package redisserver

import (
	"context"
	"errors"
	"fmt"
	"github.com/geocursor/geocursor/internal/childproc"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrNotInstalled is returned by Start when the redis-server binary cannot
// be found.
var ErrNotInstalled = errors.New("redis-server not found (looked in $REDIS_SERVER, $PATH and /usr/bin); " +
	"install Debian's package: apt-get install -y redis-server")

const (
	// startTimeout bounds the wait for the server to answer PING, loading
	// its AOF included.
	startTimeout = 30 * time.Second
	// stopTimeout bounds a graceful shutdown before the server is killed.
	stopTimeout = 15 * time.Second
	// startAttempts covers the small race between picking a free port and
	// the server binding it: another process may take the port in between.
	startAttempts = 3
)

// Options configures a server.
type Options struct {
	// AppendFsync is the AOF's appendfsync policy: "always" (the default:
	// every acknowledged write is on disk, so it survives Kill), "everysec"
	// or "no".
	AppendFsync string
	// ReplicaOf, if set, is the HOST:PORT of a master this server
	// replicates (replicaof in its configuration). Sentinel may change it
	// later: the server rewrites its configuration when told to.
	ReplicaOf string
	// Logf, if set, receives one line per start and stop of the server.
	Logf func(format string, args ...any)
}

// Server is a Redis server listening on 127.0.0.1:Port, started by Start.
// Its methods are safe for concurrent use.
type Server struct {
	// Dir is the base directory holding the configuration, the data
	// directory and the server log.
	Dir string
	// Port is the TCP port on 127.0.0.1. It stays the same across restarts.
	Port int

	bin      string
	args     []string // after the configuration file
	confFile string
	logFile  string
	logf     func(format string, args ...any)
	// writeConfig (re)writes confFile for the current port.
	writeConfig func() error

	mu     sync.Mutex
	proc   *childproc.Process // nil when stopped
	frozen bool               // SIGSTOPped by Freeze
}

// Start writes a configuration in a new temporary directory and starts
// redis-server with it, waiting until it answers PING. The caller must call
// Cleanup when done.
func Start(ctx context.Context, opts Options) (*Server, error) {
	bin, err := findBinary()
	if err != nil {
		return nil, err
	}
	fsync := opts.AppendFsync
	if fsync == "" {
		fsync = "always"
	}
	switch fsync {
	case "always", "everysec", "no":
	default:
		return nil, fmt.Errorf("redisserver: AppendFsync %q is not one of always, everysec, no", opts.AppendFsync)
	}
	var masterHost, masterPort string
	if opts.ReplicaOf != "" {
		if masterHost, masterPort, err = net.SplitHostPort(opts.ReplicaOf); err != nil {
			return nil, fmt.Errorf("redisserver: ReplicaOf %q is not HOST:PORT: %w", opts.ReplicaOf, err)
		}
	}
	s, err := newServer(bin, "geocursor-redis-*", "redis", opts.Logf)
	if err != nil {
		return nil, err
	}
	dataDir := filepath.Join(s.Dir, "data")
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		_ = os.RemoveAll(s.Dir)
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	s.writeConfig = func() error {
		var b strings.Builder
		s.commonConfig(&b)
		fmt.Fprintf(&b, "dir %s\n", quote(dataDir))
		b.WriteString("appendonly yes\n")
		fmt.Fprintf(&b, "appendfsync %s\n", fsync)
		// No RDB snapshots: the AOF alone is what a restart reloads.
		b.WriteString("save \"\"\n")
		// A replica that asks for a full sync gets it at once, not after
		// the five seconds Redis waits for others to ask too.
		b.WriteString("repl-diskless-sync-delay 0\n")
		if masterHost != "" {
			fmt.Fprintf(&b, "replicaof %s %s\n", masterHost, masterPort)
		}
		return s.saveConfig(b.String())
	}
	if err := s.start(ctx); err != nil {
		_ = os.RemoveAll(s.Dir)
		return nil, err
	}
	return s, nil
}

// newServer makes a stopped server in a new base directory (named after
// pattern) with its configuration and log named after file.
func newServer(bin, pattern, file string, logf func(string, ...any)) (*Server, error) {
	s := &Server{bin: bin, logf: logf}
	if s.logf == nil {
		s.logf = func(string, ...any) {}
	}
	var err error
	s.Dir, err = os.MkdirTemp("", pattern)
	if err != nil {
		return nil, fmt.Errorf("create base directory: %w", err)
	}
	s.confFile = filepath.Join(s.Dir, file+".conf")
	s.logFile = filepath.Join(s.Dir, file+".log")
	return s, nil
}

// start picks a free port, writes the configuration for it and starts
// the server, with another port if the one picked was taken before the
// server bound it.
func (s *Server) start(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		var err error
		s.Port, err = childproc.FreePort()
		if err != nil {
			return err
		}
		if err := s.writeConfig(); err != nil {
			return err
		}
		err = s.StartAgain(ctx)
		if err == nil {
			return nil
		}
		if attempt >= startAttempts || ctx.Err() != nil || !strings.Contains(s.LogTail(), "Address already in use") {
			return err
		}
		s.logf("redisserver: port %d was taken before the server bound it; retrying", s.Port)
		// The next attempt's failure must be judged by its own log.
		_ = os.Remove(s.logFile)
	}
}

// Addr returns the server's address, 127.0.0.1:Port.
func (s *Server) Addr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port))
}

// URL returns the server's URL for database 0, redis://127.0.0.1:Port/0.
func (s *Server) URL() string {
	return "redis://" + s.Addr() + "/0"
}

// StartAgain starts a stopped, killed or crashed server on the same port
// and data directory, so that it reloads its AOF, and waits until it
// answers PING (Redis refuses PING with LOADING until the AOF is loaded).
// Starting a running server is a no-op.
func (s *Server) StartAgain(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil && !s.proc.Exited() {
		return nil
	}
	s.proc, s.frozen = nil, false // it may have died by itself
	args := append([]string{s.confFile}, s.args...)
	s.logf("redisserver: starting %s %s on port %d", s.bin, strings.Join(args, " "), s.Port)
	p, err := childproc.Start(s.bin, args, nil, s.Dir, s.logFile)
	if err != nil {
		return fmt.Errorf("start redis-server on port %d: %w", s.Port, err)
	}
	if err := s.waitReady(ctx, p); err != nil {
		_ = p.Kill()
		return fmt.Errorf("start redis-server on port %d: %w\nserver log (tail):\n%s", s.Port, err, s.LogTail())
	}
	s.proc = p
	return nil
}

// waitReady polls PING until our process answers it with PONG, exits,
// or startTimeout or ctx runs out.
func (s *Server) waitReady(ctx context.Context, p *childproc.Process) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var last error
	for {
		if last = s.ping(ctx, p.Pid()); last == nil {
			return nil
		}
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-p.Done():
			t.Stop()
			return fmt.Errorf("redis-server exited before answering PING: %w", p.Err())
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("no PONG within %s: %w (last: %v)", startTimeout, ctx.Err(), last)
		case <-t.C:
		}
	}
}

// ping checks that the server answers PING and that it is our process: a
// server that lost the race for the port exits, while whoever won it may
// answer in its place.
func (s *Server) ping(ctx context.Context, pid int) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, Protocol: 2})
	defer c.Close()
	// A server still loading its AOF answers LOADING, an error.
	if err := c.Ping(ctx).Err(); err != nil {
		return err
	}
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		return err
	}
	if !strings.Contains(info, "\nprocess_id:"+strconv.Itoa(pid)+"\r\n") {
		return fmt.Errorf("the server on port %d is not pid %d", s.Port, pid)
	}
	return nil
}

// Kill sends SIGKILL, as a crash would, and waits for the process to end.
// With appendfsync always every acknowledged write is in the AOF that
// StartAgain reloads. Killing a stopped server is a no-op.
func (s *Server) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return nil
	}
	s.logf("redisserver: killing the server on port %d", s.Port)
	err := s.proc.Kill() // SIGKILL ends a frozen process too
	s.proc, s.frozen = nil, false
	if err != nil {
		return fmt.Errorf("kill redis-server on port %d: %w", s.Port, err)
	}
	return nil
}

// Stop shuts the server down cleanly with SIGTERM (Redis flushes and
// fsyncs the AOF) and waits for it to exit; if it has not exited after 15s
// it is killed and Stop returns an error. Stopping a stopped server is a
// no-op.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return nil
	}
	s.logf("redisserver: stopping the server on port %d", s.Port)
	if s.frozen {
		// A stopped process would hold SIGTERM until stopTimeout.
		_ = syscall.Kill(s.proc.Pid(), syscall.SIGCONT)
	}
	// Redis refuses a SIGTERM that comes while it writes its first AOF
	// (after a replica's full sync: "Writing initial AOF, can't exit") and
	// does not try again by itself; so SIGTERM is repeated until it exits.
	repeat := make(chan struct{})
	go func(p *childproc.Process) {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-repeat:
				return
			case <-p.Done():
				return
			case <-t.C:
				if !p.Exited() {
					_ = syscall.Kill(p.Pid(), syscall.SIGTERM)
				}
			}
		}
	}(s.proc)
	err := s.proc.Stop(stopTimeout)
	close(repeat)
	s.proc, s.frozen = nil, false
	if err != nil {
		return fmt.Errorf("stop redis-server on port %d: %w\nserver log (tail):\n%s", s.Port, err, s.LogTail())
	}
	return nil
}

// Freeze sends SIGSTOP: the server stops answering and stops reading,
// but keeps its connections, as a server stuck in a long stall would;
// the kernel still buffers what peers send it, up to its socket buffers.
// Thaw lets it go on. Freezing a frozen or stopped server is a no-op.
func (s *Server) Freeze() error { return s.signal(syscall.SIGSTOP, "SIGSTOP", true) }

// Thaw sends SIGCONT to a frozen server. Thawing a server that is not
// frozen is a no-op.
func (s *Server) Thaw() error { return s.signal(syscall.SIGCONT, "SIGCONT", false) }

func (s *Server) signal(sig syscall.Signal, name string, frozen bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil || s.frozen == frozen {
		return nil
	}
	s.logf("redisserver: sending %s to the server on port %d", name, s.Port)
	if err := syscall.Kill(s.proc.Pid(), sig); err != nil {
		return fmt.Errorf("send %s to the server on port %d: %w", name, s.Port, err)
	}
	s.frozen = frozen
	return nil
}

// partitionAuth is the password a partitioned replica offers its master,
// which takes none.
const partitionAuth = "geocursor-partitioned"

// Partition cuts a replica off its master as a network partition would:
// it drops its link and cannot make another (it offers the master a
// password the master does not take), so it keeps what it had while the
// master goes on accepting writes. Unlike Freeze, nothing in flight
// reaches it later: what the kernel buffered for the dropped link is gone.
// Heal lets it reconnect.
func (s *Server) Partition(ctx context.Context) error {
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer c.Close()
	if err := c.ConfigSet(ctx, "masterauth", partitionAuth).Err(); err != nil {
		return fmt.Errorf("partition the replica on port %d: %w", s.Port, err)
	}
	if err := c.ClientKillByFilter(ctx, "TYPE", "master").Err(); err != nil {
		return fmt.Errorf("partition the replica on port %d: drop its master link: %w", s.Port, err)
	}
	s.logf("redisserver: the replica on port %d is cut off its master", s.Port)
	return nil
}

// Heal undoes Partition: the replica reconnects within a second.
func (s *Server) Heal(ctx context.Context) error {
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1})
	defer c.Close()
	if err := c.ConfigSet(ctx, "masterauth", "").Err(); err != nil {
		return fmt.Errorf("heal the replica on port %d: %w", s.Port, err)
	}
	return nil
}

// Cleanup stops the server and removes its base directory. It is safe to
// call more than once.
func (s *Server) Cleanup() error {
	stopErr := s.Stop() // kills the server if it will not stop
	if err := os.RemoveAll(s.Dir); err != nil {
		return errors.Join(stopErr, fmt.Errorf("remove %s: %w", s.Dir, err))
	}
	return stopErr
}

// LogTail returns the end of the server log, for diagnosing failures.
func (s *Server) LogTail() string { return childproc.LogTail(s.logFile) }

// commonConfig writes what every server's configuration starts with.
func (s *Server) commonConfig(b *strings.Builder) {
	b.WriteString("# written by geocursor internal/redisserver\n")
	b.WriteString("bind 127.0.0.1\n")
	fmt.Fprintf(b, "port %d\n", s.Port)
	b.WriteString("daemonize no\n")
	b.WriteString("supervised no\n")
	// Logs go to stdout, which Start sends to the log file together with
	// anything printed before the configuration is read.
	b.WriteString("logfile \"\"\n")
}

// saveConfig writes the configuration file; the server may rewrite it
// (CONFIG REWRITE, and Sentinel's own state), so it stays writable.
func (s *Server) saveConfig(conf string) error {
	if err := os.WriteFile(s.confFile, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", s.confFile, err)
	}
	return nil
}

// quote makes a double-quoted string for redis.conf.
func quote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(s) + `"`
}

// findBinary locates redis-server: $REDIS_SERVER, else $PATH, else
// /usr/bin/redis-server.
func findBinary() (string, error) {
	if p := os.Getenv("REDIS_SERVER"); p != "" {
		if !childproc.IsExecutable(p) {
			return "", fmt.Errorf("REDIS_SERVER=%s is not an executable file: %w", p, ErrNotInstalled)
		}
		return p, nil
	}
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	if p := "/usr/bin/redis-server"; childproc.IsExecutable(p) {
		return p, nil
	}
	return "", ErrNotInstalled
}

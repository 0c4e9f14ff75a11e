// Package sidekiqserver runs a throwaway Sidekiq for tests, benchmarks and
// local scripts: Debian's real Sidekiq 6 as a child process against a given
// Redis, loading a worker file that defines GitLab's Geo::EventWorker. The
// worker does nothing but record each job it performs, one JSON line per
// job, so that a test can check what GitLab would have run, with which
// arguments, and when. It owns one base directory per server (worker file,
// record file, log) and removes it in Cleanup.
//
// It must not depend on package testing: scripts use it too. Test helpers
// that fail a test live in internal/testsupport.
package sidekiqserver

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/geocursor/geocursor/internal/childproc"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrNotInstalled is returned by Start when Sidekiq or Ruby cannot be found.
var ErrNotInstalled = errors.New("sidekiq not found (looked for " + sidekiqBin + " and " + rubyBin + "); " +
	"install Debian's package: apt-get install -y ruby-sidekiq")

// ErrNamespaceNotInstalled is returned by Start for a Namespace when the
// redis-namespace gem, which Sidekiq 6 needs for one, cannot be loaded.
var ErrNamespaceNotInstalled = errors.New("a Sidekiq namespace needs the redis-namespace gem, which ruby cannot load; " +
	"install Debian's package: apt-get install -y ruby-redis-namespace")

const (
	sidekiqBin = "/usr/bin/sidekiq"
	rubyBin    = "/usr/bin/ruby" // the interpreter of sidekiqBin's #! line
	// startTimeout bounds the wait for the process's first heartbeat.
	startTimeout = 30 * time.Second
	// shutdownSeconds is Sidekiq's own shutdown timeout (-t): how long it
	// lets running jobs finish after TERM before it pushes them back.
	shutdownSeconds = 8
	// stopTimeout bounds Stop's wait for the process to exit after TERM,
	// shutdownSeconds included, before it kills it.
	stopTimeout = (shutdownSeconds + 7) * time.Second
)

//go:embed worker.rb
var workerSource []byte

// Options configures a server.
type Options struct {
	// RedisURL is the Redis that Sidekiq fetches from, e.g.
	// redis://127.0.0.1:6379/0. Required.
	RedisURL string
	// Queue is the one queue Sidekiq processes; "default" if empty.
	Queue string
	// Namespace, if set, prefixes every key Sidekiq uses with Namespace
	// and a colon (GitLab's was "resque:gitlab"): the queue's list is then
	// Namespace:queue:Queue. Sidekiq 6 does it through the redis-namespace
	// gem; without it Start returns ErrNamespaceNotInstalled.
	Namespace string
	// Concurrency is Sidekiq's number of processor threads; 5 if zero.
	Concurrency int
	// Logf, if set, receives one line per start and stop of the process.
	Logf func(format string, args ...any)
}

// Performed is one job that Geo::EventWorker performed, as the worker
// recorded it.
type Performed struct {
	ReplicableName string `json:"replicable_name"`
	EventName      string `json:"event_name"`
	// Payload is the job's third argument as JSON, as the worker received it.
	Payload json.RawMessage `json:"payload"`
	JID     string          `json:"jid"`
	// Queue is the queue the job was fetched from.
	Queue string `json:"queue"`
	// CorrelationID is the job's correlation_id; "" if it had none.
	CorrelationID string `json:"correlation_id"`
	// PerformedAt is when perform ran, EnqueuedAt and CreatedAt what the
	// job said: Unix times in seconds, 0 if the job lacked the field.
	PerformedAt float64 `json:"performed_at"`
	EnqueuedAt  float64 `json:"enqueued_at"`
	CreatedAt   float64 `json:"created_at"`
}

// Server is a Sidekiq process, started by Start. Its methods are safe for
// concurrent use.
type Server struct {
	// Dir is the base directory holding the worker file, the record file
	// and the log.
	Dir string

	opts         Options
	workerFile   string
	recordFile   string
	logFile      string
	processesKey string // the key of Sidekiq's set of live processes
	logf         func(format string, args ...any)

	mu   sync.Mutex
	proc *childproc.Process // nil when stopped
}

// Start writes the worker file in a new temporary directory and starts
// Sidekiq with it, waiting until the process has sent its first heartbeat
// to Redis: by then it fetches from the queue. The caller must call Cleanup
// when done.
func Start(ctx context.Context, opts Options) (*Server, error) {
	for _, p := range []string{sidekiqBin, rubyBin} {
		if !childproc.IsExecutable(p) {
			return nil, ErrNotInstalled
		}
	}
	if opts.RedisURL == "" {
		return nil, errors.New("sidekiqserver: Options.RedisURL is required")
	}
	if opts.Queue == "" {
		opts.Queue = "default"
	}
	if opts.Concurrency == 0 {
		opts.Concurrency = 5
	}
	if opts.Concurrency < 0 {
		return nil, fmt.Errorf("sidekiqserver: Concurrency %d is negative", opts.Concurrency)
	}
	if opts.Namespace != "" {
		if err := checkNamespaceGem(ctx); err != nil {
			return nil, err
		}
	}
	s := &Server{opts: opts, logf: opts.Logf, processesKey: "processes"}
	if opts.Namespace != "" {
		s.processesKey = opts.Namespace + ":processes"
	}
	if s.logf == nil {
		s.logf = func(string, ...any) {}
	}
	var err error
	s.Dir, err = os.MkdirTemp("", "geocursor-sidekiq-*")
	if err != nil {
		return nil, fmt.Errorf("create base directory: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(s.Dir)
		}
	}()
	s.workerFile = filepath.Join(s.Dir, "worker.rb")
	s.recordFile = filepath.Join(s.Dir, "performed.jsonl")
	s.logFile = filepath.Join(s.Dir, "sidekiq.log")
	if err := os.WriteFile(s.workerFile, workerSource, 0o600); err != nil {
		return nil, fmt.Errorf("write worker file: %w", err)
	}
	if err := s.StartAgain(ctx); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

// StartAgain starts a stopped, killed or crashed Sidekiq again with the same
// options, worker file and record file, and waits for its first heartbeat.
// Starting a running server is a no-op.
func (s *Server) StartAgain(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc != nil && !s.proc.Exited() {
		return nil
	}
	s.proc = nil // it may have died by itself
	args := []string{
		"-r", s.workerFile,
		"-q", s.opts.Queue,
		"-c", strconv.Itoa(s.opts.Concurrency),
		"-t", strconv.Itoa(shutdownSeconds),
	}
	env := append(withoutRedisVars(os.Environ()),
		"REDIS_URL="+s.opts.RedisURL,
		"GEOCURSOR_SIDEKIQ_NAMESPACE="+s.opts.Namespace,
		"GEOCURSOR_SIDEKIQ_RECORD="+s.recordFile,
	)
	s.logf("sidekiqserver: starting %s %s against %s", sidekiqBin, strings.Join(args, " "), s.opts.RedisURL)
	p, err := childproc.Start(sidekiqBin, args, env, s.Dir, s.logFile)
	if err != nil {
		return fmt.Errorf("start sidekiq: %w", err)
	}
	if err := s.waitReady(ctx, p); err != nil {
		_ = p.Kill()
		return fmt.Errorf("start sidekiq against %s: %w\nsidekiq log (tail):\n%s", s.opts.RedisURL, err, s.LogTail())
	}
	s.proc = p
	return nil
}

// waitReady polls Sidekiq's set of live processes in Redis until it holds
// this process, whose identity is hostname:pid:nonce. The first heartbeat
// comes as the processor threads start fetching. A stale entry of an
// earlier, killed process has another pid.
func (s *Server) waitReady(ctx context.Context, p *childproc.Process) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	pid := strconv.Itoa(p.Pid())
	var last error
	for {
		var up bool
		up, last = s.hasHeartbeat(ctx, pid)
		if up {
			return nil
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-p.Done():
			t.Stop()
			return fmt.Errorf("sidekiq exited before its first heartbeat: %w", p.Err())
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("no heartbeat of pid %s in %s within %s: %w (last: %v)", pid, s.processesKey, startTimeout, ctx.Err(), last)
		case <-t.C:
		}
	}
}

func (s *Server) hasHeartbeat(ctx context.Context, pid string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	opts, err := redis.ParseURL(s.opts.RedisURL)
	if err != nil {
		return false, err
	}
	opts.MaxRetries = -1
	c := redis.NewClient(opts)
	defer c.Close()
	members, err := c.SMembers(ctx, s.processesKey).Result()
	if err != nil {
		return false, err
	}
	for _, m := range members {
		if parts := strings.Split(m, ":"); len(parts) >= 3 && parts[len(parts)-2] == pid {
			return true, nil
		}
	}
	return false, fmt.Errorf("%s holds %q", s.processesKey, members)
}

// Stop shuts Sidekiq down cleanly with TERM: it stops fetching, lets
// running jobs finish for up to 8s, pushes back the rest, and exits. If it
// has not exited after 15s it is killed and Stop returns an error. Stopping
// a stopped server is a no-op.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return nil
	}
	s.logf("sidekiqserver: stopping pid %d", s.proc.Pid())
	err := s.proc.Stop(stopTimeout)
	s.proc = nil
	if err != nil {
		return fmt.Errorf("stop sidekiq: %w\nsidekiq log (tail):\n%s", err, s.LogTail())
	}
	return nil
}

// Kill sends SIGKILL, as a crash would, and waits for the process to end.
// Jobs it had fetched and not finished are lost, as with Sidekiq's basic
// fetch in production. Killing a stopped server is a no-op.
func (s *Server) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return nil
	}
	s.logf("sidekiqserver: killing pid %d", s.proc.Pid())
	err := s.proc.Kill()
	s.proc = nil
	if err != nil {
		return fmt.Errorf("kill sidekiq: %w", err)
	}
	return nil
}

// Performed returns the jobs performed so far, in the order they were
// recorded, across every start of the server. A last line still being
// written (or cut off by Kill) is left out.
func (s *Server) Performed() ([]Performed, error) {
	data, err := os.ReadFile(s.recordFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read record file: %w", err)
	}
	if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
		data = data[:i+1]
	} else {
		data = nil
	}
	var out []Performed
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), len(data)+1)
	for n := 1; sc.Scan(); n++ {
		var p Performed
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			return nil, fmt.Errorf("record file %s line %d: %w", s.recordFile, n, err)
		}
		out = append(out, p)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read record file %s: %w", s.recordFile, err)
	}
	return out, nil
}

// Cleanup stops Sidekiq and removes its base directory, record file
// included. It is safe to call more than once.
func (s *Server) Cleanup() error {
	stopErr := s.Stop() // kills the process if it will not stop
	if err := os.RemoveAll(s.Dir); err != nil {
		return errors.Join(stopErr, fmt.Errorf("remove %s: %w", s.Dir, err))
	}
	return stopErr
}

// LogTail returns the end of Sidekiq's log, for diagnosing failures.
func (s *Server) LogTail() string { return childproc.LogTail(s.logFile) }

// checkNamespaceGem makes sure ruby can load redis-namespace: without it
// Sidekiq would log an error and exit at its first Redis connection.
func checkNamespaceGem(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, rubyBin, "-e", `require "redis/namespace"`).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w (ruby -e 'require \"redis/namespace\"': %v: %s)", ErrNamespaceNotInstalled, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// withoutRedisVars drops the variables through which Sidekiq could pick
// another Redis than the one configured.
func withoutRedisVars(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if name == "REDIS_URL" || name == "REDIS_PROVIDER" || strings.HasPrefix(name, "GEOCURSOR_SIDEKIQ_") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

package devcluster

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/geocursor/geocursor/api"
)

// AgentSpec says how to start one agent.
type AgentSpec struct {
	NodeID string
	// HTTPAddr and RaftAddr are the agent's addresses; empty means a free
	// loopback port (FreeAddr).
	HTTPAddr, RaftAddr string
	// Join are HTTP addresses passed as -join on the first start only.
	Join []string
	// ExtraHCL is appended to the generated config file (which sets only
	// node_id, data_dir, http_addr and raft_addr), e.g. join_timeout or
	// lease, source, tracking and raft blocks.
	ExtraHCL string
	// Env is added to the environment, which has no GEOCURSOR_* variables
	// of this process.
	Env []string
	// Args are extra agent flags, passed on every start (put -join here to
	// pass it on restarts too).
	Args []string
	// Wrapper, if set, is a command that runs the agent: the process
	// started is Wrapper followed by the binary and its arguments, e.g.
	// `ip netns exec NS` to run it in a network namespace. The wrapper
	// must exec the agent, so that signals reach the agent itself.
	Wrapper []string
	// History has the agent append every command it issues to
	// HistoryPath (GEOCURSOR_HISTORY_FILE), for a linearizability check.
	History bool
	// Supervised puts the agent in its own process group, so that a Ctrl-C
	// at the terminal reaches only this process, which then stops the
	// agents in its own order; and has the kernel kill the agent if this
	// process dies without stopping it, so that no agent outlives it.
	Supervised bool
	// RequestTimeout bounds each request to the agent's HTTP API; 0 means
	// 5s. A context's deadline applies as well.
	RequestTimeout time.Duration
	// Security, if set, gives the agent a peer certificate and the tokens
	// (its config's tls and acl blocks), and the harness's requests TLS
	// and the operator token.
	Security *Security
}

// killWait bounds the wait for a process to end after SIGKILL: longer
// means the kernel could not reap it (a process stuck in the kernel).
const killWait = 10 * time.Second

// Agent is one agent process and everything needed to start it again.
// Its methods are safe for concurrent use.
type Agent struct {
	ID, HTTPAddr, RaftAddr string
	// Dir holds the config file, the log and the history; DataDir, inside
	// it, is the agent's Raft state.
	Dir, DataDir, ConfigPath, LogPath string
	// HistoryPath is the agent's command history; "" without
	// AgentSpec.History.
	HistoryPath string

	spec   AgentSpec
	client *api.Client

	mu      sync.Mutex
	binary  string        // what start runs; RestartWithBinary changes it
	cmd     *exec.Cmd     // the current process; nil before the first start
	done    chan struct{} // closed when the current process has exited
	waitErr error         // set before done is closed
	paused  bool          // the last of SIGSTOP and SIGCONT sent was SIGSTOP
}

// NewAgent prepares an agent of binary in a new directory under dir, named
// after the node ID (with a suffix if taken): it picks its addresses and
// writes its config file there. Start starts it; its stdout and stderr are
// appended to LogPath.
func NewAgent(binary, dir string, spec AgentSpec) (*Agent, error) {
	if spec.NodeID == "" {
		return nil, errors.New("new agent: AgentSpec.NodeID is required")
	}
	agentDir := filepath.Join(dir, spec.NodeID)
	for i := 2; ; i++ {
		if _, err := os.Stat(agentDir); errors.Is(err, os.ErrNotExist) {
			break
		}
		agentDir = filepath.Join(dir, fmt.Sprintf("%s-%d", spec.NodeID, i))
	}
	if err := os.MkdirAll(agentDir, 0o755); err != nil {
		return nil, fmt.Errorf("create agent dir: %w", err)
	}
	timeout := spec.RequestTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	opts := api.ClientOptions{Timeout: timeout}
	securityHCL := ""
	if sec := spec.Security; sec != nil {
		var err error
		if opts, err = sec.ClientOptions(opts, sec.OperatorToken); err != nil {
			return nil, err
		}
		if securityHCL, err = sec.NodeHCL(spec.NodeID); err != nil {
			return nil, err
		}
	}
	a := &Agent{
		ID:         spec.NodeID,
		HTTPAddr:   spec.HTTPAddr,
		RaftAddr:   spec.RaftAddr,
		Dir:        agentDir,
		DataDir:    filepath.Join(agentDir, "data"),
		ConfigPath: filepath.Join(agentDir, "agent.hcl"),
		LogPath:    filepath.Join(agentDir, "agent.log"),
		spec:       spec,
		binary:     binary,
		client:     api.NewClient(opts),
	}
	if spec.History {
		a.HistoryPath = filepath.Join(agentDir, "history.jsonl")
	}
	for _, addr := range []*string{&a.HTTPAddr, &a.RaftAddr} {
		if *addr != "" {
			continue
		}
		free, err := FreeAddr()
		if err != nil {
			return nil, err
		}
		*addr = free
	}
	conf := fmt.Sprintf("node_id   = %q\ndata_dir  = %q\nhttp_addr = %q\nraft_addr = %q\n%s\n%s\n",
		a.ID, a.DataDir, a.HTTPAddr, a.RaftAddr, securityHCL, spec.ExtraHCL)
	if err := os.WriteFile(a.ConfigPath, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("write agent config: %w", err)
	}
	return a, nil
}

// Start starts the agent for the first time: with -join if the spec has
// Join addresses.
func (a *Agent) Start() error {
	var join []string
	if len(a.spec.Join) > 0 {
		join = []string{"-join", strings.Join(a.spec.Join, ",")}
	}
	return a.start(join)
}

// Restart starts the agent again with the same ports, data dir and config.
// -join is passed only if the spec's Args say so.
func (a *Agent) Restart() error {
	return a.start(nil)
}

// RestartWith starts the agent again like Restart, with extra flags added
// for this start only (e.g. -join, to check that it is ignored).
func (a *Agent) RestartWith(extra ...string) error {
	return a.start(extra)
}

// RestartWithBinary starts the agent again like Restart, but runs binary
// from now on (this start and the later ones): another release of
// geocursor on the same data dir, config and addresses, as an operator
// who upgrades or downgrades a node does.
func (a *Agent) RestartWithBinary(binary string) error {
	return a.startBinary(binary, nil)
}

// Binary is the path of the geocursor binary the agent runs.
func (a *Agent) Binary() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.binary
}

func (a *Agent) start(extra []string) error {
	return a.startBinary("", extra)
}

// startBinary starts the agent with binary, or the one it ran last if
// binary is "".
func (a *Agent) startBinary(binary string, extra []string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.runningLocked() {
		return fmt.Errorf("start %s: it is still running (pid %d)", a.ID, a.cmd.Process.Pid)
	}
	if binary != "" {
		a.binary = binary
	}
	args := append([]string{"agent", "-config", a.ConfigPath}, a.spec.Args...)
	args = append(args, extra...)
	argv := append(append(slices.Clone(a.spec.Wrapper), a.binary), args...)
	logf, err := os.OpenFile(a.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open agent log: %w", err)
	}
	defer logf.Close() // the child has its own descriptor
	fmt.Fprintf(logf, "=== %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(argv, " "))

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(environWithoutGeocursor(), a.spec.Env...)
	if a.HistoryPath != "" {
		cmd.Env = append(cmd.Env, "GEOCURSOR_HISTORY_FILE="+a.HistoryPath)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if a.spec.Supervised {
		cmd.SysProcAttr = supervisedAttr()
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start agent %s: %w", a.ID, err)
	}
	done := make(chan struct{})
	a.cmd, a.done, a.waitErr, a.paused = cmd, done, nil, false
	go func() {
		err := cmd.Wait()
		a.mu.Lock()
		a.waitErr = err
		a.mu.Unlock()
		close(done)
	}()
	return nil
}

// environWithoutGeocursor returns the environment of this process without
// its GEOCURSOR_* variables, for starting an agent that must see only the
// ones it is given.
func environWithoutGeocursor() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GEOCURSOR_") {
			env = append(env, kv)
		}
	}
	return env
}

func (a *Agent) current() (*exec.Cmd, chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cmd, a.done
}

// Pid returns the process ID of the current process, 0 before the first
// start.
func (a *Agent) Pid() int {
	cmd, _ := a.current()
	if cmd == nil || cmd.Process == nil {
		return 0
	}
	return cmd.Process.Pid
}

// Running reports whether the current process has not exited; a paused
// one runs.
func (a *Agent) Running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.runningLocked()
}

func (a *Agent) runningLocked() bool {
	if a.done == nil {
		return false
	}
	select {
	case <-a.done:
		return false
	default:
		return true
	}
}

// Paused reports whether the current process runs and is stopped by a
// SIGSTOP sent through Signal: it cannot answer until SIGCONT.
func (a *Agent) Paused() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.paused && a.runningLocked()
}

// Kill sends SIGKILL and waits for the process to end. Killing an agent
// that is not running does nothing.
func (a *Agent) Kill() error {
	cmd, done := a.current()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	default:
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s: %w", a.ID, err)
	}
	t := time.NewTimer(killWait)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return fmt.Errorf("kill %s: still running %s after SIGKILL", a.ID, killWait)
	}
}

// ExitError is returned by Stop when the agent exited after SIGTERM, but
// not with status 0.
type ExitError struct {
	ID  string
	Err error
	// LogTail is the end of the agent's log.
	LogTail string
}

func (e *ExitError) Error() string {
	return fmt.Sprintf("agent %s exited with %v after SIGTERM, want status 0\n%s", e.ID, e.Err, e.LogTail)
}

func (e *ExitError) Unwrap() error { return e.Err }

// Stop sends SIGTERM (after SIGCONT, in case it is paused: a stopped
// process handles no signal but SIGKILL) and waits up to timeout for a
// clean exit. It returns an *ExitError if the agent exited with another
// status than 0; if it is still running after timeout, Stop kills it and
// says so.
func (a *Agent) Stop(timeout time.Duration) error {
	cmd, done := a.current()
	if cmd == nil {
		return fmt.Errorf("stop %s: it was never started", a.ID)
	}
	select {
	case <-done:
		return fmt.Errorf("stop %s: it is not running (%s)", a.ID, a.ExitState())
	default:
	}
	for _, sig := range []os.Signal{syscall.SIGCONT, syscall.SIGTERM} {
		if err := a.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("stop %s: %w", a.ID, err)
		}
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
		if err := a.exitErr(); err != nil {
			return &ExitError{ID: a.ID, Err: err, LogTail: a.LogTail(20)}
		}
		return nil
	case <-t.C:
		return errors.Join(fmt.Errorf("agent %s did not exit within %s of SIGTERM\n%s", a.ID, timeout, a.LogTail(20)), a.Kill())
	}
}

// Signal sends sig (SIGSTOP, SIGCONT, ...) to the current process. SIGSTOP
// and SIGCONT are recorded for Paused.
func (a *Agent) Signal(sig os.Signal) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return fmt.Errorf("signal %s to %s: it was never started", sig, a.ID)
	}
	if err := a.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %s to %s: %w", sig, a.ID, err)
	}
	switch sig {
	case syscall.SIGSTOP:
		a.paused = true
	case syscall.SIGCONT:
		a.paused = false
	}
	return nil
}

// Wipe deletes the agent's Raft state, so that its next start is that of
// a new node. The agent must not be running.
func (a *Agent) Wipe() error {
	if a.Running() {
		return fmt.Errorf("wipe %s: it is running", a.ID)
	}
	if err := os.RemoveAll(a.DataDir); err != nil {
		return fmt.Errorf("wipe %s: %w", a.ID, err)
	}
	return nil
}

// ExitState describes how the last process ended, for failure messages.
// A clean exit nobody asked for usually means a signal from outside (the
// log then says "shutting down" with the signal).
func (a *Agent) ExitState() string {
	cmd, done := a.current()
	if cmd == nil {
		return "never started"
	}
	select {
	case <-done:
		return cmd.ProcessState.String()
	default:
		return "still running"
	}
}

func (a *Agent) exitErr() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.waitErr
}

// WaitExit waits up to timeout for the process to exit by itself and
// returns its exit status. If it is still running then, WaitExit kills it
// and returns an error.
func (a *Agent) WaitExit(timeout time.Duration) (int, error) {
	cmd, done := a.current()
	if cmd == nil {
		return -1, fmt.Errorf("wait for %s to exit: it was never started", a.ID)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		return -1, errors.Join(fmt.Errorf("agent %s still running after %s\n%s", a.ID, timeout, a.LogTail(20)), a.Kill())
	}
	return cmd.ProcessState.ExitCode(), nil
}

// LogTail returns the last n lines of the agent's log.
func (a *Agent) LogTail(n int) string {
	return tailFile(a.LogPath, n)
}

// tailFile returns the last n lines of the file at path, or a note saying
// why it cannot be read.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Log returns the agent's whole log.
func (a *Agent) Log() string {
	b, _ := os.ReadFile(a.LogPath)
	return string(b)
}

// PeakRSS returns the current process's peak resident set size in bytes
// (VmHWM in /proc/PID/status). It fails when the process is not running.
func (a *Agent) PeakRSS() (int64, error) { return a.procStatusBytes("VmHWM", "peak RSS") }

// RSS returns the current process's resident set size in bytes (VmRSS).
func (a *Agent) RSS() (int64, error) { return a.procStatusBytes("VmRSS", "RSS") }

// procStatusBytes reads a "Field:  12345 kB" line of /proc/PID/status.
func (a *Agent) procStatusBytes(field, what string) (int64, error) {
	if !a.Running() {
		return 0, fmt.Errorf("%s of %s: it is not running", what, a.ID)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", a.Pid()))
	if err != nil {
		return 0, fmt.Errorf("%s of %s: %w", what, a.ID, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), field+":")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s of %s: parse %q: %w", what, a.ID, sc.Text(), err)
		}
		return kb * 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("%s of %s: %w", what, a.ID, err)
	}
	return 0, fmt.Errorf("%s of %s: no %s line in /proc/%d/status", what, a.ID, field, a.Pid())
}

package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/internal/devcluster"
)

// Agent is one `geocursor agent` process running in its host's namespace,
// and everything needed to start it again.
type Agent struct {
	ID       string
	Host     *Host
	HTTPAddr string
	RaftAddr string
	// Dir holds the config, log and history; DataDir is the Raft state.
	Dir, DataDir, ConfigPath, LogPath, HistoryPath string

	binary string
	env    []string
	client *http.Client

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	paused  bool
	exitErr error
}

// agentPorts are the same in every namespace: each peer has its own IP.
const (
	agentHTTPPort = 8470
	agentRaftPort = 8471
)

func newAgent(id string, h *Host, dir, binary, hcl string, env []string) (*Agent, error) {
	a := &Agent{
		ID:       id,
		Host:     h,
		HTTPAddr: fmt.Sprintf("%s:%d", h.IP, agentHTTPPort),
		RaftAddr: fmt.Sprintf("%s:%d", h.IP, agentRaftPort),
		Dir:      filepath.Join(dir, id),
		binary:   binary,
		env:      env,
		client:   &http.Client{Timeout: 2 * time.Second},
	}
	a.DataDir = filepath.Join(a.Dir, "data")
	a.ConfigPath = filepath.Join(a.Dir, "agent.hcl")
	a.LogPath = filepath.Join(a.Dir, "agent.log")
	a.HistoryPath = filepath.Join(a.Dir, "history.jsonl")
	if err := os.MkdirAll(a.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", a.Dir, err)
	}
	conf := fmt.Sprintf("node_id   = %q\ndata_dir  = %q\nhttp_addr = %q\nraft_addr = %q\n\n%s\n",
		a.ID, a.DataDir, a.HTTPAddr, a.RaftAddr, hcl)
	if err := os.WriteFile(a.ConfigPath, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", a.ConfigPath, err)
	}
	return a, nil
}

// Start runs the agent in its namespace, with extra flags (e.g. -join) for
// this start only. Its output is appended to LogPath, its commands to
// HistoryPath. The process is killed if the test process dies.
func (a *Agent) Start(extra ...string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd != nil {
		select {
		case <-a.done:
		default:
			return fmt.Errorf("start %s: it is still running (pid %d)", a.ID, a.cmd.Process.Pid)
		}
	}
	logf, err := os.OpenFile(a.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open %s: %w", a.LogPath, err)
	}
	defer logf.Close() // the child has its own descriptor
	args := append([]string{"netns", "exec", a.Host.NS, a.binary, "agent", "-config", a.ConfigPath}, extra...)
	fmt.Fprintf(logf, "=== %s chaos: ip %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	// `ip netns exec` enters the namespace and execs the agent: the
	// process started here is the agent itself, so signals reach it.
	cmd := exec.Command("ip", args...)
	cmd.Env = append(devcluster.EnvironWithoutGeocursor(), a.env...)
	cmd.Env = append(cmd.Env, "GEOCURSOR_HISTORY_FILE="+a.HistoryPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", a.ID, err)
	}
	done := make(chan struct{})
	a.cmd, a.done, a.paused, a.exitErr = cmd, done, false, nil
	devcluster.WatchExit(cmd, done, func(err error) {
		a.mu.Lock()
		a.exitErr = err
		a.mu.Unlock()
	})
	return nil
}

// Running reports whether the process is alive (it may be paused).
func (a *Agent) Running() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return false
	}
	select {
	case <-a.done:
		return false
	default:
		return true
	}
}

// Paused reports whether the process is stopped by SIGSTOP.
func (a *Agent) Paused() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.paused
}

// ExitState describes how the last process ended.
func (a *Agent) ExitState() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.cmd == nil:
		return "never started"
	case a.cmd.ProcessState == nil:
		return "running"
	}
	return a.cmd.ProcessState.String()
}

// Kill sends SIGKILL and waits for the process to end.
func (a *Agent) Kill() error {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.paused = false
	a.mu.Unlock()
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
	select {
	case <-done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("kill %s: still running 10s after SIGKILL", a.ID)
	}
}

// Stop sends SIGTERM (after SIGCONT, in case it is paused) and waits up to
// timeout for a clean exit, then kills it.
func (a *Agent) Stop(timeout time.Duration) error {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	default:
	}
	_ = a.Signal(syscall.SIGCONT)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop %s: %w", a.ID, err)
	}
	select {
	case <-done:
		a.mu.Lock()
		err := a.exitErr
		a.mu.Unlock()
		if err != nil {
			return fmt.Errorf("agent %s exited with %v after SIGTERM", a.ID, err)
		}
		return nil
	case <-time.After(timeout):
		kerr := a.Kill()
		return errors.Join(fmt.Errorf("agent %s did not exit within %s of SIGTERM", a.ID, timeout), kerr)
	}
}

// Signal sends sig to the process; SIGSTOP and SIGCONT are tracked for
// Paused.
func (a *Agent) Signal(sig syscall.Signal) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return fmt.Errorf("signal %s to %s: not started", sig, a.ID)
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

// Wipe deletes the agent's Raft state. The agent must not be running.
func (a *Agent) Wipe() error {
	if a.Running() {
		return fmt.Errorf("wipe %s: it is running", a.ID)
	}
	if err := os.RemoveAll(a.DataDir); err != nil {
		return fmt.Errorf("wipe %s: %w", a.ID, err)
	}
	return nil
}

// Status fetches GET /v1/status.
func (a *Agent) Status(ctx context.Context) (api.Status, error) {
	var st api.Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+a.HTTPAddr+"/v1/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return st, fmt.Errorf("status of %s: %w", a.ID, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return st, fmt.Errorf("status of %s: %w", a.ID, err)
	}
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("status of %s: HTTP %d: %s", a.ID, resp.StatusCode, strings.TrimSpace(string(b)))
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("decode status of %s: %w", a.ID, err)
	}
	return st, nil
}

// post sends a JSON body to path and returns the answer's status and body.
func (a *Agent) post(ctx context.Context, timeout time.Duration, path string, in any) (int, []byte, error) {
	body, err := json.Marshal(in)
	if err != nil {
		return 0, nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+a.HTTPAddr+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("POST %s on %s: %w", path, a.ID, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, err
}

// LogTail returns the last n lines of the agent's log.
func (a *Agent) LogTail(n int) string {
	return devcluster.TailFile(a.LogPath, n)
}

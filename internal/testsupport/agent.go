package testsupport

// Helpers that run real geocursor agents as child processes on loopback
// ports, for system tests that check the cluster from the outside.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/geocursor/geocursor/cluster"
	"github.com/geocursor/geocursor/fsm"
)

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// BuildBinary builds ./cmd/geocursor once per test process and returns the
// path of the binary. The binary lives in a temporary directory that is not
// removed (it is shared by every test of the process; the OS's temp cleaner
// owns it).
func BuildBinary(tb testing.TB) string {
	tb.Helper()
	buildOnce.Do(func() {
		root, err := ModuleRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "geocursor-bin-")
		if err != nil {
			buildErr = fmt.Errorf("create build dir: %w", err)
			return
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			buildErr = fmt.Errorf("chmod build dir: %w", err)
			return
		}
		out := filepath.Join(dir, "geocursor")
		cmd := exec.Command("go", "build", "-o", out, "./cmd/geocursor")
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/geocursor: %v\n%s", err, b)
			return
		}
		buildPath = out
	})
	if buildErr != nil {
		tb.Fatalf("build geocursor: %v", buildErr)
	}
	return buildPath
}

// ModuleRoot walks up from the working directory to the directory that
// holds go.mod.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find module root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find module root: no go.mod above the working directory")
		}
		dir = parent
	}
}

// TempDir makes a directory under os.TempDir that is removed when the test
// ends. Register it before starting agents in it, so that it is removed
// after they are killed.
func TempDir(tb testing.TB, pattern string) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		tb.Fatalf("create temp dir: %v", err)
	}
	tb.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			tb.Logf("remove %s: %v", dir, err)
		}
	})
	return dir
}

var (
	portsMu sync.Mutex
	// portsGiven keeps this process from handing out one port twice, e.g.
	// when a port is freed and the kernel offers it again at once.
	portsGiven = map[int]bool{}
)

// FreeAddr returns a loopback address whose port was free a moment ago:
// the kernel picks it for a listener on 127.0.0.1:0 that is closed at once.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("find a free port: %v", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !portsGiven[port] {
			portsGiven[port] = true
			return fmt.Sprintf("127.0.0.1:%d", port)
		}
	}
	tb.Fatalf("find a free port: the kernel keeps offering ports already handed out")
	return ""
}

// AgentSpec says how to start one agent.
type AgentSpec struct {
	NodeID string
	// Join are HTTP addresses passed as -join on the first start only.
	Join []string
	// ExtraHCL is appended to the generated config file (which sets only
	// node_id, data_dir, http_addr and raft_addr), e.g. join_timeout or
	// lease, source, tracking and raft blocks.
	ExtraHCL string
	// Env is added to the environment, which has no GEOCURSOR_* variables
	// of the test process.
	Env []string
	// Args are extra agent flags, passed on every start (put -join here to
	// pass it on restarts too).
	Args []string
}

// Agent is one agent process and everything needed to start it again.
type Agent struct {
	ID, HTTPAddr, RaftAddr, DataDir, ConfigPath, LogPath string
	// Cmd is the current process (a new one after Restart).
	Cmd *exec.Cmd

	spec   AgentSpec
	binary string
	client *http.Client

	mu      sync.Mutex
	done    chan struct{} // closed when the current process has exited
	waitErr error         // set before done is closed
}

// StartAgent writes a config file for spec in a new directory under dir
// and starts the agent with free loopback ports, its stdout and stderr
// appended to LogPath. The process is killed when the test ends, and on
// failure the tail of its log is printed.
func StartAgent(tb testing.TB, dir string, spec AgentSpec) *Agent {
	tb.Helper()
	if spec.NodeID == "" {
		tb.Fatalf("StartAgent: AgentSpec.NodeID is required")
	}
	agentDir := filepath.Join(dir, spec.NodeID)
	for i := 2; ; i++ {
		if _, err := os.Stat(agentDir); errors.Is(err, os.ErrNotExist) {
			break
		}
		agentDir = filepath.Join(dir, fmt.Sprintf("%s-%d", spec.NodeID, i))
	}
	if err := os.MkdirAll(agentDir, 0o755); err != nil {
		tb.Fatalf("create agent dir: %v", err)
	}
	a := &Agent{
		ID:         spec.NodeID,
		HTTPAddr:   FreeAddr(tb),
		RaftAddr:   FreeAddr(tb),
		DataDir:    filepath.Join(agentDir, "data"),
		ConfigPath: filepath.Join(agentDir, "agent.hcl"),
		LogPath:    filepath.Join(agentDir, "agent.log"),
		spec:       spec,
		binary:     BuildBinary(tb),
		client:     &http.Client{Timeout: 5 * time.Second},
	}
	conf := fmt.Sprintf("node_id   = %q\ndata_dir  = %q\nhttp_addr = %q\nraft_addr = %q\n\n%s\n",
		a.ID, a.DataDir, a.HTTPAddr, a.RaftAddr, spec.ExtraHCL)
	if err := os.WriteFile(a.ConfigPath, []byte(conf), 0o644); err != nil {
		tb.Fatalf("write agent config: %v", err)
	}
	tb.Cleanup(func() {
		a.kill()
		if tb.Failed() {
			tb.Logf("--- %s: last lines of %s ---\n%s", a.ID, a.LogPath, a.LogTail(40))
		}
	})
	var join []string
	if len(spec.Join) > 0 {
		join = []string{"-join", strings.Join(spec.Join, ",")}
	}
	a.start(tb, join)
	return a
}

func (a *Agent) start(tb testing.TB, extra []string) {
	tb.Helper()
	args := append([]string{"agent", "-config", a.ConfigPath}, a.spec.Args...)
	args = append(args, extra...)
	logf, err := os.OpenFile(a.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		tb.Fatalf("open agent log: %v", err)
	}
	defer logf.Close() // the child has its own descriptor
	fmt.Fprintf(logf, "=== %s: geocursor %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))

	cmd := exec.Command(a.binary, args...)
	cmd.Env = append(environWithoutGeocursor(), a.spec.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start agent %s: %v", a.ID, err)
	}
	done := make(chan struct{})
	a.mu.Lock()
	a.Cmd, a.done, a.waitErr = cmd, done, nil
	a.mu.Unlock()
	go func() {
		err := cmd.Wait()
		a.mu.Lock()
		a.waitErr = err
		a.mu.Unlock()
		close(done)
	}()
}

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
	return a.Cmd, a.done
}

// Running reports whether the current process has not exited.
func (a *Agent) Running() bool {
	_, done := a.current()
	select {
	case <-done:
		return false
	default:
		return true
	}
}

func (a *Agent) kill() {
	cmd, done := a.current()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Kill sends SIGKILL and waits for the process to end.
func (a *Agent) Kill(tb testing.TB) {
	tb.Helper()
	a.kill()
}

// Stop sends SIGTERM and waits up to 10s for a clean exit (status 0);
// otherwise it kills the process and fails the test.
func (a *Agent) Stop(tb testing.TB) {
	tb.Helper()
	cmd, done := a.current()
	select {
	case <-done:
		tb.Fatalf("stop %s: it is not running (%s)", a.ID, a.exitState())
	default:
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		tb.Fatalf("stop %s: %v", a.ID, err)
	}
	select {
	case <-done:
		if err := a.exitErr(); err != nil {
			tb.Errorf("agent %s exited with %v after SIGTERM, want status 0\n%s", a.ID, err, a.LogTail(20))
		}
	case <-time.After(10 * time.Second):
		a.kill()
		tb.Fatalf("agent %s did not exit within 10s of SIGTERM\n%s", a.ID, a.LogTail(20))
	}
}

// Restart starts the agent again with the same ports, data dir and config.
// -join is passed only if the spec's Args say so.
func (a *Agent) Restart(tb testing.TB) {
	tb.Helper()
	if a.Running() {
		tb.Fatalf("restart %s: it is still running", a.ID)
	}
	a.start(tb, nil)
}

// RestartWith starts the agent again like Restart, with extra flags added
// for this start only (e.g. -join, to check that it is ignored).
func (a *Agent) RestartWith(tb testing.TB, extra ...string) {
	tb.Helper()
	if a.Running() {
		tb.Fatalf("restart %s: it is still running", a.ID)
	}
	a.start(tb, extra)
}

// Signal sends sig (SIGSTOP, SIGCONT, ...) to the current process.
func (a *Agent) Signal(sig os.Signal) error {
	cmd, _ := a.current()
	if err := cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %s to %s: %w", sig, a.ID, err)
	}
	return nil
}

// exitState describes how the last process ended, for failure messages.
// A clean exit nobody asked for usually means a signal from outside the
// test (the log then says "shutting down" with the signal).
func (a *Agent) exitState() string {
	cmd, done := a.current()
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
// returns its exit status; it fails the test if the process is still
// running then.
func (a *Agent) WaitExit(tb testing.TB, timeout time.Duration) int {
	tb.Helper()
	cmd, done := a.current()
	select {
	case <-done:
	case <-time.After(timeout):
		a.kill()
		tb.Fatalf("agent %s still running after %s\n%s", a.ID, timeout, a.LogTail(20))
	}
	return cmd.ProcessState.ExitCode()
}

// Status fetches GET /v1/status: the decoded document and its raw body.
func (a *Agent) Status(ctx context.Context) (cluster.Status, []byte, error) {
	var st cluster.Status
	body, code, err := a.do(ctx, http.MethodGet, "/v1/status", nil)
	if err != nil {
		return st, body, err
	}
	if code != http.StatusOK {
		return st, body, fmt.Errorf("GET /v1/status on %s: HTTP %d: %s", a.ID, code, bytes.TrimSpace(body))
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, body, fmt.Errorf("decode status of %s: %w", a.ID, err)
	}
	return st, body, nil
}

// WaitReady polls /v1/health/ready until it answers 200.
func (a *Agent) WaitReady(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	WaitFor(tb, timeout, a.ID+" ready", func() (bool, string) {
		if !a.Running() {
			tb.Fatalf("agent %s exited while waiting for it to be ready (%s)\n%s", a.ID, a.exitState(), a.LogTail(20))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		body, code, err := a.do(ctx, http.MethodGet, "/v1/health/ready", nil)
		if err != nil {
			return false, err.Error()
		}
		return code == http.StatusOK, fmt.Sprintf("HTTP %d: %s", code, bytes.TrimSpace(body))
	})
}

// WaitUp polls /v1/health until it answers 200: the process has opened its
// stores and its Raft and HTTP ports.
func (a *Agent) WaitUp(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	WaitFor(tb, timeout, a.ID+" answering /v1/health", func() (bool, string) {
		if !a.Running() {
			tb.Fatalf("agent %s exited while waiting for it to start (%s)\n%s", a.ID, a.exitState(), a.LogTail(20))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		body, code, err := a.do(ctx, http.MethodGet, "/v1/health", nil)
		if err != nil {
			return false, err.Error()
		}
		return code == http.StatusOK, fmt.Sprintf("HTTP %d: %s", code, bytes.TrimSpace(body))
	})
}

// LeaseAnswer is the answer of POST /v1/lease/{op}.
type LeaseAnswer struct {
	// HTTPStatus is the answer's status code.
	HTTPStatus int        `json:"-"`
	Lease      fsm.Lease  `json:"lease"`
	Cursor     fsm.Cursor `json:"cursor"`
	// Error is the state machine's refusal (HTTP 200) or the request's
	// failure (other statuses); nil when the command was granted.
	Error *LeaseError `json:"error"`
}

// LeaseError is the error object of a lease answer.
type LeaseError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Lease posts a lease command (acquire, renew or release) to this agent. A
// refusal by the state machine is in the answer's Error with a nil error;
// the error is non-nil when the request failed or the status is not 200.
func (a *Agent) Lease(ctx context.Context, op, node string, token uint64, ttl time.Duration) (LeaseAnswer, error) {
	req := map[string]any{"node": node, "token": token}
	if ttl > 0 {
		req["ttl"] = ttl.String()
	}
	var ans LeaseAnswer
	body, code, err := a.do(ctx, http.MethodPost, "/v1/lease/"+op, req)
	if err != nil {
		return ans, err
	}
	ans.HTTPStatus = code
	if err := json.Unmarshal(body, &ans); err != nil {
		return ans, fmt.Errorf("decode lease answer of %s (HTTP %d): %w: %s", a.ID, code, err, bytes.TrimSpace(body))
	}
	ans.HTTPStatus = code
	if code != http.StatusOK {
		return ans, fmt.Errorf("POST /v1/lease/%s on %s: HTTP %d: %s", op, a.ID, code, bytes.TrimSpace(body))
	}
	return ans, nil
}

// Post sends a JSON body to path and returns the answer's body and status.
func (a *Agent) Post(ctx context.Context, path string, in any) ([]byte, int, error) {
	return a.do(ctx, http.MethodPost, path, in)
}

func (a *Agent) do(ctx context.Context, method, path string, in any) ([]byte, int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, 0, fmt.Errorf("encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+a.HTTPAddr+path, body)
	if err != nil {
		return nil, 0, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("%s %s on %s: %w", method, path, a.ID, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, resp.StatusCode, fmt.Errorf("read answer of %s %s on %s: %w", method, path, a.ID, err)
	}
	return b, resp.StatusCode, nil
}

// LogTail returns the last n lines of the agent's log.
func (a *Agent) LogTail(n int) string {
	b, err := os.ReadFile(a.LogPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", a.LogPath, err)
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

// Cluster is a group of agents started by StartCluster.
type Cluster struct {
	Agents []*Agent
	Dir    string
}

// StartCluster starts n agents named node1..nodeN in a new temp dir: node1
// bootstraps, the others join node1's HTTP address. It returns when every
// node's status shows all n members, each reachable, and the same leader.
func StartCluster(tb testing.TB, n int, extraHCL string, env []string) *Cluster {
	tb.Helper()
	c := &Cluster{Dir: TempDir(tb, "geocursor-cluster-")}
	first := StartAgent(tb, c.Dir, AgentSpec{NodeID: "node1", ExtraHCL: extraHCL, Env: env})
	c.Agents = append(c.Agents, first)
	first.WaitReady(tb, 20*time.Second)
	for i := 2; i <= n; i++ {
		c.Agents = append(c.Agents, StartAgent(tb, c.Dir, AgentSpec{
			NodeID: fmt.Sprintf("node%d", i), Join: []string{first.HTTPAddr}, ExtraHCL: extraHCL, Env: env,
		}))
	}
	c.WaitFormed(tb, 30*time.Second)
	return c
}

// Live returns the agents whose processes are running.
func (c *Cluster) Live() []*Agent {
	var live []*Agent
	for _, a := range c.Agents {
		if a.Running() {
			live = append(live, a)
		}
	}
	return live
}

// Agent returns the agent with node ID id.
func (c *Cluster) Agent(tb testing.TB, id string) *Agent {
	tb.Helper()
	for _, a := range c.Agents {
		if a.ID == id {
			return a
		}
	}
	tb.Fatalf("no agent %s in the cluster", id)
	return nil
}

// WaitFormed waits until every agent runs and its status shows all agents
// as reachable members and one leader that all agree on.
func (c *Cluster) WaitFormed(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	WaitFor(tb, timeout, fmt.Sprintf("all %d agents agree on a leader and see every member reachable", len(c.Agents)), func() (bool, string) {
		leader := ""
		for _, a := range c.Agents {
			if !a.Running() {
				tb.Fatalf("agent %s exited unexpectedly (%s)\n%s", a.ID, a.exitState(), a.LogTail(20))
			}
			st, err := quickStatus(a)
			if err != nil {
				return false, err.Error()
			}
			if detail := membersDetail(st, c.Agents); detail != "" {
				return false, detail
			}
			if st.Leader == nil {
				return false, a.ID + " knows no leader"
			}
			if leader != "" && st.Leader.ID != leader {
				return false, fmt.Sprintf("%s sees leader %s, others %s", a.ID, st.Leader.ID, leader)
			}
			leader = st.Leader.ID
		}
		return true, ""
	})
}

// membersDetail says what is wrong when st does not list exactly the
// agents as reachable members, or "" when it does.
func membersDetail(st cluster.Status, agents []*Agent) string {
	if len(st.Members) != len(agents) {
		return fmt.Sprintf("%s sees %d members, want %d: %+v", st.NodeID, len(st.Members), len(agents), st.Members)
	}
	for _, want := range agents {
		found := false
		for _, m := range st.Members {
			if m.ID == want.ID {
				found = true
				if m.RaftAddr != want.RaftAddr || m.HTTPAddr != want.HTTPAddr || !m.Reachable || !m.Voter {
					return fmt.Sprintf("%s sees member %+v, want voter at raft %s, http %s, reachable", st.NodeID, m, want.RaftAddr, want.HTTPAddr)
				}
			}
		}
		if !found {
			return fmt.Sprintf("%s does not list %s among its members", st.NodeID, want.ID)
		}
	}
	return ""
}

func quickStatus(a *Agent) (cluster.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, _, err := a.Status(ctx)
	return st, err
}

// Leader polls the status of every live agent until all agree on one
// leader that is itself live, and returns it.
func (c *Cluster) Leader(tb testing.TB) *Agent {
	tb.Helper()
	var leader *Agent
	WaitFor(tb, 20*time.Second, "live agents agree on a live leader", func() (bool, string) {
		live := c.Live()
		if len(live) == 0 {
			tb.Fatalf("no agent is running")
		}
		id := ""
		for _, a := range live {
			st, err := quickStatus(a)
			if err != nil {
				return false, err.Error()
			}
			if st.Leader == nil {
				return false, a.ID + " knows no leader"
			}
			if id != "" && st.Leader.ID != id {
				return false, fmt.Sprintf("%s sees leader %s, others %s", a.ID, st.Leader.ID, id)
			}
			id = st.Leader.ID
		}
		for _, a := range live {
			if a.ID == id {
				leader = a
				return true, ""
			}
		}
		return false, fmt.Sprintf("the agreed leader %s is not running", id)
	})
	return leader
}

// Followers returns the live agents other than leader.
func (c *Cluster) Followers(leader *Agent) []*Agent {
	var out []*Agent
	for _, a := range c.Live() {
		if a != leader {
			out = append(out, a)
		}
	}
	return out
}

// WaitFor polls cond every 20ms until it returns true, and fails the test
// with what and cond's last detail if that takes longer than timeout.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s: %s", timeout, what, detail)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

package testsupport

// Helpers that run real geocursor agents as child processes on loopback
// ports, for system tests that check the cluster from the outside. The
// processes are managed by internal/devcluster; these helpers turn its
// errors into test failures and tie every process to the test's lifetime.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/internal/devcluster"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildPath string
	buildErr  error
)

// BuildBinary builds ./cmd/geocursor once per test process and returns the
// path of the binary. The binary is shared by every test of the process, so
// no test can remove it: a package that uses it calls RemoveBinary from its
// TestMain once the tests are done.
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
		buildDir = dir
		if err := os.Chmod(dir, 0o755); err != nil {
			buildErr = fmt.Errorf("chmod build dir: %w", err)
			return
		}
		buildPath, buildErr = devcluster.Build(context.Background(), root, dir)
	})
	if buildErr != nil {
		tb.Fatalf("build geocursor: %v", buildErr)
	}
	return buildPath
}

// RemoveBinary removes what BuildBinary built, if anything. Call it from
// TestMain after m.Run.
func RemoveBinary() error {
	if buildDir == "" {
		return nil
	}
	return os.RemoveAll(buildDir)
}

// ModuleRoot walks up from the working directory to the directory that
// holds go.mod.
func ModuleRoot() (string, error) {
	return devcluster.ModuleRoot()
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

// FreeAddr returns a loopback address whose port was free a moment ago:
// the kernel picks it for a listener on 127.0.0.1:0 that is closed at once.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	addr, err := devcluster.FreeAddr()
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return addr
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

	proc *devcluster.Agent
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
	proc, err := devcluster.NewAgent(BuildBinary(tb), dir, devcluster.AgentSpec{
		NodeID: spec.NodeID, Join: spec.Join, ExtraHCL: spec.ExtraHCL, Env: spec.Env, Args: spec.Args,
	})
	if err != nil {
		tb.Fatalf("%v", err)
	}
	a := adopt(tb, proc)
	a.started(tb, proc.Start())
	return a
}

// adopt wraps an agent that has not started yet and arranges for it to be
// killed when the test ends, with the tail of its log on failure.
func adopt(tb testing.TB, proc *devcluster.Agent) *Agent {
	tb.Helper()
	a := &Agent{
		ID: proc.ID, HTTPAddr: proc.HTTPAddr, RaftAddr: proc.RaftAddr,
		DataDir: proc.DataDir, ConfigPath: proc.ConfigPath, LogPath: proc.LogPath,
		proc: proc,
	}
	tb.Cleanup(func() {
		proc.Kill()
		if tb.Failed() {
			tb.Logf("--- %s: last lines of %s ---\n%s", a.ID, a.LogPath, a.LogTail(40))
		}
	})
	return a
}

// started records the process that a start began, or fails the test.
func (a *Agent) started(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatalf("%v", err)
	}
	a.Cmd = a.proc.Cmd()
}

// Running reports whether the current process has not exited.
func (a *Agent) Running() bool {
	return a.proc.Running()
}

// Kill sends SIGKILL and waits for the process to end.
func (a *Agent) Kill(tb testing.TB) {
	tb.Helper()
	a.proc.Kill()
}

// Stop sends SIGTERM and waits up to 10s for a clean exit (status 0);
// otherwise it kills the process and fails the test.
func (a *Agent) Stop(tb testing.TB) {
	tb.Helper()
	err := a.proc.Stop(10 * time.Second)
	var exit *devcluster.ExitError
	switch {
	case errors.As(err, &exit):
		tb.Errorf("%v", err)
	case err != nil:
		tb.Fatalf("%v", err)
	}
}

// Restart starts the agent again with the same ports, data dir and config.
// -join is passed only if the spec's Args say so.
func (a *Agent) Restart(tb testing.TB) {
	tb.Helper()
	a.started(tb, a.proc.Restart())
}

// RestartWith starts the agent again like Restart, with extra flags added
// for this start only (e.g. -join, to check that it is ignored).
func (a *Agent) RestartWith(tb testing.TB, extra ...string) {
	tb.Helper()
	a.started(tb, a.proc.RestartWith(extra...))
}

// Signal sends sig (SIGSTOP, SIGCONT, ...) to the current process.
func (a *Agent) Signal(sig os.Signal) error {
	return a.proc.Signal(sig)
}

// WaitExit waits up to timeout for the process to exit by itself and
// returns its exit status; it fails the test if the process is still
// running then.
func (a *Agent) WaitExit(tb testing.TB, timeout time.Duration) int {
	tb.Helper()
	code, err := a.proc.WaitExit(timeout)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return code
}

// Status fetches GET /v1/status: the decoded document and its raw body.
func (a *Agent) Status(ctx context.Context) (api.Status, []byte, error) {
	return a.proc.Status(ctx)
}

// WaitReady polls /v1/health/ready until it answers 200.
func (a *Agent) WaitReady(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	if err := a.proc.WaitReady(context.Background(), timeout); err != nil {
		tb.Fatalf("%v", err)
	}
}

// WaitUp polls /v1/health until it answers 200: the process has opened its
// stores and its Raft and HTTP ports.
func (a *Agent) WaitUp(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	if err := a.proc.WaitUp(context.Background(), timeout); err != nil {
		tb.Fatalf("%v", err)
	}
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
	body, code, err := a.proc.Post(ctx, "/v1/lease/"+op, req)
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
	return a.proc.Post(ctx, path, in)
}

// LogTail returns the last n lines of the agent's log.
func (a *Agent) LogTail(n int) string {
	return a.proc.LogTail(n)
}

// Log returns the agent's whole log.
func (a *Agent) Log() string {
	return a.proc.Log()
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
	procs := &devcluster.Cluster{
		Binary:  BuildBinary(tb),
		Dir:     c.Dir,
		OnAgent: func(p *devcluster.Agent) { c.Agents = append(c.Agents, adopt(tb, p)) },
	}
	err := procs.Start(context.Background(), n, extraHCL, env)
	for _, a := range c.Agents {
		a.Cmd = a.proc.Cmd()
	}
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return c
}

// procs is the devcluster view of the agents the test holds now.
func (c *Cluster) procs() *devcluster.Cluster {
	pc := &devcluster.Cluster{Dir: c.Dir}
	for _, a := range c.Agents {
		pc.Agents = append(pc.Agents, a.proc)
	}
	return pc
}

// wrapper returns the agent of c that runs proc.
func (c *Cluster) wrapper(proc *devcluster.Agent) *Agent {
	for _, a := range c.Agents {
		if a.proc == proc {
			return a
		}
	}
	return nil
}

// Live returns the agents whose processes are running.
func (c *Cluster) Live() []*Agent { return c.wrap(c.procs().Live()) }

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
	if err := c.procs().WaitFormed(context.Background(), timeout); err != nil {
		tb.Fatalf("%v", err)
	}
}

// Leader polls the status of every live agent until all agree on one
// leader that is itself live, and returns it.
func (c *Cluster) Leader(tb testing.TB) *Agent {
	tb.Helper()
	proc, err := c.procs().Leader(context.Background(), 20*time.Second)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return c.wrapper(proc)
}

// Followers returns the live agents other than leader.
func (c *Cluster) Followers(leader *Agent) []*Agent {
	var proc *devcluster.Agent
	if leader != nil {
		proc = leader.proc
	}
	return c.wrap(c.procs().Followers(proc))
}

// wrap maps devcluster agents back to the test's agents.
func (c *Cluster) wrap(procs []*devcluster.Agent) []*Agent {
	out := make([]*Agent, 0, len(procs))
	for _, p := range procs {
		out = append(out, c.wrapper(p))
	}
	return out
}

// WaitFor polls cond every 20ms until it returns true, and fails the test
// with what and cond's last detail if that takes longer than timeout.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	tb.Helper()
	err := devcluster.WaitFor(context.Background(), timeout, what, func() (bool, string, error) {
		ok, detail := cond()
		return ok, detail, nil
	})
	if err != nil {
		tb.Fatalf("%v", err)
	}
}

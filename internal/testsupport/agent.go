package testsupport

// Helpers that run real geocursor agents as child processes on loopback
// ports, for system tests that check the cluster from the outside. The
// processes, the waits and the requests to the agents are
// internal/devcluster's; these helpers turn its errors into test failures
// and tie every process to the test's lifetime.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

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
		buildPath, buildErr = devcluster.Build(context.Background(), dir)
	})
	if buildErr != nil {
		tb.Fatalf("build geocursor: %v", buildErr)
	}
	return buildPath
}

// RemoveBinary removes what BuildBinary and BuildRelease built, if
// anything. Call it from TestMain after m.Run.
func RemoveBinary() error {
	err := removeReleases()
	if buildDir == "" {
		return err
	}
	return errors.Join(err, os.RemoveAll(buildDir))
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
type AgentSpec = devcluster.AgentSpec

// Agent is one agent process of a test. The methods that start, stop or
// wait for it take the test and fail it when they fail; the others
// (Status, Lease, Join, Signal, Log, ...) are devcluster.Agent's.
type Agent struct {
	*devcluster.Agent
}

// StartAgent writes a config file for spec in a new directory under dir
// and starts the agent, with free loopback ports unless spec sets them,
// its stdout and stderr appended to LogPath. The process is killed when
// the test ends, and on failure the tail of its log is printed.
func StartAgent(tb testing.TB, dir string, spec AgentSpec) *Agent {
	tb.Helper()
	proc, err := devcluster.NewAgent(BuildBinary(tb), dir, spec)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	a := adopt(tb, proc)
	if err := a.Agent.Start(); err != nil {
		tb.Fatalf("%v", err)
	}
	return a
}

// adopt wraps an agent that has not started yet and arranges for it to be
// killed when the test ends, with the tail of its log on failure.
func adopt(tb testing.TB, proc *devcluster.Agent) *Agent {
	tb.Helper()
	tb.Cleanup(func() {
		if err := proc.Kill(); err != nil {
			tb.Errorf("%v", err)
		}
		if tb.Failed() {
			tb.Logf("--- %s: last lines of %s ---\n%s", proc.ID, proc.LogPath, proc.LogTail(40))
		}
	})
	return &Agent{proc}
}

// Kill sends SIGKILL and waits for the process to end.
func (a *Agent) Kill(tb testing.TB) {
	tb.Helper()
	if err := a.Agent.Kill(); err != nil {
		tb.Fatalf("%v", err)
	}
}

// Stop sends SIGTERM and waits up to 10s for a clean exit (status 0);
// otherwise it kills the process and fails the test.
func (a *Agent) Stop(tb testing.TB) {
	tb.Helper()
	err := a.Agent.Stop(10 * time.Second)
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
	if err := a.Agent.Restart(); err != nil {
		tb.Fatalf("%v", err)
	}
}

// RestartWith starts the agent again like Restart, with extra flags added
// for this start only (e.g. -join, to check that it is ignored).
func (a *Agent) RestartWith(tb testing.TB, extra ...string) {
	tb.Helper()
	if err := a.Agent.RestartWith(extra...); err != nil {
		tb.Fatalf("%v", err)
	}
}

// RestartWithBinary starts the agent again like Restart, running binary
// (another release) from now on.
func (a *Agent) RestartWithBinary(tb testing.TB, binary string) {
	tb.Helper()
	if err := a.Agent.RestartWithBinary(binary); err != nil {
		tb.Fatalf("%v", err)
	}
}

// WaitExit waits up to timeout for the process to exit by itself and
// returns its exit status; it fails the test if the process is still
// running then.
func (a *Agent) WaitExit(tb testing.TB, timeout time.Duration) int {
	tb.Helper()
	code, err := a.Agent.WaitExit(timeout)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return code
}

// WaitReady polls the readiness endpoint until the agent is ready.
func (a *Agent) WaitReady(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	if err := a.Agent.WaitReady(context.Background(), timeout); err != nil {
		tb.Fatalf("%v", err)
	}
}

// WaitUp polls the health endpoint until it answers: the process has
// opened its stores and its Raft and HTTP ports.
func (a *Agent) WaitUp(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	if err := a.Agent.WaitUp(context.Background(), timeout); err != nil {
		tb.Fatalf("%v", err)
	}
}

// Cluster is a group of agents started by StartCluster.
type Cluster struct {
	Agents []*Agent
	Dir    string
	// Security is the cluster's CA and tokens; nil for a plaintext one.
	Security *devcluster.Security

	procs *devcluster.Cluster
}

// StartCluster starts n agents named node1..nodeN in a new temp dir: node1
// bootstraps, the others join node1's HTTP address. It returns when every
// node's status shows all n members, each reachable, and the same leader.
func StartCluster(tb testing.TB, n int, extraHCL string, env []string) *Cluster {
	tb.Helper()
	return startCluster(tb, BuildBinary(tb), n, extraHCL, env, false)
}

// StartSecureCluster is StartCluster with TLS and tokens, as in
// production: a CA of the cluster's own in Dir/tls, a peer certificate per
// agent, and the harness's requests as the operator's.
func StartSecureCluster(tb testing.TB, n int, extraHCL string, env []string) *Cluster {
	tb.Helper()
	return startCluster(tb, BuildBinary(tb), n, extraHCL, env, true)
}

// StartSecureClusterOf is StartSecureCluster with the agents running
// binary, e.g. a previous release's (BuildRelease).
func StartSecureClusterOf(tb testing.TB, binary string, n int, extraHCL string, env []string) *Cluster {
	tb.Helper()
	return startCluster(tb, binary, n, extraHCL, env, true)
}

func startCluster(tb testing.TB, binary string, n int, extraHCL string, env []string, secure bool) *Cluster {
	tb.Helper()
	c := &Cluster{Dir: TempDir(tb, "geocursor-cluster-")}
	if secure {
		sec, err := devcluster.NewSecurity(filepath.Join(c.Dir, "tls"))
		if err != nil {
			tb.Fatalf("%v", err)
		}
		c.Security = sec
	}
	c.procs = &devcluster.Cluster{
		Binary:   binary,
		Dir:      c.Dir,
		Security: c.Security,
		OnAgent:  func(p *devcluster.Agent) { c.Agents = append(c.Agents, adopt(tb, p)) },
	}
	if err := c.procs.Start(context.Background(), n, extraHCL, env); err != nil {
		tb.Fatalf("%v", err)
	}
	return c
}

// Agent returns the agent with node ID id.
func (c *Cluster) Agent(tb testing.TB, id string) *Agent {
	tb.Helper()
	p := c.procs.Agent(id)
	if p == nil {
		tb.Fatalf("no agent %s in the cluster", id)
	}
	return c.of(p)
}

// Live returns the agents whose processes are running.
func (c *Cluster) Live() []*Agent { return c.wrap(c.procs.Live()) }

// WaitFormed waits until every agent runs and its status shows all agents
// as reachable members and one leader that all agree on.
func (c *Cluster) WaitFormed(tb testing.TB, timeout time.Duration) {
	tb.Helper()
	if err := c.procs.WaitFormed(context.Background(), timeout); err != nil {
		tb.Fatalf("%v", err)
	}
}

// Leader polls the status of every live agent until all agree on one
// leader that is itself live, and returns it.
func (c *Cluster) Leader(tb testing.TB) *Agent {
	tb.Helper()
	proc, err := c.procs.Leader(context.Background(), 20*time.Second)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return c.of(proc)
}

// Followers returns the live agents other than leader.
func (c *Cluster) Followers(leader *Agent) []*Agent {
	var proc *devcluster.Agent
	if leader != nil {
		proc = leader.Agent
	}
	return c.wrap(c.procs.Followers(proc))
}

// wrap maps devcluster agents back to the test's agents.
func (c *Cluster) wrap(procs []*devcluster.Agent) []*Agent {
	out := make([]*Agent, 0, len(procs))
	for _, p := range procs {
		out = append(out, c.of(p))
	}
	return out
}

// of returns the test's agent that is p: procs holds the same agents in
// the same order.
func (c *Cluster) of(p *devcluster.Agent) *Agent {
	return c.Agents[slices.Index(c.procs.Agents, p)]
}

package devcluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/geocursor/geocursor/api"
)

// Cluster is a group of agents named node1..nodeN in one directory. Set
// Binary and Dir (and the optional fields), then call Start. A Cluster of
// agents started otherwise (set Agents) serves for the waits and lookups.
type Cluster struct {
	Binary string
	Dir    string
	// Addrs, if set, returns the HTTP and Raft addresses of node i
	// (1-based); by default every agent gets free loopback ports.
	Addrs func(i int) (httpAddr, raftAddr string, err error)
	// Args are extra agent flags, passed to every agent on every start.
	Args []string
	// Supervised is AgentSpec.Supervised for every agent.
	Supervised bool
	// OnAgent, if set, is called with each agent after its config is
	// written and before it starts, e.g. to arrange its cleanup.
	OnAgent func(*Agent)
	// PollEvery is how often WaitFormed and Leader ask again; 0 means
	// WaitFor's interval.
	PollEvery time.Duration
	// Security, if set, is every agent's AgentSpec.Security.
	Security *Security

	// Agents are the agents in start order (node1 first).
	Agents []*Agent
}

// Start starts n agents: node1 bootstraps, the others join node1's HTTP
// address. It returns when every node's status shows all n members, each
// reachable, and the same leader. On failure the agents already started
// keep running: call Kill or Close.
func (c *Cluster) Start(ctx context.Context, n int, extraHCL string, env []string) error {
	if n < 1 {
		return fmt.Errorf("start cluster: n must be at least 1, got %d", n)
	}
	for i := 1; i <= n; i++ {
		spec := AgentSpec{NodeID: fmt.Sprintf("node%d", i), ExtraHCL: extraHCL, Env: env, Args: c.Args, Supervised: c.Supervised, Security: c.Security}
		if i > 1 {
			spec.Join = []string{c.Agents[0].HTTPAddr}
		}
		if c.Addrs != nil {
			var err error
			if spec.HTTPAddr, spec.RaftAddr, err = c.Addrs(i); err != nil {
				return fmt.Errorf("addresses of %s: %w", spec.NodeID, err)
			}
		}
		a, err := NewAgent(c.Binary, c.Dir, spec)
		if err != nil {
			return err
		}
		c.Agents = append(c.Agents, a)
		if c.OnAgent != nil {
			c.OnAgent(a)
		}
		if err := a.Start(); err != nil {
			return err
		}
		if i == 1 {
			if err := a.WaitLeading(ctx, 20*time.Second); err != nil {
				return err
			}
		}
	}
	return c.WaitFormed(ctx, 30*time.Second)
}

// Agent returns the agent with node ID id, or nil.
func (c *Cluster) Agent(id string) *Agent {
	for _, a := range c.Agents {
		if a.ID == id {
			return a
		}
	}
	return nil
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

// answering returns the live agents that are not paused: those that can
// answer a request. Asking a paused one only waits out the timeout.
func (c *Cluster) answering() []*Agent {
	var out []*Agent
	for _, a := range c.Live() {
		if !a.Paused() {
			out = append(out, a)
		}
	}
	return out
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

// WaitFormed waits until every agent runs and its status shows all agents
// as reachable members and one leader that all agree on. It fails at once
// if an agent exits.
func (c *Cluster) WaitFormed(ctx context.Context, timeout time.Duration) error {
	what := fmt.Sprintf("all %d agents agree on a leader and see every member reachable", len(c.Agents))
	return c.wait(ctx, timeout, what, func() (bool, string, error) {
		leader := ""
		for _, a := range c.Agents {
			if !a.Running() {
				return false, "", fmt.Errorf("agent %s exited unexpectedly (%s)\n%s", a.ID, a.ExitState(), a.LogTail(20))
			}
			st, err := c.status(ctx, a)
			if err != nil {
				return false, err.Error(), nil
			}
			if detail := membersDetail(st, c.Agents); detail != "" {
				return false, detail, nil
			}
			if st.Leader == nil {
				return false, a.ID + " knows no leader", nil
			}
			if leader != "" && st.Leader.ID != leader {
				return false, fmt.Sprintf("%s sees leader %s, others %s", a.ID, st.Leader.ID, leader), nil
			}
			leader = st.Leader.ID
		}
		return true, "", nil
	})
}

// membersDetail says what is wrong when st does not list exactly the
// agents as reachable members, or "" when it does.
func membersDetail(st api.Status, agents []*Agent) string {
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

// status asks a for its status, for at most 3s (less if the agent's
// RequestTimeout is shorter).
func (c *Cluster) status(ctx context.Context, a *Agent) (api.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	return a.Status(ctx)
}

// wait is WaitEvery at PollEvery.
func (c *Cluster) wait(ctx context.Context, timeout time.Duration, what string, cond func() (bool, string, error)) error {
	every := c.PollEvery
	if every <= 0 {
		every = pollEvery
	}
	return WaitEvery(ctx, timeout, every, what, cond)
}

// Leader polls the status of every live agent that is not paused, for at
// most timeout, until all agree on one leader that is one of them, and
// returns it.
func (c *Cluster) Leader(ctx context.Context, timeout time.Duration) (*Agent, error) {
	var leader *Agent
	err := c.wait(ctx, timeout, "live agents agree on a live leader", func() (bool, string, error) {
		agents := c.answering()
		if len(agents) == 0 {
			return false, "", errors.New("no agent is running and not paused")
		}
		id := ""
		for _, a := range agents {
			st, err := c.status(ctx, a)
			if err != nil {
				return false, err.Error(), nil
			}
			if st.Leader == nil {
				return false, a.ID + " knows no leader", nil
			}
			if id != "" && st.Leader.ID != id {
				return false, fmt.Sprintf("%s sees leader %s, others %s", a.ID, st.Leader.ID, id), nil
			}
			id = st.Leader.ID
		}
		for _, a := range agents {
			if a.ID == id {
				leader = a
				return true, "", nil
			}
		}
		return false, fmt.Sprintf("the agreed leader %s is not running or paused", id), nil
	})
	return leader, err
}

// Holder returns the agent that holds the lease, with the status that
// shows it; nil when no live, unpaused agent shows the lease held. Every
// agent is asked: a lagging replica may not show a grant yet, and between
// batches the lease is free for most of the time, so the holder with the
// newest token any of them shows wins.
func (c *Cluster) Holder(ctx context.Context) (*Agent, api.Status, error) {
	var (
		errs       []error
		best       api.Status
		holder     *Agent
		answered   bool
		lastStatus api.Status
	)
	for _, a := range c.answering() {
		st, err := c.status(ctx, a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		answered, lastStatus = true, st
		if st.Lease.Holder == nil || (holder != nil && st.Lease.Token <= best.Lease.Token) {
			continue
		}
		h := c.Agent(*st.Lease.Holder)
		if h == nil {
			return nil, st, fmt.Errorf("%s names lease holder %q, which is not one of this cluster's agents", a.ID, *st.Lease.Holder)
		}
		holder, best = h, st
	}
	switch {
	case holder != nil:
		return holder, best, nil
	case answered:
		return nil, lastStatus, nil
	case len(errs) == 0:
		return nil, api.Status{}, errors.New("lease holder: no agent is running and not paused")
	}
	return nil, api.Status{}, fmt.Errorf("lease holder: no agent answered: %w", errors.Join(errs...))
}

// Close stops every running agent with SIGTERM, all at once, and waits up
// to 10s for each; agents that do not exit in time are killed. It returns
// what went wrong, if anything.
func (c *Cluster) Close() error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, a := range c.Live() {
		wg.Go(func() {
			if err := a.Stop(10 * time.Second); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

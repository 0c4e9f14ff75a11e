package chaos

import (
	"fmt"
	"time"

	"github.com/geocursor/geocursor/internal/devcluster"
)

// Agent is one `geocursor agent` process running in its host's network
// namespace: a devcluster agent started through `ip netns exec`, with the
// commands it issues recorded in HistoryPath. It is killed if the test
// process dies.
type Agent struct {
	*devcluster.Agent
	Host *Host
}

// agentPorts are the same in every namespace: each peer has its own IP.
const (
	agentHTTPPort = 8470
	agentRaftPort = 8471
)

// newAgent prepares agent id on host h in dir/id; join, if set, is passed
// as -join on its first start.
func newAgent(id string, h *Host, dir, binary, hcl string, env, join []string, sec *devcluster.Security) (*Agent, error) {
	a, err := devcluster.NewAgent(binary, dir, devcluster.AgentSpec{
		NodeID:   id,
		HTTPAddr: fmt.Sprintf("%s:%d", h.IP, agentHTTPPort),
		RaftAddr: fmt.Sprintf("%s:%d", h.IP, agentRaftPort),
		Join:     join,
		ExtraHCL: hcl,
		Env:      env,
		// `ip netns exec` enters the namespace and execs the agent: the
		// process started is the agent itself, so signals reach it.
		Wrapper:        []string{"ip", "netns", "exec", h.NS},
		History:        true,
		Supervised:     true,
		RequestTimeout: requestTimeout,
		Security:       sec,
	})
	if err != nil {
		return nil, err
	}
	return &Agent{Agent: a, Host: h}, nil
}

// requestTimeout bounds each request to an agent, a status request
// included: one that takes longer is paused, cut off or overloaded, which
// the waits report as they go on.
const requestTimeout = 2 * time.Second

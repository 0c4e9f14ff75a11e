package main

import (
	"fmt"
	"sync"
	"time"

	gometrics "github.com/hashicorp/go-metrics/compat"
	gometricsprom "github.com/hashicorp/go-metrics/compat/prometheus"
	"github.com/prometheus/client_golang/prometheus"
)

// newMetrics returns the registry the node serves at GET /v1/metrics, with
// the build's description and Raft's own metrics in it; the node and the
// cursor add theirs.
func newMetrics() (*prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	b := buildInfo()
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "geocursor_build_info",
		Help: "Always 1; its labels say what this agent was built from: the release (version), the commit and the Go version.",
		ConstLabels: prometheus.Labels{
			"version": b.Version, "commit": b.Commit, "go_version": b.GoVersion,
		},
	})
	build.Set(1)
	if err := reg.Register(build); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	if err := exportRaftMetrics(reg); err != nil {
		return nil, err
	}
	return reg, nil
}

// raftMetricsOnce guards the one global of the process: see
// exportRaftMetrics.
var raftMetricsOnce sync.Once

// exportRaftMetrics sends hashicorp/raft's own metrics (commit and apply
// times, replication, elections, raft-boltdb's store times) to reg, under
// geocursor_raft_* as go-metrics names them (e.g.
// geocursor_raft_commitTime, a summary in milliseconds).
//
// Raft reports them through go-metrics' package-level functions, which
// write to one global sink per process: there is no way to hand a raft.Raft
// a sink of its own. So the sink is installed once, here, in the agent
// command, which runs one node per process; a library (package cluster,
// whose tests run many nodes in one process) must not touch it. The
// compat packages route to the go-metrics module raft itself was built
// against (armon/go-metrics, or hashicorp/go-metrics with the
// hashicorpmetrics build tag), so the sink is the one raft writes to.
func exportRaftMetrics(reg prometheus.Registerer) error {
	var err error
	raftMetricsOnce.Do(func() {
		var sink *gometricsprom.PrometheusSink
		sink, err = gometricsprom.NewPrometheusSinkFrom(gometricsprom.PrometheusOpts{
			Name:       "geocursor_raft_metrics_sink",
			Registerer: reg,
			// A series raft stops updating (a peer removed) goes after a
			// minute; the declared ones stay.
			Expiration:         time.Minute,
			SummaryDefinitions: raftSummaries,
			CounterDefinitions: raftCounters,
			GaugeDefinitions:   raftGauges,
		})
		if err != nil {
			err = fmt.Errorf("register raft's metrics: %w", err)
			return
		}
		cfg := gometrics.DefaultConfig("geocursor")
		cfg.EnableHostname = false       // the scrape's instance label says which node
		cfg.EnableRuntimeMetrics = false // the Go collector's go_* cover them
		if _, err = gometrics.NewGlobal(cfg, sink); err != nil {
			err = fmt.Errorf("install raft's metrics sink: %w", err)
		}
	})
	return err
}

// The Raft metrics worth a HELP of their own, declared so that they exist
// from the start (the others appear once raft reports them, with their
// name as their HELP). Times are in milliseconds, as go-metrics measures
// them.
var (
	raftSummaries = []gometricsprom.SummaryDefinition{
		{Name: raftKey("commitTime"), Help: "Milliseconds from the leader dispatching a Raft log entry to its commit by a quorum (on the leader)."},
		{Name: raftKey("leader", "dispatchLog"), Help: "Milliseconds the leader takes to write new entries to its own Raft log (its disk)."},
		{Name: raftKey("leader", "lastContact"), Help: "Milliseconds since the leader last heard from a follower, sampled for every follower at each lease check."},
		{Name: raftKey("fsm", "apply"), Help: "Milliseconds to apply one committed entry to the state machine."},
		{Name: raftKey("rpc", "appendEntries"), Help: "Milliseconds a follower takes to handle one AppendEntries RPC from the leader."},
	}
	raftCounters = []gometricsprom.CounterDefinition{
		{Name: raftKey("apply"), Help: "Entries this node proposed to the Raft log as leader."},
		{Name: raftKey("state", "candidate"), Help: "Elections this node started."},
		{Name: raftKey("state", "leader"), Help: "Times this node became the Raft leader."},
		{Name: raftKey("transition", "heartbeat_timeout"), Help: "Times this follower heard from no leader within raft.heartbeat_timeout and stood for election."},
	}
	raftGauges = []gometricsprom.GaugeDefinition{
		{Name: raftKey("peers"), Help: "Servers in the Raft configuration, as the leader last counted them (leader only)."},
	}
)

func raftKey(parts ...string) []string { return append([]string{"geocursor", "raft"}, parts...) }

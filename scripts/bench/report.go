package main

import "github.com/geocursor/geocursor/scripts/internal/harness"

// report is the JSON document the benchmark prints.
type report struct {
	Command string    `json:"command"`
	Machine machine   `json:"machine"`
	Config  runConfig `json:"config"`

	Drain    *drainReport    `json:"drain,omitempty"`
	Lag      *lagReport      `json:"lag,omitempty"`
	Failover *failoverReport `json:"failover,omitempty"`
	// RaftCostPerBatch is per phase (drain, lag), from the agents' logs.
	RaftCostPerBatch map[string]raftCost `json:"raft_cost_per_batch,omitempty"`
	// PeakRSSMB is the highest VmHWM of each node's processes (a killed
	// node is sampled just before each kill), in MiB.
	PeakRSSMB map[string]float64 `json:"peak_rss_mb,omitempty"`
	// ExactlyOnce compares the whole source with the whole tracking
	// database after every run.
	ExactlyOnce *harness.Outcome `json:"exactly_once,omitempty"`

	// Targets lists every figure that has a target, with its verdict.
	Targets    []target `json:"targets"`
	TargetsMet bool     `json:"targets_met"`
	ElapsedS   float64  `json:"elapsed_s"`
	Errors     []string `json:"errors,omitempty"`
}

type machine struct {
	CPUs     int    `json:"cpus"`
	MemTotal string `json:"mem_total"`
	Go       string `json:"go"`
	Postgres string `json:"postgres"`
	// LoadAvgStart and LoadAvgEnd are /proc/loadavg's 1, 5 and 15 minute
	// figures: other work on the machine skews every figure.
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
}

type runConfig struct {
	// AgentHCL is the agents' configuration after their addresses; the
	// rest (lease, raft, poll interval) are the defaults.
	AgentHCL string `json:"agent_hcl,omitempty"`
	Durable  bool   `json:"postgres_durable"`
}

// target is one figure next to its target.
type target struct {
	Figure string  `json:"figure"`
	Value  float64 `json:"value"`
	Target string  `json:"target"`
	Met    bool    `json:"met"`
}

func (r *report) check(figure string, value float64, want string, met bool) {
	r.Targets = append(r.Targets, target{Figure: figure, Value: round3(value), Target: want, Met: met})
}

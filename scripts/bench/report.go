package main

import "github.com/geocursor/geocursor/scripts/internal/harness"

// report is the JSON document the benchmark prints.
type report struct {
	Command string    `json:"command"`
	Machine machine   `json:"machine"`
	Config  runConfig `json:"config"`

	Drain *drainReport `json:"drain,omitempty"`
	Lag   *lagReport   `json:"lag,omitempty"`
	// LagSteady is the lag and the Raft writes at issue 13's steady
	// rates (200 and 5,000 events/s).
	LagSteady []*lagReport    `json:"lag_steady,omitempty"`
	Failover  *failoverReport `json:"failover,omitempty"`
	Delivery  *deliveryReport `json:"delivery,omitempty"`
	// Gaps is the drain with 10,000 open gaps beside the one without.
	Gaps *gapsReport `json:"gaps,omitempty"`
	// Flat is the 10M-event drain, tenth by tenth.
	Flat *flatReport `json:"flat,omitempty"`
	// Strangers is what a stranger's idle connections cost (issue 18).
	Strangers *strangersReport `json:"strangers,omitempty"`
	// RaftCostPerBatch is per phase (drain, lag), from the agents' logs.
	RaftCostPerBatch map[string]raftCost `json:"raft_cost_per_batch,omitempty"`
	// PeakRSSMB is the highest VmHWM of each node's processes (a killed
	// node is sampled just before each kill), in MiB.
	PeakRSSMB map[string]float64 `json:"peak_rss_mb,omitempty"`
	// ExactlyOnce compares the whole source with the whole tracking
	// database after every run.
	ExactlyOnce *harness.Outcome `json:"exactly_once,omitempty"`

	// Security says how the agents ran: tls (TLS and tokens) or plain. With
	// -security both, Variants holds each variant's parts (the top-level
	// parts are the last variant's, tls) and SecurityOverhead compares them.
	Security         []string                  `json:"security"`
	Variants         map[string]*variantReport `json:"variants,omitempty"`
	SecurityOverhead *securityOverhead         `json:"security_overhead,omitempty"`

	// Targets lists every figure that has a target, with its verdict.
	Targets []target `json:"targets"`
	// variant names the figures of one variant when several run.
	variant    string
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
	if r.variant != "" {
		figure = r.variant + ": " + figure
	}
	r.Targets = append(r.Targets, target{Figure: figure, Value: round3(value), Target: want, Met: met})
}

// variantReport is what one security variant measured.
type variantReport struct {
	Drain            *drainReport        `json:"drain,omitempty"`
	Lag              *lagReport          `json:"lag,omitempty"`
	LagSteady        []*lagReport        `json:"lag_steady,omitempty"`
	Failover         *failoverReport     `json:"failover,omitempty"`
	Delivery         *deliveryReport     `json:"delivery,omitempty"`
	Gaps             *gapsReport         `json:"gaps,omitempty"`
	Flat             *flatReport         `json:"flat,omitempty"`
	RaftCostPerBatch map[string]raftCost `json:"raft_cost_per_batch,omitempty"`
}

// stash moves the parts measured so far into the variant sec.
func (r *report) stash(sec string) {
	if r.Variants == nil {
		r.Variants = map[string]*variantReport{}
	}
	r.Variants[sec] = &variantReport{Drain: r.Drain, Lag: r.Lag, LagSteady: r.LagSteady, Failover: r.Failover, Delivery: r.Delivery, Gaps: r.Gaps, Flat: r.Flat, RaftCostPerBatch: r.RaftCostPerBatch}
	r.RaftCostPerBatch, r.LagSteady = nil, nil
}

// securityOverhead is TLS and tokens against plain, figure by figure:
// each pair is (plain, tls).
type securityOverhead struct {
	RaftAdvanceP50MS     [2]float64 `json:"raft_advance_p50_ms"`
	RaftAdvanceP99MS     [2]float64 `json:"raft_advance_p99_ms"`
	DrainEventsPerS      [2]float64 `json:"drain_events_per_s"`
	LagP50MS             [2]float64 `json:"lag_p50_ms"`
	LagP99MS             [2]float64 `json:"lag_p99_ms"`
	FollowerMedianMS     [2]float64 `json:"failover_follower_holder_median_ms"`
	FollowerMaxMS        [2]float64 `json:"failover_follower_holder_max_ms"`
	LeaderMedianMS       [2]float64 `json:"failover_leader_holder_median_ms"`
	LeaderMaxMS          [2]float64 `json:"failover_leader_holder_max_ms"`
	HolderKillMedianMS   [2]float64 `json:"failover_holder_kill_median_ms"`
	HolderKillMaxMS      [2]float64 `json:"failover_holder_kill_max_ms"`
	LeaderKillGapMS      [2]float64 `json:"failover_leader_kill_gap_median_ms"`
	DrainRatioTLSToPlain float64    `json:"drain_ratio_tls_to_plain"`
}

// compareSecurity fills in SecurityOverhead when both variants ran; the
// Raft cost is that of the lag phase lagPhase.
func (r *report) compareSecurity(lagPhase string) {
	plain, tls := r.Variants[securityPlain], r.Variants[securityTLS]
	if plain == nil || tls == nil {
		return
	}
	o := &securityOverhead{}
	for i, v := range []*variantReport{plain, tls} {
		if c, ok := v.RaftCostPerBatch[lagPhase]; ok {
			o.RaftAdvanceP50MS[i], o.RaftAdvanceP99MS[i] = c.Advance.P50, c.Advance.P99
		}
		if v.Drain != nil {
			o.DrainEventsPerS[i] = v.Drain.Cluster.EventsPerS
		}
		if v.Lag != nil {
			o.LagP50MS[i], o.LagP99MS[i] = v.Lag.Latency.P50, v.Lag.Latency.P99
		}
		if f := v.Failover; f != nil {
			o.FollowerMedianMS[i], o.FollowerMaxMS[i] = f.FollowerHolder.MedianMS, f.FollowerHolder.MaxMS
			o.LeaderMedianMS[i], o.LeaderMaxMS[i] = f.LeaderHolder.MedianMS, f.LeaderHolder.MaxMS
			o.HolderKillMedianMS[i], o.HolderKillMaxMS[i] = f.HolderKill.MedianMS, f.HolderKill.MaxMS
			o.LeaderKillGapMS[i] = f.LeaderKill.MedianGapMS
		}
	}
	if o.DrainEventsPerS[0] > 0 {
		o.DrainRatioTLSToPlain = round3(o.DrainEventsPerS[1] / o.DrainEventsPerS[0])
	}
	r.SecurityOverhead = o
}

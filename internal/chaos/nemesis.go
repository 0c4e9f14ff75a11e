package chaos

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/geocursor/geocursor/internal/devcluster"
)

// Kind names a nemesis: one kind of fault.
type Kind string

// The nemeses. "Holder" is the peer holding the lease when the fault
// begins; "leader" the Raft leader.
const (
	// KillPeer SIGKILLs a random peer and restarts it.
	KillPeer Kind = "kill-peer"
	// KillLeader SIGKILLs the leader and restarts it.
	KillLeader Kind = "kill-leader"
	// KillHolder SIGKILLs the holder and restarts it.
	KillHolder Kind = "kill-holder"
	// PauseHolder SIGSTOPs the holder for longer than its lease, then
	// SIGCONTs it: it wakes up believing it holds the lease.
	PauseHolder Kind = "pause-holder"
	// PauseLeader SIGSTOPs the leader past its election timeout.
	PauseLeader Kind = "pause-leader"
	// PartitionHolder cuts the holder off from every other peer; it still
	// reaches both databases.
	PartitionHolder Kind = "partition-holder"
	// PartitionLeader cuts the leader off from its followers.
	PartitionLeader Kind = "partition-leader"
	// PartitionDB cuts the holder off from the tracking database (its
	// proxy stops forwarding); Raft and the source stay reachable.
	PartitionDB Kind = "partition-db"
	// MajorityLoss cuts every peer off from every other, then heals.
	MajorityLoss Kind = "majority-loss"
	// RestartDB crashes the tracking database and starts it again.
	RestartDB Kind = "restart-db"
	// WipePeer kills a peer, deletes its data directory and starts it
	// again with -join under the same node ID and address.
	WipePeer Kind = "wipe-peer"
)

// Kinds lists every nemesis.
var Kinds = []Kind{KillPeer, KillLeader, KillHolder, PauseHolder, PauseLeader,
	PartitionHolder, PartitionLeader, PartitionDB, MajorityLoss, RestartDB, WipePeer}

// ParseKind returns the Kind named s.
func ParseKind(s string) (Kind, error) {
	for _, k := range Kinds {
		if string(k) == s {
			return k, nil
		}
	}
	var names []string
	for _, k := range Kinds {
		names = append(names, string(k))
	}
	return "", fmt.Errorf("unknown nemesis %q (known: %s)", s, strings.Join(names, ", "))
}

// Fault is one injected fault and what it did.
type Fault struct {
	Kind Kind `json:"kind"`
	// Target is the peer the fault hit ("" for the database or all).
	Target string `json:"target,omitempty"`
	// Holder and Leader are the lease holder and the leader when the
	// fault began.
	Holder string `json:"holder,omitempty"`
	Leader string `json:"leader,omitempty"`
	// Start is when the fault began, Healed when it was undone, Recovered
	// when the group was whole again and a batch had committed.
	Start     time.Time `json:"start"`
	Healed    time.Time `json:"healed"`
	Recovered time.Time `json:"recovered"`
	// Resume is the time from Start to the next batch committed in the
	// tracking database by a peer that the fault did not disable (or by
	// any peer once the fault was healed); 0 if none was seen. A batch
	// the disabled holder had in flight when the fault began does not
	// count.
	Resume time.Duration `json:"resume_ns"`
	// ResumedBy is the peer that committed that batch.
	ResumedBy string `json:"resumed_by,omitempty"`
	// Stall is the longest stretch without a committed batch between
	// Start and Recovered (from Start to the first batch counts too).
	Stall time.Duration `json:"stall_ns"`
	// Note says what happened that is worth knowing.
	Note string `json:"note,omitempty"`
	// Err is set when the fault could not be injected or the group did
	// not recover.
	Err string `json:"error,omitempty"`
}

// everyone stands for "all peers" as a victim.
const everyone = "*"

// DisablesHolder reports whether the fault kept the lease holder it
// found from processing, so that another peer had to take over.
func (f *Fault) DisablesHolder() bool {
	v := f.victim()
	return v != "" && v != everyone
}

// victim is the peer this fault keeps from committing: the holder, or
// everyone for faults that stop all processing (no database, no
// majority); "" if the holder is left alone.
func (f *Fault) victim() string {
	switch f.Kind {
	case KillHolder, PauseHolder, PartitionHolder, PartitionDB:
		return f.Holder
	case RestartDB, MajorityLoss:
		return everyone
	case KillPeer, WipePeer, KillLeader, PauseLeader, PartitionLeader:
		if f.Target == f.Holder {
			return f.Holder
		}
	}
	return ""
}

// Durations of the faults, relative to the lease TTL and Raft's timers
// (heartbeat and election timeouts 500ms by default).
func (c *Cluster) downFor() time.Duration { return time.Second + c.jitter(time.Second) }
func (c *Cluster) pastLease() time.Duration {
	return c.opts.LeaseTTL + time.Second + c.jitter(time.Second)
}
func (c *Cluster) pastElection() time.Duration {
	return 2*time.Second + c.jitter(time.Second)
}

func (c *Cluster) jitter(d time.Duration) time.Duration {
	return time.Duration(c.rng.Int64N(int64(d)))
}

// recoverTimeout bounds the wait for a healed group to be whole and
// processing again.
const recoverTimeout = 45 * time.Second

// Inject runs one fault of kind: it finds the target, breaks it, waits,
// heals it, and waits until the group has recovered (every member
// reachable, one leader, a batch committed after the heal). The fault is
// recorded in c.Faults also when it fails.
func (c *Cluster) Inject(ctx context.Context, kind Kind) (*Fault, error) {
	f := &Fault{Kind: kind}
	c.mu.Lock()
	c.Faults = append(c.Faults, f)
	c.mu.Unlock()
	err := c.inject(ctx, f)
	if err == nil {
		err = c.recover(ctx, f)
	}
	if err != nil {
		f.Err = err.Error()
		c.opts.Logf("chaos: %s: %v", kind, err)
		// Leave the group whole for whatever comes next.
		if herr := c.healAll(ctx); herr != nil {
			c.opts.Logf("chaos: heal after failed %s: %v", kind, herr)
		}
	}
	if c.opts.OnFault != nil {
		c.opts.OnFault(*f)
	}
	return f, err
}

func (c *Cluster) inject(ctx context.Context, f *Fault) error {
	leader, err := c.Leader(ctx, 20*time.Second)
	if err != nil {
		return err
	}
	f.Leader = leader.ID
	// With little work the lease is free between batches: wait briefly
	// for a holder, which the holder nemeses need.
	holder, _, herr := c.Holder(ctx, 5*time.Second)
	if holder != nil {
		f.Holder = holder.ID
	}
	needHolder := func() (*Agent, error) {
		if holder == nil {
			return nil, fmt.Errorf("no lease holder to target: %w", herr)
		}
		return holder, nil
	}

	switch f.Kind {
	case KillPeer, KillLeader, KillHolder:
		target := leader
		switch f.Kind {
		case KillPeer:
			target = c.Agents[c.rng.IntN(len(c.Agents))]
		case KillHolder:
			if target, err = needHolder(); err != nil {
				return err
			}
		}
		f.Target = target.ID
		c.begin(f)
		if err := target.Kill(); err != nil {
			return err
		}
		sleep(ctx, c.downFor())
		f.Healed = time.Now()
		return target.Restart()

	case PauseHolder, PauseLeader:
		target, d := leader, c.pastElection()
		if f.Kind == PauseHolder {
			if target, err = needHolder(); err != nil {
				return err
			}
			d = c.pastLease()
		}
		f.Target = target.ID
		c.begin(f)
		if err := target.Signal(syscall.SIGSTOP); err != nil {
			return err
		}
		sleep(ctx, d)
		f.Healed = time.Now()
		return target.Signal(syscall.SIGCONT)

	case PartitionHolder, PartitionLeader:
		target := leader
		if f.Kind == PartitionHolder {
			if target, err = needHolder(); err != nil {
				return err
			}
		}
		f.Target = target.ID
		c.begin(f)
		if err := c.Net.Isolate(ctx, target.Host.Index); err != nil {
			return err
		}
		sleep(ctx, c.pastLease())
		f.Healed = time.Now()
		return c.Net.Heal(ctx)

	case PartitionDB:
		target, err := needHolder()
		if err != nil {
			return err
		}
		f.Target = target.ID
		p := c.trkProxies[target.Host.Index-1]
		c.begin(f)
		p.Cut()
		sleep(ctx, c.pastLease()+time.Second)
		f.Healed = time.Now()
		p.Heal()
		return nil

	case MajorityLoss:
		c.begin(f)
		for _, a := range c.Agents {
			if err := c.Net.Isolate(ctx, a.Host.Index); err != nil {
				return err
			}
		}
		sleep(ctx, c.pastLease())
		f.Healed = time.Now()
		return c.Net.Heal(ctx)

	case RestartDB:
		c.begin(f)
		err := c.Tracking.Restart(ctx, c.downFor())
		f.Healed = time.Now()
		return err

	case WipePeer:
		// A wiped peer is a lost disk. Raft survives one at a time: wipe
		// only once every member is a caught-up voter again, or two
		// wipes in a row would be two lost disks of three.
		if err := c.WaitFormed(ctx, recoverTimeout); err != nil {
			return fmt.Errorf("not every member is a caught-up voter before the wipe: %w", err)
		}
		target := c.Agents[c.rng.IntN(len(c.Agents))]
		f.Target = target.ID
		c.begin(f)
		if err := target.Kill(); err != nil {
			return err
		}
		if err := target.Wipe(); err != nil {
			return err
		}
		sleep(ctx, c.downFor())
		f.Healed = time.Now()
		logStart := logSize(target.LogPath)
		if err := target.RestartWith("-join", httpAddrs(c.others(target))); err != nil {
			return err
		}
		// What the rejoin looked like, from the agent's own log.
		err := devcluster.WaitEvery(ctx, 30*time.Second, pollEvery, target.ID+" to rejoin", func() (bool, string, error) {
			line := logLineAfter(target.LogPath, logStart, "joined the group")
			if line != "" {
				f.Note = "rejoin: " + line
				return true, "", nil
			}
			if !target.Running() {
				return false, "exited: " + target.ExitState(), nil
			}
			return false, "no \"joined the group\" in its log yet", nil
		})
		if err != nil {
			f.Note = fmt.Sprintf("rejoin failed: %v; log tail: %s", err, target.LogTail(5))
			return err
		}
		// It was a voter with a log; back without one, it must not vote
		// until it has caught up (cluster.Open).
		if !strings.Contains(f.Note, `"demoted":true`) {
			return fmt.Errorf("%s rejoined without its raft state but was not made a non-voter: %s", target.ID, f.Note)
		}
		return nil
	}
	return fmt.Errorf("unknown nemesis %q", f.Kind)
}

func (c *Cluster) begin(f *Fault) {
	f.Start = time.Now()
	c.opts.Logf("chaos: %s: %s (leader %s, holder %s)", f.Kind, orAll(f.Target), f.Leader, orNone(f.Holder))
}

// recover waits until the group is whole and a batch committed after the
// heal.
func (c *Cluster) recover(ctx context.Context, f *Fault) error {
	if err := c.WaitFormed(ctx, recoverTimeout); err != nil {
		return fmt.Errorf("group did not re-form after %s: %w", f.Kind, err)
	}
	if err := c.monitor.waitCommit(ctx, f.Healed, recoverTimeout); err != nil {
		return fmt.Errorf("processing did not resume after %s: %w", f.Kind, err)
	}
	f.Recovered = time.Now()
	c.opts.Logf("chaos: %s healed after %s, recovered %s later", f.Kind,
		f.Healed.Sub(f.Start).Round(time.Millisecond), f.Recovered.Sub(f.Healed).Round(time.Millisecond))
	return nil
}

// Schedule injects random faults of the given kinds (all if none) until
// the deadline, with a pause of one to three seconds between them. A fault
// the group does not recover from is recorded (Fault.Err) and the schedule
// goes on after healing everything.
func (c *Cluster) Schedule(ctx context.Context, until time.Time, kinds ...Kind) error {
	if len(kinds) == 0 {
		kinds = Kinds
	}
	for time.Now().Before(until) {
		k := kinds[c.rng.IntN(len(kinds))]
		_, _ = c.Inject(ctx, k)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		sleep(ctx, time.Second+c.jitter(2*time.Second))
	}
	return ctx.Err()
}

// Settle lets the load run for d without faults.
func (c *Cluster) Settle(ctx context.Context, d time.Duration) error {
	sleep(ctx, d)
	return ctx.Err()
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

func orAll(s string) string {
	if s == "" {
		return "all"
	}
	return s
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func logSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// logLineAfter returns the first line of the log after offset that
// contains s, or "".
func logLineAfter(path string, offset int64, s string) string {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < offset {
		return ""
	}
	for _, line := range strings.Split(string(b[offset:]), "\n") {
		if strings.Contains(line, s) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// CutTracking cuts agent a off from the tracking database, as PartitionDB
// does, until the returned heal is called.
func (c *Cluster) CutTracking(a *Agent) (heal func()) {
	p := c.trkProxies[a.Host.Index-1]
	p.Cut()
	return p.Heal
}

// CommitsSince returns when batches were seen committed in the tracking
// database after t (the fence row is polled every 20ms).
func (c *Cluster) CommitsSince(t time.Time) []time.Time {
	var out []time.Time
	for _, o := range c.monitor.since(t) {
		out = append(out, o.At)
	}
	return out
}

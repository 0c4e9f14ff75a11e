package linearize

import (
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

const (
	t0  = int64(1_764_000_000_000_000_000)
	ms  = int64(time.Millisecond)
	sec = int64(time.Second)
	ttl = 5 * time.Second
)

// sim plays a leader: it applies commands to a real fsm.State in the order
// the test gives them, numbering them as a Raft log would, and records what
// each peer saw.
type sim struct {
	st    fsm.State
	h     []api.HistoryEntry
	index uint64
}

// apply applies cmd stamped at now as the next log entry.
func (s *sim) apply(cmd fsm.Command, now int64) (fsm.Result, LogEntry) {
	cmd.Now = now
	s.index++
	res := s.st.Apply(cmd)
	res.Index = s.index
	return res, LogEntry{Index: s.index, Cmd: cmd}
}

// do applies cmd at leader time now for node, which called at call and got
// the answer at ret.
func (s *sim) do(node string, call, now, ret int64, cmd fsm.Command) api.HistoryEntry {
	res, _ := s.apply(cmd, now)
	e := api.NewHistoryEntry(node, call, ret, cmd, res, nil)
	s.h = append(s.h, e)
	return e
}

// lost records a command whose answer never came back; applied says
// whether the leader applied it (at now) all the same.
func (s *sim) lost(node string, call, now int64, cmd fsm.Command, applied bool) LogEntry {
	var l LogEntry
	if applied {
		_, l = s.apply(cmd, now)
	}
	s.h = append(s.h, api.NewHistoryEntry(node, call, call+4*sec, cmd, fsm.Result{}, errors.New("no Raft leader")))
	return l
}

// unrecorded applies a command that no peer recorded (its issuer was
// killed before the answer came).
func (s *sim) unrecorded(now int64, cmd fsm.Command) LogEntry {
	_, l := s.apply(cmd, now)
	return l
}

// logEntry is the log entry of an answered history entry.
func logEntry(e api.HistoryEntry) LogEntry {
	c := e.Cmd
	c.Now = e.Now
	return LogEntry{Index: e.Index, Cmd: c}
}

func acquire(node string) fsm.Command {
	return fsm.Command{Op: fsm.OpAcquire, Node: node, TTL: ttl}
}

func renew(node string, token uint64) fsm.Command {
	return fsm.Command{Op: fsm.OpRenew, Node: node, Token: token, TTL: ttl}
}

func advance(node string, token uint64, to int64, keep bool) fsm.Command {
	return fsm.Command{Op: fsm.OpAdvance, Node: node, Token: token, TTL: ttl,
		Advance: &fsm.Advance{LastEventID: to, Keep: keep, Events: 10}}
}

func release(node string, token uint64) fsm.Command {
	return fsm.Command{Op: fsm.OpRelease, Node: node, Token: token}
}

// healthy is a history with every kind of command and some concurrency:
// a standby competing while the lease is held, a revoke, a handover.
func healthy() *sim {
	s := &sim{}
	at := func(d int64) int64 { return t0 + d }
	s.do("leader", at(0), at(1*ms), at(2*ms), fsm.Command{Op: fsm.OpSetMember, Member: &fsm.Member{ID: "n1", RaftAddr: "10.0.0.1:8471"}})
	s.do("n1", at(10*ms), at(11*ms), at(12*ms), acquire("n1"))
	// n2 asks while n1's grant is being answered: refused.
	s.do("n2", at(11*ms), at(13*ms), at(20*ms), acquire("n2"))
	s.do("n1", at(15*ms), at(16*ms), at(18*ms), advance("n1", 1, 100, true))
	s.do("n1", at(1*sec), at(1*sec+ms), at(1*sec+2*ms), renew("n1", 1))
	s.do("n1", at(2*sec), at(2*sec+ms), at(2*sec+2*ms), advance("n1", 1, 250, false))
	s.do("n2", at(2*sec+5*ms), at(2*sec+6*ms), at(2*sec+7*ms), acquire("n2"))
	// n3 competes concurrently and loses.
	s.do("n3", at(2*sec+5*ms), at(2*sec+8*ms), at(2*sec+9*ms), acquire("n3"))
	s.do("leader", at(3*sec), at(3*sec+ms), at(3*sec+2*ms), fsm.Command{Op: fsm.OpRevoke, Token: 2, Reason: "heartbeat failed"})
	// n2 was cut off and committed a batch before the revoke: recorded.
	s.do("n2", at(3*sec), at(3*sec+3*ms), at(3*sec+4*ms), advance("n2", 2, 300, false))
	s.do("n3", at(3*sec+10*ms), at(3*sec+11*ms), at(3*sec+12*ms), acquire("n3"))
	s.do("n3", at(3*sec+20*ms), at(3*sec+21*ms), at(3*sec+22*ms), release("n3", 3))
	return s
}

func TestCorrectHistoryIsLinearizable(t *testing.T) {
	s := healthy()
	ok, info := Check(s.h)
	if !ok {
		t.Fatalf("a history produced by State.Apply is not linearizable: %s", info)
	}
	if info.Ops != len(s.h) || info.Unknown != 0 {
		t.Errorf("info = %+v, want %d ops, none unknown", info, len(s.h))
	}
	if v := CheckSafety(s.h); len(v) != 0 {
		t.Errorf("safety violations in a correct history: %v", v)
	}
}

func TestHistoryOrderDoesNotMatter(t *testing.T) {
	s := healthy()
	h := append([]api.HistoryEntry(nil), s.h...)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(h), func(i, j int) { h[i], h[j] = h[j], h[i] })
	if ok, info := Check(h); !ok {
		t.Fatalf("shuffled history: %s", info)
	}
}

func TestUnansweredCommandMayHaveBeenApplied(t *testing.T) {
	for _, tc := range []struct {
		name    string
		applied bool
		// knownNow fills in the leader's time, as Reconcile does.
		knownNow bool
	}{
		{"applied, time unknown", true, false},
		{"applied, time known", true, true},
		{"not applied", false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &sim{}
			s.lost("n1", t0, t0+100*ms, acquire("n1"), tc.applied)
			if tc.knownNow {
				s.h[0].Now = t0 + 100*ms
			}
			// n2 sees the outcome either way.
			s.do("n2", t0+1*sec, t0+1*sec+ms, t0+1*sec+2*ms, acquire("n2"))
			s.do("n2", t0+2*sec, t0+2*sec+ms, t0+2*sec+2*ms, acquire("n2"))
			if ok, info := Check(s.h); !ok {
				t.Fatalf("%s", info)
			}
		})
	}
}

func TestUnansweredRenewWithUnknownTime(t *testing.T) {
	s := &sim{}
	s.do("n1", t0, t0+ms, t0+2*ms, acquire("n1"))
	s.lost("n1", t0+3*sec, t0+3*sec+500*ms, renew("n1", 1), true)
	// The renew moved the expiry to t0+8.5s: n2 is refused at t0+6s, which
	// only the applied renew explains, and the refusal shows the expiry.
	s.do("n2", t0+6*sec, t0+6*sec+ms, t0+6*sec+2*ms, acquire("n2"))
	s.do("n2", t0+9*sec, t0+9*sec+ms, t0+9*sec+2*ms, acquire("n2"))
	if ok, info := Check(s.h); !ok {
		t.Fatalf("%s", info)
	}

	// The same refusal with an expiry the renew cannot have produced (its
	// leader time would be before its call) is not linearizable.
	bad := append([]api.HistoryEntry(nil), s.h...)
	l := *bad[2].Lease
	l.ExpiresAt = t0 + 7*sec // renew at t0+2s, before it was called
	bad[2].Lease = &l
	if ok, info := Check(bad); ok {
		t.Fatalf("an expiry before the renew was called passed: %s", info)
	}
}

func TestDoubledGrantIsNotLinearizable(t *testing.T) {
	s := &sim{}
	s.do("n1", t0, t0+ms, t0+2*ms, acquire("n1"))
	// n2 is told it got token 1 too, while n1 holds it.
	e := api.NewHistoryEntry("n2", t0+sec, t0+sec+2*ms, acquire("n2"),
		fsm.Result{Lease: fsm.Lease{Holder: "n2", Token: 1, ExpiresAt: t0 + sec + ms + int64(ttl)}, Now: t0 + sec + ms, Index: s.index + 1}, nil)
	h := append(s.h, e)
	ok, info := Check(h)
	if ok || info.Result != porcupine.Illegal {
		t.Fatalf("doubled grant passed: %s", info)
	}
	if !hasViolation(CheckSafety(h), "token-reused") {
		t.Errorf("CheckSafety did not report the reused token: %v", CheckSafety(h))
	}
}

func TestLostAdvanceIsNotLinearizable(t *testing.T) {
	s := &sim{}
	s.do("n1", t0, t0+ms, t0+2*ms, acquire("n1"))
	s.do("n1", t0+10*ms, t0+11*ms, t0+12*ms, advance("n1", 1, 100, false))
	// n2 acquires afterwards and is shown the cursor from before the
	// acknowledged advance.
	e := api.NewHistoryEntry("n2", t0+sec, t0+sec+2*ms, acquire("n2"),
		fsm.Result{Lease: fsm.Lease{Holder: "n2", Token: 2, ExpiresAt: t0 + sec + ms + int64(ttl)}, Now: t0 + sec + ms}, nil)
	if ok, info := Check(append(s.h, e)); ok || info.Result != porcupine.Illegal {
		t.Fatalf("lost advance passed: %s", info)
	}
}

func TestCursorMovingBackwardsIsNotLinearizable(t *testing.T) {
	s := &sim{}
	s.do("n1", t0, t0+ms, t0+2*ms, acquire("n1"))
	s.do("n1", t0+10*ms, t0+11*ms, t0+12*ms, advance("n1", 1, 100, false))
	s.do("n2", t0+sec, t0+sec+ms, t0+sec+2*ms, acquire("n2"))
	// n2's advance to 90 is acknowledged and the cursor shown at 90.
	e := api.NewHistoryEntry("n2", t0+2*sec, t0+2*sec+2*ms, advance("n2", 2, 90, false),
		fsm.Result{Lease: fsm.Lease{Token: 2}, Cursor: fsm.Cursor{LastEventID: 90}, Now: t0 + 2*sec + ms}, nil)
	if ok, info := Check(append(s.h, e)); ok || info.Result != porcupine.Illegal {
		t.Fatalf("cursor moving backwards passed: %s", info)
	}
}

func TestVisualizationWrittenOnFailure(t *testing.T) {
	s := &sim{}
	s.do("n1", t0, t0+ms, t0+2*ms, acquire("n1"))
	e := api.NewHistoryEntry("n2", t0+sec, t0+sec+2*ms, acquire("n2"),
		fsm.Result{Lease: fsm.Lease{Holder: "n2", Token: 1, ExpiresAt: t0 + sec + ms + int64(ttl)}, Now: t0 + sec + ms}, nil)
	ok, info := Check(append(s.h, e))
	if ok {
		t.Fatalf("expected a failure: %s", info)
	}
	info.Annotate("nemesis", t0+500*ms, t0+1500*ms, "partition n1")
	path := filepath.Join(t.TempDir(), "sub", "history.html")
	if err := info.WriteVisualization(path); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "<html") || !strings.Contains(string(b), "acquire n2") {
		t.Errorf("%s does not look like porcupine's visualisation of this history (%d bytes)", path, len(b))
	}
}

func TestSafetyOverlappingGrants(t *testing.T) {
	s := &sim{}
	s.do("n1", t0, t0+ms, t0+2*ms, acquire("n1"))
	s.do("n1", t0+sec, t0+sec+ms, t0+sec+2*ms, renew("n1", 1))
	// n2 is granted token 2 while n1's renewed lease runs until t0+6s.
	e := api.NewHistoryEntry("n2", t0+3*sec, t0+3*sec+2*ms, acquire("n2"),
		fsm.Result{Lease: fsm.Lease{Holder: "n2", Token: 2, ExpiresAt: t0 + 8*sec}, Now: t0 + 3*sec + ms, Index: s.index + 2}, nil)
	h := append(s.h, e)
	if v := CheckSafety(h); !hasViolation(v, "overlapping-grants") {
		t.Fatalf("overlap not reported: %v", v)
	}
	// A release of token 1 that the log could not place (its answer was
	// lost, the log was compacted) may have been applied in between.
	lost := api.NewHistoryEntry("n1", t0+2*sec, t0+6*sec, release("n1", 1), fsm.Result{}, errors.New("timeout"))
	if v := CheckSafety(append(h, lost)); len(v) != 0 {
		t.Fatalf("a possible release was not taken into account: %v", v)
	}
	// One the log shows applied between the renew and the grant explains
	// it as well; applied after the grant, it does not.
	lost.Index = s.index + 1
	if v := CheckSafety(append(h, lost)); len(v) != 0 {
		t.Fatalf("a release applied before the grant was not taken into account: %v", v)
	}
	lost.Index = s.index + 3
	if v := CheckSafety(append(h, lost)); !hasViolation(v, "overlapping-grants") {
		t.Fatalf("a release applied after the grant explained it: %v", v)
	}
}

func TestSafetyTokenOrder(t *testing.T) {
	grant := func(node string, token uint64, call int64) api.HistoryEntry {
		return api.NewHistoryEntry(node, call, call+2*ms, acquire(node),
			fsm.Result{Lease: fsm.Lease{Holder: node, Token: token, ExpiresAt: call + ms + int64(ttl)}, Now: call + ms, Index: uint64(token)}, nil)
	}
	h := []api.HistoryEntry{grant("n1", 5, t0), grant("n2", 4, t0+10*sec)}
	v := CheckSafety(h)
	if !hasViolation(v, "token-not-increasing") || !hasViolation(v, "token-went-back") {
		t.Fatalf("violations = %v, want token-not-increasing and token-went-back", v)
	}
}

func TestReconcile(t *testing.T) {
	s := &sim{}
	var log []LogEntry
	logged := func(e api.HistoryEntry) { log = append(log, logEntry(e)) }
	logged(s.do("n1", t0, t0+ms, t0+2*ms, acquire("n1")))
	// n1 is killed while its advance is in flight: applied, never recorded.
	log = append(log, s.unrecorded(t0+10*ms, advance("n1", 1, 100, false)))
	// n2's acquire times out but was applied; n3's never was.
	log = append(log, s.lost("n2", t0+sec, t0+sec+500*ms, acquire("n2"), true))
	s.lost("n3", t0+sec, 0, acquire("n3"), false)
	logged(s.do("n3", t0+6*sec, t0+6*sec+ms, t0+6*sec+2*ms, acquire("n3")))

	if ok, _ := Check(s.h); ok {
		t.Fatalf("without the unrecorded advance the history should not be linearizable")
	}
	h, rec := Reconcile(s.h, log, true)
	if rec.Matched != 2 || len(rec.Resolved) != 1 || len(rec.NotApplied) != 1 || len(rec.Orphans) != 1 || len(rec.Unmatched) != 0 {
		t.Fatalf("reconciliation: %s", rec)
	}
	if rec.Resolved[0].Now != t0+sec+500*ms || rec.Resolved[0].Index != 3 ||
		rec.Orphans[0].Cmd.Op != fsm.OpAdvance || rec.Orphans[0].Node != "n1" || rec.Orphans[0].Index != 2 {
		t.Errorf("resolved %+v, orphan %+v", rec.Resolved[0], rec.Orphans[0])
	}
	if ok, info := Check(h); !ok {
		t.Fatalf("reconciled history: %s", info)
	}

	// An answer for a command that is not in the log is reported.
	_, rec = Reconcile(s.h, log[1:], true)
	if len(rec.Unmatched) != 1 || rec.Unmatched[0].Cmd.Node != "n1" {
		t.Errorf("unmatched = %+v, want n1's acquire", rec.Unmatched)
	}
}

// TestRandomHistoriesAreLinearizable drives State.Apply with random
// commands from three peers whose calls overlap, the leader applying each
// at a random instant inside its interval, and some answers lost. Every
// such history must pass.
func TestRandomHistoriesAreLinearizable(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		s := &sim{}
		type pending struct {
			node      string
			call, ret int64
			cmd       fsm.Command
		}
		now := t0
		nodes := []string{"n1", "n2", "n3"}
		cursor := int64(0)
		for range 200 {
			now += int64(rng.IntN(400)) * ms
			node := nodes[rng.IntN(len(nodes))]
			l := s.st.Lease
			var cmd fsm.Command
			switch rng.IntN(5) {
			case 0, 1:
				cmd = acquire(node)
			case 2:
				cmd = renew(node, l.Token)
			case 3:
				cursor += int64(rng.IntN(50))
				cmd = advance(node, l.Token, cursor, rng.IntN(2) == 0)
			default:
				cmd = release(node, l.Token)
			}
			p := pending{node: node, call: now - int64(rng.IntN(50))*ms, ret: now + int64(rng.IntN(50))*ms, cmd: cmd}
			switch rng.IntN(20) {
			case 0:
				s.lost(p.node, p.call, now, p.cmd, true)
			case 1:
				s.lost(p.node, p.call, now, p.cmd, false)
			default:
				s.do(p.node, p.call, now, p.ret, p.cmd)
			}
		}
		if ok, info := Check(s.h); !ok {
			path := filepath.Join(t.TempDir(), "random.html")
			_ = info.WriteVisualization(path)
			t.Fatalf("seed %d: %s", seed, info)
		}
		if v := CheckSafety(s.h); len(v) != 0 {
			t.Fatalf("seed %d: %v", seed, v)
		}
	}
}

func hasViolation(vs []Violation, kind string) bool {
	for _, v := range vs {
		if v.Kind == kind {
			return true
		}
	}
	return false
}

// TestReconcilePrefersACopyStampedWhileWaiting: a node's acquires are all
// alike, so an unanswered one is matched to the copy stamped while its
// caller waited, not to an earlier-stamped copy that a later call owns.
func TestReconcilePrefersACopyStampedWhileWaiting(t *testing.T) {
	lostAt := func(call int64) api.HistoryEntry {
		return api.NewHistoryEntry("n1", call, call+1500*ms, acquire("n1"), fsm.Result{}, errors.New("timeout"))
	}
	stamped := func(index uint64, now int64) LogEntry {
		c := acquire("n1")
		c.Now = now
		return LogEntry{Index: index, Cmd: c}
	}
	// Call A at t0 is stamped late (t0+5s, after a partition healed);
	// call B at t0+2s is stamped while it waits.
	entries := []api.HistoryEntry{lostAt(t0), lostAt(t0 + 2*sec)}
	log := []LogEntry{stamped(1, t0+2*sec+100*ms), stamped(2, t0+5*sec)}
	_, rec := Reconcile(entries, log, true)
	if len(rec.Resolved) != 2 {
		t.Fatalf("reconciliation: %s", rec)
	}
	for _, e := range rec.Resolved {
		if e.Call == t0+2*sec && e.Now != t0+2*sec+100*ms {
			t.Errorf("call at +2s matched the copy stamped at %+dms, want +2100ms", (e.Now-t0)/ms)
		}
	}
}

// TestRefusalAnsweredBeforeTheLog: the leader refuses an acquire it can see
// the state machine would refuse without proposing it (index 0). The
// history is still linearizable, the refusal is not reported as missing
// from the log, and it raises no safety alarm.
func TestRefusalAnsweredBeforeTheLog(t *testing.T) {
	s := &sim{}
	var log []LogEntry
	e := s.do("n1", t0, t0+ms, t0+2*ms, acquire("n1"))
	log = append(log, logEntry(e))
	st := s.st.Clone()
	refused := acquire("n2")
	refused.Now = t0 + 10*ms
	checked := st.Check(refused)
	if checked == nil {
		t.Fatal("n2's acquire while n1 holds the lease is not refused")
	}
	res := fsm.Result{Lease: st.Lease, Cursor: st.Cursor, Now: t0 + 10*ms, Err: checked}
	s.h = append(s.h, api.NewHistoryEntry("n2", t0+9*ms, t0+11*ms, acquire("n2"), res, nil))
	h, rec := Reconcile(s.h, log, true)
	if len(rec.Unlogged) != 1 || len(rec.Unmatched) != 0 || rec.Matched != 1 {
		t.Fatalf("reconciliation: %s", rec)
	}
	if ok, info := Check(h); !ok {
		t.Fatalf("%s", info)
	}
	if v := CheckSafety(h); len(v) != 0 {
		t.Fatalf("violations: %v", v)
	}
}

package systemtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/internal/devcluster"
	"github.com/geocursor/geocursor/internal/loadgen"
	ts "github.com/geocursor/geocursor/internal/testsupport"
	"github.com/geocursor/geocursor/tlsutil"
)

// The attacks of issue 18 with one CA-signed peer certificate and no
// token, against three processing agents and a witness with TLS and
// tokens: each is refused and changes nothing. Then the values that
// cannot be sane, which even the operator's token does not get past, and
// a cursor set beyond the source head.

// peerClient is a client that presents node id's peer certificate, made
// for it if the cluster has none yet, and sends no token.
func peerClient(t *testing.T, sec *devcluster.Security, id string) *api.Client {
	t.Helper()
	if _, _, err := tlsutil.CreateCert(sec.Dir, tlsutil.CertRequest{Node: id, Days: 1}); err != nil && !strings.Contains(err.Error(), "exists already") {
		t.Fatal(err)
	}
	ca, _ := tlsutil.CAFiles(sec.Dir)
	cert, key := tlsutil.NodeFiles(sec.Dir, id)
	n, err := tlsutil.LoadNode(tlsutil.Files{CA: ca, Cert: cert, Key: key}, id)
	if err != nil {
		t.Fatal(err)
	}
	return api.NewClient(api.ClientOptions{TLS: n.PeerClient()})
}

// endpoint is an agent as a request sees it.
type endpoint struct{ ID, HTTPAddr string }

// groupState is what no refused command may change.
type groupState struct {
	holder  string
	token   uint64
	cursor  int64
	paused  bool
	members string
}

func (g groupState) String() string {
	return fmt.Sprintf("holder %q, token %d, cursor %d, paused %t, members %s", g.holder, g.token, g.cursor, g.paused, g.members)
}

func groupStateOf(t *testing.T, op *api.Client, addr string) groupState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := op.Status(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	var members []string
	for _, m := range st.Members {
		members = append(members, fmt.Sprintf("%s@%s/%s voter=%t", m.ID, m.RaftAddr, m.HTTPAddr, m.Voter))
	}
	sort.Strings(members)
	g := groupState{token: st.Lease.Token, cursor: st.Cursor.LastEventID, paused: st.Cursor.Paused, members: strings.Join(members, " ")}
	if st.Lease.Holder != nil {
		g.holder = *st.Lease.Holder
	}
	return g
}

func TestPeerCertificateAloneSendsOnlyPeerCommands(t *testing.T) {
	d := newProcDBs(t, false)
	c := startProcessing(t, d, procConfig{FastTimers: true, Secure: true})
	sec := c.Security
	op, err := sec.Client(sec.OperatorToken)
	if err != nil {
		t.Fatal(err)
	}
	ctx := testContext(t)

	// A witness: no source block, so it advertises that it does not
	// process when it joins.
	witness := ts.StartAgent(t, c.Dir, ts.AgentSpec{
		NodeID: "witness1", Join: []string{c.Agents[0].HTTPAddr}, Security: sec,
		ExtraHCL: "raft {\n  heartbeat_timeout = \"300ms\"\n  election_timeout  = \"300ms\"\n}\n",
	})
	witness.WaitReady(t, 30*time.Second)
	ts.WaitFor(t, 30*time.Second, "the witness to be a voter", func() (bool, string) {
		st, err := op.Status(ctx, c.Agents[0].HTTPAddr)
		if err != nil {
			return false, err.Error()
		}
		for _, m := range st.Members {
			if m.ID == witness.ID {
				return m.Voter, fmt.Sprintf("%+v", m)
			}
		}
		return false, "not a member yet"
	})

	// Some events, processed; then the group is idle, so that nothing but
	// an attack could change its state.
	bg := startLoad(t, d, loadgen.Config{Writers: 2, Rate: 200, Seed: 18})
	waitCursor(t, c.Agents, 100, 30*time.Second)
	bg.stop(t)
	head := sourceHead(t, d)
	ts.WaitFor(t, 30*time.Second, "the group to process every event and go idle", func() (bool, string) {
		st, err := anyStatus(c.Agents)
		if err != nil {
			return false, err.Error()
		}
		return st.Cursor.LastEventID == head && st.Cursor.OpenGaps == 0 && st.Lease.Holder == nil,
			fmt.Sprintf("cursor %d of %d, %d open gaps, lease %s", st.Cursor.LastEventID, head, st.Cursor.OpenGaps, leaseString(st))
	})

	// The leader may be the witness; node is a processing agent that does
	// not lead.
	st, err := op.Status(ctx, c.Agents[0].HTTPAddr)
	if err != nil || st.Leader == nil {
		t.Fatalf("status: %+v, %v", st.Leader, err)
	}
	leader := endpoint{ID: st.Leader.ID, HTTPAddr: st.Leader.HTTPAddr}
	var node *ts.Agent
	for _, a := range c.Agents {
		if a.ID != st.Leader.ID {
			node = a
			break
		}
	}
	// Idle peers still settle what the load left (a grant that finds
	// nothing to do): wait until nothing has changed for two seconds.
	before := groupStateOf(t, op, leader.HTTPAddr)
	quietSince := time.Now()
	ts.WaitFor(t, 30*time.Second, "the group to stay unchanged for 2s", func() (bool, string) {
		if now := groupStateOf(t, op, leader.HTTPAddr); now != before {
			before, quietSince = now, time.Now()
		}
		return time.Since(quietSince) >= 2*time.Second, before.String()
	})
	t.Logf("before the attacks: %s", before)
	unchanged := func(what string) {
		t.Helper()
		if after := groupStateOf(t, op, leader.HTTPAddr); after != before {
			t.Errorf("%s changed the group:\n before %s\n after  %s", what, before, after)
		}
	}
	refusedWith := func(what string, res fsm.Result, err error, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Errorf("%s: %+v, %v; want %v", what, res, err, want)
		}
	}

	t.Run("operator commands with a peer certificate and no token", func(t *testing.T) {
		peer := peerClient(t, sec, node.ID)
		cmds := []struct {
			what string
			cmd  fsm.Command
		}{
			{"a reservation for 24 h", fsm.Command{Op: fsm.OpReserve, Node: node.ID, TTL: 24 * time.Hour}},
			{"a reservation as an agent makes it", fsm.Command{Op: fsm.OpReserve, Node: node.ID, TTL: 5 * time.Second}},
			{"set_cursor to 500,000", fsm.Command{Op: fsm.OpSetCursor, Node: node.ID, Token: before.token,
				SetCursor: &fsm.SetCursor{LastEventID: 500000}}},
			{"restore", fsm.Command{Op: fsm.OpRestore, Node: node.ID,
				Restore: &fsm.Restore{Cursor: fsm.Cursor{LastEventID: 500000}, Token: before.token + 100}}},
			{"set_paused", fsm.Command{Op: fsm.OpSetPaused, Paused: true}},
		}
		for _, tc := range cmds {
			for _, at := range []endpoint{leader, {node.ID, node.HTTPAddr}} {
				res, err := peer.Apply(ctx, at.HTTPAddr, tc.cmd)
				refusedWith(fmt.Sprintf("%s from %s's certificate at %s", tc.what, node.ID, at.ID), res, err, api.ErrPermissionDenied)
			}
		}
		unchanged("operator commands from a peer certificate")
	})

	t.Run("a witness may not hold the lease", func(t *testing.T) {
		w := peerClient(t, sec, witness.ID)
		res, err := w.Apply(ctx, leader.HTTPAddr, fsm.Command{Op: fsm.OpAcquire, Node: witness.ID, TTL: time.Hour})
		refusedWith("the witness's acquire", res, err, api.ErrPermissionDenied)
		res, err = w.Apply(ctx, leader.HTTPAddr, fsm.Command{Op: fsm.OpReserve, Node: witness.ID, TTL: time.Minute})
		refusedWith("the witness's reservation", res, err, api.ErrPermissionDenied)
		// Without a grant of its own, an advance with made-up gaps is stale.
		gaps := make([]fsm.Gap, fsm.MaxGaps)
		for i := range gaps {
			gaps[i] = fsm.Gap{ID: before.cursor + 1 + int64(i), FirstSeen: time.Now().UnixNano()}
		}
		res, err = w.Apply(ctx, leader.HTTPAddr, fsm.Command{Op: fsm.OpAdvance, Node: witness.ID, Token: before.token,
			Advance: &fsm.Advance{LastEventID: before.cursor + fsm.MaxGaps + 1, Gaps: gaps}})
		if err == nil && res.Err == nil {
			t.Errorf("the witness's advance over made-up gaps was granted: %+v", res)
		}
		// Its certificate cannot make it a processing member either.
		_, err = w.Join(ctx, leader.HTTPAddr, api.JoinRequest{NodeID: witness.ID, RaftAddr: witness.RaftAddr, HTTPAddr: witness.HTTPAddr})
		refused(t, "the witness's join as a processing member without the operator's token", err, api.ErrPermissionDenied)
		res, err = w.Apply(ctx, leader.HTTPAddr, fsm.Command{Op: fsm.OpAcquire, Node: witness.ID, TTL: time.Hour})
		refusedWith("the witness's acquire after its refused join", res, err, api.ErrPermissionDenied)
		unchanged("the witness's commands")
	})

	t.Run("values that cannot be sane, even with the operator's token", func(t *testing.T) {
		peer := peerClient(t, sec, node.ID)
		opCtx := api.WithToken(ctx, sec.OperatorToken)
		restore := func(token uint64, clock int64) fsm.Command {
			return fsm.Command{Op: fsm.OpRestore, Node: node.ID, Restore: &fsm.Restore{Cursor: fsm.Cursor{LastEventID: 10}, Token: token, Clock: clock}}
		}
		for what, cmd := range map[string]fsm.Command{
			"a restore with token 2^64-1":        restore(math.MaxUint64, 0),
			"a restore with token 2^63":          restore(1<<63, 0),
			"a restore with token 2^63-1":        restore(math.MaxInt64, 0),
			"a restore with clock MaxInt64":      restore(7, math.MaxInt64),
			"a restore with a clock a day ahead": restore(7, time.Now().Add(24*time.Hour).UnixNano()),
			"a reservation for 24 h":             {Op: fsm.OpReserve, Node: node.ID, TTL: 24 * time.Hour},
		} {
			res, err := peer.Apply(opCtx, leader.HTTPAddr, cmd)
			refusedWith(what+" with the operator's token", res, err, fsm.ErrBadCommand)
		}
		// Through the processing agent, as `snapshot restore` sends it.
		for what, snap := range map[string]api.Snapshot{
			"token 2^64-1":   {Format: api.SnapshotFormat, Token: math.MaxUint64},
			"token 2^63":     {Format: api.SnapshotFormat, Token: 1 << 63},
			"clock MaxInt64": {Format: api.SnapshotFormat, Token: 7, Clock: math.MaxInt64},
		} {
			_, err := op.Restore(ctx, node.HTTPAddr, snap)
			refused(t, "a snapshot with "+what, err, api.ErrBadRequest)
		}
		file := filepath.Join(t.TempDir(), "snapshot.json")
		b, _ := json.Marshal(api.Snapshot{Format: api.SnapshotFormat, Token: math.MaxInt64, TakenAt: time.Now()})
		if err := os.WriteFile(file, b, 0o600); err != nil {
			t.Fatal(err)
		}
		out := runCLIOutput(t, 1, append([]string{"snapshot", "restore", file, "-addr", node.HTTPAddr}, sec.CLIArgs(sec.OperatorToken)...)...)
		if !strings.Contains(out, "bigint") {
			t.Errorf("snapshot restore with token 2^63-1: %q", out)
		}
		unchanged("insane values")
	})

	t.Run("pause and resume refuse unknown fields", func(t *testing.T) {
		for _, path := range []string{api.PathPause, api.PathResume} {
			status, body, err := op.Raw(ctx, http.MethodPost, node.HTTPAddr, path, []byte(`{"paused":true}`))
			if err != nil || status != http.StatusBadRequest {
				t.Errorf("POST %s with an unknown field: HTTP %d %s, %v; want 400", path, status, body, err)
			}
		}
		unchanged("pause with unknown fields")
	})

	t.Run("cursor set beyond the source head", func(t *testing.T) {
		cli := func(code int, args ...string) string {
			return runCLIOutput(t, code, append(append([]string{"cursor", "set"}, args...), sec.CLIArgs(sec.OperatorToken)...)...)
		}
		out := cli(1, "-event-id", fmt.Sprint(int64(math.MaxInt64)), "-addr", node.HTTPAddr)
		if !strings.Contains(out, "pass -force") {
			t.Errorf("cursor set to MaxInt64 without -force: %q", out)
		}
		out = cli(1, "-event-id", fmt.Sprint(head+1), "-addr", node.HTTPAddr)
		if !strings.Contains(out, "beyond the newest event") {
			t.Errorf("cursor set one past the head without -force: %q", out)
		}
		unchanged("cursor set beyond the head without -force")

		// With -force, through a processing agent that does not lead: it
		// forwards the operator's token with its reserve, acquire and
		// set_cursor. The status then measures the lag from the real head.
		to := head + 1000
		out = cli(0, "-event-id", fmt.Sprint(to), "-force", "-addr", node.HTTPAddr)
		if !strings.Contains(out, fmt.Sprintf("to %d", to)) {
			t.Errorf("cursor set -force beyond the head: %q", out)
		}
		ts.WaitFor(t, 20*time.Second, "the status to measure the lag from the real source head", func() (bool, string) {
			st, err := op.Status(ctx, node.HTTPAddr)
			if err != nil {
				return false, err.Error()
			}
			c := st.Cursor
			if c.SourceLastEventID == nil || c.LagEvents == nil {
				return false, "no source head yet"
			}
			return c.LastEventID == to && *c.SourceLastEventID == head && *c.LagEvents == head-to,
				fmt.Sprintf("cursor %d, source head %d, lag %d", c.LastEventID, *c.SourceLastEventID, *c.LagEvents)
		})
	})
}

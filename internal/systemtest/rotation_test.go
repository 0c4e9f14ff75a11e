package systemtest

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/internal/devcluster"
	ts "github.com/geocursor/geocursor/internal/testsupport"
	"github.com/geocursor/geocursor/tlsutil"
)

// Issue 18, item 6: tokens rotate by editing their files and sending
// SIGHUP; the old token is then refused on every node, also where a
// follower forwards an operator's command to the leader; a reload never
// claims to have changed a token it did not, and says so when the
// environment fixes one.

// rotation is a secure three-node cluster whose agents read their tokens
// from files of their own.
type rotation struct {
	t      *testing.T
	sec    *devcluster.Security
	agents []*devcluster.Agent
}

func startRotation(t *testing.T) *rotation {
	t.Helper()
	dir := ts.TempDir(t, "geocursor-rotation-")
	sec, err := devcluster.NewSecurity(filepath.Join(dir, "tls"))
	if err != nil {
		t.Fatal(err)
	}
	sec.TokenFiles = true
	r := &rotation{t: t, sec: sec}
	c := &devcluster.Cluster{
		Binary: ts.BuildBinary(t), Dir: dir, Security: sec,
		OnAgent: func(a *devcluster.Agent) {
			t.Cleanup(func() {
				if err := a.Kill(); err != nil {
					t.Errorf("%v", err)
				}
				if t.Failed() {
					t.Logf("--- %s: last lines of %s ---\n%s", a.ID, a.LogPath, a.LogTail(40))
				}
			})
		},
	}
	err = c.Start(context.Background(), 3, "raft {\n  heartbeat_timeout = \"300ms\"\n  election_timeout  = \"300ms\"\n}\n", nil)
	r.agents = c.Agents
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rotation) client(token string) *api.Client {
	r.t.Helper()
	c, err := r.sec.Client(token)
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

// leader asks every node, with token, until all name one leader, and
// returns it and the others.
func (r *rotation) leader(token string) (leader *devcluster.Agent, followers []*devcluster.Agent) {
	r.t.Helper()
	c := r.client(token)
	ts.WaitFor(r.t, 20*time.Second, "every node to name one leader", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		id := ""
		for _, a := range r.agents {
			st, err := c.Status(ctx, a.HTTPAddr)
			if err != nil {
				return false, err.Error()
			}
			if st.Leader == nil || (id != "" && st.Leader.ID != id) {
				return false, a.ID + " names another leader or none"
			}
			id = st.Leader.ID
		}
		leader, followers = nil, nil
		for _, a := range r.agents {
			if a.ID == id {
				leader = a
			} else {
				followers = append(followers, a)
			}
		}
		return leader != nil, "the leader " + id + " is not one of the agents"
	})
	return leader, followers
}

// rotate writes a's token files and sends it SIGHUP, and waits until its
// log shows the reload done (the count-th time).
func (r *rotation) rotate(a *devcluster.Agent, operator, read string, count int) {
	r.t.Helper()
	if err := r.sec.WriteTokens(a.ID, operator, read); err != nil {
		r.t.Fatal(err)
	}
	if err := a.Signal(syscall.SIGHUP); err != nil {
		r.t.Fatal(err)
	}
	ts.WaitFor(r.t, 10*time.Second, a.ID+" to finish its reload", func() (bool, string) {
		n := strings.Count(a.Log(), "reload done") + strings.Count(a.Log(), "reload failed")
		return n >= count, fmt.Sprintf("%d reloads logged", n)
	})
	if !a.Running() {
		r.t.Fatalf("%s exited on SIGHUP", a.ID)
	}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestOperatorTokenRotatesFromItsFileOnSIGHUP(t *testing.T) {
	r := startRotation(t)
	oldTok, readTok := r.sec.OperatorToken, r.sec.ReadToken
	newTok, err := devcluster.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	oldOp, newOp, reader := r.client(oldTok), r.client(newTok), r.client(readTok)
	ctx := ctxFor(t)
	leader, followers := r.leader(oldTok)

	// The leader first. A follower that still takes the old token
	// forwards an operator's pause with the token as the operator gave
	// it, and the leader refuses it: the follower's own certificate is
	// no operator's consent.
	r.rotate(leader, newTok, readTok, 1)
	if l, _ := r.leader(readTok); l != leader {
		t.Fatalf("leadership moved from %s to %s during the test", leader.ID, l.ID)
	}
	_, err = oldOp.SetPaused(ctx, followers[0].HTTPAddr, true)
	refused(t, "a pause with the old token, forwarded by "+followers[0].ID+" to the rotated leader", err, api.ErrPermissionDenied)
	if err != nil && !strings.Contains(err.Error(), "is an operator's command") {
		t.Errorf("the refusal of the forwarded pause is not the leader's: %v", err)
	}
	_, err = oldOp.Status(ctx, leader.HTTPAddr)
	refused(t, "the status of the rotated leader with the old token", err, api.ErrPermissionDenied)
	_, err = newOp.SetPaused(ctx, followers[0].HTTPAddr, true)
	refused(t, "a pause with the new token through "+followers[0].ID+", which has not reloaded yet", err, api.ErrPermissionDenied)

	// Then the others: the old token is refused everywhere, the new one
	// works everywhere, forwarded commands included.
	for _, f := range followers {
		r.rotate(f, newTok, readTok, 1)
	}
	for _, a := range r.agents {
		_, err := oldOp.Status(ctx, a.HTTPAddr)
		refused(t, "status with the old token on "+a.ID, err, api.ErrPermissionDenied)
		_, err = oldOp.SetPaused(ctx, a.HTTPAddr, true)
		refused(t, "a pause with the old token on "+a.ID, err, api.ErrPermissionDenied)
		if _, err := newOp.Status(ctx, a.HTTPAddr); err != nil {
			t.Errorf("status with the new token on %s: %v", a.ID, err)
		}
		if _, err := reader.Status(ctx, a.HTTPAddr); err != nil {
			t.Errorf("status with the unchanged read token on %s: %v", a.ID, err)
		}
	}
	if l, _ := r.leader(newTok); l != leader {
		t.Fatalf("leadership moved from %s to %s during the test", leader.ID, l.ID)
	}
	st, err := newOp.Status(ctx, leader.HTTPAddr)
	if err != nil {
		t.Fatal(err)
	}
	if st.Cursor.Paused {
		t.Fatal("a refused pause paused the cluster")
	}
	if res, err := newOp.SetPaused(ctx, followers[0].HTTPAddr, true); err != nil || res.Err != nil {
		t.Fatalf("a pause with the new token through %s: %v / %v", followers[0].ID, err, res.Err)
	}
	ts.WaitFor(t, 10*time.Second, "every node to show the cluster paused", func() (bool, string) {
		for _, a := range r.agents {
			st, err := newOp.Status(ctx, a.HTTPAddr)
			if err != nil || !st.Cursor.Paused {
				return false, fmt.Sprintf("%s: paused %t, %v", a.ID, st.Cursor.Paused, err)
			}
		}
		return true, ""
	})
	if res, err := newOp.SetPaused(ctx, followers[1].HTTPAddr, false); err != nil || res.Err != nil {
		t.Fatalf("a resume with the new token through %s: %v / %v", followers[1].ID, err, res.Err)
	}

	// Each node's log says exactly which token changed, and names no token.
	for _, a := range r.agents {
		log := a.Log()
		if strings.Count(log, "changed the operator token") != 1 || strings.Contains(log, "changed the read token") || strings.Contains(log, "no token changed") {
			t.Errorf("%s's log does not say that the operator token alone changed:\n%s", a.ID, grepLines(log, "token"))
		}
		for _, tok := range []string{oldTok, newTok, readTok} {
			if strings.Contains(log, tok) {
				t.Errorf("%s's log shows a token", a.ID)
			}
		}
	}

	// A reload that fails (the file emptied, as by an editor half-way)
	// keeps the tokens and says why.
	a := r.agents[0]
	r.rotate(a, "", readTok, 2)
	if log := a.Log(); !strings.Contains(log, "reload failed") || !strings.Contains(log, "is empty") {
		t.Errorf("%s's log does not say why its reload failed:\n%s", a.ID, grepLines(log, "reload"))
	}
	if _, err := newOp.Status(ctx, a.HTTPAddr); err != nil {
		t.Errorf("after a failed reload the new token no longer works on %s: %v", a.ID, err)
	}
	_, err = oldOp.Status(ctx, a.HTTPAddr)
	refused(t, "the old token after a failed reload", err, api.ErrPermissionDenied)

	checkNosniff(t, r, a, newTok)
}

// checkNosniff checks that replies of every kind (a reply, a refusal, the
// mux's own 404) tell a browser not to sniff their content type.
func checkNosniff(t *testing.T, r *rotation, a *devcluster.Agent, token string) {
	t.Helper()
	ca, _ := tlsutil.CAFiles(r.sec.Dir)
	cfg, err := tlsutil.Client(ca, "", "")
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 5 * time.Second}
	for _, tc := range []struct {
		path, token string
		status      int
	}{
		{api.PathStatus, token, http.StatusOK},
		{api.PathStatus, "not-the-token-0123456789", http.StatusForbidden},
		{api.PathStatus, "", http.StatusUnauthorized},
		{"/v1/no-such-endpoint", token, http.StatusNotFound},
	} {
		req, err := http.NewRequest(http.MethodGet, "https://"+a.HTTPAddr+tc.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status || resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: status %d, X-Content-Type-Options %q; want %d, nosniff", tc.path, resp.StatusCode, resp.Header.Get("X-Content-Type-Options"), tc.status)
		}
	}
}

// The README's set-up before token files: the tokens in the environment.
// A reload cannot change them, and says so instead of claiming to.
func TestReloadWarnsThatTheEnvironmentFixesAToken(t *testing.T) {
	dir := ts.TempDir(t, "geocursor-envtoken-")
	opTok, readTok := "operator-from-env-0123456789", "reader-from-env-0123456789"
	a := ts.StartAgent(t, dir, ts.AgentSpec{
		NodeID:   "node1",
		ExtraHCL: "acl {\n  operator_token = env.GEOCURSOR_OPERATOR_TOKEN\n}\n",
		Env:      []string{"GEOCURSOR_OPERATOR_TOKEN=" + opTok, "GEOCURSOR_READ_TOKEN=" + readTok},
	})
	a.WaitReady(t, 20*time.Second)
	if err := a.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	ts.WaitFor(t, 10*time.Second, "the reload to finish", func() (bool, string) {
		return strings.Contains(a.Log(), "reload done"), "no reload done in the log"
	})
	log := a.Log()
	for _, want := range []string{
		"the operator token comes from the environment variable GEOCURSOR_OPERATOR_TOKEN, which a running agent cannot see change",
		"the read token comes from the environment variable GEOCURSOR_READ_TOKEN",
		"restart the agent to change it, or keep the token in acl.operator_token_file",
		"no token changed",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("the log does not say %q:\n%s", want, grepLines(log, "token"))
		}
	}
	if strings.Contains(log, "changed the") {
		t.Errorf("the log claims a token changed:\n%s", grepLines(log, "token"))
	}
	if strings.Contains(log, opTok) || strings.Contains(log, readTok) {
		t.Error("the log shows a token")
	}
	c := api.NewClient(api.ClientOptions{Token: opTok})
	if _, err := c.Status(ctxFor(t), a.HTTPAddr); err != nil {
		t.Errorf("status with the operator token after the reload: %v", err)
	}
}

// grepLines returns the lines of log that contain s.
func grepLines(log, s string) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

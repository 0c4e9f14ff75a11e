package systemtest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/geocursor/geocursor/api"
	ts "github.com/geocursor/geocursor/internal/testsupport"
	"github.com/geocursor/geocursor/tlsutil"
)

// Consent for membership (issue 18): a join needs the operator's consent,
// a removed node ID stays out until an operator lets it back in, and a
// forwarding client talks only to the member it meant to reach.

// consentPeerClient is an API client holding a fresh peer certificate for id,
// signed by the cluster's CA, sending token ("" for none).
func consentPeerClient(t *testing.T, c *ts.Cluster, id, token string) *api.Client {
	t.Helper()
	sec := c.Security
	if _, _, err := tlsutil.CreateCert(sec.Dir, tlsutil.CertRequest{Node: id, Days: 1}); err != nil && !strings.Contains(err.Error(), "exist") {
		t.Fatalf("create a certificate for %s: %v", id, err)
	}
	ca, _ := tlsutil.CAFiles(sec.Dir)
	cert, key := tlsutil.NodeFiles(sec.Dir, id)
	cfg, err := tlsutil.Client(ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return api.NewClient(api.ClientOptions{TLS: cfg, Token: token, Timeout: 10 * time.Second})
}

func memberIDs(t *testing.T, a *ts.Agent) []string {
	t.Helper()
	var ids []string
	for _, m := range mustStatus(t, a).Members {
		ids = append(ids, m.ID)
	}
	return ids
}

func TestJoinNeedsConsentAndRemovedIDsStayOut(t *testing.T) {
	c := ts.StartSecureCluster(t, 3, consentRaftHCL, nil)
	c.WaitFormed(t, 60*time.Second)
	leader := c.Leader(t)
	ctx := context.Background()

	// A fresh CA-signed ID without a token, or with a token of its own,
	// is refused.
	for _, token := range []string{"", "a-token-of-its-own-0123456789"} {
		_, err := consentPeerClient(t, c, "node7", token).Join(ctx, leader.HTTPAddr, api.JoinRequest{NodeID: "node7", RaftAddr: "127.0.0.1:1", HTTPAddr: "127.0.0.1:2"})
		if !errors.Is(err, api.ErrPermissionDenied) || !strings.Contains(err.Error(), "consent") {
			t.Fatalf("join of node7 with token %q: %v, want permission_denied naming the consent", token, err)
		}
	}

	// Ten new IDs without consent: all refused, and the leader's log stays
	// quiet.
	before := strings.Count(leader.Log(), "\n")
	for i := range 10 {
		id := fmt.Sprintf("stranger%d", i)
		_, err := consentPeerClient(t, c, id, "").Join(ctx, leader.HTTPAddr, api.JoinRequest{NodeID: id, RaftAddr: fmt.Sprintf("127.0.0.1:%d", 20+i), HTTPAddr: fmt.Sprintf("127.0.0.1:%d", 40+i)})
		if !errors.Is(err, api.ErrPermissionDenied) {
			t.Fatalf("join of %s without consent: %v, want permission_denied", id, err)
		}
	}
	time.Sleep(2 * time.Second) // what would be written is what unreachable non-voters write
	if n := strings.Count(leader.Log(), "\n") - before; n > 10 {
		t.Errorf("the leader wrote %d log lines after ten refused joins, want few:\n%s", n, leader.LogTail(n))
	}
	if ids := memberIDs(t, leader); len(ids) != 3 {
		t.Fatalf("members after refused joins: %v, want the three nodes", ids)
	}

	// A member may not point its row at another HTTP address without
	// consent (the attack that had followers forward the operator token
	// to a server of its own).
	var follower *ts.Agent
	for _, a := range c.Followers(leader) {
		if a.ID == "node3" {
			continue
		}
		follower = a
	}
	st := mustStatus(t, leader)
	for _, m := range st.Members {
		if m.ID != follower.ID {
			continue
		}
		_, err := consentPeerClient(t, c, follower.ID, "").Join(ctx, leader.HTTPAddr, api.JoinRequest{NodeID: m.ID, RaftAddr: m.RaftAddr, HTTPAddr: "127.0.0.1:3"})
		if !errors.Is(err, api.ErrPermissionDenied) {
			t.Fatalf("%s moving its http_addr without consent: %v, want permission_denied", m.ID, err)
		}
		// Joining again as it is needs nothing (these agents have no
		// source block: witnesses).
		if _, err := consentPeerClient(t, c, follower.ID, "").Join(ctx, leader.HTTPAddr, api.JoinRequest{NodeID: m.ID, RaftAddr: m.RaftAddr, HTTPAddr: m.HTTPAddr, Witness: true}); err != nil {
			t.Fatalf("%s joining again as it is: %v", m.ID, err)
		}
	}

	// node3 removed: it stays out, with its data or without, and even
	// with the operator token, until an operator lets it back in.
	node3 := c.Agent(t, "node3")
	if node3 == leader {
		t.Skip("node3 leads; the test removes a follower")
	}
	args := append([]string{"cluster", "remove", "-id", "node3", "-addr", leader.HTTPAddr}, c.Security.CLIArgs(c.Security.OperatorToken)...)
	if out := runCLI(t, 0, args...); !strings.Contains(out, "-undo") {
		t.Errorf("cluster remove: %q, want it to say how to let node3 back in", out)
	}
	node3.Kill(t)
	_, err := consentPeerClient(t, c, "node3", c.Security.OperatorToken).Join(ctx, leader.HTTPAddr, api.JoinRequest{NodeID: "node3", RaftAddr: "127.0.0.1:4", HTTPAddr: "127.0.0.1:5"})
	if !errors.Is(err, api.ErrPermissionDenied) || !strings.Contains(err.Error(), "cluster remove -id node3 -undo") {
		t.Fatalf("join of removed node3 with the operator token: %v, want permission_denied naming -undo", err)
	}
	// With its data: it restarts and asks to be published; it stays out.
	node3.Restart(t)
	time.Sleep(3 * time.Second) // the time a restarted member takes to publish itself
	for _, id := range memberIDs(t, leader) {
		if id == "node3" {
			t.Fatalf("removed node3 restarted with its data and is a member again: %v", memberIDs(t, leader))
		}
	}
	// Wiped: its join is refused, and it exits saying how to let it in.
	node3.Kill(t)
	if err := node3.Wipe(); err != nil {
		t.Fatal(err)
	}
	node3.RestartWith(t, "-join", leader.HTTPAddr)
	if code := node3.WaitExit(t, 60*time.Second); code == 0 {
		t.Fatalf("wiped removed node3 exited with 0, want a refusal")
	}
	if log := node3.LogTail(20); !strings.Contains(log, "-undo") {
		t.Errorf("wiped removed node3's last words: %s\nwant them to name -undo", log)
	}

	// Let back in: it joins again.
	args = append([]string{"cluster", "remove", "-id", "node3", "-undo", "-addr", leader.HTTPAddr}, c.Security.CLIArgs(c.Security.OperatorToken)...)
	runCLI(t, 0, args...)
	node3.RestartWith(t, "-join", leader.HTTPAddr)
	c.WaitFormed(t, 60*time.Second)
}

// A forwarding client sends nothing to a server whose peer certificate
// names another node than the member it meant to reach.
func TestForwardingClientRefusesAServerThatIsAnotherNode(t *testing.T) {
	c := ts.StartSecureCluster(t, 1, consentRaftHCL, nil)
	c.WaitFormed(t, 60*time.Second)
	a := c.Agents[0]
	cl := consentPeerClient(t, c, "node2", c.Security.OperatorToken)
	meant := func(id string) context.Context {
		return api.WithServerCheck(context.Background(), func(cs *tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no certificate")
			}
			if got, ok := tlsutil.PeerID(cs.PeerCertificates[0]); !ok || got != id {
				return fmt.Errorf("the server is %q, not %s", got, id)
			}
			return nil
		})
	}
	before := mustStatus(t, a)
	_, err := cl.SetPaused(meant("node9"), a.HTTPAddr, true)
	if !errors.Is(err, api.ErrPermissionDenied) || !strings.Contains(err.Error(), "not sent") {
		t.Fatalf("pause sent to %s meant for node9: %v, want a refusal before sending", a.ID, err)
	}
	if after := mustStatus(t, a); after.Cursor.Paused != before.Cursor.Paused {
		t.Fatalf("the request meant for node9 reached %s and paused it", a.ID)
	}
	if _, err := cl.SetPaused(meant(a.ID), a.HTTPAddr, false); err != nil {
		t.Fatalf("resume sent to %s meant for %s: %v", a.ID, a.ID, err)
	}
}

const consentRaftHCL = `
raft {
  heartbeat_timeout = "300ms"
  election_timeout  = "300ms"
}
`

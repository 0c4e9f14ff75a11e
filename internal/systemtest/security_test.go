package systemtest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/internal/loadgen"
	ts "github.com/geocursor/geocursor/internal/testsupport"
	"github.com/geocursor/geocursor/tlsutil"
)

// The attacks of issue 10, each against a three-node cluster with TLS and
// tokens under load: every one must fail, and leave no trace in the
// cluster's state; at the end every event was processed exactly once.

// secured is a secure processing cluster with the clients an attacker or
// an operator might use.
type secured struct {
	t *testing.T
	c *ts.Cluster
	d *procDBs
	// operator and reader carry the tokens over TLS; anonymous has TLS but
	// no token; alice presents a client certificate of the CA; stranger
	// trusts the CA but presents a client certificate of another CA;
	// plaintext speaks HTTP without TLS.
	operator, reader, anonymous, alice, stranger, plaintext *api.Client
}

func newSecured(t *testing.T) *secured {
	t.Helper()
	d := newProcDBs(t, false)
	c := startProcessing(t, d, procConfig{FastTimers: true, Secure: true})
	s := &secured{t: t, c: c, d: d}
	sec := c.Security
	var err error
	must := func(cl *api.Client, err error) *api.Client {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	s.operator = must(sec.Client(sec.OperatorToken))
	s.reader = must(sec.Client(sec.ReadToken))
	s.anonymous = must(sec.Client(""))
	ca, _ := tlsutil.CAFiles(sec.Dir)
	if _, _, err = tlsutil.CreateCert(sec.Dir, tlsutil.CertRequest{Client: "alice", Days: 1}); err != nil {
		t.Fatal(err)
	}
	aliceCert, aliceKey := tlsutil.ClientFiles(sec.Dir, "alice")
	s.alice = must(clientWithTLS(tlsutil.Client(ca, aliceCert, aliceKey)))
	other := filepath.Join(t.TempDir(), "other-ca")
	if _, _, err = tlsutil.CreateCA(other, 1); err != nil {
		t.Fatal(err)
	}
	if _, _, err = tlsutil.CreateCert(other, tlsutil.CertRequest{Client: "mallory", Days: 1}); err != nil {
		t.Fatal(err)
	}
	mCert, mKey := tlsutil.ClientFiles(other, "mallory")
	strangerTLS, err := tlsutil.Client(ca, "", "")
	if err != nil {
		t.Fatal(err)
	}
	otherCA, _ := tlsutil.CAFiles(other)
	mallory, err := tlsutil.Client(otherCA, mCert, mKey)
	if err != nil {
		t.Fatal(err)
	}
	strangerTLS.Certificates = mallory.Certificates
	s.stranger = api.NewClient(api.ClientOptions{TLS: strangerTLS, Token: sec.OperatorToken})
	s.plaintext = api.NewClient(api.ClientOptions{Token: sec.OperatorToken})
	return s
}

func clientWithTLS(cfg *tls.Config, err error) (*api.Client, error) {
	if err != nil {
		return nil, err
	}
	return api.NewClient(api.ClientOptions{TLS: cfg}), nil
}

// peer is a client that presents node id's own peer certificate.
func (s *secured) peer(id string) *api.Client {
	s.t.Helper()
	return s.peerWithToken(id, "")
}

// peerWithToken is peer id's client, sending token ("" for none).
func (s *secured) peerWithToken(id, token string) *api.Client {
	s.t.Helper()
	ca, _ := tlsutil.CAFiles(s.c.Security.Dir)
	cert, key := tlsutil.NodeFiles(s.c.Security.Dir, id)
	n, err := tlsutil.LoadNode(tlsutil.Files{CA: ca, Cert: cert, Key: key}, id)
	if err != nil {
		s.t.Fatal(err)
	}
	return api.NewClient(api.ClientOptions{TLS: n.PeerClient(), Token: token})
}

// consentedPeer is peer id's client carrying the operator token, as a
// node the operator lets join sends it with its join.
func (s *secured) consentedPeer(id string) *api.Client {
	s.t.Helper()
	return s.peerWithToken(id, s.c.Security.OperatorToken)
}

// snapshot is what an attack must not change: the members, the pause,
// and whether anyone but a member holds the lease or the cursor jumped.
type snapshot struct {
	members string
	paused  bool
	holder  string
	cursor  int64
	term    uint64
}

func (s *secured) state() snapshot {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	leader := s.c.Leader(s.t)
	st, err := s.operator.Status(ctx, leader.HTTPAddr)
	if err != nil {
		s.t.Fatal(err)
	}
	var members []string
	for _, m := range st.Members {
		members = append(members, fmt.Sprintf("%s@%s/%s voter=%t", m.ID, m.RaftAddr, m.HTTPAddr, m.Voter))
	}
	sn := snapshot{members: strings.Join(members, " "), paused: st.Cursor.Paused, cursor: st.Cursor.LastEventID, term: st.Term}
	if st.Lease.Holder != nil {
		sn.holder = *st.Lease.Holder
	}
	return sn
}

// unchanged checks that an attack left the state as before: the same
// members, no pause, a member or nobody holding the lease, the cursor no
// further than the source, no term forced up.
func (s *secured) unchanged(what string, before snapshot) {
	s.t.Helper()
	after := s.state()
	if after.members != before.members {
		s.t.Errorf("%s changed the members:\n before %s\n after  %s", what, before.members, after.members)
	}
	if after.paused != before.paused {
		s.t.Errorf("%s changed paused from %t to %t", what, before.paused, after.paused)
	}
	if after.holder != "" && s.c.Agent(s.t, after.holder) == nil {
		s.t.Errorf("%s: the lease is held by %q, not a member", what, after.holder)
	}
	if head := sourceHead(s.t, s.d); after.cursor > head {
		s.t.Errorf("%s: the cursor is at %d, beyond the source head %d", what, after.cursor, head)
	}
	if after.term > before.term+2 {
		s.t.Errorf("%s: the term went from %d to %d", what, before.term, after.term)
	}
}

// refused checks that err is the refusal wanted (nil want: any error).
func refused(t *testing.T, what string, err error, want error) {
	t.Helper()
	switch {
	case err == nil:
		t.Errorf("%s succeeded, want it refused", what)
	case want != nil && !errors.Is(err, want):
		t.Errorf("%s: %v, want %v", what, err, want)
	}
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestSecuredClusterRefusesEveryAttackUnderLoad(t *testing.T) {
	s := newSecured(t)
	bg := startLoad(t, s.d, loadgen.Config{
		Writers: 4, Rate: 300, RollbackFraction: 0.02, HoldFraction: 0.02, HoldFor: 300 * time.Millisecond,
		CacheInvalidationFraction: 0.05, BadFraction: 0.02, Seed: 10,
	})
	waitProcessing(t, s)
	leader := s.c.Leader(t)
	follower := s.c.Followers(leader)[0]
	ctx := testContext(t)

	t.Run("lease for a node that does not exist", func(t *testing.T) {
		before := s.state()
		mallory := api.LeaseRequest{Node: "mallory", TTL: "24h"}
		_, err := s.anonymous.Lease(ctx, follower.HTTPAddr, "acquire", mallory)
		refused(t, "acquire for mallory without a token", err, api.ErrUnauthorized)
		_, err = s.reader.Lease(ctx, follower.HTTPAddr, "acquire", mallory)
		refused(t, "acquire for mallory with the read token", err, api.ErrPermissionDenied)
		_, err = s.peer(follower.ID).Lease(ctx, follower.HTTPAddr, "acquire", mallory)
		refused(t, "acquire for mallory with a peer certificate", err, api.ErrPermissionDenied)
		// Even the operator cannot hand the lease to a non-member.
		_, err = s.operator.Lease(ctx, follower.HTTPAddr, "acquire", mallory)
		refused(t, "acquire for mallory with the operator token", err, fsm.ErrBadCommand)
		s.unchanged("acquire for mallory", before)
	})

	t.Run("forged advance through the internal endpoint", func(t *testing.T) {
		before := s.state()
		forged := fsm.Command{Op: fsm.OpAdvance, Node: follower.ID, Token: 1, Advance: &fsm.Advance{LastEventID: 999999999999}}
		for name, cl := range map[string]*api.Client{"the operator token": s.operator, "a client certificate": s.alice, "another CA's certificate": s.stranger} {
			_, err := cl.Apply(ctx, leader.HTTPAddr, forged)
			refused(t, "forged advance with "+name, err, nil)
		}
		// A peer may send an advance only in its own name; in its own name
		// this one is stale, refused without reaching the log.
		other := forged
		other.Node = leader.ID
		_, err := s.peer(follower.ID).Apply(ctx, leader.HTTPAddr, other)
		refused(t, "advance in another peer's name", err, api.ErrPermissionDenied)
		_, err = s.peer(follower.ID).Apply(ctx, leader.HTTPAddr, fsm.Command{Op: fsm.OpAcquire, Node: leader.ID, TTL: time.Hour})
		refused(t, "acquire in another peer's name", err, api.ErrPermissionDenied)
		_, err = s.peer(follower.ID).Apply(ctx, leader.HTTPAddr, fsm.Command{Op: fsm.OpSetPaused, Paused: true})
		refused(t, "a pause from a peer without the operator's token", err, api.ErrPermissionDenied)
		_, err = s.peer(follower.ID).Apply(ctx, leader.HTTPAddr, fsm.Command{Op: fsm.OpRemoveMember, Node: leader.ID})
		refused(t, "a member change from a peer", err, api.ErrPermissionDenied)
		res, err := s.peer(follower.ID).Apply(ctx, leader.HTTPAddr, forged)
		if err == nil && res.Err == nil {
			t.Errorf("a stale advance of %s's was granted: %+v", follower.ID, res)
		}
		if err == nil && res.Index != 0 {
			t.Errorf("a refused advance reached the log at index %d", res.Index)
		}
		s.unchanged("forged advance", before)
	})

	t.Run("pause without the operator token", func(t *testing.T) {
		before := s.state()
		_, err := s.anonymous.SetPaused(ctx, follower.HTTPAddr, true)
		refused(t, "pause without a token", err, api.ErrUnauthorized)
		_, err = s.reader.SetPaused(ctx, follower.HTTPAddr, true)
		refused(t, "pause with the read token", err, api.ErrPermissionDenied)
		_, err = s.alice.SetPaused(ctx, follower.HTTPAddr, true)
		refused(t, "pause with a client certificate and no token", err, api.ErrUnauthorized)
		s.unchanged("pause", before)
	})

	t.Run("join that would change or remove another member", func(t *testing.T) {
		before := s.state()
		victim := s.c.Agents[0]
		node2 := s.c.Agents[1]
		node3 := s.c.Agents[2]
		hijack := api.JoinRequest{NodeID: victim.ID, RaftAddr: victim.RaftAddr, HTTPAddr: "127.0.0.1:1"}
		_, err := s.peer(node2.ID).Join(ctx, leader.HTTPAddr, hijack)
		refused(t, "node2's certificate joining as node1", err, api.ErrPermissionDenied)
		_, err = s.alice.Join(ctx, leader.HTTPAddr, hijack)
		refused(t, "a client certificate joining", err, api.ErrPermissionDenied)
		_, err = s.operator.Join(ctx, leader.HTTPAddr, hijack)
		refused(t, "the operator token joining", err, api.ErrPermissionDenied)
		// A new node at an existing follower's raft address would have
		// removed that follower.
		newcomer := s.newPeer("node9")
		_, err = newcomer.Join(ctx, leader.HTTPAddr, api.JoinRequest{NodeID: "node9", RaftAddr: node3.RaftAddr, HTTPAddr: "127.0.0.1:2"})
		refused(t, "a join at node3's raft address", err, api.ErrJoinConflict)
		// An escape sequence for a node ID.
		_, err = s.peer(node2.ID).Join(ctx, leader.HTTPAddr, api.JoinRequest{NodeID: "\x1b[31mnode", RaftAddr: "127.0.0.1:3", HTTPAddr: "127.0.0.1:4"})
		refused(t, "a join with escapes in the node ID", err, api.ErrBadRequest)
		s.unchanged("hijacking joins", before)
	})

	t.Run("an unreachable joiner does not cost the quorum", func(t *testing.T) {
		before := s.state()
		// The operator consents to ghost's join (its own certificate and
		// the operator token), and ghost then never comes up.
		s.newPeer("ghost")
		ghost := s.consentedPeer("ghost")
		resp, err := ghost.Join(ctx, leader.HTTPAddr, api.JoinRequest{NodeID: "ghost", RaftAddr: "127.0.0.1:9", HTTPAddr: "127.0.0.1:10"})
		if err != nil {
			t.Fatalf("ghost's own join: %v", err)
		}
		t.Logf("ghost joined: %+v", resp)
		// It stays a non-voter; the three voters keep a leader and keep
		// processing.
		from := sourceHead(t, s.d)
		waitCursorPast(t, s, from, 20*time.Second)
		st := s.statusOf(leader)
		for _, m := range st.Members {
			if m.ID == "ghost" && m.Voter {
				t.Errorf("the unreachable ghost was promoted to voter: %+v", m)
			}
		}
		_ = before
	})

	t.Run("plaintext and strangers are refused on both ports", func(t *testing.T) {
		before := s.state()
		_, err := s.plaintext.Status(ctx, "http://"+leader.HTTPAddr)
		refused(t, "a plaintext HTTP request to the API", err, nil)
		_, err = s.stranger.Status(ctx, leader.HTTPAddr)
		refused(t, "a client certificate of another CA at the API", err, nil)
		for name, cfg := range map[string]*tls.Config{"no certificate": mustTLS(t, s, "", ""), "a client certificate": mustTLS(t, s, "alice", "")} {
			if err := raftHandshake(leader.RaftAddr, cfg); err == nil {
				t.Errorf("the Raft port accepted %s", name)
			}
		}
		// A hand-built AppendEntries with a higher term, as plain TCP: the
		// TLS layer closes the connection before Raft reads it.
		sendRawAppendEntries(t, leader.RaftAddr, before.term+1000)
		time.Sleep(200 * time.Millisecond) // give a wrongly accepted RPC time to act
		s.unchanged("raw AppendEntries", before)
	})

	t.Run("refused commands do not grow the log", func(t *testing.T) {
		before := s.state()
		dataDir := leader.DataDir
		size := func() int64 {
			fi, err := os.Stat(filepath.Join(dataDir, "raft.db"))
			if err != nil {
				t.Fatal(err)
			}
			return fi.Size()
		}
		start := size()
		peer := s.peer(follower.ID)
		gaps := make([]fsm.Gap, fsm.MaxGaps)
		for i := range gaps {
			gaps[i] = fsm.Gap{ID: int64(i + 1), FirstSeen: time.Now().UnixNano()}
		}
		stale := fsm.Command{Op: fsm.OpAdvance, Node: follower.ID, Token: 1, Reason: "",
			Advance: &fsm.Advance{LastEventID: fsm.MaxGaps + 1, Gaps: gaps}}
		body, _ := json.Marshal(stale)
		t.Logf("each refused command is %d bytes", len(body))
		for i := 0; i < 21; i++ {
			res, err := peer.Apply(ctx, leader.HTTPAddr, stale)
			if err != nil || res.Err == nil || res.Index != 0 {
				t.Fatalf("stale advance %d: %+v, %v; want refused before the log", i, res, err)
			}
		}
		if grew := size() - start; grew > 4<<20 {
			t.Errorf("21 refused commands of %d bytes grew raft.db by %d bytes", len(body), grew)
		}
		// A body over the limit is refused before it is read whole.
		huge := bytes.Repeat([]byte(" "), api.MaxRequestBody+1)
		status, _, err := peer.Raw(ctx, http.MethodPost, leader.HTTPAddr, api.PathApply, huge)
		if err != nil || status != http.StatusRequestEntityTooLarge {
			t.Errorf("a body over the limit: HTTP %d, %v; want 413", status, err)
		}
		s.unchanged("refused commands", before)
	})

	t.Run("a slow body is cut off and idle connections do not starve the API", func(t *testing.T) {
		before := s.state()
		defer s.unchanged("a slow body", before)
		start := time.Now()
		conn, err := tls.Dial("tcp", follower.HTTPAddr, mustTLS(t, s, "", ""))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		// A renew reads its body: the handler waits for all of it.
		fmt.Fprintf(conn, "POST %srenew HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 100\r\n\r\n", api.PathLease, s.c.Security.OperatorToken)
		var closed time.Duration
		for i := 0; i < 100; i++ {
			if _, err := conn.Write([]byte(" ")); err != nil {
				closed = time.Since(start)
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		if closed == 0 || closed > 15*time.Second {
			t.Errorf("a body sent a byte every 500ms was cut off after %s, want within the 10s read timeout", closed)
		}
		// Many connections that say nothing: the cap and the header
		// timeout keep them from holding the API for long.
		var idle []net.Conn
		for i := 0; i < 300; i++ {
			c, err := net.Dial("tcp", follower.HTTPAddr)
			if err != nil {
				break
			}
			idle = append(idle, c)
		}
		defer func() {
			for _, c := range idle {
				c.Close()
			}
		}()
		t0 := time.Now()
		hctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		// A client of its own, with no connection kept alive from before.
		fresh, err := s.c.Security.Client(s.c.Security.ReadToken)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fresh.Health(hctx, follower.HTTPAddr); err != nil {
			t.Errorf("with %d idle connections open, a health check failed: %v", len(idle), err)
		}
		t.Logf("%d idle connections; a health check answered after %s", len(idle), time.Since(t0).Round(time.Millisecond))
	})

	t.Run("status needs the read token", func(t *testing.T) {
		_, err := s.anonymous.Status(ctx, follower.HTTPAddr)
		refused(t, "status without a token", err, api.ErrUnauthorized)
		if _, err := s.reader.Status(ctx, follower.HTTPAddr); err != nil {
			t.Errorf("status with the read token: %v", err)
		}
		if _, err := s.anonymous.Health(ctx, follower.HTTPAddr); err != nil {
			t.Errorf("health without a token: %v", err)
		}
	})

	t.Run("certificates rotated with SIGHUP", func(t *testing.T) {
		s.rotateCertificates()
	})

	bg.stop(t)
	checkOutcome(t, s.d, s.c)
}

// newPeer makes a peer certificate for a node that is not running and a
// client presenting it.
func (s *secured) newPeer(id string) *api.Client {
	s.t.Helper()
	if _, _, err := tlsutil.CreateCert(s.c.Security.Dir, tlsutil.CertRequest{Node: id, Days: 1}); err != nil && !strings.Contains(err.Error(), "exists already") {
		s.t.Fatal(err)
	}
	return s.peer(id)
}

func (s *secured) statusOf(a *ts.Agent) api.Status {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := s.operator.Status(ctx, a.HTTPAddr)
	if err != nil {
		s.t.Fatal(err)
	}
	return st
}

// waitProcessing waits until the cluster has processed some events.
func waitProcessing(t *testing.T, s *secured) {
	t.Helper()
	waitCursorPast(t, s, 100, 30*time.Second)
}

func waitCursorPast(t *testing.T, s *secured, id int64, timeout time.Duration) {
	t.Helper()
	ts.WaitFor(t, timeout, fmt.Sprintf("the cursor past %d", id), func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		st, err := s.operator.Status(ctx, s.c.Agents[0].HTTPAddr)
		if err != nil {
			return false, err.Error()
		}
		return st.Cursor.LastEventID > id, fmt.Sprintf("cursor %d", st.Cursor.LastEventID)
	})
}

// mustTLS is a client tls.Config trusting the cluster's CA, presenting
// client name's certificate (none for "").
func mustTLS(t *testing.T, s *secured, client, _ string) *tls.Config {
	t.Helper()
	ca, _ := tlsutil.CAFiles(s.c.Security.Dir)
	cert, key := "", ""
	if client != "" {
		cert, key = tlsutil.ClientFiles(s.c.Security.Dir, client)
	}
	cfg, err := tlsutil.Client(ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// raftHandshake dials the Raft port with cfg and reports whether the
// server let the connection through (it fails on the first read when the
// server refused the client's certificate).
func raftHandshake(addr string, cfg *tls.Config) error {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte{0}); err != nil {
		return err
	}
	_, err = conn.Read(make([]byte, 1))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil // accepted: Raft waits for the rest of the RPC
	}
	return err
}

// sendRawAppendEntries writes a msgpack AppendEntries RPC with term, as
// raft's NetworkTransport frames it, to the Raft port over plain TCP.
func sendRawAppendEntries(t *testing.T, addr string, term uint64) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	w := bufio.NewWriter(conn)
	const rpcAppendEntries = 0
	_ = w.WriteByte(rpcAppendEntries)
	enc := codec.NewEncoder(w, &codec.MsgpackHandle{})
	req := raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("mallory"), Addr: []byte(addr)},
		Term:      term, Leader: []byte(addr),
		Entries: []*raft.Log{{Index: 1 << 40, Term: term, Type: raft.LogCommand, Data: []byte(`{"op":"set_paused","paused":true}`)}},
	}
	if err := enc.Encode(&req); err != nil {
		t.Fatal(err)
	}
	_ = w.Flush()
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	n, _ := io.Copy(io.Discard, conn)
	t.Logf("the Raft port answered %d bytes to a plaintext AppendEntries", n)
}

// rotateCertificates gives every node a new peer certificate from the same
// CA, sends SIGHUP, and checks that each then serves the new one; the load
// goes on meanwhile.
func (s *secured) rotateCertificates() {
	t := s.t
	before := map[string]*big.Int{}
	for _, a := range s.c.Agents {
		before[a.ID] = servedSerial(t, s, a.HTTPAddr)
		cert, key := tlsutil.NodeFiles(s.c.Security.Dir, a.ID)
		os.Remove(cert)
		os.Remove(key)
		if _, _, err := tlsutil.CreateCert(s.c.Security.Dir, tlsutil.CertRequest{Node: a.ID, Days: 30}); err != nil {
			t.Fatal(err)
		}
		if err := a.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range s.c.Agents {
		ts.WaitFor(t, 10*time.Second, a.ID+" to serve its new certificate", func() (bool, string) {
			serial := servedSerial(t, s, a.HTTPAddr)
			return serial.Cmp(before[a.ID]) != 0, "still serial " + serial.String()
		})
		if !strings.Contains(a.Log(), "reloaded the TLS certificates") {
			t.Errorf("%s's log does not say it reloaded its certificates", a.ID)
		}
		if !a.Running() {
			t.Fatalf("%s exited on SIGHUP", a.ID)
		}
	}
	waitCursorPast(t, s, sourceHead(t, s.d), 30*time.Second)
}

// servedSerial is the serial number of the certificate the API at addr
// presents.
func servedSerial(t *testing.T, s *secured, addr string) *big.Int {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 3 * time.Second}, "tcp", addr, mustTLS(t, s, "", ""))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber
}

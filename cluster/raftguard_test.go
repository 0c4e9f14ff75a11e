package cluster

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/geocursor/geocursor/tlsutil"
)

// The guard is tested with raft's own NetworkTransport on both sides: a
// client transport presenting a peer certificate sends real RPCs to a
// guarded TLS stream layer under a server transport, whose consumer
// records what Raft received.

// Addresses of the members in the fake configuration; the headers the
// tests send name them.
const (
	addr1 = "10.0.0.1:7001"
	addr2 = "10.0.0.2:7001"
	addr3 = "10.0.0.3:7001"
)

// testPeers creates a CA and peer certificates for ids, and loads them.
func testPeers(t *testing.T, ids ...string) map[string]*tlsutil.Node {
	t.Helper()
	dir := t.TempDir()
	if _, _, err := tlsutil.CreateCA(dir, 1); err != nil {
		t.Fatal(err)
	}
	ca, _ := tlsutil.CAFiles(dir)
	nodes := map[string]*tlsutil.Node{}
	for _, id := range ids {
		if _, _, err := tlsutil.CreateCert(dir, tlsutil.CertRequest{Node: id, Days: 1}); err != nil {
			t.Fatal(err)
		}
		cert, key := tlsutil.NodeFiles(dir, id)
		n, err := tlsutil.LoadNode(tlsutil.Files{CA: ca, Cert: cert, Key: key}, id)
		if err != nil {
			t.Fatal(err)
		}
		nodes[id] = n
	}
	return nodes
}

// fakeView is a raftView the test sets.
type fakeView struct {
	mu     sync.Mutex
	leader string
	conf   raft.Configuration
}

func (v *fakeView) Leader() string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.leader
}

func (v *fakeView) Configuration() (raft.Configuration, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.conf.Clone(), nil
}

func (v *fakeView) set(f func(v *fakeView)) {
	v.mu.Lock()
	defer v.mu.Unlock()
	f(v)
}

// threeMembers is node1..node3 as voters, node1 leading: the view of
// node3, a follower.
func threeMembers() *fakeView {
	return &fakeView{leader: "node1", conf: raft.Configuration{Servers: []raft.Server{
		{Suffrage: raft.Voter, ID: "node1", Address: addr1},
		{Suffrage: raft.Voter, ID: "node2", Address: addr2},
		{Suffrage: raft.Voter, ID: "node3", Address: addr3},
	}}}
}

// received is one RPC as Raft's consumer got it, with the InstallSnapshot
// data read from it.
type received struct {
	cmd  any
	body []byte
}

// guardedServer is node3's Raft port: a guarded TLS stream layer under a
// NetworkTransport whose consumer records every RPC and grants it.
type guardedServer struct {
	stream *tlsStreamLayer
	addr   raft.ServerAddress
	got    chan received
}

func startGuardedServer(t *testing.T, self *tlsutil.Node, view raftView) *guardedServer {
	t.Helper()
	stream, err := newTLSStreamLayer("127.0.0.1:0", nil, self.RaftServer(), self.PeerClient(), hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	stream.advertise = stream.ln.Addr()
	if view != nil {
		stream.guard.bind(view)
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: stream, MaxPool: 2, Timeout: 5 * time.Second, Logger: hclog.NewNullLogger(),
	})
	t.Cleanup(func() { trans.Close() })
	s := &guardedServer{stream: stream, addr: raft.ServerAddress(stream.ln.Addr().String()), got: make(chan received, 16)}
	go func() {
		for rpc := range trans.Consumer() {
			r := received{cmd: rpc.Command}
			var resp any
			switch rpc.Command.(type) {
			case *raft.AppendEntriesRequest:
				resp = &raft.AppendEntriesResponse{Success: true}
			case *raft.RequestVoteRequest:
				resp = &raft.RequestVoteResponse{Granted: true}
			case *raft.RequestPreVoteRequest:
				resp = &raft.RequestPreVoteResponse{Granted: true}
			case *raft.InstallSnapshotRequest:
				r.body, _ = io.ReadAll(rpc.Reader)
				resp = &raft.InstallSnapshotResponse{Success: true}
			case *raft.TimeoutNowRequest:
				resp = &raft.TimeoutNowResponse{}
			}
			s.got <- r
			rpc.Respond(resp, nil)
		}
	}()
	return s
}

// refusedCount is how many RPCs the server refused for reason.
func (s *guardedServer) refusedCount(reason string) float64 {
	return testutil.ToFloat64(s.stream.guard.refused.WithLabelValues(reason))
}

// nothingReceived checks that Raft got no RPC.
func (s *guardedServer) nothingReceived(t *testing.T, what string) {
	t.Helper()
	select {
	case r := <-s.got:
		t.Errorf("%s: Raft received %T, want it refused before Raft", what, r.cmd)
	default:
	}
}

// receive waits for the RPC Raft got.
func (s *guardedServer) receive(t *testing.T, what string) received {
	t.Helper()
	select {
	case r := <-s.got:
		return r
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: Raft received nothing", what)
		return received{}
	}
}

// dialLayer is a client-only raft.StreamLayer presenting one certificate.
type dialLayer struct {
	cfg  *tls.Config
	once sync.Once
	done chan struct{}
}

func (d *dialLayer) Accept() (net.Conn, error) { <-d.done; return nil, net.ErrClosed }
func (d *dialLayer) Close() error              { d.once.Do(func() { close(d.done) }); return nil }
func (d *dialLayer) Addr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }
func (d *dialLayer) Dial(a raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", string(a), d.cfg)
}

// peerClient is a Raft NetworkTransport that dials with node's certificate.
func peerClient(t *testing.T, node *tlsutil.Node) *raft.NetworkTransport {
	t.Helper()
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: &dialLayer{cfg: node.PeerClient(), done: make(chan struct{})}, MaxPool: 2, Timeout: 5 * time.Second, Logger: hclog.NewNullLogger(),
	})
	t.Cleanup(func() { trans.Close() })
	return trans
}

func header(id, addr string) raft.RPCHeader {
	return raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(id), Addr: []byte(addr)}
}

// forgedEntries is the attack of issue 18: a pause and a new member.
func forgedEntries(term uint64) []*raft.Log {
	return []*raft.Log{
		{Index: 101, Term: term, Type: raft.LogCommand, Data: []byte(`{"op":"set_paused","paused":true}`)},
		{Index: 102, Term: term, Type: raft.LogConfiguration, Data: raft.EncodeConfiguration(raft.Configuration{Servers: []raft.Server{
			{Suffrage: raft.Voter, ID: "node1", Address: addr1},
			{Suffrage: raft.Nonvoter, ID: "mallory", Address: "127.0.0.1:9"},
		}})},
	}
}

// send sends one RPC of kind from client to the server, and returns the
// client's error.
func send(client *raft.NetworkTransport, to raft.ServerAddress, req any, body []byte) error {
	switch r := req.(type) {
	case *raft.AppendEntriesRequest:
		return client.AppendEntries("node3", to, r, &raft.AppendEntriesResponse{})
	case *raft.RequestVoteRequest:
		return client.RequestVote("node3", to, r, &raft.RequestVoteResponse{})
	case *raft.RequestPreVoteRequest:
		return client.RequestPreVote("node3", to, r, &raft.RequestPreVoteResponse{})
	case *raft.TimeoutNowRequest:
		return client.TimeoutNow("node3", to, r, &raft.TimeoutNowResponse{})
	case *raft.InstallSnapshotRequest:
		return client.InstallSnapshot("node3", to, r, &raft.InstallSnapshotResponse{}, bytes.NewReader(body))
	}
	panic("unknown request")
}

func TestRaftGuardPassesHonestTrafficUnchanged(t *testing.T) {
	peers := testPeers(t, "node1", "node2", "node3")
	view := threeMembers()
	srv := startGuardedServer(t, peers["node3"], view)
	leader := peerClient(t, peers["node1"])
	candidate := peerClient(t, peers["node2"])

	snapshot := make([]byte, 3<<20+17) // larger than every buffer on the way
	if _, err := rand.Read(snapshot); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		client *raft.NetworkTransport
		req    any
		body   []byte
	}{
		{"heartbeat from the leader", leader, &raft.AppendEntriesRequest{RPCHeader: header("node1", addr1), Term: 4}, nil},
		{"entries from the leader", leader, &raft.AppendEntriesRequest{
			RPCHeader: header("node1", addr1), Term: 4, PrevLogEntry: 100, PrevLogTerm: 4, LeaderCommitIndex: 100,
			Entries: []*raft.Log{{Index: 101, Term: 4, Type: raft.LogCommand, Data: []byte(`{"op":"renew","node":"node2","token":7}`)}},
		}, nil},
		{"a pre-vote from a member", candidate, &raft.RequestPreVoteRequest{RPCHeader: header("node2", addr2), Term: 5, LastLogIndex: 101, LastLogTerm: 4}, nil},
		{"a vote from a member", candidate, &raft.RequestVoteRequest{RPCHeader: header("node2", addr2), Term: 5, LastLogIndex: 101, LastLogTerm: 4}, nil},
		{"a snapshot from the leader", leader, &raft.InstallSnapshotRequest{
			RPCHeader: header("node1", addr1), SnapshotVersion: 1, Term: 4, LastLogIndex: 100, LastLogTerm: 4,
			Configuration: raft.EncodeConfiguration(view.conf), ConfigurationIndex: 3, Size: int64(len(snapshot)),
		}, snapshot},
		{"entries after the snapshot", leader, &raft.AppendEntriesRequest{RPCHeader: header("node1", addr1), Term: 4, PrevLogEntry: 101, PrevLogTerm: 4, LeaderCommitIndex: 101}, nil},
		{"a leadership transfer from the leader", leader, &raft.TimeoutNowRequest{RPCHeader: header("node1", addr1)}, nil},
	}
	for _, c := range cases {
		if err := send(c.client, srv.addr, c.req, c.body); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := srv.receive(t, c.name)
		if !reflect.DeepEqual(got.cmd, c.req) {
			t.Errorf("%s: Raft received\n%#v\nwant\n%#v", c.name, got.cmd, c.req)
		}
		if !bytes.Equal(got.body, c.body) {
			t.Errorf("%s: Raft read %d bytes of snapshot, want the %d sent", c.name, len(got.body), len(c.body))
		}
	}
	for _, r := range refusalReasons {
		if n := srv.refusedCount(r); n != 0 {
			t.Errorf("refused %v honest RPCs as %s", n, r)
		}
	}
}

func TestRaftGuardRefusesForgedRPCs(t *testing.T) {
	peers := testPeers(t, "node1", "node2", "node3", "node9")
	cases := []struct {
		name   string
		cert   string
		req    any
		view   func(v *fakeView)
		reason string
	}{
		{"entries in the leader's name over a non-member's certificate", "node9",
			&raft.AppendEntriesRequest{RPCHeader: header("node1", addr1), Term: 9, Entries: forgedEntries(9)}, nil, refusedImpersonation},
		{"entries in the leader's name over a follower's certificate", "node2",
			&raft.AppendEntriesRequest{RPCHeader: header("node1", addr1), Term: 9, Entries: forgedEntries(9)}, nil, refusedImpersonation},
		{"entries with no ID in the header", "node2",
			&raft.AppendEntriesRequest{RPCHeader: header("", ""), Leader: []byte(addr1), Term: 9, Entries: forgedEntries(9)}, nil, refusedImpersonation},
		{"a transfer vote in a member's name over a non-member's certificate", "node9",
			&raft.RequestVoteRequest{RPCHeader: header("node2", addr2), Term: 9, LastLogIndex: 1 << 40, LastLogTerm: 9, LeadershipTransfer: true}, nil, refusedImpersonation},
		{"TimeoutNow in the leader's name over a follower's certificate", "node2",
			&raft.TimeoutNowRequest{RPCHeader: header("node1", addr1)}, nil, refusedImpersonation},
		{"entries in its own name from a non-member", "node9",
			&raft.AppendEntriesRequest{RPCHeader: header("node9", "127.0.0.1:9"), Term: 9, Entries: forgedEntries(9)}, nil, refusedNotMember},
		{"a vote in its own name from a non-member", "node9",
			&raft.RequestVoteRequest{RPCHeader: header("node9", "127.0.0.1:9"), Term: 9, LeadershipTransfer: true}, nil, refusedNotMember},
		{"a pre-vote in its own name from a non-member", "node9",
			&raft.RequestPreVoteRequest{RPCHeader: header("node9", "127.0.0.1:9"), Term: 9}, nil, refusedNotMember},
		{"entries at a higher term from a follower in its own name", "node2",
			&raft.AppendEntriesRequest{RPCHeader: header("node2", addr2), Term: 9, Entries: forgedEntries(9)}, nil, refusedNotLeader},
		{"a snapshot from a follower in its own name", "node2",
			&raft.InstallSnapshotRequest{RPCHeader: header("node2", addr2), Term: 9, Size: 0}, nil, refusedNotLeader},
		{"TimeoutNow from a follower in its own name", "node2",
			&raft.TimeoutNowRequest{RPCHeader: header("node2", addr2)}, nil, refusedNotLeader},
		{"TimeoutNow while this node follows nobody", "node2",
			&raft.TimeoutNowRequest{RPCHeader: header("node2", addr2)}, func(v *fakeView) { v.leader = "" }, refusedNotLeader},
		{"entries from a non-voter while this node follows nobody", "node2",
			&raft.AppendEntriesRequest{RPCHeader: header("node2", addr2), Term: 9},
			func(v *fakeView) { v.leader, v.conf.Servers[1].Suffrage = "", raft.Nonvoter }, refusedNotLeader},
		{"a vote in its own name at the leader's address", "node2",
			&raft.RequestVoteRequest{RPCHeader: header("node2", addr1), Term: 9}, nil, refusedWrongAddress},
		{"entries from the leader's certificate at another address", "node1",
			&raft.AppendEntriesRequest{RPCHeader: header("node1", addr2), Term: 4}, nil, refusedWrongAddress},
		{"a vote to a node without a configuration", "node2",
			&raft.RequestVoteRequest{RPCHeader: header("node2", addr2), Term: 9},
			func(v *fakeView) { v.leader, v.conf = "", raft.Configuration{} }, refusedNotMember},
		{"entries to a joiner from another than the leader it follows", "node2",
			&raft.AppendEntriesRequest{RPCHeader: header("node2", addr2), Term: 9},
			func(v *fakeView) { v.conf = raft.Configuration{} }, refusedNotLeader},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			view := threeMembers()
			if c.view != nil {
				view.set(c.view)
			}
			srv := startGuardedServer(t, peers["node3"], view)
			client := peerClient(t, peers[c.cert])
			if err := send(client, srv.addr, c.req, nil); err == nil {
				t.Errorf("the sender saw no error")
			}
			srv.nothingReceived(t, c.name)
			if n := srv.refusedCount(c.reason); n != 1 {
				t.Errorf("refused as %s %v times, want 1", c.reason, n)
			}
			// The connection is gone, not the port: the leader still gets
			// through.
			hb := &raft.AppendEntriesRequest{RPCHeader: header("node1", addr1), Term: 4}
			if c.view == nil {
				if err := send(peerClient(t, peers["node1"]), srv.addr, hb, nil); err != nil {
					t.Errorf("the leader's heartbeat after the refusal: %v", err)
				}
				srv.receive(t, "the leader's heartbeat")
			}
		})
	}
}

// A new leader's first entries find this node following nobody: Raft
// forgets its leader when it votes in a new term or times out.
func TestRaftGuardLetsAnElectedLeaderIn(t *testing.T) {
	peers := testPeers(t, "node1", "node2", "node3")
	view := threeMembers()
	srv := startGuardedServer(t, peers["node3"], view)
	node2 := peerClient(t, peers["node2"])
	first := &raft.AppendEntriesRequest{RPCHeader: header("node2", addr2), Term: 5, PrevLogEntry: 101, PrevLogTerm: 4}

	if err := send(node2, srv.addr, first, nil); err == nil {
		t.Fatal("entries from node2 at a higher term while following node1 went through")
	}
	view.set(func(v *fakeView) { v.leader = "" })
	if err := send(node2, srv.addr, first, nil); err != nil {
		t.Fatalf("entries while this node follows nobody: %v", err)
	}
	srv.receive(t, "entries while following nobody")
	view.set(func(v *fakeView) { v.leader = "node2" })
	if err := send(node2, srv.addr, &raft.TimeoutNowRequest{RPCHeader: header("node2", addr2)}, nil); err != nil {
		t.Fatalf("TimeoutNow from the new leader: %v", err)
	}
	srv.receive(t, "TimeoutNow from the new leader")
}

// A joiner has no configuration until its first entries arrive.
func TestRaftGuardLetsAJoinersFirstEntriesIn(t *testing.T) {
	peers := testPeers(t, "node1", "node3")
	view := &fakeView{}
	srv := startGuardedServer(t, peers["node3"], view)
	req := &raft.InstallSnapshotRequest{RPCHeader: header("node1", addr1), Term: 4, Size: 5}
	if err := send(peerClient(t, peers["node1"]), srv.addr, req, []byte("state")); err != nil {
		t.Fatalf("a snapshot to a node without a configuration: %v", err)
	}
	if got := srv.receive(t, "the joiner's snapshot"); string(got.body) != "state" {
		t.Errorf("snapshot body %q, want %q", got.body, "state")
	}
}

// Unbound (no Raft yet) the guard checks the header against the
// certificate and nothing else; holding, it waits for its Raft.
func TestRaftGuardBeforeItsRaft(t *testing.T) {
	peers := testPeers(t, "node1", "node3", "node9")
	srv := startGuardedServer(t, peers["node3"], nil)
	node9 := peerClient(t, peers["node9"])
	if err := send(node9, srv.addr, &raft.AppendEntriesRequest{RPCHeader: header("node1", addr1), Term: 9}, nil); err == nil {
		t.Error("an unbound guard let a header of another node through")
	}
	if err := send(node9, srv.addr, &raft.AppendEntriesRequest{RPCHeader: header("node9", "127.0.0.1:9"), Term: 9}, nil); err != nil {
		t.Errorf("an unbound guard refused a header of the certificate's own node: %v", err)
	}
	srv.receive(t, "node9 in its own name")

	srv.stream.guard.holdUntilBound()
	done := make(chan error, 1)
	go func() {
		done <- send(node9, srv.addr, &raft.AppendEntriesRequest{RPCHeader: header("node9", "127.0.0.1:9"), Term: 9}, nil)
	}()
	time.Sleep(100 * time.Millisecond) // long enough to have passed an unheld guard
	srv.nothingReceived(t, "an RPC before the guard's Raft")
	srv.stream.guard.bind(threeMembers())
	if err := <-done; err == nil {
		t.Error("a non-member's RPC held until the guard's Raft went through")
	}
	srv.nothingReceived(t, "a non-member's RPC held until the guard's Raft")
}

// TestGuardedConnHandsOnTheSameBytes reads a stream of RPCs as raft's
// client frames them through the guard, and compares byte for byte.
func TestGuardedConnHandsOnTheSameBytes(t *testing.T) {
	var wire bytes.Buffer
	w := bufio.NewWriter(&wire)
	enc := codec.NewEncoder(w, &codec.MsgpackHandle{BasicHandle: codec.BasicHandle{TimeNotBuiltin: true}})
	body := make([]byte, 200<<10)
	if _, err := rand.Read(body); err != nil {
		t.Fatal(err)
	}
	write := func(typ uint8, req any) {
		_ = w.WriteByte(typ)
		if err := enc.Encode(req); err != nil {
			t.Fatal(err)
		}
	}
	write(rpcAppendEntries, &raft.AppendEntriesRequest{RPCHeader: header("node1", addr1), Term: 4, Entries: []*raft.Log{
		{Index: 7, Term: 4, Type: raft.LogCommand, Data: []byte("x"), AppendedAt: time.Now()},
	}})
	write(rpcRequestPreVote, &raft.RequestPreVoteRequest{RPCHeader: header("node1", addr1), Term: 5})
	write(rpcRequestVote, &raft.RequestVoteRequest{RPCHeader: header("node1", addr1), Term: 5, LeadershipTransfer: true})
	write(rpcInstallSnapshot, &raft.InstallSnapshotRequest{RPCHeader: header("node1", addr1), Term: 5, Size: int64(len(body))})
	_, _ = w.Write(body)
	write(rpcTimeoutNow, &raft.TimeoutNowRequest{RPCHeader: header("node1", addr1)})
	write(rpcAppendEntries, &raft.AppendEntriesRequest{RPCHeader: header("node1", addr1), Term: 5})
	_ = w.Flush()
	sent := append([]byte(nil), wire.Bytes()...)

	server, client := net.Pipe()
	go func() {
		_, _ = client.Write(sent)
		client.Close()
	}()
	g := newRaftGuard(hclog.NewNullLogger(), make(chan struct{}))
	g.bind(threeMembers())
	got, err := io.ReadAll(g.wrap(server, "node1"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, sent) {
		t.Fatalf("the guard handed on %d bytes, not the %d sent", len(got), len(sent))
	}
}

// TestGuardedConnRefusesMalformedRPCs: what raft could not decode never
// reaches it either, and a request too large to buffer is refused.
func TestGuardedConnRefusesMalformedRPCs(t *testing.T) {
	for _, c := range []struct {
		name string
		wire []byte
	}{
		{"an unknown type", []byte{9, 0x80}},
		{"not msgpack", []byte{rpcAppendEntries, 0xc1, 0xc1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			server, client := net.Pipe()
			go func() {
				_, _ = client.Write(c.wire)
				_, _ = io.Copy(io.Discard, client)
			}()
			g := newRaftGuard(hclog.NewNullLogger(), make(chan struct{}))
			got, err := io.ReadAll(g.wrap(server, "node1"))
			if err != nil || len(got) != 0 {
				t.Errorf("read %d bytes and %v, want none and EOF", len(got), err)
			}
			if n := testutil.ToFloat64(g.refused.WithLabelValues(refusedMalformed)); n != 1 {
				t.Errorf("refused as malformed %v times, want 1", n)
			}
		})
	}
}

// blockingLogs is a log store whose writes wait until release is closed:
// it stops Raft's main loop (a leader stores its entries from there).
type blockingLogs struct {
	*raft.InmemStore
	block   chan struct{}
	release chan struct{}
}

func (b *blockingLogs) StoreLogs(logs []*raft.Log) error {
	select {
	case <-b.block:
		<-b.release
	default:
	}
	return b.InmemStore.StoreLogs(logs)
}

// TestRaftViewDoesNotWaitForRaftsMainLoop: the guard reads Raft from the
// transport's goroutine, which Raft's main loop may be waiting on. This
// holds hashicorp/raft to answering the view without its main loop.
func TestRaftViewDoesNotWaitForRaftsMainLoop(t *testing.T) {
	store := raft.NewInmemStore()
	logs := &blockingLogs{InmemStore: store, block: make(chan struct{}), release: make(chan struct{})}
	_, trans := raft.NewInmemTransport("node1")
	conf := raft.DefaultConfig()
	conf.LocalID = "node1"
	conf.Logger = hclog.NewNullLogger()
	conf.HeartbeatTimeout, conf.ElectionTimeout, conf.LeaderLeaseTimeout = 50*time.Millisecond, 50*time.Millisecond, 50*time.Millisecond
	r, err := raft.NewRaft(conf, &raft.MockFSM{}, logs, store, raft.NewInmemSnapshotStore(), trans)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		select {
		case <-logs.release:
		default:
			close(logs.release)
		}
		r.Shutdown()
	})
	if err := r.BootstrapCluster(raft.Configuration{Servers: []raft.Server{{ID: "node1", Address: trans.LocalAddr()}}}).Error(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); r.State() != raft.Leader; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the one-node Raft did not lead")
		}
	}
	close(logs.block)
	r.Apply([]byte("x"), 0) // the main loop now waits in StoreLogs
	time.Sleep(50 * time.Millisecond)

	view := newRaftNodeView(r)
	done := make(chan error, 1)
	go func() {
		view.Leader()
		conf, err := view.Configuration()
		if err == nil && len(conf.Servers) != 1 {
			err = errors.New("wrong configuration")
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("reading the view waited for Raft's main loop")
	}
	close(logs.release)
}

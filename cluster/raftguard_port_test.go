package cluster

import (
	"net"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// The Raft port's limits (transport.go): strangers' silent connections
// cannot keep a peer out, and one certificate's connections are bounded.

func TestRaftPortLetsAPeerInPastSilentConnections(t *testing.T) {
	peers := testPeers(t, "node1", "node3")
	srv := startGuardedServer(t, peers["node3"], threeMembers())
	var silent []net.Conn
	t.Cleanup(func() {
		for _, c := range silent {
			c.Close()
		}
	})
	flood := func(n int) {
		for i := 0; i < n; i++ {
			c, err := net.DialTimeout("tcp", string(srv.addr), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			silent = append(silent, c)
		}
	}
	flood(80)
	hb := &raft.AppendEntriesRequest{RPCHeader: header("node1", addr1), Term: 4}
	for i := 0; i < 5; i++ {
		start := time.Now()
		// A new transport each time: a new connection, a new handshake.
		if err := send(peerClient(t, peers["node1"]), srv.addr, hb, nil); err != nil {
			t.Fatalf("the leader's heartbeat past %d silent connections: %v", len(silent), err)
		}
		srv.receive(t, "the leader's heartbeat")
		if took := time.Since(start); took > time.Second {
			t.Errorf("the leader's heartbeat took %s past the silent connections", took)
		}
		flood(20) // the stranger keeps at it
	}
}

// remoteConn is a net.Conn from a given address.
type remoteConn struct {
	net.Conn
	from net.Addr
}

func (c *remoteConn) RemoteAddr() net.Addr { return c.from }

func TestHandshakeSlotsMakeRoomOldestFirst(t *testing.T) {
	h := handshakeSlots{max: 4, perHost: 2, pending: map[net.Conn]pendingHandshake{}, byHost: map[string]int{}}
	from := func(ip string) net.Conn {
		time.Sleep(time.Millisecond) // distinct arrival times
		return &remoteConn{from: &net.TCPAddr{IP: net.ParseIP(ip), Port: 1000}}
	}
	a1, a2 := from("192.0.2.1"), from("192.0.2.1")
	for _, c := range []net.Conn{a1, a2} {
		if ev := h.admit(c); ev != nil {
			t.Fatalf("evicted with room to spare")
		}
	}
	a3 := from("192.0.2.1")
	if ev := h.admit(a3); ev != a1 {
		t.Errorf("a host at its limit made room with %v, want its oldest", ev)
	}
	l1, l2, l3 := from("127.0.0.1"), from("127.0.0.1"), from("127.0.0.1")
	if ev := h.admit(l1); ev != nil {
		t.Errorf("loopback is not limited per host, yet evicted %v", ev)
	}
	if ev := h.admit(l2); ev != nil {
		t.Errorf("evicted %v with room to spare", ev)
	}
	if ev := h.admit(l3); ev != a2 {
		t.Errorf("a full port made room with %v, want the oldest of all", ev)
	}
	if h.done(a1) || h.done(a2) {
		t.Error("an evicted handshake still counted as waiting")
	}
	if !h.done(l1) || len(h.pending) != 3 || h.byHost["192.0.2.1"] != 1 || h.byHost["127.0.0.1"] != 2 {
		t.Errorf("after done: %d pending, by host %v", len(h.pending), h.byHost)
	}
}

func TestPeerConnsCloseTheOldestOverTheLimit(t *testing.T) {
	p := peerConns{max: 2, byPeer: map[string][]*guardedConn{}}
	c1, c2, c3 := &guardedConn{}, &guardedConn{}, &guardedConn{}
	p.add("node1", c1)
	p.add("node1", c2)
	if ev := p.add("node2", &guardedConn{}); ev != nil {
		t.Error("another peer's connection counted against node1")
	}
	if ev := p.add("node1", c3); ev != c1 {
		t.Errorf("made room with %p, want the oldest %p", ev, c1)
	}
	p.remove("node1", c2)
	p.remove("node1", c1) // gone already: no-op
	if got := p.byPeer["node1"]; len(got) != 1 || got[0] != c3 {
		t.Errorf("node1 holds %v, want only its newest", got)
	}
}

// Dialing a member's address, a node accepts only that member's
// certificate: another peer's cannot answer in its name.
func TestRaftPortDialsOnlyTheMemberAtAnAddress(t *testing.T) {
	peers := testPeers(t, "node1", "node3")
	srv := startGuardedServer(t, peers["node3"], threeMembers())
	dialer, err := newTLSStreamLayer("127.0.0.1:0", nil, peers["node1"].RaftServer(), peers["node1"].PeerClient(), hclog.NewNullLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dialer.Close() })
	view := &fakeView{leader: "node1", conf: raft.Configuration{Servers: []raft.Server{
		{Suffrage: raft.Voter, ID: "node1", Address: raft.ServerAddress(dialer.ln.Addr().String())},
		{Suffrage: raft.Voter, ID: "node2", Address: srv.addr}, // node3's certificate answers there
	}}}
	dialer.guard.bind(view)
	if c, err := dialer.Dial(srv.addr, time.Second); err == nil {
		c.Close()
		t.Fatal("dialled node2's address and accepted node3's certificate")
	}
	view.set(func(v *fakeView) { v.conf.Servers[1].ID = "node3" })
	c, err := dialer.Dial(srv.addr, time.Second)
	if err != nil {
		t.Fatalf("dial node3 at its address: %v", err)
	}
	c.Close()
}

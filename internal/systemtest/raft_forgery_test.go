package systemtest

import (
	"crypto/tls"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
	ts "github.com/geocursor/geocursor/internal/testsupport"
	"github.com/geocursor/geocursor/tlsutil"
)

// Issue 18, item 1: a CA-signed peer certificate of any node ID owned the
// Raft port. Here an attacker holding the certificate of node9 (never a
// member), then one holding a follower's own certificate, speaks raft's
// NetworkTransport to each follower: AppendEntries in the leader's name at
// a higher term carrying a pause and a new member, RequestVote with
// LeadershipTransfer and TimeoutNow in another member's name, and the same
// in the certificate's own name. Every one must be refused before Raft
// sees it, and the cluster must look afterwards as it did before. (Not
// among them: a member's RequestVote with LeadershipTransfer in its own
// name, which Raft grants even while it has a leader; see raftguard.go.)

// fastRaftHCL makes elections quick, so that anything a forged RPC set
// off would show within the test's watch.
const fastRaftHCL = `
raft {
  heartbeat_timeout = "300ms"
  election_timeout  = "300ms"
}
`

// raftPicture is what a forged RPC must not change, as one node sees it.
type raftPicture struct {
	leader  string
	term    uint64
	holder  string
	token   uint64
	cursor  int64
	paused  bool
	members string
}

func pictureOf(st api.Status) raftPicture {
	p := raftPicture{term: st.Term, token: st.Lease.Token, cursor: st.Cursor.LastEventID, paused: st.Cursor.Paused}
	if st.Leader != nil {
		p.leader = st.Leader.ID
	}
	if st.Lease.Holder != nil {
		p.holder = *st.Lease.Holder
	}
	var ms []string
	for _, m := range st.Members {
		ms = append(ms, fmt.Sprintf("%s@%s voter=%t", m.ID, m.RaftAddr, m.Voter))
	}
	sort.Strings(ms)
	p.members = strings.Join(ms, " ")
	return p
}

// raftForger speaks raft's NetworkTransport to the cluster's Raft ports,
// presenting one peer certificate.
type raftForger struct {
	cert  string
	trans *raft.NetworkTransport
}

func newRaftForger(t *testing.T, sec string, id string) *raftForger {
	t.Helper()
	ca, _ := tlsutil.CAFiles(sec)
	cert, key := tlsutil.NodeFiles(sec, id)
	node, err := tlsutil.LoadNode(tlsutil.Files{CA: ca, Cert: cert, Key: key}, id)
	if err != nil {
		t.Fatal(err)
	}
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  &forgerStream{cfg: node.PeerClient(), done: make(chan struct{})},
		MaxPool: 2, Timeout: 3 * time.Second, Logger: hclog.NewNullLogger(),
	})
	t.Cleanup(func() { trans.Close() })
	return &raftForger{cert: id, trans: trans}
}

// send sends one RPC to the Raft port at addr and returns the transport's
// error: nil when Raft answered.
func (f *raftForger) send(addr string, req any) error {
	to := raft.ServerAddress(addr)
	switch r := req.(type) {
	case *raft.AppendEntriesRequest:
		return f.trans.AppendEntries("", to, r, &raft.AppendEntriesResponse{})
	case *raft.RequestVoteRequest:
		return f.trans.RequestVote("", to, r, &raft.RequestVoteResponse{})
	case *raft.RequestPreVoteRequest:
		return f.trans.RequestPreVote("", to, r, &raft.RequestPreVoteResponse{})
	case *raft.TimeoutNowRequest:
		return f.trans.TimeoutNow("", to, r, &raft.TimeoutNowResponse{})
	}
	panic(fmt.Sprintf("no RPC %T", req))
}

// forgerStream is a dial-only raft.StreamLayer.
type forgerStream struct {
	cfg  *tls.Config
	once sync.Once
	done chan struct{}
}

func (s *forgerStream) Accept() (net.Conn, error) { <-s.done; return nil, net.ErrClosed }
func (s *forgerStream) Close() error              { s.once.Do(func() { close(s.done) }); return nil }
func (s *forgerStream) Addr() net.Addr            { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9} }
func (s *forgerStream) Dial(a raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", string(a), s.cfg)
}

func rpcHeader(id, addr string) raft.RPCHeader {
	return raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(id), Addr: []byte(addr)}
}

func rpcKind(req any) string {
	return strings.TrimSuffix(strings.TrimPrefix(fmt.Sprintf("%T", req), "*raft."), "Request")
}

func TestRaftPortRefusesRPCsNotFromTheirCertificatesMember(t *testing.T) {
	c := ts.StartSecureCluster(t, 3, fastRaftHCL, nil)
	c.WaitFormed(t, 60*time.Second)
	leader := c.Leader(t)
	followers := c.Followers(leader)
	sec := c.Security
	if _, _, err := tlsutil.CreateCert(sec.Dir, tlsutil.CertRequest{Node: "node9", Days: 1}); err != nil {
		t.Fatal(err)
	}
	st, err := statusOf(leader)
	if err != nil {
		t.Fatal(err)
	}
	before := map[string]raftPicture{}
	for _, a := range c.Agents {
		s, err := statusOf(a)
		if err != nil {
			t.Fatal(err)
		}
		before[a.ID] = pictureOf(s)
	}
	addrOf := map[string]string{"node9": "127.0.0.1:9"}
	conf := raft.Configuration{}
	for _, m := range st.Members {
		addrOf[m.ID] = m.RaftAddr
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.ID), Address: raft.ServerAddress(m.RaftAddr)})
	}
	conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Nonvoter, ID: "mallory", Address: "127.0.0.1:9"})
	pause, err := fsm.Command{Op: fsm.OpSetPaused, Paused: true}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	term := st.Term + 5
	// The AppendEntries: entries after the last one, committed at
	// once; no previous entry to match.
	entries := func(id string) *raft.AppendEntriesRequest {
		next := st.CommitIndex + 1
		return &raft.AppendEntriesRequest{
			RPCHeader: rpcHeader(id, addrOf[id]), Term: term, LeaderCommitIndex: next + 1,
			Entries: []*raft.Log{
				{Index: next, Term: term, Type: raft.LogCommand, Data: pause},
				{Index: next + 1, Term: term, Type: raft.LogConfiguration, Data: raft.EncodeConfiguration(conf)},
			},
		}
	}
	vote := func(id string) *raft.RequestVoteRequest {
		return &raft.RequestVoteRequest{RPCHeader: rpcHeader(id, addrOf[id]), Term: term, LastLogIndex: 1 << 40, LastLogTerm: term, LeadershipTransfer: true}
	}
	timeoutNow := func(id string) *raft.TimeoutNowRequest {
		return &raft.TimeoutNowRequest{RPCHeader: rpcHeader(id, addrOf[id])}
	}

	type attack struct {
		cert   string
		to     *ts.Agent
		claim  string
		req    any
		reason string
	}
	var attacks []attack
	member := followers[0].ID
	for _, to := range followers {
		// Another member than the certificate's: the leader, or the other
		// follower for a vote.
		other := followers[0].ID
		if other == to.ID {
			other = followers[1].ID
		}
		voteAs := other
		if voteAs == member {
			voteAs = leader.ID
		}
		attacks = append(attacks,
			attack{"node9", to, leader.ID, entries(leader.ID), "impersonation"},
			attack{"node9", to, other, vote(other), "impersonation"},
			attack{"node9", to, leader.ID, timeoutNow(leader.ID), "impersonation"},
			attack{"node9", to, "node9", entries("node9"), "not_member"},
			attack{"node9", to, "node9", vote("node9"), "not_member"},
			attack{"node9", to, "node9", timeoutNow("node9"), "not_member"},
			attack{member, to, leader.ID, entries(leader.ID), "impersonation"},
			attack{member, to, voteAs, vote(voteAs), "impersonation"},
			attack{member, to, leader.ID, timeoutNow(leader.ID), "impersonation"},
			attack{member, to, member, entries(member), "not_leader"},
			attack{member, to, member, timeoutNow(member), "not_leader"},
		)
	}
	forgers := map[string]*raftForger{"node9": newRaftForger(t, sec.Dir, "node9"), member: newRaftForger(t, sec.Dir, member)}

	// The forger's transport works: a pre-vote in its own name reaches
	// Raft (which does not grant it: there is a leader).
	if err := forgers[member].send(followers[1].RaftAddr, &raft.RequestPreVoteRequest{RPCHeader: rpcHeader(member, addrOf[member]), Term: term}); err != nil {
		t.Fatalf("a pre-vote in %s's own name did not reach %s's Raft: %v", member, followers[1].ID, err)
	}

	want := map[string]map[string]float64{} // node, reason: refusals
	var table []string
	for _, a := range attacks {
		err := forgers[a.cert].send(a.to.RaftAddr, a.req)
		verdict := "refused"
		if err == nil {
			verdict = "ACCEPTED"
			t.Errorf("%s over %s's certificate, in %s's name, to %s: accepted", rpcKind(a.req), a.cert, a.claim, a.to.ID)
		}
		table = append(table, fmt.Sprintf("%-13s cert %-6s claims %-6s -> %-6s %-8s (want %s)", rpcKind(a.req), a.cert, a.claim, a.to.ID, verdict, a.reason))
		if want[a.to.ID] == nil {
			want[a.to.ID] = map[string]float64{}
		}
		want[a.to.ID][a.reason]++
	}
	t.Logf("forged RPCs:\n  %s", strings.Join(table, "\n  "))

	// Anything a forged RPC set off (a pause applied, a member added, an
	// election) shows within a few election timeouts.
	deadline := time.Now().Add(3 * time.Second)
	for changed := false; !changed && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		for _, a := range c.Agents {
			s, err := statusOf(a)
			if err != nil {
				t.Errorf("status of %s: %v", a.ID, err)
				changed = true
				continue
			}
			if got := pictureOf(s); got != before[a.ID] {
				t.Errorf("%s changed after the forged RPCs:\n before %+v\n after  %+v", a.ID, before[a.ID], got)
				changed = true
			}
		}
	}

	reader, err := sec.Client(sec.ReadToken)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range followers {
		scrape := scrapeAgent(t, reader, a)
		for reason, n := range want[a.ID] {
			got, ok := scrape.gauge("geocursor_raft_rpcs_refused_total", "reason", reason)
			if !ok || got < n || (reason != "not_leader" && got != n) {
				t.Errorf("%s: geocursor_raft_rpcs_refused_total{reason=%q} = %v (present %t), want %v", a.ID, reason, got, ok, n)
			}
		}
		if !strings.Contains(a.Log(), "refused a Raft RPC") || !strings.Contains(a.Log(), `"certificate":"node9"`) {
			t.Errorf("%s's log does not name the refused RPCs' certificate", a.ID)
		}
	}
	if got, _ := scrapeAgent(t, reader, leader).gauge("geocursor_raft_rpcs_refused_total", "reason", "not_leader"); got != 0 {
		t.Errorf("the leader refused %v RPCs as not from the leader: honest traffic refused", got)
	}
}

// The guard lets every honest change of leader and membership through: a
// leader that stops hands leadership over (RequestVote with
// LeadershipTransfer, then the new leader's first entries while a
// follower may still name the old one), a killed leader is replaced, and
// a follower whose data was wiped joins again (its first entries arrive
// before it has a configuration). Honest traffic is never refused for
// anything but an election in progress.
func TestGuardedRaftPortLetsHonestLeadershipAndMembershipChangesThrough(t *testing.T) {
	c := ts.StartSecureCluster(t, 3, fastRaftHCL, nil)
	c.WaitFormed(t, 60*time.Second)
	newLeader := func(old *ts.Agent, what string) (*ts.Agent, time.Duration) {
		t.Helper()
		start := time.Now()
		var next *ts.Agent
		ts.WaitFor(t, 20*time.Second, what, func() (bool, string) {
			id := ""
			for _, a := range c.Live() {
				st, err := statusOf(a)
				if err != nil || st.Leader == nil || st.Leader.ID == old.ID || (id != "" && st.Leader.ID != id) {
					return false, fmt.Sprintf("%s: %v %v", a.ID, err, st.Leader)
				}
				id = st.Leader.ID
			}
			next = c.Agent(t, id)
			return true, ""
		})
		return next, time.Since(start)
	}

	reader, err := c.Security.Client(c.Security.ReadToken)
	if err != nil {
		t.Fatal(err)
	}
	// refusals checks that a has refused no honest RPC but while an
	// election settled, and says how many it refused then. A node's
	// counts start at its start.
	refusals := func(a *ts.Agent) string {
		t.Helper()
		scrape := scrapeAgent(t, reader, a)
		var counts []string
		for _, reason := range []string{"impersonation", "wrong_address", "not_member", "not_leader", "malformed", "shutting_down"} {
			n, ok := scrape.gauge("geocursor_raft_rpcs_refused_total", "reason", reason)
			if !ok {
				t.Errorf("%s exports no geocursor_raft_rpcs_refused_total{reason=%q}", a.ID, reason)
			}
			if n > 0 {
				counts = append(counts, fmt.Sprintf("%s=%v", reason, n))
			}
			if n > 0 && reason != "not_leader" && reason != "shutting_down" {
				t.Errorf("%s refused %v honest RPCs as %s", a.ID, n, reason)
			}
		}
		return fmt.Sprintf("%s %v", a.ID, counts)
	}

	leader := c.Leader(t)
	leader.Stop(t)
	next, took := newLeader(leader, "a leader after the old one stopped")
	var counts []string
	for _, a := range c.Live() {
		counts = append(counts, refusals(a))
	}
	t.Logf("FIGURE: %s stopped (leadership transfer); %s leads %s later; refused meanwhile: %s", leader.ID, next.ID, took.Round(time.Millisecond), strings.Join(counts, ", "))
	leader.Restart(t)
	c.WaitFormed(t, 30*time.Second)

	leader = c.Leader(t)
	wiped := c.Followers(leader)[0]
	wiped.Kill(t)
	if err := wiped.Wipe(); err != nil {
		t.Fatal(err)
	}
	wiped.RestartWith(t, "-join", leader.HTTPAddr)
	c.WaitFormed(t, 30*time.Second)
	if st, err := statusOf(wiped); err != nil || st.AppliedIndex == 0 {
		t.Fatalf("%s rejoined with no state: applied index %d (%v)", wiped.ID, st.AppliedIndex, err)
	}

	leader = c.Leader(t)
	leader.Kill(t)
	next, took = newLeader(leader, "a leader after the old one was killed")
	t.Logf("FIGURE: %s killed; %s leads %s later", leader.ID, next.ID, took.Round(time.Millisecond))
	leader.Restart(t)
	c.WaitFormed(t, 30*time.Second)

	for _, a := range c.Agents {
		t.Logf("refused of honest traffic since its start: %s", refusals(a))
	}
}

package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-msgpack/v2/codec"
	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// The Raft port's guard (design section 10): a Raft RPC is from the member
// its certificate names. hashicorp/raft's NetworkTransport believes the ID
// and address an RPC's header gives; the guard sits between the TLS stream
// layer and the transport, reads each RPC as it passes (its type byte and
// its msgpack request, with the codec and handle raft decodes it with),
// and hands the very same bytes on only once the RPC has passed:
//
//   - its header names the node of the certificate it came over, at that
//     node's address in the configuration;
//   - that node is a member of this node's latest configuration;
//   - AppendEntries and InstallSnapshot come from the node this one follows
//     or, while it follows nobody, from a voter: a new leader's first
//     entries find this node following nobody, since Raft forgets the
//     leader it followed whenever it changes state or term (raft.go
//     setState), which it does when it votes in the new term or when its
//     heartbeat times out;
//   - TimeoutNow comes only from the node this one follows.
//
// An RPC that fails closes its connection before Raft reads a byte of it:
// the sender sees a network error, as with any lost connection, and Raft's
// own retry and election machinery carries on. The wire stays raft's own
// (design section 14): a node of the release before talks to this one
// unchanged, and the InstallSnapshot body after its header passes unparsed.
//
// A node with no configuration yet (a joiner before its first
// AppendEntries) takes AppendEntries and InstallSnapshot from any
// certificate in its own name while it follows nobody, and no votes or
// TimeoutNow at all: geocursor never asks a node without a configuration
// to vote.
//
// What the guard cannot do: a member's own certificate still acts as that
// member, and Raft trusts its voters. Its holder may stand for election
// and, while a node follows nobody, send it entries as an election's
// winner would. A RequestVote with the LeadershipTransfer flag in its own
// name is granted even by a follower that has a leader, which opens such a
// gap at will: Raft cannot tell an honest transfer from a forged one, and
// nothing that keeps raft's wire can.

// maxRPCBytes bounds one RPC request as the guard buffers it before
// handing it on (the InstallSnapshot body is not buffered). geocursor's
// entries are small and Raft sends at most MaxAppendEntries (64) at once.
const maxRPCBytes = 64 << 20

// Refusal reasons, the values of geocursor_raft_rpcs_refused_total's reason.
const (
	refusedImpersonation = "impersonation" // the header names another node than the certificate
	refusedWrongAddress  = "wrong_address" // the header gives another address than the member's
	refusedNotMember     = "not_member"    // the certificate's node is not in the configuration
	refusedNotLeader     = "not_leader"    // AppendEntries, InstallSnapshot or TimeoutNow from a node not followed
	refusedMalformed     = "malformed"     // not a Raft RPC raft could decode, or too large
	refusedShutdown      = "shutting_down" // the port closed while the RPC waited for Raft to start
)

// refusalLogWindow: one log line per certificate and reason per window.
const refusalLogWindow = 10 * time.Second

var refusalReasons = []string{refusedImpersonation, refusedWrongAddress, refusedNotMember, refusedNotLeader, refusedMalformed, refusedShutdown}

// raftView is what the guard reads of this node's Raft, for every RPC. Its
// methods must not wait for Raft's main loop: they run on the transport's
// connection goroutine, which the main loop itself may be waiting on (an
// InstallSnapshot body is read from the connection by the main loop).
type raftView interface {
	// Leader is the ID of the node this one follows (itself when it
	// leads), "" when it knows of none.
	Leader() string
	// Configuration is the latest configuration, committed or not; no
	// servers before this node has one.
	Configuration() (raft.Configuration, error)
}

// raftNodeView is a raftView over a running Raft.
type raftNodeView struct {
	r *raft.Raft
}

func newRaftNodeView(r *raft.Raft) raftNodeView { return raftNodeView{r: r} }

func (v raftNodeView) Leader() string {
	_, id := v.r.LeaderWithID()
	return string(id)
}

// Configuration relies on hashicorp/raft (v1.7) answering GetConfiguration
// from a copy it keeps beside its main loop, without asking the loop;
// TestRaftViewDoesNotWaitForRaftsMainLoop holds it to that.
func (v raftNodeView) Configuration() (raft.Configuration, error) {
	f := v.r.GetConfiguration()
	if err := f.Error(); err != nil {
		return raft.Configuration{}, err
	}
	return f.Configuration(), nil
}

// raftGuard checks the RPCs of every connection its stream layer accepts.
// Until bind hands it a view of Raft it checks only that a header names
// its certificate's node; after holdUntilBound, RPCs wait for bind instead
// (Raft would not read them before it runs anyway).
type raftGuard struct {
	logger  hclog.Logger
	refused *prometheus.CounterVec
	closed  <-chan struct{}

	hold  atomic.Bool
	view  atomic.Pointer[raftView]
	bound chan struct{}
	once  sync.Once

	mu      sync.Mutex
	lastLog map[string]refusalLog // by certificate and reason
}

type refusalLog struct {
	at         time.Time
	suppressed int
}

var _ prometheus.Collector = (*raftGuard)(nil)

func newRaftGuard(logger hclog.Logger, closed <-chan struct{}) *raftGuard {
	g := &raftGuard{
		logger: logger,
		closed: closed,
		bound:  make(chan struct{}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "geocursor_raft_rpcs_refused_total",
			Help: "Raft RPCs the Raft port refused, closing their connection, by reason: impersonation (the header names " +
				"another node than the certificate), wrong_address, not_member, not_leader (AppendEntries, InstallSnapshot or " +
				"TimeoutNow from a node this one does not follow), malformed, shutting_down. Since the node's start.",
		}, []string{"reason"}),
		lastLog: map[string]refusalLog{},
	}
	for _, r := range refusalReasons {
		g.refused.WithLabelValues(r)
	}
	return g
}

// Describe and Collect make the guard's counter a collector of the node's
// registry.
func (g *raftGuard) Describe(ch chan<- *prometheus.Desc) { g.refused.Describe(ch) }
func (g *raftGuard) Collect(ch chan<- prometheus.Metric) { g.refused.Collect(ch) }

// holdUntilBound makes RPCs wait for bind (or the port's close) before
// they are checked and handed to Raft.
func (g *raftGuard) holdUntilBound() { g.hold.Store(true) }

// bind gives the guard this node's Raft: from now on every RPC is checked
// in full.
func (g *raftGuard) bind(v raftView) {
	g.view.Store(&v)
	g.once.Do(func() { close(g.bound) })
}

// wrap returns conn, accepted from the certificate of node peer, as Raft
// is to read it.
func (g *raftGuard) wrap(conn net.Conn, peer string) *guardedConn {
	c := &guardedConn{Conn: conn, g: g, peer: peer, br: bufio.NewReaderSize(conn, 64<<10)}
	c.rec.r = c.br
	c.dec = codec.NewDecoder(&c.rec, &codec.MsgpackHandle{})
	return c
}

// The RPC types of raft's NetworkTransport (net_transport.go), which the
// wire fixes.
const (
	rpcAppendEntries uint8 = iota
	rpcRequestVote
	rpcInstallSnapshot
	rpcTimeoutNow
	rpcRequestPreVote
)

func rpcName(t uint8) string {
	switch t {
	case rpcAppendEntries:
		return "AppendEntries"
	case rpcRequestVote:
		return "RequestVote"
	case rpcInstallSnapshot:
		return "InstallSnapshot"
	case rpcTimeoutNow:
		return "TimeoutNow"
	case rpcRequestPreVote:
		return "RequestPreVote"
	}
	return fmt.Sprintf("unknown(%d)", t)
}

// rpcClaim is what an RPC's request claims, as far as the guard checks it.
type rpcClaim struct {
	typ  uint8
	id   string // RPCHeader.ID
	addr string // RPCHeader.Addr
	term uint64
	// transfer is RequestVote's LeadershipTransfer.
	transfer bool
	// body is the length of the InstallSnapshot data after the request.
	body int64
}

func (c rpcClaim) String() string {
	s := fmt.Sprintf("%s from %q at %q, term %d", rpcName(c.typ), c.id, c.addr, c.term)
	if c.transfer {
		s += ", leadership transfer"
	}
	return s
}

// refusal is a refused RPC: the reason (a metric label) and why, for the
// log.
type refusal struct {
	reason, why string
}

// check decides whether the RPC claim, arriving over the certificate of
// peer, may reach Raft.
func (g *raftGuard) check(peer string, c rpcClaim) *refusal {
	if c.id != peer {
		return &refusal{refusedImpersonation, fmt.Sprintf("the header names %q, the certificate %q", c.id, peer)}
	}
	vp := g.view.Load()
	if vp == nil && g.hold.Load() {
		select {
		case <-g.bound:
			vp = g.view.Load()
		case <-g.closed:
			return &refusal{refusedShutdown, "the Raft port closed before Raft started"}
		}
	}
	if vp == nil {
		return nil // not bound to a Raft: the header's ID is all there is to check
	}
	v := *vp
	conf, err := v.Configuration()
	if err != nil {
		return &refusal{refusedNotMember, fmt.Sprintf("cannot read the configuration: %v", err)}
	}
	leader := v.Leader()
	if len(conf.Servers) == 0 {
		// A node that has yet to receive its first entries: only a
		// leader's AppendEntries and InstallSnapshot are for it.
		switch {
		case c.typ != rpcAppendEntries && c.typ != rpcInstallSnapshot:
			return &refusal{refusedNotMember, "this node has no configuration yet and takes part in no election"}
		case leader != "" && leader != peer:
			return &refusal{refusedNotLeader, fmt.Sprintf("this node follows %s", leader)}
		}
		return nil
	}
	var self *raft.Server
	for i := range conf.Servers {
		if string(conf.Servers[i].ID) == peer {
			self = &conf.Servers[i]
			break
		}
	}
	switch {
	case self == nil:
		return &refusal{refusedNotMember, fmt.Sprintf("%s is not in the configuration", peer)}
	case c.addr != string(self.Address):
		return &refusal{refusedWrongAddress, fmt.Sprintf("the header gives address %q, %s is at %q", c.addr, peer, self.Address)}
	}
	switch c.typ {
	case rpcTimeoutNow:
		if leader != peer {
			return &refusal{refusedNotLeader, followsWhom(leader)}
		}
	case rpcAppendEntries, rpcInstallSnapshot:
		switch {
		case leader == peer:
		case leader != "":
			return &refusal{refusedNotLeader, followsWhom(leader)}
		case self.Suffrage != raft.Voter:
			return &refusal{refusedNotLeader, fmt.Sprintf("%s is no voter, so leads no term; %s", peer, followsWhom(leader))}
		}
		// Following nobody: an election's winner tells this node of its
		// win with its first entries (Raft checks the term).
	}
	return nil
}

// memberAt is the ID of the member at Raft address addr in the latest
// configuration, "" if none is or the guard has no Raft yet.
func (g *raftGuard) memberAt(addr string) string {
	vp := g.view.Load()
	if vp == nil {
		return ""
	}
	conf, err := (*vp).Configuration()
	if err != nil {
		return ""
	}
	for _, s := range conf.Servers {
		if string(s.Address) == addr {
			return string(s.ID)
		}
	}
	return ""
}

func followsWhom(leader string) string {
	if leader == "" {
		return "this node follows nobody"
	}
	return "this node follows " + leader
}

// refuse counts a refused RPC and logs it: one line per certificate and
// reason per refusalLogWindow, with the number left out since (an RPC
// refused during an election is retried by its sender, on a new
// connection, until the election settles).
func (g *raftGuard) refuse(conn net.Conn, peer string, c rpcClaim, r *refusal) {
	g.refused.WithLabelValues(r.reason).Inc()
	key := peer + "\x00" + r.reason
	now := time.Now()
	g.mu.Lock()
	l := g.lastLog[key]
	if now.Sub(l.at) < refusalLogWindow {
		l.suppressed++
		g.lastLog[key] = l
		g.mu.Unlock()
		return
	}
	g.lastLog[key] = refusalLog{at: now}
	g.mu.Unlock()
	g.logger.Warn("refused a Raft RPC and closed its connection: a peer acts only as the member its certificate names",
		"certificate", peer, "remote", conn.RemoteAddr().String(), "claimed", c.String(),
		"reason", r.reason, "why", r.why, "not_logged_since_last", l.suppressed)
}

// errRPCTooLarge ends a request larger than maxRPCBytes.
var errRPCTooLarge = fmt.Errorf("a Raft RPC request larger than %d bytes", maxRPCBytes)

// guardedConn is an accepted connection as Raft reads it: each RPC request
// is read, decoded and checked in full before its first byte is handed on;
// the InstallSnapshot data after a request passes as it comes. Writes (the
// answers) pass untouched. Only Raft's connection goroutine reads it.
type guardedConn struct {
	net.Conn
	g    *raftGuard
	peer string

	br  *bufio.Reader
	rec rpcRecorder
	dec *codec.Decoder

	pending []byte // checked bytes Raft has yet to read
	body    int64  // InstallSnapshot data still to pass
	err     error  // once set, every Read returns it

	// onClose, if set, runs once, at the first Close.
	onClose   func()
	closeOnce sync.Once
}

func (c *guardedConn) Close() error {
	c.closeOnce.Do(func() {
		if c.onClose != nil {
			c.onClose()
		}
	})
	return c.Conn.Close()
}

// Read hands Raft checked bytes, reading and checking the next RPC when
// there are none.
func (c *guardedConn) Read(p []byte) (int, error) {
	for {
		switch {
		case len(p) == 0:
			return 0, nil
		case len(c.pending) > 0:
			n := copy(p, c.pending)
			c.pending = c.pending[n:]
			return n, nil
		case c.body > 0:
			if int64(len(p)) > c.body {
				p = p[:c.body]
			}
			n, err := c.br.Read(p)
			c.body -= int64(n)
			return n, err
		case c.err != nil:
			return 0, c.err
		}
		c.err = c.next()
	}
}

// next reads the next RPC request into pending if it passes. A refused
// one closes the connection and ends it with io.EOF, as a peer that hangs
// up would: the guard has said why in its own log.
func (c *guardedConn) next() error {
	typ, err := c.br.ReadByte()
	if err != nil {
		return err
	}
	if cap(c.rec.buf) > 1<<20 {
		c.rec.buf = nil // do not keep a large request's buffer for the heartbeats after it
	}
	c.rec.buf = append(c.rec.buf[:0], typ)
	c.rec.err = nil
	claim, err := c.decode(typ)
	if err != nil {
		if c.rec.err != nil && !errors.Is(c.rec.err, errRPCTooLarge) {
			return c.rec.err // the connection failed mid-request: nothing to refuse
		}
		claim.typ = typ
		return c.refuse(claim, &refusal{refusedMalformed, err.Error()})
	}
	if r := c.g.check(c.peer, claim); r != nil {
		return c.refuse(claim, r)
	}
	c.pending = c.rec.buf
	c.body = claim.body
	return nil
}

// decode reads one request of type typ, as raft's handleCommand would,
// and returns what it claims.
func (c *guardedConn) decode(typ uint8) (rpcClaim, error) {
	c.dec.Reset(&c.rec)
	claim := rpcClaim{typ: typ}
	var hdr raft.RPCHeader
	var err error
	switch typ {
	case rpcAppendEntries:
		var req raft.AppendEntriesRequest
		err = c.dec.Decode(&req)
		hdr, claim.term = req.RPCHeader, req.Term
	case rpcRequestVote:
		var req raft.RequestVoteRequest
		err = c.dec.Decode(&req)
		hdr, claim.term, claim.transfer = req.RPCHeader, req.Term, req.LeadershipTransfer
	case rpcRequestPreVote:
		var req raft.RequestPreVoteRequest
		err = c.dec.Decode(&req)
		hdr, claim.term = req.RPCHeader, req.Term
	case rpcInstallSnapshot:
		var req raft.InstallSnapshotRequest
		err = c.dec.Decode(&req)
		hdr, claim.term, claim.body = req.RPCHeader, req.Term, req.Size
		if err == nil && req.Size < 0 {
			err = fmt.Errorf("InstallSnapshot with size %d", req.Size)
		}
	case rpcTimeoutNow:
		var req raft.TimeoutNowRequest
		err = c.dec.Decode(&req)
		hdr = req.RPCHeader
	default:
		return claim, fmt.Errorf("unknown RPC type %d", typ)
	}
	claim.id, claim.addr = string(hdr.ID), string(hdr.Addr)
	if err != nil {
		return claim, fmt.Errorf("decode %s: %w", rpcName(typ), err)
	}
	// The request must be exactly what the decoder read, so that the
	// bytes handed on are one request and Raft's decoder ends where this
	// one did.
	if read := c.dec.NumBytesRead(); read != len(c.rec.buf)-1 {
		return claim, fmt.Errorf("decode %s: decoder read %d bytes of %d", rpcName(typ), read, len(c.rec.buf)-1)
	}
	return claim, nil
}

func (c *guardedConn) refuse(claim rpcClaim, r *refusal) error {
	c.g.refuse(c.Conn, c.peer, claim, r)
	c.pending, c.rec.buf = nil, nil
	c.Conn.Close()
	return io.EOF
}

// rpcRecorder is the decoder's reader: it keeps every byte it passes, up to
// maxRPCBytes. It is no io.ByteScanner, so the decoder reads from it only
// what it consumes (go-msgpack's ioDecReader keeps its own unread byte).
type rpcRecorder struct {
	r   io.Reader
	buf []byte
	err error
}

func (r *rpcRecorder) Read(p []byte) (int, error) {
	if room := maxRPCBytes + 1 - len(r.buf); len(p) > room {
		if room <= 0 {
			r.err = errRPCTooLarge
			return 0, r.err
		}
		p = p[:room]
	}
	n, err := r.r.Read(p)
	r.buf = append(r.buf, p[:n]...)
	if err != nil && r.err == nil {
		r.err = err
	}
	return n, err
}

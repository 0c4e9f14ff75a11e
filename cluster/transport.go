package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/geocursor/geocursor/tlsutil"
)

// Limits of the Raft port's TLS layer (design section 10: strangers get
// bounded resources). A connection must prove itself a peer within
// raftHandshakeTimeout (a peer dials with a one-second timeout, handshake
// included). At most maxRaftHandshakes connections may be proving
// themselves at once, and at most maxRaftHandshakesPerHost from one
// address other than loopback; a newcomer is never turned away for want of
// room: the one that has been trying longest makes room for it. A peer's
// handshake takes milliseconds, so the one waiting longest is a stranger's
// that sends nothing, and silent connections cannot keep a peer out. Once
// proved, a peer certificate may hold maxRaftConnsPerPeer connections (Raft
// uses a handful: a pool, a pipeline, a snapshot); its oldest makes room.
const (
	raftHandshakeTimeout     = 2 * time.Second
	maxRaftHandshakes        = 64
	maxRaftHandshakesPerHost = 8
	maxRaftConnsPerPeer      = 32
)

// tlsStreamLayer is a raft.StreamLayer that speaks only mutually verified
// TLS: Accept hands Raft a connection only after its handshake has proved
// a peer certificate of the cluster's CA, and Dial presents this node's
// certificate and accepts only a peer. Handshakes run off Raft's accept
// loop, so a slow or silent client holds up nobody. Every accepted
// connection is read through guard, which binds each RPC to the
// certificate it came over (raftguard.go).
type tlsStreamLayer struct {
	ln        net.Listener
	advertise net.Addr
	server    *tls.Config
	client    *tls.Config
	logger    hclog.Logger
	guard     *raftGuard

	conns       chan net.Conn
	handshakes  handshakeSlots
	established peerConns
	closed      chan struct{}
	once        sync.Once
	refused     atomic.Int64
	// lastWarn is when a refusal was last logged: at most one line every
	// refusalLogEvery, with the count since.
	lastWarn atomic.Int64
}

const refusalLogEvery = 10 * time.Second

var _ raft.StreamLayer = (*tlsStreamLayer)(nil)

// newTLSStreamLayer listens on bind.
func newTLSStreamLayer(bind string, advertise net.Addr, server, client *tls.Config, logger hclog.Logger) (*tlsStreamLayer, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	s := &tlsStreamLayer{
		ln: ln, advertise: advertise, server: server, client: client, logger: logger,
		conns:       make(chan net.Conn),
		handshakes:  handshakeSlots{max: maxRaftHandshakes, perHost: maxRaftHandshakesPerHost, pending: map[net.Conn]pendingHandshake{}, byHost: map[string]int{}},
		established: peerConns{max: maxRaftConnsPerPeer, byPeer: map[string][]*guardedConn{}},
		closed:      make(chan struct{}),
	}
	s.guard = newRaftGuard(logger, s.closed)
	go s.acceptLoop()
	return s, nil
}

func (s *tlsStreamLayer) acceptLoop() {
	for {
		raw, err := s.ln.Accept()
		if err != nil {
			select {
			case <-s.closed:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(10 * time.Millisecond) // a transient accept error (out of descriptors)
			continue
		}
		if old := s.handshakes.admit(raw); old != nil {
			old.Close() // its handshake fails, and says so
		}
		go s.handshake(raw)
	}
}

func (s *tlsStreamLayer) handshake(raw net.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), raftHandshakeTimeout)
	defer cancel()
	tc := tls.Server(raw, s.server)
	err := tc.HandshakeContext(ctx)
	if !s.handshakes.done(raw) && err != nil {
		err = fmt.Errorf("made room for a newer connection: %w", err)
	}
	if err != nil {
		raw.Close()
		s.refuse(raw.RemoteAddr(), err)
		return
	}
	cs := tc.ConnectionState()
	peer, ok := tlsutil.PeerOf(&cs)
	if !ok { // RaftServer's VerifyConnection let no other certificate through
		tc.Close()
		s.refuse(raw.RemoteAddr(), errors.New("no verified peer certificate"))
		return
	}
	gc := s.guard.wrap(tc, peer)
	gc.onClose = func() { s.established.remove(peer, gc) }
	if old := s.established.add(peer, gc); old != nil {
		s.logger.Debug("closed a peer's oldest Raft connection to make room for a new one", "peer", peer, "limit", maxRaftConnsPerPeer)
		old.Close()
	}
	select {
	case s.conns <- gc:
	case <-s.closed:
		gc.Close()
	}
}

// handshakeSlots are the connections proving themselves a peer.
type handshakeSlots struct {
	max, perHost int

	mu      sync.Mutex
	pending map[net.Conn]pendingHandshake
	byHost  map[string]int
}

type pendingHandshake struct {
	host  string
	since time.Time
}

// admit records c and returns the connection that must make room for it,
// if any: the one of the same host that has been trying longest when that
// host (not loopback, which every local client shares) is at its limit, or
// else the one trying longest of all when the port is.
func (h *handshakeSlots) admit(c net.Conn) (evict net.Conn) {
	host := hostOf(c.RemoteAddr())
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case !isLoopback(host) && h.byHost[host] >= h.perHost:
		evict = h.oldestLocked(host)
	case len(h.pending) >= h.max:
		evict = h.oldestLocked("")
	}
	if evict != nil {
		h.forgetLocked(evict)
	}
	h.pending[c] = pendingHandshake{host: host, since: time.Now()}
	h.byHost[host]++
	return evict
}

// done forgets c once its handshake has ended, and reports whether it was
// still waiting (false: it made room for another, and was closed).
func (h *handshakeSlots) done(c net.Conn) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.forgetLocked(c)
}

func (h *handshakeSlots) oldestLocked(host string) net.Conn {
	var (
		oldest net.Conn
		at     time.Time
	)
	for c, p := range h.pending {
		if host != "" && p.host != host {
			continue
		}
		if oldest == nil || p.since.Before(at) {
			oldest, at = c, p.since
		}
	}
	return oldest
}

func (h *handshakeSlots) forgetLocked(c net.Conn) bool {
	p, ok := h.pending[c]
	if !ok {
		return false
	}
	delete(h.pending, c)
	if h.byHost[p.host]--; h.byHost[p.host] <= 0 {
		delete(h.byHost, p.host)
	}
	return true
}

// peerConns are the connections each peer certificate holds, oldest first.
type peerConns struct {
	max int

	mu     sync.Mutex
	byPeer map[string][]*guardedConn
}

// add records c of peer and returns its oldest connection if peer now
// holds more than max.
func (p *peerConns) add(peer string, c *guardedConn) (evict *guardedConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	conns := append(p.byPeer[peer], c)
	if len(conns) > p.max {
		evict, conns = conns[0], conns[1:]
	}
	p.byPeer[peer] = conns
	return evict
}

func (p *peerConns) remove(peer string, c *guardedConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	conns := p.byPeer[peer]
	for i, x := range conns {
		if x == c {
			conns = append(conns[:i:i], conns[i+1:]...)
			break
		}
	}
	if len(conns) == 0 {
		delete(p.byPeer, peer)
	} else {
		p.byPeer[peer] = conns
	}
}

// refuse counts a refused connection and logs it, rate-limited so that a
// scan cannot flood the log.
func (s *tlsStreamLayer) refuse(from net.Addr, err error) {
	n := s.refused.Add(1)
	now := time.Now().UnixNano()
	last := s.lastWarn.Load()
	if now-last < int64(refusalLogEvery) || !s.lastWarn.CompareAndSwap(last, now) {
		return
	}
	s.logger.Warn("refused a connection to the Raft port: only the cluster's peers may connect", "remote", from.String(), "error", err, "refused_total", n)
}

// Accept returns the next connection that proved to be a peer.
func (s *tlsStreamLayer) Accept() (net.Conn, error) {
	select {
	case c := <-s.conns:
		return c, nil
	case <-s.closed:
		return nil, net.ErrClosed
	}
}

// Close stops accepting.
func (s *tlsStreamLayer) Close() error {
	s.once.Do(func() { close(s.closed) })
	return s.ln.Close()
}

// Addr is the address peers reach this node at.
func (s *tlsStreamLayer) Addr() net.Addr { return s.advertise }

// Dial connects to a peer and proves this node to it.
// The server must be the member the configuration has at address, when it
// has one there: another peer's certificate cannot answer in its name.
func (s *tlsStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	c, err := tls.DialWithDialer(d, "tcp", string(address), s.client)
	if err != nil {
		return nil, fmt.Errorf("dial peer %s: %w", address, err)
	}
	if want := s.guard.memberAt(string(address)); want != "" {
		cs := c.ConnectionState()
		if got, _ := tlsutil.PeerID(cs.PeerCertificates[0]); got != want {
			c.Close()
			return nil, fmt.Errorf("dial peer %s: it presents the certificate of %q, not of %s, the member at that address", address, got, want)
		}
	}
	return c, nil
}

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
)

// Limits of the Raft port's TLS layer: how long a connection may take to
// prove it is a peer, and how many may try at once. A connection that
// cannot finish its handshake in time, or arrives while the port is busy
// with others, is closed before Raft reads a byte of it.
const (
	raftHandshakeTimeout = 5 * time.Second
	maxRaftHandshakes    = 64
)

// tlsStreamLayer is a raft.StreamLayer that speaks only mutually verified
// TLS: Accept hands Raft a connection only after its handshake has proved
// a peer certificate of the cluster's CA, and Dial presents this node's
// certificate and accepts only a peer. Handshakes run off Raft's accept
// loop, so a slow or silent client holds up nobody.
type tlsStreamLayer struct {
	ln        net.Listener
	advertise net.Addr
	server    *tls.Config
	client    *tls.Config
	logger    hclog.Logger

	conns   chan net.Conn
	slots   chan struct{}
	closed  chan struct{}
	once    sync.Once
	refused atomic.Int64
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
		conns:  make(chan net.Conn),
		slots:  make(chan struct{}, maxRaftHandshakes),
		closed: make(chan struct{}),
	}
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
		select {
		case s.slots <- struct{}{}:
			go s.handshake(raw)
		default:
			raw.Close()
			s.refuse(raw.RemoteAddr(), errors.New("too many connections proving themselves at once"))
		}
	}
}

func (s *tlsStreamLayer) handshake(raw net.Conn) {
	defer func() { <-s.slots }()
	ctx, cancel := context.WithTimeout(context.Background(), raftHandshakeTimeout)
	defer cancel()
	tc := tls.Server(raw, s.server)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		s.refuse(raw.RemoteAddr(), err)
		return
	}
	select {
	case s.conns <- tc:
	case <-s.closed:
		tc.Close()
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
func (s *tlsStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	c, err := tls.DialWithDialer(d, "tcp", string(address), s.client)
	if err != nil {
		return nil, fmt.Errorf("dial peer %s: %w", address, err)
	}
	return c, nil
}

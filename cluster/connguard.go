package cluster

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// connGuard bounds the API's connections so that no stranger can stall it
// (design section 10): a connection that sends nothing, or that idles
// between requests, holds a slot that an operator, a forwarded command or
// a peer may need. A fixed cap that blocks Accept (netutil.LimitListener)
// lets 300 idle connections lock everyone out for the idle timeout; the
// guard instead always accepts, and when the API is full it closes the
// connection that has waited longest without a request in flight (new,
// before or during its TLS handshake, or idle between requests). A client
// that reuses an idle connection just reconnects. Only when every
// connection is busy with a request is the newcomer closed.
//
// A client address other than loopback may hold at most perClient
// connections; loopback is exempt, since every local client shares it.
type connGuard struct {
	max, perClient int

	mu    sync.Mutex
	conns map[net.Conn]*apiConn
	// byHost counts the connections of each remote host.
	byHost map[string]int
}

// apiConn is what the guard knows of one connection.
type apiConn struct {
	host string
	// busy: a request is being served (http.StateActive).
	busy bool
	// since is when the connection was accepted or last went idle.
	since time.Time
}

func newConnGuard(max, perClient int) *connGuard {
	return &connGuard{max: max, perClient: perClient, conns: map[net.Conn]*apiConn{}, byHost: map[string]int{}}
}

// listener wraps ln so that every accepted connection passes admit. The
// server's ConnState must be g.connState, with the same net.Conn values:
// wrap the listener the server serves (after tls.NewListener).
func (g *connGuard) listener(ln net.Listener) net.Listener {
	return &apiGuardListener{Listener: ln, g: g}
}

type apiGuardListener struct {
	net.Listener
	g *connGuard
}

func (l *apiGuardListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.g.admit(c) {
			return c, nil
		}
		c.Close()
	}
}

// admit records c, making room by closing the longest-waiting connection
// without a request in flight if the API is full, and reports whether c
// may be served.
func (g *connGuard) admit(c net.Conn) bool {
	host := hostOf(c.RemoteAddr())
	g.mu.Lock()
	var evict net.Conn
	if !isLoopback(host) && g.byHost[host] >= g.perClient {
		evict = g.oldestWaitingLocked(host)
		if evict == nil {
			g.mu.Unlock()
			return false
		}
	} else if len(g.conns) >= g.max {
		evict = g.oldestWaitingLocked("")
		if evict == nil {
			g.mu.Unlock()
			return false
		}
	}
	if evict != nil {
		g.forgetLocked(evict)
	}
	g.conns[c] = &apiConn{host: host, since: time.Now()}
	g.byHost[host]++
	g.mu.Unlock()
	if evict != nil {
		evict.Close()
	}
	return true
}

// oldestWaitingLocked is the connection without a request in flight that
// has waited longest, of host ("" for any), or nil.
func (g *connGuard) oldestWaitingLocked(host string) net.Conn {
	var (
		oldest net.Conn
		at     time.Time
	)
	for c, gc := range g.conns {
		if gc.busy || (host != "" && gc.host != host) {
			continue
		}
		if oldest == nil || gc.since.Before(at) {
			oldest, at = c, gc.since
		}
	}
	return oldest
}

func (g *connGuard) forgetLocked(c net.Conn) {
	gc, ok := g.conns[c]
	if !ok {
		return
	}
	delete(g.conns, c)
	if g.byHost[gc.host]--; g.byHost[gc.host] <= 0 {
		delete(g.byHost, gc.host)
	}
}

// connState is the server's ConnState hook: it follows each connection
// between busy and waiting, and forgets it when it closes.
func (g *connGuard) connState(c net.Conn, st http.ConnState) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch st {
	case http.StateClosed, http.StateHijacked:
		g.forgetLocked(c)
	case http.StateActive:
		if gc := g.conns[c]; gc != nil {
			gc.busy = true
		}
	case http.StateIdle:
		if gc := g.conns[c]; gc != nil {
			gc.busy, gc.since = false, time.Now()
		}
	}
}

func hostOf(a net.Addr) string {
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return host
}

func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

package cluster

import (
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"
)

// serveGuarded serves handler behind a guard of max connections on a
// loopback port and returns its address.
func serveGuarded(t *testing.T, max int, handler http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := newConnGuard(max, max)
	srv := &http.Server{Handler: handler, ConnState: g.connState, ReadHeaderTimeout: time.Minute}
	go srv.Serve(g.listener(ln))
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func get(t *testing.T, addr string, timeout time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/", nil)
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, resp.Body)
	return resp.Body.Close()
}

// Silent connections (a stranger's, that never send a byte) fill the API:
// a real request still gets in at once, by closing the one that waited
// longest.
func TestSilentConnectionsDoNotLockTheAPIOut(t *testing.T) {
	addr := serveGuarded(t, 8, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	var silent []net.Conn
	for i := 0; i < 30; i++ {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	defer func() {
		for _, c := range silent {
			c.Close()
		}
	}()
	start := time.Now()
	if err := get(t, addr, 2*time.Second); err != nil {
		t.Fatalf("a request with the API full of silent connections: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the request took %s", d)
	}
	// The oldest silent connection was closed to make room.
	silent[0].SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := silent[0].Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Errorf("the longest-waiting silent connection is still open (%v)", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// Connections with a request in flight are never closed to make room: a
// newcomer is refused instead.
func TestBusyConnectionsAreNotEvicted(t *testing.T) {
	release := make(chan struct{})
	var started sync.WaitGroup
	addr := serveGuarded(t, 2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started.Done()
		<-release
	}))
	errs := make(chan error, 2)
	started.Add(2)
	for i := 0; i < 2; i++ {
		go func() { errs <- get(t, addr, 10*time.Second) }()
	}
	started.Wait()
	if err := get(t, addr, 2*time.Second); err == nil {
		t.Error("a third request was served while both slots were busy")
	}
	close(release)
	for i := 0; i < 2; i++ {
		if err := <-errs; err != nil {
			t.Errorf("a busy request was cut off: %v", err)
		}
	}
}

// fakeConn is a connection from a given remote address.
type fakeConn struct {
	net.Conn
	remote net.Addr
	closed bool
}

func (c *fakeConn) RemoteAddr() net.Addr { return c.remote }
func (c *fakeConn) Close() error         { c.closed = true; return nil }

// One address other than loopback holds at most perClient connections;
// its own oldest waiting one makes room, never another client's.
func TestOneClientHoldsAtMostItsShare(t *testing.T) {
	g := newConnGuard(100, 2)
	stranger := &net.TCPAddr{IP: net.ParseIP("10.0.0.9"), Port: 1}
	peer := &fakeConn{remote: &net.TCPAddr{IP: net.ParseIP("10.0.0.2"), Port: 1}}
	if !g.admit(peer) {
		t.Fatal("the peer was refused")
	}
	var theirs []*fakeConn
	for i := 0; i < 5; i++ {
		c := &fakeConn{remote: stranger}
		if !g.admit(c) {
			t.Fatalf("connection %d of the stranger refused though its older ones wait", i)
		}
		theirs = append(theirs, c)
	}
	if peer.closed {
		t.Error("the peer's connection was closed to make room for a stranger")
	}
	open := 0
	for _, c := range theirs {
		if !c.closed {
			open++
		}
	}
	if open != 2 || !theirs[0].closed || theirs[4].closed {
		t.Errorf("%d of the stranger's connections open, want its 2 newest", open)
	}
}

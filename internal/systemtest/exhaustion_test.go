package systemtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/geocursor/geocursor/internal/loadgen"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

// strangers holds a stranger's connections to the group's ports: on each
// API port, TLS connections (no client certificate, which the API allows)
// that send one GET /v1/health and then idle; on each Raft port, TCP
// connections that never send a byte.
type strangers struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (s *strangers) add(c net.Conn) {
	s.mu.Lock()
	s.conns = append(s.conns, c)
	s.mu.Unlock()
}

func (s *strangers) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

// idleTLS opens n TLS connections to addr, each sending one request and
// then nothing, as a slowloris does; it returns how many it opened.
func (s *strangers) idleTLS(addr string, roots *x509.CertPool, n int) int {
	opened := 0
	for i := 0; i < n; i++ {
		d := &net.Dialer{Timeout: time.Second}
		c, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{RootCAs: roots, ServerName: "localhost"})
		if err != nil {
			continue
		}
		fmt.Fprintf(c, "GET /v1/health HTTP/1.1\r\nHost: %s\r\n\r\n", addr)
		s.add(c)
		opened++
	}
	return opened
}

// silentTCP opens n TCP connections to addr that never send a byte.
func (s *strangers) silentTCP(addr string, n int) int {
	opened := 0
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			continue
		}
		s.add(c)
		opened++
	}
	return opened
}

// A stranger with no certificate and no token holds 300 idle TLS
// connections on every API port and 80 silent TCP connections on every
// Raft port of a processing group with TLS and tokens: an operator's
// status still answers, the holder keeps its lease, and a leader killed
// meanwhile is replaced. The times are logged as figures (the bench
// measures them); the test fails only on what cannot pass on a slow
// machine either.
func TestStrangersCannotStallTheGroup(t *testing.T) {
	clk := newClock(t)
	d := newProcDBs(t, false)
	c := startProcessing(t, d, procConfig{FastTimers: true, Secure: true})
	bg := startLoad(t, d, loadgen.Config{Writers: 2, Rate: 100, Seed: 9})
	defer bg.stop(t)
	waitCursor(t, c.Agents, 100, 30*time.Second)

	caPEM, err := os.ReadFile(filepath.Join(c.Security.Dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	var s strangers
	defer s.close()
	for _, a := range c.Agents {
		api := s.idleTLS(a.HTTPAddr, roots, 300)
		raft := s.silentTCP(a.RaftAddr, 80)
		clk.Logf("%s: %d idle TLS connections on the API, %d silent ones on the Raft port", a.ID, api, raft)
	}

	before, err := anyStatus(c.Agents)
	if err != nil {
		t.Fatal(err)
	}
	var worst time.Duration
	for i := 0; i < 10; i++ {
		for _, a := range c.Agents {
			start := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := a.Status(ctx)
			cancel()
			if err != nil {
				t.Fatalf("%s: an operator's status failed under the strangers' connections: %v", a.ID, err)
			}
			worst = max(worst, time.Since(start))
		}
		time.Sleep(100 * time.Millisecond)
	}
	clk.Logf("FIGURE: slowest operator status of 30 under the flood: %s", worst.Round(time.Millisecond))

	// The holder kept its grant through the flood (same token, cursor
	// moving) unless it simply finished its work and released.
	after, err := anyStatus(c.Agents)
	if err != nil {
		t.Fatal(err)
	}
	if after.Cursor.LastEventID <= before.Cursor.LastEventID {
		t.Errorf("the cursor did not move under the flood: %d then %d", before.Cursor.LastEventID, after.Cursor.LastEventID)
	}

	leader := c.Leader(t)
	killed := time.Now()
	leader.Kill(t)
	var next string
	ts.WaitFor(t, 15*time.Second, "a new leader", func() (bool, string) {
		for _, a := range c.Live() {
			st, err := statusOf(a)
			if err == nil && st.Leader != nil && st.Leader.ID != leader.ID {
				next = st.Leader.ID
				return true, ""
			}
		}
		return false, "none yet"
	})
	clk.Logf("FIGURE: leader %s killed under the flood; %s leads %s later", leader.ID, next, time.Since(killed).Round(time.Millisecond))
	s.close()
	leader.Restart(t)
	bg.stop(t)
	checkOutcome(t, d, c)
}

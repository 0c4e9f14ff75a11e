package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/geocursor/geocursor/internal/devcluster"
)

// The strangers part (issue 18, item 7): what a stranger with no
// certificate and no token costs the group. It holds 300 idle TLS
// connections on every API port (one GET /v1/health each, then nothing)
// and 80 silent TCP connections on every Raft port, and measures beside
// the same without them: an operator's status on every node, and the
// time from a leader's SIGKILL to a new leader.

type strangersReport struct {
	Method string `json:"method"`
	// Without and With are the same measurements, side by side.
	Without strangersRun `json:"without"`
	With    strangersRun `json:"with"`
	// APIConnections and RaftConnections are what the stranger held.
	APIConnections  int `json:"api_connections"`
	RaftConnections int `json:"raft_connections"`
}

type strangersRun struct {
	StatusMS   summary `json:"status"`
	ElectionMS summary `json:"leader_kill_to_new_leader"`
}

const strangersMethod = "Three agents with TLS and tokens. An operator's GET /v1/status on each node, 10 rounds, and a leader SIGKILL " +
	"to the first status that names another leader, -strangers-kills times (the killed node restarted between kills); first " +
	"without the stranger, then while it holds 300 TLS connections per API port that sent one request each and idle, and 80 " +
	"TCP connections per Raft port that never send a byte."

const (
	strangerAPIConns  = 300
	strangerRaftConns = 80
	strangerKills     = 5
)

func (b *bench) strangers(ctx context.Context) error {
	if b.security != securityTLS {
		b.logf("strangers: skipped for the %s variant (it measures the TLS ports)", b.security)
		return nil
	}
	if err := b.startCluster(ctx); err != nil {
		return err
	}
	r := &strangersReport{Method: strangersMethod}
	b.report.Strangers = r
	var err error
	if r.Without, err = b.measureStrangers(ctx); err != nil {
		return err
	}
	caPEM, err := os.ReadFile(filepath.Join(b.secure.Dir, "ca.pem"))
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for _, a := range b.agents {
		for i := 0; i < strangerAPIConns; i++ {
			c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", a.HTTPAddr, &tls.Config{RootCAs: roots, ServerName: "localhost"})
			if err != nil {
				continue
			}
			fmt.Fprintf(c, "GET /v1/health HTTP/1.1\r\nHost: %s\r\n\r\n", a.HTTPAddr)
			held = append(held, c)
			r.APIConnections++
		}
		for i := 0; i < strangerRaftConns; i++ {
			c, err := net.DialTimeout("tcp", a.RaftAddr, time.Second)
			if err != nil {
				continue
			}
			held = append(held, c)
			r.RaftConnections++
		}
	}
	b.logf("strangers: holding %d API and %d Raft connections", r.APIConnections, r.RaftConnections)
	if r.With, err = b.measureStrangers(ctx); err != nil {
		return err
	}
	b.logf("strangers: status p50 %.1f / max %.1f ms (without: %.1f / %.1f); leader kill to a new leader p50 %.0f / max %.0f ms (without: %.0f / %.0f)",
		r.With.StatusMS.P50, r.With.StatusMS.Max, r.Without.StatusMS.P50, r.Without.StatusMS.Max,
		r.With.ElectionMS.P50, r.With.ElectionMS.Max, r.Without.ElectionMS.P50, r.Without.ElectionMS.Max)
	b.report.check("strangers: operator status max (ms)", r.With.StatusMS.Max, "≤ 1000", r.With.StatusMS.Max <= 1000)
	b.report.check("strangers: leader kill to a new leader max (ms)", r.With.ElectionMS.Max, "≤ 1000", r.With.ElectionMS.Max <= 1000)
	return nil
}

// measureStrangers times the operator's status and leader kills.
func (b *bench) measureStrangers(ctx context.Context) (strangersRun, error) {
	var run strangersRun
	var status, elections []float64
	for i := 0; i < 10; i++ {
		for _, a := range b.cluster.Live() {
			start := time.Now()
			sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := a.Status(sctx)
			cancel()
			if err != nil {
				return run, fmt.Errorf("status of %s: %w", a.ID, err)
			}
			status = append(status, float64(time.Since(start).Microseconds())/1000)
		}
	}
	for i := 0; i < strangerKills; i++ {
		leader, err := b.cluster.Leader(ctx, 30*time.Second)
		if err != nil {
			return run, err
		}
		killed := time.Now()
		if err := leader.Kill(); err != nil {
			return run, err
		}
		err = devcluster.WaitEvery(ctx, 30*time.Second, 10*time.Millisecond, "a new leader", func() (bool, string, error) {
			for _, a := range b.cluster.Live() {
				sctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
				st, err := a.Status(sctx)
				cancel()
				if err == nil && st.Leader != nil && st.Leader.ID != leader.ID {
					return true, "", nil
				}
			}
			return false, "none yet", nil
		})
		if err != nil {
			return run, err
		}
		elections = append(elections, float64(time.Since(killed).Microseconds())/1000)
		if _, err := b.restartKilled(ctx, leader); err != nil {
			return run, err
		}
	}
	run.StatusMS, run.ElectionMS = summarize(status), summarize(elections)
	return run, nil
}

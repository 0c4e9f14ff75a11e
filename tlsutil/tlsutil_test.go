package tlsutil

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// makeCluster creates a CA with peer certificates for node1 and node2 and
// a client certificate for alice in a new directory.
func makeCluster(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	if _, _, err := CreateCA(dir, DefaultCADays); err != nil {
		t.Fatal(err)
	}
	for _, req := range []CertRequest{{Node: "node1"}, {Node: "node2"}, {Client: "alice"}} {
		req.Days = DefaultCertDays
		if _, _, err := CreateCert(dir, req); err != nil {
			t.Fatalf("create %+v: %v", req, err)
		}
	}
	return dir
}

func nodeFiles(dir, id string) Files {
	ca, _ := CAFiles(dir)
	cert, key := NodeFiles(dir, id)
	return Files{CA: ca, Cert: cert, Key: key}
}

func TestCreateWritesKeysPrivatelyAndNamesTheIdentity(t *testing.T) {
	dir := makeCluster(t)
	for _, key := range []string{"ca-key.pem", "node1-key.pem", "client-alice-key.pem"} {
		fi, err := os.Stat(filepath.Join(dir, key))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", key, fi.Mode().Perm())
		}
	}
	n, err := LoadNode(nodeFiles(dir, "node1"), "node1")
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := PeerID(n.cur.Load().cert.Leaf); !ok || id != "node1" {
		t.Errorf("node1's certificate names %q (%t)", id, ok)
	}
	if _, err := LoadNode(nodeFiles(dir, "node1"), "node2"); err == nil || !strings.Contains(err.Error(), "not a peer certificate of node2") {
		t.Errorf("loading node1's certificate as node2: %v", err)
	}
	if _, _, err := CreateCert(dir, CertRequest{Node: "node1", Days: 1}); err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Errorf("creating node1 twice: %v", err)
	}
	if _, _, err := CreateCA(dir, 1); err == nil {
		t.Error("a second CA over the first was created")
	}
	if _, _, err := CreateCert(dir, CertRequest{Node: "bad name\x1b[31m", Days: 1}); err == nil {
		t.Error("a certificate for a node ID with escapes was created")
	}
}

// handshake runs a TLS handshake between server and client configs over a
// loopback connection and returns the server's and client's errors.
func handshake(t *testing.T, server, client *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		tc := tls.Server(c, server)
		_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
		err = tc.Handshake()
		if err == nil {
			// A client certificate check fails on the client's first read.
			_, err = tc.Write([]byte("x"))
		}
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := tls.Client(c, client)
	_ = tc.SetDeadline(time.Now().Add(5 * time.Second))
	clientErr = tc.Handshake()
	if clientErr == nil {
		_, clientErr = tc.Read(make([]byte, 1))
	}
	return <-done, clientErr
}

func TestWhoMayConnectWhere(t *testing.T) {
	dir := makeCluster(t)
	other := makeCluster(t) // another cluster's CA and certificates
	node1, err := LoadNode(nodeFiles(dir, "node1"), "node1")
	if err != nil {
		t.Fatal(err)
	}
	node2, err := LoadNode(nodeFiles(dir, "node2"), "node2")
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := LoadNode(nodeFiles(other, "node2"), "node2")
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := CAFiles(dir)
	aliceCert, aliceKey := ClientFiles(dir, "alice")
	tokenOnly, err := Client(ca, "", "")
	if err != nil {
		t.Fatal(err)
	}
	alice, err := Client(ca, aliceCert, aliceKey)
	if err != nil {
		t.Fatal(err)
	}
	otherCA, _ := CAFiles(other)
	otherCert, otherKey := ClientFiles(other, "alice")
	strangerClient, err := Client(otherCA, otherCert, otherKey)
	if err != nil {
		t.Fatal(err)
	}
	// strangerWithOurCA trusts our servers but presents the other CA's
	// client certificate.
	strangerWithOurCA := alice.Clone()
	strangerWithOurCA.Certificates = strangerClient.Certificates

	for _, tc := range []struct {
		name   string
		server *tls.Config
		client *tls.Config
		ok     bool
	}{
		{"API: a client with only the CA (token auth)", node1.APIServer(), tokenOnly, true},
		{"API: a client certificate from the CA", node1.APIServer(), alice, true},
		{"API: a peer", node1.APIServer(), node2.PeerClient(), true},
		{"API: a client certificate from another CA", node1.APIServer(), strangerWithOurCA, false},
		{"API: a client that trusts another CA", node1.APIServer(), strangerClient, false},
		{"API: a peer of another cluster", node1.APIServer(), stranger.PeerClient(), false},
		{"Raft: a peer", node1.RaftServer(), node2.PeerClient(), true},
		{"Raft: no client certificate", node1.RaftServer(), tokenOnly, false},
		{"Raft: a client certificate, not a peer's", node1.RaftServer(), alice, false},
		{"Raft: a peer of another cluster", node1.RaftServer(), stranger.PeerClient(), false},
		{"peer client: a server of another cluster", stranger.APIServer(), node1.PeerClient(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			serr, cerr := handshake(t, tc.server, tc.client)
			if ok := serr == nil && cerr == nil; ok != tc.ok {
				t.Errorf("connected: %t (server: %v; client: %v), want %t", ok, serr, cerr, tc.ok)
			}
		})
	}
}

func TestReloadTakesEffectAtTheNextHandshakeAndKeepsGoodMaterial(t *testing.T) {
	dir := makeCluster(t)
	files := nodeFiles(dir, "node1")
	n, err := LoadNode(files, "node1")
	if err != nil {
		t.Fatal(err)
	}
	before := n.NotAfter()
	// Replace node1's certificate with one of a shorter life.
	os.Remove(files.Cert)
	os.Remove(files.Key)
	if _, _, err := CreateCert(dir, CertRequest{Node: "node1", Days: 2}); err != nil {
		t.Fatal(err)
	}
	if err := n.Reload(); err != nil {
		t.Fatal(err)
	}
	if !n.NotAfter().Before(before) {
		t.Errorf("after reload the certificate expires %s, before it %s: not reloaded", n.NotAfter(), before)
	}
	// A broken file is refused; the node keeps what it had.
	if err := os.WriteFile(files.Cert, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := n.Reload(); err == nil {
		t.Fatal("reloading a garbage certificate succeeded")
	}
	node2, err := LoadNode(nodeFiles(dir, "node2"), "node2")
	if err != nil {
		t.Fatal(err)
	}
	if serr, cerr := handshake(t, n.APIServer(), node2.PeerClient()); serr != nil || cerr != nil {
		t.Errorf("after a failed reload the node no longer serves: %v / %v", serr, cerr)
	}
}

package tlsutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// signOdd writes a certificate for node id signed by dir's CA, made from
// tmpl's IsCA and ExtKeyUsage only (a peer's names otherwise), as
// <name>.pem and <name>-key.pem in a new directory, and returns its Files.
func signOdd(t *testing.T, dir, id, name string, tmpl x509.Certificate) Files {
	t.Helper()
	caCert, caKey, err := loadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl.SerialNumber = serial
	tmpl.Subject = pkix.Name{CommonName: PeerName(id)}
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	tmpl.DNSNames = []string{PeerName(id), "localhost"}
	tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cert, keyPath := filepath.Join(out, name+".pem"), filepath.Join(out, name+"-key.pem")
	if err := writePair(out, cert, keyPath, der, key); err != nil {
		t.Fatal(err)
	}
	ca, _ := CAFiles(dir)
	return Files{CA: ca, Cert: cert, Key: keyPath}
}

// pair loads files as a tls.Certificate, without any of LoadNode's checks:
// what an attacker holding such a certificate would present.
func pair(t *testing.T, f Files) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Go's verification takes a CA:TRUE certificate for a leaf, and one with
// no extended key usage for any use. Neither may act as a peer: not on the
// Raft port, not as a server a peer dials, not as a node's own certificate.
func TestOnlyALeafWithBothUsagesIsAPeer(t *testing.T) {
	dir := makeCluster(t)
	node1, err := LoadNode(nodeFiles(dir, "node1"), "node1")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		tmpl x509.Certificate
		why  string
	}{
		{"a CA:TRUE leaf", x509.Certificate{IsCA: true, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}},
			"is a CA certificate (CA:TRUE), not a leaf"},
		{"a leaf without extended key usages", x509.Certificate{},
			"lacks the extended key usage serverAuth and clientAuth"},
		{"a leaf for client authentication only", x509.Certificate{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
			"lacks the extended key usage serverAuth"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := signOdd(t, dir, "node3", "node3", tc.tmpl)
			cert := pair(t, files)
			leaf, err := x509.ParseCertificate(cert.Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			if id, ok := PeerID(leaf); ok {
				t.Errorf("PeerID = %q, want no peer", id)
			}
			if _, err := LoadNode(files, "node3"); err == nil || !strings.Contains(err.Error(), tc.why) {
				t.Errorf("LoadNode: %v, want a refusal saying it %s", err, tc.why)
			}

			// On the Raft port, as a client.
			client := node1.PeerClient()
			client.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
			if serr, cerr := handshake(t, node1.RaftServer(), client); serr == nil && cerr == nil {
				t.Error("the Raft port accepted it")
			} else if serr != nil && !strings.Contains(serr.Error(), tc.why) {
				t.Errorf("the Raft port's refusal %q does not say it %s", serr, tc.why)
			}

			// As a server that a peer dials.
			server := base()
			server.Certificates = []tls.Certificate{cert}
			if _, cerr := handshake(t, server, node1.PeerClient()); cerr == nil {
				t.Error("a peer accepted it as a server")
			}

			// On the API it is verified (the CA signed it) but names no
			// peer, so it may not act as one.
			var state tls.ConnectionState
			api := node1.APIServer()
			inner, _ := api.GetConfigForClient(nil)
			inner.VerifyConnection = func(cs tls.ConnectionState) error { state = cs; return nil }
			api.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return inner, nil }
			if serr, cerr := handshake(t, api, client); serr != nil || cerr != nil {
				t.Fatalf("the API refused a certificate of its CA at the handshake: %v / %v", serr, cerr)
			}
			if id, ok := PeerOf(&state); ok {
				t.Errorf("on the API it acts as peer %s", id)
			}
		})
	}
}

// A client certificate must be a leaf for client authentication.
func TestOnlyALeafForClientAuthIsAClient(t *testing.T) {
	dir := makeCluster(t)
	ca, _ := CAFiles(dir)
	cert, key := ClientFiles(dir, "alice")
	good, err := readCertificates(cert)
	if err != nil {
		t.Fatal(err)
	}
	if name, ok := ClientOf(good[0]); !ok || name != "alice" {
		t.Fatalf("alice's certificate: ClientOf = %q, %t", name, ok)
	}
	if _, err := Client(ca, cert, key); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*x509.Certificate{
		{IsCA: true, DNSNames: []string{ClientName("mallory")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		{DNSNames: []string{ClientName("mallory")}},
		{DNSNames: []string{ClientName("mallory")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
	} {
		if name, ok := ClientOf(c); ok {
			t.Errorf("IsCA %t, usages %v: ClientOf = %q, want no client", c.IsCA, c.ExtKeyUsage, name)
		}
	}
}

// TLS 1.2 only with ECDHE and an AEAD: a client that offers nothing but a
// CBC suite with SHA-1 is refused, on both ports and by a peer dialling;
// one that offers Go's defaults gets an AEAD suite.
func TestTLS12OnlyWithAEADSuites(t *testing.T) {
	dir := makeCluster(t)
	node1, err := LoadNode(nodeFiles(dir, "node1"), "node1")
	if err != nil {
		t.Fatal(err)
	}
	node2, err := LoadNode(nodeFiles(dir, "node2"), "node2")
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := CAFiles(dir)
	cbc := []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA}
	tls12 := func(c *tls.Config, suites []uint16) *tls.Config {
		c = c.Clone()
		c.MaxVersion, c.CipherSuites = tls.VersionTLS12, suites
		return c
	}
	tokenOnly, err := Client(ca, "", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name           string
		server, client *tls.Config
	}{
		{"API", node1.APIServer(), tls12(tokenOnly, cbc)},
		{"Raft", node1.RaftServer(), tls12(node2.PeerClient(), cbc)},
	} {
		t.Run(tc.name+": CBC-SHA1 refused", func(t *testing.T) {
			if serr, cerr := handshake(t, tc.server, tc.client); serr == nil || cerr == nil {
				t.Errorf("a CBC-SHA1-only client connected (server: %v; client: %v)", serr, cerr)
			}
		})
	}
	t.Run("a peer refuses a CBC-SHA1 server", func(t *testing.T) {
		server := base()
		server.Certificates = []tls.Certificate{pair(t, nodeFiles(dir, "node2"))}
		server.MaxVersion, server.CipherSuites = tls.VersionTLS12, cbc
		if _, cerr := handshake(t, server, node1.PeerClient()); cerr == nil {
			t.Error("node1 connected to a server that speaks only CBC-SHA1")
		}
	})
	t.Run("TLS 1.2 with Go's default suites gets an AEAD suite", func(t *testing.T) {
		client := tls12(tokenOnly, nil)
		var got uint16
		client.VerifyConnection = func(cs tls.ConnectionState) error {
			got = cs.CipherSuite
			return verifyServer(cs, node1.cur.Load().pool)
		}
		if serr, cerr := handshake(t, node1.APIServer(), client); serr != nil || cerr != nil {
			t.Fatalf("handshake: %v / %v", serr, cerr)
		}
		if !slices.Contains(cipherSuites, got) {
			t.Errorf("negotiated %s, not one of geocursor's suites", tls.CipherSuiteName(got))
		}
		for _, s := range cipherSuites {
			if name := tls.CipherSuiteName(s); !strings.HasPrefix(name, "TLS_ECDHE_") || strings.Contains(name, "CBC") {
				t.Errorf("suite %s is not ECDHE with an AEAD", name)
			}
		}
	})
	t.Run("TLS 1.3 as Go has it", func(t *testing.T) {
		client := tokenOnly.Clone()
		var version uint16
		client.VerifyConnection = func(cs tls.ConnectionState) error {
			version = cs.Version
			return verifyServer(cs, node1.cur.Load().pool)
		}
		if serr, cerr := handshake(t, node1.APIServer(), client); serr != nil || cerr != nil {
			t.Fatalf("handshake: %v / %v", serr, cerr)
		}
		if version != tls.VersionTLS13 {
			t.Errorf("negotiated %s, want TLS 1.3", tls.VersionName(version))
		}
	})
}

// A certificate the CA signed for a peer stays one: what `tls cert create
// -node` writes passes every check above (and old clusters' certificates
// were written the same way).
func TestCreatedCertificatesAreLeavesWithTheirUsages(t *testing.T) {
	dir := makeCluster(t)
	for _, f := range []string{"node1.pem", "client-alice.pem"} {
		certs, err := readCertificates(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		c := certs[0]
		if c.IsCA {
			t.Errorf("%s is a CA", f)
		}
		if _, ok := PeerID(c); !ok && f == "node1.pem" {
			t.Errorf("%s is not a peer certificate: %s", f, describe(c))
		}
		if _, ok := ClientOf(c); !ok && f == "client-alice.pem" {
			t.Errorf("%s is not a client certificate: %s", f, describe(c))
		}
	}
}

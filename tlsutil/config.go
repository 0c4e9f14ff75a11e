package tlsutil

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// MinVersion is the oldest TLS version any geocursor endpoint speaks.
const MinVersion = tls.VersionTLS12

// cipherSuites are the TLS 1.2 suites every endpoint, server or client,
// accepts: ECDHE key exchange (forward secrecy) with an AEAD cipher. Go's
// default list also has the CBC suites with SHA-1 MACs (Lucky13-style
// padding oracles), which no client of a geocursor agent needs. TLS 1.3
// negotiates among its own suites, all AEAD, which Go does not let a
// config change.
var cipherSuites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// base is the start of every tls.Config geocursor builds: TLS 1.2 or
// newer, and in TLS 1.2 only the suites above.
func base() *tls.Config {
	return &tls.Config{MinVersion: MinVersion, CipherSuites: slices.Clone(cipherSuites)}
}

// Files are where a node's TLS material is: the cluster's CA, and the
// node's own certificate and key.
type Files struct {
	CA, Cert, Key string
}

// material is one loaded set of a node's TLS files.
type material struct {
	cert tls.Certificate // Leaf set
	pool *x509.CertPool
}

// Node is a node's TLS material, reloadable while the node runs: every
// tls.Config it builds looks the current material up at each handshake, so
// Reload takes effect for the next connection without a restart.
type Node struct {
	mu    sync.Mutex // serializes reloads
	files Files
	id    string
	cur   atomic.Pointer[material]
}

// LoadNode loads the material of node id. The certificate must be a peer
// certificate of id signed by the CA.
func LoadNode(files Files, id string) (*Node, error) {
	n := &Node{files: files, id: id}
	if err := n.Reload(); err != nil {
		return nil, err
	}
	return n, nil
}

// Reload reads the files again and, if they are sound, uses them from the
// next handshake on; if not, the material in use stays.
func (n *Node) Reload() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.use(n.files)
}

// Use switches to other files, as Reload does.
func (n *Node) Use(files Files) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.use(files)
}

func (n *Node) use(files Files) error {
	m, err := loadMaterial(files.CA, files.Cert, files.Key)
	if err != nil {
		return err
	}
	if id, ok := PeerID(m.cert.Leaf); !ok || id != n.id {
		return fmt.Errorf("%s is a %s, not a peer certificate of %s: create one with `geocursor tls cert create -node %s`",
			files.Cert, describe(m.cert.Leaf), n.id, n.id)
	}
	n.files = files
	n.cur.Store(m)
	return nil
}

// NotAfter is when the node's certificate expires.
func (n *Node) NotAfter() time.Time { return n.cur.Load().cert.Leaf.NotAfter }

// APIServer is the tls.Config of the HTTP API: the node's certificate;
// a client certificate is optional (operators authenticate with a token)
// but, when given, must come from the CA.
func (n *Node) APIServer() *tls.Config {
	cfg := base()
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		m := n.cur.Load()
		c := base()
		c.Certificates = []tls.Certificate{m.cert}
		c.ClientCAs = m.pool
		c.ClientAuth = tls.VerifyClientCertIfGiven
		return c, nil
	}
	return cfg
}

// RaftServer is the tls.Config of the Raft port: only peers of the
// cluster may connect.
func (n *Node) RaftServer() *tls.Config {
	cfg := base()
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		m := n.cur.Load()
		c := base()
		c.Certificates = []tls.Certificate{m.cert}
		c.ClientCAs = m.pool
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no client certificate")
			}
			if _, ok := PeerID(cs.PeerCertificates[0]); !ok {
				return fmt.Errorf("the Raft port accepts only peer certificates, not a %s", describe(cs.PeerCertificates[0]))
			}
			return nil
		}
		return c, nil
	}
	return cfg
}

// PeerClient is the tls.Config a node dials other peers with (Raft and
// the HTTP API): it presents its own certificate and accepts only a peer
// of the cluster.
func (n *Node) PeerClient() *tls.Config {
	cfg := base()
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		m := n.cur.Load()
		return &m.cert, nil
	}
	// The server is verified below, against the current CA and as a peer
	// of the cluster, not against the address it was dialled at.
	cfg.InsecureSkipVerify = true
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		return verifyServer(cs, n.cur.Load().pool)
	}
	return cfg
}

// Client is the tls.Config of a command-line client or a script: the CA to
// verify servers against and, optionally, a client certificate (certFile
// and keyFile both or neither).
func Client(caFile, certFile, keyFile string) (*tls.Config, error) {
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("give a client certificate and its key together (-client-cert and -client-key)")
	}
	cas, err := readCertificates(caFile)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	cfg := base()
	cfg.InsecureSkipVerify = true // verified below, as a peer of the cluster
	cfg.VerifyConnection = func(cs tls.ConnectionState) error { return verifyServer(cs, pool) }
	if certFile != "" {
		m, err := loadMaterial(caFile, certFile, keyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{m.cert}
	}
	return cfg, nil
}

// verifyServer checks the server's chain against pool and that it is a
// peer of the cluster.
func verifyServer(cs tls.ConnectionState, pool *x509.CertPool) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the server sent no certificate")
	}
	leaf := cs.PeerCertificates[0]
	opts := x509.VerifyOptions{Roots: pool, Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(opts); err != nil {
		return fmt.Errorf("the server's certificate is not from this cluster's CA: %w", err)
	}
	if _, ok := PeerID(leaf); !ok {
		return fmt.Errorf("the server presented a %s, not a peer certificate", describe(leaf))
	}
	return nil
}

// PeerOf returns the node a verified TLS connection's client certificate
// names, if it is a peer certificate the CA signed.
func PeerOf(cs *tls.ConnectionState) (string, bool) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
		return "", false
	}
	return PeerID(cs.PeerCertificates[0])
}

// ClientNameOf returns the name a verified TLS connection's client
// certificate carries, if it is a client certificate the CA signed.
func ClientNameOf(cs *tls.ConnectionState) (string, bool) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.PeerCertificates) == 0 {
		return "", false
	}
	return ClientOf(cs.PeerCertificates[0])
}

// loadMaterial reads a CA and a certificate with its key, and checks that
// they belong together: the key is the certificate's, and the CA signed it.
func loadMaterial(caFile, certFile, keyFile string) (*material, error) {
	cas, err := readCertificates(caFile)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("certificate %s with key %s: %w", certFile, keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("certificate %s: %w", certFile, err)
		}
	}
	opts := x509.VerifyOptions{Roots: pool, Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	for _, der := range cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			opts.Intermediates.AddCert(c)
		}
	}
	if _, err := cert.Leaf.Verify(opts); err != nil {
		return nil, fmt.Errorf("certificate %s is not valid under the CA in %s: %w", certFile, caFile, err)
	}
	return &material{cert: cert, pool: pool}, nil
}

package tlsutil

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"
)

// Default lifetimes of what `geocursor tls` creates.
const (
	DefaultCADays   = 3650
	DefaultCertDays = 365
)

// CreateCA writes a new certificate authority (ca.pem, and ca-key.pem with
// mode 0600) into dir, creating dir if needed. It refuses to overwrite an
// existing CA: every certificate it signed would stop working.
func CreateCA(dir string, days int) (certPath, keyPath string, err error) {
	if days <= 0 {
		return "", "", fmt.Errorf("create CA: -days must be positive, got %d", days)
	}
	certPath, keyPath = CAFiles(dir)
	if err := refuseOverwrite(certPath, keyPath); err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("create CA: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return "", "", err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "geocursor CA", Organization: []string{"geocursor"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(0, 0, days),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", fmt.Errorf("create CA: %w", err)
	}
	if err := writePair(dir, certPath, keyPath, der, key); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

// CertRequest says what certificate to create: for a node (a peer) or a
// client, exactly one of them.
type CertRequest struct {
	Node   string
	Client string
	// IPs and DNS are further names a peer is reached by; localhost,
	// 127.0.0.1 and ::1 are always added to a peer's.
	IPs  []net.IP
	DNS  []string
	Days int
}

// CreateCert writes a certificate signed by the CA in dir, and its key
// (mode 0600), into dir: <node>.pem and <node>-key.pem for a peer,
// client-<name>.pem and client-<name>-key.pem for a client. It refuses to
// overwrite existing files.
func CreateCert(dir string, req CertRequest) (certPath, keyPath string, err error) {
	switch {
	case (req.Node == "") == (req.Client == ""):
		return "", "", errors.New("create certificate: give exactly one of -node ID and -client NAME")
	case req.Node != "" && !ValidName(req.Node):
		return "", "", fmt.Errorf("create certificate: node ID %q is not valid: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", req.Node)
	case req.Client != "" && !ValidName(req.Client):
		return "", "", fmt.Errorf("create certificate: client name %q is not valid: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", req.Client)
	case req.Days <= 0:
		return "", "", fmt.Errorf("create certificate: -days must be positive, got %d", req.Days)
	}
	caCert, caKey, err := loadCA(dir)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		KeyUsage:  x509.KeyUsageDigitalSignature,
		NotBefore: time.Now().Add(-time.Hour),
		NotAfter:  time.Now().AddDate(0, 0, req.Days),
	}
	if tmpl.NotAfter.After(caCert.NotAfter) {
		tmpl.NotAfter = caCert.NotAfter
	}
	if req.Node != "" {
		certPath, keyPath = NodeFiles(dir, req.Node)
		tmpl.Subject = pkix.Name{CommonName: PeerName(req.Node), Organization: []string{"geocursor"}}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.DNSNames = append([]string{PeerName(req.Node), "localhost"}, req.DNS...)
		tmpl.IPAddresses = append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, req.IPs...)
	} else {
		certPath, keyPath = ClientFiles(dir, req.Client)
		tmpl.Subject = pkix.Name{CommonName: ClientName(req.Client), Organization: []string{"geocursor"}}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		tmpl.DNSNames = []string{ClientName(req.Client)}
	}
	if err := refuseOverwrite(certPath, keyPath); err != nil {
		return "", "", err
	}
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return "", "", err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", fmt.Errorf("create certificate: generate key: %w", err)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return "", "", fmt.Errorf("create certificate: %w", err)
	}
	if err := writePair(dir, certPath, keyPath, der, key); err != nil {
		return "", "", err
	}
	return certPath, keyPath, nil
}

// loadCA reads the CA certificate and key from dir.
func loadCA(dir string) (*x509.Certificate, crypto.Signer, error) {
	certPath, keyPath := CAFiles(dir)
	certs, err := readCertificates(certPath)
	if err != nil {
		return nil, nil, fmt.Errorf("%w (create one with `geocursor tls ca create -dir %s`)", err, dir)
	}
	if !certs[0].IsCA {
		return nil, nil, fmt.Errorf("%s is not a CA certificate", certPath)
	}
	key, err := readKey(keyPath)
	if err != nil {
		return nil, nil, err
	}
	return certs[0], key, nil
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate a serial number: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

func refuseOverwrite(paths ...string) error {
	for _, p := range paths {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%s exists already: remove it first if you mean to replace it", p)
		}
	}
	return nil
}

// writePair writes the certificate (0644) and the key (0600), creating
// dir (0700) if needed. The key is written first and never left readable
// by others, even for a moment.
func writePair(dir, certPath, keyPath string, der []byte, key *ecdsa.PrivateKey) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("encode key: %w", err)
	}
	if err := writePEM(keyPath, "PRIVATE KEY", keyDER, 0o600); err != nil {
		return err
	}
	return writePEM(certPath, "CERTIFICATE", der, 0o644)
}

func writePEM(path, kind string, der []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := pem.Encode(f, &pem.Block{Type: kind, Bytes: der}); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// readCertificates reads every certificate of a PEM file.
func readCertificates(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var certs []*x509.Certificate
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return certs, nil
}

func readKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s holds no PEM key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		if ec, ecErr := x509.ParseECPrivateKey(block.Bytes); ecErr == nil {
			return ec, nil
		}
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: the key cannot sign", path)
	}
	return s, nil
}

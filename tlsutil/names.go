// Package tlsutil is geocursor's TLS material: it creates the certificate
// authority and the peer and client certificates of a cluster, loads them,
// reloads them on SIGHUP, and builds the tls.Configs of the API server, the
// Raft transport and the clients, which all verify against the one CA.
//
// A peer certificate names its node as DNS:<node_id>.peer.geocursor, a
// client certificate its holder as DNS:<name>.client.geocursor (design
// section 10). Servers are verified as peers of the cluster: a client
// accepts a server whose certificate the CA signed for a peer, whatever
// address it was reached by, so that peers need not list every IP they are
// reached by (as Nomad verifies server.<region>.nomad).
package tlsutil

import (
	"crypto/x509"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/geocursor/geocursor/fsm"
)

// The name suffixes that make a certificate a peer's or a client's.
const (
	PeerSuffix   = ".peer.geocursor"
	ClientSuffix = ".client.geocursor"
)

// ValidName reports whether s may name a node or a client: what a node ID
// may be (fsm.ValidNodeID), so that every name is also a DNS label.
func ValidName(s string) bool { return fsm.ValidNodeID(s) }

// PeerName is the DNS name a peer certificate of node id carries.
func PeerName(id string) string { return id + PeerSuffix }

// ClientName is the DNS name a client certificate of name carries.
func ClientName(name string) string { return name + ClientSuffix }

// The extended key usages a certificate must have to serve as a peer's
// (it is a server on its ports and a client of the others') or a
// client's, as `geocursor tls cert create` writes them.
var (
	peerUsages   = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	clientUsages = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
)

// PeerID returns the node a peer certificate names, and whether cert is
// one: a leaf (not CA:TRUE) for both server and client authentication,
// with exactly one DNS name ending in .peer.geocursor, before it a valid
// node ID. Go's verification accepts a CA certificate as a leaf, and one
// without extended key usages for any use; a peer certificate must be
// neither, so that nothing but what `tls cert create -node` writes acts
// as a node.
func PeerID(cert *x509.Certificate) (string, bool) {
	if notLeafFor(cert, peerUsages) != "" {
		return "", false
	}
	return nameWithSuffix(cert, PeerSuffix)
}

// ClientOf returns the name a client certificate carries, and whether cert
// is one: a leaf for client authentication, with exactly one DNS name
// ending in .client.geocursor.
func ClientOf(cert *x509.Certificate) (string, bool) {
	if notLeafFor(cert, clientUsages) != "" {
		return "", false
	}
	return nameWithSuffix(cert, ClientSuffix)
}

// notLeafFor says why cert is not a leaf certificate with every one of
// usages among its extended key usages, "" when it is one.
func notLeafFor(cert *x509.Certificate, usages []x509.ExtKeyUsage) string {
	if cert == nil {
		return "is missing"
	}
	if cert.IsCA {
		return "is a CA certificate (CA:TRUE), not a leaf"
	}
	var missing []string
	for _, u := range usages {
		if !slices.Contains(cert.ExtKeyUsage, u) {
			missing = append(missing, usageName(u))
		}
	}
	if len(missing) > 0 {
		return "lacks the extended key usage " + strings.Join(missing, " and ")
	}
	return ""
}

func usageName(u x509.ExtKeyUsage) string {
	switch u {
	case x509.ExtKeyUsageServerAuth:
		return "serverAuth"
	case x509.ExtKeyUsageClientAuth:
		return "clientAuth"
	}
	return fmt.Sprintf("%d", u)
}

func nameWithSuffix(cert *x509.Certificate, suffix string) (string, bool) {
	if cert == nil {
		return "", false
	}
	found := ""
	for _, n := range cert.DNSNames {
		if id, ok := strings.CutSuffix(n, suffix); ok {
			if found != "" || !ValidName(id) {
				return "", false // two identities, or a malformed one
			}
			found = id
		}
	}
	return found, found != ""
}

// File names in a TLS directory, as `geocursor tls` writes them.

// CAFiles are the CA's certificate and key in dir.
func CAFiles(dir string) (cert, key string) {
	return filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
}

// NodeFiles are node id's certificate and key in dir.
func NodeFiles(dir, id string) (cert, key string) {
	return filepath.Join(dir, id+".pem"), filepath.Join(dir, id+"-key.pem")
}

// ClientFiles are client name's certificate and key in dir.
func ClientFiles(dir, name string) (cert, key string) {
	return filepath.Join(dir, "client-"+name+".pem"), filepath.Join(dir, "client-"+name+"-key.pem")
}

// describe names a certificate for an error message, and says what keeps
// one that names a peer or a client from being one.
func describe(cert *x509.Certificate) string {
	if id, ok := PeerID(cert); ok {
		return "peer certificate of " + id
	}
	if name, ok := ClientOf(cert); ok {
		return "client certificate of " + name
	}
	if id, ok := nameWithSuffix(cert, PeerSuffix); ok {
		return fmt.Sprintf("certificate naming peer %s that %s", id, notLeafFor(cert, peerUsages))
	}
	if name, ok := nameWithSuffix(cert, ClientSuffix); ok {
		return fmt.Sprintf("certificate naming client %s that %s", name, notLeafFor(cert, clientUsages))
	}
	return fmt.Sprintf("certificate %q", cert.Subject.CommonName)
}

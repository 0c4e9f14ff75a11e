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

// PeerID returns the node a peer certificate names, and whether cert is
// one: exactly one DNS name ending in .peer.geocursor, before it a valid
// node ID.
func PeerID(cert *x509.Certificate) (string, bool) {
	return nameWithSuffix(cert, PeerSuffix)
}

// ClientOf returns the name a client certificate carries, and whether cert
// is one.
func ClientOf(cert *x509.Certificate) (string, bool) {
	return nameWithSuffix(cert, ClientSuffix)
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

// describe names a certificate for an error message.
func describe(cert *x509.Certificate) string {
	if id, ok := PeerID(cert); ok {
		return "peer certificate of " + id
	}
	if name, ok := ClientOf(cert); ok {
		return "client certificate of " + name
	}
	return fmt.Sprintf("certificate %q", cert.Subject.CommonName)
}

package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/geocursor/geocursor/tlsutil"
)

// runTLSCACreate runs `geocursor tls ca create`: a new CA for one cluster.
func runTLSCACreate(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tls ca create", stderr)
	dir := fs.String("dir", "tls", "directory to write ca.pem and ca-key.pem into")
	days := fs.Int("days", tlsutil.DefaultCADays, "days the CA is valid")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cert, key, err := tlsutil.CreateCA(*dir, *days)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "Created the cluster's CA: %s (certificate) and %s (key, keep it secret and off the agents' machines).\n", cert, key)
	fmt.Fprintf(stdout, "Next: geocursor tls cert create -dir %s -node node1 -ip <node1's IP>, for each node.\n", *dir)
	return nil
}

// runTLSCertCreate runs `geocursor tls cert create`: a peer certificate
// for a node, or a client certificate, signed by the CA in -dir.
func runTLSCertCreate(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tls cert create", stderr)
	dir := fs.String("dir", "tls", "directory of the CA; the certificate and key are written there")
	node := fs.String("node", "", "create a peer certificate for this node ID")
	client := fs.String("client", "", "create a client certificate for this name")
	days := fs.Int("days", tlsutil.DefaultCertDays, "days the certificate is valid")
	var ips, names listFlag
	fs.Var(&ips, "ip", "an IP address the node is reached by (repeat for more; 127.0.0.1 and ::1 are always included)")
	fs.Var(&names, "dns", "a DNS name the node is reached by (repeat for more; localhost is always included)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	req := tlsutil.CertRequest{Node: *node, Client: *client, DNS: names, Days: *days}
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil {
			return usagef("tls cert create: -ip %q is not an IP address", s)
		}
		req.IPs = append(req.IPs, ip)
	}
	if *client != "" && (len(ips) > 0 || len(names) > 0) {
		return usagef("tls cert create: -ip and -dns are for a node's certificate, not a client's")
	}
	cert, key, err := tlsutil.CreateCert(*dir, req)
	if err != nil {
		if *node == "" && *client == "" || *node != "" && *client != "" {
			return usagef("tls cert create: give exactly one of -node ID and -client NAME")
		}
		return err
	}
	if *node != "" {
		fmt.Fprintf(stdout, "Created the peer certificate of %s: %s, key %s.\n", *node, cert, key)
		ca, _ := tlsutil.CAFiles(*dir)
		fmt.Fprintf(stdout, "In %s's config:\n  tls {\n    ca_file   = %q\n    cert_file = %q\n    key_file  = %q\n  }\n", *node, ca, cert, key)
	} else {
		fmt.Fprintf(stdout, "Created the client certificate of %s: %s, key %s (use with -client-cert and -client-key).\n", *client, cert, key)
	}
	return nil
}

// listFlag is a flag that may be given more than once.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	*l = append(*l, s)
	return nil
}

var _ flag.Value = (*listFlag)(nil)

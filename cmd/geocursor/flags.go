package main

import (
	"errors"
	"flag"
	"io"
	"os"
	"strings"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/tlsutil"
)

// newFlagSet returns a flag set that reports errors instead of exiting, so
// that run decides the exit status.
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// parseFlags parses args and turns flag's errors into usage errors.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return usagef("%s: %v", fs.Name(), err)
	}
	if fs.NArg() > 0 {
		return usagef("%s: unexpected argument %q (flags start with -)", fs.Name(), fs.Arg(0))
	}
	return nil
}

// stringFlag is a string flag that remembers whether it was given, so an
// unset flag never overrides the file or the environment.
type stringFlag struct{ value *string }

func (f *stringFlag) String() string {
	if f.value == nil {
		return ""
	}
	return *f.value
}

func (f *stringFlag) Set(s string) error {
	f.value = &s
	return nil
}

// clientFlags are the flags every client command takes (design section 3):
// where the agent is and how to prove who is asking. Each defaults to its
// environment variable.
type clientFlags struct {
	addr, caFile, clientCert, clientKey, token *string
}

// Environment variables of the client commands.
const (
	envAddr       = "GEOCURSOR_ADDR"
	envCACert     = "GEOCURSOR_CACERT"
	envClientCert = "GEOCURSOR_CLIENT_CERT"
	envClientKey  = "GEOCURSOR_CLIENT_KEY"
	envToken      = "GEOCURSOR_TOKEN"
)

// addClientFlags registers the client flags on fs.
func addClientFlags(fs *flag.FlagSet) *clientFlags {
	return &clientFlags{
		addr:       fs.String("addr", envOr(envAddr, defaultAddr), "HTTP address of any member: HOST:PORT or https://HOST:PORT (default $"+envAddr+", then "+defaultAddr+")"),
		caFile:     fs.String("ca-file", os.Getenv(envCACert), "the cluster's CA certificate, to speak TLS with the agent (default $"+envCACert+")"),
		clientCert: fs.String("client-cert", os.Getenv(envClientCert), "a client certificate to present, from the cluster's CA (default $"+envClientCert+")"),
		clientKey:  fs.String("client-key", os.Getenv(envClientKey), "the client certificate's key (default $"+envClientKey+")"),
		token:      fs.String("token", os.Getenv(envToken), "the read or operator token (default $"+envToken+")"),
	}
}

// client builds the API client the flags describe: TLS when a CA is given
// (then a bare HOST:PORT means https), the token on every request.
func (f *clientFlags) client() (*api.Client, error) {
	opts := api.ClientOptions{Token: *f.token}
	if *f.caFile != "" {
		cfg, err := tlsutil.Client(*f.caFile, *f.clientCert, *f.clientKey)
		if err != nil {
			return nil, usagef("%v", err)
		}
		opts.TLS = cfg
	} else if *f.clientCert != "" || *f.clientKey != "" {
		return nil, usagef("-client-cert and -client-key need -ca-file (or $%s): the CA to verify the agent against", envCACert)
	}
	if strings.HasPrefix(*f.addr, "https://") && opts.TLS == nil {
		return nil, usagef("-addr %s speaks TLS: give the cluster's CA with -ca-file (or $%s)", *f.addr, envCACert)
	}
	return api.NewClient(opts), nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

package devcluster

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/tlsutil"
)

// Security is what a cluster of agents runs with when it runs as in
// production: a CA of its own in Dir, a peer certificate for each agent
// (made when the agent is), and a pair of tokens. The harness itself acts
// as the operator: its requests carry the operator token over TLS.
type Security struct {
	Dir           string
	OperatorToken string
	ReadToken     string
}

// NewSecurity creates a CA in dir and random tokens.
func NewSecurity(dir string) (*Security, error) {
	if _, _, err := tlsutil.CreateCA(dir, tlsutil.DefaultCADays); err != nil {
		return nil, err
	}
	op, err := randomToken()
	if err != nil {
		return nil, err
	}
	rd, err := randomToken()
	if err != nil {
		return nil, err
	}
	return &Security{Dir: dir, OperatorToken: op, ReadToken: rd}, nil
}

func randomToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("make a token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// NodeHCL creates the peer certificate of node id (unless it exists) and
// returns the tls and acl blocks of its config.
func (s *Security) NodeHCL(id string) (string, error) {
	cert, key := tlsutil.NodeFiles(s.Dir, id)
	if _, err := os.Stat(cert); err != nil {
		if _, _, err := tlsutil.CreateCert(s.Dir, tlsutil.CertRequest{Node: id, Days: tlsutil.DefaultCertDays}); err != nil {
			return "", err
		}
	}
	ca, _ := tlsutil.CAFiles(s.Dir)
	return fmt.Sprintf(`
tls {
  ca_file   = %q
  cert_file = %q
  key_file  = %q
}

acl {
  operator_token = %q
  read_token     = %q
}
`, ca, cert, key, s.OperatorToken, s.ReadToken), nil
}

// ClientOptions adds TLS (trusting the CA) and token to opts.
func (s *Security) ClientOptions(opts api.ClientOptions, token string) (api.ClientOptions, error) {
	ca, _ := tlsutil.CAFiles(s.Dir)
	cfg, err := tlsutil.Client(ca, "", "")
	if err != nil {
		return opts, err
	}
	opts.TLS, opts.Token = cfg, token
	return opts, nil
}

// Client is an API client of the cluster with token (the operator's, the
// reader's, or none).
func (s *Security) Client(token string) (*api.Client, error) {
	opts, err := s.ClientOptions(api.ClientOptions{}, token)
	if err != nil {
		return nil, err
	}
	return api.NewClient(opts), nil
}

// CLIArgs are the flags a geocursor client command needs to reach the
// cluster with token.
func (s *Security) CLIArgs(token string) []string {
	ca, _ := tlsutil.CAFiles(s.Dir)
	return []string{"-ca-file", ca, "-token", token}
}

package devcluster

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

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
	// JoinToken, when set, goes into every agent's acl block
	// (acl.join_token): a node that holds it may join with it instead of
	// the operator token.
	JoinToken string
	// TokenFiles has each agent read its tokens from files of its own
	// (acl.operator_token_file and read_token_file, in Dir), as a site
	// that rotates them does, instead of from its config file: WriteTokens
	// rewrites an agent's files, and SIGHUP has it read them again.
	TokenFiles bool
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
	acl := fmt.Sprintf("  operator_token = %q\n  read_token     = %q\n", s.OperatorToken, s.ReadToken)
	if s.TokenFiles {
		op, rd := s.TokenFilePaths(id)
		if _, err := os.Stat(op); err != nil {
			if err := s.WriteTokens(id, s.OperatorToken, s.ReadToken); err != nil {
				return "", err
			}
		}
		acl = fmt.Sprintf("  operator_token_file = %q\n  read_token_file     = %q\n", op, rd)
	}
	if s.JoinToken != "" {
		acl += fmt.Sprintf("  join_token     = %q\n", s.JoinToken)
	}
	return fmt.Sprintf(`
tls {
  ca_file   = %q
  cert_file = %q
  key_file  = %q
}

acl {
%s}
`, ca, cert, key, acl), nil
}

// TokenFilePaths are the files node id reads its operator and read
// tokens from with TokenFiles.
func (s *Security) TokenFilePaths(id string) (operator, read string) {
	return filepath.Join(s.Dir, id+"-operator.token"), filepath.Join(s.Dir, id+"-read.token")
}

// WriteTokens replaces node id's token files (mode 0600, a newline after
// each token, as `openssl rand -hex 32 > FILE` writes them), each at once
// by a rename, as an operator should. The agent reads them at its next
// start or SIGHUP.
func (s *Security) WriteTokens(id, operator, read string) error {
	op, rd := s.TokenFilePaths(id)
	for _, f := range []struct{ path, token string }{{op, operator}, {rd, read}} {
		if err := replaceFile(f.path, f.token+"\n"); err != nil {
			return fmt.Errorf("write the token file of %s: %w", id, err)
		}
	}
	return nil
}

// replaceFile writes data to a new file (mode 0600) beside path and
// renames it over path.
func replaceFile(path, data string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = tmp.WriteString(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}

// NewToken returns a new random token.
func NewToken() (string, error) { return randomToken() }

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

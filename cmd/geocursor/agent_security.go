package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/hashicorp/go-hclog"

	"github.com/geocursor/geocursor/cluster"
	"github.com/geocursor/geocursor/config"
	"github.com/geocursor/geocursor/tlsutil"
)

// security is an agent's TLS material and tokens, which SIGHUP reloads.
type security struct {
	tls *tlsutil.Node // nil without a tls block
	acl *cluster.ACL  // nil without an acl block
	// operatorToken and readToken are the tokens acl holds, so that a
	// reload can tell which of them it changes.
	operatorToken, readToken string
	// joinToken is the join token acl holds (acl.join_token).
	joinToken string
}

// loadSecurity loads what cfg's tls and acl blocks name, and logs what the
// acl block's warnings say to fix.
func loadSecurity(cfg *config.Config, logger hclog.Logger) (*security, error) {
	s := &security{}
	if t := cfg.TLS; t != nil {
		n, err := tlsutil.LoadNode(tlsutil.Files{CA: t.CAFile, Cert: t.CertFile, Key: t.KeyFile}, cfg.NodeID)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		s.tls = n
	}
	if a := cfg.ACL; a != nil {
		for _, w := range a.Warnings {
			logger.Warn(w)
		}
		s.acl = cluster.NewACL(a.OperatorToken, a.ReadToken)
		s.operatorToken, s.readToken = a.OperatorToken, a.ReadToken
		s.acl.SetJoinToken(a.JoinToken)
		s.joinToken = a.JoinToken
	}
	return s, nil
}

// tokenReload is what a reload does to one token.
type tokenReload struct {
	name    string // "operator", "read"
	key     string // the setting, for the log
	changed bool
	// source says where the new value came from: "file PATH",
	// "environment variable NAME", "config file" or "not set".
	source string
	// fixedBy names the environment variable that fixes the token for the
	// life of the process, "" if none.
	fixedBy string
}

// tokenReloads compares the tokens of a fresh acl block with those in use.
func (s *security) tokenReloads(a *config.ACLConfig) []tokenReload {
	source := func(value, file, env string) string {
		switch {
		case value == "":
			return "not set"
		case file != "":
			return "file " + file
		case env != "":
			return "environment variable " + env
		}
		return "config file"
	}
	return []tokenReload{
		{name: "operator", key: "acl.operator_token", changed: a.OperatorToken != s.operatorToken,
			source: source(a.OperatorToken, a.OperatorTokenFile, a.OperatorTokenEnv), fixedBy: a.OperatorTokenEnv},
		{name: "read", key: "acl.read_token", changed: a.ReadToken != s.readToken,
			source: source(a.ReadToken, a.ReadTokenFile, a.ReadTokenEnv), fixedBy: a.ReadTokenEnv},
		{name: "join", key: "acl.join_token", changed: a.JoinToken != s.joinToken,
			source: source(a.JoinToken, a.JoinTokenFile, a.JoinTokenEnv), fixedBy: a.JoinTokenEnv},
	}
}

// reload applies the tls and acl blocks of a freshly loaded configuration:
// new certificates from the next handshake on, new tokens from the next
// request on (an old token is then refused on this node, and by this
// node as leader when a follower forwards it). Turning TLS or the ACL on or
// off needs a restart; so does every other setting. A reload that fails
// changes nothing; one that succeeds logs which token it changed, and
// warns of each token the environment fixes, which no reload can change.
func (s *security) reload(fresh *config.Config, logger hclog.Logger) error {
	if (fresh.TLS != nil) != (s.tls != nil) || (fresh.ACL != nil) != (s.acl != nil) {
		return fmt.Errorf("adding or removing the tls or acl block needs a restart; nothing was reloaded")
	}
	var tokens []tokenReload
	if a := fresh.ACL; a != nil {
		tokens = s.tokenReloads(a)
		if tokens[0].changed && s.tls == nil {
			// Without certificates the peers prove themselves to each
			// other with the operator token the node started with
			// (cluster.Config.OperatorToken): a node that changed it
			// would refuse its peers, and they it.
			return fmt.Errorf("acl: the operator token in %s changed, but without a tls block the peers authenticate to each other with the operator token they started with: changing it needs a restart of every node (or a tls block); nothing was reloaded", tokens[0].source)
		}
	}
	if t := fresh.TLS; t != nil {
		// The tls.Configs in use look the material up at each handshake.
		files := tlsutil.Files{CA: t.CAFile, Cert: t.CertFile, Key: t.KeyFile}
		if err := s.tls.Use(files); err != nil {
			return fmt.Errorf("tls: %w; nothing was reloaded", err)
		}
		logger.Info("reloaded the TLS certificates", "cert_file", files.Cert, "not_after", s.tls.NotAfter())
	}
	a := fresh.ACL
	if a == nil {
		return nil
	}
	for _, w := range a.Warnings {
		logger.Warn(w)
	}
	s.acl.Set(a.OperatorToken, a.ReadToken)
	s.operatorToken, s.readToken = a.OperatorToken, a.ReadToken
	s.acl.SetJoinToken(a.JoinToken)
	s.joinToken = a.JoinToken
	var changed []string
	for _, t := range tokens {
		switch {
		case t.changed:
			changed = append(changed, t.name)
			logger.Info(fmt.Sprintf("changed the %s token: the one before is refused from now on", t.name), "token", t.key, "source", t.source)
		case t.fixedBy != "":
			logger.Warn(fmt.Sprintf("the %s token comes from the environment variable %s, which a running agent cannot see change: it stays what it was when the agent started; restart the agent to change it, or keep the token in %s_file, which SIGHUP reads again", t.name, t.fixedBy, t.key),
				"token", t.key, "variable", t.fixedBy)
		}
	}
	if len(changed) == 0 {
		logger.Info("no token changed", "operator_token", tokens[0].source, "read_token", tokens[1].source)
	}
	return nil
}

// reloadOnHangup runs reload at every SIGHUP until ctx ends, logging what
// went wrong; a failed reload keeps everything as it was. The returned
// function stops listening.
func reloadOnHangup(ctx context.Context, logger hclog.Logger, reload func() error) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-quit:
				return
			case <-hup:
				logger.Info("SIGHUP: reloading the certificates, the tokens and the log level")
				if err := reload(); err != nil {
					logger.Error("reload failed; still running with what was loaded before", "error", err)
					continue
				}
				logger.Info("reload done")
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		close(quit)
		<-done
	}
}

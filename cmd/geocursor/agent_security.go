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
	tls           *tlsutil.Node // nil without a tls block
	acl           *cluster.ACL  // nil without an acl block
	operatorToken string
}

// loadSecurity loads what cfg's tls and acl blocks name.
func loadSecurity(cfg *config.Config) (*security, error) {
	s := &security{}
	if t := cfg.TLS; t != nil {
		n, err := tlsutil.LoadNode(tlsutil.Files{CA: t.CAFile, Cert: t.CertFile, Key: t.KeyFile}, cfg.NodeID)
		if err != nil {
			return nil, fmt.Errorf("tls: %w", err)
		}
		s.tls = n
	}
	if a := cfg.ACL; a != nil {
		s.acl = cluster.NewACL(a.OperatorToken, a.ReadToken)
		s.operatorToken = a.OperatorToken
	}
	return s, nil
}

// reload applies the tls and acl blocks of a freshly loaded configuration:
// new certificates from the next handshake on, new tokens from the next
// request on. Turning TLS or the ACL on or off needs a restart; so does
// every other setting.
func (s *security) reload(fresh *config.Config, logger hclog.Logger) error {
	if (fresh.TLS != nil) != (s.tls != nil) || (fresh.ACL != nil) != (s.acl != nil) {
		return fmt.Errorf("adding or removing the tls or acl block needs a restart; nothing was reloaded")
	}
	if t := fresh.TLS; t != nil {
		// The tls.Configs in use look the material up at each handshake.
		files := tlsutil.Files{CA: t.CAFile, Cert: t.CertFile, Key: t.KeyFile}
		if err := s.tls.Use(files); err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		logger.Info("reloaded the TLS certificates", "cert_file", files.Cert, "not_after", s.tls.NotAfter())
	}
	if a := fresh.ACL; a != nil {
		s.acl.Set(a.OperatorToken, a.ReadToken)
		logger.Info("reloaded the tokens")
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

package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"

	"github.com/geocursor/geocursor/config"
	"github.com/geocursor/geocursor/tlsutil"
)

const (
	tokenA = "token-a-0123456789abcdef"
	tokenB = "token-b-0123456789abcdef"
	tokenC = "token-c-0123456789abcdef"
)

// reloadFixture is a node's config whose acl block is acl, with a tls
// block unless plain, and the token files it may name in dir.
type reloadFixture struct {
	t    *testing.T
	dir  string
	path string
	env  []string
}

func newReloadFixture(t *testing.T, acl string, plain bool, env ...string) *reloadFixture {
	t.Helper()
	f := &reloadFixture{t: t, dir: t.TempDir(), env: env}
	tlsBlock := ""
	if !plain {
		tlsDir := filepath.Join(f.dir, "tls")
		if _, _, err := tlsutil.CreateCA(tlsDir, 1); err != nil {
			t.Fatal(err)
		}
		if _, _, err := tlsutil.CreateCert(tlsDir, tlsutil.CertRequest{Node: "node1", Days: 1}); err != nil {
			t.Fatal(err)
		}
		ca, _ := tlsutil.CAFiles(tlsDir)
		cert, key := tlsutil.NodeFiles(tlsDir, "node1")
		tlsBlock = fmt.Sprintf("tls {\n  ca_file = %q\n  cert_file = %q\n  key_file = %q\n}\n", ca, cert, key)
	}
	acl = strings.ReplaceAll(acl, "{dir}", f.dir)
	f.path = filepath.Join(f.dir, "agent.hcl")
	if err := os.WriteFile(f.path, []byte("node_id = \"node1\"\n"+tlsBlock+"acl {\n"+acl+"\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *reloadFixture) writeToken(name, token string) {
	f.t.Helper()
	if err := os.WriteFile(filepath.Join(f.dir, name), []byte(token+"\n"), 0o600); err != nil {
		f.t.Fatal(err)
	}
}

func (f *reloadFixture) load() *config.Config {
	f.t.Helper()
	cfg, err := config.Load(f.path, f.env, config.Overrides{})
	if err != nil {
		f.t.Fatal(err)
	}
	return cfg
}

func testLogger() (hclog.Logger, *bytes.Buffer) {
	var buf bytes.Buffer
	return hclog.New(&hclog.LoggerOptions{Output: &buf, Level: hclog.Info}), &buf
}

func TestReloadSaysWhichTokenChanged(t *testing.T) {
	f := newReloadFixture(t, "  operator_token_file = \"{dir}/op\"\n  read_token_file = \"{dir}/rd\"", false)
	f.writeToken("op", tokenA)
	f.writeToken("rd", tokenB)
	logger, logs := testLogger()
	sec, err := loadSecurity(f.load(), logger)
	if err != nil {
		t.Fatal(err)
	}

	// Nothing edited: the reload says so, and changes nothing.
	if err := sec.reload(f.load(), logger); err != nil {
		t.Fatal(err)
	}
	if out := logs.String(); !strings.Contains(out, "no token changed") || strings.Contains(out, "changed the") {
		t.Errorf("a reload with the same files logged:\n%s", out)
	}

	// The operator token rotated: only it is said to change.
	logs.Reset()
	f.writeToken("op", tokenC)
	if err := sec.reload(f.load(), logger); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	if !strings.Contains(out, "changed the operator token") || strings.Contains(out, "changed the read token") || strings.Contains(out, "no token changed") {
		t.Errorf("rotating the operator token logged:\n%s", out)
	}
	if !strings.Contains(out, "file "+filepath.Join(f.dir, "op")) {
		t.Errorf("the log does not name the file the token came from:\n%s", out)
	}
	if sec.operatorToken != tokenC || sec.readToken != tokenB {
		t.Errorf("tokens after the reload: %q, %q", sec.operatorToken, sec.readToken)
	}
	for _, tok := range []string{tokenA, tokenB, tokenC} {
		if strings.Contains(out, tok) {
			t.Errorf("the log shows a token:\n%s", out)
		}
	}
}

func TestReloadWarnsOfTokensTheEnvironmentFixes(t *testing.T) {
	f := newReloadFixture(t, "  operator_token = env.GEOCURSOR_OPERATOR_TOKEN\n  read_token_file = \"{dir}/rd\"", false,
		"GEOCURSOR_OPERATOR_TOKEN="+tokenA, "GEOCURSOR_READ_TOKEN=")
	f.writeToken("rd", tokenB)
	logger, logs := testLogger()
	sec, err := loadSecurity(f.load(), logger)
	if err != nil {
		t.Fatal(err)
	}
	f.writeToken("rd", tokenC)
	if err := sec.reload(f.load(), logger); err != nil {
		t.Fatal(err)
	}
	out := logs.String()
	for _, want := range []string{
		"[WARN]  the operator token comes from the environment variable GEOCURSOR_OPERATOR_TOKEN",
		"restart the agent to change it, or keep the token in acl.operator_token_file",
		"changed the read token",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the reload's log does not say %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "changed the operator token") {
		t.Errorf("the reload claims to have changed the operator token:\n%s", out)
	}
}

// Without TLS the peers authenticate with the operator token they started
// with, so a reload cannot change it: it fails and keeps every token.
func TestReloadWithoutTLSKeepsTheOperatorToken(t *testing.T) {
	f := newReloadFixture(t, "  operator_token_file = \"{dir}/op\"\n  read_token_file = \"{dir}/rd\"", true)
	f.writeToken("op", tokenA)
	f.writeToken("rd", tokenB)
	logger, _ := testLogger()
	sec, err := loadSecurity(f.load(), logger)
	if err != nil {
		t.Fatal(err)
	}
	f.writeToken("op", tokenC)
	f.writeToken("rd", tokenC+"x")
	err = sec.reload(f.load(), logger)
	if err == nil || !strings.Contains(err.Error(), "without a tls block") || !strings.Contains(err.Error(), "nothing was reloaded") {
		t.Errorf("reload: %v", err)
	}
	if sec.operatorToken != tokenA || sec.readToken != tokenB {
		t.Errorf("a failed reload changed the tokens to %q, %q", sec.operatorToken, sec.readToken)
	}
	// The read token alone may change.
	f.writeToken("op", tokenA)
	if err := sec.reload(f.load(), logger); err != nil {
		t.Fatal(err)
	}
	if sec.readToken != tokenC+"x" {
		t.Errorf("read token %q after the reload", sec.readToken)
	}
}

func TestStartLogsTheTokenFilesWarnings(t *testing.T) {
	f := newReloadFixture(t, "  operator_token_file = \"{dir}/op\"", false)
	f.writeToken("op", tokenA)
	if err := os.Chmod(filepath.Join(f.dir, "op"), 0o644); err != nil {
		t.Fatal(err)
	}
	logger, logs := testLogger()
	if _, err := loadSecurity(f.load(), logger); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "(mode 0644): set mode 0600") {
		t.Errorf("the start does not warn of a token file others can read:\n%s", logs)
	}
}

package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/geocursor/geocursor/config"
)

func TestJoinTokenFromFileFileAndEnvironment(t *testing.T) {
	const op, join = "operator-0123456789", "join-0123456789abc"
	cfg := mustLoad(t, "node_id = \"n1\"\nacl {\n  operator_token = \""+op+"\"\n  join_token = \""+join+"\"\n}\n", nil, config.Overrides{})
	if cfg.ACL.JoinToken != join {
		t.Errorf("join token = %q, want %q", cfg.ACL.JoinToken, join)
	}

	dir := t.TempDir()
	p := filepath.Join(dir, "join")
	if err := os.WriteFile(p, []byte(join+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg = mustLoad(t, "node_id = \"n1\"\nacl {\n  operator_token = \""+op+"\"\n  join_token_file = \""+p+"\"\n}\n", nil, config.Overrides{})
	if cfg.ACL.JoinToken != join || cfg.ACL.JoinTokenFile != p {
		t.Errorf("acl = join %q file %q, want the file's token", cfg.ACL.JoinToken, cfg.ACL.JoinTokenFile)
	}

	cfg = mustLoad(t, "node_id = \"n1\"\nacl {\n  operator_token = \""+op+"\"\n}\n", []string{config.EnvJoinToken + "=" + join}, config.Overrides{})
	if cfg.ACL.JoinToken != join || cfg.ACL.JoinTokenEnv != config.EnvJoinToken {
		t.Errorf("acl = join %q env %q, want the environment's", cfg.ACL.JoinToken, cfg.ACL.JoinTokenEnv)
	}
}

func TestJoinTokenRefusedShortOrShared(t *testing.T) {
	const op, rd = "operator-0123456789", "read-0123456789abcd"
	tests := []struct{ name, acl, msg string }{
		{"short", `join_token = "short"`, "acl.join_token is 5 characters long: use at least 16"},
		{"the operator token", `join_token = "` + op + `"`, "acl.join_token is the same as another token"},
		{"the read token", `join_token = "` + rd + `"`, "acl.join_token is the same as another token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "node_id = \"n1\"\nacl {\n  operator_token = \"" + op + "\"\n  read_token = \"" + rd + "\"\n  " + tt.acl + "\n}\n"
			_, err := load(t, src, nil, config.Overrides{})
			if err == nil || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Load: %v, want an error with %q", err, tt.msg)
			}
		})
	}
}

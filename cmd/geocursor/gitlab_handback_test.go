package main

import (
	"strings"
	"testing"
)

// What `gitlab handback` refuses before it touches a database: a usage or
// configuration error, exit status 2, one line that says what to fix.
func TestGitLabHandbackUsageErrors(t *testing.T) {
	const base = "node_id = \"n1\"\ndata_dir = \"d\"\nsource {\n  dsn = \"postgres://u@127.0.0.1:1/s\"\n}\n"
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{name: "no verb", args: []string{"gitlab"}, want: "geocursor gitlab handback -config FILE"},
		{name: "unknown verb", args: []string{"gitlab", "takeover"}, want: "geocursor gitlab handback -config FILE"},
		{name: "no config", args: []string{"gitlab", "handback"}, want: "-config FILE is required"},
		{name: "no gitlab block", args: []string{"gitlab", "handback", "-config",
			writeConfig(t, base+"tracking {\n  dsn = \"postgres://u@127.0.0.1:1/t\"\n}\n")}, want: "has no gitlab block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("GEOCURSOR_TRACKING_DSN", "")
			code, _, stderr := runCmd(t, tc.args...)
			if code != 2 || !strings.Contains(lastLine(stderr), tc.want) {
				t.Errorf("exit %d, %q; want 2 and %q", code, lastLine(stderr), tc.want)
			}
		})
	}
}

// A shared-state Redis that does not answer is a runtime failure (exit
// status 1) that names it, and nothing was handed back.
func TestGitLabHandbackWithoutRedisFails(t *testing.T) {
	cfg := writeConfig(t, "node_id = \"n1\"\ndata_dir = \"d\"\nsource {\n  dsn = \"postgres://u@127.0.0.1:1/s\"\n}\n"+
		"tracking {\n  dsn = \"postgres://u@127.0.0.1:1/t\"\n}\n"+
		"gitlab {\n  site_name = \"s\"\n  shared_state_redis_url = \"redis://127.0.0.1:1\"\n}\n")
	code, _, stderr := runCmd(t, "gitlab", "handback", "-config", cfg)
	if code != 1 || !strings.Contains(lastLine(stderr), "shared-state Redis 127.0.0.1:1") {
		t.Errorf("exit %d, %q; want 1, naming the shared-state Redis", code, lastLine(stderr))
	}
}

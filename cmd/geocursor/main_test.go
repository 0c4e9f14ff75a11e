package main

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/geocursor/geocursor/internal/testsupport"
)

// syncBuffer is a bytes.Buffer that the agent's goroutines may write to
// while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runCmd runs the CLI in process, as main does, and returns the exit status
// and what it printed.
func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut syncBuffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// lastLine is the final line of s: the one-line message that run prints.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.hcl")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBadConfig(t *testing.T) {
	tests := []struct {
		name   string
		config string
		// where is the LINE,COL the message must point at ("" for no
		// position), want a fragment of the message.
		where, want string
	}{
		{
			name:   "unknown key",
			config: "node_id = \"n1\"\nbogus   = 1\n",
			where:  "2,1", want: "bogus",
		},
		{
			name:   "unknown key in a block",
			config: "node_id = \"n1\"\nlease {\n  ttl = \"5s\"\n  tll = \"5s\"\n}\n",
			where:  "4,3", want: "tll",
		},
		{
			name:   "bad duration",
			config: "node_id      = \"n1\"\njoin_timeout = \"5 parsecs\"\n",
			where:  "2,16", want: `"5 parsecs" is not a duration`,
		},
		{
			name:   "wrong type",
			config: "node_id = \"n1\"\njoin    = \"127.0.0.1:8470\"\n",
			where:  "2,11", want: "join must be list of string",
		},
		{
			name:   "syntax error",
			config: "node_id = \"n1\"\nlease {\n  ttl = \n}\n",
			where:  "3,",
		},
		{
			name:   "missing node_id",
			config: "log_level = \"info\"\n",
			want:   "node_id is not set",
		},
		{
			name:   "invalid value",
			config: "node_id   = \"n1\"\nlog_level = \"loud\"\n",
			where:  "2,13", want: `log_level "loud" is not one of`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.config)
			code, _, stderr := runCmd(t, "agent", "-config", path)
			if code != 2 {
				t.Fatalf("exit status %d, want 2; stderr:\n%s", code, stderr)
			}
			msg := lastLine(stderr)
			if !strings.HasPrefix(msg, "geocursor: ") {
				t.Errorf("stderr does not end with a one-line error: %q", msg)
			}
			if tt.where != "" {
				re := regexp.MustCompile(regexp.QuoteMeta(path+":"+tt.where) + `\d*: `)
				if !re.MatchString(msg) {
					t.Errorf("message does not point at %s:%s: %q", path, tt.where, msg)
				}
			}
			if !strings.Contains(msg, tt.want) {
				t.Errorf("message does not say %q: %q", tt.want, msg)
			}
		})
	}
}

func TestBadFlagsExitWithUsageStatus(t *testing.T) {
	config := writeConfig(t, "node_id = \"n1\"\n")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown agent flag", []string{"agent", "-config", config, "-bogus"}, "-bogus"},
		{"missing -config", []string{"agent"}, "-config FILE is required"},
		{"stray argument", []string{"agent", "-config", config, "extra"}, `unexpected argument "extra"`},
		{"bad -http-addr", []string{"agent", "-config", config, "-http-addr", "nohost"}, "flag -http-addr"},
		{"bad status format", []string{"cluster", "status", "-format", "xml"}, `-format "xml"`},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"no command", nil, "no command given"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := runCmd(t, tt.args...)
			if code != 2 {
				t.Fatalf("exit status %d, want 2; stderr:\n%s", code, stderr)
			}
			if msg := lastLine(stderr); !strings.HasPrefix(msg, "geocursor: ") || !strings.Contains(msg, tt.want) {
				t.Errorf("last line of stderr %q does not say %q", msg, tt.want)
			}
		})
	}
}

func TestJoinWithNobodyListeningFailsAfterJoinTimeout(t *testing.T) {
	dead := testsupport.FreeAddr(t) // nothing listens there
	dir := t.TempDir()
	config := writeConfig(t, `node_id      = "n1"
data_dir     = "`+filepath.Join(dir, "data")+`"
http_addr    = "`+testsupport.FreeAddr(t)+`"
raft_addr    = "`+testsupport.FreeAddr(t)+`"
join_timeout = "2s"
`)
	start := time.Now()
	code, _, stderr := runCmd(t, "agent", "-config", config, "-join", dead)
	took := time.Since(start)
	if code != 1 {
		t.Fatalf("exit status %d, want 1; stderr:\n%s", code, stderr)
	}
	if took < 2*time.Second || took > 10*time.Second {
		t.Errorf("gave up after %s, want join_timeout (2s) and well under 10s", took.Round(time.Millisecond))
	}
	msg := lastLine(stderr)
	if !strings.HasPrefix(msg, "geocursor: ") || !strings.Contains(msg, dead) || !strings.Contains(msg, "join_timeout") {
		t.Errorf("last line of stderr %q does not name %s and join_timeout", msg, dead)
	}
}

func TestVersion(t *testing.T) {
	code, stdout, _ := runCmd(t, "version")
	if code != 0 || !strings.HasPrefix(stdout, "geocursor ") || !strings.Contains(stdout, "(protocol 1, ") {
		t.Errorf("version: status %d, output %q", code, stdout)
	}
}

func TestReachableAddressWithoutTLSRefusesToStart(t *testing.T) {
	config := writeConfig(t, "node_id   = \"n1\"\nhttp_addr = \"192.0.2.10:8470\"\nraft_addr = \"192.0.2.10:8471\"\n")
	code, _, stderr := runCmd(t, "agent", "-config", config)
	if code != 2 {
		t.Fatalf("exit status %d, want 2; stderr:\n%s", code, stderr)
	}
	msg := lastLine(stderr)
	for _, want := range []string{"192.0.2.10:8470", "not a loopback address", "add tls and acl blocks", "insecure = true"} {
		if !strings.Contains(msg, want) {
			t.Errorf("last line of stderr %q does not say %q", msg, want)
		}
	}
}

func TestTLSCommandsWriteACAAndCertificates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	if code, out, stderr := runCmd(t, "tls", "ca", "create", "-dir", dir); code != 0 || !strings.Contains(out, "ca.pem") {
		t.Fatalf("tls ca create: status %d, out %q, err %q", code, out, stderr)
	}
	if code, out, stderr := runCmd(t, "tls", "cert", "create", "-dir", dir, "-node", "node1", "-ip", "10.0.0.1"); code != 0 || !strings.Contains(out, "cert_file") {
		t.Fatalf("tls cert create -node: status %d, out %q, err %q", code, out, stderr)
	}
	if code, _, stderr := runCmd(t, "tls", "cert", "create", "-dir", dir, "-client", "ops"); code != 0 {
		t.Fatalf("tls cert create -client: status %d, err %q", code, stderr)
	}
	for _, f := range []string{"ca.pem", "ca-key.pem", "node1.pem", "node1-key.pem", "client-ops.pem", "client-ops-key.pem"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if strings.HasSuffix(f, "-key.pem") && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", f, fi.Mode().Perm())
		}
	}
	for _, args := range [][]string{
		{"tls", "cert", "create", "-dir", dir},
		{"tls", "cert", "create", "-dir", dir, "-node", "a", "-client", "b"},
		{"tls", "cert", "create", "-dir", dir, "-node", "n2", "-ip", "not-an-ip"},
		{"tls", "ca", "destroy"},
	} {
		if code, _, stderr := runCmd(t, args...); code != 2 {
			t.Errorf("%v: status %d, want 2 (stderr %q)", args, code, stderr)
		}
	}
	if code, _, stderr := runCmd(t, "tls", "cert", "create", "-dir", dir, "-node", "node1"); code != 1 || !strings.Contains(stderr, "exists already") {
		t.Errorf("creating node1's certificate twice: status %d, stderr %q", code, stderr)
	}
}

func TestStatusTableQuotesWhatATerminalShouldNotSee(t *testing.T) {
	if got := safe("node1"); got != "node1" {
		t.Errorf("safe(node1) = %q", got)
	}
	if got := safe("\x1b[31mred"); got != `"\x1b[31mred"` {
		t.Errorf("safe of an escape sequence = %q", got)
	}
}

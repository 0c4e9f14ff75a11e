package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/geocursor/geocursor/config"
)

// fuzzEnvNames are the variables that FuzzLoad's env value is given to, one
// per input, so the fuzzer drives the environment overrides as well as the
// env.NAME expressions of the file.
var fuzzEnvNames = []string{
	config.EnvNodeID, config.EnvDataDir, config.EnvHTTPAddr, config.EnvRaftAddr,
	config.EnvJoin, config.EnvLogLevel, config.EnvSourceDSN, config.EnvTrackingDSN,
	config.EnvOperatorToken, config.EnvReadToken,
	"FUZZ",
}

// FuzzLoad feeds arbitrary bytes to Load as a config file, with a fuzzed
// environment value. Load must not panic; it either returns a config that
// keeps the invariants the agent relies on, or a *config.Error of one line
// (the CLI prints it as the one-line message of exit status 2).
func FuzzLoad(f *testing.F) {
	example, err := os.ReadFile(filepath.Join("..", "config.hcl"))
	if err != nil {
		f.Fatal(err)
	}
	seeds := []struct {
		src     string
		envName uint8
		envVal  string
	}{
		{string(example), 0, ""},
		{string(example), 1, "data/x"},
		{`node_id = "n1"`, 8, ""},
		{"node_id = env.FUZZ\n", 8, "node-7"},
		{"node_id = env.FUZZ\n", 8, "bad id\nwith a newline"},
		{"node_id = \"n1\"\nhttp_addr = env.FUZZ\n", 8, "a\nb:1"},
		{"node_id = \"n1\"\nsource {\n  dsn = env.GEOCURSOR_SOURCE_DSN\n  batch_size = 1000\n  poll_interval = \"25ms\"\n  gap_timeout = \"1h\"\n}\ntracking {\n  dsn = env.GEOCURSOR_TRACKING_DSN\n}\n", 6, "postgres://src"},
		{"node_id = \"n1\"\nsource {}\ntracking {}\n", 7, "postgres://trk"},
		{"node_id = \"n1\"\njoin = [\"127.0.0.1:8470\", \"127.0.0.1:8480\"]\n", 4, "127.0.0.1:1,127.0.0.1:2"},
		{"node_id = \"n1\"\nlease {\n  ttl = \"5s\"\n  retry_min = \"2s\"\n  retry_max = \"1s\"\n}\n", 0, ""},
		{"node_id = \"n1\"\nraft {\n  heartbeat_timeout = \"100ms\"\n  election_timeout = \"100ms\"\n  snapshot_threshold = 10\n  snapshot_interval = \"1s\"\n  trailing_logs = 10\n}\n", 0, ""},
		{"node_id = \"n1\"\nraft {\n  snapshot_threshold = 1e30\n  trailing_logs = -1\n}\n", 0, ""},
		{"node_id = \"n1\"\nsource {\n  batch_size = 1.5\n}\n", 0, ""},
		{"node_id = \"n1\"\nlease {\n  ttl = \"5 seconds\"\n}\n", 0, ""},
		{"node_id = \"n1\"\nlease {}\nlease {}\n", 0, ""},
		{"node_id = \"n1\"\nlease \"x\" {}\n", 0, ""},
		{"node_id = \"n1\"\nfoo {}\n", 0, ""},
		{"node_id = \"n1\"\njoin = \"a\"\n", 0, ""},
		{"node_id = \"n1\"\njoin = [null]\n", 0, ""},
		{"node_id = null\n", 0, ""},
		{"node_id = \"${env.FUZZ}-${1/0}\"\n", 8, "x"},
		{"node_id = [for k, v in env : v][0]\n", 8, "n1"},
		{"node_id = \"n1\"\nhttp_addr = \"0.0.0.0:1\"\n", 2, "[::]:8470"},
		{"node_id = \"n1\"\nlease {\n", 0, ""},
		{"node_id = \"n1\"\nx = <<EOT\nabc\n", 0, ""},
		{"node_id = \"\u00e9\"\n", 0, "\xff\xfe"},
		{"node_id = 1e999999\n", 0, ""},
		{"node_id = \"n\"\nsource {\n  batch_size = 1e-999999\n}\n", 0, ""},
		{"\x00\xff{{{", 0, ""},
		{"", 0, "n1"},
	}
	for _, s := range seeds {
		f.Add([]byte(s.src), s.envName, s.envVal)
	}
	f.Fuzz(func(t *testing.T, src []byte, envName uint8, envVal string) {
		path := filepath.Join(t.TempDir(), "config.hcl")
		if err := os.WriteFile(path, src, 0o600); err != nil {
			t.Fatal(err)
		}
		name := fuzzEnvNames[int(envName)%len(fuzzEnvNames)]
		// An '=' in the value is fine (only the first one splits), but a
		// NUL cannot occur in a real environment.
		envVal = strings.ReplaceAll(envVal, "\x00", "")
		environ := []string{name + "=" + envVal, "HOME=/home/geo"}

		start := time.Now()
		cfg, err := config.Load(path, environ, config.Overrides{})
		// A config loads in microseconds; seconds mean some input makes a
		// library do work out of all proportion (1e9999999 used to).
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("Load took %s", d)
		}
		if err != nil {
			if cfg != nil {
				t.Errorf("Load returned both a config and an error: %v", err)
			}
			var cerr *config.Error
			if !errors.As(err, &cerr) {
				t.Fatalf("error is %T, want *config.Error: %v", err, err)
			}
			if s := err.Error(); s == "" || strings.ContainsAny(s, "\r\n") {
				t.Fatalf("error is not one non-empty line: %q", s)
			}
			return
		}
		checkInvariants(t, cfg)
	})
}

// checkInvariants re-validates what the rest of the agent assumes of a
// loaded config.
func checkInvariants(t *testing.T, c *config.Config) {
	t.Helper()
	if c.NodeID == "" || c.DataDir == "" || c.HTTPAddr == "" || c.RaftAddr == "" || c.HTTPAddr == c.RaftAddr {
		t.Errorf("invalid identity or addresses: %+v", c)
	}
	if strings.ContainsAny(c.NodeID, " \t\r\n/") {
		t.Errorf("node_id %q has characters that must have been refused", c.NodeID)
	}
	for name, d := range map[string]int64{
		"join_timeout": int64(c.JoinTimeout), "lease.ttl": int64(c.Lease.TTL), "lease.retry_max": int64(c.Lease.RetryMax),
		"raft.heartbeat_timeout": int64(c.Raft.HeartbeatTimeout), "raft.election_timeout": int64(c.Raft.ElectionTimeout),
		"raft.snapshot_interval": int64(c.Raft.SnapshotInterval),
	} {
		if d <= 0 {
			t.Errorf("%s = %d, want positive", name, d)
		}
	}
	if c.Lease.RetryMin < 0 || c.Lease.RetryMin > c.Lease.RetryMax {
		t.Errorf("lease.retry_min %s outside 0..retry_max %s", c.Lease.RetryMin, c.Lease.RetryMax)
	}
	if c.Raft.SnapshotThreshold == 0 {
		t.Error("raft.snapshot_threshold is 0")
	}
	switch c.LogLevel {
	case "trace", "debug", "info", "warn", "error":
	default:
		t.Errorf("log_level %q", c.LogLevel)
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		t.Errorf("log_format %q", c.LogFormat)
	}
	if (c.Source == nil) != (c.Tracking == nil) {
		t.Errorf("source %+v and tracking %+v must come together", c.Source, c.Tracking)
	}
	if c.Source != nil {
		if c.Source.DSN == "" || c.Tracking.DSN == "" {
			t.Errorf("empty DSN: source %q, tracking %q", c.Source.DSN, c.Tracking.DSN)
		}
		if c.Source.BatchSize < 1 || c.Source.PollInterval <= 0 || c.Source.GapTimeout <= 0 {
			t.Errorf("invalid source settings: %+v", c.Source)
		}
	}
}

package config_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/geocursor/geocursor/config"
)

// mark is written into a test's HCL where the error must point; writeConfig
// removes it and reports its line and column.
const mark = "@@"

// writeConfig writes src (without its mark) to a temporary config.hcl and
// returns the path and, if src has a mark, the "PATH:LINE,COL" it stands at.
func writeConfig(t *testing.T, src string) (path, at string) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "config.hcl")
	if i := strings.Index(src, mark); i >= 0 {
		before := src[:i]
		line := strings.Count(before, "\n") + 1
		col := i - strings.LastIndex(before, "\n") // bytes; the tests use ASCII only
		at = fmt.Sprintf("%s:%d,%d", path, line, col)
		src = before + src[i+len(mark):]
	}
	if strings.Contains(src, mark) {
		t.Fatalf("test HCL has more than one %s mark", mark)
	}
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, at
}

func load(t *testing.T, src string, env []string, flags config.Overrides) (*config.Config, error) {
	t.Helper()
	path, _ := writeConfig(t, src)
	return config.Load(path, env, flags)
}

func mustLoad(t *testing.T, src string, env []string, flags config.Overrides) *config.Config {
	t.Helper()
	cfg, err := load(t, src, env, flags)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return cfg
}

func ptr[T any](v T) *T { return &v }

func defaultRaft() config.RaftConfig {
	return config.RaftConfig{
		HeartbeatTimeout:  config.DefaultHeartbeatTimeout,
		ElectionTimeout:   config.DefaultElectionTimeout,
		SnapshotThreshold: config.DefaultSnapshotThreshold,
		SnapshotInterval:  config.DefaultSnapshotInterval,
		TrailingLogs:      config.DefaultTrailingLogs,
	}
}

func TestExampleConfigLoadsAsNode1(t *testing.T) {
	// The DSNs being set must not turn the example's witness into a
	// processing node: its source and tracking blocks are commented out.
	env := []string{"GEOCURSOR_SOURCE_DSN=postgres://src", "GEOCURSOR_TRACKING_DSN=postgres://trk"}
	cfg, err := config.Load(filepath.Join("..", "config.hcl"), env, config.Overrides{})
	if err != nil {
		t.Fatalf("the example config.hcl does not load: %v", err)
	}
	want := &config.Config{
		NodeID:      "node1",
		DataDir:     "data/node1",
		HTTPAddr:    "127.0.0.1:8470",
		RaftAddr:    "127.0.0.1:8471",
		Join:        []string{},
		JoinTimeout: 60 * time.Second,
		LogLevel:    "info",
		LogFormat:   "json",
		Lease:       config.LeaseConfig{TTL: 5 * time.Second, RetryMin: 100 * time.Millisecond, RetryMax: 300 * time.Millisecond, PreferFollower: true},
		Raft:        defaultRaft(),
	}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("example config:\n got %+v\nwant %+v", cfg, want)
	}
}

func TestDefaultsWhenKeysAreAbsent(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want config.Config
	}{
		{
			name: "only node_id",
			src:  `node_id = "n1"`,
			want: config.Config{
				NodeID: "n1", DataDir: "data/n1",
				HTTPAddr: config.DefaultHTTPAddr, RaftAddr: config.DefaultRaftAddr,
				JoinTimeout: config.DefaultJoinTimeout, LogLevel: config.DefaultLogLevel, LogFormat: config.DefaultLogFormat,
				Lease: config.LeaseConfig{TTL: config.DefaultLeaseTTL, RetryMin: config.DefaultRetryMin, RetryMax: config.DefaultRetryMax, PreferFollower: true},
				Raft:  defaultRaft(),
			},
		},
		{
			name: "empty blocks keep their defaults",
			src: `
node_id = "n1"
lease {}
raft {}
source {
  dsn = "postgres://src"
}
tracking {
  dsn = "postgres://trk"
}
`,
			want: config.Config{
				NodeID: "n1", DataDir: "data/n1",
				HTTPAddr: config.DefaultHTTPAddr, RaftAddr: config.DefaultRaftAddr,
				JoinTimeout: config.DefaultJoinTimeout, LogLevel: config.DefaultLogLevel, LogFormat: config.DefaultLogFormat,
				Lease: config.LeaseConfig{TTL: config.DefaultLeaseTTL, RetryMin: config.DefaultRetryMin, RetryMax: config.DefaultRetryMax, PreferFollower: true},
				Raft:  defaultRaft(),
				Source: &config.SourceConfig{
					DSN: "postgres://src", BatchSize: config.DefaultBatchSize,
					PollInterval: config.DefaultPollInterval, GapTimeout: config.DefaultGapTimeout,
					Start: config.StartHead,
				},
				Tracking: &config.TrackingConfig{DSN: "postgres://trk"},
			},
		},
		{
			name: "every key set",
			src: `
node_id      = "n2"
data_dir     = "/var/lib/geocursor"
http_addr    = "10.0.0.2:9470"
raft_addr    = "10.0.0.2:9471"
join         = ["10.0.0.1:8470", "10.0.0.3:8470"]
join_timeout = "2m"
log_level    = "debug"
log_format   = "text"
insecure     = true
acl {
  operator_token = "0123456789abcdef-operator"
  read_token     = "0123456789abcdef-reader"
}
lease {
  ttl       = "10s"
  retry_min = "0s"
  retry_max = "2s"
  prefer_follower = false
}
raft {
  heartbeat_timeout  = "1s"
  election_timeout   = "2s"
  snapshot_threshold = 100
  snapshot_interval  = "1m"
  trailing_logs      = 50
}
source {
  dsn           = "postgres://src"
  batch_size    = 500
  poll_interval = "1s"
  gap_timeout   = "30m"
  start         = "oldest"
}
delivery {
  rate_limit = 500
  sidekiq {
    redis_url = "redis://sidekiq:6379/0"
    queue     = "geo"
    namespace = "resque:gitlab"
  }
  cache {
    redis_url = "rediss://cache:6380/1"
  }
}
tracking {
  dsn = "postgres://trk"
}
`,
			want: config.Config{
				NodeID: "n2", DataDir: "/var/lib/geocursor",
				HTTPAddr: "10.0.0.2:9470", RaftAddr: "10.0.0.2:9471",
				Join:        []string{"10.0.0.1:8470", "10.0.0.3:8470"},
				JoinTimeout: 2 * time.Minute, LogLevel: "debug", LogFormat: "text",
				Lease: config.LeaseConfig{TTL: 10 * time.Second, RetryMin: 0, RetryMax: 2 * time.Second, PreferFollower: false},
				Raft: config.RaftConfig{
					HeartbeatTimeout: time.Second, ElectionTimeout: 2 * time.Second,
					SnapshotThreshold: 100, SnapshotInterval: time.Minute, TrailingLogs: 50,
				},
				Source: &config.SourceConfig{DSN: "postgres://src", BatchSize: 500, PollInterval: time.Second, GapTimeout: 30 * time.Minute, Start: config.StartOldest},
				Delivery: &config.DeliveryConfig{
					Sidekiq:   &config.SidekiqConfig{RedisURL: "redis://sidekiq:6379/0", Queue: "geo", Namespace: "resque:gitlab"},
					Cache:     &config.CacheConfig{RedisURL: "rediss://cache:6380/1", Namespace: "cache:gitlab"},
					RateLimit: 500,
				},
				Tracking: &config.TrackingConfig{DSN: "postgres://trk"},
				ACL:      &config.ACLConfig{OperatorToken: "0123456789abcdef-operator", ReadToken: "0123456789abcdef-reader"},
				Insecure: true,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustLoad(t, tt.src, nil, config.Overrides{})
			if !reflect.DeepEqual(*cfg, tt.want) {
				t.Errorf("\n got %+v\nwant %+v", *cfg, tt.want)
			}
		})
	}
}

func TestEnvExpressionsInTheFile(t *testing.T) {
	src := `
node_id = env.MY_NODE
data_dir = "${env.MY_BASE}/${env.MY_NODE}"
source {
  dsn = env.MY_SOURCE
}
tracking {
  dsn = env.GEOCURSOR_TRACKING_DSN
}
`
	env := []string{
		"MY_NODE=n7", "MY_BASE=/srv", "MY_SOURCE=postgres://replica/gitlab",
		"GEOCURSOR_TRACKING_DSN=postgres://localhost/tracking",
		"UNRELATED=x=y", // a value may hold '='
	}
	cfg := mustLoad(t, src, env, config.Overrides{})
	if cfg.NodeID != "n7" || cfg.DataDir != "/srv/n7" {
		t.Errorf("node_id, data_dir = %q, %q; want n7, /srv/n7", cfg.NodeID, cfg.DataDir)
	}
	if cfg.Source == nil || cfg.Source.DSN != "postgres://replica/gitlab" {
		t.Errorf("source = %+v; want dsn from MY_SOURCE", cfg.Source)
	}
	if cfg.Tracking == nil || cfg.Tracking.DSN != "postgres://localhost/tracking" {
		t.Errorf("tracking = %+v; want dsn from GEOCURSOR_TRACKING_DSN", cfg.Tracking)
	}
}

// TestPrecedenceFileEnvFlags checks every overridable key: the file's value
// holds alone, the environment beats the file, a flag beats both.
func TestPrecedenceFileEnvFlags(t *testing.T) {
	const file = `
node_id   = "file-node"
data_dir  = "file-dir"
http_addr = "127.0.0.1:1001"
raft_addr = "127.0.0.1:1002"
join      = ["127.0.0.1:1003"]
log_level = "warn"
source {
  dsn = "postgres://file-source"
}
tracking {
  dsn = "postgres://file-tracking"
}
`
	type get func(*config.Config) any
	tests := []struct {
		key      string
		get      get
		env      string // GEOCURSOR_* name
		fileVal  any
		envVal   string
		envWant  any
		flags    config.Overrides // empty: the key has no flag
		flagWant any
	}{
		{
			key: "node_id", get: func(c *config.Config) any { return c.NodeID }, env: "GEOCURSOR_NODE_ID",
			fileVal: "file-node", envVal: "env-node", envWant: "env-node",
			flags: config.Overrides{NodeID: ptr("flag-node")}, flagWant: "flag-node",
		},
		{
			key: "data_dir", get: func(c *config.Config) any { return c.DataDir }, env: "GEOCURSOR_DATA_DIR",
			fileVal: "file-dir", envVal: "env-dir", envWant: "env-dir",
			flags: config.Overrides{DataDir: ptr("flag-dir")}, flagWant: "flag-dir",
		},
		{
			key: "http_addr", get: func(c *config.Config) any { return c.HTTPAddr }, env: "GEOCURSOR_HTTP_ADDR",
			fileVal: "127.0.0.1:1001", envVal: "127.0.0.1:2001", envWant: "127.0.0.1:2001",
			flags: config.Overrides{HTTPAddr: ptr("127.0.0.1:3001")}, flagWant: "127.0.0.1:3001",
		},
		{
			key: "raft_addr", get: func(c *config.Config) any { return c.RaftAddr }, env: "GEOCURSOR_RAFT_ADDR",
			fileVal: "127.0.0.1:1002", envVal: "127.0.0.1:2002", envWant: "127.0.0.1:2002",
			flags: config.Overrides{RaftAddr: ptr("127.0.0.1:3002")}, flagWant: "127.0.0.1:3002",
		},
		{
			key: "join", get: func(c *config.Config) any { return c.Join }, env: "GEOCURSOR_JOIN",
			fileVal: []string{"127.0.0.1:1003"},
			envVal:  " 127.0.0.1:2003, ,127.0.0.1:2004,", envWant: []string{"127.0.0.1:2003", "127.0.0.1:2004"},
			flags: config.Overrides{Join: ptr([]string{"127.0.0.1:3003"})}, flagWant: []string{"127.0.0.1:3003"},
		},
		{
			key: "log_level", get: func(c *config.Config) any { return c.LogLevel }, env: "GEOCURSOR_LOG_LEVEL",
			fileVal: "warn", envVal: "debug", envWant: "debug",
			flags: config.Overrides{LogLevel: ptr("trace")}, flagWant: "trace",
		},
		{
			key: "source.dsn", get: func(c *config.Config) any { return c.Source.DSN }, env: "GEOCURSOR_SOURCE_DSN",
			fileVal: "postgres://file-source", envVal: "postgres://env-source", envWant: "postgres://env-source",
		},
		{
			key: "tracking.dsn", get: func(c *config.Config) any { return c.Tracking.DSN }, env: "GEOCURSOR_TRACKING_DSN",
			fileVal: "postgres://file-tracking", envVal: "postgres://env-tracking", envWant: "postgres://env-tracking",
		},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			check := func(stage string, env []string, flags config.Overrides, want any) {
				t.Helper()
				cfg := mustLoad(t, file, env, flags)
				if got := tt.get(cfg); !reflect.DeepEqual(got, want) {
					t.Errorf("%s: %s = %#v, want %#v", stage, tt.key, got, want)
				}
			}
			check("file only", nil, config.Overrides{}, tt.fileVal)
			check("empty env var is ignored", []string{tt.env + "="}, config.Overrides{}, tt.fileVal)
			env := []string{tt.env + "=" + tt.envVal}
			check("env over file", env, config.Overrides{}, tt.envWant)
			if tt.flagWant != nil {
				check("flag over env", env, tt.flags, tt.flagWant)
				check("flag over file", nil, tt.flags, tt.flagWant)
			}
		})
	}
}

func TestEmptyJoinFlagClearsTheFilesList(t *testing.T) {
	cfg := mustLoad(t, `
node_id = "n1"
join    = ["127.0.0.1:1003"]
`, []string{"GEOCURSOR_JOIN=127.0.0.1:2003"}, config.Overrides{Join: ptr([]string{})})
	if len(cfg.Join) != 0 {
		t.Errorf("join = %q, want empty: an explicit -join \"\" overrides the file and the environment", cfg.Join)
	}
}

func TestDataDirFollowsNodeIDOverride(t *testing.T) {
	// Without data_dir in the file, each node gets data/<node_id>, so nodes
	// sharing a file and differing by -node-id do not share a data_dir.
	cfg := mustLoad(t, `node_id = "node1"`, []string{"GEOCURSOR_NODE_ID=node2"}, config.Overrides{NodeID: ptr("node3")})
	if cfg.DataDir != "data/node3" {
		t.Errorf("data_dir = %q, want data/node3", cfg.DataDir)
	}
}

func TestEmptyDataDirMeansTheDefault(t *testing.T) {
	cfg := mustLoad(t, "node_id = \"n1\"\ndata_dir = \"/srv/x\"\n", nil, config.Overrides{DataDir: ptr("")})
	if cfg.DataDir != "data/n1" {
		t.Errorf("data_dir = %q, want data/n1: an empty data_dir means the default", cfg.DataDir)
	}
}

func TestDSNEnvDoesNotCreateASourceBlock(t *testing.T) {
	env := []string{"GEOCURSOR_SOURCE_DSN=postgres://src", "GEOCURSOR_TRACKING_DSN=postgres://trk"}
	cfg := mustLoad(t, `node_id = "witness1"`, env, config.Overrides{})
	if cfg.Source != nil || cfg.Tracking != nil {
		t.Errorf("source = %+v, tracking = %+v; want both nil: the DSN variables must not turn a witness into a processing node", cfg.Source, cfg.Tracking)
	}
}

func TestDSNEnvFillsBlocksWithoutDSN(t *testing.T) {
	env := []string{"GEOCURSOR_SOURCE_DSN=postgres://src", "GEOCURSOR_TRACKING_DSN=postgres://trk"}
	cfg := mustLoad(t, `
node_id = "n1"
source {}
tracking {}
`, env, config.Overrides{})
	if cfg.Source == nil || cfg.Source.DSN != "postgres://src" || cfg.Tracking == nil || cfg.Tracking.DSN != "postgres://trk" {
		t.Errorf("source = %+v, tracking = %+v; want the DSNs from the environment", cfg.Source, cfg.Tracking)
	}
}

// TestFileErrorsPointAtTheBadValue checks that an error in the file starts
// with FILE:LINE,COL of the offending text, marked @@ in the HCL.
func TestFileErrorsPointAtTheBadValue(t *testing.T) {
	const pair = "\nsource {\n  dsn = \"postgres://src\"\n}\ntracking {\n  dsn = \"postgres://trk\"\n}\n"
	tests := []struct {
		name string
		src  string
		env  []string
		msg  string // a part of the message after the position
	}{
		{
			name: "unknown top-level key",
			src:  "node_id = \"n1\"\n@@nodeid = \"n1\"\n",
			msg:  "Unsupported argument",
		},
		{
			name: "unknown key inside lease",
			src:  "node_id = \"n1\"\nlease {\n  ttl = \"5s\"\n  @@retry = \"1s\"\n}\n",
			msg:  "Unsupported argument",
		},
		{
			name: "unknown key inside source",
			src:  "node_id = \"n1\"\nsource {\n  dsn = \"x\"\n  @@batchsize = 10\n}\ntracking {\n  dsn = \"y\"\n}\n",
			msg:  "Unsupported argument",
		},
		{
			name: "unknown block",
			src:  "node_id = \"n1\"\n@@sources {\n  dsn = \"x\"\n}\n",
			msg:  "Unsupported block type",
		},
		{
			name: "block with a label",
			src:  "node_id = \"n1\"\nlease @@\"main\" {\n}\n",
			msg:  "Extraneous label for lease",
		},
		{
			name: "duplicate block",
			src:  "node_id = \"n1\"\nlease {\n  ttl = \"5s\"\n}\n@@lease {\n  retry_min = \"1s\"\n}\n",
			msg:  "duplicate lease block",
		},
		{
			name: "syntax error: missing value",
			src:  "node_id = \"n1\"\nhttp_addr = @@\nraft_addr = \"127.0.0.1:1\"\n",
			msg:  "Invalid expression",
		},
		{
			name: "syntax error: unclosed block",
			src:  "node_id = \"n1\"\nlease @@{\n  ttl = \"5s\"\n",
			msg:  "Unclosed configuration block",
		},
		{
			name: "duration with words",
			src:  "node_id = \"n1\"\nlease {\n  ttl = @@\"5 seconds\"\n}\n",
			msg:  `lease.ttl: "5 seconds" is not a duration`,
		},
		{
			name: "duration as a number",
			src:  "node_id = \"n1\"\njoin_timeout = @@[60]\n",
			msg:  "join_timeout must be string",
		},
		{
			name: "string where a number belongs",
			src:  "node_id = \"n1\"\nsource {\n  dsn = \"x\"\n  batch_size = @@\"x\"\n}\ntracking {\n  dsn = \"y\"\n}\n",
			msg:  "source.batch_size must be number, got string",
		},
		{
			name: "string where a list belongs",
			src:  "node_id = \"n1\"\njoin = @@\"127.0.0.1:8470\"\n",
			msg:  "join must be list of string, got string",
		},
		{
			name: "null in a list",
			src:  "node_id = \"n1\"\njoin = @@[\"127.0.0.1:8470\", null]\n",
			msg:  "join must not contain null",
		},
		{
			name: "null value",
			src:  "node_id = @@null\n",
			msg:  "node_id must not be null",
		},
		{
			name: "number that is not whole",
			src:  "node_id = \"n1\"\nsource {\n  dsn = \"x\"\n  batch_size = @@1.5\n}\ntracking {\n  dsn = \"y\"\n}\n",
			msg:  "source.batch_size must be a whole number, got 1.5",
		},
		{
			name: "whole number out of range",
			src:  "node_id = \"n1\"\nraft {\n  snapshot_threshold = @@1e30\n}\n",
			msg:  "raft.snapshot_threshold is out of range",
		},
		{
			name: "huge number literal",
			src:  "node_id = \"n1\"\nsource {\n  dsn = \"x\"\n  batch_size = @@1e999999\n}\ntracking {\n  dsn = \"y\"\n}\n",
			msg:  "number is out of range",
		},
		{
			name: "tiny number literal in a string",
			src:  "node_id = \"n-${@@1e-999999}\"\n",
			msg:  "number is out of range",
		},
		{
			name: "negative raft count",
			src:  "node_id = \"n1\"\nraft {\n  trailing_logs = @@-1\n}\n",
			msg:  "raft.trailing_logs must not be negative",
		},
		{
			name: "env reference to an unset variable",
			src:  "node_id = \"n1\"\nsource {\n  dsn = env@@.GEOCURSOR_SOURCE_DSN\n}\ntracking {\n  dsn = \"y\"\n}\n",
			env:  []string{"GEOCURSOR_TRACKING_DSN=x"},
			msg:  `Unsupported attribute`,
		},
		{
			name: "bad node_id",
			src:  "node_id = @@\"node 1!\"\n",
			msg:  `node_id "node 1!" is not valid`,
		},
		{
			name: "node_id too long",
			src:  "node_id = @@\"" + strings.Repeat("n", 64) + "\"\n",
			msg:  "is not valid",
		},
		{
			name: "address without a port",
			src:  "node_id = \"n1\"\nhttp_addr = @@\"localhost\"\n",
			msg:  `http_addr "localhost": not HOST:PORT`,
		},
		{
			name: "address without a host",
			src:  "node_id = \"n1\"\nraft_addr = @@\":8471\"\n",
			msg:  "the host is missing",
		},
		{
			name: "port out of range",
			src:  "node_id = \"n1\"\nraft_addr = @@\"127.0.0.1:70000\"\n",
			msg:  `port "70000" is not a number from 1 to 65535`,
		},
		{
			name: "unspecified address",
			src:  "node_id = \"n1\"\nraft_addr = @@\"0.0.0.0:8471\"\n",
			msg:  "0.0.0.0 is not an address peers can reach",
		},
		{
			name: "unspecified IPv6 address",
			src:  "node_id = \"n1\"\nhttp_addr = @@\"[::]:8470\"\n",
			msg:  ":: is not an address peers can reach",
		},
		{
			name: "bad join address",
			src:  "node_id = \"n1\"\njoin = @@[\"127.0.0.1:8470\", \"node2\"]\n",
			msg:  `join address "node2"`,
		},
		{
			name: "same http and raft address",
			src:  "node_id = \"n1\"\nhttp_addr = \"127.0.0.1:9000\"\nraft_addr = @@\"127.0.0.1:9000\"\n",
			msg:  "they need different ports",
		},
		{
			name: "http address set to the default raft address",
			src:  "node_id = \"n1\"\nhttp_addr = @@\"127.0.0.1:8471\"\n",
			msg:  "they need different ports",
		},
		{
			name: "retry_min above retry_max",
			src:  "node_id = \"n1\"\nlease {\n  retry_min = @@\"2s\"\n  retry_max = \"1s\"\n}\n",
			msg:  "lease.retry_min (2s) is greater than lease.retry_max (1s)",
		},
		{
			name: "retry_max below the default retry_min",
			src:  "node_id = \"n1\"\nlease {\n  retry_max = @@\"50ms\"\n}\n",
			msg:  "lease.retry_min (100ms) is greater than lease.retry_max (50ms)",
		},
		{
			name: "zero ttl",
			src:  "node_id = \"n1\"\nlease {\n  ttl = @@\"0s\"\n}\n",
			msg:  "lease.ttl must be positive",
		},
		{
			name: "negative join_timeout",
			src:  "node_id = \"n1\"\njoin_timeout = @@\"-1s\"\n",
			msg:  "join_timeout must be positive",
		},
		{
			name: "unknown log level",
			src:  "node_id = \"n1\"\nlog_level = @@\"verbose\"\n",
			msg:  `log_level "verbose" is not one of`,
		},
		{
			name: "unknown log format",
			src:  "node_id = \"n1\"\nlog_format = @@\"xml\"\n",
			msg:  `log_format "xml" is not json, text or gitlab (GitLab's geo.log lines)`,
		},
		{
			name: "a reachable address without tls and acl",
			src:  "node_id = \"n1\"\nhttp_addr = @@\"10.1.2.3:8470\"\n",
			msg:  `http_addr "10.1.2.3:8470" is not a loopback address, and anyone who reaches it could change the cluster: add tls and acl blocks`,
		},
		{
			name: "a reachable raft address with acl but without tls",
			src:  "node_id = \"n1\"\nraft_addr = @@\"10.1.2.3:8471\"\nacl {\n  operator_token = \"0123456789abcdef\"\n}\n",
			msg:  `raft_addr "10.1.2.3:8471" is not a loopback address, and anyone who reaches it could change the cluster: add a tls block`,
		},
		{
			name: "a short operator token",
			src:  "node_id = \"n1\"\nacl {\n  operator_token = @@\"hunter2\"\n}\n",
			msg:  "acl.operator_token is 7 characters long: use at least 16",
		},
		{
			name: "the read token equal to the operator token",
			src:  "node_id = \"n1\"\nacl {\n  operator_token = \"0123456789abcdef\"\n  read_token = @@\"0123456789abcdef\"\n}\n",
			msg:  "acl.read_token is the same as acl.operator_token",
		},
		{
			name: "a tls file that does not exist",
			src:  "node_id = \"n1\"\ntls {\n  ca_file = @@\"/nonexistent/ca.pem\"\n  cert_file = \"x\"\n  key_file = \"y\"\n}\n",
			msg:  `tls.ca_file "/nonexistent/ca.pem": no such file or directory`,
		},
		{
			name: "insecure is not a bool",
			src:  "node_id = \"n1\"\ninsecure = @@\"maybe\"\n",
			msg:  "insecure must be bool",
		},
		{
			name: "an unknown source.start",
			src:  "node_id = \"n1\"\nsource {\n  dsn = \"x\"\n  start = @@\"newest\"\n}\ntracking {\n  dsn = \"y\"\n}\n",
			msg:  `source.start "newest" is not "head" or "oldest"`,
		},
		{
			name: "a gitlab block on a witness",
			src:  "node_id = \"n1\"\n@@gitlab {\n  site_name = \"s\"\n  shared_state_redis_url = \"redis://x:1\"\n}\n",
			msg:  "a gitlab block needs a source block",
		},
		{
			name: "a gitlab block without a site name",
			src:  "node_id = \"n1\"\nsource {\n  dsn = \"x\"\n}\ntracking {\n  dsn = \"y\"\n}\n@@gitlab {\n  shared_state_redis_url = \"redis://x:1\"\n}\n",
			msg:  "gitlab.site_name is empty",
		},
		{
			name: "a gitlab block without its Redis",
			src:  "node_id = \"n1\"\nsource {\n  dsn = \"x\"\n}\ntracking {\n  dsn = \"y\"\n}\n@@gitlab {\n  site_name = \"s\"\n}\n",
			msg:  "gitlab.shared_state_redis_url is empty: set GEOCURSOR_SHARED_STATE_REDIS_URL",
		},
		{
			name: "a gitlab master name with a port",
			src:  "node_id = \"n1\"\nsource {\n  dsn = \"x\"\n}\ntracking {\n  dsn = \"y\"\n}\ngitlab {\n  site_name = \"s\"\n  shared_state_redis_url = @@\"redis://:pw@gitlab-redis:6379/0\"\n  sentinels = [\"s1:26379\"]\n}\n",
			msg:  `with gitlab.sentinels, the host of gitlab.shared_state_redis_url is the name of the master`,
		},
		{
			name: "an unknown key in gitlab",
			src:  "node_id = \"n1\"\nsource {\n  dsn = \"x\"\n}\ntracking {\n  dsn = \"y\"\n}\ngitlab {\n  site_name = \"s\"\n  @@lease_key = \"k\"\n}\n",
			msg:  "Unsupported argument",
		},
		{
			name: "an empty delivery block",
			src:  "node_id = \"n1\"\nsource {\n  dsn = \"x\"\n}\ntracking {\n  dsn = \"y\"\n}\n@@delivery {\n}\n",
			msg:  "the delivery block is empty",
		},
		{
			name: "a delivery block on a witness",
			src:  "node_id = \"n1\"\n@@delivery {\n  cache {\n    redis_url = \"redis://x:1\"\n  }\n}\n",
			msg:  "a delivery block needs a source block",
		},
		{
			name: "a sidekiq redis_url that is not a Redis URL",
			src:  "node_id = \"n1\"\nsource {\n  dsn = \"x\"\n}\ntracking {\n  dsn = \"y\"\n}\ndelivery {\n  sidekiq {\n    redis_url = @@\"http://x\"\n  }\n}\n",
			msg:  "delivery.sidekiq.redis_url is not a redis://, rediss:// or unix:// URL",
		},
		{
			name: "an unknown key in delivery.cache",
			src:  "node_id = \"n1\"\nsource {\n  dsn = \"x\"\n}\ntracking {\n  dsn = \"y\"\n}\ndelivery {\n  cache {\n    @@ttl = 1\n  }\n}\n",
			msg:  "Unsupported argument",
		},
		{
			name: "a sentinel without a port",
			src:  deliveryBlock("sidekiq", "redis_url = \"redis://gitlab-redis/0\"", "sentinels = @@[\"10.0.0.1:26379\", \"10.0.0.2\"]"),
			msg:  `delivery.sidekiq.sentinels: "10.0.0.2" is not HOST:PORT (missing port in address)`,
		},
		{
			name: "a sentinel without a host",
			src:  deliveryBlock("cache", "redis_url = \"redis://gitlab-redis/0\"", "sentinels = @@[\":26379\"]"),
			msg:  `delivery.cache.sentinels: ":26379" is not HOST:PORT (the host is missing)`,
		},
		{
			name: "a sentinel port out of range",
			src:  deliveryBlock("sidekiq", "redis_url = \"redis://gitlab-redis/0\"", "sentinels = @@[\"10.0.0.1:0\"]"),
			msg:  `"10.0.0.1:0" is not HOST:PORT (port "0" is not a number from 1 to 65535)`,
		},
		{
			name: "a sentinel listed twice",
			src:  deliveryBlock("sidekiq", "redis_url = \"redis://gitlab-redis/0\"", "sentinels = @@[\"s1:26379\", \"s2:26379\", \"s1:26379\"]"),
			msg:  `delivery.sidekiq.sentinels lists "s1:26379" twice`,
		},
		{
			name: "a master name with a port",
			src:  deliveryBlock("sidekiq", "redis_url = @@\"redis://:secret@gitlab-redis:6379/0\"", "sentinels = [\"s1:26379\"]"),
			msg:  `with delivery.sidekiq.sentinels, the host of delivery.sidekiq.redis_url is the name of the master to ask them for, as in GitLab's resque.yml (redis://:PASSWORD@gitlab-redis/0), and takes no port: drop ":6379"`,
		},
		{
			name: "a cache master name with a port",
			src:  deliveryBlock("cache", "redis_url = @@\"redis://gitlab-redis:6380\"", "sentinels = [\"s1:26379\"]"),
			msg:  `the host of delivery.cache.redis_url is the name of the master`,
		},
		{
			name: "a unix socket with sentinels",
			src:  deliveryBlock("sidekiq", "redis_url = @@\"unix:///run/redis.sock\"", "sentinels = [\"s1:26379\"]"),
			msg:  "a unix:// socket names none",
		},
		{
			name: "sentinels that are not a list",
			src:  deliveryBlock("sidekiq", "redis_url = \"redis://gitlab-redis/0\"", "sentinels = @@\"s1:26379\""),
			msg:  "delivery.sidekiq.sentinels must be list of string",
		},
		{
			name: "a negative min_replicas",
			src:  deliveryBlock("sidekiq", "redis_url = \"redis://sk:6379/0\"", "min_replicas = @@-1"),
			msg:  "delivery.sidekiq.min_replicas must not be negative, got -1",
		},
		{
			name: "a min_replicas that is not a whole number",
			src:  deliveryBlock("sidekiq", "redis_url = \"redis://sk:6379/0\"", "min_replicas = @@1.5"),
			msg:  "delivery.sidekiq.min_replicas must be a whole number, got 1.5",
		},
		{
			name: "min_replicas in the cache block",
			src:  deliveryBlock("cache", "redis_url = \"redis://c:6379/0\"", "@@min_replicas = 1"),
			msg:  "Unsupported argument",
		},
		{
			name: "batch_size out of range",
			src:  "node_id = \"n1\"\nsource {\n  dsn = \"x\"\n  batch_size = @@0\n}\ntracking {\n  dsn = \"y\"\n}\n",
			msg:  "source.batch_size must be between 1 and 100000, got 0",
		},
		{
			name: "source without tracking",
			src:  "node_id = \"n1\"\n@@source {\n  dsn = \"postgres://src\"\n}\n",
			msg:  "a source block needs a tracking block",
		},
		{
			name: "tracking without source",
			src:  "node_id = \"n1\"\n@@tracking {\n  dsn = \"postgres://trk\"\n}\n",
			msg:  "a tracking block without a source block does nothing",
		},
		{
			name: "empty source dsn",
			src:  "node_id = \"n1\"\nsource {\n  dsn = @@\"\"\n}\ntracking {\n  dsn = \"postgres://trk\"\n}\n",
			msg:  "source.dsn is empty: set GEOCURSOR_SOURCE_DSN",
		},
		{
			name: "empty tracking dsn",
			src:  "node_id = \"n1\"\nsource {\n  dsn = \"postgres://src\"\n}\ntracking {\n  dsn = @@\"\"\n}\n",
			msg:  "tracking.dsn is empty: set GEOCURSOR_TRACKING_DSN",
		},
		{
			name: "source dsn absent points at its block",
			src:  "node_id = \"n1\"\n@@source {\n  batch_size = 10\n}\ntracking {\n  dsn = \"postgres://trk\"\n}\n",
			msg:  "source.dsn is empty",
		},
		{
			name: "raft timeout too short",
			src:  "node_id = \"n1\"\n@@raft {\n  heartbeat_timeout = \"10ms\"\n}\n" + pair,
			msg:  "raft timeouts must be at least 50ms",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, at := writeConfig(t, tt.src)
			if at == "" {
				t.Fatal("test HCL has no @@ mark")
			}
			_, err := config.Load(path, tt.env, config.Overrides{})
			checkError(t, err, at+": ", tt.msg)
		})
	}
}

// deliveryBlock is a config whose delivery block has one block, kind
// (sidekiq or cache), with the given lines.
func deliveryBlock(kind string, lines ...string) string {
	return "node_id = \"n1\"\nsource {\n  dsn = \"x\"\n}\ntracking {\n  dsn = \"y\"\n}\ndelivery {\n  " + kind + " {\n    " +
		strings.Join(lines, "\n    ") + "\n  }\n}\n"
}

// checkError asserts that err is a single-line *config.Error that starts
// with prefix and contains msg.
func checkError(t *testing.T, err error, prefix, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("Load succeeded; want an error starting %q", prefix)
	}
	var cerr *config.Error
	if !errors.As(err, &cerr) {
		t.Errorf("error is %T, want *config.Error: %v", err, err)
	}
	s := err.Error()
	if !strings.HasPrefix(s, prefix) {
		t.Errorf("error %q\ndoes not start with %q", s, prefix)
	}
	if !strings.Contains(s, msg) {
		t.Errorf("error %q\ndoes not say %q", s, msg)
	}
	if strings.ContainsAny(s, "\r\n") {
		t.Errorf("error %q is not a single line", s)
	}
}

func TestEnvAndFlagErrorsNameTheirSource(t *testing.T) {
	const file = "node_id = \"n1\"\nsource {\n  dsn = \"postgres://src\"\n}\ntracking {\n  dsn = \"postgres://trk\"\n}\n"
	tests := []struct {
		name   string
		env    []string
		flags  config.Overrides
		prefix string
		msg    string
	}{
		{"bad node_id in env", []string{"GEOCURSOR_NODE_ID=a b"}, config.Overrides{},
			"environment variable GEOCURSOR_NODE_ID: ", `node_id "a b" is not valid`},
		{"bad http_addr in env", []string{"GEOCURSOR_HTTP_ADDR=0.0.0.0:1"}, config.Overrides{},
			"environment variable GEOCURSOR_HTTP_ADDR: ", "not an address peers can reach"},
		{"bad raft_addr in env", []string{"GEOCURSOR_RAFT_ADDR=127.0.0.1"}, config.Overrides{},
			"environment variable GEOCURSOR_RAFT_ADDR: ", "not HOST:PORT"},
		{"bad join in env", []string{"GEOCURSOR_JOIN=127.0.0.1:1,node2"}, config.Overrides{},
			"environment variable GEOCURSOR_JOIN: ", `join address "node2"`},
		{"bad log level in env", []string{"GEOCURSOR_LOG_LEVEL=loud"}, config.Overrides{},
			"environment variable GEOCURSOR_LOG_LEVEL: ", `log_level "loud"`},
		{"bad node_id flag", nil, config.Overrides{NodeID: ptr("-x")},
			"flag -node-id: ", `node_id "-x" is not valid`},
		{"empty node_id flag", nil, config.Overrides{NodeID: ptr("")},
			"", "node_id is not set"},
		{"bad http_addr flag", nil, config.Overrides{HTTPAddr: ptr("127.0.0.1:0")},
			"flag -http-addr: ", "is not a number from 1 to 65535"},
		{"raft_addr flag equal to http_addr", nil, config.Overrides{RaftAddr: ptr(config.DefaultHTTPAddr)},
			"flag -raft-addr: ", "they need different ports"},
		{"bad join flag", nil, config.Overrides{Join: ptr([]string{"127.0.0.1:8470", "x:y"})},
			"flag -join: ", `join address "x:y"`},
		{"bad log level flag", nil, config.Overrides{LogLevel: ptr("INFO")},
			"flag -log-level: ", `log_level "INFO"`},
		{"flag is blamed over env", []string{"GEOCURSOR_NODE_ID=ok"}, config.Overrides{NodeID: ptr("not ok")},
			"flag -node-id: ", `node_id "not ok"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, file, tt.env, tt.flags)
			checkError(t, err, tt.prefix, tt.msg)
		})
	}
}

func TestMissingNodeID(t *testing.T) {
	_, err := load(t, "log_level = \"info\"\n", nil, config.Overrides{})
	checkError(t, err, "node_id is not set", "-node-id")

	// The flag alone is enough.
	cfg := mustLoad(t, "log_level = \"info\"\n", nil, config.Overrides{NodeID: ptr("n9")})
	if cfg.NodeID != "n9" {
		t.Errorf("node_id = %q, want n9", cfg.NodeID)
	}
}

func TestMissingFileIsAClearError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.hcl")
	_, err := config.Load(path, nil, config.Overrides{})
	checkError(t, err, path+": ", "cannot read config file")
	if !errors.Is(err, os.ErrNotExist) && !strings.Contains(err.Error(), "no such file") {
		t.Errorf("error %q does not say the file does not exist", err)
	}
}

func TestTokensFromTheEnvironmentOverrideAnACLBlockOnly(t *testing.T) {
	env := []string{config.EnvOperatorToken + "=from-the-environment-0", config.EnvReadToken + "=from-the-environment-1"}
	cfg := mustLoad(t, "node_id = \"n1\"\nacl {\n  operator_token = \"0123456789abcdef\"\n}\n", env, config.Overrides{})
	if cfg.ACL.OperatorToken != "from-the-environment-0" || cfg.ACL.ReadToken != "from-the-environment-1" {
		t.Errorf("acl = %+v, want both tokens from the environment", cfg.ACL)
	}
	cfg = mustLoad(t, "node_id = \"n1\"\n", env, config.Overrides{})
	if cfg.ACL != nil {
		t.Errorf("tokens in the environment made an acl block: %+v", cfg.ACL)
	}
}

func TestReachableAddressAllowedWithTLSAndACLOrInsecure(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"ca.pem", "n1.pem", "n1-key.pem"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	secure := fmt.Sprintf(`node_id = "n1"
http_addr = "10.1.2.3:8470"
raft_addr = "10.1.2.3:8471"
tls {
  ca_file   = %q
  cert_file = %q
  key_file  = %q
}
acl {
  operator_token = "0123456789abcdef"
}
`, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "n1.pem"), filepath.Join(dir, "n1-key.pem"))
	if cfg := mustLoad(t, secure, nil, config.Overrides{}); !cfg.Secure() || cfg.Insecure {
		t.Errorf("secure config: Secure %t, Insecure %t", cfg.Secure(), cfg.Insecure)
	}
	insecure := "node_id = \"n1\"\nhttp_addr = \"10.1.2.3:8470\"\ninsecure = true\n"
	if cfg := mustLoad(t, insecure, nil, config.Overrides{}); cfg.Secure() || !cfg.Insecure {
		t.Errorf("insecure config: Secure %t, Insecure %t", cfg.Secure(), cfg.Insecure)
	}
}

func TestRedisURLsFromTheEnvironmentOverrideTheirBlocksOnly(t *testing.T) {
	env := []string{config.EnvSidekiqRedisURL + "=redis://:secret@sk:6379/2", config.EnvCacheRedisURL + "=redis://:secret@cache:6379/3"}
	src := "node_id = \"n1\"\nsource {\n  dsn = \"x\"\n}\ntracking {\n  dsn = \"y\"\n}\ndelivery {\n  sidekiq {\n    redis_url = \"redis://file:1\"\n  }\n}\n"
	cfg := mustLoad(t, src, env, config.Overrides{})
	if cfg.Delivery.Sidekiq.RedisURL != "redis://:secret@sk:6379/2" {
		t.Errorf("sidekiq redis_url = %q, want the environment's", cfg.Delivery.Sidekiq.RedisURL)
	}
	if cfg.Delivery.Cache != nil {
		t.Errorf("the cache URL in the environment made a cache block: %+v", cfg.Delivery.Cache)
	}
}

// With sentinels, redis_url names the master, as GitLab's resque.yml does:
// its host is the master's name, its password and database are the
// master's. The URL may come from the environment, and is checked there.
func TestDeliveryThroughSentinel(t *testing.T) {
	src := `node_id = "n1"
source {
  dsn = "x"
}
tracking {
  dsn = "y"
}
delivery {
  sidekiq {
    redis_url    = "redis://:secret@gitlab-redis/2"
    sentinels    = ["10.0.0.1:26379", "10.0.0.2:26379", "sentinel-3.internal:26379"]
    min_replicas = 1
  }
  cache {
    redis_url = "redis://gitlab-redis-cache"
    sentinels = ["10.0.0.1:26380"]
  }
}
`
	cfg := mustLoad(t, src, nil, config.Overrides{})
	want := &config.DeliveryConfig{
		Sidekiq: &config.SidekiqConfig{RedisURL: "redis://:secret@gitlab-redis/2", Queue: config.DefaultSidekiqQueue,
			Sentinels: []string{"10.0.0.1:26379", "10.0.0.2:26379", "sentinel-3.internal:26379"}, MinReplicas: 1},
		Cache: &config.CacheConfig{RedisURL: "redis://gitlab-redis-cache", Namespace: config.DefaultCacheNamespace,
			Sentinels: []string{"10.0.0.1:26380"}},
	}
	if !reflect.DeepEqual(cfg.Delivery, want) {
		t.Errorf("delivery\n got %+v %+v\nwant %+v %+v", cfg.Delivery.Sidekiq, cfg.Delivery.Cache, want.Sidekiq, want.Cache)
	}

	// A URL from the environment is checked against the file's sentinels,
	// and the error names the variable, not the URL (it has a password).
	env := []string{config.EnvSidekiqRedisURL + "=redis://:secret@10.0.0.9:6379/0"}
	_, err := load(t, src, env, config.Overrides{})
	checkError(t, err, "environment variable "+config.EnvSidekiqRedisURL+": ", `drop ":6379"`)
	if err != nil && strings.Contains(err.Error(), "secret") {
		t.Errorf("the error shows the password: %v", err)
	}
	env = []string{config.EnvSidekiqRedisURL + "=redis://:other@gitlab-redis/0"}
	if cfg := mustLoad(t, src, env, config.Overrides{}); cfg.Delivery.Sidekiq.RedisURL != "redis://:other@gitlab-redis/0" {
		t.Errorf("redis_url = %q, want the environment's", cfg.Delivery.Sidekiq.RedisURL)
	}

	// An empty list is no Sentinel: the URL is the Redis itself.
	cfg = mustLoad(t, deliveryBlock("sidekiq", `redis_url = "redis://sk:6379/0"`, `sentinels = []`, `min_replicas = 0`), nil, config.Overrides{})
	if s := cfg.Delivery.Sidekiq; len(s.Sentinels) != 0 || s.MinReplicas != 0 {
		t.Errorf("sidekiq %+v, want no sentinels and min_replicas 0", s)
	}
}

// The gitlab block: the site's name, its shared-state Redis (from the
// environment, as a secret), Sentinels.
func TestGitLabBlock(t *testing.T) {
	src := `node_id = "n1"
log_format = "gitlab"
source {
  dsn = "x"
}
tracking {
  dsn = "y"
}
gitlab {
  site_name              = "secondary-1"
  shared_state_redis_url = "redis://file"
  sentinels              = ["10.0.0.1:26379"]
}
`
	cfg := mustLoad(t, src, []string{"GEOCURSOR_SHARED_STATE_REDIS_URL=redis://:pw@gitlab-redis/2"}, config.Overrides{})
	g := cfg.GitLab
	if g == nil || g.SiteName != "secondary-1" || g.SharedStateRedisURL != "redis://:pw@gitlab-redis/2" || len(g.Sentinels) != 1 || cfg.LogFormat != "gitlab" {
		t.Fatalf("gitlab block %+v, log_format %q", g, cfg.LogFormat)
	}
}

// tokenFile is a file a token test writes before it loads its config.
type tokenFile struct {
	name, content string
	mode          os.FileMode
}

// TestTokenFiles: a token may come from a file of its own (design section
// 10), which must hold one token and nothing else, and never together with
// the token given another way.
func TestTokenFiles(t *testing.T) {
	const good = "0123456789abcdef0123456789abcdef"
	const other = "fedcba9876543210fedcba9876543210"
	tests := []struct {
		name  string
		src   string // {dir} stands for the files' directory
		env   []string
		files []tokenFile
		// want: the operator and read tokens loaded; msg, when set, a part
		// of the error at the @@ mark (or at prefix, when set).
		wantOp, wantRead string
		warning          string
		prefix, msg      string
	}{
		{
			name:   "the token alone, with its newline",
			src:    "acl {\n  operator_token_file = \"{dir}/op\"\n  read_token_file = \"{dir}/rd\"\n}\n",
			files:  []tokenFile{{"op", good + "\n", 0o600}, {"rd", "  " + other + "\r\n\n", 0o400}},
			wantOp: good, wantRead: other,
		},
		{
			name:    "a file others can read is a warning",
			src:     "acl {\n  operator_token_file = @@\"{dir}/op\"\n}\n",
			files:   []tokenFile{{"op", good, 0o640}},
			wantOp:  good,
			warning: "(mode 0640): set mode 0600 (chmod 0600 {dir}/op)",
		},
		{
			name: "a file that does not exist",
			src:  "acl {\n  operator_token_file = @@\"{dir}/missing\"\n}\n",
			msg:  `acl.operator_token_file "{dir}/missing": no such file or directory`,
		},
		{
			name:  "a directory",
			src:   "acl {\n  operator_token_file = @@\"{dir}\"\n}\n",
			files: []tokenFile{{"x", good, 0o600}},
			msg:   "is not a regular file",
		},
		{
			name:  "an empty file",
			src:   "acl {\n  operator_token_file = @@\"{dir}/op\"\n}\n",
			files: []tokenFile{{"op", " \n", 0o600}},
			msg:   "is empty: write the token into it",
		},
		{
			name:  "two tokens",
			src:   "acl {\n  operator_token_file = @@\"{dir}/op\"\n}\n",
			files: []tokenFile{{"op", good + "\n" + other + "\n", 0o600}},
			msg:   "holds more than one word or line",
		},
		{
			name:  "a control character",
			src:   "acl {\n  operator_token_file = \"{dir}/op\"\n  read_token_file = @@\"{dir}/rd\"\n}\n",
			files: []tokenFile{{"op", good, 0o600}, {"rd", other + "\x00x", 0o600}},
			msg:   "holds characters other than letters, digits and punctuation",
		},
		{
			name:  "a file too large to be a token",
			src:   "acl {\n  operator_token_file = @@\"{dir}/op\"\n}\n",
			files: []tokenFile{{"op", strings.Repeat("a", config.MaxTokenFileSize+1), 0o600}},
			msg:   "is larger than 4096 bytes",
		},
		{
			name:  "a short token",
			src:   "acl {\n  operator_token_file = @@\"{dir}/op\"\n}\n",
			files: []tokenFile{{"op", "hunter2\n", 0o600}},
			msg:   `the token in acl.operator_token_file "{dir}/op" is 7 characters long: use at least 16`,
		},
		{
			name:  "the read token the same as the operator token",
			src:   "acl {\n  operator_token_file = \"{dir}/op\"\n  read_token_file = @@\"{dir}/rd\"\n}\n",
			files: []tokenFile{{"op", good, 0o600}, {"rd", good, 0o600}},
			msg:   "acl.read_token is the same as acl.operator_token",
		},
		{
			name:  "a token and its file",
			src:   "acl {\n  operator_token = @@\"" + good + "\"\n  operator_token_file = \"{dir}/op\"\n}\n",
			files: []tokenFile{{"op", good, 0o600}},
			msg:   "acl.operator_token and acl.operator_token_file (at ",
		},
		{
			name:   "the operator token in the environment and its file",
			src:    "acl {\n  operator_token_file = \"{dir}/op\"\n}\n",
			env:    []string{config.EnvOperatorToken + "=" + other},
			files:  []tokenFile{{"op", good, 0o600}},
			prefix: "environment variable GEOCURSOR_OPERATOR_TOKEN: ",
			msg:    "gives the same token: a token comes from one place; unset GEOCURSOR_OPERATOR_TOKEN",
		},
		{
			name:   "the read token in the environment and its file",
			src:    "acl {\n  operator_token_file = \"{dir}/op\"\n  read_token_file = \"{dir}/rd\"\n}\n",
			env:    []string{config.EnvReadToken + "=" + other},
			files:  []tokenFile{{"op", good, 0o600}, {"rd", other, 0o600}},
			prefix: "environment variable GEOCURSOR_READ_TOKEN: ",
			msg:    "unset GEOCURSOR_READ_TOKEN",
		},
		{
			name:   "an empty variable is no token",
			src:    "acl {\n  operator_token_file = \"{dir}/op\"\n}\n",
			env:    []string{config.EnvOperatorToken + "="},
			files:  []tokenFile{{"op", good, 0o600}},
			wantOp: good,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tt.files {
				p := filepath.Join(dir, f.name)
				if err := os.WriteFile(p, []byte(f.content), 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, f.mode); err != nil {
					t.Fatal(err)
				}
			}
			fill := func(s string) string { return strings.ReplaceAll(s, "{dir}", dir) }
			path, at := writeConfig(t, "node_id = \"n1\"\n"+fill(tt.src))
			cfg, err := config.Load(path, tt.env, config.Overrides{})
			if tt.msg != "" {
				prefix := tt.prefix
				if prefix == "" {
					prefix = at + ": "
				}
				checkError(t, err, prefix, fill(tt.msg))
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if a := cfg.ACL; a.OperatorToken != tt.wantOp || a.ReadToken != tt.wantRead {
				t.Errorf("tokens %q, %q; want %q, %q", a.OperatorToken, a.ReadToken, tt.wantOp, tt.wantRead)
			}
			if a := cfg.ACL; a.OperatorTokenFile != filepath.Join(dir, "op") || a.OperatorTokenEnv != "" {
				t.Errorf("operator token from file %q, environment %q; want the file and no variable", a.OperatorTokenFile, a.OperatorTokenEnv)
			}
			switch w := cfg.ACL.Warnings; {
			case tt.warning == "" && len(w) > 0:
				t.Errorf("warnings %q, want none", w)
			case tt.warning != "" && (len(w) != 1 || !strings.HasPrefix(w[0], at+": ") || !strings.Contains(w[0], fill(tt.warning))):
				t.Errorf("warnings %q, want one at %s saying %q", w, at, fill(tt.warning))
			}
		})
	}
}

// A token file that cannot be read is an error that says so (root reads
// every file, so the case needs another user).
func TestUnreadableTokenFile(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root can read a file of mode 0000")
	}
	p := filepath.Join(t.TempDir(), "op")
	if err := os.WriteFile(p, []byte("0123456789abcdef0123456789abcdef\n"), 0o000); err != nil {
		t.Fatal(err)
	}
	path, at := writeConfig(t, "node_id = \"n1\"\nacl {\n  operator_token_file = @@\""+p+"\"\n}\n")
	_, err := config.Load(path, nil, config.Overrides{})
	checkError(t, err, at+": ", fmt.Sprintf("acl.operator_token_file %q: permission denied", p))
}

// Each load reads a token file again, which is how SIGHUP rotates a token;
// and a token from the environment says which variable fixes it.
func TestTokenSourcesForReload(t *testing.T) {
	dir := t.TempDir()
	op := filepath.Join(dir, "op")
	write := func(tok string) {
		t.Helper()
		if err := os.WriteFile(op, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("first-token-0123456789")
	path, _ := writeConfig(t, fmt.Sprintf("node_id = \"n1\"\nacl {\n  operator_token_file = %q\n  read_token = env.MY_READ_TOKEN\n}\n", op))
	env := []string{"MY_READ_TOKEN=reader-token-0123456789"}
	cfg, err := config.Load(path, env, config.Overrides{})
	if err != nil {
		t.Fatal(err)
	}
	if a := cfg.ACL; a.OperatorToken != "first-token-0123456789" || a.ReadTokenEnv != "MY_READ_TOKEN" || a.OperatorTokenEnv != "" {
		t.Errorf("acl %+v: want the file's operator token, the read token from MY_READ_TOKEN", a)
	}
	write("second-token-0123456789")
	if cfg, err = config.Load(path, env, config.Overrides{}); err != nil {
		t.Fatal(err)
	}
	if cfg.ACL.OperatorToken != "second-token-0123456789" {
		t.Errorf("after the file changed the operator token is %q", cfg.ACL.OperatorToken)
	}

	for _, tc := range []struct {
		src, env, want string
	}{
		{"operator_token = \"0123456789abcdef\"", "", ""},
		{"operator_token = env.GEOCURSOR_OPERATOR_TOKEN", config.EnvOperatorToken + "=0123456789abcdef", config.EnvOperatorToken},
		{"operator_token = env[\"OTHER\"]", "OTHER=0123456789abcdef", "OTHER"},
		{"operator_token = \"0123456789abcdef\"", config.EnvOperatorToken + "=fedcba9876543210", config.EnvOperatorToken},
	} {
		cfg := mustLoad(t, "node_id = \"n1\"\nacl {\n  "+tc.src+"\n}\n", []string{tc.env}, config.Overrides{})
		if cfg.ACL.OperatorTokenEnv != tc.want {
			t.Errorf("%s with %q: the token comes from variable %q, want %q", tc.src, tc.env, cfg.ACL.OperatorTokenEnv, tc.want)
		}
	}
}

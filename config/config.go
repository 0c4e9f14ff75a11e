// Package config loads an agent's configuration: the HCL file, then the
// environment, then command-line flags, each overriding the one before, and
// validates the result in one place. Every error names where the bad value
// came from (FILE:LINE,COL, the environment variable, or the flag) and what
// to do about it.
package config

import (
	"time"
)

// Config is an agent's complete, validated configuration.
type Config struct {
	NodeID      string
	DataDir     string
	HTTPAddr    string
	RaftAddr    string
	Join        []string
	JoinTimeout time.Duration
	// BootstrapExpect, when above 0, has a node with no state wait until
	// that many nodes of its join list (itself included) are up and none
	// is in a group, and then form one group of them all; without it a
	// node with no state and no join list bootstraps alone.
	BootstrapExpect int
	// LeaveOnTerminate has SIGTERM remove the node from the group after it
	// has handed over its lease and leadership.
	LeaveOnTerminate bool
	LogLevel         string
	LogFormat        string

	Lease LeaseConfig
	Raft  RaftConfig
	// Source is nil on a witness: a voter that never processes.
	Source   *SourceConfig
	Tracking *TrackingConfig

	// TLS, when set, makes the Raft port and the HTTP API speak only
	// mutually verified TLS; ACL, when set, makes every endpoint but the
	// health checks ask for a token. Insecure allows a non-loopback address
	// without both.
	TLS      *TLSConfig
	ACL      *ACLConfig
	Insecure bool

	// Delivery, when set, hands each job to GitLab's Sidekiq and each
	// cache invalidation to the Rails cache (design section 11); without
	// it geo_jobs is the queue.
	Delivery *DeliveryConfig

	// GitLab, when set, makes geocursor live beside a GitLab site's own
	// shared state (design section 13): it holds GitLab's log cursor lease,
	// adopts GitLab's open gaps at switchover, and processes only while
	// the site is a secondary.
	GitLab *GitLabConfig
}

// GitLabConfig is the gitlab block.
type GitLabConfig struct {
	// SiteName is this site's geo_nodes.name in GitLab.
	SiteName string
	// SharedStateRedisURL is GitLab's shared-state Redis (its
	// gitlab_rails['redis_shared_state_instance'], or the one Redis).
	SharedStateRedisURL string
	// Sentinels, when set, are the Sentinels to ask for the master named
	// by SharedStateRedisURL's host.
	Sentinels []string
}

// DeliveryConfig is where jobs go.
type DeliveryConfig struct {
	// Sidekiq and Cache are each optional; a delivery block needs one.
	Sidekiq *SidekiqConfig
	Cache   *CacheConfig
	// RateLimit caps the jobs handed to Sidekiq per second; 0 means no cap.
	RateLimit float64
}

// SidekiqConfig is GitLab's Sidekiq Redis.
type SidekiqConfig struct {
	RedisURL  string
	Queue     string
	Namespace string
	// Sentinels, when set, are the Sentinels (HOST:PORT) to ask for the
	// master named by RedisURL's host, as GitLab's resque.yml does.
	Sentinels []string
	// MinReplicas is how many replicas must acknowledge a push (Redis's
	// WAIT) before its jobs are recorded as delivered; 0: the master's
	// acknowledgement is enough, and a failover to a replica that lagged
	// can lose jobs recorded as delivered.
	MinReplicas int
}

// CacheConfig is the Rails cache Redis.
type CacheConfig struct {
	RedisURL  string
	Namespace string
	// Sentinels: as SidekiqConfig.Sentinels.
	Sentinels []string
}

// TLSConfig is the node's TLS material (design section 10).
type TLSConfig struct {
	CAFile   string
	CertFile string
	KeyFile  string
}

// ACLConfig holds the API's tokens. The operator token may do everything;
// the read token may read status, metrics and the status page.
//
// A token comes from one place: the config file (operator_token, which may
// read the environment as env.NAME), its environment variable
// (GEOCURSOR_OPERATOR_TOKEN, GEOCURSOR_READ_TOKEN), or a file of its own
// (operator_token_file), never two. Only a token from a file or written in
// the config can change on SIGHUP: a process's environment is fixed when it
// starts, so a token from it stays what it was until a restart.
type ACLConfig struct {
	OperatorToken string
	ReadToken     string
	// OperatorTokenFile and ReadTokenFile are the files the tokens were
	// read from, "" for a token given otherwise. A reload reads them again.
	OperatorTokenFile string
	ReadTokenFile     string
	// OperatorTokenEnv and ReadTokenEnv name the environment variable a
	// token came from (directly, or through env.NAME in the file), "" for
	// none: a reload cannot change such a token.
	OperatorTokenEnv string
	ReadTokenEnv     string
	// JoinToken, when set, lets a new node join the group without the
	// operator token (design section 10: membership needs the operator's
	// consent, which a joiner proves with either). A node sends its own
	// join token, or else its operator token, with its join. JoinTokenFile
	// and JoinTokenEnv are as for the other tokens.
	JoinToken     string
	JoinTokenFile string
	JoinTokenEnv  string
	// Warnings are what an operator should fix in how the tokens are kept
	// (a token file others can read), each one line; the agent logs them
	// at start and at every reload.
	Warnings []string
}

// MaxTokenFileSize bounds a token file: it holds one token and a newline.
const MaxTokenFileSize = 4096

// MinTokenLength is the shortest token accepted: a token is a password
// that a script sends on every request, so it must not be guessable.
const MinTokenLength = 16

// Secure reports whether the node needs no insecure = true to listen on
// an address other peers can reach.
func (c *Config) Secure() bool { return c.TLS != nil && c.ACL != nil }

// LeaseConfig tunes the processing lease.
type LeaseConfig struct {
	// TTL bounds how long a holder that stopped renewing (hung, cut off)
	// keeps others waiting. It is the fallback: a dead holder's lease is
	// revoked by the Raft leader as soon as heartbeats to it fail.
	TTL time.Duration
	// RetryMin and RetryMax bound the random delay a standby waits before it
	// competes for a free lease, so the last holder keeps its turn.
	RetryMin time.Duration
	RetryMax time.Duration
	// PreferFollower keeps the lease holder off the Raft leader: the
	// leader lets a follower take a free lease first, and hands Raft
	// leadership to a follower while it holds the lease itself. A holder
	// that leads costs an election when it dies; one that follows does
	// not, and the leader's death then costs processing nothing.
	PreferFollower bool
}

// RaftConfig tunes the consensus timers. The defaults suit a LAN.
type RaftConfig struct {
	HeartbeatTimeout  time.Duration
	ElectionTimeout   time.Duration
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64
}

// SourceConfig is the event log to read.
type SourceConfig struct {
	DSN          string
	BatchSize    int
	PollInterval time.Duration
	GapTimeout   time.Duration
	// Start is where a site with an empty tracking database begins:
	// StartHead (after the newest event) or StartOldest (the oldest the
	// primary still keeps). A tracking database that GitLab's own cursor
	// used continues after its event_log_states row either way.
	Start string
}

// The values of source.start.
const (
	StartHead   = "head"
	StartOldest = "oldest"
)

// TrackingConfig is this site's tracking database.
type TrackingConfig struct {
	DSN string
}

// Defaults. The lease and polling figures are chosen for the failover and
// lag targets in the README: a standby reacts within retry_max of the lease
// being freed, an idle holder sees a new event within poll_interval.
const (
	DefaultHTTPAddr          = "127.0.0.1:8470"
	DefaultRaftAddr          = "127.0.0.1:8471"
	DefaultJoinTimeout       = 60 * time.Second
	DefaultLogLevel          = "info"
	DefaultLogFormat         = "json"
	DefaultLeaseTTL          = 5 * time.Second
	DefaultRetryMin          = 100 * time.Millisecond
	DefaultRetryMax          = 300 * time.Millisecond
	DefaultBatchSize         = 1000
	DefaultPollInterval      = 25 * time.Millisecond
	DefaultGapTimeout        = time.Hour
	DefaultHeartbeatTimeout  = 500 * time.Millisecond
	DefaultElectionTimeout   = 500 * time.Millisecond
	DefaultSnapshotThreshold = 4096
	DefaultSnapshotInterval  = 30 * time.Second
	DefaultTrailingLogs      = 4096
	DefaultSidekiqQueue      = "default"
	DefaultCacheNamespace    = "cache:gitlab"
)

func defaults() Config {
	return Config{
		HTTPAddr:    DefaultHTTPAddr,
		RaftAddr:    DefaultRaftAddr,
		JoinTimeout: DefaultJoinTimeout,
		LogLevel:    DefaultLogLevel,
		LogFormat:   DefaultLogFormat,
		Lease:       LeaseConfig{TTL: DefaultLeaseTTL, RetryMin: DefaultRetryMin, RetryMax: DefaultRetryMax, PreferFollower: true},
		Raft: RaftConfig{
			HeartbeatTimeout:  DefaultHeartbeatTimeout,
			ElectionTimeout:   DefaultElectionTimeout,
			SnapshotThreshold: DefaultSnapshotThreshold,
			SnapshotInterval:  DefaultSnapshotInterval,
			TrailingLogs:      DefaultTrailingLogs,
		},
	}
}

package config

import (
	"errors"
	"fmt"
	"net"
	neturl "net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/geocursor/geocursor/fsm"
)

func validate(c *Config, o origins) error {
	fail := func(key, format string, args ...any) error {
		return &Error{Where: o.of(key), Msg: fmt.Sprintf(format, args...)}
	}
	if c.NodeID == "" {
		return &Error{Msg: "node_id is not set: add node_id = \"node1\" to the config file, or pass -node-id"}
	}
	if !fsm.ValidNodeID(c.NodeID) {
		return fail("node_id", "node_id %q is not valid: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", c.NodeID)
	}
	if c.DataDir == "" {
		return fail("data_dir", "data_dir must not be empty")
	}
	for _, a := range []struct{ key, val string }{{"http_addr", c.HTTPAddr}, {"raft_addr", c.RaftAddr}} {
		if err := checkHostPort(a.val); err != nil {
			return fail(a.key, "%s %q: %v", a.key, a.val, err)
		}
	}
	if c.HTTPAddr == c.RaftAddr {
		return fail(o.either("raft_addr", "http_addr"), "raft_addr and http_addr are both %q: they need different ports", c.RaftAddr)
	}
	for _, j := range c.Join {
		if err := checkHostPort(j); err != nil {
			return fail("join", "join address %q: %v (join takes the HTTP addresses of existing members)", j, err)
		}
	}
	if c.BootstrapExpect < 0 || c.BootstrapExpect > 9 {
		return fail("bootstrap_expect", "bootstrap_expect must be 0 (off) or the number of nodes that form the group, 1 to 9; got %d", c.BootstrapExpect)
	}
	if c.BootstrapExpect > 1 && len(c.Join) < c.BootstrapExpect-1 {
		return fail("bootstrap_expect", "bootstrap_expect = %d needs the other %d nodes' HTTP addresses in join (-join), got %d", c.BootstrapExpect, c.BootstrapExpect-1, len(c.Join))
	}
	if c.JoinTimeout <= 0 {
		return fail("join_timeout", "join_timeout must be positive, got %s", c.JoinTimeout)
	}
	switch c.LogLevel {
	case "trace", "debug", "info", "warn", "error":
	default:
		return fail("log_level", "log_level %q is not one of trace, debug, info, warn, error", c.LogLevel)
	}
	switch c.LogFormat {
	case "json", "text", "gitlab":
	default:
		return fail("log_format", "log_format %q is not json, text or gitlab (GitLab's geo.log lines)", c.LogFormat)
	}
	positive := []struct {
		key string
		d   time.Duration
	}{
		{"lease.ttl", c.Lease.TTL}, {"lease.retry_max", c.Lease.RetryMax},
		{"raft.heartbeat_timeout", c.Raft.HeartbeatTimeout}, {"raft.election_timeout", c.Raft.ElectionTimeout},
		{"raft.snapshot_interval", c.Raft.SnapshotInterval},
	}
	for _, p := range positive {
		if p.d <= 0 {
			return fail(p.key, "%s must be positive, got %s", p.key, p.d)
		}
	}
	if c.Lease.RetryMin < 0 {
		return fail("lease.retry_min", "lease.retry_min must not be negative, got %s", c.Lease.RetryMin)
	}
	if c.Lease.RetryMin > c.Lease.RetryMax {
		return fail(o.either("lease.retry_min", "lease.retry_max"), "lease.retry_min (%s) is greater than lease.retry_max (%s)", c.Lease.RetryMin, c.Lease.RetryMax)
	}
	if c.Lease.TTL < 500*time.Millisecond {
		return fail("lease.ttl", "lease.ttl %s is too short: a holder renews every ttl/3 through Raft; use at least 500ms", c.Lease.TTL)
	}
	if c.Raft.HeartbeatTimeout < 50*time.Millisecond || c.Raft.ElectionTimeout < 50*time.Millisecond {
		return fail("raft", "raft timeouts must be at least 50ms")
	}
	if c.Raft.SnapshotThreshold == 0 {
		return fail("raft.snapshot_threshold", "raft.snapshot_threshold must be at least 1")
	}
	if c.Source != nil {
		s := c.Source
		if c.Tracking == nil {
			return fail("source", "a source block needs a tracking block: the agent writes what it reads into the tracking database")
		}
		if s.DSN == "" {
			return fail("source.dsn", "source.dsn is empty: set %s or write dsn = \"postgres://...\" in the source block", EnvSourceDSN)
		}
		if s.BatchSize < 1 || s.BatchSize > 100000 {
			return fail("source.batch_size", "source.batch_size must be between 1 and 100000, got %d", s.BatchSize)
		}
		if s.PollInterval < time.Millisecond {
			return fail("source.poll_interval", "source.poll_interval must be at least 1ms, got %s", s.PollInterval)
		}
		if s.GapTimeout <= 0 {
			return fail("source.gap_timeout", "source.gap_timeout must be positive, got %s", s.GapTimeout)
		}
		if s.Start != StartHead && s.Start != StartOldest {
			return fail("source.start", "source.start %q is not %q or %q", s.Start, StartHead, StartOldest)
		}
	}
	if err := validateSecurity(c, o); err != nil {
		return err
	}
	if err := validateGitLab(c, o); err != nil {
		return err
	}
	if err := validateDelivery(c, o); err != nil {
		return err
	}
	if c.Tracking != nil {
		if c.Source == nil {
			return fail("tracking", "a tracking block without a source block does nothing: add a source block, or remove both to run a witness")
		}
		if c.Tracking.DSN == "" {
			return fail("tracking.dsn", "tracking.dsn is empty: set %s or write dsn = \"postgres://...\" in the tracking block", EnvTrackingDSN)
		}
	}
	return nil
}

func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		// Only the reason: the caller quotes the value, and net's message
		// repeats it unquoted, which could break the one-line error.
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return fmt.Errorf("not HOST:PORT: %s", ae.Err)
		}
		return fmt.Errorf("not HOST:PORT: %v", err)
	}
	if host == "" {
		return fmt.Errorf("the host is missing: give the address peers use to reach this node, such as 127.0.0.1")
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		return fmt.Errorf("%s is not an address peers can reach: give this node's own address", host)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return nil
}

// validateSecurity checks the tls and acl blocks, and that a node other
// machines can reach has both (design section 10).
func validateSecurity(c *Config, o origins) error {
	fail := func(key, format string, args ...any) error {
		return &Error{Where: o.of(key), Msg: fmt.Sprintf(format, args...)}
	}
	if t := c.TLS; t != nil {
		for _, f := range []struct{ key, path string }{
			{"tls.ca_file", t.CAFile}, {"tls.cert_file", t.CertFile}, {"tls.key_file", t.KeyFile},
		} {
			if f.path == "" {
				return fail(f.key, "%s is not set: the tls block needs ca_file, cert_file and key_file (create them with `geocursor tls ca create` and `geocursor tls cert create -node %s`)", f.key, c.NodeID)
			}
			if _, err := os.Stat(f.path); err != nil {
				return fail(f.key, "%s %q: %v", f.key, f.path, unwrapPathError(err))
			}
		}
	}
	if a := c.ACL; a != nil {
		if a.OperatorToken == "" {
			return fail("acl.operator_token", "acl.operator_token is empty: write operator_token_file = \"FILE\" in the acl block, a file that holds the token (generate one with `openssl rand -hex 32`), or set %s", EnvOperatorToken)
		}
		for _, tok := range tokenSpecs(a) {
			if *tok.value == "" || len(*tok.value) >= MinTokenLength {
				continue
			}
			what := tok.key
			if *tok.file != "" {
				what = fmt.Sprintf("the token in %s %q", tok.fileKey, *tok.file)
			}
			return fail(tok.key, "%s is %d characters long: use at least %d (generate one with `openssl rand -hex 32`)", what, len(*tok.value), MinTokenLength)
		}
		if a.ReadToken == a.OperatorToken {
			return fail("acl.read_token", "acl.read_token is the same as acl.operator_token: give it its own value, or leave it out (the operator token reads too)")
		}
		if a.JoinToken != "" && (a.JoinToken == a.OperatorToken || a.JoinToken == a.ReadToken) {
			return fail("acl.join_token", "acl.join_token is the same as another token of the acl block: give it its own value (generate one with `openssl rand -hex 32`), or leave it out (joins then take the operator token)")
		}
	}
	if c.Secure() || c.Insecure {
		return nil
	}
	for _, a := range []struct{ key, val string }{{"http_addr", c.HTTPAddr}, {"raft_addr", c.RaftAddr}} {
		if !isLoopback(a.val) {
			missing := "tls and acl blocks"
			switch {
			case c.TLS != nil:
				missing = "an acl block"
			case c.ACL != nil:
				missing = "a tls block"
			}
			return fail(a.key, "%s %q is not a loopback address, and anyone who reaches it could change the cluster: add %s (see the README's Security section), or set insecure = true", a.key, a.val, missing)
		}
	}
	return nil
}

// isLoopback reports whether the host of addr is a loopback address or
// localhost.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// validateDelivery checks the delivery block (design section 11).
func validateDelivery(c *Config, o origins) error {
	d := c.Delivery
	if d == nil {
		return nil
	}
	fail := func(key, format string, args ...any) error {
		return &Error{Where: o.of(key), Msg: fmt.Sprintf(format, args...)}
	}
	if c.Source == nil {
		return fail("delivery", "a delivery block needs a source block: a witness processes nothing to deliver")
	}
	if d.Sidekiq == nil && d.Cache == nil {
		return fail("delivery", "the delivery block is empty: add a sidekiq block, a cache block, or both")
	}
	if d.RateLimit < 0 {
		return fail("delivery.rate_limit", "delivery.rate_limit must not be negative, got %g (0 means no limit)", d.RateLimit)
	}
	if s := d.Sidekiq; s != nil {
		if err := checkRedis(o, "delivery.sidekiq.redis_url", EnvSidekiqRedisURL, s.RedisURL, "delivery.sidekiq.sentinels", s.Sentinels); err != nil {
			return err
		}
		if s.Queue == "" {
			return fail("delivery.sidekiq.queue", "delivery.sidekiq.queue must not be empty (GitLab routes Geo::EventWorker to a queue; the default is %q)", DefaultSidekiqQueue)
		}
		if s.MinReplicas < 0 {
			return fail("delivery.sidekiq.min_replicas", "delivery.sidekiq.min_replicas must not be negative, got %d: it is how many replicas must have a push before its jobs count as delivered (0: the master alone)", s.MinReplicas)
		}
	}
	if cc := d.Cache; cc != nil {
		if err := checkRedis(o, "delivery.cache.redis_url", EnvCacheRedisURL, cc.RedisURL, "delivery.cache.sentinels", cc.Sentinels); err != nil {
			return err
		}
	}
	return nil
}

// checkRedis checks one Redis of the config: the URL at urlKey (which the
// environment variable env may have set) is a redis://, rediss:// or
// unix:// URL; with sentinels (at sentinelsKey) each is HOST:PORT, and the
// URL's host is the name of the master to ask them for, as in GitLab's
// resque.yml (redis://:PASSWORD@gitlab-redis/0), so it has no port. Every
// block that names a Redis checks it here.
func checkRedis(o origins, urlKey, env, url, sentinelsKey string, sentinels []string) error {
	fail := func(key, format string, args ...any) error {
		return &Error{Where: o.of(key), Msg: fmt.Sprintf(format, args...)}
	}
	if url == "" {
		attr := urlKey[strings.LastIndex(urlKey, ".")+1:]
		return fail(urlKey, "%s is empty: set %s or write %s = \"redis://...\"", urlKey, env, attr)
	}
	// Never quote the URL or url.Parse's error, which quotes it: it
	// carries the password.
	u, err := neturl.Parse(url)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss" && u.Scheme != "unix") || (u.Scheme != "unix" && u.Host == "") {
		return fail(urlKey, "%s is not a redis://, rediss:// or unix:// URL", urlKey)
	}
	if len(sentinels) == 0 {
		return nil
	}
	seen := map[string]bool{}
	for _, s := range sentinels {
		if err := checkSentinelAddr(s); err != nil {
			return fail(sentinelsKey, "%s: %q is not HOST:PORT (%v)", sentinelsKey, s, err)
		}
		if seen[s] {
			return fail(sentinelsKey, "%s lists %q twice", sentinelsKey, s)
		}
		seen[s] = true
	}
	if u.Scheme == "unix" {
		return fail(urlKey, "with %s, %s names the master to ask them for (redis://:PASSWORD@MASTER_NAME/DB, as in GitLab's resque.yml); a unix:// socket names none", sentinelsKey, urlKey)
	}
	if u.Port() != "" {
		return fail(urlKey, "with %s, the host of %s is the name of the master to ask them for, as in GitLab's resque.yml (redis://:PASSWORD@gitlab-redis/0), and takes no port: drop \":%s\"", sentinelsKey, urlKey, u.Port())
	}
	return nil
}

// checkSentinelAddr says why s is not a Sentinel's HOST:PORT, nil if it is.
func checkSentinelAddr(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		// Only the reason: the caller quotes the value.
		var ae *net.AddrError
		if errors.As(err, &ae) {
			return errors.New(ae.Err)
		}
		return err
	}
	if host == "" {
		return errors.New("the host is missing")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	return nil
}

// validateGitLab checks the gitlab block (design section 13).
func validateGitLab(c *Config, o origins) error {
	g := c.GitLab
	if g == nil {
		return nil
	}
	fail := func(key, format string, args ...any) error {
		return &Error{Where: o.of(key), Msg: fmt.Sprintf(format, args...)}
	}
	if c.Source == nil {
		return fail("gitlab", "a gitlab block needs a source block: a witness processes nothing, so it has no part in GitLab's cursor lease")
	}
	if strings.TrimSpace(g.SiteName) == "" {
		return fail("gitlab.site_name", "gitlab.site_name is empty: give this site's name as GitLab knows it (geo_nodes.name, Admin > Geo > Sites)")
	}
	return checkRedis(o, "gitlab.shared_state_redis_url", EnvSharedStateRedisURL, g.SharedStateRedisURL, "gitlab.sentinels", g.Sentinels)
}

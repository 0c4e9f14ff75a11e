package config

import (
	"fmt"
	"math"
	"math/big"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// Error is a configuration error. Where is FILE:LINE,COL for a value from
// the file, or the environment variable or flag that carried it.
type Error struct {
	Where string
	Msg   string
}

func (e *Error) Error() string {
	if e.Where == "" {
		return e.Msg
	}
	return e.Where + ": " + e.Msg
}

// Overrides are the values given as command-line flags; nil means not given.
type Overrides struct {
	NodeID   *string
	DataDir  *string
	HTTPAddr *string
	RaftAddr *string
	Join     *[]string
	LogLevel *string
}

// Load reads the HCL file at path, applies the environment (a list of
// KEY=VALUE as from os.Environ) and then the flags, and validates the
// result. Any error is an *Error.
func Load(path string, environ []string, flags Overrides) (*Config, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{Where: path, Msg: fmt.Sprintf("cannot read config file: %v", err)}
	}
	env := envMap(environ)
	cfg, origins, err := parse(src, path, env)
	if err != nil {
		return nil, err
	}
	applyEnv(cfg, origins, env)
	applyFlags(cfg, origins, flags)
	if err := readTokenFiles(cfg.ACL, origins); err != nil {
		return nil, err
	}
	if cfg.DataDir == "" && cfg.NodeID != "" {
		cfg.DataDir = "data/" + cfg.NodeID
		origins["data_dir"] = origins["node_id"]
	}
	if err := validate(cfg, origins); err != nil {
		return nil, err
	}
	return cfg, nil
}

// origins remembers where each setting came from, keyed by its HCL name
// ("source.dsn"), so validation can point at the right place.
type origins map[string]string

// of says where key's value came from. A key left at its default is
// blamed on its block when the file has one ("source.dsn" on the source
// block), else on nothing: the message alone names the key.
func (o origins) of(key string) string {
	if w, ok := o[key]; ok {
		return w
	}
	if blk, _, ok := strings.Cut(key, "."); ok {
		return o[blk]
	}
	return ""
}

// either returns a, unless only b was set explicitly: an error about two
// settings points at one that the user wrote.
func (o origins) either(a, b string) string {
	if _, ok := o[a]; !ok {
		if _, ok := o[b]; ok {
			return b
		}
	}
	return a
}

func envMap(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

var topSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "node_id"}, {Name: "data_dir"}, {Name: "http_addr"}, {Name: "raft_addr"},
		{Name: "join"}, {Name: "join_timeout"}, {Name: "log_level"}, {Name: "log_format"}, {Name: "insecure"},
		{Name: "bootstrap_expect"}, {Name: "leave_on_terminate"},
	},
	Blocks: []hcl.BlockHeaderSchema{{Type: "lease"}, {Type: "source"}, {Type: "tracking"}, {Type: "raft"}, {Type: "tls"}, {Type: "acl"}, {Type: "delivery"}, {Type: "gitlab"}},
}

var blockSchemas = map[string]*hcl.BodySchema{
	"lease": {Attributes: []hcl.AttributeSchema{{Name: "ttl"}, {Name: "retry_min"}, {Name: "retry_max"}, {Name: "prefer_follower"}}},
	"source": {Attributes: []hcl.AttributeSchema{
		{Name: "dsn"}, {Name: "batch_size"}, {Name: "poll_interval"}, {Name: "gap_timeout"}, {Name: "start"},
	}},
	"delivery": {
		Attributes: []hcl.AttributeSchema{{Name: "rate_limit"}},
		Blocks:     []hcl.BlockHeaderSchema{{Type: "sidekiq"}, {Type: "cache"}},
	},
	"delivery.sidekiq": {Attributes: []hcl.AttributeSchema{{Name: "redis_url"}, {Name: "queue"}, {Name: "namespace"}, {Name: "sentinels"}, {Name: "min_replicas"}}},
	"delivery.cache":   {Attributes: []hcl.AttributeSchema{{Name: "redis_url"}, {Name: "namespace"}, {Name: "sentinels"}}},
	"tracking":         {Attributes: []hcl.AttributeSchema{{Name: "dsn"}}},
	"gitlab":           {Attributes: []hcl.AttributeSchema{{Name: "site_name"}, {Name: "shared_state_redis_url"}, {Name: "sentinels"}}},
	"tls":              {Attributes: []hcl.AttributeSchema{{Name: "ca_file"}, {Name: "cert_file"}, {Name: "key_file"}}},
	"acl": {Attributes: []hcl.AttributeSchema{
		{Name: "operator_token"}, {Name: "read_token"}, {Name: "operator_token_file"}, {Name: "read_token_file"},
		{Name: "join_token"}, {Name: "join_token_file"},
	}},
	"raft": {Attributes: []hcl.AttributeSchema{
		{Name: "heartbeat_timeout"}, {Name: "election_timeout"}, {Name: "snapshot_threshold"},
		{Name: "snapshot_interval"}, {Name: "trailing_logs"},
	}},
}

// decoder evaluates attributes and stops at the first error, which carries
// the attribute's position.
type decoder struct {
	ctx     *hcl.EvalContext
	origins origins
	err     error
}

func where(r hcl.Range) string {
	return fmt.Sprintf("%s:%d,%d", r.Filename, r.Start.Line, r.Start.Column)
}

func diagError(diags hcl.Diagnostics) error {
	for _, d := range diags {
		if d.Severity != hcl.DiagError {
			continue
		}
		msg := d.Summary
		if d.Detail != "" {
			msg += ": " + d.Detail
		}
		if d.Subject != nil {
			return &Error{Where: where(*d.Subject), Msg: msg}
		}
		return &Error{Msg: msg}
	}
	return nil
}

func (d *decoder) value(key string, a *hcl.Attribute, ty cty.Type) (cty.Value, bool) {
	if d.err != nil || a == nil {
		return cty.NilVal, false
	}
	v, diags := a.Expr.Value(d.ctx)
	if diags.HasErrors() {
		d.err = diagError(diags)
		return cty.NilVal, false
	}
	pos := where(a.Expr.Range())
	if v.IsNull() {
		d.err = &Error{Where: pos, Msg: fmt.Sprintf("%s must not be null", key)}
		return cty.NilVal, false
	}
	cv, err := convert.Convert(v, ty)
	if err != nil {
		d.err = &Error{Where: pos, Msg: fmt.Sprintf("%s must be %s, got %s", key, ty.FriendlyName(), v.Type().FriendlyName())}
		return cty.NilVal, false
	}
	d.origins[key] = pos
	return cv, true
}

func (d *decoder) boolean(key string, a *hcl.Attribute, dst *bool) {
	if v, ok := d.value(key, a, cty.Bool); ok {
		*dst = v.True()
	}
}

func (d *decoder) str(key string, a *hcl.Attribute, dst *string) {
	if v, ok := d.value(key, a, cty.String); ok {
		*dst = v.AsString()
	}
}

func (d *decoder) strList(key string, a *hcl.Attribute, dst *[]string) {
	v, ok := d.value(key, a, cty.List(cty.String))
	if !ok {
		return
	}
	out := []string{}
	for _, e := range v.AsValueSlice() {
		if e.IsNull() {
			d.err = &Error{Where: d.origins[key], Msg: key + " must not contain null"}
			return
		}
		out = append(out, e.AsString())
	}
	*dst = out
}

func (d *decoder) duration(key string, a *hcl.Attribute, dst *time.Duration) {
	v, ok := d.value(key, a, cty.String)
	if !ok {
		return
	}
	dur, err := time.ParseDuration(v.AsString())
	if err != nil {
		d.err = &Error{Where: d.origins[key], Msg: fmt.Sprintf("%s: %q is not a duration: write it like \"500ms\", \"5s\" or \"1h\"", key, v.AsString())}
		return
	}
	*dst = dur
}

// count decodes a non-negative integer into dst; a negative one is an
// error at the key.
func (d *decoder) count(key string, a *hcl.Attribute, dst *uint64) {
	n := int64(*dst)
	d.integer(key, a, &n)
	*dst = uint64(max(n, 0))
	if n < 0 && d.err == nil {
		d.err = &Error{Where: d.origins[key], Msg: key + " must not be negative"}
	}
}

func (d *decoder) integer(key string, a *hcl.Attribute, dst *int64) {
	v, ok := d.value(key, a, cty.Number)
	if !ok {
		return
	}
	// Never format the big.Float itself: its decimal form of 1e-9999999
	// takes minutes.
	bf := v.AsBigFloat()
	if !bf.IsInt() {
		msg := key + " must be a whole number"
		if f, _ := bf.Float64(); f != 0 && !math.IsInf(f, 0) {
			msg += fmt.Sprintf(", got %g", f)
		}
		d.err = &Error{Where: d.origins[key], Msg: msg}
		return
	}
	n, acc := bf.Int64()
	if acc != big.Exact {
		d.err = &Error{Where: d.origins[key], Msg: key + " is out of range"}
		return
	}
	*dst = n
}

// maxNumberExp bounds number literals to about float64's range (2^1024).
const maxNumberExp = 1024

// checkNumbers refuses number literals far beyond any setting's range
// before anything evaluates them: cty turns a number into a string digit by
// digit, so node_id = 1e999999 would take seconds and give a megabyte of
// error message.
func checkNumbers(body hcl.Body) error {
	b, ok := body.(*hclsyntax.Body)
	if !ok {
		return nil
	}
	var err error
	hclsyntax.VisitAll(b, func(node hclsyntax.Node) hcl.Diagnostics {
		lit, ok := node.(*hclsyntax.LiteralValueExpr)
		if !ok || err != nil || !lit.Val.IsKnown() || lit.Val.IsNull() || lit.Val.Type() != cty.Number {
			return nil
		}
		bf := lit.Val.AsBigFloat()
		if exp := bf.MantExp(nil); bf.IsInf() || exp > maxNumberExp || exp < -maxNumberExp {
			err = &Error{Where: where(lit.SrcRange), Msg: "number is out of range"}
		}
		return nil
	})
	return err
}

func parse(src []byte, path string, env map[string]string) (*Config, origins, error) {
	file, diags := hclsyntax.ParseConfig(src, path, hcl.InitialPos)
	if diags.HasErrors() {
		return nil, nil, diagError(diags)
	}
	if err := checkNumbers(file.Body); err != nil {
		return nil, nil, err
	}
	content, diags := file.Body.Content(topSchema)
	if diags.HasErrors() {
		return nil, nil, diagError(diags)
	}
	envVals := make(map[string]cty.Value, len(env))
	for k, v := range env {
		envVals[k] = cty.StringVal(v)
	}
	d := &decoder{
		ctx:     &hcl.EvalContext{Variables: map[string]cty.Value{"env": cty.ObjectVal(envVals)}},
		origins: origins{},
	}
	cfg := defaults()
	at := content.Attributes
	d.str("node_id", at["node_id"], &cfg.NodeID)
	d.str("data_dir", at["data_dir"], &cfg.DataDir)
	d.str("http_addr", at["http_addr"], &cfg.HTTPAddr)
	d.str("raft_addr", at["raft_addr"], &cfg.RaftAddr)
	d.strList("join", at["join"], &cfg.Join)
	d.duration("join_timeout", at["join_timeout"], &cfg.JoinTimeout)
	d.str("log_level", at["log_level"], &cfg.LogLevel)
	d.str("log_format", at["log_format"], &cfg.LogFormat)
	d.boolean("insecure", at["insecure"], &cfg.Insecure)
	d.boolean("leave_on_terminate", at["leave_on_terminate"], &cfg.LeaveOnTerminate)
	var expect int64
	d.integer("bootstrap_expect", at["bootstrap_expect"], &expect)
	cfg.BootstrapExpect = int(expect)

	seen := map[string]hcl.Range{}
	for _, blk := range content.Blocks {
		if d.err != nil {
			break
		}
		if prev, dup := seen[blk.Type]; dup {
			return nil, nil, &Error{Where: where(blk.DefRange), Msg: fmt.Sprintf("duplicate %s block (the first is at %s): merge them into one", blk.Type, where(prev))}
		}
		seen[blk.Type] = blk.DefRange
		if len(blk.Labels) > 0 {
			return nil, nil, &Error{Where: where(blk.DefRange), Msg: fmt.Sprintf("%s block takes no labels", blk.Type)}
		}
		bc, diags := blk.Body.Content(blockSchemas[blk.Type])
		if diags.HasErrors() {
			return nil, nil, diagError(diags)
		}
		d.origins[blk.Type] = where(blk.DefRange)
		ba := bc.Attributes
		switch blk.Type {
		case "lease":
			d.duration("lease.ttl", ba["ttl"], &cfg.Lease.TTL)
			d.duration("lease.retry_min", ba["retry_min"], &cfg.Lease.RetryMin)
			d.duration("lease.retry_max", ba["retry_max"], &cfg.Lease.RetryMax)
			d.boolean("lease.prefer_follower", ba["prefer_follower"], &cfg.Lease.PreferFollower)
		case "raft":
			d.duration("raft.heartbeat_timeout", ba["heartbeat_timeout"], &cfg.Raft.HeartbeatTimeout)
			d.duration("raft.election_timeout", ba["election_timeout"], &cfg.Raft.ElectionTimeout)
			d.duration("raft.snapshot_interval", ba["snapshot_interval"], &cfg.Raft.SnapshotInterval)
			d.count("raft.snapshot_threshold", ba["snapshot_threshold"], &cfg.Raft.SnapshotThreshold)
			d.count("raft.trailing_logs", ba["trailing_logs"], &cfg.Raft.TrailingLogs)
		case "source":
			src := &SourceConfig{BatchSize: DefaultBatchSize, PollInterval: DefaultPollInterval, GapTimeout: DefaultGapTimeout}
			d.str("source.dsn", ba["dsn"], &src.DSN)
			n := int64(src.BatchSize)
			d.integer("source.batch_size", ba["batch_size"], &n)
			src.BatchSize = int(n)
			d.duration("source.poll_interval", ba["poll_interval"], &src.PollInterval)
			d.duration("source.gap_timeout", ba["gap_timeout"], &src.GapTimeout)
			src.Start = StartHead
			d.str("source.start", ba["start"], &src.Start)
			cfg.Source = src
		case "tracking":
			tr := &TrackingConfig{}
			d.str("tracking.dsn", ba["dsn"], &tr.DSN)
			cfg.Tracking = tr
		case "tls":
			t := &TLSConfig{}
			d.str("tls.ca_file", ba["ca_file"], &t.CAFile)
			d.str("tls.cert_file", ba["cert_file"], &t.CertFile)
			d.str("tls.key_file", ba["key_file"], &t.KeyFile)
			cfg.TLS = t
		case "acl":
			a := &ACLConfig{}
			d.str("acl.operator_token", ba["operator_token"], &a.OperatorToken)
			d.str("acl.read_token", ba["read_token"], &a.ReadToken)
			d.str("acl.operator_token_file", ba["operator_token_file"], &a.OperatorTokenFile)
			d.str("acl.read_token_file", ba["read_token_file"], &a.ReadTokenFile)
			a.OperatorTokenEnv = envVariableOf(ba["operator_token"])
			a.ReadTokenEnv = envVariableOf(ba["read_token"])
			d.str("acl.join_token", ba["join_token"], &a.JoinToken)
			d.str("acl.join_token_file", ba["join_token_file"], &a.JoinTokenFile)
			a.JoinTokenEnv = envVariableOf(ba["join_token"])
			cfg.ACL = a
		case "gitlab":
			g := &GitLabConfig{}
			d.str("gitlab.site_name", ba["site_name"], &g.SiteName)
			d.str("gitlab.shared_state_redis_url", ba["shared_state_redis_url"], &g.SharedStateRedisURL)
			d.strList("gitlab.sentinels", ba["sentinels"], &g.Sentinels)
			cfg.GitLab = g
		case "delivery":
			del, err := d.delivery(bc)
			if err != nil {
				return nil, nil, err
			}
			cfg.Delivery = del
		}
	}
	if d.err != nil {
		return nil, nil, d.err
	}
	return &cfg, d.origins, nil
}

// delivery decodes the delivery block's content: rate_limit and the
// sidekiq and cache blocks, at most one of each.
func (d *decoder) delivery(content *hcl.BodyContent) (*DeliveryConfig, error) {
	del := &DeliveryConfig{}
	if a := content.Attributes["rate_limit"]; a != nil {
		if v, ok := d.value("delivery.rate_limit", a, cty.Number); ok {
			del.RateLimit, _ = v.AsBigFloat().Float64()
		}
	}
	seen := map[string]hcl.Range{}
	for _, blk := range content.Blocks {
		key := "delivery." + blk.Type
		if prev, dup := seen[blk.Type]; dup {
			return nil, &Error{Where: where(blk.DefRange), Msg: fmt.Sprintf("duplicate %s block (the first is at %s): merge them into one", key, where(prev))}
		}
		seen[blk.Type] = blk.DefRange
		if len(blk.Labels) > 0 {
			return nil, &Error{Where: where(blk.DefRange), Msg: key + " block takes no labels"}
		}
		bc, diags := blk.Body.Content(blockSchemas[key])
		if diags.HasErrors() {
			return nil, diagError(diags)
		}
		d.origins[key] = where(blk.DefRange)
		ba := bc.Attributes
		switch blk.Type {
		case "sidekiq":
			sk := &SidekiqConfig{Queue: DefaultSidekiqQueue}
			d.str(key+".redis_url", ba["redis_url"], &sk.RedisURL)
			d.str(key+".queue", ba["queue"], &sk.Queue)
			d.str(key+".namespace", ba["namespace"], &sk.Namespace)
			d.strList(key+".sentinels", ba["sentinels"], &sk.Sentinels)
			var minReplicas int64
			d.integer(key+".min_replicas", ba["min_replicas"], &minReplicas)
			sk.MinReplicas = int(minReplicas)
			del.Sidekiq = sk
		case "cache":
			c := &CacheConfig{Namespace: DefaultCacheNamespace}
			d.str(key+".redis_url", ba["redis_url"], &c.RedisURL)
			d.str(key+".namespace", ba["namespace"], &c.Namespace)
			d.strList(key+".sentinels", ba["sentinels"], &c.Sentinels)
			del.Cache = c
		}
	}
	return del, d.err
}

// Environment variables that override the file.
const (
	EnvNodeID      = "GEOCURSOR_NODE_ID"
	EnvDataDir     = "GEOCURSOR_DATA_DIR"
	EnvHTTPAddr    = "GEOCURSOR_HTTP_ADDR"
	EnvRaftAddr    = "GEOCURSOR_RAFT_ADDR"
	EnvJoin        = "GEOCURSOR_JOIN"
	EnvLogLevel    = "GEOCURSOR_LOG_LEVEL"
	EnvSourceDSN   = "GEOCURSOR_SOURCE_DSN"
	EnvTrackingDSN = "GEOCURSOR_TRACKING_DSN"
	// The tokens override an acl block that exists, like the DSNs.
	EnvOperatorToken = "GEOCURSOR_OPERATOR_TOKEN"
	EnvReadToken     = "GEOCURSOR_READ_TOKEN"
	EnvJoinToken     = "GEOCURSOR_JOIN_TOKEN"
	// The Redis URLs (secrets, with their passwords) override the blocks
	// that exist.
	EnvSidekiqRedisURL = "GEOCURSOR_SIDEKIQ_REDIS_URL"
	EnvCacheRedisURL   = "GEOCURSOR_CACHE_REDIS_URL"
	// EnvSharedStateRedisURL overrides gitlab.shared_state_redis_url.
	EnvSharedStateRedisURL = "GEOCURSOR_SHARED_STATE_REDIS_URL"
)

func applyEnv(cfg *Config, o origins, env map[string]string) {
	set := func(name, key string, dst *string) bool {
		if v, ok := env[name]; ok && v != "" {
			*dst = v
			o[key] = "environment variable " + name
			return true
		}
		return false
	}
	set(EnvNodeID, "node_id", &cfg.NodeID)
	set(EnvDataDir, "data_dir", &cfg.DataDir)
	set(EnvHTTPAddr, "http_addr", &cfg.HTTPAddr)
	set(EnvRaftAddr, "raft_addr", &cfg.RaftAddr)
	set(EnvLogLevel, "log_level", &cfg.LogLevel)
	if v, ok := env[EnvJoin]; ok && v != "" {
		cfg.Join = SplitList(v)
		o["join"] = "environment variable " + EnvJoin
	}
	// The DSNs override a block that exists; they never turn a witness into
	// a processing node by themselves.
	if cfg.Source != nil {
		set(EnvSourceDSN, "source.dsn", &cfg.Source.DSN)
	}
	if cfg.Tracking != nil {
		set(EnvTrackingDSN, "tracking.dsn", &cfg.Tracking.DSN)
	}
	if a := cfg.ACL; a != nil {
		if set(EnvOperatorToken, "acl.operator_token", &a.OperatorToken) {
			a.OperatorTokenEnv = EnvOperatorToken
		}
		if set(EnvReadToken, "acl.read_token", &a.ReadToken) {
			a.ReadTokenEnv = EnvReadToken
		}
		if set(EnvJoinToken, "acl.join_token", &a.JoinToken) {
			a.JoinTokenEnv = EnvJoinToken
		}
	}
	if g := cfg.GitLab; g != nil {
		set(EnvSharedStateRedisURL, "gitlab.shared_state_redis_url", &g.SharedStateRedisURL)
	}
	if d := cfg.Delivery; d != nil {
		if d.Sidekiq != nil {
			set(EnvSidekiqRedisURL, "delivery.sidekiq.redis_url", &d.Sidekiq.RedisURL)
		}
		if d.Cache != nil {
			set(EnvCacheRedisURL, "delivery.cache.redis_url", &d.Cache.RedisURL)
		}
	}
}

func applyFlags(cfg *Config, o origins, f Overrides) {
	set := func(flag, key string, src *string, dst *string) {
		if src != nil {
			*dst = *src
			o[key] = "flag -" + flag
		}
	}
	set("node-id", "node_id", f.NodeID, &cfg.NodeID)
	set("data-dir", "data_dir", f.DataDir, &cfg.DataDir)
	set("http-addr", "http_addr", f.HTTPAddr, &cfg.HTTPAddr)
	set("raft-addr", "raft_addr", f.RaftAddr, &cfg.RaftAddr)
	set("log-level", "log_level", f.LogLevel, &cfg.LogLevel)
	if f.Join != nil {
		cfg.Join = *f.Join
		o["join"] = "flag -join"
	}
}

// SplitList splits a comma-separated list, dropping blanks.
func SplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/hashicorp/go-hclog"
	"github.com/redis/go-redis/v9"

	"github.com/geocursor/geocursor/cluster"
	"github.com/geocursor/geocursor/config"
)

// envHistoryFile names a file to which the agent appends every command it
// issues, for the linearizability checker of the fault tests.
const envHistoryFile = "GEOCURSOR_HISTORY_FILE"

func runAgent(args []string, stderr io.Writer) error {
	fs := newFlagSet("agent", stderr)
	var (
		configPath                                       = fs.String("config", "", "path of the HCL configuration file (required)")
		nodeID, dataDir, httpAddr, raftAddr, join, level stringFlag
	)
	fs.Var(&nodeID, "node-id", "this node's ID, unique in the group (overrides node_id)")
	fs.Var(&dataDir, "data-dir", "directory for Raft state (overrides data_dir)")
	fs.Var(&httpAddr, "http-addr", "HOST:PORT of the HTTP API (overrides http_addr)")
	fs.Var(&raftAddr, "raft-addr", "HOST:PORT for Raft traffic (overrides raft_addr)")
	fs.Var(&join, "join", "HTTP addresses of existing members, comma-separated (overrides join)")
	fs.Var(&level, "log-level", "trace, debug, info, warn or error (overrides log_level)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *configPath == "" {
		return usagef("agent: -config FILE is required (see config.hcl in the repository for an example)")
	}
	over := config.Overrides{NodeID: nodeID.value, DataDir: dataDir.value, HTTPAddr: httpAddr.value, RaftAddr: raftAddr.value, LogLevel: level.value}
	if join.value != nil {
		j := config.SplitList(*join.value)
		over.Join = &j
	}
	cfg, err := config.Load(*configPath, os.Environ(), over)
	if err != nil {
		return &usageError{msg: err.Error()}
	}

	lg := newLogs(cfg, stderr)
	logger := lg.agent
	// go-redis logs reconnects and Sentinel's master switches through a
	// package-level logger; the agent runs one node per process, so it is
	// set once, here, to write through the agent's own (JSON) logger.
	redis.SetLogger(redisLogger{logger.Named("redis")})
	sec, err := loadSecurity(cfg, logger)
	if err != nil {
		return &usageError{msg: err.Error()}
	}
	ctx, stop := signalContext(logger)
	defer stop()
	reloads := reloadOnHangup(ctx, logger, func() error {
		fresh, err := config.Load(*configPath, os.Environ(), over)
		if err != nil {
			return err
		}
		if err := sec.reload(fresh, logger); err != nil {
			return err
		}
		lg.setLevel(fresh.LogLevel)
		return nil
	})
	defer reloads()
	if err := agent(ctx, cfg, sec, lg); err != nil {
		logger.Error("agent stopped", "error", err)
		return err
	}
	return nil
}

// logs are the agent's two loggers: its own, and Raft's, which is quieter
// (warn, or the agent's level when that is debug or trace). Both write to
// the same output in the same format, and both change level on SIGHUP.
type logs struct {
	agent, raft hclog.Logger
}

func newLogs(cfg *config.Config, out io.Writer) logs {
	l := logs{agent: newLogger(cfg, out, "geocursor"), raft: newLogger(cfg, out, "geocursor.raft")}
	l.setLevel(cfg.LogLevel)
	return l
}

// setLevel sets the agent's level and Raft's.
func (l logs) setLevel(level string) {
	lvl := hclog.LevelFromString(level)
	l.agent.SetLevel(lvl)
	raftLevel := hclog.Warn
	if lvl <= hclog.Debug {
		raftLevel = lvl
	}
	l.raft.SetLevel(raftLevel)
}

func newLogger(cfg *config.Config, out io.Writer, name string) hclog.Logger {
	if cfg.LogFormat == "gitlab" {
		// GitLab's geo.log shape, made from hclog's JSON lines.
		out = newGitLabLogWriter(out)
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:       name,
		Level:      hclog.LevelFromString(cfg.LogLevel),
		Output:     out,
		JSONFormat: cfg.LogFormat == "json" || cfg.LogFormat == "gitlab",
	}).With("pid", os.Getpid(), "node_id", cfg.NodeID)
}

// signalContext returns a context cancelled by the first SIGINT or SIGTERM;
// a second one exits at once, for an operator who will not wait.
func signalContext(logger hclog.Logger) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig, ok := <-sigs
		if !ok {
			return
		}
		logger.Info("shutting down: releasing the lease and closing the stores (signal again to exit at once)", "signal", sig.String())
		cancel()
		if sig, ok = <-sigs; ok {
			logger.Warn("second signal: exiting now", "signal", sig.String())
			os.Exit(1)
		}
	}()
	return ctx, func() { signal.Stop(sigs); cancel() }
}

// agent runs one peer until ctx is cancelled.
func agent(ctx context.Context, cfg *config.Config, sec *security, lg logs) error {
	logger := lg.agent
	if cfg.Insecure && !cfg.Secure() {
		logger.Warn("insecure = true: this node listens without tls and acl, and anyone who reaches its ports can change the cluster",
			"http_addr", cfg.HTTPAddr, "raft_addr", cfg.RaftAddr)
	}
	reg, err := newMetrics()
	if err != nil {
		return err
	}
	node, err := cluster.Open(ctx, cluster.Config{
		NodeID: cfg.NodeID, DataDir: cfg.DataDir, HTTPAddr: cfg.HTTPAddr, RaftAddr: cfg.RaftAddr, Metrics: reg,
		Raft: cfg.Raft, Logger: logger, RaftLogger: lg.raft, PreferFollower: cfg.Lease.PreferFollower, Witness: cfg.Source == nil,
		TLS: sec.tls, ACL: sec.acl, OperatorToken: sec.operatorToken,
		Join: cfg.Join, JoinTimeout: cfg.JoinTimeout, BootstrapExpect: cfg.BootstrapExpect, LeaveOnTerminate: cfg.LeaveOnTerminate,
		Version: buildInfo().Version, Commit: buildInfo().Commit, SiteName: siteName(cfg),
	})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer func() {
		if err := node.Close(); err != nil {
			logger.Warn("close node", "error", err)
		}
		logger.Info("stopped")
	}()
	if path := os.Getenv(envHistoryFile); path != "" {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return fmt.Errorf("open %s %s: %w", envHistoryFile, path, err)
		}
		defer f.Close()
		node.SetHistory(f)
		logger.Warn("recording every command to a history file (fault testing only)", "path", path)
	}
	logger.Info("agent started", "http_addr", cfg.HTTPAddr, "raft_addr", cfg.RaftAddr, "data_dir", cfg.DataDir,
		"witness", cfg.Source == nil, "tls", cfg.TLS != nil, "acl", cfg.ACL != nil, "version", buildInfo().Version, "commit", buildInfo().Commit)

	if cfg.Source != nil {
		if err := runCursor(ctx, cfg, node, reg, logger); err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("cursor: %w", err)
		}
		return nil
	}
	<-ctx.Done()
	return nil
}

// siteName is gitlab.site_name, "" without a gitlab block.
func siteName(cfg *config.Config) string {
	if cfg.GitLab == nil {
		return ""
	}
	return cfg.GitLab.SiteName
}

// redisLogger writes go-redis's own lines (reconnects, Sentinel switching
// masters) as warnings of the agent's logger, so that every line of the
// agent has the log_format's shape.
type redisLogger struct{ logger hclog.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.logger.Warn(fmt.Sprintf(format, v...))
}

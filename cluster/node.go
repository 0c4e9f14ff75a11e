package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/bbolt"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/config"
	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/tlsutil"
)

// Config is what a Node needs to run.
type Config struct {
	NodeID   string
	DataDir  string
	HTTPAddr string
	RaftAddr string
	Raft     config.RaftConfig
	// Logger receives the node's logs, RaftLogger Raft's own (nil:
	// Logger.Named("raft")).
	Logger     hclog.Logger
	RaftLogger hclog.Logger
	// TLS, when set, makes the Raft port and the HTTP API speak only TLS,
	// verified both ways against the cluster's CA (design section 10).
	TLS *tlsutil.Node
	// ACL, when set, makes every endpoint but the health checks ask for a
	// token.
	ACL *ACL
	// OperatorToken is what this node sends to its peers without TLS, when
	// the ACL asks for one (peers have no certificate to prove themselves
	// with then).
	OperatorToken string
	// Version and Commit say what the node was built from (status).
	Version, Commit string
	// SiteName, when set (gitlab.site_name), labels GitLab's geo_* gauges
	// as GitLab does: name and url, both the site's name
	// (ee/app/services/geo/metrics_update_service.rb).
	SiteName string
	// Join lists the HTTP addresses of members to join through when the
	// node finds no Raft state; JoinTimeout bounds the attempt.
	Join        []string
	JoinTimeout time.Duration
	// PreferFollower is lease.prefer_follower: keep the lease holder off
	// the Raft leader (handoff.go).
	PreferFollower bool
	// Witness says the node does not process (its config has no source
	// block): it advertises so in its join and its members row, and the
	// leader never grants it the lease.
	Witness bool
	// BootstrapExpect and LeaveOnTerminate are config's (see there).
	BootstrapExpect  int
	LeaveOnTerminate bool
	// Metrics is the registry GET /v1/metrics serves, in which the node
	// registers its own collectors (nil: a registry of the node's own).
	Metrics *prometheus.Registry
}

// HTTP server limits: a request gets its headers in 5s and its body in
// 10s (a body sent a byte a second is cut off), an answer must be written
// within 15s (a forwarded command waits for a leader for at most a few
// election timeouts). At most maxConnections connections are open at once,
// maxConnectionsPerClient of one address other than loopback; when full,
// the connection that waited longest without a request goes (connGuard).
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 15 * time.Second
	idleTimeout       = 60 * time.Second
	maxHeaderBytes    = 16 << 10
	maxConnections    = 256
	// maxConnectionsPerClient: a peer needs a handful (forwarding, status
	// of each member, the UI's stream); an operator's scripts a few more.
	maxConnectionsPerClient = 32
)

// Node is one peer of the Raft group with its HTTP API.
type Node struct {
	cfg       Config
	logger    hclog.Logger
	fsm       *fsm.FSM
	raft      *raft.Raft
	transport *raft.NetworkTransport
	store     *raftboltdb.BoltStore
	// logs is store as Raft's log store, with its write failures kept
	// for readiness.
	logs     *watchedLogStore
	hadState bool

	httpServer *http.Server
	// client reaches the other members: forwarding, joins, probes.
	client *api.Client

	statusSource atomic.Pointer[StatusSource]
	// readinessCheck adds the agent's own reasons to readiness.
	readinessCheck atomic.Pointer[ReadinessCheck]
	operator       atomic.Pointer[Operator]
	metrics        *nodeMetrics
	recent         recorder
	history        history
	// lastClockWarning is the stamp of the last warning that this leader's
	// clock is behind the state's (see checkClock).
	lastClockWarning atomic.Int64
	// caughtUpTerm is the term in which this node, as leader, has applied
	// every entry of earlier terms (its barrier after the election): only
	// then does its local state show every command answered before, and
	// may it refuse a command from that state without proposing it.
	caughtUpTerm atomic.Uint64

	// peers is what this node's heartbeats, as leader, say of the others.
	peers peerHealth
	// gate holds, as leader, the commands the group does not speak yet
	// (protocol.go).
	gate gate

	observer *raft.Observer
	stop     chan struct{}
	wg       sync.WaitGroup
	closing  atomic.Bool
	closed   sync.Once
	// raftUp is set once Raft runs: before, the API answers only peer
	// info.
	raftUp atomic.Bool
}

// Open creates the stores, transport, Raft and the HTTP API. A node that
// finds no Raft state and is given no members to join bootstraps a
// one-node group; one with state rejoins its group by itself.
//
// A node with no state and members to join joins before its Raft starts,
// telling the leader it has no state. A node whose data directory was
// wiped and that comes back under its old ID has forgotten its term, its
// vote and its log: were it to start as the voter the group still takes
// it for, it would vote for any candidate, one missing committed entries
// included, and could vote twice in one term. So the leader first makes
// it a non-voter (promoteCaughtUp promotes it again once it has caught
// up), and only then does the node start Raft and answer votes. Joining
// needs a leader; without one, Open fails after cfg.JoinTimeout.
func Open(ctx context.Context, cfg Config) (*Node, error) {
	n := &Node{
		cfg:    cfg,
		logger: cfg.Logger,
		fsm:    fsm.New(),
		stop:   make(chan struct{}),
	}
	n.fsm.SetRelease(cfg.Version)
	clientOpts := api.ClientOptions{}
	if cfg.TLS != nil {
		clientOpts.TLS = cfg.TLS.PeerClient()
	} else if cfg.ACL != nil {
		clientOpts.Token = cfg.OperatorToken
	}
	n.client = api.NewClient(clientOpts)
	var err error
	if n.metrics, err = newNodeMetrics(n, cfg.Metrics); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
		return nil, fmt.Errorf("create data_dir %s: %w", cfg.DataDir, err)
	}
	// Bind the HTTP port first: if it is taken, nothing else has started.
	httpLn, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("listen on http_addr %s: %w", cfg.HTTPAddr, err)
	}
	ok := false
	defer func() {
		if !ok {
			if n.httpServer != nil {
				n.httpServer.Close()
				n.wg.Wait()
			} else {
				httpLn.Close()
			}
			if n.raft != nil {
				n.raft.Shutdown()
			}
			n.closeStores()
		}
	}()

	// Without a lock timeout bbolt waits forever for a data_dir that another
	// agent holds; with one, the operator gets the error below.
	boltOpts := *bbolt.DefaultOptions
	boltOpts.Timeout = 2 * time.Second
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db"), BoltOptions: &boltOpts})
	if err != nil {
		return nil, fmt.Errorf("open raft store in %s: %w (is another agent using this data_dir?)", cfg.DataDir, err)
	}
	n.store = store
	raftLogger := cfg.RaftLogger
	if raftLogger == nil {
		raftLogger = cfg.Logger.Named("raft")
	}
	// Raft repeats a failed heartbeat to an unreachable peer every few
	// milliseconds; the repeats are held back (quietlog.go).
	raftLogger = newQuietLogger(raftLogger)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.DataDir, 2, raftLogger)
	if err != nil {
		return nil, fmt.Errorf("open snapshot store in %s: %w", cfg.DataDir, err)
	}
	advertise, err := net.ResolveTCPAddr("tcp", cfg.RaftAddr)
	if err != nil {
		return nil, fmt.Errorf("resolve raft_addr %s: %w", cfg.RaftAddr, err)
	}
	// The transport timeout bounds how long a heartbeat to a hung peer can
	// block; it is what lets the leader notice a frozen lease holder.
	var rpcGuard *raftGuard
	if cfg.TLS != nil {
		stream, err := newTLSStreamLayer(cfg.RaftAddr, advertise, cfg.TLS.RaftServer(), cfg.TLS.PeerClient(), n.logger.Named("raft-tls"))
		if err != nil {
			return nil, fmt.Errorf("listen on raft_addr %s: %w", cfg.RaftAddr, err)
		}
		// Every RPC is checked against the certificate it came over and
		// this node's Raft (raftguard.go); until Raft runs, RPCs wait.
		rpcGuard = stream.guard
		rpcGuard.holdUntilBound()
		if cfg.Metrics != nil {
			if err := cfg.Metrics.Register(rpcGuard); err != nil {
				stream.Close()
				return nil, fmt.Errorf("register metrics: %w", err)
			}
		}
		n.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream: stream, MaxPool: 3, Timeout: time.Second, Logger: raftLogger,
		})
	} else {
		n.transport, err = raft.NewTCPTransportWithLogger(cfg.RaftAddr, advertise, 3, time.Second, raftLogger)
		if err != nil {
			return nil, fmt.Errorf("listen on raft_addr %s: %w", cfg.RaftAddr, err)
		}
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = raftLogger
	rc.HeartbeatTimeout = cfg.Raft.HeartbeatTimeout
	rc.ElectionTimeout = cfg.Raft.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.Raft.HeartbeatTimeout / 2
	rc.SnapshotThreshold = cfg.Raft.SnapshotThreshold
	rc.SnapshotInterval = cfg.Raft.SnapshotInterval
	rc.TrailingLogs = cfg.Raft.TrailingLogs
	// Raft's metrics with the peer as a label only, not also with the
	// peer's ID in the metric's name.
	rc.NoLegacyTelemetry = true
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("raft configuration: %w", err)
	}

	n.hadState, err = raft.HasExistingState(store, store, snaps)
	if err != nil {
		return nil, fmt.Errorf("inspect raft state in %s: %w", cfg.DataDir, err)
	}
	// The API serves from here on; until Raft runs, only what a joining
	// or bootstrapping peer asks (peer info) is answered, the rest is
	// "starting" (503).
	n.httpServer = &http.Server{
		Handler:           n.routes(),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          n.logger.Named("http").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true, ForceLevel: hclog.Debug}),
	}
	if cfg.TLS != nil {
		n.httpServer.TLSConfig = cfg.TLS.APIServer()
		httpLn = tls.NewListener(httpLn, n.httpServer.TLSConfig)
	}
	// The guard sees the connections the server serves (TLS ones, before
	// their handshake), so it can close the longest-waiting when full.
	guard := newConnGuard(maxConnections, maxConnectionsPerClient)
	httpLn = guard.listener(httpLn)
	n.httpServer.ConnState = guard.connState
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.httpServer.Serve(httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.logger.Error("http server stopped", "error", err)
		}
	}()

	bootstrapAlone := len(cfg.Join) == 0
	if !n.hadState && len(cfg.Join) > 0 {
		jctx, cancel := context.WithTimeout(ctx, cfg.JoinTimeout)
		if cfg.BootstrapExpect > 0 {
			bootstrapAlone, err = n.expectBootstrap(jctx)
		} else {
			err = n.Join(jctx, cfg.Join)
		}
		cancel()
		if err != nil {
			return nil, err
		}
	}
	if err := checkSnapshots(snaps, cfg.Version); err != nil {
		return nil, err
	}
	n.logs = &watchedLogStore{LogStore: store}
	n.raft, err = raft.NewRaft(rc, n.fsm, n.logs, store, snaps, n.transport)
	if err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}
	if rpcGuard != nil {
		rpcGuard.bind(newRaftNodeView(n.raft))
	}
	n.raftUp.Store(true)
	switch {
	case n.hadState && len(cfg.Join) > 0:
		n.logger.Info("found existing raft state: ignoring -join and rejoining the known group by itself", "data_dir", cfg.DataDir)
	case n.hadState:
		n.logger.Info("found existing raft state; rejoining the group by itself", "data_dir", cfg.DataDir)
	case bootstrapAlone:
		n.logger.Info("no raft state and nothing to join: bootstrapping a new single-node group")
		f := n.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{
			{Suffrage: raft.Voter, ID: rc.LocalID, Address: n.transport.LocalAddr()},
		}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			n.raft.Shutdown()
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
	}

	n.startLeaderDuties()
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		n.runGate()
	}()
	n.startRecent()
	ok = true
	return n, nil
}

// HadState reports whether the node found Raft state on disk at start.
func (n *Node) HadState() bool { return n.hadState }

// ID is this node's ID.
func (n *Node) ID() string { return n.cfg.NodeID }

// State returns a copy of the local replica of the state machine.
func (n *Node) State() fsm.State { return n.fsm.State() }

// Watch returns the local state and a channel closed at its next change.
func (n *Node) Watch() (fsm.State, <-chan struct{}) { return n.fsm.Watch() }

// Leader returns the current leader's ID and Raft address, empty if none.
func (n *Node) Leader() (id, raftAddr string) {
	addr, lid := n.raft.LeaderWithID()
	return string(lid), string(addr)
}

// IsLeader reports whether this node is the leader now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Close leaves the group's work in good order: a leader hands leadership
// over first so that the others need not wait for an election timeout.
func (n *Node) Close() error {
	var err error
	n.closed.Do(func() {
		n.closing.Store(true)
		if n.IsLeader() {
			if f := n.raft.LeadershipTransfer(); f.Error() != nil {
				n.logger.Debug("leadership transfer before shutdown failed", "error", f.Error())
			}
		}
		if n.cfg.LeaveOnTerminate {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := n.leave(ctx); err != nil {
				n.logger.Warn("leave_on_terminate: could not leave the group; stopping as a member", "error", err)
			} else {
				n.logger.Info("leave_on_terminate: left the group")
			}
			cancel()
		}
		close(n.stop)
		if n.observer != nil {
			n.raft.DeregisterObserver(n.observer)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = n.httpServer.Shutdown(ctx)
		if e := n.raft.Shutdown().Error(); e != nil {
			err = fmt.Errorf("shut down raft: %w", e)
		}
		n.wg.Wait()
		n.closeStores()
	})
	return err
}

func (n *Node) closeStores() {
	if n.transport != nil {
		n.transport.Close()
	}
	if n.store != nil {
		if err := n.store.Close(); err != nil {
			n.logger.Warn("close raft store", "error", err)
		}
	}
}

package cluster

import (
	"context"
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
	"go.etcd.io/bbolt"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/config"
	"github.com/geocursor/geocursor/fsm"
)

// Config is what a Node needs to run.
type Config struct {
	NodeID   string
	DataDir  string
	HTTPAddr string
	RaftAddr string
	Raft     config.RaftConfig
	// Logger receives the node's logs; Raft's go to Logger.Named("raft") at
	// RaftLogLevel.
	Logger       hclog.Logger
	RaftLogLevel hclog.Level
}

// Node is one peer of the Raft group with its HTTP API.
type Node struct {
	cfg       Config
	logger    hclog.Logger
	fsm       *fsm.FSM
	raft      *raft.Raft
	transport *raft.NetworkTransport
	store     *raftboltdb.BoltStore
	hadState  bool

	httpServer *http.Server
	// client reaches the other members: forwarding, joins, probes.
	client *api.Client

	statusSource atomic.Pointer[StatusSource]
	history      history
	// lastClockWarning is the stamp of the last warning that this leader's
	// clock is behind the state's (see checkClock).
	lastClockWarning atomic.Int64

	observer *raft.Observer
	stop     chan struct{}
	wg       sync.WaitGroup
	closing  atomic.Bool
	closed   sync.Once
}

// Open creates the stores, transport, Raft and the HTTP API. A node that
// finds no Raft state and is given no members to join bootstraps a
// one-node group; one with state rejoins its group by itself.
func Open(cfg Config, join bool) (*Node, error) {
	n := &Node{
		cfg:    cfg,
		logger: cfg.Logger,
		fsm:    fsm.New(),
		stop:   make(chan struct{}),
		client: api.NewClient(api.ClientOptions{}),
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
			httpLn.Close()
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
	raftLogger := cfg.Logger.Named("raft")
	raftLogger.SetLevel(cfg.RaftLogLevel)
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
	n.transport, err = raft.NewTCPTransportWithLogger(cfg.RaftAddr, advertise, 3, time.Second, raftLogger)
	if err != nil {
		return nil, fmt.Errorf("listen on raft_addr %s: %w", cfg.RaftAddr, err)
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
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("raft configuration: %w", err)
	}

	n.hadState, err = raft.HasExistingState(store, store, snaps)
	if err != nil {
		return nil, fmt.Errorf("inspect raft state in %s: %w", cfg.DataDir, err)
	}
	n.raft, err = raft.NewRaft(rc, n.fsm, store, store, snaps, n.transport)
	if err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}
	switch {
	case n.hadState:
		n.logger.Info("found existing raft state; rejoining the group by itself", "data_dir", cfg.DataDir)
	case !join:
		n.logger.Info("no raft state and nothing to join: bootstrapping a new single-node group")
		f := n.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{
			{Suffrage: raft.Voter, ID: rc.LocalID, Address: n.transport.LocalAddr()},
		}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			n.raft.Shutdown()
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
	}

	n.httpServer = &http.Server{
		Handler:           n.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          n.logger.Named("http").StandardLogger(&hclog.StandardLoggerOptions{InferLevels: true}),
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		if err := n.httpServer.Serve(httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.logger.Error("http server stopped", "error", err)
		}
	}()
	n.startLeaderDuties()
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

package redisserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis Sentinel for tests: a group of a master, its replicas and the
// Sentinels that watch them, all on loopback, as GitLab's HA reference
// architectures run Redis.

// SentinelOptions configures one Sentinel.
type SentinelOptions struct {
	// MasterName is the name the Sentinel monitors the master under.
	MasterName string
	// MasterAddr is the master's HOST:PORT.
	MasterAddr string
	// Quorum is how many Sentinels must agree that the master is down;
	// 0 means 2.
	Quorum int
	// DownAfter is how long the master may not answer before this
	// Sentinel thinks it down; 0 means one second.
	DownAfter time.Duration
	// FailoverTimeout bounds a failover, and spaces one Sentinel's tries;
	// 0 means three seconds.
	FailoverTimeout time.Duration
	// Logf, if set, receives one line per start and stop.
	Logf func(format string, args ...any)
}

// Sentinel is a redis-sentinel process (redis-server --sentinel) on
// 127.0.0.1:Port. Its Server's methods stop, kill, freeze and restart it;
// it rewrites its own configuration with what it learns, and a restart
// keeps that.
type Sentinel struct {
	*Server
	// MasterName is the name it monitors the master under.
	MasterName string
}

// StartSentinel writes a Sentinel configuration in a new temporary
// directory and starts a Sentinel with it, waiting until it answers PING.
// The caller must call Cleanup when done.
func StartSentinel(ctx context.Context, opts SentinelOptions) (*Sentinel, error) {
	bin, err := findBinary()
	if err != nil {
		return nil, err
	}
	host, port, err := net.SplitHostPort(opts.MasterAddr)
	if err != nil {
		return nil, fmt.Errorf("redisserver: MasterAddr %q is not HOST:PORT: %w", opts.MasterAddr, err)
	}
	if opts.MasterName == "" {
		return nil, errors.New("redisserver: a Sentinel needs a MasterName")
	}
	quorum := opts.Quorum
	if quorum <= 0 {
		quorum = 2
	}
	downAfter := opts.DownAfter
	if downAfter <= 0 {
		downAfter = time.Second
	}
	failoverTimeout := opts.FailoverTimeout
	if failoverTimeout <= 0 {
		failoverTimeout = 3 * time.Second
	}
	s, err := newServer(bin, "geocursor-sentinel-*", "sentinel", opts.Logf)
	if err != nil {
		return nil, err
	}
	s.args = []string{"--sentinel"}
	name := opts.MasterName
	s.writeConfig = func() error {
		var b strings.Builder
		s.commonConfig(&b)
		fmt.Fprintf(&b, "dir %s\n", quote(s.Dir))
		fmt.Fprintf(&b, "sentinel monitor %s %s %s %d\n", name, host, port, quorum)
		fmt.Fprintf(&b, "sentinel down-after-milliseconds %s %d\n", name, downAfter.Milliseconds())
		fmt.Fprintf(&b, "sentinel failover-timeout %s %d\n", name, failoverTimeout.Milliseconds())
		fmt.Fprintf(&b, "sentinel parallel-syncs %s 1\n", name)
		// Every address is an IP on loopback: nothing to resolve, and
		// what each Sentinel announces (the address it reaches the master
		// from) is one the others reach it at.
		b.WriteString("sentinel resolve-hostnames no\n")
		return s.saveConfig(b.String())
	}
	if err := s.start(ctx); err != nil {
		_ = os.RemoveAll(s.Dir)
		return nil, err
	}
	return &Sentinel{Server: s, MasterName: name}, nil
}

// client is a short-lived Sentinel client of s.
func (s *Sentinel) client() *redis.SentinelClient {
	return redis.NewSentinelClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, DialTimeout: time.Second,
		ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second})
}

// MasterAddr is where this Sentinel says the master is
// (SENTINEL GET-MASTER-ADDR-BY-NAME).
func (s *Sentinel) MasterAddr(ctx context.Context) (string, error) {
	c := s.client()
	defer c.Close()
	a, err := c.GetMasterAddrByName(ctx, s.MasterName).Result()
	if err != nil {
		return "", fmt.Errorf("ask the Sentinel on port %d for master %s: %w", s.Port, s.MasterName, err)
	}
	return net.JoinHostPort(a[0], a[1]), nil
}

// GroupOptions configures a Group.
type GroupOptions struct {
	// MasterName is what the Sentinels call the master; "" means
	// "gitlab-redis".
	MasterName string
	// Replicas is the number of replicas of the master (0 means 1), and
	// Sentinels the number of Sentinels (0 means 3; the quorum is a
	// majority of them).
	Replicas  int
	Sentinels int
	// AppendFsync is every server's appendfsync ("" means always).
	AppendFsync string
	// DownAfter and FailoverTimeout are the Sentinels'; 0 means one and
	// three seconds.
	DownAfter       time.Duration
	FailoverTimeout time.Duration
	// Logf, if set, receives one line per start and stop of each process.
	Logf func(format string, args ...any)
}

// Group is a master, its replicas and the Sentinels that watch them.
// Master and Replicas are the roles the servers started in: after a
// failover, ask MasterAddr and Server.
type Group struct {
	MasterName string
	Master     *Server
	Replicas   []*Server
	Sentinels  []*Sentinel
}

// StartGroup starts a master, its replicas and the Sentinels, and waits
// until the replicas are in sync, every Sentinel knows every replica and
// every other Sentinel, and the Sentinels can reach a quorum: until a
// failover would work. The caller must call Cleanup when done, also when
// StartGroup fails and returns a group.
func StartGroup(ctx context.Context, opts GroupOptions) (*Group, error) {
	g := &Group{MasterName: opts.MasterName}
	if g.MasterName == "" {
		g.MasterName = "gitlab-redis"
	}
	replicas, sentinels := opts.Replicas, opts.Sentinels
	if replicas <= 0 {
		replicas = 1
	}
	if sentinels <= 0 {
		sentinels = 3
	}
	var err error
	g.Master, err = Start(ctx, Options{AppendFsync: opts.AppendFsync, Logf: opts.Logf})
	if err != nil {
		return g, fmt.Errorf("start the master: %w", err)
	}
	for i := 0; i < replicas; i++ {
		r, err := Start(ctx, Options{AppendFsync: opts.AppendFsync, ReplicaOf: g.Master.Addr(), Logf: opts.Logf})
		if err != nil {
			return g, fmt.Errorf("start replica %d: %w", i+1, err)
		}
		g.Replicas = append(g.Replicas, r)
	}
	for i := 0; i < sentinels; i++ {
		s, err := StartSentinel(ctx, SentinelOptions{
			MasterName: g.MasterName, MasterAddr: g.Master.Addr(), Quorum: sentinels/2 + 1,
			DownAfter: opts.DownAfter, FailoverTimeout: opts.FailoverTimeout, Logf: opts.Logf,
		})
		if err != nil {
			return g, fmt.Errorf("start Sentinel %d: %w", i+1, err)
		}
		g.Sentinels = append(g.Sentinels, s)
	}
	return g, g.waitReady(ctx)
}

// waitReady polls until a failover would work (see StartGroup).
func (g *Group) waitReady(ctx context.Context) error {
	// Sentinels find each other through hello messages every two
	// seconds, and replicas through the master's INFO every ten.
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	var last error
	for {
		if last = g.ready(ctx); last == nil {
			return nil
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("the Sentinel group is not ready: %w (last: %v)", ctx.Err(), last)
		case <-t.C:
		}
	}
}

// ready says why a failover would not work yet, nil when it would.
func (g *Group) ready(ctx context.Context) error {
	for _, r := range g.Replicas {
		if err := replicaInSync(ctx, r); err != nil {
			return err
		}
	}
	for _, s := range g.Sentinels {
		c := s.client()
		known, err := c.Replicas(ctx, g.MasterName).Result()
		if err == nil && len(known) < len(g.Replicas) {
			err = fmt.Errorf("knows %d of %d replicas", len(known), len(g.Replicas))
		}
		for _, r := range known {
			if err == nil && r["flags"] != "slave" {
				err = fmt.Errorf("has replica %s:%s as %q", r["ip"], r["port"], r["flags"])
			}
		}
		if err == nil {
			var peers []map[string]string
			peers, err = c.Sentinels(ctx, g.MasterName).Result()
			if err == nil && len(peers) < len(g.Sentinels)-1 {
				err = fmt.Errorf("knows %d of the %d other Sentinels", len(peers), len(g.Sentinels)-1)
			}
		}
		if err == nil {
			err = c.CkQuorum(ctx, g.MasterName).Err()
		}
		c.Close()
		if err != nil {
			return fmt.Errorf("the Sentinel on port %d: %w", s.Port, err)
		}
	}
	return nil
}

// replicaInSync says why r is not a replica with its link to the master
// up, nil when it is.
func replicaInSync(ctx context.Context, r *Server) error {
	info, err := Info(ctx, r.Addr(), "replication")
	if err != nil {
		return err
	}
	if info["role"] != "slave" || info["master_link_status"] != "up" {
		return fmt.Errorf("the replica on port %d: role %s, master link %s", r.Port, info["role"], info["master_link_status"])
	}
	return nil
}

// Info is a section of INFO of the Redis at addr, as a map.
func Info(ctx context.Context, addr, section string) (map[string]string, error) {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: time.Second,
		ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second})
	defer c.Close()
	raw, err := c.Info(ctx, section).Result()
	if err != nil {
		return nil, fmt.Errorf("INFO %s of %s: %w", section, addr, err)
	}
	m := map[string]string{}
	for _, line := range strings.Split(raw, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			m[k] = v
		}
	}
	return m, nil
}

// SentinelAddrs are the Sentinels' HOST:PORTs, as a client is given them.
func (g *Group) SentinelAddrs() []string {
	var out []string
	for _, s := range g.Sentinels {
		out = append(out, s.Addr())
	}
	return out
}

// URL is the master's URL for database 0 as a client of the Sentinels
// gives it, GitLab's way: redis://MASTER_NAME/0.
func (g *Group) URL() string { return "redis://" + g.MasterName + "/0" }

// MasterAddr is where the first Sentinel that answers says the master is.
func (g *Group) MasterAddr(ctx context.Context) (string, error) {
	var errs []error
	for _, s := range g.Sentinels {
		a, err := s.MasterAddr(ctx)
		if err == nil {
			return a, nil
		}
		errs = append(errs, err)
	}
	return "", errors.Join(errs...)
}

// Server is the group's server listening at addr, nil if none.
func (g *Group) Server(addr string) *Server {
	for _, s := range append([]*Server{g.Master}, g.Replicas...) {
		if s != nil && s.Addr() == addr {
			return s
		}
	}
	return nil
}

// Role is the role (master or slave) the server at addr reports.
func Role(ctx context.Context, addr string) (string, error) {
	info, err := Info(ctx, addr, "replication")
	if err != nil {
		return "", err
	}
	return info["role"], nil
}

// Cleanup stops the Sentinels first (so that they start no failover while
// the servers stop), then the replicas and the master, and removes their
// directories.
func (g *Group) Cleanup() error {
	var errs []error
	for _, s := range g.Sentinels {
		errs = append(errs, s.Cleanup())
	}
	for _, r := range g.Replicas {
		errs = append(errs, r.Cleanup())
	}
	if g.Master != nil {
		errs = append(errs, g.Master.Cleanup())
	}
	return errors.Join(errs...)
}

// LogTails are the ends of every process's log, for a failed test.
func (g *Group) LogTails() string {
	var b strings.Builder
	tail := func(what string, s *Server) {
		fmt.Fprintf(&b, "--- %s on port %d (%s) ---\n%s\n", what, s.Port, s.Dir, s.LogTail())
	}
	if g.Master != nil {
		tail("first master", g.Master)
	}
	for i, r := range g.Replicas {
		tail("first replica "+strconv.Itoa(i+1), r)
	}
	for i, s := range g.Sentinels {
		tail("Sentinel "+strconv.Itoa(i+1), s.Server)
	}
	return b.String()
}

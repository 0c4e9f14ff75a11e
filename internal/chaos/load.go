package chaos

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/internal/devcluster"
	"github.com/geocursor/geocursor/internal/loadgen"
)

// load runs loadgen against the source until stopped.
type load struct {
	pool   *pgxpool.Pool
	cancel context.CancelFunc
	done   chan struct{}
	stats  loadgen.Stats
	err    error
	once   sync.Once
}

func startLoad(ctx context.Context, dsn string, cfg loadgen.Config, seed uint64) (*load, error) {
	pcfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	pcfg.MaxConns = int32(max(cfg.Writers, 1) + 1)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("load: connect to the source: %w", err)
	}
	if cfg.Seed == 0 {
		cfg.Seed = int64(seed >> 1)
	}
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l := &load{pool: pool, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		l.stats, l.err = loadgen.Run(lctx, pool, cfg)
	}()
	return l, nil
}

// stop ends the load and returns what it wrote. A load that failed by
// itself (not by being stopped) returns its error.
func (l *load) stop() (loadgen.Stats, error) {
	l.once.Do(func() {
		l.cancel()
		<-l.done
		l.pool.Close()
		if errors.Is(l.err, context.Canceled) {
			l.err = nil
		}
	})
	return l.stats, l.err
}

// commitObs is a batch seen committed in the tracking database: the fence
// row's position moved.
type commitObs struct {
	At     time.Time
	Token  uint64
	LastID int64
}

// monitor polls the tracking database's fence row to time when batches
// commit, independently of what the agents say.
type monitor struct {
	dsn    string
	logf   func(string, ...any)
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	commits []commitObs
}

const monitorInterval = 20 * time.Millisecond

func startMonitor(dsn string, logf func(string, ...any)) *monitor {
	ctx, cancel := context.WithCancel(context.Background())
	m := &monitor{dsn: dsn, logf: logf, cancel: cancel, done: make(chan struct{})}
	go m.run(ctx)
	return m
}

func (m *monitor) run(ctx context.Context) {
	defer close(m.done)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	last := int64(-1)
	t := time.NewTicker(monitorInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if conn == nil {
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			c, err := pgx.Connect(cctx, m.dsn)
			cancel()
			if err != nil {
				continue // the tracking database is restarting
			}
			conn = c
		}
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		var token, lastID int64
		err := conn.QueryRow(qctx, `SELECT token, last_event_id FROM geocursor_fence WHERE id = 1`).Scan(&token, &lastID)
		cancel()
		if err != nil {
			// No fence table yet, or the connection died: reconnect.
			conn.Close(context.Background())
			conn = nil
			continue
		}
		if lastID != last {
			if last >= 0 {
				m.mu.Lock()
				m.commits = append(m.commits, commitObs{At: time.Now(), Token: uint64(token), LastID: lastID})
				m.mu.Unlock()
			}
			last = lastID
		}
	}
}

func (m *monitor) stop() {
	m.cancel()
	<-m.done
}

// since returns the commits seen after t.
func (m *monitor) since(t time.Time) []commitObs {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []commitObs
	for _, c := range m.commits {
		if c.At.After(t) {
			out = append(out, c)
		}
	}
	return out
}

// all returns every commit seen.
func (m *monitor) all() []commitObs {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]commitObs(nil), m.commits...)
}

// waitCommit waits until a batch commits after t.
func (m *monitor) waitCommit(ctx context.Context, t time.Time, timeout time.Duration) error {
	return devcluster.WaitEvery(ctx, timeout, pollEvery, "a batch committed in the tracking database", func() (bool, string, error) {
		return len(m.since(t)) > 0, fmt.Sprintf("no commit since %s", t.Format("15:04:05.000")), nil
	})
}

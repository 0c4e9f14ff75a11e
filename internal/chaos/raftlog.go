package chaos

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/internal/linearize"
)

// raftLog is one peer's Raft log as stored in its data directory.
type raftLog struct {
	node        string
	first, last uint64
	entries     []raft.Log
}

// readRaftLog reads every entry of the log in dataDir. The agent must not
// be running: bbolt allows one writer or several readers.
func readRaftLog(node, dataDir string) (*raftLog, error) {
	opts := *bbolt.DefaultOptions
	opts.ReadOnly = true
	opts.Timeout = 2 * time.Second
	path := filepath.Join(dataDir, "raft.db")
	store, err := raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: &opts})
	if err != nil {
		return nil, fmt.Errorf("open the raft log of %s (%s): %w", node, path, err)
	}
	defer store.Close()
	l := &raftLog{node: node}
	if l.first, err = store.FirstIndex(); err != nil {
		return nil, fmt.Errorf("read the raft log of %s: %w", node, err)
	}
	if l.last, err = store.LastIndex(); err != nil {
		return nil, fmt.Errorf("read the raft log of %s: %w", node, err)
	}
	for i := l.first; i <= l.last && l.last > 0; i++ {
		var e raft.Log
		if err := store.GetLog(i, &e); err != nil {
			return nil, fmt.Errorf("read entry %d of the raft log of %s: %w", i, node, err)
		}
		l.entries = append(l.entries, e)
	}
	return l, nil
}

// commands decodes the state-machine commands of the log, in log order,
// each with its index.
func (l *raftLog) commands() ([]linearize.LogEntry, error) {
	var out []linearize.LogEntry
	var errs []error
	for _, e := range l.entries {
		if e.Type != raft.LogCommand {
			continue
		}
		c, err := fsm.DecodeCommand(e.Data)
		if err != nil {
			errs = append(errs, fmt.Errorf("entry %d: %w", e.Index, err))
			continue
		}
		out = append(out, linearize.LogEntry{Index: e.Index, Cmd: c})
	}
	return out, errors.Join(errs...)
}

// divergence describes where other disagrees with l on an index both
// hold, or "" if they agree.
func (l *raftLog) divergence(other *raftLog) string {
	byIndex := make(map[uint64]raft.Log, len(l.entries))
	for _, e := range l.entries {
		byIndex[e.Index] = e
	}
	for _, e := range other.entries {
		mine, ok := byIndex[e.Index]
		if !ok {
			continue
		}
		if mine.Term != e.Term || mine.Type != e.Type || !bytes.Equal(mine.Data, e.Data) {
			return fmt.Sprintf("entry %d: %s has term %d %q, %s has term %d %q",
				e.Index, l.node, mine.Term, mine.Data, other.node, e.Term, e.Data)
		}
	}
	return ""
}

package cluster

import (
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// history records every command this node issues (its own lease and cursor
// commands, and as leader its revokes and member changes) as JSON lines of
// api.HistoryEntry, for the linearizability checker of the fault tests.
type history struct {
	mu  sync.Mutex
	w   io.Writer
	err error
}

// SetHistory makes the node record its commands to w. Recording is for
// fault-injection tests: it costs a write per command.
func (n *Node) SetHistory(w io.Writer) {
	n.history.mu.Lock()
	defer n.history.mu.Unlock()
	n.history.w = w
}

func (n *Node) record(call time.Time, cmd fsm.Command, res fsm.Result, err error) {
	h := &n.history
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.w == nil || h.err != nil {
		return
	}
	e := api.NewHistoryEntry(n.cfg.NodeID, call.UnixNano(), time.Now().UnixNano(), cmd, res, err)
	b, merr := json.Marshal(e)
	if merr != nil {
		h.err = fmt.Errorf("encode history entry: %w", merr)
		return
	}
	if _, werr := h.w.Write(append(b, '\n')); werr != nil {
		h.err = fmt.Errorf("write history: %w", werr)
		n.logger.Error("history recording stopped", "error", h.err)
	}
}

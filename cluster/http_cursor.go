package cluster

import (
	"net/http"

	"github.com/geocursor/geocursor/fsm"
)

// handlePause serves POST /v1/cursor/pause and /v1/cursor/resume on any
// node. Pausing stops new grants, so processing stops after the batch in
// flight; resuming lets the peers compete again. Both are idempotent.
func (n *Node) handlePause(paused bool) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) (any, error) {
		return applyAnswer(n.Apply(r.Context(), fsm.Command{Op: fsm.OpSetPaused, Paused: paused}))
	}
}

package cursor

import (
	"context"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/geocursor/geocursor/fsm"
)

// renewer keeps a grant alive while a long batch runs. An advance that
// keeps the lease counts as a renewal. If renewing fails and the lease
// would run out before the next try, the holder's work is cancelled: it
// must stop before another peer may take over.
type renewer struct {
	coord  Coordinator
	token  uint64
	ttl    time.Duration
	logger hclog.Logger
	mu     sync.Mutex
	last   time.Time // when the lease was last extended, by the local clock
}

func (r *renewer) renewed() {
	r.mu.Lock()
	r.last = time.Now()
	r.mu.Unlock()
}

// run renews every ttl/3 until ctx ends; on a refusal, or a failure that
// leaves too little of the lease to try again, it cancels the grant with
// errLeaseLost.
func (r *renewer) run(ctx context.Context, cancel context.CancelCauseFunc) {
	every := r.ttl / 3
	t := time.NewTicker(every / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.mu.Lock()
		since := time.Since(r.last)
		r.mu.Unlock()
		if since < every {
			continue
		}
		res, err := r.coord.Apply(ctx, fsm.Command{Op: fsm.OpRenew, Node: r.coord.ID(), Token: r.token, TTL: r.ttl})
		switch {
		case err == nil && res.Err == nil:
			r.renewed()
		case err == nil:
			r.logger.Warn("lease lost while processing; stopping and discarding the batch", "token", r.token, "error", res.Err)
			cancel(errLeaseLost)
			return
		case ctx.Err() != nil:
			return
		case since+every/2 >= r.ttl*2/3:
			r.logger.Warn("cannot renew the lease in time; stopping and discarding the batch", "token", r.token, "error", err)
			cancel(errLeaseLost)
			return
		default:
			r.logger.Debug("renew lease failed; retrying", "token", r.token, "error", err)
		}
	}
}

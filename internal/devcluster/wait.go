package devcluster

import (
	"context"
	"fmt"
	"time"
)

// pollEvery is how often WaitFor checks its condition.
const pollEvery = 20 * time.Millisecond

// WaitFor polls cond every 20ms until it reports done, returns an error
// (returned as is: the wait cannot succeed any more), ctx ends, or timeout
// passes; the timeout error names what and cond's last detail.
func WaitFor(ctx context.Context, timeout time.Duration, what string, cond func() (done bool, detail string, err error)) error {
	return WaitEvery(ctx, timeout, pollEvery, what, cond)
}

// WaitEvery is WaitFor with another polling interval.
func WaitEvery(ctx context.Context, timeout, every time.Duration, what string, cond func() (done bool, detail string, err error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, detail, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting for %s: %s", timeout, what, detail)
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("waiting for %s: %w (last: %s)", what, ctx.Err(), detail)
		case <-t.C:
		}
	}
}

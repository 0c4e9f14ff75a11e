package cursor

import (
	"context"
	"time"
)

// ctxOr hides errors caused only by ctx ending, so a shutdown does not
// show as a database failure.
func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// waitChange waits until changed is closed (the local replica moved), max
// passes, or ctx ends.
func waitChange(ctx context.Context, changed <-chan struct{}, max time.Duration) {
	t := time.NewTimer(max)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-changed:
	case <-t.C:
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

package api

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff is the one retry schedule of geocursor: each wait twice the last,
// from Min up to Max, with jitter so that peers that failed together do
// not retry together. The zero value is not usable; set Min and Max.
type Backoff struct {
	Min, Max time.Duration
	cur      time.Duration
}

// Next returns the next wait: a random duration in [cur/2, cur], cur
// doubling from Min to Max.
func (b *Backoff) Next() time.Duration {
	if b.cur == 0 {
		b.cur = b.Min
	} else {
		b.cur = min(2*b.cur, b.Max)
	}
	return b.cur/2 + rand.N(b.cur/2+1)
}

// Reset starts the schedule again at Min.
func (b *Backoff) Reset() { b.cur = 0 }

// Wait sleeps for Next, or until ctx ends (then it returns ctx's error).
func (b *Backoff) Wait(ctx context.Context) error {
	return Sleep(ctx, b.Next())
}

// Sleep sleeps for d, or until ctx ends (then it returns ctx's error).
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

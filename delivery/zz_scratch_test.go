package delivery

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestScratchWait(t *testing.T) {
	master, replica := startReplicated(t)
	ctx := context.Background()
	for _, proto := range []int{2, 3} {
		c := redis.NewClient(&redis.Options{Addr: master.Addr(), MaxRetries: -1, Protocol: proto})
		n, err := c.Wait(ctx, 1, time.Second).Result()
		t.Logf("proto %d: WAIT %d %v", proto, n, err)
		c.Close()
	}
	replica.Freeze()
	for _, proto := range []int{2, 3} {
		c := redis.NewClient(&redis.Options{Addr: master.Addr(), MaxRetries: -1, Protocol: proto})
		t0 := time.Now()
		n, err := c.Wait(ctx, 1, time.Second).Result()
		t.Logf("frozen proto %d: WAIT %d %v in %s", proto, n, err, time.Since(t0))
		c.Close()
	}
	replica.Thaw()
}

package cursor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/internal/localcoord"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

// syncBuffer is a log output safe for a logger and a test to share.
type syncBuffer = ts.SyncBuffer

// flakyCoordinator fails chosen advances, as a leader that is cut off or an
// answer that is lost would.
type flakyCoordinator struct {
	*localcoord.Coordinator
	mu sync.Mutex
	// fail decides, per advance, whether it fails and whether it was
	// applied all the same (the answer was lost).
	fail  func(cmd fsm.Command) (fail, applied bool)
	fails int
}

var errFlaky = errors.New("flaky coordinator: no answer from the leader")

func (c *flakyCoordinator) Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	if cmd.Op == fsm.OpAdvance {
		c.mu.Lock()
		fail, applied := c.fail(cmd)
		if fail {
			c.fails++
		}
		c.mu.Unlock()
		if fail {
			if applied {
				c.Coordinator.Apply(ctx, cmd) //nolint:errcheck // the answer is what is lost
			}
			return fsm.Result{}, errFlaky
		}
	}
	return c.Coordinator.Apply(ctx, cmd)
}

// startLoop runs loop for at most a minute; stop ends it and waits (a
// second call does nothing).
func startLoop(t *testing.T, loop *Loop) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithTimeout(testContext(t), time.Minute)
	done := make(chan error, 1)
	go func() { done <- loop.Run(ctx) }()
	var once sync.Once
	return ctx, func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
}

// runUntilDrained runs loop until the replicated cursor is at total and the
// lease is free, then stops it.
func runUntilDrained(t *testing.T, loop *Loop, coord Coordinator, total int64) {
	t.Helper()
	ctx, stop := startLoop(t, loop)
	defer stop()
	for {
		st, changed := coord.Watch()
		if st.Cursor.LastEventID == total && !st.Lease.HeldAt(time.Now().UnixNano()) {
			return
		}
		select {
		case <-changed:
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			t.Fatalf("cursor stuck at %d of %d (lease %+v)", st.Cursor.LastEventID, total, st.Lease)
		}
	}
}

// bulkSource writes n well-formed events, IDs 1..n, set-based.
func bulkSource(t *testing.T, n int) *sourceDB {
	t.Helper()
	db := newSourceDB(t)
	exec(t, db.conn, `INSERT INTO geo_events (id, replicable_name, event_name, payload, created_at)
SELECT i, 'lfs_object', CASE WHEN i % 7 = 0 THEN 'deleted' ELSE 'updated' END,
       jsonb_build_object('model_record_id', i % 50), now()
FROM generate_series(1, $1::bigint) AS i`, n)
	exec(t, db.conn, `INSERT INTO geo_event_log (id, created_at, geo_event_id)
SELECT i, now() AT TIME ZONE 'utc', i FROM generate_series(1, $1::bigint) AS i`, n)
	return db
}

// While a full batch's advance goes through Raft the next batch already
// commits in the tracking database. When that advance fails, whether or not
// it was applied, the tracking database is ahead of the replicated cursor;
// the next grant must adopt the fence and go on, every event exactly once.
func TestFailedAdvanceInThePipelineIsAdoptedFromTheFence(t *testing.T) {
	for _, tc := range []struct {
		name    string
		applied bool
	}{
		{"advance not applied", false},
		{"advance applied, answer lost", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const total, batch = 5500, 1000
			db := bulkSource(t, total)
			src := openTestSource(t, db.dsn)
			tr, conn := openTestTracking(t)

			var logs syncBuffer
			coord := &flakyCoordinator{Coordinator: localcoord.New("a")}
			coord.fail = func(cmd fsm.Command) (bool, bool) {
				// The second and fourth advance of the first grant.
				return cmd.Token == 1 && (cmd.Advance.Seq == 2 || cmd.Advance.Seq == 4), tc.applied
			}
			loop := NewLoop(LoopConfig{Start: StartOldest,
				BatchSize: batch, PollInterval: 10 * time.Millisecond, GapTimeout: time.Hour,
				LeaseTTL: 2 * time.Second, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond,
				AdvanceInterval: time.Nanosecond, // an advance for every batch
			}, coord, src, tr, nil, hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info}))
			runUntilDrained(t, loop, coord, total)

			coord.mu.Lock()
			fails := coord.fails
			coord.mu.Unlock()
			if fails != 1 {
				t.Errorf("%d advances failed, want 1 (the grant ends at the first)", fails)
			}
			var jobs, distinct, lowest, highest int64
			if err := conn.QueryRow(testContext(t),
				`SELECT count(*), count(DISTINCT event_id), min(event_id), max(event_id) FROM geo_jobs`).
				Scan(&jobs, &distinct, &lowest, &highest); err != nil {
				t.Fatalf("count jobs: %v", err)
			}
			if jobs != total || distinct != total || lowest != 1 || highest != total {
				t.Errorf("geo_jobs has %d rows, %d distinct events, %d..%d; want each of 1..%d once",
					jobs, distinct, lowest, highest, total)
			}
			// The batch after the failed advance was committed while it was
			// in flight: the next grant found the fence ahead of the cursor.
			if !strings.Contains(logs.String(), "adopting the position of the tracking database") {
				t.Errorf("the next grant did not adopt the fence; log:\n%s", logs.String())
			}
			st, _ := coord.Watch()
			if st.Lease.Token < 2 {
				t.Errorf("lease token %d: the failed grant should have ended", st.Lease.Token)
			}
		})
	}
}

// Through a backlog the holder records its progress in Raft at most every
// AdvanceInterval; the advance that goes out carries the counts of every
// batch committed since the last one, and the grant's end is recorded at
// once, whether its last batch is partial or the backlog ends on a full one.
func TestBacklogAdvancesAreSpacedAndCountEveryBatch(t *testing.T) {
	for _, tc := range []struct {
		total, wantBatches int
		wantLast           fsm.Advance
	}{
		// The first batch is recorded at once; the next four are folded
		// into the advance of the last, partial one, which releases.
		{5500, 6, fsm.Advance{LastEventID: 5500, Events: 4500, Batches: 5}},
		// The last full batch is folded too; the empty read after it
		// releases with its position and counts.
		{5000, 5, fsm.Advance{LastEventID: 5000, Events: 4000, Batches: 4}},
	} {
		t.Run(fmt.Sprint(tc.total), func(t *testing.T) {
			const batch = 1000
			db := bulkSource(t, tc.total)
			src := openTestSource(t, db.dsn)
			tr, _ := openTestTracking(t)
			var advances []fsm.Advance
			coord := &flakyCoordinator{Coordinator: localcoord.New("a")}
			coord.fail = func(cmd fsm.Command) (bool, bool) {
				advances = append(advances, *cmd.Advance) // under coord.mu
				return false, false
			}
			var logs syncBuffer
			loop := NewLoop(LoopConfig{Start: StartOldest,
				BatchSize: batch, PollInterval: 10 * time.Millisecond, GapTimeout: time.Hour,
				LeaseTTL: 5 * time.Second, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond,
				AdvanceInterval: time.Hour,
			}, coord, src, tr, nil, hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info}))
			runUntilDrained(t, loop, coord, int64(tc.total))

			coord.mu.Lock()
			defer coord.mu.Unlock()
			if len(advances) != 2 {
				t.Fatalf("%d advances, want 2: %+v", len(advances), advances)
			}
			last := advances[1]
			if last.Keep || last.LastEventID != tc.wantLast.LastEventID || last.Events != tc.wantLast.Events || last.Batches != tc.wantLast.Batches {
				t.Errorf("last advance = %+v, want a release like %+v", last, tc.wantLast)
			}
			st, _ := coord.Watch()
			if st.Stats.EventsProcessed != uint64(tc.total) || st.Stats.Batches != uint64(tc.wantBatches) {
				t.Errorf("stats = %+v, want %d events in %d batches", st.Stats, tc.total, tc.wantBatches)
			}
			if st.Lease.Token != 1 || strings.Contains(logs.String(), "adopting") {
				t.Errorf("the drain took %d grants; log:\n%s", st.Lease.Token, logs.String())
			}
		})
	}
}

// A tracking database that already has a job for an event after its fence
// (restored, or the fence reset by hand) cannot be written past. The holder
// must say so and back off, not take the collision for another holder's
// batch and retry the same batch in a tight loop.
func TestRowsAfterTheFenceAreReportedNotRetriedInALoop(t *testing.T) {
	db := bulkSource(t, 50)
	src := openTestSource(t, db.dsn)
	tr, conn := openTestTracking(t)
	exec(t, conn, `INSERT INTO geo_jobs (event_id, kind) VALUES (30, 'sync')`)

	var logs syncBuffer
	health := NewHealth()
	loop := NewLoop(LoopConfig{Start: StartOldest,
		BatchSize: 1000, PollInterval: 10 * time.Millisecond, GapTimeout: time.Hour,
		LeaseTTL: 5 * time.Second, RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond,
	}, localcoord.New("a"), src, tr, health, hclog.New(&hclog.LoggerOptions{Output: &logs, Level: hclog.Info}))
	ctx, stop := startLoop(t, loop)
	defer stop()
	trackingHealth := func() string {
		var st api.Status
		health.AddStatus(&st)
		return st.Databases.Tracking
	}
	for !strings.Contains(trackingHealth(), "already has rows for events after its fence") {
		select {
		case <-ctx.Done():
			t.Fatalf("no tracking error reported; log:\n%s", logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	time.Sleep(300 * time.Millisecond) // long enough for a tight loop to show
	if n := strings.Count(logs.String(), "continuing from its fence"); n > 0 {
		t.Errorf("the holder adopted its own fence %d times; log:\n%s", n, logs.String())
	}
}

package cursor

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
)

// Unit tests of one grant over fakes of the ports: the behaviours that
// otherwise only the system tests reach.

func grantContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wantCommitted checks that the tracking store holds exactly events 1..n.
func wantCommitted(t *testing.T, tr *memTracking, n int) {
	t.Helper()
	ids := tr.ids()
	if len(ids) != n || (n > 0 && (ids[0] != 1 || ids[n-1] != int64(n))) {
		t.Fatalf("committed events %s, want 1..%d once each", abbrevIDs(ids), n)
	}
}

func abbrevIDs(ids []int64) string {
	if len(ids) > 6 {
		return fmt.Sprintf("%v ... %v (%d)", ids[:3], ids[len(ids)-3:], len(ids))
	}
	return fmt.Sprint(ids)
}

// loseAdvanceAnswer makes the first advance that keeps the lease (keep)
// or releases it lose its answer, as when the leader dies while applying
// it, after applying it when applied is set. The flag it returns says
// whether an advance was lost; read it once the grant is over.
func (f *grantFixture) loseAdvanceAnswer(keep, applied bool) *bool {
	lost := new(bool)
	f.coord.setIntercept(func(cmd fsm.Command) (fsm.Result, error, bool) {
		if cmd.Op != fsm.OpAdvance || cmd.Advance.Keep != keep || *lost {
			return fsm.Result{}, nil, false
		}
		*lost = true
		if applied {
			_, _ = f.coord.Coordinator.Apply(context.Background(), cmd)
		}
		return fsm.Result{}, fmt.Errorf("%w: the leader died while applying it", api.ErrUnknownOutcome), true
	})
	return lost
}

func countOps(cmds []fsm.Command, op fsm.Op) int {
	n := 0
	for _, c := range cmds {
		if c.Op == op {
			n++
		}
	}
	return n
}

// A new holder claims the fence while batch 31..40 waits to commit and
// 41..50 is already staged behind it: the commit is fenced, the staged
// batch is rolled back with it, the grant ends as lost and releases
// nothing, and no event after 30 is written.
func TestGrantFencedInThePipelineRollsBackTheNextStagedBatch(t *testing.T) {
	// The hooks below line the pipeline up (41..50 read before 31..40 is
	// staged, and staged before 31..40 commits); the grant still may
	// commit 31..40 before it stages 41..50 when the read is slow to be
	// picked up, so the shape is tried until it happens.
	for attempt := 1; ; attempt++ {
		if pipelined := fencedInThePipeline(t); pipelined {
			return
		}
		if attempt == 20 {
			t.Fatal("in 20 attempts the batch from 40 was never staged while the batch from 30 committed")
		}
	}
}

func fencedInThePipeline(t *testing.T) (pipelined bool) {
	t.Helper()
	f := newGrantFixture(t, 100, LoopConfig{})
	read40 := make(chan struct{})
	staged40 := make(chan struct{})
	var readOnce, stageOnce bool
	f.source.onFetch = func(after int64) {
		if after == 40 && !readOnce {
			readOnce = true
			close(read40)
		}
	}
	f.tracking.beforeStage = func(ctx context.Context, b Batch) error {
		switch b.Start.LastEventID {
		case 30:
			select {
			case <-read40:
			case <-ctx.Done():
			}
		case 40:
			if !stageOnce {
				stageOnce = true
				close(staged40)
			}
		}
		return nil
	}
	f.tracking.beforeCommit = func(ctx context.Context, b Batch) error {
		if b.Start.LastEventID == 30 {
			select {
			case <-staged40:
				pipelined = true
			case <-time.After(200 * time.Millisecond):
			}
			fence, _ := f.tracking.Fence(ctx)
			fence.Token = b.Token + 1
			f.tracking.setFence(fence)
		}
		return nil
	}
	_, err := f.hold(grantContext(t))
	if !errors.Is(err, errLeaseLost) || !errors.Is(err, ErrFenced) {
		t.Fatalf("grant ended with %v, want a fenced, lost lease", err)
	}
	wantCommitted(t, f.tracking, 30)
	if n := countOps(f.coord.log, fsm.OpRelease); n != 0 {
		t.Errorf("%d releases sent for a lease that is another holder's now", n)
	}
	if !pipelined {
		return false
	}
	var rolledBack []int64
	for _, p := range f.tracking.aborted {
		rolledBack = append(rolledBack, p.LastEventID)
	}
	if !contains(rolledBack, 40) {
		t.Errorf("batches rolled back from %v, want the one staged from 40 among them", rolledBack)
	}
	return true
}

// The previous holder committed 1..30 and died before its advance reached
// Raft: the fence row is ahead of the replicated cursor. The new grant
// continues from the fence, never writes 1..30 again, and records where
// it got to.
func TestGrantAdoptsAFenceAheadOfTheReplicatedCursor(t *testing.T) {
	f := newGrantFixture(t, 50, LoopConfig{})
	for id := int64(1); id <= 30; id++ {
		f.tracking.committed[id] = 1
	}
	f.tracking.setFence(Fence{Token: 1, Positioned: true, Position: Position{LastEventID: 30, LastEventDate: time.Unix(0, 30).UTC()}})

	if _, err := f.hold(grantContext(t)); err != nil {
		t.Fatalf("grant: %v", err)
	}
	wantCommitted(t, f.tracking, 50)
	advances := f.coord.advances()
	if len(advances) == 0 || advances[0].Advance.LastEventID <= 30 {
		t.Fatalf("advances %v, want the first to record a position past the adopted 30", advances)
	}
	if st := f.state(); st.Cursor.LastEventID != 50 || st.Lease.Holder != "" {
		t.Errorf("replicated state after the grant: cursor %d, lease %+v; want 50 and free", st.Cursor.LastEventID, st.Lease)
	}
}

// While a long commit runs, every renewal fails (no leader answers). The
// renewer gives up while a third of the lease is left, and cancels the
// batch: nothing is written, and the lease, which may be another peer's
// by now, is not released.
func TestGrantRenewalThatFailsInTimeCancelsTheBatch(t *testing.T) {
	f := newGrantFixture(t, 5, LoopConfig{LeaseTTL: 600 * time.Millisecond, DBTimeout: 10 * time.Second})
	f.coord.setIntercept(func(cmd fsm.Command) (fsm.Result, error, bool) {
		if cmd.Op == fsm.OpRenew {
			return fsm.Result{}, fmt.Errorf("%w: the test's leader is gone", api.ErrNoLeader), true
		}
		return fsm.Result{}, nil, false
	})
	cancelled := make(chan error, 1)
	f.tracking.beforeCommit = func(ctx context.Context, b Batch) error {
		<-ctx.Done()
		cancelled <- context.Cause(ctx)
		return ctx.Err()
	}
	start := time.Now()
	_, err := f.hold(grantContext(t))
	if !errors.Is(err, errLeaseLost) {
		t.Fatalf("grant ended with %v after %s, want the lease lost", err, time.Since(start))
	}
	if cause := <-cancelled; !errors.Is(cause, errLeaseLost) {
		t.Errorf("the commit was cancelled by %v, want the renewer's errLeaseLost", cause)
	}
	if took := time.Since(start); took >= 600*time.Millisecond {
		t.Errorf("gave up after %s, at or past the lease TTL", took)
	}
	wantCommitted(t, f.tracking, 0)
	if n := countOps(f.coord.log, fsm.OpRelease) + len(f.coord.advances()); n != 0 {
		t.Errorf("%d releases or advances sent after the lease was lost", n)
	}
}

// Through a backlog every advance keeps the lease; the grant's last one
// releases it. Together they count every event and batch once.
func TestGrantKeepsTheLeaseThroughABacklogAndReleasesItAtTheEnd(t *testing.T) {
	f := newGrantFixture(t, 25, LoopConfig{AdvanceInterval: time.Nanosecond})
	if _, err := f.hold(grantContext(t)); err != nil {
		t.Fatalf("grant: %v", err)
	}
	wantCommitted(t, f.tracking, 25)
	advances := f.coord.advances()
	var events, batches uint64
	for i, a := range advances {
		last := i == len(advances)-1
		if a.Advance.Keep == last {
			t.Errorf("advance %d of %d (to %d) has keep=%t", i+1, len(advances), a.Advance.LastEventID, a.Advance.Keep)
		}
		if a.Advance.Seq != uint64(i+1) {
			t.Errorf("advance %d has seq %d", i+1, a.Advance.Seq)
		}
		events += a.Advance.Events
		batches += a.Advance.Batches
	}
	if events != 25 || batches != 3 {
		t.Errorf("advances record %d events in %d batches, want 25 in 3", events, batches)
	}
	if st := f.state(); st.Cursor.LastEventID != 25 || st.Lease.Holder != "" || st.Stats.EventsProcessed != 25 {
		t.Errorf("after the backlog: cursor %d, lease %+v, %d events; want 25, free, 25", st.Cursor.LastEventID, st.Lease, st.Stats.EventsProcessed)
	}
}

// The answer to an advance that releases the lease is lost, whether or
// not it was applied. The grant ends with the unknown outcome; the next
// grant finds the fence row ahead of (or at) the replicated cursor, goes
// on from there, and every event is written once.
func TestGrantReleasingAdvanceWithUnknownOutcomeIsAdoptedByTheNextGrant(t *testing.T) {
	for _, applied := range []bool{false, true} {
		t.Run(fmt.Sprintf("applied=%t", applied), func(t *testing.T) {
			f := newGrantFixture(t, 35, LoopConfig{AdvanceInterval: time.Nanosecond, QuietSpell: -1})
			f.loseAdvanceAnswer(false, applied)
			ctx := grantContext(t)
			if _, err := f.hold(ctx); !errors.Is(err, api.ErrUnknownOutcome) {
				t.Fatalf("first grant ended with %v, want the unknown outcome", err)
			}
			f.source.add(10)
			if _, err := f.hold(ctx); err != nil {
				t.Fatalf("second grant: %v", err)
			}
			wantCommitted(t, f.tracking, 45)
			if st := f.state(); st.Cursor.LastEventID != 45 || st.Lease.Holder != "" {
				t.Errorf("after both grants: cursor %d, lease %+v; want 45 and free", st.Cursor.LastEventID, st.Lease)
			}
		})
	}
}

// The leader dies while it applies an advance that keeps the lease: its
// answer is lost, whether or not it was applied. The grant does not end: a
// renew tells whether the advance was applied (it counts the advances of
// the token), the advance is sent again only if it was not, and every
// event and batch is counted once.
func TestGrantKeepingAdvanceWithUnknownOutcomeGoesOn(t *testing.T) {
	for _, applied := range []bool{false, true} {
		t.Run(fmt.Sprintf("applied=%t", applied), func(t *testing.T) {
			f := newGrantFixture(t, 30, LoopConfig{AdvanceInterval: time.Nanosecond, QuietSpell: -1})
			lost := f.loseAdvanceAnswer(true, applied)
			if _, err := f.hold(grantContext(t)); err != nil {
				t.Fatalf("grant ended with %v, want it to go on through the lost answer", err)
			}
			if !*lost {
				t.Fatal("no advance kept the lease: the test lost nothing")
			}
			wantCommitted(t, f.tracking, 30)
			st := f.state()
			if st.Cursor.LastEventID != 30 || st.Lease.Holder != "" || st.Stats.EventsProcessed != 30 || st.Stats.Batches != 3 {
				t.Errorf("after the grant: cursor %d, lease %+v, %d events in %d batches; want 30, free, 30 in 3",
					st.Cursor.LastEventID, st.Lease, st.Stats.EventsProcessed, st.Stats.Batches)
			}
			if n := countOps(f.coord.log, fsm.OpRenew); n < 1 {
				t.Errorf("%d renews sent, want one to settle the lost answer", n)
			}
		})
	}
}

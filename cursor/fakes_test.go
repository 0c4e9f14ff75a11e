package cursor

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/internal/localcoord"
)

// Fakes of the loop's ports, for unit tests of the grant that need no
// database: an in-memory event log, an in-memory tracking store with a
// fence row that checks batches as the real one does, and a coordinator
// whose answers a test can intercept.

// memSource is an event log in memory: IDs 1..n, all visible.
type memSource struct {
	mu     sync.Mutex
	events []Event
	// onFetch, if set, is called at the end of every Fetch with its after.
	onFetch func(after int64)
}

func newMemSource(n int) *memSource {
	s := &memSource{}
	for id := int64(1); id <= int64(n); id++ {
		geoID := id
		s.events = append(s.events, Event{ID: id, CreatedAt: time.Unix(0, id).UTC(), GeoEventID: &geoID,
			GeoEvent: &GeoEvent{ID: id, ReplicableName: "lfs_object", EventName: "updated", Payload: []byte(fmt.Sprintf(`{"model_record_id": %d}`, id))}})
	}
	return s
}

// add appends n events after the last one.
func (s *memSource) add(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	last := int64(len(s.events))
	for id := last + 1; id <= last+int64(n); id++ {
		geoID := id
		s.events = append(s.events, Event{ID: id, CreatedAt: time.Unix(0, id).UTC(), GeoEventID: &geoID,
			GeoEvent: &GeoEvent{ID: id, ReplicableName: "lfs_object", EventName: "updated", Payload: []byte(fmt.Sprintf(`{"model_record_id": %d}`, id))}})
	}
}

func (s *memSource) Fetch(ctx context.Context, after int64, gaps []int64, limit int) ([]Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Event
	n := 0
	for _, ev := range s.events {
		switch {
		case ev.ID > after && n < limit:
			out = append(out, ev)
			n++
		case ev.ID <= after && contains(gaps, ev.ID):
			out = append(out, ev)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	if s.onFetch != nil {
		s.onFetch(after)
	}
	return out, nil
}

func (s *memSource) Pending(ctx context.Context, after int64, gaps []int64) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ev := range s.events {
		if ev.ID > after || contains(gaps, ev.ID) {
			return true, nil
		}
	}
	return false, nil
}

func (s *memSource) Visible(ctx context.Context, ids []int64) ([]int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int64
	for _, ev := range s.events {
		if contains(ids, ev.ID) {
			out = append(out, ev.ID)
		}
	}
	return out, nil
}

func (s *memSource) Oldest(context.Context) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.events) == 0 {
		return 0, nil
	}
	return s.events[0].ID, nil
}

func (s *memSource) Head(context.Context) (int64, time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.events) == 0 {
		return 0, time.Time{}, nil
	}
	last := s.events[len(s.events)-1]
	return last.ID, last.CreatedAt, nil
}

func contains(ids []int64, id int64) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// memTracking is a tracking store in memory. A staged batch commits only
// if the fence holds no newer token and stands where the batch starts,
// and an event can be committed once; otherwise it is refused with
// ErrFenced, as by the real store.
type memTracking struct {
	mu        sync.Mutex
	fence     Fence
	committed map[int64]uint64 // event ID -> token that committed it
	aborted   []Position       // starts of the batches rolled back
	// beforeStage and beforeCommit, if set, run at the start of every
	// Stage and Commit with the batch, under no lock; they may block on
	// ctx.
	beforeStage  func(ctx context.Context, b Batch) error
	beforeCommit func(ctx context.Context, b Batch) error
}

// newMemTracking is a tracking store whose fence was positioned at 0, as
// by a holder that started from the oldest event of an unpruned log.
func newMemTracking() *memTracking {
	return &memTracking{committed: map[int64]uint64{}, fence: Fence{Positioned: true}}
}

func (t *memTracking) Place(_ context.Context, token uint64, start Position) (Fence, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fence.Positioned || t.fence.Token != token {
		return Fence{}, fmt.Errorf("%w: placed already, or claimed by token %d", ErrFenced, t.fence.Token)
	}
	t.fence = Fence{Token: token, Position: start, Positioned: true}
	return t.fence, nil
}

func (t *memTracking) GitLabCursor(context.Context) (int64, bool, error) { return 0, false, nil }

func (t *memTracking) Claim(_ context.Context, token uint64) (Fence, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.fence.Token > token {
		return Fence{}, fmt.Errorf("%w: token %d is older than token %d", ErrFenced, token, t.fence.Token)
	}
	t.fence.Token = token
	return t.fence, nil
}

func (t *memTracking) Fence(context.Context) (Fence, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fence, nil
}

func (t *memTracking) Ping(context.Context) error { return nil }

func (t *memTracking) Stage(ctx context.Context, b Batch) (StagedBatch, error) {
	if _, err := checkBatch(b); err != nil {
		return nil, err
	}
	if t.beforeStage != nil {
		if err := t.beforeStage(ctx, b); err != nil {
			return nil, err
		}
	}
	return &memStaged{t: t, b: b}, nil
}

// setFence moves the fence row as another holder would.
func (t *memTracking) setFence(f Fence) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.fence = f
}

// ids returns the committed event IDs in order.
func (t *memTracking) ids() []int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var ids []int64
	for id := range t.committed {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

type memStaged struct {
	t    *memTracking
	b    Batch
	done bool
}

func (s *memStaged) Commit(ctx context.Context) (CommitResult, error) {
	if s.done {
		return CommitResult{}, errors.New("memStaged: committed or aborted twice")
	}
	s.done = true
	if hook := s.t.beforeCommit; hook != nil {
		if err := hook(ctx, s.b); err != nil {
			return CommitResult{}, err
		}
	}
	t := s.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return CommitResult{}, err
	}
	switch {
	case t.fence.Token > s.b.Token:
		return CommitResult{}, fmt.Errorf("%w: token %d is older than token %d", ErrFenced, s.b.Token, t.fence.Token)
	case !t.fence.Position.Same(s.b.Start):
		return CommitResult{}, fmt.Errorf("%w: batch starts at %d, fence at %d", ErrFenced, s.b.Start.LastEventID, t.fence.Position.LastEventID)
	}
	for _, ev := range s.b.Events {
		if _, dup := t.committed[ev.ID]; dup {
			return CommitResult{}, fmt.Errorf("%w: event %d committed already", ErrFenced, ev.ID)
		}
	}
	for _, ev := range s.b.Events {
		t.committed[ev.ID] = s.b.Token
	}
	t.fence = Fence{Token: s.b.Token, Position: s.b.Next, Positioned: true}
	return CommitResult{Jobs: len(s.b.Events)}, nil
}

func (s *memStaged) Abort() {
	if s.done {
		return
	}
	s.done = true
	s.t.mu.Lock()
	s.t.aborted = append(s.t.aborted, s.b.Start)
	s.t.mu.Unlock()
}

// hookedCoordinator is a local coordinator whose answers a test can take
// over: intercept, if set, sees every command first and may answer it
// itself (handled) or let it through.
type hookedCoordinator struct {
	*localcoord.Coordinator
	mu        sync.Mutex
	intercept func(cmd fsm.Command) (res fsm.Result, err error, handled bool)
	log       []fsm.Command // every command that reached the state machine
}

func newHookedCoordinator(id string) *hookedCoordinator {
	return &hookedCoordinator{Coordinator: localcoord.New(id)}
}

func (c *hookedCoordinator) Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error) {
	c.mu.Lock()
	hook := c.intercept
	c.mu.Unlock()
	if hook != nil {
		if res, err, handled := hook(cmd); handled {
			return res, err
		}
	}
	c.mu.Lock()
	c.log = append(c.log, cmd)
	c.mu.Unlock()
	return c.Coordinator.Apply(ctx, cmd)
}

func (c *hookedCoordinator) setIntercept(f func(cmd fsm.Command) (fsm.Result, error, bool)) {
	c.mu.Lock()
	c.intercept = f
	c.mu.Unlock()
}

// advances returns the advances that reached the state machine.
func (c *hookedCoordinator) advances() []fsm.Command {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []fsm.Command
	for _, cmd := range c.log {
		if cmd.Op == fsm.OpAdvance {
			out = append(out, cmd)
		}
	}
	return out
}

// grantFixture is a loop over the fakes, and the means to run one grant.
type grantFixture struct {
	t        *testing.T
	coord    *hookedCoordinator
	source   *memSource
	tracking *memTracking
	loop     *Loop
}

func newGrantFixture(t *testing.T, events int, cfg LoopConfig) *grantFixture {
	t.Helper()
	f := &grantFixture{t: t, coord: newHookedCoordinator("a"), source: newMemSource(events), tracking: newMemTracking()}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 10
	}
	if cfg.LeaseTTL == 0 {
		cfg.LeaseTTL = 5 * time.Second
	}
	cfg.GapTimeout, cfg.PollInterval = time.Hour, time.Millisecond
	f.loop = NewLoop(cfg, f.coord, f.source, f.tracking, nil, nil)
	return f
}

// hold acquires the lease and runs one grant to its end.
func (f *grantFixture) hold(ctx context.Context) (fsm.Result, error) {
	f.t.Helper()
	res, err := f.coord.Apply(ctx, fsm.Command{Op: fsm.OpAcquire, Node: "a", TTL: f.loop.cfg.LeaseTTL})
	if err != nil || res.Err != nil {
		f.t.Fatalf("acquire: %v %v", err, res.Err)
	}
	return res, f.loop.hold(ctx, res)
}

func (f *grantFixture) state() fsm.State {
	st, _ := f.coord.Watch()
	return st
}

package cursor

import (
	"context"
	"time"

	"github.com/geocursor/geocursor/fsm"
)

// The loop's ports: what it needs of the Raft group, the source and the
// tracking database. cluster.Node, *Source and *Tracking satisfy them;
// tests give fakes.

// Coordinator is what the loop needs of the Raft group: apply a command on
// the leader and watch the local replica of the state.
type Coordinator interface {
	ID() string
	Apply(ctx context.Context, cmd fsm.Command) (fsm.Result, error)
	Watch() (fsm.State, <-chan struct{})
}

// leaseDeferrer is a Coordinator that knows whether this peer should let
// the others take a free lease first: a holder that also leads the Raft
// group costs an election when it dies, and stops Raft for all (see
// cluster.Node.DeferLease). A Coordinator without it never defers.
type leaseDeferrer interface {
	DeferLease() bool
}

// EventSource is the event log the loop reads.
type EventSource interface {
	Fetch(ctx context.Context, after int64, gaps []int64, limit int) ([]Event, error)
	Pending(ctx context.Context, after int64, gaps []int64) (bool, error)
	// Visible returns which of ids are in the log now, in ID order.
	Visible(ctx context.Context, ids []int64) ([]int64, error)
	Head(ctx context.Context) (int64, time.Time, error)
	// Oldest is the lowest event ID the source still keeps (0: none).
	Oldest(ctx context.Context) (int64, error)
}

// TrackingStore is the tracking database the loop writes: the fence row,
// and batches in transactions fenced by it.
type TrackingStore interface {
	// Claim raises the fence row's token to token and returns the fence.
	Claim(ctx context.Context, token uint64) (Fence, error)
	// Fence reads the fence row.
	Fence(ctx context.Context) (Fence, error)
	// Place positions a fence row that was never positioned (a fresh
	// tracking database) at start, under token.
	Place(ctx context.Context, token uint64, start Position) (Fence, error)
	// GitLabCursor reads the event_log_states row GitLab's own log cursor
	// left, if any: where a site taking over from it continues.
	GitLabCursor(ctx context.Context) (eventID int64, ok bool, err error)
	// Stage opens b's transaction and writes what needs no lock; the
	// batch is written once the StagedBatch commits.
	Stage(ctx context.Context, b Batch) (StagedBatch, error)
	Ping(ctx context.Context) error
}

// StagedBatch is a batch whose transaction is open. Exactly one of Commit
// and Abort is called.
type StagedBatch interface {
	Commit(ctx context.Context) (CommitResult, error)
	Abort()
}

// Gate says whether this site may process now: "" when it may, else why
// not (package gitlab's Watcher: the site was promoted, or GitLab's own
// log cursor holds its lease). A loop without one always may.
type Gate interface {
	Closed() string
}

// GitLabGaps reads the gaps GitLab's own log cursor left open (its
// geo:event_log:gaps set), first seen when it saw them: a site that takes
// over from it adopts them as open gaps of its own.
type GitLabGaps interface {
	OpenGaps(ctx context.Context) ([]fsm.Gap, error)
}

package systemtest

// Processing tests: three real agents read a real PostgreSQL event log and
// write a real tracking database while the test writes events, kills and
// pauses agents and restarts the database. Each ends with checkOutcome:
// every committed event applied exactly once, the registry right, and the
// cursor at the source head.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/internal/loadgen"
	"github.com/geocursor/geocursor/internal/pgserver"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

// This test keeps every timer and size at its default (lease, Raft, batch
// size, poll interval, gap timeout), as an operator would run it.
func TestThreeAgentsProcessConcurrentWritersExactlyOnce(t *testing.T) {
	clk := newClock(t)
	d := newProcDBs(t, false)
	c := startProcessing(t, d, procConfig{})
	clk.Logf("three agents up and connected")

	bg := startLoad(t, d, loadgen.Config{
		Writers: 8, Total: 20000,
		RollbackFraction: 0.02, HoldFraction: 0.02, HoldFor: 300 * time.Millisecond,
		CacheInvalidationFraction: 0.05, BadFraction: 0.02, Seed: 1,
	})
	stats := bg.wait(t, 3*time.Minute)
	clk.Logf("load: %d events committed in %s (%d rolled back, %d held, %d cache invalidations, %d bad), IDs %d..%d",
		stats.Committed, stats.Elapsed.Round(time.Millisecond), stats.RolledBack, stats.Held, stats.CacheInvalidations, stats.Bad, stats.FirstID, stats.LastID)
	if stats.Committed != 20000 {
		t.Fatalf("load committed %d events, want 20000", stats.Committed)
	}

	clk.Logf("checking the outcome")
	checkOutcome(t, d, c)
	clk.Logf("outcome checked")

	// Every malformed event is a dead letter, and nothing else is.
	if n := queryInt(t, d.Tracking, `SELECT count(*) FROM geo_dead_letters`); n != stats.Bad {
		t.Errorf("%d dead letters, want the %d bad events the load wrote", n, stats.Bad)
	}
	if n := queryInt(t, d.Tracking, `SELECT count(*) FROM geo_jobs WHERE kind = 'cache_invalidation'`); n != stats.CacheInvalidations {
		t.Errorf("%d cache_invalidation jobs, want %d", n, stats.CacheInvalidations)
	}
	st := mustStatus(t, c.Agents[0])
	clk.Logf("stats: %+v, open gaps %d", st.Stats, st.Cursor.OpenGaps)
}

func TestHolderKilledMidBatchExactlyOnce(t *testing.T) {
	clk := newClock(t)
	d := newProcDBs(t, false)
	// The test kills a holder that leads as well as one that follows: with
	// lease.prefer_follower on, a holder rarely leads for long.
	c := startProcessing(t, d, procConfig{FastTimers: true, BatchSize: 50, LeaderMayHold: true})
	clk.Logf("three agents up and connected")
	bg := startLoad(t, d, loadgen.Config{
		Writers: 8, Rate: 800,
		RollbackFraction: 0.01, HoldFraction: 0.02, HoldFor: 300 * time.Millisecond,
		CacheInvalidationFraction: 0.05, BadFraction: 0.01, Seed: 2,
	})

	// Which peer holds the lease after a failover is up to chance, and it
	// tends to stay of the same kind (the survivors' random delays, and the
	// leader hears of a free lease first). So each round looks at the
	// holder, kills it if it is of a kind still missing, and otherwise
	// steers: a holder that leads, killed and restarted at once, comes back
	// as a follower and takes its lease back (the last holder goes first);
	// a holder that follows may become the leader when the leader dies.
	const maxRounds = 12
	killedFollower, killedLeader := false, false
	for round := int64(1); !killedFollower || !killedLeader; round++ {
		if round > maxRounds {
			t.Fatalf("after %d rounds the lease holder was never %s", maxRounds, map[bool]string{true: "a follower", false: "the leader"}[killedLeader])
		}
		st, head := holderInBacklog(t, d, c, round)
		holder, leader := c.Agent(t, *st.Lease.Holder), c.Agent(t, st.Leader.ID)
		switch isLeader := holder == leader; {
		case isLeader && !killedLeader, !isLeader && !killedFollower:
			killHolder(t, clk, c, st, head, round, false)
			killedLeader = killedLeader || isLeader
			killedFollower = killedFollower || !isLeader
		case isLeader:
			killHolder(t, clk, c, st, head, round, true)
		default:
			leader.Kill(t)
			clk.Logf("round %d: holder %s is a follower; killed the leader %s to move the leadership", round, holder.ID, leader.ID)
			next := c.Leader(t)
			clk.Logf("round %d: %s leads now", round, next.ID)
			leader.Restart(t)
			c.WaitFormed(t, 30*time.Second)
		}
	}

	stats := bg.stop(t)
	clk.Logf("load: %d events committed (%d rolled back, %d held)", stats.Committed, stats.RolledBack, stats.Held)
	clk.Logf("checking the outcome")
	checkOutcome(t, d, c)
	clk.Logf("outcome checked")
}

// With lease.prefer_follower on (the default) the lease holder is a
// follower, and SIGKILL of the leader stops no batch: the holder goes on
// committing under the same grant through the election, its progress is
// recorded once a new leader is there, and if it won the election itself,
// it hands leadership on. Every event is processed once.
func TestLeaderKillDoesNotStopTheHolder(t *testing.T) {
	clk := newClock(t)
	d := newProcDBs(t, false)
	c := startProcessing(t, d, procConfig{})
	bg := startLoad(t, d, loadgen.Config{Writers: 4, Rate: 300, Seed: 5})

	// A follower holding the lease is not enough: a grant that found
	// nothing new still shows as held until its release lands. Wait for a
	// grant that is working: the same holder and token seen twice at
	// least half a second apart, with the cursor moved in between.
	var (
		before   api.Status
		seen     api.Status
		seenAt   time.Time
		sameHold = func(a, b api.Status) bool {
			return a.Lease.Holder != nil && b.Lease.Holder != nil && *a.Lease.Holder == *b.Lease.Holder && a.Lease.Token == b.Lease.Token
		}
	)
	ts.WaitFor(t, 30*time.Second, "a follower to hold the lease and process under it", func() (bool, string) {
		var err error
		before, err = anyStatus(c.Live())
		switch {
		case err != nil:
			return false, err.Error()
		case before.Lease.Holder == nil || before.Leader == nil:
			return false, "lease " + leaseString(before)
		case *before.Lease.Holder == before.Leader.ID:
			return false, fmt.Sprintf("lease %s, held by the leader", leaseString(before))
		case !sameHold(before, seen) || before.Cursor.LastEventID < seen.Cursor.LastEventID:
			seen, seenAt = before, time.Now()
			return false, fmt.Sprintf("lease %s, leader %s: a new grant", leaseString(before), before.Leader.ID)
		}
		working := time.Since(seenAt) >= 500*time.Millisecond && before.Cursor.LastEventID > seen.Cursor.LastEventID
		return working, fmt.Sprintf("lease %s, leader %s, cursor %d (%d when first seen)",
			leaseString(before), before.Leader.ID, before.Cursor.LastEventID, seen.Cursor.LastEventID)
	})
	leader, holder := c.Agent(t, before.Leader.ID), c.Agent(t, *before.Lease.Holder)
	clk.Logf("%s holds token %d at cursor %d; killing the leader %s", holder.ID, before.Lease.Token, before.Cursor.LastEventID, leader.ID)
	leader.Kill(t)

	var after api.Status
	ts.WaitFor(t, 30*time.Second, "a new leader and the cursor 300 events further", func() (bool, string) {
		var err error
		after, err = statusOf(holder)
		switch {
		case err != nil:
			return false, err.Error()
		case after.Leader == nil || after.Leader.ID == leader.ID:
			return false, fmt.Sprintf("leader %+v", after.Leader)
		}
		return after.Cursor.LastEventID >= before.Cursor.LastEventID+300, fmt.Sprintf("cursor %d, lease %s", after.Cursor.LastEventID, leaseString(after))
	})
	if after.Lease.Holder == nil || *after.Lease.Holder != holder.ID || after.Lease.Token != before.Lease.Token {
		t.Errorf("after the leader's death the lease is %s, want %s still holding token %d: the grant did not survive the election",
			leaseString(after), holder.ID, before.Lease.Token)
	}
	clk.Logf("new leader %s; %s still holds token %d, cursor %d", after.Leader.ID, holder.ID, after.Lease.Token, after.Cursor.LastEventID)
	ts.WaitFor(t, 30*time.Second, "the holder to be a follower again", func() (bool, string) {
		st, err := statusOf(holder)
		if err != nil {
			return false, err.Error()
		}
		if st.Leader == nil || st.Lease.Holder == nil {
			return false, fmt.Sprintf("lease %s, leader %+v", leaseString(st), st.Leader)
		}
		return *st.Lease.Holder != st.Leader.ID, fmt.Sprintf("lease %s, leader %s", leaseString(st), st.Leader.ID)
	})

	leader.Restart(t)
	c.WaitFormed(t, 30*time.Second)
	stats := bg.stop(t)
	clk.Logf("load: %d events committed", stats.Committed)
	checkOutcome(t, d, c)
}

// holderInBacklog gives the peers a backlog of small batches and returns
// a status that shows a holder in the middle of it, and the backlog's end.
func holderInBacklog(t *testing.T, d *procDBs, c *ts.Cluster, round int64) (api.Status, int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A backlog takes about a second to process; if no status showed a
	// holder in the middle of it (a status answer takes a while when a
	// member is slow to answer its probe), load another.
	var detail string
	for attempt := int64(0); attempt < 5; attempt++ {
		if err := loadgen.BulkLoad(ctx, d.Source, 5000, round*10+attempt); err != nil {
			t.Fatalf("bulk load: %v", err)
		}
		head := sourceHead(t, d)
		var (
			st     api.Status
			missed bool
		)
		found, last := ts.Poll(10*time.Second, 20*time.Millisecond, func() (bool, string) {
			var err error
			st, err = anyStatus(c.Live())
			switch {
			case err != nil:
				return false, err.Error()
			case st.Cursor.LastEventID >= head-500:
				missed = true
				return true, fmt.Sprintf("missed the backlog: cursor %d, backlog ends at %d", st.Cursor.LastEventID, head)
			case st.Lease.Holder == nil || st.Leader == nil:
				return false, fmt.Sprintf("lease %s, leader %+v", leaseString(st), st.Leader)
			}
			return true, ""
		})
		if found && !missed {
			return st, head
		}
		detail = last
	}
	t.Fatalf("round %d: never saw a peer hold the lease in the middle of a backlog: %s", round, detail)
	return api.Status{}, 0
}

// killHolder SIGKILLs the holder that st shows, waits until processing goes
// on under a newer token, and restarts the killed peer: after that, or, with
// restartAtOnce, right away.
func killHolder(t *testing.T, clk *testClock, c *ts.Cluster, st api.Status, head, round int64, restartAtOnce bool) {
	t.Helper()
	holder := c.Agent(t, *st.Lease.Holder)
	role := "follower"
	if holder.ID == st.Leader.ID {
		role = "leader"
	}
	holder.Kill(t)
	killedAt := time.Now()
	clk.Logf("round %d: killed %s (%s) holding token %d at cursor %d, backlog up to %d", round, holder.ID, role, st.Lease.Token, st.Cursor.LastEventID, head)
	if restartAtOnce {
		holder.Restart(t)
	}

	var took api.Status
	ts.WaitFor(t, 20*time.Second, "processing to go on after "+holder.ID+" was killed", func() (bool, string) {
		var err error
		took, err = anyStatus(c.Live())
		if err != nil {
			return false, err.Error()
		}
		ok := took.Lease.Token > st.Lease.Token && took.Cursor.LastEventID > st.Cursor.LastEventID+100
		return ok, fmt.Sprintf("lease %s, cursor %d", leaseString(took), took.Cursor.LastEventID)
	})
	clk.Logf("round %d: processing went on %s after the kill (now %s, cursor %d)", round, time.Since(killedAt).Round(time.Millisecond), leaseString(took), took.Cursor.LastEventID)

	if !restartAtOnce {
		holder.Restart(t)
	}
	c.WaitFormed(t, 30*time.Second)
}

func TestPausedHolderIsFencedOut(t *testing.T) {
	clk := newClock(t)
	d := newProcDBs(t, false)
	c := startProcessing(t, d, procConfig{FastTimers: true, BatchSize: 50})
	clk.Logf("three agents up and connected")
	bg := startLoad(t, d, loadgen.Config{
		Writers: 4, Rate: 300,
		RollbackFraction: 0.02, HoldFraction: 0.02, HoldFor: 300 * time.Millisecond,
		CacheInvalidationFraction: 0.05, Seed: 3,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A backlog of small batches, so that the holder holds on to the lease.
	if err := loadgen.BulkLoad(ctx, d.Source, 20000, 3); err != nil {
		t.Fatalf("bulk load: %v", err)
	}
	head := sourceHead(t, d)

	var st api.Status
	ts.WaitFor(t, 20*time.Second, "a peer to hold the lease while it works through the backlog", func() (bool, string) {
		var err error
		st, err = anyStatus(c.Agents)
		if err != nil {
			return false, err.Error()
		}
		return st.Lease.Holder != nil && st.Cursor.LastEventID < head-5000,
			fmt.Sprintf("lease %s, cursor %d, head %d", leaseString(st), st.Cursor.LastEventID, head)
	})
	paused := c.Agent(t, *st.Lease.Holder)
	token := st.Lease.Token
	if err := paused.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	pausedAt := time.Now()
	resumed := false
	t.Cleanup(func() {
		if !resumed {
			_ = paused.Signal(syscall.SIGCONT)
		}
	})
	var others []*ts.Agent
	for _, a := range c.Agents {
		if a != paused {
			others = append(others, a)
		}
	}
	// The replicated lease as the others see it once it can no longer
	// change on the paused peer's behalf: the token it holds.
	if now, err := anyStatus(others); err == nil && now.Lease.Holder != nil && *now.Lease.Holder == paused.ID {
		token = now.Lease.Token
	}
	clk.Logf("paused %s holding token %d at cursor %d (source head %d)", paused.ID, token, st.Cursor.LastEventID, head)

	// Another peer takes over and processes while the holder is paused,
	// for longer than the lease TTL (2s).
	const ttl = 2 * time.Second
	var (
		took    api.Status
		movedAt time.Duration
	)
	ok, detail := ts.Poll(30*time.Second, 50*time.Millisecond, func() (bool, string) {
		var err error
		took, err = anyStatus(others)
		if err != nil {
			return false, err.Error()
		}
		moved := took.Lease.Token > token && took.Cursor.LastEventID > st.Cursor.LastEventID+500
		if moved && movedAt == 0 {
			movedAt = time.Since(pausedAt)
		}
		return moved && time.Since(pausedAt) > ttl+time.Second,
			fmt.Sprintf("lease %s, cursor %d", leaseString(took), took.Cursor.LastEventID)
	})
	if !ok {
		t.Fatalf("no other peer processed while %s was paused for %s: %s\ntracking database sessions:\n%s",
			paused.ID, time.Since(pausedAt).Round(time.Millisecond), detail, trackingSessions(t, d))
	}
	clk.Logf("while %s was paused: %s, cursor %d; processing went on %s after the pause", paused.ID, leaseString(took), took.Cursor.LastEventID, movedAt.Round(time.Millisecond))

	offset := logSize(t, paused)
	if err := paused.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed = true

	// Its grant is over: whatever it does next under its token fails, and
	// it says so. What it says depends on where the pause caught it:
	// renewing or advancing reports the lease lost; a commit begun after
	// the new holder's claim is fenced; a batch it was committing died with
	// its session, which the tracking database ended for idling in a
	// transaction (it held the fence row against the new holder); a read or
	// a command to the Raft leader in flight timed out during the pause.
	// Whether a stale write got in is decided below, by the fence token and
	// the exactly-once check.
	var refusal string
	ts.WaitFor(t, 20*time.Second, paused.ID+" to report that its work under token "+fmt.Sprint(token)+" stopped", func() (bool, string) {
		lines := logSince(paused, offset)
		for _, line := range lines {
			if strings.Contains(line, `"@module":"geocursor.cursor"`) &&
				(strings.Contains(line, "lease lost") || strings.Contains(line, "fenced") || strings.Contains(line, "processing interrupted")) {
				refusal = line
				return true, ""
			}
		}
		return false, fmt.Sprintf("its log since SIGCONT:\n%s", strings.Join(lines[:min(len(lines), 30)], "\n"))
	})
	clk.Logf("%s after it resumed: %s", paused.ID, refusal)
	c.WaitFormed(t, 30*time.Second)

	stats := bg.stop(t)
	clk.Logf("load: %d events committed (%d rolled back, %d held) besides the backlog", stats.Committed, stats.RolledBack, stats.Held)
	clk.Logf("checking the outcome")
	checkOutcome(t, d, c)
	clk.Logf("outcome checked")
	f, err := readFence(ctx, d)
	if err != nil {
		t.Fatalf("read the fence row: %v", err)
	}
	if uint64(f.Token) <= token {
		t.Errorf("fence token %d, want above the paused peer's token %d", f.Token, token)
	}
}

// trackingSessions lists the tracking database's sessions, to show who
// holds or waits for the fence row when processing is stuck.
func trackingSessions(t *testing.T, d *procDBs) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rows, err := d.Tracking.Query(ctx, `
SELECT pid, coalesce(application_name, ''), coalesce(state, ''), coalesce(wait_event_type || ':' || wait_event, ''),
       coalesce(extract(epoch FROM now() - xact_start)::text, ''), left(query, 80)
FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var (
			pid                          int32
			app, state, wait, age, query string
		)
		if err := rows.Scan(&pid, &app, &state, &wait, &age, &query); err != nil {
			return err.Error()
		}
		fmt.Fprintf(&b, "  pid %d %q state %q wait %q xact age %ss: %s\n", pid, app, state, wait, age, strings.Join(strings.Fields(query), " "))
	}
	return b.String()
}

func TestLateGapEventProcessedSoonAfterCommit(t *testing.T) {
	clk := newClock(t)
	d := newProcDBs(t, false)
	c := startProcessing(t, d, procConfig{})
	clk.Logf("three agents up and connected")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// The late event takes its ID and stays uncommitted.
	tx, err := d.Source.Begin(ctx)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	late := insertGeoEvent(t, tx, "project_repository", "updated", `{"model_record_id": 7}`)

	// Higher IDs commit, some for the same record, and are processed.
	var higher int64
	commitEvents(t, d, func(tx pgx.Tx) {
		for i := range 10 {
			higher = insertGeoEvent(t, tx, "project_repository", "updated", fmt.Sprintf(`{"model_record_id": %d}`, 7+i%2))
		}
	})
	st := waitCursor(t, c.Agents, higher, 20*time.Second)
	if st.Cursor.OpenGaps < 1 {
		t.Errorf("cursor moved past uncommitted event %d to %d with %d open gaps, want the event kept as a gap", late, st.Cursor.LastEventID, st.Cursor.OpenGaps)
	}

	// The transaction stays open a while; nothing of it may show meanwhile.
	time.Sleep(5 * time.Second)
	if n := queryInt(t, d.Tracking, `SELECT count(*) FROM geo_jobs WHERE event_id = $1`, late); n != 0 {
		t.Fatalf("a job for event %d exists before its transaction committed", late)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit the late event: %v", err)
	}
	committedAt := time.Now()

	var jobCreated time.Time
	ok, _ := ts.Poll(10*time.Second, 10*time.Millisecond, func() (bool, string) {
		err := d.Tracking.QueryRow(ctx, `SELECT created_at FROM geo_jobs WHERE event_id = $1`, late).Scan(&jobCreated)
		return err == nil, ""
	})
	seen := time.Since(committedAt)
	if !ok {
		t.Fatalf("no job for late event %d within 10s of its commit", late)
	}
	written := jobCreated.Sub(committedAt)
	clk.Logf("late event %d: job written %s after its commit (seen by the test after %s)", late, written.Round(time.Millisecond), seen.Round(time.Millisecond))
	if written > 3*time.Second {
		t.Errorf("the job for late event %d was written %s after its commit, want well under 3s (about 1s)", late, written.Round(time.Millisecond))
	}

	clk.Logf("checking the outcome")
	checkOutcome(t, d, c)
	clk.Logf("outcome checked")
	// The holder records the batch in Raft at once, but a follower's
	// replica applies it a heartbeat later.
	ts.WaitFor(t, 5*time.Second, "no open gaps in "+c.Agents[0].ID+"'s status", func() (bool, string) {
		st, err := statusOf(c.Agents[0])
		if err != nil {
			return false, err.Error()
		}
		return st.Cursor.OpenGaps == 0, fmt.Sprintf("%d open gaps", st.Cursor.OpenGaps)
	})
}

func TestRolledBackGapDroppedAfterTimeout(t *testing.T) {
	clk := newClock(t)
	const gapTimeout = 3 * time.Second
	d := newProcDBs(t, false)
	c := startProcessing(t, d, procConfig{FastTimers: true, GapTimeout: gapTimeout.String()})
	clk.Logf("three agents up and connected")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var first int64
	commitEvents(t, d, func(tx pgx.Tx) {
		for i := range 5 {
			first = insertGeoEvent(t, tx, "lfs_object", "created", fmt.Sprintf(`{"model_record_id": %d}`, i))
		}
	})
	waitCursor(t, c.Agents, first, 20*time.Second)

	tx, err := d.Source.Begin(ctx)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	rolledBack := insertGeoEvent(t, tx, "lfs_object", "updated", `{"model_record_id": 1}`)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatalf("roll back: %v", err)
	}

	// Higher IDs are processed at once: the gap does not hold them up.
	var higher int64
	commitEvents(t, d, func(tx pgx.Tx) {
		for i := range 5 {
			higher = insertGeoEvent(t, tx, "lfs_object", "updated", fmt.Sprintf(`{"model_record_id": %d}`, i))
		}
	})
	committedAt := time.Now()
	st := waitCursor(t, c.Agents, higher, 20*time.Second)
	passed := time.Since(committedAt)
	clk.Logf("cursor passed rolled-back event %d to %d %s after the commit, open gaps %d", rolledBack, st.Cursor.LastEventID, passed.Round(time.Millisecond), st.Cursor.OpenGaps)
	if passed < gapTimeout/2 && (st.Cursor.OpenGaps != 1 || st.Stats.GapsDropped != 0) {
		t.Errorf("right after the cursor passed rolled-back event %d: open gaps %d, gaps dropped %d; want the gap open", rolledBack, st.Cursor.OpenGaps, st.Stats.GapsDropped)
	}
	f, err := readFence(ctx, d)
	if err != nil {
		t.Fatalf("read the fence row: %v", err)
	}
	var gaps []struct {
		ID        int64 `json:"id"`
		FirstSeen int64 `json:"first_seen"`
	}
	if err := json.Unmarshal([]byte(f.Gaps), &gaps); err != nil {
		t.Fatalf("decode the fence row's gaps %s: %v", f.Gaps, err)
	}
	if len(gaps) != 1 || gaps[0].ID != rolledBack {
		t.Fatalf("fence row gaps %s, want just %d", f.Gaps, rolledBack)
	}
	firstSeen := time.Unix(0, gaps[0].FirstSeen)

	// It is dropped once gap_timeout has passed, not before.
	ts.WaitFor(t, gapTimeout+15*time.Second, fmt.Sprintf("rolled-back event %d to be dropped", rolledBack), func() (bool, string) {
		st, err := anyStatus(c.Agents)
		if err != nil {
			return false, err.Error()
		}
		if st.Stats.GapsDropped >= 1 || st.Cursor.OpenGaps == 0 {
			if early := time.Since(firstSeen); early < gapTimeout {
				t.Fatalf("gap %d dropped %s after it was first seen, before gap_timeout %s (stats %+v, open gaps %d)", rolledBack, early, gapTimeout, st.Stats, st.Cursor.OpenGaps)
			}
		}
		return st.Stats.GapsDropped >= 1 && st.Cursor.OpenGaps == 0,
			fmt.Sprintf("gaps dropped %d, open gaps %d", st.Stats.GapsDropped, st.Cursor.OpenGaps)
	})
	clk.Logf("gap %d dropped within %s of being first seen", rolledBack, time.Since(firstSeen).Round(time.Millisecond))
	logged := false
	for _, a := range c.Agents {
		if strings.Contains(a.Log(), "gave up waiting for skipped event IDs") {
			logged = true
		}
	}
	if !logged {
		t.Errorf("no agent logged that it gave up waiting for event %d", rolledBack)
	}

	// And processing goes on.
	var last int64
	commitEvents(t, d, func(tx pgx.Tx) {
		last = insertGeoEvent(t, tx, "lfs_object", "deleted", `{"model_record_id": 2}`)
	})
	waitCursor(t, c.Agents, last, 20*time.Second)
	clk.Logf("checking the outcome")
	checkOutcome(t, d, c)
	clk.Logf("outcome checked")
	if f, err := readFence(ctx, d); err != nil || f.Gaps != "[]" {
		t.Errorf("fence row gaps %q (%v), want []", f.Gaps, err)
	}
}

func TestTrackingDatabaseRestartMidRun(t *testing.T) {
	clk := newClock(t)
	d := newProcDBs(t, true)
	c := startProcessing(t, d, procConfig{FastTimers: true, BatchSize: 200})
	clk.Logf("three agents up and connected")
	bg := startLoad(t, d, loadgen.Config{
		Writers: 4, Rate: 500,
		RollbackFraction: 0.01, HoldFraction: 0.02, HoldFor: 300 * time.Millisecond,
		CacheInvalidationFraction: 0.05, BadFraction: 0.01, Seed: 6,
	})
	waitCursor(t, c.Agents, 500, 30*time.Second)

	// Watch the status of every agent for the tracking database's state.
	var (
		mu       sync.Mutex
		unreach  string
		watchWG  sync.WaitGroup
		stopping = make(chan struct{})
	)
	watchWG.Add(1)
	go func() {
		defer watchWG.Done()
		for {
			for _, a := range c.Agents {
				st, err := statusOf(a)
				if err == nil && st.Databases != nil && st.Databases.Tracking != "ok" {
					mu.Lock()
					if unreach == "" {
						unreach = a.ID + ": " + st.Databases.Tracking
					}
					mu.Unlock()
				}
			}
			select {
			case <-stopping:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	stopWatch := sync.OnceFunc(func() { close(stopping); watchWG.Wait() })
	t.Cleanup(stopWatch)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	before := mustStatus(t, c.Agents[0]).Cursor.LastEventID
	start := time.Now()
	if err := d.TrackingServer.Restart(ctx, 3*time.Second); err != nil {
		t.Fatalf("restart the tracking database: %v", err)
	}
	clk.Logf("tracking database down and up again in %s (cursor was at %d)", time.Since(start).Round(time.Millisecond), before)

	// Processing resumes: the cursor reaches what the source has now.
	up := time.Now()
	head := sourceHead(t, d)
	st := waitCursor(t, c.Agents, head, 60*time.Second)
	clk.Logf("caught up with event %d %s after the database came back (%s)", head, time.Since(up).Round(time.Millisecond), leaseString(st))
	stopWatch()

	stats := bg.stop(t)
	clk.Logf("load: %d events committed (%d rolled back, %d held)", stats.Committed, stats.RolledBack, stats.Held)
	clk.Logf("checking the outcome")
	checkOutcome(t, d, c)
	clk.Logf("outcome checked")
	mu.Lock()
	defer mu.Unlock()
	if unreach == "" {
		t.Errorf("no agent's status showed the tracking database as unreachable while it was down")
	} else {
		clk.Logf("status while the tracking database was down: %s", unreach)
	}
}

func TestBadEventsBecomeDeadLetters(t *testing.T) {
	clk := newClock(t)
	d := newProcDBs(t, false)
	c := startProcessing(t, d, procConfig{})
	clk.Logf("three agents up and connected")

	// What each bad event's dead-letter reason must mention.
	bad := map[int64]string{}
	var good []int64
	commitEvents(t, d, func(tx pgx.Tx) {
		good = append(good, insertGeoEvent(t, tx, "project_repository", "created", `{"model_record_id": 1}`))
		bad[insertLogRow(t, tx, nil, nil)] = "no geo_event_id or cache_invalidation_event_id"
		noSuchGeoEvent, noSuchCache := int64(987654321), int64(987654322)
		bad[insertLogRow(t, tx, &noSuchGeoEvent, nil)] = "geo_events row 987654321 does not exist"
		bad[insertLogRow(t, tx, nil, &noSuchCache)] = "geo_cache_invalidation_events row 987654322 does not exist"
		bad[insertGeoEvent(t, tx, "lfs_object", "updated", `{"note": "no id"}`)] = "no integer model_record_id"
		bad[insertGeoEvent(t, tx, "lfs_object", "updated", `{"model_record_id": "12"}`)] = "no integer model_record_id"
		bad[insertGeoEvent(t, tx, "package_file", "updated", `[1, 2, 3]`)] = "not a JSON object"
		good = append(good, insertGeoEvent(t, tx, "project_repository", "updated", `{"model_record_id": 1}`))
	})
	waitCursor(t, c.Agents, good[len(good)-1], 20*time.Second)
	// A later batch goes through as well.
	commitEvents(t, d, func(tx pgx.Tx) {
		good = append(good, insertGeoEvent(t, tx, "package_file", "created", `{"model_record_id": 5}`))
	})
	waitCursor(t, c.Agents, good[len(good)-1], 20*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for id, want := range bad {
		var (
			reason string
			row    []byte
		)
		if err := d.Tracking.QueryRow(ctx, `SELECT reason, "row"::text FROM geo_dead_letters WHERE event_id = $1`, id).Scan(&reason, &row); err != nil {
			t.Errorf("dead letter for event %d (want a reason saying %q): %v", id, want, err)
			continue
		}
		if !strings.Contains(reason, want) {
			t.Errorf("dead letter for event %d: reason %q, want it to say %q", id, reason, want)
		}
		var r struct {
			ID int64 `json:"id"`
		}
		if err := json.Unmarshal(row, &r); err != nil || r.ID != id {
			t.Errorf("dead letter for event %d: row %s does not record the event", id, row)
		}
	}
	for _, id := range good {
		if n := queryInt(t, d.Tracking, `SELECT count(*) FROM geo_jobs WHERE event_id = $1 AND kind = 'sync'`, id); n != 1 {
			t.Errorf("event %d: %d sync jobs, want 1", id, n)
		}
	}
	clk.Logf("checking the outcome")
	checkOutcome(t, d, c)
	clk.Logf("outcome checked")
	if n := queryInt(t, d.Tracking, `SELECT count(*) FROM geo_dead_letters`); n != int64(len(bad)) {
		t.Errorf("%d dead letters, want %d", n, len(bad))
	}
	if st := mustStatus(t, c.Agents[0]); st.Stats.DeadLetters != uint64(len(bad)) {
		t.Errorf("status stats.dead_letters %d, want %d", st.Stats.DeadLetters, len(bad))
	}
}

func TestBadSourcePasswordOrMissingTableClearError(t *testing.T) {
	clk := newClock(t)
	srv := ts.StartPostgres(t, pgserver.Options{Fast: true})
	empty := ts.NewDatabase(t, srv, "empty_source")
	tracking := ts.NewDatabase(t, srv, "gitlabhq_geo_tracking")
	dir := ts.TempDir(t, "geocursor-bad-source-")
	hcl := procConfig{}.HCL()
	host := fmt.Sprintf("127.0.0.1:%d", srv.Port)

	withUser := func(dsn, user string) string {
		u, err := url.Parse(dsn)
		if err != nil {
			t.Fatalf("parse DSN: %v", err)
		}
		// The test server trusts every password; the user name is what it
		// can refuse.
		u.User = url.UserPassword(user, "s3cret-password")
		return u.String()
	}
	for i, tc := range []struct {
		name, dsn, db, want string
	}{
		{"database without the tables", withUser(empty, "postgres"), "empty_source", "table geo_event_log does not exist"},
		{"unknown user", withUser(empty, "no_such_user"), "empty_source", `role "no_such_user" does not exist`},
		{"missing database", withUser(srv.DSN("no_such_db"), "postgres"), "no_such_db", `database "no_such_db" does not exist`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := ts.StartAgent(t, dir, ts.AgentSpec{
				NodeID: fmt.Sprintf("bad%d", i), ExtraHCL: hcl,
				Env: []string{"GEOCURSOR_SOURCE_DSN=" + tc.dsn, "GEOCURSOR_TRACKING_DSN=" + tracking},
			})
			code := a.WaitExit(t, 30*time.Second)
			if code == 0 {
				t.Errorf("agent exited with status 0, want a failure")
			}
			log := a.Log()
			var lines []string
			for _, l := range strings.Split(log, "\n") {
				if strings.HasPrefix(l, "geocursor: ") {
					lines = append(lines, l)
				}
			}
			wantDB := "source database " + host + "/" + tc.db
			if len(lines) != 1 || !strings.Contains(lines[0], wantDB) || !strings.Contains(lines[0], tc.want) {
				t.Errorf("want one line on stderr naming %q and saying %q, got %q\n%s", wantDB, tc.want, lines, a.LogTail(10))
			} else {
				clk.Logf("exit status %d: %s", code, lines[0])
			}
			if strings.Contains(log, "s3cret-password") {
				t.Errorf("the agent's output shows the password from the DSN")
			}
		})
	}

	t.Run("nothing listening", func(t *testing.T) {
		addr := ts.FreeAddr(t)
		dsn := "postgres://postgres@" + addr + "/gitlabhq_production?sslmode=disable&connect_timeout=2"
		a := ts.StartAgent(t, dir, ts.AgentSpec{
			NodeID: "unreachable", ExtraHCL: hcl,
			Env: []string{"GEOCURSOR_SOURCE_DSN=" + dsn, "GEOCURSOR_TRACKING_DSN=" + tracking},
		})
		a.WaitReady(t, 20*time.Second)
		var st api.Status
		ts.WaitFor(t, 20*time.Second, "the status to show the source unreachable", func() (bool, string) {
			var err error
			st, err = statusOf(a)
			if err != nil {
				return false, err.Error()
			}
			if st.Databases == nil {
				return false, "no databases in the status"
			}
			return st.Databases.Source != "ok" && strings.Contains(st.Databases.Source, addr), "source: " + st.Databases.Source
		})
		clk.Logf("status databases: %+v", *st.Databases)
		if st.Cursor.SourceLastEventID != nil {
			t.Errorf("status shows source_last_event_id %d though the source is unreachable", *st.Cursor.SourceLastEventID)
		}
		// It keeps retrying rather than exiting.
		ts.WaitFor(t, 20*time.Second, "the agent to retry the source twice", func() (bool, string) {
			if !a.Running() {
				t.Fatalf("agent exited though the source may come up later:\n%s", a.LogTail(10))
			}
			n := strings.Count(a.Log(), "cannot reach the source database; retrying")
			return n >= 2, fmt.Sprintf("%d retries logged", n)
		})
		if !a.Running() {
			t.Fatalf("agent exited though the source may come up later:\n%s", a.LogTail(10))
		}
	})
}

package systemtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/gitlab"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

// Switching a site back to GitLab's geo-logcursor and over to geocursor
// again (design section 13): `geocursor gitlab handback` hands
// geo-logcursor the position and the open gaps, geo-logcursor (played by
// the test) goes on from there, and the agents, started again, take over
// after it. Every event is delivered by exactly one of the three.

// A site with open gaps is handed back to geo-logcursor and taken over
// again. The handback is refused while the agents run and while jobs wait
// for delivery; once it runs, GitLab's gap set holds geocursor's open gaps
// (first seen when geocursor saw them) and event_log_states geocursor's
// position. geo-logcursor fills the gap that committed meanwhile, goes on
// after that position and leaves a gap of its own. The agents, started
// again, take over after event_log_states, adopt what is left in the set,
// and process the late events once; nothing is processed twice across the
// three owners, nothing is lost.
func TestHandbackToGeoLogCursorAndRetake(t *testing.T) {
	clk := newClock(t)
	began := time.Now()
	s := startGitLabSite(t, "1h", nil)
	waitDelivering(t, s.c.Agents)
	ctx := context.Background()

	// geocursor: 1..60, with 11, 23, 37 and 52 drawn but not committed;
	// 23 commits while the agents run.
	open := []int64{11, 23, 37, 52}
	for id := int64(1); id <= 60; id++ {
		if !contains(open, id) {
			commitEvents(t, s.d, func(tx pgx.Tx) { insertEventWithID(t, tx, id) })
		}
	}
	s.setSequence(t, 60)
	waitCursor(t, s.c.Agents, 60, 30*time.Second)
	commitEvents(t, s.d, func(tx pgx.Tx) { insertEventWithID(t, tx, 23) })
	ts.WaitFor(t, 30*time.Second, "event 23 processed and every job delivered", func() (bool, string) {
		late := s.jobsFor(t, 23)[23]
		backlog := s.backlog(t)
		return late == 1 && backlog == 0, fmt.Sprintf("event 23 has %d jobs, %d jobs undelivered", late, backlog)
	})
	if els := s.eventLogState(t); els != 10 {
		t.Fatalf("event_log_states at %d before the handback, want 10, below the open gap 11", els)
	}
	clk.Logf("geocursor at 60 with open gaps 11, 37, 52; event_log_states 10")

	// Refused while the agents run.
	code, _, stderr := s.handback(t)
	if code != 1 || !strings.Contains(stderr, "stop every agent first") {
		t.Fatalf("handback while the agents run: exit %d, %q; want 1 and \"stop every agent first\"", code, stderr)
	}
	for _, a := range s.c.Agents {
		a.Stop(t)
	}
	clk.Logf("every agent stopped cleanly")

	// Refused while jobs wait for delivery: three jobs are made to look
	// undelivered, and put back.
	if _, err := s.d.Tracking.Exec(ctx, `UPDATE geocursor_delivery SET last_job_id = last_job_id - 3`); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = s.handback(t)
	if code != 1 || !strings.Contains(stderr, "3 jobs") || !strings.Contains(stderr, "-force") {
		t.Fatalf("handback with 3 jobs undelivered: exit %d, %q; want 1, the count and -force", code, stderr)
	}
	if els, n := s.eventLogState(t), s.gapSet(t); els != 10 || len(n) != 0 {
		t.Fatalf("a refused handback changed event_log_states to %d or GitLab's gap set to %v", els, n)
	}
	if _, err := s.d.Tracking.Exec(ctx, `UPDATE geocursor_delivery SET last_job_id = last_job_id + 3`); err != nil {
		t.Fatal(err)
	}

	code, stdout, stderr := s.handback(t)
	if code != 0 || !strings.Contains(stdout, "gitlab-ctl start geo-logcursor") {
		t.Fatalf("handback: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	clk.Logf("handed back:\n%s", stdout)
	handed := s.gapSet(t)
	if got := fmt.Sprint(sortedKeys(handed)); got != "[11 37 52]" {
		t.Fatalf("GitLab's gap set holds %s after the handback, want geocursor's open gaps [11 37 52]", got)
	}
	for id, seen := range handed {
		if seen.Before(began.Add(-time.Second)) || seen.After(time.Now()) {
			t.Errorf("gap %d scored %s, not when geocursor first saw it (after %s)", id, seen, began)
		}
	}
	if els := s.eventLogState(t); els != 60 {
		t.Fatalf("event_log_states at %d after the handback, want geocursor's position 60", els)
	}
	if n, _ := s.state.Exists(ctx, gitlab.CursorLeaseKey).Result(); n != 0 {
		t.Fatalf("GitLab's cursor lease key is still held after the handback")
	}

	// geo-logcursor runs: 11 has committed meanwhile, 61..80 come but 70.
	commitEvents(t, s.d, func(tx pgx.Tx) { insertEventWithID(t, tx, 11) })
	for id := int64(61); id <= 80; id++ {
		if id != 70 {
			commitEvents(t, s.d, func(tx pgx.Tx) { insertEventWithID(t, tx, id) })
		}
	}
	s.setSequence(t, 80)
	byGitLab := s.playGeoLogCursor(t)
	want := append([]int64{11}, idsBetween(61, 80, 70)...)
	if fmt.Sprint(byGitLab) != fmt.Sprint(want) {
		t.Fatalf("geo-logcursor delivered %v, want %v", byGitLab, want)
	}
	if got := fmt.Sprint(sortedKeys(s.gapSet(t))); got != "[37 52 70]" || s.eventLogState(t) != 80 {
		t.Fatalf("after geo-logcursor: gap set %s, event_log_states %d; want [37 52 70] and 80", got, s.eventLogState(t))
	}
	clk.Logf("geo-logcursor delivered 11 and 61..80 but 70; it left 37, 52 and 70 open")

	// The agents start while geo-logcursor's lease has not expired yet:
	// they wait, with the replicated cursor still at 60 and its gaps.
	// 37 commits meanwhile, 52 and 70 after the agents took over.
	for _, a := range s.c.Agents {
		a.Restart(t)
	}
	ts.WaitFor(t, 30*time.Second, "every agent to wait for geo-logcursor's lease, its replica at 60", func() (bool, string) {
		for _, a := range s.c.Agents {
			st, err := statusOf(a)
			if err != nil {
				return false, err.Error()
			}
			if st.GitLab == nil || st.GitLab.CursorLease != api.GitLabLeaseOldCursor || st.Cursor.LastEventID != 60 {
				return false, fmt.Sprintf("%s: gitlab %+v, cursor %d", a.ID, st.GitLab, st.Cursor.LastEventID)
			}
		}
		return true, ""
	})
	commitEvents(t, s.d, func(tx pgx.Tx) { insertEventWithID(t, tx, 37) })
	if err := s.state.Del(ctx, gitlab.CursorLeaseKey).Err(); err != nil {
		t.Fatal(err)
	}
	clk.Logf("geo-logcursor's lease gone")
	ts.WaitFor(t, 30*time.Second, "the agents to take over after event_log_states with 52 and 70 open", func() (bool, string) {
		st, err := anyStatus(s.c.Agents)
		if err != nil {
			return false, err.Error()
		}
		got := s.jobsFor(t, 37)[37]
		return st.Cursor.LastEventID == 80 && st.Cursor.OpenGaps == 2 && got == 1,
			fmt.Sprintf("cursor %d with %d open gaps, event 37 has %d jobs", st.Cursor.LastEventID, st.Cursor.OpenGaps, got)
	})
	retook := false
	for _, a := range s.c.Agents {
		retook = retook || strings.Contains(a.Log(), "taking over again from there, adopting 3 open gaps")
	}
	if !retook {
		t.Errorf("no agent logged that it took the site over again with 3 open gaps")
	}
	commitEvents(t, s.d, func(tx pgx.Tx) { insertEventWithID(t, tx, 52) })
	commitEvents(t, s.d, func(tx pgx.Tx) { insertEventWithID(t, tx, 70) })
	head := s.writeEvents(t, 10, 81)
	if head != 90 {
		t.Fatalf("the new events end at %d, want 90", head)
	}
	ts.WaitFor(t, 30*time.Second, "everything processed and delivered, GitLab's gap set empty", func() (bool, string) {
		st, err := anyStatus(s.c.Agents)
		if err != nil {
			return false, err.Error()
		}
		els, backlog, set := s.eventLogState(t), s.backlog(t), s.gapSet(t)
		return st.Cursor.LastEventID == head && st.Cursor.OpenGaps == 0 && els == head && backlog == 0 && len(set) == 0,
			fmt.Sprintf("cursor %d, %d open gaps, event_log_states %d, %d undelivered, gap set %v", st.Cursor.LastEventID, st.Cursor.OpenGaps, els, backlog, sortedKeys(set))
	})

	// Every event once, by geocursor before, geo-logcursor or geocursor after.
	owners := map[int64][]string{}
	for _, id := range s.jobEventIDs(t) {
		owners[id] = append(owners[id], "geocursor")
	}
	for _, id := range byGitLab {
		owners[id] = append(owners[id], "geo-logcursor")
	}
	for id := int64(1); id <= head; id++ {
		if len(owners[id]) != 1 {
			t.Errorf("event %d processed by %v, want exactly one owner", id, owners[id])
		}
	}
	s.checkQueuedOnce(t)
}

// geoLogCursorUUID is the value GitLab's cursor lease is held under by the
// geo-logcursor the test plays.
const geoLogCursorUUID = "0d8e4f7a-1b2c-4d5e-8f90-a1b2c3d4e5f6"

// handback runs `geocursor gitlab handback` with the first agent's config
// file and the environment the agents get, and returns its exit status and
// output.
func (s *gitlabSite) handback(t *testing.T, extra ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := append([]string{"gitlab", "handback", "-config", s.c.Agents[0].ConfigPath}, extra...)
	cmd := exec.CommandContext(ctx, ts.BuildBinary(t), args...)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GEOCURSOR_") {
			env = append(env, kv)
		}
	}
	p := procConfig{SharedStateRedisURL: "redis://" + s.redis.Addr() + "/2",
		Delivery: &procDelivery{SidekiqRedisURL: s.redis.URL(), CacheRedisURL: "redis://" + s.redis.Addr() + "/1"}}
	cmd.Env = append(append(env, s.d.Env()...), p.env()...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit):
		code = exit.ExitCode()
	default:
		t.Fatalf("run geocursor gitlab handback: %v", err)
	}
	return code, out.String(), errOut.String()
}

// playGeoLogCursor does by hand what one round of GitLab's geo-logcursor
// does (ee/lib/gitlab/geo/log_cursor/daemon.rb, event_logs.rb,
// event_gap_tracking.rb), under its cursor lease: it delivers every ID of
// its gap set that is visible now and removes it (fill_gaps, here without
// its ten-minute grace period), then every event after event_log_states,
// adding the IDs it skips to the set (track_gaps), and moves
// event_log_states to the last one. It returns the IDs it delivered, in
// order. Its lease stays, as that of a geo-logcursor that was stopped
// does until it expires.
func (s *gitlabSite) playGeoLogCursor(t *testing.T) []int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if ok, err := s.state.SetNX(ctx, gitlab.CursorLeaseKey, geoLogCursorUUID, gitlab.CursorLeaseTTL).Result(); err != nil || !ok {
		t.Fatalf("geo-logcursor could not take its lease (%v, %v)", ok, err)
	}

	var delivered []int64
	for _, id := range sortedKeys(s.gapSet(t)) {
		if queryInt(t, s.d.Source, `SELECT count(*) FROM geo_event_log WHERE id = $1`, id) == 1 {
			delivered = append(delivered, id)
			if err := s.state.ZRem(ctx, gitlab.GapSetKey, strconv.FormatInt(id, 10)).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	prev := s.eventLogState(t)
	rows, err := s.d.Source.Query(ctx, `SELECT id FROM geo_event_log WHERE id > $1 ORDER BY id`, prev)
	if err != nil {
		t.Fatal(err)
	}
	after, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	now := float64(time.Now().Unix())
	for _, id := range after {
		for skipped := prev + 1; skipped < id; skipped++ {
			if err := s.state.ZAdd(ctx, gitlab.GapSetKey, redis.Z{Score: now, Member: strconv.FormatInt(skipped, 10)}).Err(); err != nil {
				t.Fatal(err)
			}
		}
		delivered = append(delivered, id)
		prev = id
	}
	if _, err := s.d.Tracking.Exec(ctx, `UPDATE event_log_states SET event_id = $1`, prev); err != nil {
		t.Fatal(err)
	}
	return delivered
}

// gapSet reads GitLab's gap set: ID -> first seen.
func (s *gitlabSite) gapSet(t *testing.T) map[int64]time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	gaps, err := (&gitlab.GapSet{Client: s.state}).Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]time.Time{}
	for _, g := range gaps {
		out[g.ID] = g.FirstSeen
	}
	return out
}

// backlog counts the jobs delivery has not handed to Redis yet.
func (s *gitlabSite) backlog(t *testing.T) int64 {
	t.Helper()
	return queryInt(t, s.d.Tracking, `SELECT count(*) FROM geo_jobs WHERE id > COALESCE((SELECT last_job_id FROM geocursor_delivery), 0)`)
}

// jobEventIDs returns the event ID of every geo_jobs row.
func (s *gitlabSite) jobEventIDs(t *testing.T) []int64 {
	t.Helper()
	rows, err := s.d.Tracking.Query(context.Background(), `SELECT event_id FROM geo_jobs ORDER BY event_id`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

// setSequence sets the source's log sequence, as the transactions that
// drew IDs up to last would have left it.
func (s *gitlabSite) setSequence(t *testing.T, last int64) {
	t.Helper()
	if _, err := s.d.Source.Exec(context.Background(), `SELECT setval('geo_event_log_id_seq', $1)`, last); err != nil {
		t.Fatal(err)
	}
}

func sortedKeys[V any](m map[int64]V) []int64 {
	out := make([]int64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// idsBetween returns from..to but skip.
func idsBetween(from, to int64, skip ...int64) []int64 {
	var out []int64
	for id := from; id <= to; id++ {
		if !contains(skip, id) {
			out = append(out, id)
		}
	}
	return out
}

func contains(ids []int64, id int64) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

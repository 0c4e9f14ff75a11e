package cursor

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/internal/pgdb"
)

// Switching a site back to GitLab's own log cursor (geo-logcursor), and
// taking it over again (design section 13). GitLab's cursor goes on after
// event_log_states and fills the IDs of its gap set as they commit
// (ee/lib/gitlab/geo/log_cursor/event_logs.rb, event_gap_tracking.rb). A
// handback therefore sets event_log_states to the fence's last event and
// writes the fence's open gaps into that set; the fence row stays as it
// was, but no longer positioned: the site is GitLab's cursor's until a
// grant takes it over again (grant.retake), after event_log_states, as at
// the first switchover.

// HandbackOutcome says what a handback found and did.
type HandbackOutcome int

const (
	// HandedBack: event_log_states is at the fence's last event, its open
	// gaps are in GitLab's gap set, and the fence row is no longer
	// positioned.
	HandedBack HandbackOutcome = iota
	// NothingToHandBack: geocursor has processed no event with this
	// tracking database; GitLab's cursor starts as on a fresh site.
	NothingToHandBack
	// AlreadyHandedBack: a handback ran before, and no grant has taken
	// the site over again since.
	AlreadyHandedBack
	// GitLabCursorAhead: event_log_states is past the fence row, which
	// only GitLab's own cursor does: it has run since geocursor stopped.
	GitLabCursorAhead
)

// ErrUndelivered refuses a handback (unless forced) while delivery has
// not handed every job in geo_jobs to GitLab's Redis: event_log_states
// would tell GitLab those events were processed.
var ErrUndelivered = errors.New("jobs in geo_jobs not delivered yet")

// Handback is what HandBack found, and did when Outcome is HandedBack.
type Handback struct {
	Outcome HandbackOutcome
	// Fence is the fence row as the handback found it: GitLab's cursor
	// goes on after Fence.Position.LastEventID, and Fence.Position.Gaps
	// are the open gaps written into its gap set.
	Fence Fence
	// EventLogState is event_log_states before the handback (0: no row).
	EventLogState int64
	// Undelivered counts the jobs of geo_jobs delivery has not handed to
	// GitLab's Redis (0 without a geocursor_delivery row: then geo_jobs is
	// the queue). With force they stay there undelivered.
	Undelivered int64
}

// GapWriter writes the open gaps at or below through into GitLab's gap
// set, so that it holds exactly those (package gitlab's GapSet:
// RemoveThrough, then WriteBack).
type GapWriter func(ctx context.Context, through int64, gaps []fsm.Gap) error

// HandBack hands the site back to GitLab's own log cursor, with no agent
// running. In one transaction it locks the fence row; reads its position,
// its open gaps and the delivery backlog; refuses with ErrUndelivered if
// jobs wait for delivery, unless force; sets event_log_states to the
// fence's last event; takes the fence row out of processing (no longer
// positioned, and its token raised by one, so that a holder of the last
// token that was only frozen can never commit after it); has writeGaps
// put the open gaps into GitLab's set; and commits. If writeGaps fails,
// nothing changed in the tracking database. If the commit fails after it,
// GitLab's set holds gaps the group still owns, which its agents remove
// again.
//
// A handback that finds nothing to do (see HandbackOutcome) changes
// nothing and returns no error.
func (t *Tracking) HandBack(ctx context.Context, force bool, writeGaps GapWriter) (Handback, error) {
	var hb Handback
	err := pgx.BeginFunc(ctx, t.pool, func(tx pgx.Tx) error {
		var (
			token, lastID, es int64
			lastDate          *time.Time
			gapsJSON          string
			positioned        bool
			count             int
			sum               *int64
		)
		err := tx.QueryRow(ctx, `
SELECT f.token, f.last_event_id, f.last_event_date, `+FenceGapsSQL+`, f.positioned, f.gaps_count, f.gaps_sum,
       COALESCE((SELECT max(event_id) FROM event_log_states), 0),
       COALESCE((SELECT count(*) FROM geo_jobs j, geocursor_delivery d WHERE d.id = 1 AND j.id > d.last_job_id), 0)
FROM geocursor_fence f WHERE f.id = 1 FOR UPDATE OF f`).
			Scan(&token, &lastID, &lastDate, &gapsJSON, &positioned, &count, &sum, &es, &hb.Undelivered)
		if err != nil {
			return fmt.Errorf("lock the fence row: %w", err)
		}
		if hb.Fence, err = fenceFromRow(token, lastID, lastDate, gapsJSON); err != nil {
			return err
		}
		hb.Fence.Positioned, hb.EventLogState = positioned, es
		if sum != nil && (*sum != int64(fsm.GapSum(hb.Fence.Position.Gaps)) || count != len(hb.Fence.Position.Gaps)) {
			return fmt.Errorf("the fence row counts %d open gaps, geocursor_fence_gaps holds %d others: was one of them changed by hand?",
				count, len(hb.Fence.Position.Gaps))
		}
		switch {
		case lastID == 0:
			hb.Outcome = NothingToHandBack
			return nil
		case !positioned:
			hb.Outcome = AlreadyHandedBack
			return nil
		case es > lastID:
			hb.Outcome = GitLabCursorAhead
			return nil
		case hb.Undelivered > 0 && !force:
			return fmt.Errorf("%w: %d jobs", ErrUndelivered, hb.Undelivered)
		}
		if token >= math.MaxInt64 {
			return fmt.Errorf("the fence row's token %d cannot be raised", token)
		}
		if _, err := tx.Exec(ctx, `UPDATE geocursor_fence SET token = token + 1, positioned = false, updated_at = clock_timestamp() WHERE id = 1`); err != nil {
			return fmt.Errorf("take the fence row out of processing: %w", err)
		}
		if _, err := tx.Exec(ctx, saveEventLogState, lastID); err != nil {
			return fmt.Errorf("move event_log_states to %d: %w", lastID, err)
		}
		if err := writeGaps(ctx, lastID, hb.Fence.Position.Gaps); err != nil {
			return &gapWriteError{err: err}
		}
		hb.Outcome = HandedBack
		return nil
	})
	var gw *gapWriteError
	switch {
	case err == nil:
		return hb, nil
	case errors.Is(err, ErrUndelivered), errors.As(err, &gw):
		return hb, err
	}
	return hb, pgdb.Errorf("tracking", t.name, err, "hand the site back to GitLab's cursor: %s", pgdb.Describe(err))
}

// gapWriteError is a failure of HandBack's GapWriter, returned as it is:
// it is about GitLab's Redis, not the tracking database.
type gapWriteError struct{ err error }

func (e *gapWriteError) Error() string { return e.err.Error() }
func (e *gapWriteError) Unwrap() error { return e.err }

// GitLabHasSite reports whether the site is GitLab's own log cursor's
// rather than the group's: the fence row is not positioned (a fresh
// tracking database, or one handed back and not taken over again), or
// event_log_states is past it, which only GitLab's cursor does (geocursor
// keeps it at or below its safe cursor). Until a grant takes the site over
// (again), the IDs in GitLab's gap set are its cursor's, whatever the
// replicated cursor says: gitlab.Watcher must not remove them.
func (t *Tracking) GitLabHasSite(ctx context.Context) (bool, error) {
	var theirs bool
	err := t.pool.QueryRow(ctx, `
SELECT NOT f.positioned OR COALESCE((SELECT max(event_id) FROM event_log_states), 0) > f.last_event_id
FROM geocursor_fence f WHERE f.id = 1`).Scan(&theirs)
	if err != nil {
		return false, pgdb.Errorf("tracking", t.name, err, "read the fence row and event_log_states: %s", pgdb.Describe(err))
	}
	return theirs, nil
}

// Retake moves the fence row, under token (which claimed it), from from to
// to with to's open gaps: a grant taking the site over again from GitLab's
// own log cursor (grant.retake). In one transaction it checks that the
// fence row is still at from (position, open gaps, positioned) and
// event_log_states at to.LastEventID, and positions the fence at to.
// event_log_states stays where GitLab's cursor left it. Refused with
// ErrFenced if the fence row holds a newer token or moved meanwhile.
func (t *Tracking) Retake(ctx context.Context, token uint64, from Fence, to Position) (Fence, error) {
	if token > math.MaxInt64 {
		return Fence{}, fmt.Errorf("retake the fence (token %d): token does not fit in a bigint", token)
	}
	lastDate := to.dateColumn()
	err := pgx.BeginFunc(ctx, t.pool, func(tx pgx.Tx) error {
		var (
			cur, lastID, es int64
			positioned      bool
			count           int
			sum             *int64
		)
		if err := tx.QueryRow(ctx, `
SELECT f.token, f.last_event_id, f.positioned, f.gaps_count, f.gaps_sum, COALESCE((SELECT max(event_id) FROM event_log_states), 0)
FROM geocursor_fence f WHERE f.id = 1 FOR UPDATE OF f`).Scan(&cur, &lastID, &positioned, &count, &sum, &es); err != nil {
			return fmt.Errorf("lock the fence row: %w", err)
		}
		switch {
		case uint64(cur) > token:
			return fmt.Errorf("%w: token %d is older than token %d in the tracking database", ErrFenced, token, cur)
		case lastID != from.Position.LastEventID || positioned != from.Positioned || count != len(from.Position.Gaps) ||
			(sum != nil && *sum != int64(fsm.GapSum(from.Position.Gaps))):
			return fmt.Errorf("%w: the fence row moved from event %d meanwhile", ErrFenced, from.Position.LastEventID)
		case es != to.LastEventID:
			return fmt.Errorf("event_log_states moved from %d to %d meanwhile: is GitLab's geo-logcursor running?", to.LastEventID, es)
		}
		if _, err := tx.Exec(ctx, `UPDATE geocursor_fence
SET token = $1, last_event_id = $2, last_event_date = $3, gaps_count = $4, gaps_sum = $5, positioned = true, updated_at = clock_timestamp()
WHERE id = 1`, int64(token), to.LastEventID, lastDate, len(to.Gaps), int64(fsm.GapSum(to.Gaps))); err != nil {
			return fmt.Errorf("move the fence row: %w", err)
		}
		if err := replaceGaps(ctx, tx, to.Gaps); err != nil {
			return fmt.Errorf("write the adopted gaps: %w", err)
		}
		return nil
	})
	if errors.Is(err, ErrFenced) {
		return Fence{}, err
	}
	if err != nil {
		return Fence{}, pgdb.Errorf("tracking", t.name, err, "take over again at event %d (token %d): %s", to.LastEventID, token, pgdb.Describe(err))
	}
	return Fence{Token: token, Position: to, Positioned: true}, nil
}

// fenceRetaker is what a grant taking the site over again from GitLab's
// own log cursor needs of the tracking database beyond the loop's port.
type fenceRetaker interface {
	Retake(ctx context.Context, token uint64, from Fence, to Position) (Fence, error)
}

// retake takes the site over again from GitLab's own log cursor, when it
// has had the site since geocursor processed (design section 13): the
// fence row was handed back (`geocursor gitlab handback`), or, with a
// gitlab block, event_log_states is past it (GitLab's cursor ran without a
// handback). Processing then continues right after event_log_states, as at
// the first switchover, with GitLab's open gaps at or below it adopted
// (gitLabGapsToAdopt), instead of replaying what GitLab's cursor did. It
// returns the fence to go on from, and whether it moved it. Without a
// gitlab block, a fence that was not handed back stays as it is.
func (g *grant) retake(ctx context.Context, fence Fence) (Fence, bool, error) {
	l := g.l
	handedBack := !fence.Positioned
	if !handedBack && l.cfg.GitLabGaps == nil {
		return fence, false, nil
	}
	es, ok, err := l.tracking.GitLabCursor(ctx)
	if err != nil {
		l.health.Tracking(ctxOr(ctx, err))
		return Fence{}, false, fmt.Errorf("take over again (token %d): %w", g.token, err)
	}
	last := fence.Position.LastEventID
	if !handedBack && (!ok || es <= last) {
		return fence, false, nil
	}
	if handedBack {
		var why string
		switch {
		case l.cfg.GitLabGaps == nil:
			why = fmt.Sprintf("this tracking database was handed back to GitLab's own log cursor at event %d (`geocursor gitlab handback`); "+
				"taking it over again needs the gitlab block, to adopt the open gaps in GitLab's gap set: add it to this agent's configuration", last)
		case !ok || es < last:
			why = fmt.Sprintf("this tracking database was handed back to GitLab's own log cursor at event %d, but event_log_states is at %d now: "+
				"who moved it back? Move the cursor deliberately with `geocursor cursor set -event-id N`", last, es)
		}
		if why != "" {
			err := errors.New(why)
			l.health.Tracking(err)
			return Fence{}, false, err
		}
	}
	retaker, isRetaker := l.tracking.(fenceRetaker)
	if !isRetaker {
		return Fence{}, false, fmt.Errorf("take over again (token %d): this peer's tracking database cannot move its fence", g.token)
	}
	gaps, err := g.adoptGitLabGaps(ctx, es, fence.Position)
	if err != nil {
		return Fence{}, false, fmt.Errorf("take over again (token %d): %w", g.token, err)
	}
	to := Position{LastEventID: es, Gaps: gaps}
	f, err := retaker.Retake(ctx, g.token, fence, to)
	if err != nil {
		if errors.Is(err, ErrFenced) {
			return Fence{}, false, errors.Join(err, errLeaseLost)
		}
		l.health.Tracking(ctxOr(ctx, err))
		return Fence{}, false, err
	}
	if handedBack {
		l.logger.Warn(fmt.Sprintf("the site was handed back to GitLab's own log cursor at event %d, and event_log_states is at %d now: "+
			"taking over again from there, adopting %d open gaps", last, es, len(gaps)),
			"token", g.token, "fence_last_id", last, "event_log_states", es, "open_gaps", len(gaps))
	} else {
		l.logger.Warn(fmt.Sprintf("GitLab's own log cursor moved event_log_states to %d past geocursor's position %d: "+
			"taking over again from there, adopting %d open gaps", es, last, len(gaps)),
			"token", g.token, "fence_last_id", last, "event_log_states", es, "open_gaps", len(gaps),
			"hint", "switch back to geo-logcursor with `geocursor gitlab handback`, so that it neither replays nor loses geocursor's open gaps")
	}
	return f, true, nil
}

// gitLabGapsToAdopt returns the IDs of GitLab's gap set that a site taking
// over at event last adopts as open gaps: every one at or below last,
// except those at or below decided.LastEventID that are not open gaps of
// decided, the position geocursor left. geocursor processed or gave those
// up before GitLab's cursor had the site, and reopening one would apply
// it twice (the replicated state refuses it too). An ID that decided has
// open keeps the first sighting geocursor recorded.
func gitLabGapsToAdopt(set []fsm.Gap, last int64, decided Position) []fsm.Gap {
	open := make(map[int64]fsm.Gap, len(decided.Gaps))
	for _, gap := range decided.Gaps {
		open[gap.ID] = gap
	}
	var gaps []fsm.Gap
	for _, gap := range set {
		switch own, ok := open[gap.ID]; {
		case gap.ID > last:
		case gap.ID > decided.LastEventID:
			gaps = append(gaps, gap)
		case ok:
			gaps = append(gaps, own)
		}
	}
	return gaps
}

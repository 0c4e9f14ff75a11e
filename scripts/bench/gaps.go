package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/scripts/internal/harness"
)

// Gap targets (issue 13, target 4): with 10,000 open gaps an advance
// entry is at most 4 KB, its Raft cost p50 at most 3 ms, and the drain at
// least 0.8 of the drain without gaps.
const (
	gapsOpen            = 10_000
	gapsEvents          = 150_000
	targetGapEntryBytes = 4096
	targetGapRaftP50MS  = 3
	targetGapDrainRatio = 0.8
)

type gapsReport struct {
	Events   int `json:"events"`
	OpenGaps int `json:"open_gaps"`
	// Without and With are the same backlog drained by three fresh agents,
	// without and then with gapsOpen holes among its first IDs.
	Without gapRun `json:"without_gaps"`
	With    gapRun `json:"with_gaps"`
	// Ratio is the mean of WithRates over the mean of WithoutRates: each
	// backlog is drained twice, in the order without, with, with, without,
	// so that a drift of the machine's speed weighs on both alike. Without
	// and With are the first drain of each.
	Ratio        float64   `json:"ratio_with_to_without"`
	WithoutRates []float64 `json:"without_gaps_events_per_s"`
	WithRates    []float64 `json:"with_gaps_events_per_s"`
	Method       string    `json:"method"`
}

type gapRun struct {
	Drain drainRun `json:"drain"`
	// Raft is the cost of each advance through Raft (agents' debug logs).
	Raft summary `json:"raft_advance_ms"`
	// AdvanceBytes are the sizes of the advance entries in the Raft log
	// (the longest of the three), read from raft.db once the agents have
	// stopped, except those that open gaps; OpeningBytes are those, which
	// carry each gap they open (the change itself).
	AdvanceBytes sizeSummary `json:"advance_entry_bytes"`
	OpeningBytes sizeSummary `json:"gap_opening_entry_bytes"`
	Advances     int         `json:"advance_entries"`
	// RaftDirBytes is the largest data directory of the three.
	RaftDirBytes int64 `json:"raft_dir_bytes"`
}

const gapsMethod = "Four drains, each of a source of its own with the same bulk-loaded backlog, by fresh agents into a fresh " +
	"tracking database, in the order without gaps, with, with, without: with gaps, the rows of every second ID among the " +
	"first 20,000 are deleted (10,000 IDs that never appear: holes that stay open gaps for gap_timeout, 1 h). The rate is " +
	"measured as in the drain, and the ratio is of the means; advance entry sizes are read from each stopped agent's raft.db."

// gaps drains a backlog with 10,000 open gaps beside the same backlog
// without, on databases and agents of its own.
func (b *bench) gaps(ctx context.Context) error {
	r := &gapsReport{Events: gapsEvents, OpenGaps: gapsOpen, Method: gapsMethod}
	b.report.Gaps = r
	run := func(name string, holes bool) (gapRun, error) {
		var prepare func(*pgxpool.Pool) error
		if holes {
			prepare = func(src *pgxpool.Pool) error {
				tag, err := src.Exec(ctx, `DELETE FROM geo_event_log WHERE id <= $1 AND id % 2 = 0`, 2*gapsOpen)
				if err != nil {
					return fmt.Errorf("make the holes: %w", err)
				}
				if tag.RowsAffected() != gapsOpen {
					return fmt.Errorf("made %d holes, want %d", tag.RowsAffected(), gapsOpen)
				}
				return nil
			}
		}
		own, head, err := b.useOwnDatabases(ctx, name, gapsEvents, 1, prepare)
		if err != nil {
			return gapRun{}, err
		}
		defer own.release()
		src, tr := own.src, own.tr

		var g gapRun
		if g.Drain, err = b.clusterDrain(ctx, head, "cluster "+name); err != nil {
			return g, err
		}
		agents := b.cluster.Agents
		t := b.report.raftCost("gaps_"+name, agents, logMarks{}, markLogs(agents))
		g.Drain.Batches = t.batchTimes()
		g.Raft = t.batchTimes().Raft
		if err := b.waitStatusAt(ctx, head); err != nil {
			return g, err
		}
		o, err := harness.CheckExactlyOnce(ctx, src, tr)
		if err != nil {
			return g, err
		}
		if !o.OK() || o.Pending > 0 {
			return g, fmt.Errorf("exactly-once after the %s drain: %s", name, o)
		}
		if holes {
			f, err := harness.ReadFence(ctx, tr)
			if err != nil {
				return g, err
			}
			if len(f.Gaps) != gapsOpen {
				return g, fmt.Errorf("the fence shows %d open gaps after the drain, want %d", len(f.Gaps), gapsOpen)
			}
		}
		b.sampleRSS()
		dirs := make([]string, 0, len(agents))
		for _, a := range agents {
			dirs = append(dirs, a.DataDir)
		}
		if err := b.cluster.Close(); err != nil {
			b.logf("stop the agents: %v", err)
		}
		b.cluster = nil
		for _, d := range dirs {
			size, err := dirSize(d)
			if err != nil {
				return g, err
			}
			g.RaftDirBytes = max(g.RaftDirBytes, size)
			steady, opening, err := advanceSizes(filepath.Join(d, "raft.db"), filepath.Join(b.dir, "raft-copy.db"))
			if err != nil {
				return g, err
			}
			if n := len(steady) + len(opening); n > g.Advances {
				g.Advances = n
				g.AdvanceBytes, g.OpeningBytes = summarizeSizes(steady), summarizeSizes(opening)
			}
		}
		b.logf("gaps: %s: %.0f events/s, %d advances, entry p50 %.0f B max %.0f B (%d opening gaps, max %.0f B), raft p50 %.1f ms",
			name, g.Drain.EventsPerS, g.Advances, g.AdvanceBytes.P50, g.AdvanceBytes.Max, g.OpeningBytes.Count, g.OpeningBytes.Max, g.Raft.P50)
		return g, nil
	}
	for i, holes := range []bool{false, true, true, false} {
		name, what := "nogaps", "without gaps"
		if holes {
			name, what = "gaps", fmt.Sprintf("with %d holes among the first IDs", gapsOpen)
		}
		b.logf("gaps: drain %d of 4: %d events %s ...", i+1, gapsEvents, what)
		g, err := run(fmt.Sprintf("%s%d", name, i+1), holes)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if holes {
			if r.WithRates == nil {
				r.With = g
			}
			r.WithRates = append(r.WithRates, g.Drain.EventsPerS)
		} else {
			if r.WithoutRates == nil {
				r.Without = g
			}
			r.WithoutRates = append(r.WithoutRates, g.Drain.EventsPerS)
		}
	}
	if without := mean(r.WithoutRates); without > 0 {
		r.Ratio = round3(mean(r.WithRates) / without)
	}
	b.report.check("gaps: advance entry bytes (max) with 10,000 open gaps", r.With.AdvanceBytes.Max, fmt.Sprintf("<= %d", targetGapEntryBytes), r.With.AdvanceBytes.Max <= targetGapEntryBytes)
	b.report.check("gaps: raft advance p50 ms with 10,000 open gaps", r.With.Raft.P50, fmt.Sprintf("<= %d", targetGapRaftP50MS), r.With.Raft.P50 <= targetGapRaftP50MS)
	b.logf("gaps: with gaps %v events/s, without %v: ratio %.3f", r.WithRates, r.WithoutRates, r.Ratio)
	b.report.check("gaps: drain ratio with/without gaps", r.Ratio, fmt.Sprintf(">= %.1f", targetGapDrainRatio), r.Ratio >= targetGapDrainRatio)
	return nil
}

// sizeSummary describes sizes in bytes.
type sizeSummary struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

func summarizeSizes(sizes []float64) sizeSummary {
	s := summarize(sizes)
	return sizeSummary{Count: s.Count, P50: s.P50, P99: s.P99, Max: s.Max}
}

// advanceSizes copies a stopped agent's raft.db (opening it writes) and
// returns the size in bytes of every advance entry in its log: those that
// open gaps apart. An advance that carries the whole gap set (not a delta)
// counts as steady: it is what the target is about.
func advanceSizes(path, scratch string) (steady, opening []float64, err error) {
	if err := copyFile(path, scratch); err != nil {
		return nil, nil, err
	}
	defer os.Remove(scratch)
	store, err := raftboltdb.New(raftboltdb.Options{Path: scratch})
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer store.Close()
	first, err := store.FirstIndex()
	if err != nil {
		return nil, nil, err
	}
	last, err := store.LastIndex()
	if err != nil {
		return nil, nil, err
	}
	for i := first; i <= last && i > 0; i++ {
		var l raft.Log
		if err := store.GetLog(i, &l); err != nil {
			return nil, nil, fmt.Errorf("%s: entry %d: %w", path, i, err)
		}
		if l.Type != raft.LogCommand {
			continue
		}
		c, err := fsm.DecodeCommand(l.Data)
		if err != nil || c.Op != fsm.OpAdvance {
			continue
		}
		if c.Advance.GapsDelta && len(c.Advance.GapsOpened) > 0 {
			opening = append(opening, float64(len(l.Data)))
		} else {
			steady = append(steady, float64(len(l.Data)))
		}
	}
	sort.Float64s(steady)
	sort.Float64s(opening)
	return steady, opening, nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func dirSize(dir string) (int64, error) {
	var total int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			total += fi.Size()
		}
		return err
	})
	return total, err
}

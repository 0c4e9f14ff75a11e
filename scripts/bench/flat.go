package main

import (
	"context"
	"fmt"
	"time"

	"github.com/geocursor/geocursor/internal/devcluster"
	"github.com/geocursor/geocursor/scripts/internal/harness"
)

// Flat-over-time targets (issue 13, target 5): through a 10M-event
// backlog the rate of the last tenth is within 10% of the first's, no
// agent's RSS passes 64 MB nor its Raft directory 64 MB, and the tracking
// database grows with its rows (its bytes per processed event at the end
// within 10% of what they were after the first tenth: autovacuum keeps
// up with the fence row and the registry).
const (
	targetFlatRateRatio  = 0.9
	targetFlatRSSBytes   = 64 << 20
	targetFlatRaftBytes  = 64 << 20
	targetFlatSizeGrowth = 1.1
	flatChunks           = 10
	flatPoll             = 500 * time.Millisecond
)

type flatReport struct {
	Events int `json:"events"`
	// Chunks are the tenths of the backlog, in order.
	Chunks []flatChunk `json:"chunks"`
	// RateRatio is the last chunk's rate over the first's.
	RateRatio       float64 `json:"rate_ratio_last_to_first"`
	MaxRSSBytes     int64   `json:"max_rss_bytes"`
	MaxRaftDirBytes int64   `json:"max_raft_dir_bytes"`
	// SizeGrowth is the tracking database's bytes per processed event at
	// the end over the same after the first chunk.
	SizeGrowth float64 `json:"size_growth_last_to_first"`
	WallS      float64 `json:"wall_s"`
	Method     string  `json:"method"`
}

// flatChunk is what was seen when the fence passed the end of one tenth.
type flatChunk struct {
	UpTo       int64   `json:"up_to_event"`
	EventsPerS float64 `json:"events_per_s"`
	// MaxRSSBytes is the largest current RSS (VmRSS) of the three agents;
	// RaftDirBytes the largest data directory.
	MaxRSSBytes  int64 `json:"max_rss_bytes"`
	RaftDirBytes int64 `json:"raft_dir_bytes"`
	// TrackingBytes is pg_database_size of the tracking database;
	// BytesPerEvent that over the events processed.
	TrackingBytes int64   `json:"tracking_db_bytes"`
	BytesPerEvent float64 `json:"tracking_bytes_per_event"`
	// Dead tuples of the fence row's and the registry's tables
	// (pg_stat_user_tables), which autovacuum should keep in check.
	FenceDeadTuples    int64 `json:"fence_dead_tuples"`
	RegistryDeadTuples int64 `json:"registry_dead_tuples"`
}

const flatMethod = "A source of its own is bulk-loaded with the whole backlog, vacuumed and checkpointed; three fresh agents " +
	"drain it into a fresh tracking database. Every 500 ms the fence row is read; when it passes the end of each tenth of " +
	"the backlog, the tenth's rate (events over the fence's updated_at since the last tenth), the agents' current RSS " +
	"(VmRSS), their data directories' size, the tracking database's size and the dead tuples of the fence and registry " +
	"tables are recorded. The first tenth's rate counts from the first commit."

// flat drains a -flat-events backlog and checks that nothing grows with
// time but the rows.
func (b *bench) flat(ctx context.Context) error {
	n := b.opts.flatEvents
	r := &flatReport{Events: n, Method: flatMethod}
	b.report.Flat = r
	loadStart := time.Now()
	b.logf("flat: bulk-loading %d events ...", n)
	own, head, err := b.useOwnDatabases(ctx, "flat", n, 7, nil)
	if err != nil {
		return err
	}
	defer own.release()
	src, tr := own.src, own.tr
	b.logf("flat: loaded in %s", time.Since(loadStart).Round(time.Second))

	started := time.Now()
	if err := b.startCluster(ctx); err != nil {
		return err
	}
	if err := b.followFlat(ctx, r, head); err != nil {
		return err
	}
	r.WallS = round(time.Since(started).Seconds())
	if err := b.waitStatusAt(ctx, head); err != nil {
		return err
	}
	o, err := harness.CheckExactlyOnce(ctx, src, tr)
	if err != nil {
		return err
	}
	if !o.OK() || o.Pending > 0 {
		return fmt.Errorf("exactly-once after the flat drain: %s", o)
	}
	b.sampleRSS()
	if err := b.cluster.Close(); err != nil {
		b.logf("stop the agents: %v", err)
	}
	b.cluster = nil

	first, last := r.Chunks[0], r.Chunks[len(r.Chunks)-1]
	if first.EventsPerS > 0 {
		r.RateRatio = round3(last.EventsPerS / first.EventsPerS)
	}
	if first.BytesPerEvent > 0 {
		r.SizeGrowth = round3(last.BytesPerEvent / first.BytesPerEvent)
	}
	for _, c := range r.Chunks {
		r.MaxRSSBytes = max(r.MaxRSSBytes, c.MaxRSSBytes)
		r.MaxRaftDirBytes = max(r.MaxRaftDirBytes, c.RaftDirBytes)
	}
	b.logf("flat: first tenth %.0f events/s, last %.0f (ratio %.3f); RSS up to %.1f MB; raft dir up to %.1f MB; tracking bytes per event %.0f then %.0f (growth %.3f)",
		first.EventsPerS, last.EventsPerS, r.RateRatio, mb(r.MaxRSSBytes), mb(r.MaxRaftDirBytes), first.BytesPerEvent, last.BytesPerEvent, r.SizeGrowth)
	b.report.check(fmt.Sprintf("flat: rate of the last tenth of %d events over the first", n), r.RateRatio, fmt.Sprintf(">= %.1f", targetFlatRateRatio), r.RateRatio >= targetFlatRateRatio)
	b.report.check("flat: agent RSS MB (max)", mb(r.MaxRSSBytes), fmt.Sprintf("<= %d", targetFlatRSSBytes>>20), r.MaxRSSBytes <= targetFlatRSSBytes)
	b.report.check("flat: raft directory MB (max)", mb(r.MaxRaftDirBytes), fmt.Sprintf("<= %d", targetFlatRaftBytes>>20), r.MaxRaftDirBytes <= targetFlatRaftBytes)
	b.report.check("flat: tracking bytes per event, end over first tenth", r.SizeGrowth, fmt.Sprintf("<= %.1f", targetFlatSizeGrowth), r.SizeGrowth <= targetFlatSizeGrowth)
	return nil
}

// followFlat polls the fence until it reaches head, recording a chunk each
// time it passes the end of a tenth.
func (b *bench) followFlat(ctx context.Context, r *flatReport, head int64) error {
	var (
		seen      bool
		lastAt    time.Time
		lastID    int64
		nextChunk = 1
		lastLog   = time.Now()
	)
	chunkEnd := func(k int) int64 { return head * int64(k) / flatChunks }
	return devcluster.WaitEvery(ctx, 2*time.Hour, flatPoll, "the flat drain to reach the source head", func() (bool, string, error) {
		f, err := harness.ReadFence(ctx, b.tracking)
		if err != nil {
			return false, err.Error(), nil
		}
		if !seen {
			if f.LastEventID == 0 {
				return false, "no commit yet", nil
			}
			seen, lastAt, lastID = true, f.UpdatedAt, f.LastEventID
		}
		if time.Since(lastLog) > 10*time.Second {
			b.logf("flat: at event %d of %d", f.LastEventID, head)
			lastLog = time.Now()
		}
		if nextChunk <= flatChunks && f.LastEventID >= chunkEnd(nextChunk) {
			c, err := b.flatChunk(ctx, f, lastAt, lastID)
			if err != nil {
				return false, "", err
			}
			r.Chunks = append(r.Chunks, c)
			b.logf("flat: tenth %d up to event %d: %.0f events/s, RSS %.1f MB, raft dir %.1f MB, tracking %.0f B/event, dead tuples fence %d registry %d",
				nextChunk, c.UpTo, c.EventsPerS, mb(c.MaxRSSBytes), mb(c.RaftDirBytes), c.BytesPerEvent, c.FenceDeadTuples, c.RegistryDeadTuples)
			lastAt, lastID = f.UpdatedAt, f.LastEventID
			for nextChunk <= flatChunks && f.LastEventID >= chunkEnd(nextChunk) {
				nextChunk++
			}
		}
		return f.LastEventID >= head, fmt.Sprintf("fence at %d", f.LastEventID), nil
	})
}

// flatChunk records what the agents and the tracking database look like
// with the fence at f, the last chunk having ended at lastID at lastAt.
func (b *bench) flatChunk(ctx context.Context, f harness.Fence, lastAt time.Time, lastID int64) (flatChunk, error) {
	c := flatChunk{UpTo: f.LastEventID}
	if secs := f.UpdatedAt.Sub(lastAt).Seconds(); secs > 0 {
		c.EventsPerS = round(float64(f.LastEventID-lastID) / secs)
	}
	for _, a := range b.cluster.Live() {
		if v, err := a.RSS(); err == nil {
			c.MaxRSSBytes = max(c.MaxRSSBytes, v)
		}
		size, err := dirSize(a.DataDir)
		if err != nil {
			return c, err
		}
		c.RaftDirBytes = max(c.RaftDirBytes, size)
	}
	b.sampleRSS()
	err := b.tracking.QueryRow(ctx, `SELECT pg_database_size(current_database()),
		coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'geocursor_fence'), 0),
		coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'geo_registry'), 0)`).
		Scan(&c.TrackingBytes, &c.FenceDeadTuples, &c.RegistryDeadTuples)
	if err != nil {
		return c, fmt.Errorf("read the tracking database's size: %w", err)
	}
	if f.LastEventID > 0 {
		c.BytesPerEvent = round(float64(c.TrackingBytes) / float64(f.LastEventID))
	}
	return c, nil
}

func mb(b int64) float64 { return round(float64(b) / (1 << 20)) }

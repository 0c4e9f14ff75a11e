package cursor

import (
	"context"
	"fmt"
	"testing"
	"time"

	ts "github.com/geocursor/geocursor/internal/testsupport"
)

// The benchmarks get their own server with the durable defaults (fsync on):
// the tests' shared server runs with fsync off, which would hide the cost
// of every commit's WAL flush.
var durable = &ts.PackagePostgres{}

func durableDatabase(b *testing.B) string {
	b.Helper()
	return durable.NewDatabase(b, "bench")
}

// benchEvents returns the n events after start, in the mix the load
// generator writes: updates, creates and deletes of 6,000 records, other
// event names and cache invalidations.
func benchEvents(start int64, n int) []Event {
	names := []string{"updated", "updated", "updated", "updated", "updated", "updated", "updated",
		"created", "created", "deleted", "renamed", "reset_checksum"}
	replicables := []string{"project_repository", "lfs_object", "package_file", "upload", "job_artifact", "snippet_repository"}
	events := make([]Event, n)
	for i := range events {
		id := start + int64(i) + 1
		if id%20 == 0 {
			events[i] = cache(id, fmt.Sprintf("geo:lfs_object:%d", id%1000))
			continue
		}
		h := uint64(id) * 0x9E3779B97F4A7C15
		events[i] = geo(id, replicables[h%6], names[(h>>8)%uint64(len(names))],
			fmt.Sprintf(`{"model_record_id": %d}`, 1+(h>>16)%1000))
	}
	return events
}

// BenchmarkCommit measures one batch's tracking transaction, Go's share
// included, at several batch sizes: what bounds the drain rate. Reported
// per batch and per event.
//
//	go test -run '^$' -bench Commit -benchtime 200x ./cursor
func BenchmarkCommit(b *testing.B) {
	for _, size := range []int{100, 1000, 5000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			tr, err := OpenTracking(context.Background(), durableDatabase(b), nil)
			if err != nil {
				b.Fatalf("OpenTracking: %v", err)
			}
			defer tr.Close()
			ctx := context.Background()
			pos := Position{}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				events := benchEvents(pos.LastEventID, size)
				next, _ := NextPosition(pos, events, time.Now(), time.Hour, DefaultMaxGaps)
				b.StartTimer()
				if _, err := commitBatch(ctx, tr, Batch{Token: 1, Start: pos, Next: next, Events: events}); err != nil {
					b.Fatalf("Commit: %v", err)
				}
				pos = next
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*size), "ns/event")
		})
	}
}

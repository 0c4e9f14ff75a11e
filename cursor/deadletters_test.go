package cursor

import (
	"testing"
	"time"
)

func TestRecentDeadLettersAreTheNewestFirst(t *testing.T) {
	tr, _ := openTestTracking(t)
	if got, err := tr.RecentDeadLetters(testContext(t), 20); err != nil || len(got) != 0 {
		t.Fatalf("RecentDeadLetters of an empty database = %v, %v; want none", got, err)
	}
	before := time.Now().Add(-time.Minute)
	commitAll(t, tr, 1,
		Event{ID: 1, CreatedAt: eventTime(1)},
		Event{ID: 2, CreatedAt: eventTime(2), GeoEventID: ptr(int64(99))},
		geo(3, "lfs_object", "created", `{"model_record_id": 3}`),
	)
	commitAll(t, tr, 1, geo(4, "lfs_object", "created", `[1]`))

	got, err := tr.RecentDeadLetters(testContext(t), 2)
	if err != nil {
		t.Fatalf("RecentDeadLetters: %v", err)
	}
	if len(got) != 2 || got[0].EventID != 4 || got[1].EventID != 2 {
		t.Fatalf("RecentDeadLetters(2) = %+v, want events 4 and 2, newest first", got)
	}
	if got[1].Reason != "geo_events row 99 does not exist" {
		t.Errorf("reason %q, want the one the dead letter was written with", got[1].Reason)
	}
	for _, d := range got {
		if d.CreatedAt.Before(before) || d.CreatedAt.Location() != time.UTC {
			t.Errorf("created_at %s: want when it was written, in UTC", d.CreatedAt)
		}
	}
}

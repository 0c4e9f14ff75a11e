package cursor

import (
	"testing"
	"time"

	"github.com/geocursor/geocursor/api"
)

func TestSafeEventDateFollowsTheSafeCursor(t *testing.T) {
	last, read := time.Unix(2000, 0), time.Unix(1000, 0)
	tests := []struct {
		name      string
		safe      safeDate
		safeID    int64
		want      *time.Time
		lastEvent int64
	}{
		{"no gap: the cursor's own date", safeDate{}, 50, &last, 50},
		{"a gap: the date read for the safe cursor", safeDate{id: 40, date: read}, 40, &read, 50},
		{"a gap: a date read just before the safe cursor moved", safeDate{id: 30, date: read}, 40, &read, 50},
		{"a gap, nothing read yet", safeDate{}, 40, nil, 50},
		{"a date read for a later safe cursor (moved back by hand)", safeDate{id: 45, date: read}, 40, nil, 50},
	}
	for _, tt := range tests {
		c := api.Cursor{LastEventID: tt.lastEvent, LastEventDate: &last, SafeEventID: tt.safeID}
		tt.safe.addStatus(&c)
		switch {
		case tt.want == nil && c.SafeEventDate != nil:
			t.Errorf("%s: date %v, want none", tt.name, c.SafeEventDate)
		case tt.want != nil && (c.SafeEventDate == nil || !c.SafeEventDate.Equal(*tt.want)):
			t.Errorf("%s: date %v, want %v", tt.name, c.SafeEventDate, *tt.want)
		}
	}
}

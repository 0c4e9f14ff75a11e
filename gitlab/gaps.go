package gitlab

import (
	"context"
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// GapSetKey is the sorted set GitLab's log cursor keeps the event IDs it
// skipped in (GEO_EVENT_LOG_GAPS, ee/lib/gitlab/geo/event_gap_tracking.rb):
// member the event ID, score the epoch second it was seen. Only GitLab's
// cursor removes members, when it processes the event or after an hour.
const GapSetKey = "geo:event_log:gaps"

// Gap is one member of GitLab's gap set.
type Gap struct {
	ID        int64
	FirstSeen time.Time
}

// GapSet is GitLab's gap set in the shared-state Redis.
type GapSet struct {
	Client *redis.Client
}

// Read returns every gap in the set, in ID order. A member that is not an
// event ID cannot be GitLab's and is left out.
func (s *GapSet) Read(ctx context.Context) ([]Gap, error) {
	zs, err := s.Client.ZRangeWithScores(ctx, GapSetKey, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("read GitLab's gap set %s: %w", GapSetKey, err)
	}
	gaps := make([]Gap, 0, len(zs))
	for _, z := range zs {
		m, _ := z.Member.(string)
		id, err := strconv.ParseInt(m, 10, 64)
		if err != nil || id <= 0 {
			continue
		}
		sec, frac := math.Modf(z.Score)
		gaps = append(gaps, Gap{ID: id, FirstSeen: time.Unix(int64(sec), int64(frac*1e9)).UTC()})
	}
	sort.Slice(gaps, func(i, j int) bool { return gaps[i].ID < gaps[j].ID })
	return gaps, nil
}

// RemoveThrough removes the members at or below id: the gaps the group
// owns once its replicated cursor has passed them (each adopted as an open
// gap of its own, or processed). It returns how many it removed.
func (s *GapSet) RemoveThrough(ctx context.Context, id int64) (int, error) {
	gaps, err := s.Read(ctx)
	if err != nil {
		return 0, err
	}
	var members []any
	for _, g := range gaps {
		if g.ID <= id {
			members = append(members, strconv.FormatInt(g.ID, 10))
		}
	}
	if len(members) == 0 {
		return 0, nil
	}
	n, err := s.Client.ZRem(ctx, GapSetKey, members...).Result()
	if err != nil {
		return 0, fmt.Errorf("remove %d adopted gaps from GitLab's gap set %s: %w", len(members), GapSetKey, err)
	}
	return int(n), nil
}

// WriteBack adds gaps to the set, each scored at the second it was first
// seen, as GitLab's cursor would have tracked them: what a site that goes
// back to geo-logcursor hands it of the gaps the group still has open.
func (s *GapSet) WriteBack(ctx context.Context, gaps []Gap) error {
	if len(gaps) == 0 {
		return nil
	}
	zs := make([]redis.Z, len(gaps))
	for i, g := range gaps {
		zs[i] = redis.Z{Score: float64(g.FirstSeen.Unix()), Member: strconv.FormatInt(g.ID, 10)}
	}
	if err := s.Client.ZAdd(ctx, GapSetKey, zs...).Err(); err != nil {
		return fmt.Errorf("write %d open gaps back into GitLab's gap set %s: %w", len(gaps), GapSetKey, err)
	}
	return nil
}

package gitlab

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/internal/redisserver"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

func testRedis(t *testing.T) *redis.Client {
	t.Helper()
	if testing.Short() {
		t.Skip("needs redis-server; skipped with -short")
	}
	srv := ts.StartRedis(t, redisserver.Options{})
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { c.Close() })
	return c
}

func TestClaimTakesAFreeKeyRenewsItsOwnAndNeverTakesAnothers(t *testing.T) {
	c := testRedis(t)
	ctx := context.Background()
	l := &CursorLease{Client: c, Value: LeaseValue("secondary-1")}
	got, err := l.Claim(ctx)
	if err != nil || !got.Ours {
		t.Fatalf("claim of a free key: %+v, %v; want ours", got, err)
	}
	if v, _ := c.Get(ctx, CursorLeaseKey).Result(); v != "geocursor:secondary-1" {
		t.Errorf("the key holds %q", v)
	}
	// Renewed: the TTL goes back up to the full expiry.
	c.PExpire(ctx, CursorLeaseKey, time.Second)
	if got, err = l.Claim(ctx); err != nil || !got.Ours {
		t.Fatalf("renewal: %+v, %v", got, err)
	}
	if ttl, _ := c.PTTL(ctx, CursorLeaseKey).Result(); ttl < CursorLeaseTTL-time.Second {
		t.Errorf("TTL after renewal %s, want about %s", ttl, CursorLeaseTTL)
	}
	// GitLab's cursor cannot take it (SET NX, as Gitlab::ExclusiveLease does).
	if ok, _ := c.SetNX(ctx, CursorLeaseKey, "some-uuid", 30*time.Second).Result(); ok {
		t.Fatal("GitLab's SET NX took a key the group holds")
	}
	// Another process's key is never taken, and Release leaves it.
	c.Set(ctx, CursorLeaseKey, "6f1c3a5e-uuid", 20*time.Second)
	got, err = l.Claim(ctx)
	if err != nil || got.Ours || got.Holder != "6f1c3a5e-uuid" || got.TTL <= 0 || got.TTL > 20*time.Second {
		t.Fatalf("claim of another's key: %+v, %v; want refused, naming the holder and its TTL", got, err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := c.Get(ctx, CursorLeaseKey).Result(); v != "6f1c3a5e-uuid" {
		t.Errorf("Release removed another process's key (now %q)", v)
	}
	c.Del(ctx, CursorLeaseKey)
	if got, _ = l.Claim(ctx); !got.Ours {
		t.Fatal("the freed key was not taken")
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := c.Exists(ctx, CursorLeaseKey).Result(); n != 0 {
		t.Error("Release left the group's key")
	}
}

func TestGapSetReadRemoveAndWriteBack(t *testing.T) {
	c := testRedis(t)
	ctx := context.Background()
	s := &GapSet{Client: c}
	c.ZAdd(ctx, GapSetKey, redis.Z{Score: 1796119200, Member: "47"}, redis.Z{Score: 1796119100, Member: "31"},
		redis.Z{Score: 1796119300, Member: "88"}, redis.Z{Score: 1, Member: "not-an-id"})
	gaps, err := s.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(gaps) != 3 || gaps[0].ID != 31 || gaps[1].ID != 47 || gaps[2].ID != 88 || gaps[0].FirstSeen.Unix() != 1796119100 {
		t.Fatalf("read %+v; want 31, 47, 88 in ID order with their scores as times", gaps)
	}
	n, err := s.RemoveThrough(ctx, 47)
	if err != nil || n != 2 {
		t.Fatalf("RemoveThrough(47) = %d, %v; want 2", n, err)
	}
	if left, _ := s.Read(ctx); len(left) != 1 || left[0].ID != 88 {
		t.Fatalf("left %+v, want 88", left)
	}
	if err := s.WriteBack(ctx, []Gap{{ID: 5, FirstSeen: time.Unix(1796119000, 0)}}); err != nil {
		t.Fatal(err)
	}
	if sc, _ := c.ZScore(ctx, GapSetKey, "5").Result(); sc != 1796119000 {
		t.Errorf("written back with score %v, want the epoch second it was first seen", sc)
	}
}

// fakeSource answers the role query with a row whose primary flag the
// test sets, or with no row.
type fakeSource struct {
	mu      sync.Mutex
	primary *bool
}

func (f *fakeSource) set(primary *bool) { f.mu.Lock(); f.primary = primary; f.mu.Unlock() }

func (f *fakeSource) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fakeRow{primary: f.primary}
}

type fakeRow struct{ primary *bool }

func (r fakeRow) Scan(dest ...any) error {
	if r.primary == nil {
		return pgx.ErrNoRows
	}
	*(dest[0].(*bool)) = *r.primary
	return nil
}

func TestWatcherGateFollowsTheRoleAndTheOldCursor(t *testing.T) {
	c := testRedis(t)
	ctx, cancel := context.WithCancel(context.Background())
	src := &fakeSource{}
	no, yes := false, true
	src.set(&no)
	c.Set(ctx, CursorLeaseKey, "old-cursor-uuid", time.Minute)
	w := NewWatcher(WatcherConfig{SiteName: "secondary-1", Lease: &CursorLease{Client: c, Value: LeaseValue("secondary-1")},
		Gaps: &GapSet{Client: c}, RedisName: "test", Source: src, Cursor: func() int64 { return 40 }})
	if w.Closed() == "" {
		t.Fatal("the gate is open before the first checks")
	}
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	waitGate := func(what string, open bool, contains string) {
		t.Helper()
		ts.WaitFor(t, 5*time.Second, what, func() (bool, string) {
			why := w.Closed()
			return (why == "") == open && strings.Contains(why, contains), "closed: " + why
		})
	}
	waitGate("closed for the old cursor", false, "gitlab-ctl stop geo-logcursor")
	var st api.Status
	w.AddStatus(&st)
	if st.GitLab.CursorLease != api.GitLabLeaseOldCursor || st.GitLab.CursorLeaseHolder != "old-cursor-uuid" || w.Ready() == nil {
		t.Errorf("status %+v and readiness %v while the old cursor runs", st.GitLab, w.Ready())
	}
	// The old cursor stops: the group takes the key within a second.
	c.ZAdd(ctx, GapSetKey, redis.Z{Score: 1, Member: "31"}, redis.Z{Score: 1, Member: "47"})
	released := time.Now()
	c.Del(ctx, CursorLeaseKey)
	waitGate("open once the old cursor's lease is gone", true, "")
	if d := time.Since(released); d > time.Second {
		t.Errorf("the gate opened %s after the release, want within a second", d)
	}
	// Adopted gaps at or below the replicated cursor (40) leave GitLab's set.
	ts.WaitFor(t, 10*time.Second, "gap 31 removed, 47 kept", func() (bool, string) {
		m, _ := c.ZRange(ctx, GapSetKey, 0, -1).Result()
		return len(m) == 1 && m[0] == "47", strings.Join(m, ",")
	})
	// Promoted: closed within the role interval, and open again after.
	src.set(&yes)
	waitGate("closed for a promotion", false, "is a primary")
	src.set(nil)
	waitGate("closed for a missing row", false, "no geo_nodes row")
	src.set(&no)
	waitGate("open as a secondary again", true, "")
	cancel()
	<-done
	if n, _ := c.Exists(context.Background(), CursorLeaseKey).Result(); n != 0 {
		t.Error("the watcher did not release GitLab's cursor lease when it stopped")
	}
}

func TestReadRoleSaysWhatTheRowSays(t *testing.T) {
	no, yes := false, true
	for _, tt := range []struct {
		primary *bool
		want    Role
	}{{&no, RoleSecondary}, {&yes, RolePrimary}, {nil, RoleMissing}} {
		role, err := ReadRole(context.Background(), &fakeSource{primary: tt.primary}, "secondary-1")
		if err != nil || role != tt.want {
			t.Errorf("ReadRole = %s, %v; want %s", role, err, tt.want)
		}
	}
	if _, err := ReadRole(context.Background(), errSource{}, "x"); err == nil {
		t.Error("a failed read is not an error")
	}
}

type errSource struct{}

func (errSource) QueryRow(context.Context, string, ...any) pgx.Row { return errRow{} }

type errRow struct{}

func (errRow) Scan(...any) error { return errors.New("connection refused") }

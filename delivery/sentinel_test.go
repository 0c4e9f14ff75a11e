package delivery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/cursor"
	"github.com/geocursor/geocursor/internal/redisserver"
	ts "github.com/geocursor/geocursor/internal/testsupport"
)

// Redis behind Sentinel, and min_replicas (design section 13): the
// figures these tests log on FIGURE: lines are the README's.

func TestOpenRedisThroughSentinelNamesTheMaster(t *testing.T) {
	sentinels := []string{"127.0.0.1:26379", "127.0.0.1:26380"}
	for _, tt := range []struct {
		url       string
		sentinels []string
		name      string
	}{
		{"redis://:s3cret@gitlab-redis/3", sentinels, "sentinel:gitlab-redis/3"},
		{"rediss://user:s3cret@gitlab-redis", sentinels, "sentinel:gitlab-redis/0"},
		{"redis://:s3cret@10.0.0.5:6380/1", nil, "10.0.0.5:6380/1"},
	} {
		c, name, err := OpenRedis(tt.url, tt.sentinels)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if name != tt.name {
			t.Errorf("OpenRedis(%d sentinels) named it %q, want %q", len(tt.sentinels), name, tt.name)
		}
	}
	for url, want := range map[string]string{
		"redis://:s3cret@gitlab-redis:6379/0": `takes no port: drop ":6379"`,
		"unix:///run/redis.sock":              "a unix:// URL names none",
	} {
		_, _, err := OpenRedis(url, sentinels)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("OpenRedis(%s) with Sentinels: %v, want an error saying %q", url, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "s3cret") {
			t.Errorf("the error shows the password: %v", err)
		}
	}
}

// startReplicated starts a master and one replica in sync with it, without
// Sentinels.
func startReplicated(t *testing.T) (master, replica *redisserver.Server) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts Redis servers; skipped with -short")
	}
	master = ts.StartRedis(t, redisserver.Options{})
	replica = ts.StartRedis(t, redisserver.Options{ReplicaOf: master.Addr()})
	ts.WaitFor(t, 20*time.Second, "the replica in sync", func() (bool, string) {
		info, err := redisserver.Info(context.Background(), replica.Addr(), "replication")
		if err != nil {
			return false, err.Error()
		}
		return info["master_link_status"] == "up", "master_link_status " + info["master_link_status"]
	})
	return master, replica
}

// A push counts only once min_replicas replicas have it, also a retried
// push that finds its jobs pushed already and pushes nothing: it still
// writes, so its WAIT covers what the failed push left in the master.
func TestPushWaitsForMinReplicas(t *testing.T) {
	master, replica := startReplicated(t)
	c, name, err := OpenRedis(master.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := testContext(t)
	s := &SidekiqTarget{Client: c, Queue: "default", Name: name, MinReplicas: 1}
	if res, err := s.push(ctx, "e1", geoJobs(1, 2, 3), time.Now()); err != nil || res.pushed != 3 {
		t.Fatalf("push with the replica in sync: %+v, %v; want 3 pushed and acknowledged", res, err)
	}

	if err := replica.Freeze(); err != nil {
		t.Fatal(err)
	}
	res, err := s.push(ctx, "e1", geoJobs(4, 5), time.Now())
	var few *tooFewReplicasError
	if !errors.As(err, &few) || few.Acked != 0 || res.pushed != 2 {
		t.Fatalf("push with the replica frozen: %+v, %v; want 2 pushed and a tooFewReplicasError with 0 acknowledging", res, err)
	}
	if want := "has 0 of min_replicas 1 replicas acknowledging"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
	// The retried round pushes nothing: its jobs are below the watermark.
	// Its WAIT must still cover them, also on a connection of its own (a
	// new deliverer, or one that reconnected): the script still writes,
	// so the connection's last write is after them.
	retry, _, err := OpenRedis(master.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer retry.Close()
	rs := &SidekiqTarget{Client: retry, Queue: "default", Name: name, MinReplicas: 1}
	res, err = rs.push(ctx, "e1", geoJobs(4, 5), time.Now())
	if !errors.As(err, &few) || res.pushed != 0 {
		t.Fatalf("retried push with the replica frozen: %+v, %v; want nothing pushed and still too few replicas", res, err)
	}
	// The write is in the replication stream: a push of nothing, without
	// a WAIT (whose GETACK would add to the stream too), moves the
	// master's offset by the HSET's length (a replica PING is 14 bytes).
	before := replOffset(t, master)
	rs.MinReplicas = 0
	if res, err := rs.push(ctx, "e1", geoJobs(4, 5), time.Now()); err != nil || res.pushed != 0 {
		t.Fatalf("push of nothing: %+v, %v", res, err)
	}
	if after := replOffset(t, master); after-before < 40 {
		t.Errorf("a push of nothing wrote %d bytes to the replication stream (master_repl_offset %d, then %d), not the watermark's HSET: a WAIT after it would not cover the jobs before it",
			after-before, before, after)
	}

	if err := replica.Thaw(); err != nil {
		t.Fatal(err)
	}
	if res, err := s.push(ctx, "e1", geoJobs(4, 5), time.Now()); err != nil || res.pushed != 0 || res.before != 5 {
		t.Fatalf("retried push with the replica back: %+v, %v; want nothing pushed, acknowledged", res, err)
	}
	if got := queued(t, c, "queue:default"); fmt.Sprint(got) != "[1 2 3 4 5]" {
		t.Errorf("queue %v, want 1..5 once each", got)
	}
	if v, err := c.HGet(ctx, watermarkKey, "e1").Result(); err != nil || v != "5" {
		t.Errorf("watermark %q (%v), want 5", v, err)
	}

	s.MinReplicas = 2
	_, err = s.push(ctx, "e1", geoJobs(6), time.Now())
	if !errors.As(err, &few) || few.Acked != 1 || !strings.Contains(err.Error(), "has 1 of min_replicas 2") {
		t.Errorf("push wanting 2 replicas of 1: %v; want has 1 of min_replicas 2", err)
	}
}

// A round that finds jobs lost and then waits in vain for replicas fails,
// but its push has moved the watermark past the loss: the loss is counted
// all the same, once.
func TestLossSeenWhileWaitingForReplicasIsCounted(t *testing.T) {
	master, replica := startReplicated(t)
	f := &deliveryFixture{t: t, events: map[string]int{}, redisURL: master.URL(), minReplicas: 1}
	f.tracking = openTestTracking(t)
	pool, name := f.tracking.DB()
	f.store = &store{pool: pool, name: name}
	c, _, err := OpenRedis(master.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f.client = c
	f.src = newSourceDB(t)
	f.source = openTestSource(t, f.src.dsn)
	ctx := testContext(t)
	if _, _, err := f.store.startDelivery(ctx); err != nil {
		t.Fatal(err)
	}
	f.write(5)
	d := f.deliverer(Config{})
	if n, err := d.round(ctx); err != nil || n != 6 {
		t.Fatalf("first round: %d, %v", n, err)
	}
	// Redis forgets the five jobs, on the replica too, and the replica
	// stops acknowledging.
	if err := c.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	rc := redis.NewClient(&redis.Options{Addr: replica.Addr(), MaxRetries: -1})
	defer rc.Close()
	ts.WaitFor(t, 10*time.Second, "the replica flushed", func() (bool, string) {
		n, err := rc.DBSize(ctx).Result()
		return err == nil && n == 0, fmt.Sprintf("%d keys (%v)", n, err)
	})
	if err := replica.Freeze(); err != nil {
		t.Fatal(err)
	}
	f.write(3)
	for i := 0; i < 2; i++ {
		var few *tooFewReplicasError
		if _, err := d.round(ctx); !errors.As(err, &few) {
			t.Fatalf("round %d with the replica frozen: %v; want too few replicas", i+1, err)
		}
	}
	if err := replica.Thaw(); err != nil {
		t.Fatal(err)
	}
	if n, err := d.round(ctx); err != nil || n != 4 {
		t.Fatalf("round with the replica back: %d, %v; want the 4 new jobs", n, err)
	}
	if got := status(d).LostInRedis; got != 5 {
		t.Errorf("lost_in_redis %d, want the 5 jobs Redis forgot, counted once", got)
	}
	if n := strings.Count(f.log.String(), "lost jobs it had acknowledged"); n != 1 {
		t.Errorf("the loss was logged %d times, want once:\n%s", n, f.log.String())
	}
}

// replOffset is the master's replication offset: it grows with every
// write a replica must receive.
func replOffset(t *testing.T, master *redisserver.Server) int64 {
	t.Helper()
	info, err := redisserver.Info(context.Background(), master.Addr(), "replication")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseInt(info["master_repl_offset"], 10, 64)
	if err != nil {
		t.Fatalf("master_repl_offset %q: %v", info["master_repl_offset"], err)
	}
	return n
}

// newSentinelFixture is a delivery fixture whose Redis (Sidekiq's and the
// cache) is the master of a Sentinel group with the given replicas, reached
// through its Sentinels as GitLab's resque.yml names it. No Sidekiq runs:
// the tests read its queue.
func newSentinelFixture(t *testing.T, replicas, minReplicas int) (*deliveryFixture, *redisserver.Group) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts Redis, Sentinels and PostgreSQL; skipped with -short")
	}
	g := ts.StartSentinelGroup(t, redisserver.GroupOptions{Replicas: replicas})
	f := &deliveryFixture{t: t, events: map[string]int{}, redisURL: g.URL(), sentinels: g.SentinelAddrs(), minReplicas: minReplicas}
	f.tracking = openTestTracking(t)
	pool, name := f.tracking.DB()
	f.store = &store{pool: pool, name: name}
	c, _, err := OpenRedis(g.URL(), g.SentinelAddrs())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	f.client = c
	f.src = newSourceDB(t)
	f.source = openTestSource(t, f.src.dsn)
	if _, _, err := f.store.startDelivery(testContext(t)); err != nil {
		t.Fatal(err)
	}
	return f, g
}

// writeFor writes geo events and cache invalidations as a busy primary
// would, for d.
func (f *deliveryFixture) writeFor(d time.Duration) {
	f.t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); {
		f.write(4)
		time.Sleep(5 * time.Millisecond)
	}
}

// status is d's delivery status.
func status(d *Deliverer) api.Delivery {
	var st api.Status
	d.AddStatus(&st)
	return *st.Delivery
}

// recorded counts the jobs recorded as delivered; waitAllRecorded waits
// until every job written since delivery began is.
func (f *deliveryFixture) recorded(ctx context.Context) int {
	f.t.Helper()
	var n int
	if err := f.store.pool.QueryRow(ctx, `SELECT count(*) FROM geo_jobs WHERE delivered_at IS NOT NULL`).Scan(&n); err != nil {
		f.t.Fatal(err)
	}
	return n
}

func (f *deliveryFixture) waitAllRecorded(timeout time.Duration) {
	f.t.Helper()
	ts.WaitFor(f.t, timeout, "every job recorded as delivered", func() (bool, string) {
		var left int
		err := f.store.pool.QueryRow(context.Background(), `
SELECT count(*) FROM geo_jobs j, geocursor_delivery d WHERE j.id > d.started_after_job_id AND j.delivered_at IS NULL`).Scan(&left)
		if err != nil {
			return false, err.Error()
		}
		return left == 0, fmt.Sprintf("%d jobs not delivered", left)
	})
}

// queueAudit holds Sidekiq's queue on a master against geo_jobs: the
// exactly-once promise, read from the Redis side.
type queueAudit struct {
	jobs      int // geo_jobs rows of geo events since delivery began
	delivered int // of them, recorded as delivered
	onQueue   int // entries on the queue
	// missing: recorded as delivered, not on the queue; doubled: extra
	// copies of a job; unknown: entries that are no job of geo_jobs;
	// unrecorded: on the queue, not (yet) recorded as delivered.
	missing, doubled, unknown, unrecorded int
}

func (a queueAudit) String() string {
	return fmt.Sprintf("%d jobs, %d recorded delivered, %d on the queue: %d missing, %d doubled, %d unknown, %d not recorded",
		a.jobs, a.delivered, a.onQueue, a.missing, a.doubled, a.unknown, a.unrecorded)
}

// audit reads Sidekiq's queue on the Redis at addr and matches it with
// geo_jobs by job ID (JobJID).
func (f *deliveryFixture) audit(ctx context.Context, addr string) queueAudit {
	f.t.Helper()
	var epoch string
	var start int64
	if err := f.store.pool.QueryRow(ctx, `SELECT epoch, started_after_job_id FROM geocursor_delivery`).Scan(&epoch, &start); err != nil {
		f.t.Fatal(err)
	}
	rows, err := f.store.pool.Query(ctx, `SELECT id, delivered_at IS NOT NULL FROM geo_jobs WHERE id > $1 AND kind <> $2`, start, cursor.KindCacheInvalidation)
	if err != nil {
		f.t.Fatal(err)
	}
	var a queueAudit
	delivered := map[string]bool{}
	for rows.Next() {
		var id int64
		var done bool
		if err := rows.Scan(&id, &done); err != nil {
			f.t.Fatal(err)
		}
		delivered[JobJID(epoch, id)] = done
		a.jobs++
		if done {
			a.delivered++
		}
	}
	if err := rows.Err(); err != nil {
		f.t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer c.Close()
	raw, err := c.LRange(ctx, "queue:default", 0, -1).Result()
	if err != nil {
		f.t.Fatalf("read the queue on %s: %v", addr, err)
	}
	a.onQueue = len(raw)
	seen := map[string]int{}
	for _, entry := range raw {
		var j struct {
			JID string `json:"jid"`
		}
		if err := json.Unmarshal([]byte(entry), &j); err != nil {
			f.t.Fatalf("queue entry %q is not a Sidekiq job", entry)
		}
		done, known := delivered[j.JID]
		switch {
		case !known:
			a.unknown++
		case seen[j.JID] > 0:
			a.doubled++
		case !done:
			a.unrecorded++
		}
		seen[j.JID]++
	}
	for jid, done := range delivered {
		if done && seen[jid] == 0 {
			a.missing++
		}
	}
	return a
}

// longestPause is the longest time no job was recorded as delivered, among
// the gaps between consecutive delivered_at that end after since, and when
// it began.
func (f *deliveryFixture) longestPause(ctx context.Context, since time.Time) (time.Duration, time.Time) {
	f.t.Helper()
	rows, err := f.store.pool.Query(ctx, `SELECT DISTINCT delivered_at FROM geo_jobs WHERE delivered_at IS NOT NULL ORDER BY 1`)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rows.Close()
	var longest time.Duration
	var prev, began time.Time
	for rows.Next() {
		var at time.Time
		if err := rows.Scan(&at); err != nil {
			f.t.Fatal(err)
		}
		if !prev.IsZero() && at.After(since) && at.Sub(prev) > longest {
			longest, began = at.Sub(prev), prev
		}
		prev = at
	}
	if err := rows.Err(); err != nil {
		f.t.Fatal(err)
	}
	return longest, began
}

// waitFailover waits until the Sentinels name the master at addr, and it
// says it is one; it returns when.
func waitFailover(t *testing.T, g *redisserver.Group, addr string, timeout time.Duration) time.Time {
	t.Helper()
	ts.WaitFor(t, timeout, "Sentinel to promote "+addr, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		a, err := g.MasterAddr(ctx)
		if err != nil {
			return false, err.Error()
		}
		role, err := redisserver.Role(ctx, a)
		return a == addr && role == "master", fmt.Sprintf("the Sentinels say %s (role %s, %v)", a, role, err)
	})
	return time.Now()
}

// A deliverer with min_replicas = 1, pointed at a Sentinel group, delivers
// a steady stream of jobs while the master is killed: Sentinel promotes a
// replica, delivery finds it by itself, and every job is on the new
// master's queue exactly once. The group has two replicas, as GitLab's
// reference architectures run three Redis nodes: with one, the promoted
// master would have no replica to acknowledge a push, and delivery would
// rightly wait until one came back.
func TestDeliveryFollowsASentinelFailover(t *testing.T) {
	f, g := newSentinelFixture(t, 2, 1)
	d := f.deliverer(Config{})
	defer run(t, d)()

	f.writeFor(2 * time.Second)
	oldMaster := g.Master.Addr()
	killAt := time.Now()
	if err := g.Master.Kill(); err != nil {
		t.Fatal(err)
	}
	// Go on writing until delivery has resumed on the new master.
	var failedOver time.Time
	var deliveredThen int64
	for {
		f.write(4)
		time.Sleep(5 * time.Millisecond)
		if time.Since(killAt) > 40*time.Second {
			t.Fatalf("delivery did not resume within 40s of the kill: %+v", status(d))
		}
		if failedOver.IsZero() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			a, err := g.MasterAddr(ctx)
			cancel()
			if err == nil && a != oldMaster {
				failedOver, deliveredThen = time.Now(), status(d).Delivered
			}
			continue
		}
		if status(d).Delivered > deliveredThen && time.Since(failedOver) > time.Second {
			break
		}
	}
	f.waitAllRecorded(30 * time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	master, err := g.MasterAddr(ctx)
	if err != nil || master == oldMaster {
		t.Fatalf("the Sentinels say the master is %s (%v), want a promoted replica", master, err)
	}
	a := f.audit(ctx, master)
	t.Logf("the new master's queue: %s", a)
	if a.missing != 0 || a.doubled != 0 || a.unknown != 0 || a.unrecorded != 0 || a.onQueue != a.jobs || a.delivered != a.jobs {
		t.Errorf("not every job exactly once on the new master: %s", a)
	}
	st := status(d)
	if st.LostInRedis != 0 || st.SidekiqRedis != api.DatabaseOK {
		t.Errorf("delivery status %+v, want nothing lost and Sidekiq's Redis ok", st)
	}
	pause, began := f.longestPause(ctx, killAt)
	t.Logf("FIGURE: Sentinel failover, min_replicas 1 (master + 2 replicas, 3 Sentinels): jobs %d, lost %d, doubled %d, missing %d; "+
		"delivery pause %s (from %s after the kill); Sentinel named the new master %s after the kill",
		a.jobs, st.LostInRedis, a.doubled, a.missing, pause.Round(time.Millisecond), began.Sub(killAt).Round(time.Millisecond),
		failedOver.Sub(killAt).Round(time.Millisecond))
}

// laggingFailover delivers to a Sentinel group of a master and one replica,
// cuts the replica off its master (redisserver's Partition: its
// replication stops where it is, as in a network partition) and writes on
// for 3 s, kills the master, and waits until Sentinel has promoted the
// replica, then writes a little more. It returns when the replica was cut
// off and when the master was killed.
//
// Freezing the replica (SIGSTOP) instead does not reliably make it lag on
// loopback: the kernel's socket buffers hold megabytes of the replication
// stream for it, and a replica thawed after the kill often has everything.
func laggingFailover(t *testing.T, f *deliveryFixture, g *redisserver.Group, d *Deliverer) (cutAt, killAt time.Time) {
	t.Helper()
	f.writeFor(1500 * time.Millisecond)
	f.waitAllRecorded(20 * time.Second)
	replica := g.Replicas[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cutAt = time.Now()
	if err := replica.Partition(ctx); err != nil {
		t.Fatal(err)
	}
	f.writeFor(3 * time.Second)
	if f.minReplicas > 0 {
		ts.WaitFor(t, 10*time.Second, "the status to say why nothing is delivered", func() (bool, string) {
			s := status(d).SidekiqRedis
			return strings.Contains(s, fmt.Sprintf("has 0 of min_replicas %d replicas acknowledging", f.minReplicas)), s
		})
	}
	killAt = time.Now()
	if err := g.Master.Kill(); err != nil {
		t.Fatal(err)
	}
	failedOver := waitFailover(t, g, replica.Addr(), 30*time.Second)
	t.Logf("Sentinel promoted the replica %s after the kill", failedOver.Sub(killAt).Round(time.Millisecond))
	f.writeFor(time.Second)
	return cutAt, killAt
}

// With min_replicas = 0, a failover to a replica that lagged loses jobs
// recorded as delivered: the master acknowledged them, the replica never
// had them. The loss is not silent: the deliverer counts exactly those
// jobs in lost_in_redis and logs the range as an error.
func TestFailoverToALaggingReplicaLosesOnlyWhatItReports(t *testing.T) {
	f, g := newSentinelFixture(t, 1, 0)
	d := f.deliverer(Config{})
	defer run(t, d)()
	_, killAt := laggingFailover(t, f, g, d)
	f.waitAllRecorded(30 * time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := f.audit(ctx, g.Replicas[0].Addr())
	st := status(d)
	t.Logf("the promoted replica's queue: %s; lost_in_redis %d", a, st.LostInRedis)
	if a.missing == 0 {
		t.Fatalf("nothing was lost: the replica cut off did not lag (%s); the test shows nothing", a)
	}
	if st.LostInRedis != int64(a.missing) {
		t.Errorf("lost_in_redis %d, but %d jobs recorded as delivered are not on the new master's queue", st.LostInRedis, a.missing)
	}
	if a.doubled != 0 || a.unknown != 0 || a.unrecorded != 0 {
		t.Errorf("the new master's queue: %s; want nothing doubled, unknown or unrecorded", a)
	}
	if want := fmt.Sprintf("count=%d", a.missing); !strings.Contains(f.log.String(), "Sidekiq's Redis lost jobs it had acknowledged") || !strings.Contains(f.log.String(), want) {
		t.Errorf("the log does not report the %d lost jobs as an error", a.missing)
	}
	pause, _ := f.longestPause(ctx, killAt)
	t.Logf("FIGURE: lagging replica promoted, min_replicas 0 (master + 1 replica cut off 3 s before the kill): jobs %d, recorded delivered then lost %d (reported: lost_in_redis %d), doubled %d; delivery pause %s",
		a.jobs, a.missing, st.LostInRedis, a.doubled, pause.Round(time.Millisecond))
}

// With min_replicas = 1 in the same setup, nothing recorded as delivered is
// lost: from the moment the replica stops acknowledging, no push counts,
// and delivery waits (the promoted replica has no replica of its own)
// until the old master comes back as its replica. Then every job is on
// the new master's queue exactly once.
func TestMinReplicasWaitsInsteadOfLosingToALaggingReplica(t *testing.T) {
	f, g := newSentinelFixture(t, 1, 1)
	d := f.deliverer(Config{})
	defer run(t, d)()
	cutAt, killAt := laggingFailover(t, f, g, d)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	recordedAtKill := f.recorded(ctx) // nothing is recorded once the master is gone...

	// ...while pushes reach the new master, and its missing replica holds
	// them back.
	newMaster := g.Replicas[0].Addr()
	ts.WaitFor(t, 20*time.Second, "a push to reach the new master and wait for its replicas", func() (bool, string) {
		stats, err := redisserver.Info(ctx, newMaster, "commandstats")
		return err == nil && stats["cmdstat_wait"] != "", fmt.Sprintf("WAIT on the new master: %q (%v)", stats["cmdstat_wait"], err)
	})
	ts.WaitFor(t, 10*time.Second, "the status to say the new master has no replica", func() (bool, string) {
		s := status(d).SidekiqRedis
		return strings.Contains(s, "has 0 of min_replicas 1 replicas acknowledging"), s
	})
	a := f.audit(ctx, newMaster)
	t.Logf("the promoted replica's queue while delivery waits: %s", a)
	if a.missing != 0 || a.doubled != 0 || a.unknown != 0 {
		t.Errorf("jobs recorded as delivered were lost or doubled: %s", a)
	}
	if n := f.recorded(ctx); n != recordedAtKill {
		t.Errorf("%d jobs recorded as delivered with no replica acknowledging, %d at the kill", n, recordedAtKill)
	}
	lostWaiting := status(d).LostInRedis

	// The old master comes back; Sentinel makes it the new master's
	// replica, and delivery goes on by itself.
	restartedAt := time.Now()
	if err := g.Master.StartAgain(ctx); err != nil {
		t.Fatal(err)
	}
	f.writeFor(500 * time.Millisecond)
	f.waitAllRecorded(45 * time.Second)
	a = f.audit(ctx, newMaster)
	st := status(d)
	t.Logf("the new master's queue once the old master is its replica: %s", a)
	if a.missing != 0 || a.doubled != 0 || a.unknown != 0 || a.unrecorded != 0 || a.onQueue != a.jobs || a.delivered != a.jobs {
		t.Errorf("not every job exactly once on the new master: %s", a)
	}
	if st.LostInRedis != 0 || lostWaiting != 0 {
		t.Errorf("lost_in_redis %d (%d while waiting), want 0", st.LostInRedis, lostWaiting)
	}
	pause, began := f.longestPause(ctx, cutAt)
	t.Logf("FIGURE: lagging replica promoted, min_replicas 1 (master + 1 replica cut off 3 s before the kill): jobs %d, lost %d, doubled %d, missing %d; "+
		"delivery waited %s (from %s after the replica was cut off; the kill came %s after that, the old master was restarted %s after it, and delivery resumed once Sentinel had made it the new master's replica)",
		a.jobs, st.LostInRedis, a.doubled, a.missing, pause.Round(time.Millisecond), began.Sub(cutAt).Round(time.Millisecond),
		killAt.Sub(cutAt).Round(time.Millisecond), restartedAt.Sub(cutAt).Round(time.Millisecond))
}

package delivery

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	neturl "net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// The Redis side of delivery: GitLab's Sidekiq, where each job of a geo
// event becomes a Geo::EventWorker job, and the Rails cache, where each
// cache invalidation deletes its key.

// SidekiqTarget is the Sidekiq Redis and where jobs go in it.
type SidekiqTarget struct {
	Client *redis.Client
	// Queue is the Sidekiq queue GitLab routes Geo::EventWorker to.
	Queue string
	// Namespace prefixes every key ("resque:gitlab" on older GitLab), ""
	// for none.
	Namespace string
	// Name is how logs and status name the Redis (host:port/db, or
	// sentinel:master/db).
	Name string
	// MinReplicas is how many replicas must have acknowledged a push
	// (WAIT) before it counts as delivered; 0: the master's reply is
	// enough.
	MinReplicas int
}

// CacheTarget is the Rails cache Redis.
type CacheTarget struct {
	Client    *redis.Client
	Namespace string
	Name      string
}

// Timeouts of a delivery Redis client. It never retries on its own:
// delivery retries whole rounds, and says why.
const (
	redisDialTimeout  = 2 * time.Second
	redisReadTimeout  = 3 * time.Second
	redisWriteTimeout = 3 * time.Second
	redisPoolSize     = 4
)

// OpenRedis parses a redis://, rediss:// or unix:// URL into a client
// that does not retry on its own, and names it for logs without its
// password.
//
// With sentinels (HOST:PORT each), the URL names the master as GitLab's
// resque.yml does: its host is the master's name to ask the Sentinels for
// (redis://:PASSWORD@gitlab-redis/0; a port is an error), and its user,
// password, database and TLS are the master's. The client then follows
// Sentinel's failovers by itself: every new connection asks a Sentinel
// where the master is.
func OpenRedis(url string, sentinels []string) (*redis.Client, string, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		// ParseURL's errors do not quote the URL, so the password is safe.
		return nil, "", fmt.Errorf("parse the Redis URL: %w", err)
	}
	db := "/" + strconv.Itoa(opts.DB)
	if len(sentinels) == 0 {
		opts.MaxRetries = -1
		opts.DialTimeout = redisDialTimeout
		opts.ReadTimeout = redisReadTimeout
		opts.WriteTimeout = redisWriteTimeout
		opts.PoolSize = redisPoolSize
		return redis.NewClient(opts), opts.Addr + db, nil
	}
	master, err := sentinelMaster(url)
	if err != nil {
		return nil, "", err
	}
	tlsConfig := opts.TLSConfig
	if tlsConfig != nil {
		// ParseURL verifies the URL's host, here the master's name. Each
		// connection verifies the address it dials instead: the master's,
		// or a Sentinel's.
		tlsConfig = tlsConfig.Clone()
		tlsConfig.ServerName = ""
	}
	client := redis.NewFailoverClient(&redis.FailoverOptions{
		MasterName:    master,
		SentinelAddrs: sentinels,
		Username:      opts.Username,
		Password:      opts.Password,
		DB:            opts.DB,
		TLSConfig:     tlsConfig,
		MaxRetries:    -1,
		DialTimeout:   redisDialTimeout,
		ReadTimeout:   redisReadTimeout,
		WriteTimeout:  redisWriteTimeout,
		PoolSize:      redisPoolSize,
	})
	return client, "sentinel:" + master + db, nil
}

// sentinelMaster is the master name of a Redis URL used with Sentinels:
// its host, which must come without a port.
func sentinelMaster(url string) (string, error) {
	u, err := neturl.Parse(url)
	if err != nil {
		// url.Parse's errors quote the URL, and with it the password.
		return "", errors.New("parse the Redis URL: it is not a URL")
	}
	switch {
	case u.Scheme != "redis" && u.Scheme != "rediss":
		return "", fmt.Errorf("with Sentinels the Redis URL names the master (redis://:PASSWORD@MASTER_NAME/DB, as in GitLab's resque.yml); a %s:// URL names none", u.Scheme)
	case u.Port() != "":
		return "", fmt.Errorf("with Sentinels the host of the Redis URL is the master's name (redis://:PASSWORD@gitlab-redis/0, as in GitLab's resque.yml) and takes no port: drop \":%s\"", u.Port())
	case u.Hostname() == "":
		return "", errors.New("with Sentinels the host of the Redis URL is the master's name, and it has none")
	}
	return u.Hostname(), nil
}

// key prefixes k with namespace, as redis-namespace does.
func key(namespace, k string) string {
	if namespace == "" {
		return k
	}
	return namespace + ":" + k
}

// eventWorker is the GitLab worker every geo event is handed to, with the
// arguments GitLab's own log cursor gives it: perform_async(replicable_name,
// event_name, payload).
const eventWorker = "Geo::EventWorker"

// sidekiqJob is a job as Sidekiq's client writes it (Sidekiq 6 and 7: times
// are epoch seconds as floats).
type sidekiqJob struct {
	Class         string  `json:"class"`
	Args          [3]any  `json:"args"`
	Queue         string  `json:"queue"`
	JID           string  `json:"jid"`
	Retry         int     `json:"retry"`
	CreatedAt     float64 `json:"created_at"`
	EnqueuedAt    float64 `json:"enqueued_at"`
	CorrelationID string  `json:"correlation_id,omitempty"`
	// Dead is always false, as GitLab's Geo::EventWorker sets it
	// (sidekiq_options retry: 3, dead: false): Sidekiq's server reads it
	// from the job (send_to_morgue unless msg["dead"] == false), and
	// without it a job that used up its retries lands in the Dead set.
	Dead bool `json:"dead"`
}

// jobRetries is what GitLab's Geo::EventWorker sets (sidekiq_options retry: 3).
const jobRetries = 3

// JobJID is the Sidekiq job ID of geo_jobs row jobID: 24 hex digits, as
// Sidekiq's own, but derived from the tracking database's epoch and the
// geo_jobs ID, so that a job keeps its ID however often delivery is
// retried, and a site can tell which job a worker ran.
func JobJID(epoch string, jobID int64) string {
	sum := sha256.Sum256([]byte(epoch + ":" + strconv.FormatInt(jobID, 10)))
	return hex.EncodeToString(sum[:12])
}

// encodeSidekiqJob is the Sidekiq payload of j.
func encodeSidekiqJob(epoch, queue string, j deliveryJob, now time.Time) ([]byte, error) {
	var meta struct {
		CorrelationID string `json:"correlation_id"`
	}
	// A payload is a JSON object (classify checked it); a correlation_id
	// that is not a string is left out rather than guessed at.
	_ = json.Unmarshal(j.payload, &meta)
	sj := sidekiqJob{
		Class:         eventWorker,
		Args:          [3]any{j.replicableName, j.eventName, json.RawMessage(j.payload)},
		Queue:         queue,
		JID:           JobJID(epoch, j.id),
		Retry:         jobRetries,
		CreatedAt:     epochSeconds(j.createdAt),
		EnqueuedAt:    epochSeconds(now),
		CorrelationID: meta.CorrelationID,
	}
	b, err := json.Marshal(sj)
	if err != nil {
		return nil, fmt.Errorf("encode the Sidekiq job of geo_jobs %d: %w", j.id, err)
	}
	return b, nil
}

func epochSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }

// pushScript pushes jobs onto a Sidekiq queue once each. Redis runs a
// script atomically, and replicates and persists its writes together, so
// the watermark and the jobs below it are never apart: the watermark is
// the highest geo_jobs ID ever pushed for the tracking database named by
// the epoch, and a job at or below it is skipped. A deliverer that died
// between the push and its record in the tracking database, a stale one,
// and a retried push all find their jobs below the watermark.
//
// It writes the watermark even when it pushes nothing (HSET counts as a
// write whether or not the value changes), so that a WAIT after it on the
// same connection waits for everything pushed before: a retried round
// finds its jobs pushed by the round that failed, and must still learn
// whether the replicas have them. The ID is kept as the caller wrote it
// (Lua's tostring would turn a large one into 1e+15).
//
// KEYS: the watermark hash, the queues set, the queue list.
// ARGV: the epoch, the queue name, then a geo_jobs ID and its payload per
// job, in ID order.
// Returns the watermark before the push (-1: none for this epoch) and the
// number of jobs pushed.
var pushScript = redis.NewScript(`
local mark = redis.call('HGET', KEYS[1], ARGV[1])
local before = tonumber(mark or '-1')
local top = before
local pushed = 0
for i = 3, #ARGV, 2 do
  local id = tonumber(ARGV[i])
  if id > top then
    redis.call('LPUSH', KEYS[3], ARGV[i + 1])
    top = id
    mark = ARGV[i]
    pushed = pushed + 1
  end
end
if pushed > 0 then
  redis.call('SADD', KEYS[2], ARGV[2])
end
if mark then
  redis.call('HSET', KEYS[1], ARGV[1], mark)
end
return {before, pushed}
`)

// watermarkKey holds, per epoch, the highest geo_jobs ID pushed.
const watermarkKey = "geocursor:delivered"

// replicaWait bounds the wait for min_replicas replicas to acknowledge a
// push. Replicas answer the master's GETACK at once, so on a healthy link
// the wait is a round trip; it runs out only when replicas are missing or
// far behind, and then the round fails and is retried with backoff.
const replicaWait = 2 * time.Second

// pushResult is what a push found and did.
type pushResult struct {
	// before is the watermark before the push; -1 when Redis had none for
	// the epoch (a new Redis, or one that lost its data).
	before int64
	pushed int
}

// tooFewReplicasError is a push that fewer than min_replicas replicas
// acknowledged in time: its jobs are in the master but not counted as
// delivered, since a failover could lose them. The round is retried.
type tooFewReplicasError struct {
	Redis       string // the target's Name
	Acked       int    // replicas that acknowledged
	MinReplicas int
	Wait        time.Duration
}

func (e *tooFewReplicasError) Error() string {
	return fmt.Sprintf("Sidekiq's Redis at %s has %d of min_replicas %d replicas acknowledging (WAIT %s): the jobs pushed are in the master, but not recorded as delivered until enough replicas have them",
		e.Redis, e.Acked, e.MinReplicas, e.Wait)
}

// push hands jobs (sorted by ID) to Sidekiq, each at most once ever. With
// MinReplicas, it returns only once that many replicas have everything
// the master holds up to and including this push (or a
// *tooFewReplicasError): the script and WAIT run on one connection, since
// WAIT waits for the last write of its own connection.
func (s *SidekiqTarget) push(ctx context.Context, epoch string, jobs []deliveryJob, now time.Time) (pushResult, error) {
	args := make([]any, 0, 2+2*len(jobs))
	args = append(args, epoch, s.Queue)
	for _, j := range jobs {
		payload, err := encodeSidekiqJob(epoch, s.Queue, j, now)
		if err != nil {
			return pushResult{}, err
		}
		args = append(args, strconv.FormatInt(j.id, 10), payload)
	}
	keys := []string{key(s.Namespace, watermarkKey), key(s.Namespace, "queues"), key(s.Namespace, "queue:"+s.Queue)}
	conn := s.Client.Conn()
	defer conn.Close()
	// Run tries EVALSHA and, on NOSCRIPT (a new or failed-over master),
	// EVAL: both on conn.
	out, err := pushScript.Run(ctx, conn, keys, args...).Int64Slice()
	if err != nil {
		return pushResult{}, fmt.Errorf("push %d jobs to Sidekiq's Redis at %s: %w", len(jobs), s.Name, err)
	}
	if len(out) != 2 {
		return pushResult{}, fmt.Errorf("push %d jobs to Sidekiq's Redis at %s: the script answered %v", len(jobs), s.Name, out)
	}
	res := pushResult{before: out[0], pushed: int(out[1])}
	if s.MinReplicas > 0 {
		acked, err := conn.Wait(ctx, s.MinReplicas, replicaWait).Result()
		if err != nil {
			return res, fmt.Errorf("wait for %d replicas of Sidekiq's Redis at %s to acknowledge a push: %w", s.MinReplicas, s.Name, err)
		}
		if acked < int64(s.MinReplicas) {
			return res, &tooFewReplicasError{Redis: s.Name, Acked: int(acked), MinReplicas: s.MinReplicas, Wait: replicaWait}
		}
	}
	return res, nil
}

// deleteKeys deletes cache keys as Rails.cache.delete names them
// (RailsCacheKey: the namespace, then Rails' truncation of a long key),
// each on its own (a cluster keeps keys in
// different slots), in one round trip. Deleting a key that is gone is
// harmless, so a retried round simply deletes again.
func (c *CacheTarget) deleteKeys(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	_, err := c.Client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Del(ctx, RailsCacheKey(c.Namespace, k))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delete %d cache keys in the cache Redis at %s: %w", len(keys), c.Name, err)
	}
	return nil
}

// durability says what a Redis server keeps across a crash, from its
// persistence settings, and "" when that is every acknowledged write.
// Delivery records a job as delivered once Redis acknowledged it: a Redis
// that then loses it loses the job.
func durability(ctx context.Context, c *redis.Client) string {
	settings := map[string]string{}
	for _, name := range []string{"appendonly", "appendfsync"} {
		v, err := c.ConfigGet(ctx, name).Result()
		if err != nil {
			var rerr redis.Error
			if errors.As(err, &rerr) {
				return "its persistence settings cannot be read (CONFIG GET: " + strings.TrimSpace(rerr.Error()) +
					"): make sure it runs with appendonly yes and appendfsync always, or jobs it acknowledged can be lost in a crash"
			}
			return ""
		}
		settings[name] = v[name]
	}
	switch {
	case settings["appendonly"] != "yes":
		return "it runs without an append-only file (appendonly " + settings["appendonly"] +
			"): a crash or restart loses the jobs it holds, which geocursor has recorded as delivered; set appendonly yes and appendfsync always"
	case settings["appendfsync"] != "always":
		return "it syncs its append-only file with appendfsync " + settings["appendfsync"] +
			": a crash of the server can lose the last second of jobs it acknowledged; set appendfsync always for none"
	}
	return ""
}

// replication says, from the replicas a Redis has now, what min_replicas
// leaves to chance ("" when nothing): with replicas and min_replicas 0, a
// failover to one that lagged loses jobs recorded as delivered; with fewer
// replicas than min_replicas, delivery waits.
func replication(ctx context.Context, c *redis.Client, minReplicas int) string {
	info, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return "" // the first round will say why
	}
	replicas := 0
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "connected_slaves:"); ok {
			replicas, _ = strconv.Atoi(v)
		}
	}
	switch {
	case minReplicas == 0 && replicas > 0:
		return fmt.Sprintf("it has %d replicas and min_replicas is 0: a failover to a replica that lagged loses jobs recorded as delivered (they are reported as lost_in_redis, not pushed again); set delivery.sidekiq.min_replicas", replicas)
	case minReplicas > replicas:
		return fmt.Sprintf("it has %d replicas, fewer than min_replicas %d: no job is recorded as delivered until %d replicas acknowledge it", replicas, minReplicas, minReplicas)
	}
	return ""
}

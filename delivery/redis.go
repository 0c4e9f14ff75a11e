package delivery

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
	// Name is how logs and status name the Redis (host:port/db).
	Name string
}

// CacheTarget is the Rails cache Redis.
type CacheTarget struct {
	Client    *redis.Client
	Namespace string
	Name      string
}

// OpenRedis parses a redis://, rediss:// or unix:// URL into a client
// that does not retry on its own (delivery retries whole rounds, and says
// why), and names it for logs without its password.
func OpenRedis(url string) (*redis.Client, string, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		// ParseURL's errors do not quote the URL, so the password is safe.
		return nil, "", fmt.Errorf("parse the Redis URL: %w", err)
	}
	opts.MaxRetries = -1
	opts.DialTimeout = 2 * time.Second
	opts.ReadTimeout = 3 * time.Second
	opts.WriteTimeout = 3 * time.Second
	opts.PoolSize = 4
	name := opts.Addr + "/" + strconv.Itoa(opts.DB)
	return redis.NewClient(opts), name, nil
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
// KEYS: the watermark hash, the queues set, the queue list.
// ARGV: the epoch, the queue name, then a geo_jobs ID and its payload per
// job, in ID order.
// Returns the watermark before the push (-1: none for this epoch) and the
// number of jobs pushed.
var pushScript = redis.NewScript(`
local before = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
local top = before
local pushed = 0
for i = 3, #ARGV, 2 do
  local id = tonumber(ARGV[i])
  if id > top then
    redis.call('LPUSH', KEYS[3], ARGV[i + 1])
    top = id
    pushed = pushed + 1
  end
end
if pushed > 0 then
  redis.call('SADD', KEYS[2], ARGV[2])
  redis.call('HSET', KEYS[1], ARGV[1], tostring(top))
end
return {before, pushed}
`)

// watermarkKey holds, per epoch, the highest geo_jobs ID pushed.
const watermarkKey = "geocursor:delivered"

// pushResult is what a push found and did.
type pushResult struct {
	// before is the watermark before the push; -1 when Redis had none for
	// the epoch (a new Redis, or one that lost its data).
	before int64
	pushed int
}

// push hands jobs (sorted by ID) to Sidekiq, each at most once ever.
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
	out, err := pushScript.Run(ctx, s.Client, keys, args...).Int64Slice()
	if err != nil {
		return pushResult{}, fmt.Errorf("push %d jobs to Sidekiq's Redis at %s: %w", len(jobs), s.Name, err)
	}
	if len(out) != 2 {
		return pushResult{}, fmt.Errorf("push %d jobs to Sidekiq's Redis at %s: the script answered %v", len(jobs), s.Name, out)
	}
	return pushResult{before: out[0], pushed: int(out[1])}, nil
}

// deleteKeys deletes cache keys, each on its own (a cluster keeps keys in
// different slots), in one round trip. Deleting a key that is gone is
// harmless, so a retried round simply deletes again.
func (c *CacheTarget) deleteKeys(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	_, err := c.Client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Del(ctx, key(c.Namespace, k))
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

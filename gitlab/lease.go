package gitlab

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// CursorLeaseKey is the key of GitLab's log cursor lease in its
// shared-state Redis: Gitlab::ExclusiveLease's prefix
// ("gitlab:exclusive_lease", lib/gitlab/exclusive_lease.rb) and the log
// cursor's key ("geo_log_cursor_processed",
// ee/lib/gitlab/geo/log_cursor/lease.rb).
const CursorLeaseKey = "gitlab:exclusive_lease:geo_log_cursor_processed"

// CursorLeaseTTL is the expiry GitLab's cursor gives the key
// (LEASE_TIMEOUT, 30 s). The group holds it for as long: an agent that
// dies while holding it keeps geo-logcursor out for at most that long.
const CursorLeaseTTL = 30 * time.Second

// leaseValuePrefix starts the value the group holds the key under. GitLab
// holds it under a UUID (SecureRandom.uuid), and its try_obtain_with_ttl
// only proceeds when SET NX succeeds or the value is its own UUID, so any
// other value keeps it waiting.
const leaseValuePrefix = "geocursor:"

// LeaseValue is the value the group holds GitLab's cursor lease under: the
// same on every agent of the site, so that whichever agent renews it
// renews the group's hold, and one that names the holder to an operator
// who reads the key.
func LeaseValue(siteName string) string { return leaseValuePrefix + siteName }

// claimScript takes GitLab's cursor lease for value if it is free or held
// under value already, and renews its expiry; it never takes a key another
// value holds. It answers {1, ""} when the key is value's now, else {0,
// the holder's value, its TTL in milliseconds}.
//
// KEYS: the lease key. ARGV: value, TTL in milliseconds.
var claimScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, ''}
end
return {0, cur, redis.call('PTTL', KEYS[1])}
`)

// releaseScript deletes the lease key if value holds it, as GitLab's
// LUA_CANCEL_SCRIPT does for its UUID.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// Claim is what a claim of GitLab's cursor lease found.
type Claim struct {
	// Ours: the group holds the key now, renewed for CursorLeaseTTL.
	Ours bool
	// Holder is the value another process holds the key under (geo-logcursor's
	// UUID), and TTL what is left of its hold; set when !Ours.
	Holder string
	TTL    time.Duration
}

// CursorLease is GitLab's log cursor lease in the shared-state Redis, as
// the group holds it.
type CursorLease struct {
	Client *redis.Client
	Value  string
}

// Claim takes the key for the group if it is free, renews it if the group
// holds it, and says who holds it otherwise.
func (l *CursorLease) Claim(ctx context.Context) (Claim, error) {
	res, err := claimScript.Run(ctx, l.Client, []string{CursorLeaseKey}, l.Value, CursorLeaseTTL.Milliseconds()).Slice()
	if err != nil {
		return Claim{}, fmt.Errorf("claim GitLab's cursor lease %s: %w", CursorLeaseKey, err)
	}
	if len(res) < 2 {
		return Claim{}, fmt.Errorf("claim GitLab's cursor lease %s: the script answered %v", CursorLeaseKey, res)
	}
	if ours, _ := res[0].(int64); ours == 1 {
		return Claim{Ours: true}, nil
	}
	c := Claim{}
	c.Holder, _ = res[1].(string)
	if len(res) > 2 {
		if ms, ok := res[2].(int64); ok && ms > 0 {
			c.TTL = time.Duration(ms) * time.Millisecond
		}
	}
	return c, nil
}

// Release deletes the key if the group holds it, so that geo-logcursor can
// start at once after the last agent stopped.
func (l *CursorLease) Release(ctx context.Context) error {
	if err := releaseScript.Run(ctx, l.Client, []string{CursorLeaseKey}, l.Value).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("release GitLab's cursor lease %s: %w", CursorLeaseKey, err)
	}
	return nil
}

package delivery

import (
	"crypto/sha256"
	"encoding/hex"
)

// railsMaxKeyBytesize is ActiveSupport::Cache::RedisCacheStore::MAX_KEY_BYTESIZE.
const railsMaxKeyBytesize = 1024

// railsDigestHexLen is how much of the hex digest ActiveSupport::Digest.hexdigest
// keeps: it returns hash_digest_class.hexdigest(arg)[0...32].
const railsDigestHexLen = 32

// RailsCacheKey returns the Redis key that GitLab's Rails.cache.delete(key)
// deletes, for a cache store with the given namespace. GitLab's log cursor
// handles a cache invalidation event with Rails.cache.delete(event.key)
// (ee/lib/gitlab/geo/log_cursor/events/cache_invalidation_event.rb), and
// GitLab's namespace is "cache:gitlab" (Gitlab::Redis::Cache::CACHE_NAMESPACE
// in lib/gitlab/redis/cache.rb; active_support_config passes it to
// config.cache_store = :redis_cache_store in config/application.rb).
//
// It follows Rails 7.2.3, the version in GitLab's Gemfile.lock (rails and
// activesupport 7.2.3):
//
//   - activesupport/lib/active_support/cache.rb, Store#normalize_key and
//     #namespace_key: a String key is used as is (expanded_key calls
//     to_param, which returns the string itself), then the namespace is
//     prepended: "#{namespace}:#{key}". A nil namespace adds nothing. Rails
//     raises ArgumentError for a blank key; this function does not check.
//   - activesupport/lib/active_support/cache/redis_cache_store.rb,
//     RedisCacheStore#normalize_key and #truncate_key: the namespaced key is
//     taken as bytes (.b, no scrubbing or escaping), and if it is longer than
//     MAX_KEY_BYTESIZE (1024) bytes it becomes its first 1024-38 = 986 bytes
//     followed by ":hash:" and ActiveSupport::Digest.hexdigest of the whole
//     namespaced key. The namespace is therefore added before truncation, the
//     digest covers the namespace, and the cut is made on a byte boundary, so
//     it may split a multi-byte UTF-8 character (Redis keys are binary).
//   - activesupport/lib/active_support/digest.rb: hexdigest is
//     hash_digest_class.hexdigest(arg)[0...32]. GitLab calls
//     config.load_defaults 7.1 (config/application.rb) and does not override
//     active_support.hash_digest_class, so the 7.0 default
//     OpenSSL::Digest::SHA256 applies (railties
//     lib/rails/application/configuration.rb, load_defaults "7.0"): the
//     suffix holds the first 32 hex digits of the SHA-256.
//
// GitLab's patch of the store (lib/gitlab/patch/redis_cache_store.rb) does
// not touch key normalisation.
//
// An empty namespace means no namespace, as Rails' default nil does. (Rails
// given namespace: "" would produce ":key"; GitLab never configures that.)
func RailsCacheKey(namespace, key string) string {
	full := key
	if namespace != "" {
		full = namespace + ":" + key
	}
	if len(full) <= railsMaxKeyBytesize {
		return full
	}
	sum := sha256.Sum256([]byte(full))
	suffix := ":hash:" + hex.EncodeToString(sum[:])[:railsDigestHexLen]
	return full[:railsMaxKeyBytesize-len(suffix)] + suffix
}

# geocursor agent configuration: a working example for a first local node.
#   geocursor agent -config config.hcl
# Further nodes can share this file and override what differs with flags:
#   geocursor agent -config config.hcl -node-id node2 -data-dir data/node2 \
#     -http-addr 127.0.0.1:8480 -raft-addr 127.0.0.1:8481 -join 127.0.0.1:8470
# Precedence: this file < GEOCURSOR_* environment variables < flags.

node_id      = "node1"
data_dir     = "data/node1"
http_addr    = "127.0.0.1:8470"   # HTTP API: status, health, join, forwarded commands
raft_addr    = "127.0.0.1:8471"   # Raft traffic between peers
join         = []                 # HTTP addresses of existing members (ignored once this node has Raft state)
join_timeout = "60s"
log_level    = "info"             # trace, debug, info, warn, error
log_format   = "json"             # json (one object per line) or text

lease {
  ttl             = "5s"    # fallback only: the leader revokes a dead holder's lease as soon as heartbeats to it fail
  retry_min       = "100ms" # a standby waits a random delay in [retry_min, retry_max] before it competes
  retry_max       = "300ms" # for a lease left free, so the last holder keeps its turn
  prefer_follower = true    # keep the holder off the Raft leader: the leader's death then stops no batch
}

# Without a source block this node is a witness: a voter that never processes.
# To process events, uncomment both blocks and export the two DSNs (the DSNs are
# secrets, so they come from the environment):
#   export GEOCURSOR_SOURCE_DSN=postgres://geo_reader@primary-replica/gitlabhq_production
#   export GEOCURSOR_TRACKING_DSN=postgres://geocursor@localhost/gitlabhq_geo_tracking
#
# source {
#   dsn           = env.GEOCURSOR_SOURCE_DSN
#   batch_size    = 1000
#   poll_interval = "25ms"   # how often an idle peer looks for new events
#   gap_timeout   = "1h"     # how long a skipped (not yet visible) event ID is waited for
#   start         = "head"   # a fresh tracking database begins after the newest event ("oldest": replay the log)
# }
#
# tracking {
#   dsn = env.GEOCURSOR_TRACKING_DSN
# }

# Delivery to GitLab (README, "Delivery to GitLab"): every geo event becomes a
# Geo::EventWorker job in Sidekiq's Redis, once; every cache invalidation
# deletes its key in the Rails cache. Without this block geo_jobs is the queue.
# Run Sidekiq's Redis with appendonly yes and appendfsync always.
#   export GEOCURSOR_SIDEKIQ_REDIS_URL=redis://:password@redis-sidekiq:6379/0
#   export GEOCURSOR_CACHE_REDIS_URL=redis://:password@redis-cache:6379/0
#
# delivery {
#   sidekiq {
#     redis_url = env.GEOCURSOR_SIDEKIQ_REDIS_URL
#     queue     = "default"       # where GitLab routes Geo::EventWorker
#     namespace = ""              # "resque:gitlab" on older GitLab
#     # Redis behind Sentinel: redis_url then names the master, as GitLab's
#     # resque.yml does (redis://:PASSWORD@gitlab-redis/0, no port).
#     # sentinels    = ["10.0.0.11:26379", "10.0.0.12:26379", "10.0.0.13:26379"]
#     # min_replicas = 1          # replicas that must have a push before it
#     #                           # counts as delivered; 0 (default): none
#   }
#   cache {
#     redis_url = env.GEOCURSOR_CACHE_REDIS_URL
#     namespace = "cache:gitlab"
#     # sentinels = ["10.0.0.11:26379", "10.0.0.12:26379", "10.0.0.13:26379"]
#   }
#   rate_limit = 0                # jobs per second across all agents; 0: no limit
# }

# Beside a GitLab site (README, "Beside GitLab"): hold GitLab's log cursor
# lease so that geo-logcursor cannot run beside the agents, adopt its open
# gaps at switchover, and process only while geo_nodes says this site is a
# secondary. Without it, make sure geo-logcursor stays stopped.
#   export GEOCURSOR_SHARED_STATE_REDIS_URL=redis://:password@redis-shared-state:6379/0
#
# gitlab {
#   site_name              = "secondary-1"   # geo_nodes.name (Admin > Geo > Sites)
#   shared_state_redis_url = env.GEOCURSOR_SHARED_STATE_REDIS_URL
#   # sentinels            = ["10.0.0.11:26379", "10.0.0.12:26379", "10.0.0.13:26379"]
# }

# Security (README, "Security"). On loopback addresses, as above, both blocks
# are optional; a node with a non-loopback http_addr or raft_addr refuses to
# start without them (or insecure = true, which it warns about at every start).
# Create the files with:
#   geocursor tls ca create -dir tls
#   geocursor tls cert create -dir tls -node node1 -ip <node1's IP>
# and the tokens, one per file, mode 0600 (the same on every node), with:
#   (umask 077; openssl rand -hex 32 > tokens/operator; openssl rand -hex 32 > tokens/read)
# SIGHUP reloads both blocks: the certificates and the token files are read
# again, and the log says which token changed. A token may instead come from
# GEOCURSOR_OPERATOR_TOKEN / GEOCURSOR_READ_TOKEN (or operator_token = "..."),
# but one from the environment changes only with a restart; a token file and
# its variable together are an error.
#
# tls {
#   ca_file   = "tls/ca.pem"
#   cert_file = "tls/node1.pem"
#   key_file  = "tls/node1-key.pem"
# }
#
# acl {
#   operator_token_file = "tokens/operator"   # pause/resume and the other operator commands
#   read_token_file     = "tokens/read"       # status (the operator token reads too)
# }
#
# insecure = false

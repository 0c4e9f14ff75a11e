#!/usr/bin/env bash
# bench.sh: geocursor's figures on this machine, as one JSON document on
# stdout (progress on stderr): drain rate (three agents vs the plain loop
# and the database's ceiling), lag under 1,000 events/s and Raft writes at
# steady 200 and 5,000 events/s, failover after SIGKILL of the lease holder
# and of the Raft leader while a follower holds it, delivery into a real
# Sidekiq, the drain with 10,000 open gaps, a 10M-event drain tenth by
# tenth (flat), Raft cost per batch, peak RSS, an exactly-once check, the
# delivery lag with a gitlab block beside without, and what a stranger's
# idle connections cost (strangers). About 14 minutes with the defaults on
# 2 cores (the flat part 5 of them); -security both runs every part twice.
#
#   scripts/bench.sh [-only drain,lag,failover,delivery,gaps,flat,strangers] [-events 1000000] [-flat-events 10000000] [-failover-runs 20] [-security tls|plain|both] > bench.json
#
# Needs Go and Debian's postgresql, redis-server, ruby-sidekiq and
# ruby-redis-namespace packages (the delivery part; .ci/run installs them).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v go >/dev/null || { echo "bench: needs Go (https://go.dev/dl/) on PATH" >&2; exit 1; }
exec go run ./scripts/bench "$@"

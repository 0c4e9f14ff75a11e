#!/usr/bin/env bash
# bench.sh: geocursor's figures on this machine, as one JSON document on
# stdout (progress on stderr): drain rate (three agents vs the plain loop),
# lag under 1,000 events/s, failover after SIGKILL of the lease holder (as a
# follower and as the Raft leader), Raft cost per batch, peak RSS, and an
# exactly-once check. About 15 minutes with the defaults on 2 cores.
#
#   scripts/bench.sh [-only drain,lag,failover] [-events 1000000] [-failover-runs 20] > bench.json
#
# Needs Go and Debian's PostgreSQL server package (apt-get install -y postgresql).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v go >/dev/null || { echo "bench: needs Go (https://go.dev/dl/) on PATH" >&2; exit 1; }
exec go run ./scripts/bench "$@"

#!/usr/bin/env bash
# soak.sh: run a 3-node geocursor group under a random schedule of faults
# (kills, pauses, network partitions in namespaces, a lost majority, a
# restarted tracking database, a wiped peer) against a steady load, then
# check that no event was lost or doubled and that every replicated command
# is linearizable. Prints a one-screen summary; exits non-zero on any
# violation. Needs root, iproute2 and PostgreSQL (see internal/chaos).
#
# Usage: scripts/soak.sh                    (10 minutes)
#        scripts/soak.sh -duration 2m       (any flag of scripts/soak; -h lists them)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ $(id -u) != 0 ]]; then
	# sudo resets PATH (secure_path), which usually drops Go.
	echo "soak.sh: needs root for network namespaces: sudo env PATH=\"\$PATH\" $0 $*" >&2
	exit 2
fi
command -v go >/dev/null || { echo "soak.sh: needs Go (https://go.dev/dl/) on PATH" >&2; exit 1; }
# A later -duration on the command line wins over this default.
exec go run ./scripts/soak -duration 10m "$@"

#!/usr/bin/env bash
# demo.sh: geocursor at work. Starts a throwaway PostgreSQL with a GitLab-like
# source database and a tracking database, three agents (node1 bootstraps,
# node2 and node3 join it), and a load generator; prints `geocursor cluster
# status` every 3s. Ctrl-C stops everything, removes what it made and prints
# an exactly-once check; a second Ctrl-C exits at once.
#
#   scripts/demo.sh [-duration 40s] [-rate 200] [-keep]
#
# Needs Go and Debian's PostgreSQL server package (apt-get install -y postgresql).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v go >/dev/null || { echo "demo: needs Go (https://go.dev/dl/) on PATH" >&2; exit 1; }
exec go run ./scripts/demo "$@"

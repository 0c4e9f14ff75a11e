#!/usr/bin/env bash
# demo.sh: geocursor at work. Starts a throwaway PostgreSQL with a GitLab-like
# source database and a tracking database, a throwaway Redis with a real
# Sidekiq running GitLab's Geo::EventWorker, three agents (node1 bootstraps,
# node2 and node3 join it) that deliver every job to that Sidekiq, and a load
# generator; prints `geocursor cluster status` every 3s. Ctrl-C stops
# everything, removes what it made and prints an exactly-once check of the
# processing and of the delivery; a second Ctrl-C exits at once.
#
#   scripts/demo.sh [-duration 40s] [-rate 200] [-keep] [-plaintext]
#
# Needs Go, and Debian's postgresql, redis-server and ruby-sidekiq packages:
# run as root, it installs those that are missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v go >/dev/null || { echo "demo: needs Go (https://go.dev/dl/) on PATH" >&2; exit 1; }
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[[ -x /usr/bin/sidekiq ]] || missing+=(ruby-sidekiq)
if ((${#missing[@]})); then
  if [[ $(id -u) != 0 ]]; then
    echo "demo: needs Debian's ${missing[*]}: run as root to have them installed, or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "demo: installing missing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
exec go run ./scripts/demo "$@"

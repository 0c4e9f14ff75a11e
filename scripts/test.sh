#!/usr/bin/env bash
# The test suite, as CI runs it (.ci/run) and as a newcomer runs it:
#   scripts/test.sh
# Every test that needs PostgreSQL starts its own throwaway server on a free
# loopback port (as the postgres user when run as root) and removes it after.
# FUZZTIME sets how long each fuzz target runs (default 10s; 0 skips fuzzing);
# SOAK how long the closing soak runs (default 2m; 0 skips it).
set -euo pipefail
cd "$(dirname "$0")/.."

fuzztime=${FUZZTIME:-10s}

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [[ -n $unformatted ]]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi

echo "== go vet"
go vet ./...

echo "== unit, integration and system tests (race detector on)"
# -p 1: the system tests start PostgreSQL and three agents each; running
# packages side by side on two cores makes elections and leases flaky.
go test -race -count=1 -p 1 -timeout 25m ./...

if [[ $fuzztime != 0 ]]; then
  echo "== fuzzing, $fuzztime per target"
  while read -r pkg target; do
    go test -run='^$' -fuzz="^${target}\$" -fuzztime="$fuzztime" "$pkg"
  done < <(grep -rl --include='*_test.go' '^func Fuzz' . | while read -r f; do
             dir=$(dirname "$f")
             grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | sed 's/^func //' | while read -r t; do echo "./${dir#./} $t"; done
           done | sort -u)
fi
# A short soak: a random schedule of faults against a live load, ending with
# the exactly-once and linearizability checks. It needs root for network
# namespaces; SOAK=0 skips it.
soak=${SOAK:-2m}
if [[ $soak != 0 ]]; then
  if [[ $(id -u) == 0 ]]; then
    echo "== soak, $soak"
    go run ./scripts/soak -duration "$soak"
  else
    echo "== soak skipped: it needs root for network namespaces (run as root, or SOAK=0 to silence this)"
  fi
fi
echo "== all tests passed"

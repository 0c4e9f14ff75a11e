#!/usr/bin/env bash
# bench-leader-failover.sh: how long a 3-node geocursor group takes to elect
# a new Raft leader after its leader is SIGKILLed.
#
# It builds the binary, starts 3 agents (witnesses, default raft timers) on
# free loopback ports in a temp dir, and RUNS times (default 10): finds the
# leader, SIGKILLs it, times until `geocursor cluster status -format json`
# from a survivor names a different leader (polled every 20 ms), restarts the
# killed node with its data dir and waits until every node sees all 3
# members reachable. It prints one line per run and a final JSON line:
#   {"runs":N,"median_ms":..,"p90_ms":..,"max_ms":..}
# Everything it started is stopped and its temp dir removed on exit; with
# KEEP=1 the temp dir (configs, data, logs) is kept for a look.
#
# Usage: scripts/bench-leader-failover.sh         (RUNS=20 for more runs)
set -euo pipefail

RUNS=${RUNS:-10}
POLL=0.02
STEP_TIMEOUT_S=${STEP_TIMEOUT_S:-30}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command -v jq >/dev/null || { echo "bench-leader-failover: needs jq (apt-get install jq)" >&2; exit 2; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "bench-leader-failover: RUNS must be a positive number, got '$RUNS'" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/geocursor-bench-XXXXXX")
declare -A pid http raft
ids=(node1 node2 node3)

cleanup() {
	local status=$?
	for id in "${ids[@]}"; do
		if [[ -n ${pid[$id]:-} ]] && kill -0 "${pid[$id]}" 2>/dev/null; then
			kill -KILL "${pid[$id]}" 2>/dev/null || true
			wait "${pid[$id]}" 2>/dev/null || true
		fi
	done
	if ((status != 0)); then
		for id in "${ids[@]}"; do
			[[ -f $work/$id.log ]] || continue
			echo "--- last lines of $id.log ---" >&2
			tail -n 15 "$work/$id.log" >&2
		done
	fi
	if [[ ${KEEP:-} == 1 ]]; then
		echo "kept $work" >&2
	else
		rm -rf "$work"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

die() {
	echo "bench-leader-failover: $*" >&2
	exit 1
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# free_port prints a loopback port that nothing listens on, below the usual
# ephemeral range so that outgoing connections do not take it meanwhile.
declare -A given
free_port() {
	local p
	for _ in $(seq 200); do
		p=$((20000 + RANDOM % 12000))
		[[ -z ${given[$p]:-} ]] || continue
		if ! ss -Htan "sport = :$p" | grep -q .; then
			given[$p]=1
			echo "$p"
			return
		fi
	done
	die "no free port found"
}

echo "building geocursor..." >&2
(cd "$root" && go build -o "$work/geocursor" ./cmd/geocursor)
gc=$work/geocursor

for id in "${ids[@]}"; do
	http[$id]=127.0.0.1:$(free_port)
	raft[$id]=127.0.0.1:$(free_port)
	cat >"$work/$id.hcl" <<EOF
node_id   = "$id"
data_dir  = "$work/$id.data"
http_addr = "${http[$id]}"
raft_addr = "${raft[$id]}"
EOF
done

start() { # start ID [flags...]
	local id=$1
	shift
	"$gc" agent -config "$work/$id.hcl" "$@" >>"$work/$id.log" 2>&1 &
	pid[$id]=$!
}

# status ID prints the node's status document, or nothing if it does not answer.
status() {
	"$gc" cluster status -format json -addr "${http[$1]}" 2>/dev/null || true
}

leader_of() { status "$1" | jq -r '.leader.id // empty' 2>/dev/null || true; }

# all_formed succeeds when every node names the same leader and sees all 3
# members reachable.
all_formed() {
	local id doc l first=""
	for id in "${ids[@]}"; do
		doc=$(status "$id")
		[[ -n $doc ]] || return 1
		l=$(jq -r 'if ([.members[] | select(.reachable)] | length) == 3 then (.leader.id // "") else "" end' <<<"$doc")
		[[ -n $l ]] || return 1
		[[ -z $first || $l == "$first" ]] || return 1
		first=$l
	done
	echo "$first"
}

wait_formed() {
	local deadline=$(($(now_ms) + STEP_TIMEOUT_S * 1000)) l
	until l=$(all_formed); do
		(($(now_ms) < deadline)) || die "the group did not form (all 3 members reachable, one leader) within ${STEP_TIMEOUT_S}s"
		sleep "$POLL"
	done
	echo "$l"
}

start node1
deadline=$(($(now_ms) + STEP_TIMEOUT_S * 1000))
until [[ -n $(leader_of node1) ]]; do
	(($(now_ms) < deadline)) || die "node1 did not bootstrap within ${STEP_TIMEOUT_S}s"
	sleep "$POLL"
done
start node2 -join "${http[node1]}"
start node3 -join "${http[node1]}"
leader=$(wait_formed)
echo "group formed: leader $leader, http ${http[node1]} ${http[node2]} ${http[node3]}" >&2

times=()
for run in $(seq "$RUNS"); do
	leader=$(wait_formed)
	survivor=""
	for id in "${ids[@]}"; do
		[[ $id == "$leader" ]] || { survivor=$id; break; }
	done

	t0=$(now_ms)
	kill -KILL "${pid[$leader]}"
	wait "${pid[$leader]}" 2>/dev/null || true
	deadline=$((t0 + STEP_TIMEOUT_S * 1000))
	while :; do
		l=$(leader_of "$survivor")
		[[ -n $l && $l != "$leader" ]] && break
		(($(now_ms) < deadline)) || die "run $run: no new leader within ${STEP_TIMEOUT_S}s of killing $leader"
		sleep "$POLL"
	done
	elected=$(($(now_ms) - t0))
	times+=("$elected")

	t1=$(now_ms)
	start "$leader"
	wait_formed >/dev/null
	back=$(($(now_ms) - t1))
	printf 'run %2d: killed leader %s; %s saw new leader %s after %d ms; %s back with all 3 reachable after %d ms\n' \
		"$run" "$leader" "$survivor" "$l" "$elected" "$leader" "$back"
done

printf '%s\n' "${times[@]}" | sort -n | awk -v runs="$RUNS" '
	{ v[NR] = $1 }
	END {
		median = (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2)
		i = int(0.9 * NR); if (i < 0.9 * NR) i++   # nearest rank
		printf "{\"runs\":%d,\"median_ms\":%d,\"p90_ms\":%d,\"max_ms\":%d}\n", runs, median, v[i], v[NR]
	}'

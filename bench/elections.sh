#!/usr/bin/env bash
# Unplanned elections of an idle registry: 5-node clusters of real `fenceflake registry`
# processes on 127.0.0.1, each with its own Raft timing, run side by side for the same
# window, optionally while HOGS busy loops compete for the CPU (a loaded 2-core box is where
# elections without a fault showed up). Prints, per timing, the term at start and end and the
# number of leader changes seen (term sampled from /metrics every 5 s).
#
#   bash bench/elections.sh                         # 30 idle minutes, default timing only
#   DURATION=600 HOGS=3 bash bench/elections.sh default "100ms 500ms 1000ms"
#       # each argument: "default" or "HEARTBEAT ELECTION_MIN ELECTION_MAX", then any
#       # extra registry flags for that cluster: "default --pre-vote false"
#   INSECURE=1 bash bench/elections.sh              # nodes plaintext (default: mutual TLS)
#
# Needs target/release/fenceflake (or FENCEFLAKE_BIN) and curl. Only 127.0.0.1 is used;
# every process started is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${FENCEFLAKE_BIN:-$ROOT/target/release/fenceflake}"
DURATION="${DURATION:-1800}"   # seconds of observation (after a 5 s start)
HOGS="${HOGS:-0}"              # busy loops competing for the CPU meanwhile
BASE="${BASE_PORT:-29500}"     # each cluster takes 30 ports from here on
WORK="$(mktemp -d /tmp/fenceflake-elections.XXXXXX)"
[ $# -gt 0 ] || set -- default
[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p fenceflake-cli (or set FENCEFLAKE_BIN)" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 2; }

# Mutual TLS as in production: one CA for every cluster of the run, a node certificate per
# node id (INSECURE=1 runs the nodes plaintext instead). Metrics stay plain HTTP.
PKI="$WORK/pki"
if [ -n "${INSECURE:-}" ]; then
    tls_of() { echo --insecure; }
else
    "$BIN" certs init --dir "$PKI" >/dev/null
    for i in 1 2 3 4 5; do "$BIN" certs issue --dir "$PKI" --role node --name "$i" >/dev/null; done
    tls_of() { echo --tls-ca "$PKI/ca.pem" --tls-cert "$PKI/node-$1.pem" --tls-key "$PKI/node-$1.key"; }
fi

pids=()
cleanup() { [ ${#pids[@]} -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

# start_cluster INDEX TIMING: five nodes; data, logs and term samples under $WORK/INDEX.
start_cluster() {
    local idx=$1 timing=$2 base=$((BASE + 30 * $1)) flags=() words=() ic="" i
    read -r -a words <<<"$timing"
    if [ "${words[0]}" = default ]; then
        flags=("${words[@]:1}")
    else
        flags=(--heartbeat "${words[0]}" --election-timeout-min "${words[1]}" --election-timeout-max "${words[2]}")
        flags+=("${words[@]:3}")
    fi
    mkdir -p "$WORK/$idx"
    for i in 1 2 3 4 5; do ic="$ic${ic:+,}$i=127.0.0.1:$((base + 10 + i))/127.0.0.1:$((base + i))"; done
    for i in 1 2 3 4 5; do
        # shellcheck disable=SC2046 # tls_of prints separate flags and paths without spaces
        "$BIN" registry $(tls_of "$i") --node-id "$i" --client-addr "127.0.0.1:$((base + i))" \
            --peer-addr "127.0.0.1:$((base + 10 + i))" --data-dir "$WORK/$idx/d$i" \
            --initial-cluster "$ic" --metrics-addr "127.0.0.1:$((base + 20 + i))" "${flags[@]}" \
            >"$WORK/$idx/n$i.log" 2>&1 &
        pids+=($!)
    done
}

# Highest term any node of cluster INDEX reports.
term_of() {
    local base=$((BASE + 30 * $1)) i t max=0
    for i in 1 2 3 4 5; do
        t=$(curl -s --max-time 1 "127.0.0.1:$((base + 20 + i))/metrics" | awk '/^fenceflake_registry_raft_term /{print $2}')
        [ -n "$t" ] && [ "$t" -gt "$max" ] && max=$t
    done
    echo "$max"
}

for idx in $(seq 0 $(($# - 1))); do
    timings[idx]="${*:idx+1:1}"
    start_cluster "$idx" "${timings[idx]}"
done
sleep 5
for _ in $(seq 1 "$HOGS"); do
    (while :; do :; done) &
    pids+=($!)
done
declare -a first last changes
for idx in "${!timings[@]}"; do first[idx]=$(term_of "$idx"); last[idx]=${first[idx]}; changes[idx]=0; done
end=$((SECONDS + DURATION))
while [ $SECONDS -lt $end ]; do
    sleep 5
    for idx in "${!timings[@]}"; do
        t=$(term_of "$idx")
        if [ "$t" -gt "${last[idx]}" ]; then changes[idx]=$((changes[idx] + 1)); last[idx]=$t; fi
    done
done
echo "elections of idle 5-node clusters over ${DURATION}s with ${HOGS} CPU hogs (load avg now $(cut -d' ' -f1 /proc/loadavg)):"
printf '%-28s %-12s %-10s %s\n' TIMING "TERM START" "TERM END" "LEADER CHANGES SEEN"
for idx in "${!timings[@]}"; do
    printf '%-28s %-12s %-10s %s\n' "${timings[idx]}" "${first[idx]}" "${last[idx]}" "${changes[idx]}"
done
echo "logs: $WORK"

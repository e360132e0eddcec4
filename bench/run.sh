#!/usr/bin/env bash
# Fenceflake registry benchmark against etcd 3.4, on this machine, in one run (BENCHMARKS.md):
#   1. installs Debian's etcd-server when `etcd` is missing (the only thing taken from outside
#      this repository: both sides are driven by our own fenceflake-bench);
#   2. builds target/release/{fenceflake,fenceflake-bench};
#   3. measures our 5-node loopback registry: acquire and renew at 16 and 64 closed-loop clients,
#      the leader-failover gap (5 SIGKILLs) with the default Raft timing and tuned ones, and the
#      64-client load again under each tuned timing (stability: does the term move?);
#   4. measures a 5-member loopback etcd with `fenceflake-bench etcd-load` / `etcd-failover`:
#      lease keepalive and the claim txn at 16 and 64 clients, and the failover gap (5 SIGKILLs)
#      with etcd's default timing and a tuned one;
#   5. measures the cost of TLS: our 16/64-client load and failover again with both sides
#      plaintext (`--insecure`), for the TLS-cost table;
#   6. prints the comparison tables (ratios, targets) and leaves everything in $FFBENCH_RESULTS.
#
# Everything runs on mutual TLS, as production does: fenceflake-bench makes a CA and the
# certificates of each cluster with `fenceflake certs`, for our nodes and for etcd's members
# alike (etcd with --client-cert-auth and --peer-client-cert-auth), so every comparison has
# the same TLS setting on both sides; the rows say which ("tls"). INSECURE=1 runs every stage
# plaintext on both sides instead (and compares the plaintext rows).
#
#   bash bench/run.sh                 # all of it (~12 min of measuring on 2 cores, plus builds)
#   bash bench/run.sh ours|etcd|tls-cost|compare   # one stage; set FFBENCH_RESULTS to reuse a results dir
#   bash bench/run.sh worker              # one worker against its ceiling, a no-op gRPC server and
#                                         # UUIDv7, with TLS and then plaintext (BENCHMARKS.md
#                                         # "Worker"; ~2 min, not part of `all`)
#   ALT_BIN=/path/to/other/fenceflake ALT_LABEL=patched bash bench/run.sh
#       # also runs the 16/64-client load against another registry build (e.g. a candidate fix),
#       # labelled ALT_LABEL, in the same run and tables
#   DURATION=5s WARMUP=3s TRIALS=2 bash bench/run.sh etcd    # shorter windows (a bare number is seconds)
#
# Only 127.0.0.1 is used. Every server started is stopped by the fenceflake-bench process that
# started it, by pid, on exit, SIGINT and SIGTERM (this script forwards both to it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RESULTS="${FFBENCH_RESULTS:-/tmp/ffbench-results/$(date +%Y%m%d-%H%M%S)}"
# fenceflake-bench wants a unit on every duration; these accept a bare number of seconds too.
with_unit() { case "$1" in *[a-z]) echo "$1" ;; *) echo "${1}s" ;; esac; }
DURATION="$(with_unit "${DURATION:-10s}")"   # recorded window per load run (both systems)
WARMUP="$(with_unit "${WARMUP:-5s}")"        # unrecorded warm-up per load run (both systems)
TRIALS="${TRIALS:-5}"                         # leader kills per failover configuration
BENCH="$ROOT/target/release/fenceflake-bench"
# Both sides plaintext in every stage with INSECURE=1 (fenceflake-bench's --insecure).
SECURITY=()
[ -n "${INSECURE:-}" ] && SECURITY=(--insecure)
# Tuned Raft timings tried for the failover target: "label heartbeat min max".
TUNED=("hb30-el100-200 30ms 100ms 200ms" "hb20-el60-120 20ms 60ms 120ms")
# etcd's failover is measured with its defaults and this common low-latency setting:
# "label heartbeat election".
ETCD_TUNED="tuned 50ms 500ms"

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# Busy CPU cores of the whole machine over the next $1 seconds (from /proc/stat).
busy_cores() {
    local a b
    a=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    sleep "$1"
    b=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    echo "$a $b" | awk -v s="$1" '{printf "%.2f", ($3 - $1) / 100 / s}'
}

# The machine is shared (builds, tests): wait up to QUIET_WAIT s for it to be idle (< 0.3
# busy cores) before a measurement, and say so if it never was.
quiet() {
    local waited=0 busy
    while busy=$(busy_cores 1) && awk -v b="$busy" 'BEGIN {exit !(b >= 0.3)}'; do
        if [ "$waited" -ge "${QUIET_WAIT:-180}" ]; then
            log "WARNING: machine still busy ($busy cores) after ${waited}s; measuring anyway"
            return 0
        fi
        [ "$waited" -eq 0 ] && log "machine busy ($busy cores of foreign load): waiting for it to be idle"
        waited=$((waited + 1))
    done
}

# Background record of the machine's busy cores every 2 s and of foreign CPU hogs, so a
# contaminated window can be recognised afterwards ($RESULTS/machine.log).
SAMPLER=""
start_sampler() {
    (
        while true; do
            b=$(busy_cores 2)
            hogs=$(ps -eo pcpu=,comm= --sort=-pcpu | awk '$1 > 25 && $2 !~ /fenceflake|etcd/ {printf "%s(%s) ", $2, $1}')
            echo "$(date +%H:%M:%S) busy=$b ${hogs}"
        done
    ) >>"$RESULTS/machine.log" 2>&1 &
    SAMPLER=$!
}
stop_sampler() {
    if [ -n "$SAMPLER" ]; then
        kill "$SAMPLER" 2>/dev/null || true
        wait "$SAMPLER" 2>/dev/null || true
        SAMPLER=""
    fi
}

# Run one step as a child we can forward SIGINT/SIGTERM to (its own handler stops its servers).
CHILD=""
step() {
    quiet
    log "$*"
    "$@" &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=""
    return "$rc"
}
on_signal() {
    stop_sampler
    if [ -n "$CHILD" ]; then
        kill -TERM "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    exit 130
}
trap on_signal INT TERM

install() {
    if ! command -v etcd >/dev/null; then
        log "installing etcd-server"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
    fi
    etcd --version | head -1
}

build() {
    (cd "$ROOT" && cargo build --release -p fenceflake-cli -p fenceflake-bench)
}

environment() {
    mkdir -p "$RESULTS"
    {
        echo "date: $(date -Is)"
        echo "kernel: $(uname -r)"
        echo "cpus: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
        echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
        echo "disk of /tmp: $(df -h /tmp | awk 'NR==2 {print $1, $6}')"
        echo "rustc: $(rustc --version)"
        echo "etcd: $(etcd --version 2>/dev/null | head -1)"
        echo "fenceflake: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?') (work tree, release build)"
        echo "transport: $([ -n "${INSECURE:-}" ] && echo 'plaintext on both sides (INSECURE=1)' || echo 'mutual TLS on both sides')"
    } | tee "$RESULTS/environment.txt" >&2
}

ours() {
    mkdir -p "$RESULTS"
    local out="$RESULTS/ours.jsonl"
    local load=(--duration "$DURATION" --warmup "$WARMUP" --out "$out")
    for op in acquire renew; do
        for clients in 16 64; do
            step "$BENCH" "${SECURITY[@]}" registry --clients "$clients" --op "$op" "${load[@]}" >/dev/null
        done
    done
    step "$BENCH" "${SECURITY[@]}" failover --trials "$TRIALS" --out "$out" >/dev/null
    for t in "${TUNED[@]}"; do
        read -r label hb emin emax <<<"$t"
        local timing=(--profile "$label" --heartbeat "$hb" --election-timeout-min "$emin" --election-timeout-max "$emax")
        step "$BENCH" "${SECURITY[@]}" failover --trials "$TRIALS" "${timing[@]}" --out "$out" >/dev/null
        for op in acquire renew; do
            step "$BENCH" "${SECURITY[@]}" registry --clients 64 --op "$op" "${timing[@]}" "${load[@]}" >/dev/null
        done
    done
    if [ -n "${ALT_BIN:-}" ]; then
        for op in acquire renew; do
            for clients in 16 64; do
                step "$BENCH" "${SECURITY[@]}" registry --clients "$clients" --op "$op" --fenceflake-bin "$ALT_BIN" \
                    --profile "${ALT_LABEL:-alt}" "${load[@]}" >/dev/null
            done
        done
    fi
}

# The other half of the TLS-cost table: the default-timing load and failover of `ours`, with
# both sides plaintext (skipped when everything already runs plaintext).
tls_cost() {
    [ -n "${INSECURE:-}" ] && return 0
    mkdir -p "$RESULTS"
    local out="$RESULTS/ours.jsonl"
    for op in acquire renew; do
        for clients in 16 64; do
            step "$BENCH" --insecure registry --clients "$clients" --op "$op" --duration "$DURATION" \
                --warmup "$WARMUP" --out "$out" >/dev/null
        done
    done
    step "$BENCH" --insecure failover --trials "$TRIALS" --out "$out" >/dev/null
}

# The worker with TLS, then plaintext: each run compares it with a no-op server of the same
# setting; the two runs together give GenerateBatch's and Generate's TLS cost.
worker_bench() {
    mkdir -p "$RESULTS"
    step "$BENCH" "${SECURITY[@]}" worker --out "$RESULTS/worker.jsonl" >/dev/null
    [ -n "${INSECURE:-}" ] || step "$BENCH" --insecure worker --out "$RESULTS/worker.jsonl" >/dev/null
}

etcd_side() {
    mkdir -p "$RESULTS"
    local out="$RESULTS/etcd.jsonl"
    for op in keepalive claim; do
        for clients in 16 64; do
            step "$BENCH" "${SECURITY[@]}" etcd-load --clients "$clients" --op "$op" --duration "$DURATION" --warmup "$WARMUP" \
                --out "$out" >/dev/null
        done
    done
    step "$BENCH" "${SECURITY[@]}" etcd-failover --trials "$TRIALS" --out "$out" >/dev/null
    local label hb el
    read -r label hb el <<<"$ETCD_TUNED"
    step "$BENCH" "${SECURITY[@]}" etcd-failover --trials "$TRIALS" --profile "$label" --heartbeat "$hb" --election-timeout "$el" \
        --out "$out" >/dev/null
}

compare() {
    local profiles="default"
    [ -n "${ALT_BIN:-}" ] && profiles="default,${ALT_LABEL:-alt}"
    "$BENCH" "${SECURITY[@]}" compare --ours "$RESULTS/ours.jsonl" --etcd "$RESULTS/etcd.jsonl" --profile "$profiles" \
        | tee "$RESULTS/COMPARISON.md"
    log "results: $RESULTS (ours.jsonl, etcd.jsonl, COMPARISON.md)"
}

started=$SECONDS
case "${1:-all}" in
    install) install ;;
    build) build ;;
    ours) ours ;;
    tls-cost) tls_cost ;;
    etcd) install && etcd_side ;;
    compare) compare ;;
    worker) worker_bench ;;
    all)
        install
        build
        environment
        log "measuring (results in $RESULTS)"
        measured=$SECONDS
        start_sampler
        ours
        tls_cost
        etcd_side
        stop_sampler
        compare
        log "measuring took $((SECONDS - measured)) s; everything $((SECONDS - started)) s"
        ;;
    *)
        echo "usage: $0 [all|install|build|ours|tls-cost|etcd|compare|worker]" >&2
        exit 2
        ;;
esac

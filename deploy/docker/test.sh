#!/usr/bin/env bash
# End-to-end test of deploy/docker: build the static binary and the FROM-scratch image,
# make a CA and one certificate per container (certs.sh, with the binary just built),
# bring the 5-registry + 3-worker compose project up (mutual TLS everywhere), check that a
# plaintext caller and a caller of the wrong role are refused, mint IDs from the host through the
# published ports, SIGKILL the leader registry's container, wait for a new leader and for
# every worker to renew through it, mint again, and check that
#   - every mint returned IDs (each worker, before and after the kill),
#   - no ID was minted twice,
#   - each worker's IDs only grow and keep its worker ID (no worker lost its lease),
#   - the three workers hold three different worker IDs,
#   - the registry's audit log is empty (no canary hit).
# Always tears down (`down -v`, image removed); on failure prints container logs.
#
#   bash deploy/docker/test.sh                 # from the repository root (or anywhere)
#
# FENCEFLAKE_STATIC_BIN=path skips the cargo build (the binary must be static).
# Needs: docker (daemon reachable, no registry access needed), docker-compose, cargo, file.
# Traffic: loopback and the compose project's own bridge network only.
set -Eeuo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

run_id="$$-$(date +%s)"
project="fenceflake-test-$run_id"
image="fenceflake-test:$run_id"
work=$(mktemp -d "${TMPDIR:-/tmp}/fenceflake-docker-test.XXXXXX")
compose=(docker-compose --ansi never -f "$here/docker-compose.yml" -p "$project")

# Ephemeral 127.0.0.1 host ports: concurrent runs and a running dev stack never collide.
export FENCEFLAKE_IMAGE="$image"
for i in 1 2 3 4 5; do export "FENCEFLAKE_REGISTRY_${i}_PORT="; done
for i in 1 2 3; do export "FENCEFLAKE_WORKER_${i}_PORT="; done
unset COMPOSE_FILE COMPOSE_PROJECT_NAME
# Every call below chooses its own identity.
unset FENCEFLAKE_TLS_CA FENCEFLAKE_TLS_CERT FENCEFLAKE_TLS_KEY FENCEFLAKE_INSECURE

start_s=$SECONDS
phase_s=$SECONDS
timings=()
log() { echo "== [$((SECONDS - start_s))s] $*" >&2; }
phase_done() { timings+=("$1 $((SECONDS - phase_s))s"); phase_s=$SECONDS; }
failure=""
fail() {
    failure=$*
    echo "FAIL: $*" >&2
    exit 1
}
now_ms() { date +%s%3N; }

up=0
cleanup() {
    local rc=$?
    trap - EXIT INT TERM ERR
    set +e
    if ((rc != 0)) && ((up)); then
        echo "==================== docker-compose ps ($project)" >&2
        "${compose[@]}" ps >&2
        echo "==================== container logs (last 300 lines each)" >&2
        "${compose[@]}" logs --no-color --tail=300 >&2
        echo "====================" >&2
    fi
    if ((up)); then
        log "teardown: down -v"
        "${compose[@]}" down -v --remove-orphans --timeout 5 >"$work/down.log" 2>&1 ||
            { cat "$work/down.log" >&2; echo "WARNING: docker-compose down failed" >&2; }
    fi
    docker image inspect "$image" >/dev/null 2>&1 && docker rmi -f "$image" >/dev/null
    rm -rf "$work"
    if ((rc == 0)); then
        phase_done teardown
        echo "PASS deploy/docker/test.sh (${timings[*]}; total $((SECONDS - start_s))s)" >&2
    else
        echo "FAILED deploy/docker/test.sh (exit $rc) after $((SECONDS - start_s))s${failure:+: $failure}" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'echo "FAIL: line $LINENO: $BASH_COMMAND" >&2' ERR

for tool in docker docker-compose file timeout; do
    command -v "$tool" >/dev/null || fail "$tool not found"
done
docker info >/dev/null 2>&1 || fail "the Docker daemon is not reachable"

# ---------------------------------------------------------------------------- build
log "build: static binary and image $image"
FENCEFLAKE_STATIC_BIN=${FENCEFLAKE_STATIC_BIN:-} "$here/build-image.sh" "$image" >/dev/null
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir=$root/$target_dir
bin=${FENCEFLAKE_STATIC_BIN:-$target_dir/x86_64-unknown-linux-gnu/release/fenceflake}
[[ -x $bin ]] || fail "no binary at $bin"
phase_done build

# ---------------------------------------------------------------------------- certificates
log "certs: a CA and one certificate per container"
certs=$work/certs
FENCEFLAKE_BIN=$bin "$here/certs.sh" "$certs" >/dev/null
export FENCEFLAKE_CERTS_DIR=$certs
phase_done certs

# The host side uses the same binary (it is static, so it runs anywhere): `ctl` as the
# `operator`, `mint` as a `client`, each with its own certificate.
ff() { timeout 30 "$bin" "$@"; }
as() { # as IDENTITY COMMAND...: with the TLS files of $certs/IDENTITY
    local id=$1
    shift
    FENCEFLAKE_TLS_CA=$certs/$id/ca.pem FENCEFLAKE_TLS_CERT=$certs/$id/cert.pem FENCEFLAKE_TLS_KEY=$certs/$id/key.pem "$@"
}
ctl() { as operator ff ctl "$@"; }
mint() { as client ff mint "$@"; }

# ---------------------------------------------------------------------------- up
log "up: project $project"
up=1
"${compose[@]}" up -d >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "docker-compose up"; }

# Published ports of every container of the project, in one docker call (each
# docker-compose 1.29 invocation costs about a second): "SERVICE HOSTIP:HOSTPORT".
declare -A published
while read -r service addr; do
    published[$service]=$addr
done < <(docker ps -q --filter "label=com.docker.compose.project=$project" |
    xargs -r docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}} {{range $p, $b := .NetworkSettings.Ports}}{{range $b}}{{.HostIp}}:{{.HostPort}}{{end}}{{end}}')
host_port() { # SERVICE -> 127.0.0.1:N (its one published port)
    local a=${published[$1]:-}
    [[ $a == 127.0.0.1:* ]] || fail "$1 is not published on 127.0.0.1 (got '$a')"
    echo "$a"
}
declare -A reg_addr wrk_addr
for i in 1 2 3 4 5; do reg_addr[$i]=$(host_port "registry-$i"); done
for i in 1 2 3; do wrk_addr[$i]=$(host_port "worker-$i"); done
registries="${reg_addr[1]},${reg_addr[2]},${reg_addr[3]},${reg_addr[4]},${reg_addr[5]}"
workers="${wrk_addr[1]},${wrk_addr[2]},${wrk_addr[3]}"
log "registries $registries; workers $workers"

leader_id() { # [ADDRS] -> leader as the first answering node sees it; 0 if none/unknown
    local s
    s=$(ctl --registry "${1:-$registries}" --timeout 1s status --json 2>/dev/null) || { echo 0; return; }
    sed -n 's/^ *"leader_id": *\([0-9]*\).*/\1/p' <<<"$s" | head -n1 | grep . || echo 0
}

# Peers find each other by service name: a leader proves static glibc resolves through
# Docker's embedded DNS.
deadline=$((SECONDS + 60))
while leader=$(leader_id); ((leader == 0)); do
    ((SECONDS < deadline)) || fail "no registry leader within 60 s"
    sleep 0.2
done
log "leader: registry-$leader"

for i in 1 2 3; do
    deadline=$((SECONDS + 60))
    until mint --workers "${wrk_addr[$i]}" -n 1 >/dev/null 2>"$work/mint-wait.err"; do
        ((SECONDS < deadline)) || { cat "$work/mint-wait.err" >&2; fail "worker-$i not serving within 60 s"; }
        sleep 0.2
    done
done
log "all three workers serve"
# The health checks run TLS too: each registry's `ctl status` with its reader certificate,
# each worker's `mint` as itself. All eight containers must turn healthy.
deadline=$((SECONDS + 90))
while :; do
    states=$(docker ps -q --filter "label=com.docker.compose.project=$project" |
        xargs -r docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}}={{.State.Health.Status}}' | sort)
    [[ $(grep -c '=healthy$' <<<"$states") == 8 ]] && break
    ((SECONDS < deadline)) || fail "not every container turned healthy within 90 s: $(tr '\n' ' ' <<<"$states")"
    sleep 1
done
log "all eight containers healthy (TLS health checks)"
phase_done up

# ---------------------------------------------------------------------------- refusals
# TLS is not optional: a plaintext caller, and a certificate of a role the RPC does not
# allow (a `client` may only call workers), are refused by the registry.
if out=$(ff ctl --insecure --registry "${reg_addr[1]}" --timeout 2s status 2>&1); then
    fail "a plaintext ctl was answered: $out"
fi
grep -qi 'unauthenticated' <<<"$out" || fail "a plaintext ctl failed, but not as UNAUTHENTICATED: $out"
log "plaintext ctl refused: $(tail -n1 <<<"$out")"
if out=$(as client ff ctl --registry "${reg_addr[1]}" --timeout 2s status 2>&1); then
    fail "a client certificate read the cluster status: $out"
fi
grep -qi 'permission' <<<"$out" || fail "ctl with a client certificate failed, but not as PERMISSION_DENIED: $out"
log "client certificate refused by the registry: $(tail -n1 <<<"$out")"
phase_done refusals

# ---------------------------------------------------------------------------- test
mint_round() { # ROUND: per worker 300 single calls + 20000 by GenerateBatch, then 30 rotated
    local round=$1 i f n
    for i in 1 2 3; do
        f="$work/w$i.$round"
        mint --workers "${wrk_addr[$i]}" -n 300 >"$f" || fail "round $round: mint from worker-$i failed"
        mint --workers "${wrk_addr[$i]}" -n 20000 --batch >>"$f" ||
            fail "round $round: batch mint from worker-$i failed"
        n=$(wc -l <"$f")
        ((n == 20300)) || fail "round $round: worker-$i returned $n IDs, want 20300"
    done
    f="$work/all.$round"
    mint --workers "$workers" -n 30 >"$f" || fail "round $round: rotating mint failed"
    n=$(wc -l <"$f")
    ((n == 30)) || fail "round $round: rotating mint returned $n IDs, want 30"
}

worker_id_of() { # ID -> worker ID field
    ff decode --json "$1" | sed -n 's/.*"worker_id":\([0-9]*\).*/\1/p'
}

leases() { # "worker_id state high_water_ms ttl_ms" per lease, from the pretty-printed JSON
    ctl --registry "$registries" --timeout 2s leases --json | awk '
        /"worker_id":/     { w = $2; gsub(/[^0-9]/, "", w) }
        /"state":/         { s = $2; gsub(/[",]/, "", s) }
        /"high_water_ms":/ { h = $2; gsub(/[^0-9]/, "", h) }
        /"ttl_ms":/        { t = $2; gsub(/[^0-9]/, "", t) }
        /^ *}/             { print w, s, h, t; w = s = h = t = "" }'
}

log "mint round 1 (leader registry-$leader up)"
mint_round 1
declare -A wid
for i in 1 2 3; do
    wid[$i]=$(worker_id_of "$(head -n1 "$work/w$i.1")")
    [[ -n ${wid[$i]} ]] || fail "cannot decode worker-$i's IDs"
done
log "worker IDs: worker-1=${wid[1]} worker-2=${wid[2]} worker-3=${wid[3]}"
[[ $(printf '%s\n' "${wid[@]}" | sort -u | wc -l) == 3 ]] || fail "workers share a worker ID: ${wid[*]}"

# Kill the node that itself says it leads (a follower's view may lag).
deadline=$((SECONDS + 30))
while leader=$(leader_id); ((leader == 0)) || (($(leader_id "${reg_addr[$leader]}") != leader)); do
    ((SECONDS < deadline)) || fail "no registry node confirms its own leadership"
    sleep 0.1
done
leader_container=$("${compose[@]}" ps -q "registry-$leader")
[[ -n $leader_container ]] || fail "no container for registry-$leader"
log "docker kill (SIGKILL) registry-$leader ($leader_container)"
kill_ms=$(now_ms)
docker kill "$leader_container" >/dev/null
[[ $(docker inspect -f '{{.State.Running}}' "$leader_container") == false ]] || fail "registry-$leader still running"

deadline=$((SECONDS + 30))
while new_leader=$(leader_id); ((new_leader == 0 || new_leader == leader)); do
    ((SECONDS < deadline)) || fail "no new leader within 30 s of killing registry-$leader"
    sleep 0.1
done
log "new leader: registry-$new_leader, $(($(now_ms) - kill_ms)) ms after the kill"

# A renewal SENT after the kill raises the lease's high-water mark to at least
# kill time + TTL: every worker renewed through the new leader and kept its lease.
deadline=$((SECONDS + 30))
while :; do
    renewed=0
    while read -r w state hw ttl; do
        for i in 1 2 3; do
            if [[ $w == "${wid[$i]}" && $state == HELD ]] && ((ttl > 0 && hw >= kill_ms + ttl)); then
                renewed=$((renewed + 1))
            fi
        done
    done < <(leases 2>/dev/null || true)
    ((renewed == 3)) && break
    ((SECONDS < deadline)) || { leases >&2 || true; fail "not every worker renewed its lease after the kill"; }
    sleep 0.5
done
log "all three workers renewed through registry-$new_leader, $(($(now_ms) - kill_ms)) ms after the kill"

log "mint round 2 (registry-$leader dead)"
mint_round 2

log "checks"
for f in "$work"/w?.? "$work"/all.?; do
    [[ -s $f ]] || fail "$(basename "$f"): no IDs"
done
for i in 1 2 3; do
    # Each worker's IDs, in the order it returned them across both rounds, strictly grow
    # and carry its worker ID throughout.
    cat "$work/w$i.1" "$work/w$i.2" >"$work/w$i.both"
    sort -n -c -u "$work/w$i.both" 2>/dev/null || fail "worker-$i: IDs did not strictly grow"
    last=$(worker_id_of "$(tail -n1 "$work/w$i.2")")
    [[ $last == "${wid[$i]}" ]] || fail "worker-$i: worker ID changed from ${wid[$i]} to $last (lease lost)"
done
total=$(cat "$work"/w?.? "$work"/all.? | wc -l)
dups=$(cat "$work"/w?.? "$work"/all.? | sort -n | uniq -d | wc -l)
((dups == 0)) || fail "$dups IDs minted more than once (of $total)"
audit=$(ctl --registry "$registries" --timeout 2s audit --json | tr -d '[:space:]')
[[ $audit == "[]" ]] || fail "registry audit log is not empty: $audit"
log "$total IDs, all unique; workers kept worker IDs ${wid[1]}, ${wid[2]}, ${wid[3]}; audit log empty"
phase_done test

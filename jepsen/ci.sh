#!/usr/bin/env bash
# The harness part of the test suite: every scenario briefly, `pause` once more with the ID
# load through WorkerClient (availability while a worker is stopped), then the self-tests that
# prove a green run means something (workers without their deadline check must make `pause` fail;
# registry nodes without authorization must make `adversary` fail; workers without
# incarnations must make `clone-state` fail; registry nodes without their clock check must make
# `registry-clock-skew` fail).
# Scenarios run one process each (the same seed and schedule as `--scenario all`), so one that
# cannot start does not stop the others; a table of them closes the output.
#
# Needs root, nftables and iproute2; the clock scenarios need libfaketime. What cannot run is
# reported as `SKIPPED: ... needs ...` (exit 77 if nothing ran), never as passed; under CI=true
# or FENCEFLAKE_REQUIRE_ALL=1 it is a failure instead (scripts/lib/setup.sh).
# FENCEFLAKE_JEPSEN_CI_TIME_LIMIT (default 20s; a duration with its unit, e.g. 60s: a bare
# number is refused) and FENCEFLAKE_JEPSEN_SEED (default 42).
set -uo pipefail
cd "$(dirname "$0")/.." || exit
# shellcheck source=scripts/lib/setup.sh
. scripts/lib/setup.sh
bin=target/debug/fenceflake-jepsen
store=target/jepsen-store
time_limit=${FENCEFLAKE_JEPSEN_CI_TIME_LIMIT:-20s}
seed=${FENCEFLAKE_JEPSEN_SEED:-42}

if [ "$(id -u)" != 0 ]; then
    ff_cannot_run "the harness (jepsen/ci.sh)" "root (network namespaces, nftables)"
    exit
fi
missing=()
ff_have nft || missing+=(nftables)
ff_have ip || missing+=(iproute2)
if ((${#missing[@]})); then
    ff_cannot_run "the harness (jepsen/ci.sh)" "${missing[*]} (apt-get install ${missing[*]})"
    exit
fi
if [ ! -x "$bin" ]; then
    echo "FAILED: harness: $bin is not built (cargo build -p fenceflake-cli -p fenceflake-jepsen)"
    exit 1
fi
mapfile -t scenarios < <("$bin" list | awk '{print $1}')
if ((${#scenarios[@]} == 0)); then
    echo "FAILED: harness: \`$bin list\` names no scenario"
    exit 1
fi
faketime=1
ff_libfaketime >/dev/null || faketime=0
"$bin" cleanup >/dev/null

out=$(mktemp)
trap 'rm -f "$out"' EXIT
passed=0 failed=0 rows=() needs_faketime=()
# run ARGS...: one `fenceflake-jepsen test`; sets $code, $secs and $needs (libfaketime missing).
run() {
    local t0=$SECONDS
    "$bin" test --time-limit "$time_limit" "$@" 2>&1 | tee "$out"
    code=${PIPESTATUS[0]} secs=$((SECONDS - t0)) needs=0
    if [ "$code" != 0 ] && [ "$faketime" = 0 ] && grep -q "needs libfaketime" "$out"; then needs=1; fi
    # A run that errored may leave namespaces behind.
    [ "$code" = 0 ] || "$bin" cleanup >/dev/null 2>&1
}
row() { rows+=("$(printf '%-24s %-10s %4ss' "$1" "$2" "$3")"); }

# record NAME WANT FAILURE: count the last run as PASSED if it exited WANT, SKIPPED if it
# needs libfaketime and that is missing, else FAILED (saying FAILURE).
record() {
    if [ "$code" = "$2" ]; then
        row "$1" PASSED "$secs"
        passed=$((passed + 1))
    elif [ "$needs" = 1 ]; then
        row "$1" SKIPPED "$secs"
        needs_faketime+=("$1")
    else
        echo "FAILED: $3"
        row "$1" "FAILED($code)" "$secs"
        failed=$((failed + 1))
    fi
}

for scenario in "${scenarios[@]}"; do
    run --scenario "$scenario" --seed "$seed" --store "$store"
    record "$scenario" 0 "harness scenario $scenario is invalid, unknown or could not run (exit $code); reports under $store/$scenario/"
done

# What a real caller sees: pause again, the ID load through WorkerClient (hedged, ejecting);
# the availability check fails the run if under 99% of the calls made while the worker is
# stopped succeed.
run --scenario pause --seed "$seed" --store "$store/pause-balanced" --workload-client balanced
record pause-balanced 0 "harness pause through WorkerClient is invalid (availability below the minimum?), unknown or could not run (exit $code); reports under $store/pause-balanced/"

# The switch exists only in the separately built test binary (scripts/build-unsafe-test-binary).
unsafe_bin=target/unsafe-test/fenceflake
if [ ! -x "$unsafe_bin" ]; then
    echo "FAILED: harness self-test: $unsafe_bin is not built (scripts/build-unsafe-test-binary)"
    exit 1
fi
# self_test ROW WHAT SCENARIO SWITCH: with one protection switched off (SWITCH, in the unsafe
# binary), SCENARIO must be judged invalid (exit 1); a run that needs libfaketime where it is
# missing is skipped like the scenarios above.
self_test() {
    local name=$1 what=$2 scenario=$3 switch=$4
    run --scenario "$scenario" --seed 7 --store "$store/$name" "$switch" --fenceflake "$unsafe_bin"
    if [ "$code" = 1 ]; then echo "self-test: with $what off, the $scenario scenario is invalid, as it must be"; fi
    record "$name" 1 "self-test: with $what off the $scenario scenario exited $code, not 1 (invalid)"
}

# The worker's deadline check off: a thawed paused worker mints on, so pause must be invalid.
self_test self-test "the deadline check" pause --unsafe-disable-deadline-check
# Registry nodes that authorize nobody: the adversary's forged calls succeed.
self_test self-test-authz authorization adversary --unsafe-disable-authorization
# Copies of one state dir whose processes state no incarnation of their own share one token,
# so clone-state must find duplicates.
self_test self-test-incarnations incarnations clone-state --unsafe-disable-incarnations
# A leader whose clock jumped ten minutes keeps leading and stamps its time into leases and
# replies.
self_test self-test-clock-check "the clock check" registry-clock-skew --unsafe-disable-clock-check

echo
printf '%s\n' "${rows[@]}"
if ((${#needs_faketime[@]})); then
    ff_cannot_run "the harness's run of ${needs_faketime[*]}" "libfaketime (apt-get install libfaketime)" ||
        { [ $? = 1 ] && failed=$((failed + 1)); }
fi
echo "harness: $passed passed, $failed failed, ${#needs_faketime[@]} skipped"
[ "$failed" = 0 ]

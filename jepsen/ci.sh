#!/usr/bin/env bash
# The harness part of the test suite: every scenario briefly, then the self-tests that prove
# a green run means something (workers without their deadline check must make `pause` fail;
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

for scenario in "${scenarios[@]}"; do
    run --scenario "$scenario" --seed "$seed" --store "$store"
    if [ "$code" = 0 ]; then
        row "$scenario" PASSED "$secs"
        passed=$((passed + 1))
    elif [ "$needs" = 1 ]; then
        row "$scenario" SKIPPED "$secs"
        needs_faketime+=("$scenario")
    else
        echo "FAILED: harness scenario $scenario is invalid, unknown or could not run (exit $code); reports under $store/$scenario/"
        row "$scenario" "FAILED($code)" "$secs"
        failed=$((failed + 1))
    fi
done

# The switch exists only in the separately built test binary (scripts/build-unsafe-test-binary).
unsafe_bin=target/unsafe-test/fenceflake
if [ ! -x "$unsafe_bin" ]; then
    echo "FAILED: harness self-test: $unsafe_bin is not built (scripts/build-unsafe-test-binary)"
    exit 1
fi
run --scenario pause --seed 7 --store "$store/self-test" --unsafe-disable-deadline-check --fenceflake "$unsafe_bin"
if [ "$code" = 1 ]; then
    echo "self-test: with the deadline check off, the pause scenario is invalid, as it must be"
    row self-test PASSED "$secs"
    passed=$((passed + 1))
else
    echo "FAILED self-test: with the deadline check off the pause scenario exited $code, not 1 (invalid)"
    row self-test "FAILED($code)" "$secs"
    failed=$((failed + 1))
fi

# The same switch for authorization: registry nodes that authorize nobody must make the
# adversary's forged calls succeed, and the adversary scenario must then be invalid.
run --scenario adversary --seed 7 --store "$store/self-test-authz" --unsafe-disable-authorization --fenceflake "$unsafe_bin"
if [ "$code" = 1 ]; then
    echo "self-test: with authorization off, the adversary scenario is invalid, as it must be"
    row self-test-authz PASSED "$secs"
    passed=$((passed + 1))
else
    echo "FAILED self-test: with authorization off the adversary scenario exited $code, not 1 (invalid)"
    row self-test-authz "FAILED($code)" "$secs"
    failed=$((failed + 1))
fi

# And for incarnations: copies of one state dir whose processes state no incarnation of their
# own share one token, so the clone-state scenario must find duplicates and be invalid.
run --scenario clone-state --seed 7 --store "$store/self-test-incarnations" --unsafe-disable-incarnations --fenceflake "$unsafe_bin"
if [ "$code" = 1 ]; then
    echo "self-test: with incarnations off, the clone-state scenario is invalid, as it must be"
    row self-test-incarnations PASSED "$secs"
    passed=$((passed + 1))
else
    echo "FAILED self-test: with incarnations off the clone-state scenario exited $code, not 1 (invalid)"
    row self-test-incarnations "FAILED($code)" "$secs"
    failed=$((failed + 1))
fi

# And for the registry's clock check: a leader whose clock jumped ten minutes keeps leading and
# stamps its time into leases and replies, so the registry-clock-skew scenario must be invalid.
run --scenario registry-clock-skew --seed 7 --store "$store/self-test-clock-check" --unsafe-disable-clock-check --fenceflake "$unsafe_bin"
if [ "$code" = 1 ]; then
    echo "self-test: with the clock check off, the registry-clock-skew scenario is invalid, as it must be"
    row self-test-clock-check PASSED "$secs"
    passed=$((passed + 1))
elif [ "$needs" = 1 ]; then
    row self-test-clock-check SKIPPED "$secs"
    needs_faketime+=(self-test-clock-check)
else
    echo "FAILED self-test: with the clock check off the registry-clock-skew scenario exited $code, not 1 (invalid)"
    row self-test-clock-check "FAILED($code)" "$secs"
    failed=$((failed + 1))
fi

echo
printf '%s\n' "${rows[@]}"
if ((${#needs_faketime[@]})); then
    ff_cannot_run "the harness's run of ${needs_faketime[*]}" "libfaketime (apt-get install libfaketime)" ||
        { [ $? = 1 ] && failed=$((failed + 1)); }
fi
echo "harness: $passed passed, $failed failed, ${#needs_faketime[@]} skipped"
[ "$failed" = 0 ]

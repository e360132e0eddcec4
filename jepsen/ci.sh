#!/usr/bin/env bash
# The harness part of the test suite: every scenario briefly, then the self-test that proves
# a green run means something (workers without their deadline check must make `pause` fail).
# Needs root; without it the harness tests are reported as skipped, never as passed.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=target/debug/fenceflake-jepsen
store=target/jepsen-store
time_limit=${FENCEFLAKE_JEPSEN_CI_TIME_LIMIT:-20s}

if [ "$(id -u)" != 0 ]; then
    echo "SKIPPED: harness tests (fenceflake-jepsen) need root for network namespaces and nftables"
    exit 0
fi
"$bin" cleanup >/dev/null

passed=0 failed=0
if "$bin" test --scenario all --time-limit "$time_limit" --seed "${FENCEFLAKE_JEPSEN_SEED:-42}" --store "$store"; then
    passed=$((passed + 1))
else
    echo "FAILED: a harness scenario is invalid or unknown; reports under $store/"
    failed=$((failed + 1))
fi
"$bin" test --scenario pause --time-limit "$time_limit" --seed 7 --store "$store/self-test" --unsafe-disable-deadline-check
code=$?
if [ "$code" = 1 ]; then
    echo "self-test: with the deadline check off, the pause scenario is invalid, as it must be"
    passed=$((passed + 1))
else
    echo "FAILED self-test: with the deadline check off the pause scenario exited $code, not 1 (invalid)"
    failed=$((failed + 1))
fi
echo "harness: $passed passed, $failed failed"
[ "$failed" = 0 ]

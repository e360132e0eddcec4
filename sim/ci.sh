#!/usr/bin/env bash
# The simulator part of the test suite (scripts/test-all runs it): build the simulator (a
# workspace of its own, built with --cfg tokio_unstable: sim/Cargo.toml says why), run its
# tests (determinism included), a fixed seed range (and one of rolling upgrades), and one
# self-test per safety mechanism: with the mechanism switched off, the simulator must find a
# violation within the seeds recorded for it in sim/README.md ("Power, proven").
set -uo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never
failed=0
fail() { echo "FAILED: $*"; failed=1; }

cargo build --locked || exit 1
cargo test --locked -- --test-threads 1 || fail "simulator tests"
bin=../target/sim/debug/fenceflake-sim

# The fixed range: every seed must be valid (about two minutes on the CI machine).
seeds=${FENCEFLAKE_SIM_SEEDS:-0..200}
echo "== fenceflake-sim run --seeds $seeds"
"$bin" run --seeds "$seeds"
code=$?
[[ $code == 0 ]] || fail "fenceflake-sim run --seeds $seeds exited $code (1: violation, 3: inconclusive); its last line reproduces it"

# The rolling upgrade's runs (`--rolling-upgrade`, a seed class of their own): every seed
# valid too, the start-quiet self-test's among them.
upgrade_seeds=${FENCEFLAKE_SIM_UPGRADE_SEEDS:-0..40}
echo "== fenceflake-sim run --seeds $upgrade_seeds --rolling-upgrade"
"$bin" run --seeds "$upgrade_seeds" --rolling-upgrade
code=$?
[[ $code == 0 ]] || fail "fenceflake-sim run --seeds $upgrade_seeds --rolling-upgrade exited $code; its last line reproduces it"

# Self-tests: mechanism, the seed range within which a violation must be found, and the run's
# flags, if any (word-split on purpose).
while read -r mechanism range flags; do
    [[ -z $mechanism || $mechanism == \#* ]] && continue
    echo "== self-test: fenceflake-sim run --seeds $range --disable $mechanism${flags:+ $flags}"
    # shellcheck disable=SC2086
    "$bin" run --seeds "$range" --disable "$mechanism" $flags | tail -n 3
    code=${PIPESTATUS[0]}
    if [[ $code == 1 ]]; then
        echo "self-test: with $mechanism off, the simulator found a violation, as it must"
    else
        fail "self-test: with $mechanism off, fenceflake-sim exited $code, not 1 (a violation) within seeds $range"
    fi
done <self-tests.txt

exit $failed

#!/usr/bin/env bash
# Check the Prometheus rules: syntax (promtool check rules) and behaviour (promtool test rules
# runs alerts_test.yml: every alert fires on its failure and stays quiet otherwise).
# Exits non-zero on any failure. Needs promtool (Debian: apt-get install prometheus).
# That every metric the rules name exists is checked by tests/tests/t60_deploy_metrics.rs.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
promtool="${PROMTOOL:-promtool}"

if ! command -v "$promtool" >/dev/null 2>&1; then
    echo "check.sh: promtool not found (install it: apt-get install prometheus, or set PROMTOOL=/path/to/promtool)" >&2
    exit 2
fi

cd "$here"
"$promtool" check rules alerts.yml
"$promtool" test rules alerts_test.yml
echo "check.sh: alerts.yml passes promtool check and its unit tests"

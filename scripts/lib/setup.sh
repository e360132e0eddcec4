# shellcheck shell=bash
# Sourced by scripts/test-all and jepsen/ci.sh: what the tests need from the machine, the
# set-up that installs it, and the one rule for a part that cannot run:
#
#   SKIPPED: <part> needs <what>          exit status 77 (the rest of the suite still runs)
#   FAILED: <part> needs <what> ...       exit status 1, under CI=true or FENCEFLAKE_REQUIRE_ALL=1
#                                         (so CI cannot go green by skipping)

# True under CI (CI=true, as GitHub/GitLab set it) or FENCEFLAKE_REQUIRE_ALL=1.
ff_required() {
    [[ ${CI:-} == true || ${CI:-} == 1 || ${FENCEFLAKE_REQUIRE_ALL:-0} == 1 ]]
}

# ff_cannot_run PART NEEDS [REASON]: prints the one line for a part that cannot run; returns
# 77 (skipped), or 1 (failed) under ff_required or when a REASON to require it is given
# (e.g. FENCEFLAKE_REQUIRE_DOCKER=1).
ff_cannot_run() {
    local why=${3:-}
    if [[ ${CI:-} == true || ${CI:-} == 1 ]]; then
        why="CI=$CI"
    elif [[ ${FENCEFLAKE_REQUIRE_ALL:-0} == 1 ]]; then
        why="FENCEFLAKE_REQUIRE_ALL=1"
    fi
    if [[ -n $why ]]; then
        echo "FAILED: $1 needs $2 ($why: what cannot run fails)"
        return 1
    fi
    echo "SKIPPED: $1 needs $2"
    return 77
}

# ff_have COMMAND: on PATH, or in an sbin directory (not on a normal user's PATH).
ff_have() {
    command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 || -x /sbin/$1 ]]
}

# Prints libfaketime's preload library (the paths tests/src/lib.rs and jepsen/src/lib.rs try).
ff_libfaketime() {
    local p
    for p in /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1; do
        [[ -e $p ]] && { echo "$p"; return 0; }
    done
    return 1
}

# The Debian packages still missing, one line: `command-or-file package...`.
#   libfaketime  steps the wall clock of real processes (the t20 clock test, clock-* scenarios)
#   nftables, iproute2  the harness's partitions, packet loss and network namespaces
#   iptables, procps  the harness's latency nemesis (NFQUEUE rules, the bridge netfilter sysctl)
#   prometheus   promtool, which checks and unit-tests the alert rules (the t60 test)
#   chrony, systemd  chronyd -p and systemd-analyze in deploy/check-manifests.sh
#   python3-venv the venv deploy/check-manifests.sh installs kubernetes-validate into
#   docker-compose, file  deploy/docker/test.sh (the Docker daemon itself is not installed)
#   gdb          the thread dumps of the registry nodes a failing process test keeps
ff_apt_missing() {
    ff_libfaketime >/dev/null || echo "libfaketime libfaketime faketime"
    ff_have nft || echo "nft nftables"
    ff_have ip || echo "ip iproute2"
    ff_have iptables-restore || echo "iptables-restore iptables"
    ff_have sysctl || echo "sysctl procps"
    ff_have promtool || echo "promtool prometheus"
    ff_have chronyd || echo "chronyd chrony"
    ff_have systemd-analyze || echo "systemd-analyze systemd"
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || echo "python3-venv python3 python3-venv"
    ff_have docker-compose || echo "docker-compose docker-compose"
    ff_have file || echo "file file"
    ff_have gdb || echo "gdb gdb"
}

# Installs what is missing: as root the Debian packages (`apt-get update` once, only if
# something is missing), and cargo-nextest (`cargo install --locked`, any user). Returns 0
# when nothing is missing any more, 77 when packages are missing and this is not root (or
# not Debian), 1 when an install failed. Each missing part then prints its own SKIPPED line.
ff_setup() {
    local rc=0 line words pkgs=() what=()
    while read -r line; do
        read -r -a words <<<"$line"
        what+=("${words[0]}")
        pkgs+=("${words[@]:1}")
    done < <(ff_apt_missing)
    if ((${#pkgs[@]} == 0)); then
        echo "setup: every system package is installed"
    elif [[ $(id -u) != 0 ]]; then
        echo "setup: not root, so not installing ${pkgs[*]} (for ${what[*]}): run it as root, or apt-get install them"
        rc=77
    elif ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: no apt-get, so not installing ${pkgs[*]} (Debian names; for ${what[*]})"
        rc=77
    else
        echo "setup: apt-get install ${pkgs[*]} (for ${what[*]})"
        # No recommends: prometheus would pull node-exporter, smartmontools, ipmitool...
        # The lock timeout waits for another apt-get instead of failing at once.
        if ! { apt-get -o DPkg::Lock::Timeout=300 update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
                --no-install-recommends "${pkgs[@]}" >/dev/null; }; then
            echo "setup: apt-get install ${pkgs[*]} failed (above)"
            rc=1
        fi
    fi
    if ! command -v cargo-nextest >/dev/null 2>&1; then
        echo "setup: cargo install --locked cargo-nextest"
        if ! cargo install --locked cargo-nextest; then
            echo "setup: cargo install --locked cargo-nextest failed (above)"
            rc=1
        fi
    fi
    return "$rc"
}

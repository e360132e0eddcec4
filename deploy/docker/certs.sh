#!/usr/bin/env bash
# Make the compose project's certificates with `fenceflake certs`: one CA, and one
# certificate per container (never one identity shared by several), laid out as one
# directory per identity that the compose file mounts read-only at /etc/fenceflake/tls:
#
#   DIR/ca/                       the CA (ca.pem, ca.key) and every issued file; never mounted
#   DIR/registry-N/               node N        (spiffe://<td>/fenceflake/node/N)
#   DIR/registry-N-health/        reader        its health check's `ctl status` (ClusterStatus only)
#   DIR/worker-N/                 worker        worker-N (it also mints its own health check)
#   DIR/operator/                 operator      for `ctl` from the host
#   DIR/client/                   client        for `mint` from the host
#
# Each identity directory holds ca.pem, cert.pem and key.pem (0600). As root, the container
# directories are handed to uid 65532 (the image's user); otherwise their keys are made
# readable by all (0644) so that the container can read them: fine on a one-user dev host,
# not on a shared one (run this as root there, or `chown -R 65532:65532` them).
#
#   deploy/docker/certs.sh [DIR]            # default: deploy/docker/certs
#
# FENCEFLAKE_BIN=path   the fenceflake binary (default: `docker run` of FENCEFLAKE_IMAGE,
#                       default fenceflake:latest, so no host build is needed).
# FENCEFLAKE_TRUST_DOMAIN  SPIFFE trust domain (default fenceflake.local).
# An existing DIR/ca is reused (so new containers join the same CA); an identity directory
# that exists is left as it is. Delete DIR to start over with a new CA.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
dir=${1:-$here/certs}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
image=${FENCEFLAKE_IMAGE:-fenceflake:latest}
trust_domain=${FENCEFLAKE_TRUST_DOMAIN:-fenceflake.local}

certs() { # certs ARGS... with --dir pointing at the CA directory
    if [[ -n ${FENCEFLAKE_BIN:-} ]]; then
        "$FENCEFLAKE_BIN" certs "$@" --dir "$dir/ca"
    else
        docker run --rm --user "$(id -u):$(id -g)" -v "$dir/ca:/ca" "$image" certs "$@" --dir /ca
    fi
}

mkdir -p "$dir/ca"
chmod 0700 "$dir/ca"
[[ -f $dir/ca/ca.pem ]] || certs init --trust-domain "$trust_domain" >/dev/null

# identity DIRNAME ROLE NAME container|host: issue ROLE/NAME and lay it out in DIR/DIRNAME,
# for a container (readable by uid 65532) or for the host user running this script.
identity() {
    local out=$dir/$1 role=$2 name=$3 for=$4
    [[ -d $out ]] && return
    [[ -f $dir/ca/$role-$name.pem ]] || certs issue --role "$role" --name "$name" >/dev/null
    mkdir -p "$out.tmp"
    cp "$dir/ca/ca.pem" "$out.tmp/ca.pem"
    cp "$dir/ca/$role-$name.pem" "$out.tmp/cert.pem"
    cp "$dir/ca/$role-$name.key" "$out.tmp/key.pem"
    chmod 0644 "$out.tmp/ca.pem" "$out.tmp/cert.pem"
    chmod 0600 "$out.tmp/key.pem"
    if [[ $for == container ]]; then
        if ((EUID == 0)); then
            chown -R 65532:65532 "$out.tmp"
            chmod 0500 "$out.tmp"
        else
            chmod 0644 "$out.tmp/key.pem"
            chmod 0755 "$out.tmp"
        fi
    fi
    mv "$out.tmp" "$out"
}

for n in 1 2 3 4 5; do
    identity "registry-$n" node "$n" container
    identity "registry-$n-health" reader "healthcheck-registry-$n" container
done
for n in 1 2 3; do
    identity "worker-$n" worker "worker-$n" container
done
identity operator operator operator host
identity client client client host
echo "$dir"

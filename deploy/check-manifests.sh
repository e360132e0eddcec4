#!/usr/bin/env bash
# Offline checks of the deployment files in deploy/k8s, deploy/systemd and deploy/chrony.
#
#   bash deploy/check-manifests.sh            # from the repository root (or anywhere)
#
# 1. Kubernetes manifests: schema validation with kubernetes-validate --strict (unknown or
#    misspelled fields fail) against pinned Kubernetes versions. kubernetes-validate and its
#    dependencies, all pinned, are installed into target/venv-deploy on first use (PyPI).
# 2. systemd units: `systemd-analyze verify` (on copies whose ExecStart points at a stub, so
#    no built binary is needed; any warning fails) and an offline security exposure bound.
# 3. chrony.conf: parsed by `chronyd -p` (Debian package `chrony`; required), in a network
#    namespace of its own when possible.
# 4. What no schema knows (a Python pass over all of the above):
#    - every FENCEFLAKE_* variable and every --flag is a real, non-hidden flag of the
#      subcommand that runs (read from the clap attributes under cli/src/), every other
#      variable is on a short allow-list, and the subcommand's required flags are set;
#    - every registry --initial-cluster lists exactly ids 1..5, each node's advertised peer
#      address equals its own entry (per StatefulSet ordinal / per env file), and ports agree
#      with the listen addresses; worker --registry lists only those client addresses;
#    - $(VAR) references resolve (kubelet leaves unknown ones as literal text), named ports
#      exist, Service selectors match a pod template, lists contain no spaces;
#    - the policies the READMEs promise: worker liveness is not the gRPC health (parked is
#      alive), readiness is; non-root, read-only root, no service links; graceful-stop
#      budgets; chrony steps only in the first updates after start and slews leap seconds;
#    - mutual TLS everywhere: every registry and worker sets FENCEFLAKE_TLS_CA/CERT/KEY and
#      never FENCEFLAKE_INSECURE; in Kubernetes the files are in a read-only cert-manager
#      csi-driver volume of the same pod whose SPIFFE URI names the right role and name
#      (node/<its FENCEFLAKE_NODE_ID>, worker/${POD_NAME}: one identity per pod) and whose
#      Issuer exists; the five registry StatefulSets (one per node) differ only in the node
#      id; an admin listener has its named port.
# 5. cert-manager resources (CRDs, deploy/k8s/tls.yaml) are not schema-checked in step 1 but
#    for their shape in step 4: apiVersion, kind, metadata.name and the required spec fields.
#
# Exits non-zero, naming each bad file, if anything fails. Needs: python3 (with venv), bash,
# systemd-analyze, chronyd. Network: PyPI only, and only while target/venv-deploy is missing
# or its pinned requirements changed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

# Kubernetes versions validated against: the oldest this deployment supports (grpc probes,
# PVC retention policy, unhealthyPodEvictionPolicy) and the newest schema of the pinned
# kubernetes-validate release.
K8S_VERSIONS=(1.29.0 1.37.0)
# kubernetes-validate and its whole dependency closure, pinned (installed with --no-deps).
PY_REQS=(
    kubernetes-validate==1.37.0
    attrs==26.1.0
    importlib_resources==7.1.0
    jsonschema==4.26.0
    jsonschema-specifications==2025.9.1
    packaging==26.4
    PyYAML==6.0.4
    referencing==0.37.0
    rpds-py==2026.9.1
    typing_extensions==4.16.0
)
# Worst systemd-analyze security exposure accepted, in tenths (20 = 2.0 of 10).
SYSTEMD_EXPOSURE_MAX=20

failures=()
fail() {
    echo "FAIL $1: $2" >&2
    failures+=("$1")
}
ok() { echo "ok   $1: $2"; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

k8s_files=(deploy/k8s/*.yaml)
# cert-manager resources: CRDs, which kubernetes-validate has no schema for (step 4 checks them).
k8s_crd_files=(deploy/k8s/tls.yaml)
units=(deploy/systemd/*.service)
envs=(deploy/systemd/*.env)
chrony_conf=deploy/chrony/chrony.conf
for f in "${k8s_files[@]}" "${units[@]}" "${envs[@]}" "$chrony_conf"; do
    [[ -f $f ]] || fail "$f" "missing"
done

# --- the pinned venv -----------------------------------------------------------------------
# Creating it is set-up, not a check: when that cannot be done here (no python3 with its venv
# module, PyPI unreachable) one line says so and the script exits 77 (skipped), or 1 (failed)
# under CI=true or FENCEFLAKE_REQUIRE_ALL=1, as scripts/test-all expects.
cannot_set_up() {
    if [[ ${CI:-} == true || ${CI:-} == 1 || ${FENCEFLAKE_REQUIRE_ALL:-0} == 1 ]]; then
        echo "FAILED: the deployment file check (deploy/check-manifests.sh) needs $1 (CI=${CI:-}, FENCEFLAKE_REQUIRE_ALL=${FENCEFLAKE_REQUIRE_ALL:-}: what cannot run fails)"
        exit 1
    fi
    echo "SKIPPED: the deployment file check (deploy/check-manifests.sh) needs $1"
    exit 77
}
venv=target/venv-deploy
stamp=$venv/.fenceflake-requirements
want_stamp=$(printf '%s\n' "${PY_REQS[@]}")
if [[ ! -x $venv/bin/python || ! -f $stamp || "$(cat "$stamp")" != "$want_stamp" ]]; then
    echo "== creating $venv (${PY_REQS[0]} and its pinned dependencies, from PyPI)"
    rm -rf "$venv"
    setup_log=$tmp/venv-setup.log
    command -v python3 >/dev/null 2>&1 || cannot_set_up "python3 (apt-get install python3-venv)"
    if ! python3 -m venv "$venv" >"$setup_log" 2>&1; then
        grep -v '^[[:space:]]*$' "$setup_log" | tail -n 3 | sed 's/^/  venv: /' >&2
        rm -rf "$venv"
        cannot_set_up "python3's venv module with ensurepip (apt-get install python3-venv)"
    fi
    if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --timeout 30 --retries 2 "${PY_REQS[@]}" >"$setup_log" 2>&1; then
        grep -v '^[[:space:]]*$' "$setup_log" | tail -n 3 | sed 's/^/  pip: /' >&2
        rm -rf "$venv"
        cannot_set_up "PyPI (or PIP_INDEX_URL) to install ${PY_REQS[0]} and its pinned dependencies into $venv"
    fi
    if ! "$venv/bin/python" -m pip check --disable-pip-version-check >"$setup_log" 2>&1; then
        cat "$setup_log" >&2
        rm -rf "$venv"
        echo "FAIL deploy/check-manifests.sh: the pinned PY_REQS are inconsistent (pip check, above)" >&2
        exit 1
    fi
    printf '%s\n' "$want_stamp" >"$stamp"
fi
py=$venv/bin/python

# --- 1. Kubernetes schemas -----------------------------------------------------------------
echo "== kubernetes-validate --strict (${K8S_VERSIONS[*]})"
for f in "${k8s_files[@]}"; do
    if [[ " ${k8s_crd_files[*]} " == *" $f "* ]]; then
        echo "skip $f: cert-manager resources (CRDs), shape-checked below"
        continue
    fi
    for v in "${K8S_VERSIONS[@]}"; do
        if out=$("$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "$f" 2>&1); then
            ok "$f" "schema-valid for Kubernetes $v"
        else
            printf '%s\n' "$out" >&2
            fail "$f" "kubernetes-validate --strict -k $v"
        fi
    done
done

# --- 2. systemd units ----------------------------------------------------------------------
echo "== systemd-analyze verify / security"
if ! command -v systemd-analyze >/dev/null 2>&1; then
    fail "deploy/systemd" "systemd-analyze not found (Debian package systemd)"
else
    # verify insists that ExecStart= names an existing executable: point copies at a stub.
    mkdir -p "$tmp/bin" "$tmp/units"
    install -m 0755 "$(type -P true)" "$tmp/bin/fenceflake"
    for u in "${units[@]}"; do
        copy=$tmp/units/$(basename "$u")
        sed "s#/usr/local/bin/fenceflake#$tmp/bin/fenceflake#g" "$u" >"$copy"
        # Unknown keys and bad values are only warnings (exit 0): any output fails.
        if out=$(systemd-analyze --man=no verify "$copy" 2>&1) && [[ -z $out ]]; then
            ok "$u" "systemd-analyze verify"
        else
            printf '%s\n' "${out//$tmp\/units\//deploy/systemd/}" >&2
            fail "$u" "systemd-analyze verify"
        fi
        if out=$(systemd-analyze security --offline=yes --no-pager --threshold="$SYSTEMD_EXPOSURE_MAX" "$copy" 2>&1); then
            ok "$u" "$(grep -o 'Overall exposure level.*' <<<"$out" | head -1)"
        else
            grep -E 'Overall|✗' <<<"$out" >&2 || printf '%s\n' "$out" >&2
            fail "$u" "systemd-analyze security exposure above $((SYSTEMD_EXPOSURE_MAX / 10)).$((SYSTEMD_EXPOSURE_MAX % 10))"
        fi
    done
fi

# --- 3. chrony -----------------------------------------------------------------------------
echo "== chronyd -p"
chrony_parsed=$tmp/chrony.parsed
: >"$chrony_parsed"
if ! command -v chronyd >/dev/null 2>&1 && [[ ! -x /usr/sbin/chronyd ]]; then
    fail "$chrony_conf" "chronyd not found: apt-get install chrony (its service is not started in a container with policy-rc.d)"
else
    chronyd_bin=$(command -v chronyd || echo /usr/sbin/chronyd)
    # -p parses, prints the configuration and exits; no network is touched, and none is
    # reachable in a fresh network namespace.
    run=("$chronyd_bin" -p -f "$chrony_conf")
    if unshare -n true 2>/dev/null; then run=(unshare -n "${run[@]}"); fi
    if "${run[@]}" >"$chrony_parsed" 2>"$tmp/chrony.err"; then
        ok "$chrony_conf" "chronyd -p parses it"
    else
        cat "$tmp/chrony.err" >&2
        fail "$chrony_conf" "chronyd -p"
        : >"$chrony_parsed"
    fi
fi

# --- 4. cross-file consistency and policy --------------------------------------------------
echo "== flags, env vars, initial cluster, references, policies"
if ! "$py" - "$chrony_parsed" "$chrony_conf" >"$tmp/consistency.out" 2>&1 <<'PY'
import glob
import os
import re
import sys

import yaml

CHRONY_PARSED, CHRONY_CONF = sys.argv[1], sys.argv[2]
bad = []


def fail(path, why):
    bad.append(path)
    print(f"FAIL {path}: {why}")


def ok(path, what):
    print(f"ok   {path}: {what}")


# ---- the binary's flags, from the clap attributes -----------------------------------------
SUBCOMMAND_FILES = {
    "registry": "cli/src/registry_cmd.rs",
    "worker": "cli/src/worker_cmd.rs",
    "ctl": "cli/src/ctl/mod.rs",
    "mint": "cli/src/mint_cmd.rs",
}
GLOBAL_FILE = "cli/src/main.rs"
ARG_RE = re.compile(r"#\[arg\((?P<attr>.*?)\)\]\s*(?:///[^\n]*\n\s*|#\[[^\n]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?(?P<field>[a-z_][a-z0-9_]*)\s*:\s*(?P<ty>[^,\n]+),", re.S)


class Flag:
    def __init__(self, attr, field, ty):
        self.attr = attr
        m = re.search(r'\blong\s*=\s*"([^"]+)"', attr)
        self.long = m.group(1) if m else (field.replace("_", "-") if re.search(r"\blong\b", attr) else None)
        m = re.search(r'\benv\s*=\s*"([^"]+)"', attr)
        self.env = m.group(1) if m else None
        self.hidden = bool(re.search(r"\bhide\s*=\s*true\b", attr))
        ty = ty.strip()
        optional = ty.startswith("Option<") or ty == "bool" or "default_value" in attr
        self.required = bool(re.search(r"\brequired\s*=\s*true\b", attr)) or (not optional and not ty.startswith("Vec<"))
        self.field = field


TLS_ARGS_FILE = "proto/src/tls/mod.rs"


def flags_of(path):
    text = open(path).read()
    flags = [Flag(m["attr"], m["field"], m["ty"]) for m in ARG_RE.finditer(text)]
    # `#[command(flatten)] tls: TlsArgs` brings --tls-ca/--tls-cert/--tls-key/--insecure.
    if re.search(r"#\[command\(flatten\)\]\s*(?:pub\s+)?[a-z_]+\s*:\s*TlsArgs", text):
        tls_text = open(TLS_ARGS_FILE).read()
        body = tls_text[tls_text.index("pub struct TlsArgs"):]
        flags += [Flag(m["attr"], m["field"], m["ty"]) for m in ARG_RE.finditer(body)]
    return flags


GLOBAL = flags_of(GLOBAL_FILE)
FLAGS = {sub: flags_of(path) + GLOBAL for sub, path in SUBCOMMAND_FILES.items()}
for sub in ("registry", "worker"):
    envs = [f.env for f in FLAGS[sub] if f.env]
    if len(envs) < 10 or not any(f.required for f in FLAGS[sub]):
        fail(SUBCOMMAND_FILES[sub], f"could not read the {sub} flags (parser out of date?)")
TLS_VARS = ("FENCEFLAKE_TLS_CA", "FENCEFLAKE_TLS_CERT", "FENCEFLAKE_TLS_KEY")
for sub in ("registry", "worker", "ctl", "mint"):
    if not set(TLS_VARS) <= {f.env for f in FLAGS[sub]}:
        fail(SUBCOMMAND_FILES[sub], f"`fenceflake {sub}` has no {'/'.join(TLS_VARS)} flags (TlsArgs not flattened, or the parser is out of date)")


def check_tls(path, where, values):
    """Mutual TLS on: the three files set, no --insecure. True if so."""
    missing = [v for v in TLS_VARS if not values.get(v)]
    if missing:
        fail(path, f"{where}: TLS is not configured ({', '.join(missing)} unset): every process runs mutual TLS")
    if values.get("FENCEFLAKE_INSECURE", "false").lower() not in ("false", "0", ""):
        fail(path, f"{where}: FENCEFLAKE_INSECURE is set: plaintext has no place in a deployment file")
        return False
    return not missing
ENV_ALLOWED = {"RUST_LOG", "RUST_BACKTRACE", "POD_NAME", "POD_NAMESPACE", "POD_IP", "NODE_NAME"}


def env_to_flag(sub):
    return {f.env: f for f in FLAGS[sub] if f.env}


def long_to_flag(sub):
    return {f.long: f for f in FLAGS[sub] if f.long}


def check_settings(path, where, sub, env_names, arg_flags, sources=None):
    """env_names: variable names set; arg_flags: --long names used; sources: the file each
    variable came from, if not `path`. True if all is well."""
    sources = sources or {}
    by_env, by_long = env_to_flag(sub), long_to_flag(sub)
    good = True
    set_fields = set()
    for name in env_names:
        if name.startswith("FENCEFLAKE_"):
            flag = by_env.get(name)
            if flag is None:
                fail(sources.get(name, path), f"{where}: {name} is not an environment variable of `fenceflake {sub}`")
                good = False
            elif flag.hidden:
                fail(sources.get(name, path), f"{where}: {name} is a hidden (unsafe/test-only) flag")
                good = False
            else:
                set_fields.add(flag.field)
        elif name not in ENV_ALLOWED:
            fail(sources.get(name, path), f"{where}: unexpected variable {name} (a misspelled FENCEFLAKE_*?)")
            good = False
    for long in arg_flags:
        flag = by_long.get(long)
        if flag is None:
            fail(path, f"{where}: --{long} is not a flag of `fenceflake {sub}`")
            good = False
        elif flag.hidden:
            fail(path, f"{where}: --{long} is a hidden (unsafe/test-only) flag")
            good = False
        else:
            set_fields.add(flag.field)
    for flag in FLAGS[sub]:
        if flag.required and flag.field not in set_fields:
            fail(path, f"{where}: required flag --{flag.long} ({flag.env}) is not set")
            good = False
    return good


def parse_duration_ms(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text.strip())
    if not m:
        return None
    return float(m[1]) * {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}[m[2]]


def parse_initial_cluster(path, where, spec):
    """{id: (peer, client)} or None after reporting."""
    members = {}
    for entry in spec.split(","):
        m = re.fullmatch(r"(\d+)=([^/\s]+:\d+)(?:/([^/\s]+:\d+))?", entry)
        if not m:
            fail(path, f"{where}: bad --initial-cluster entry {entry!r} (want ID=HOST:PEERPORT/HOST:CLIENTPORT, no spaces)")
            return None
        node = int(m[1])
        if node in members:
            fail(path, f"{where}: node id {node} listed twice in --initial-cluster")
            return None
        members[node] = (m[2], m[3])
    if sorted(members) != [1, 2, 3, 4, 5]:
        fail(path, f"{where}: --initial-cluster lists ids {sorted(members)}, want exactly 1..5")
        return None
    if any(client is None for _, client in members.values()):
        fail(path, f"{where}: every --initial-cluster entry should carry its client address")
        return None
    return members


def port_of(addr):
    return addr.rsplit(":", 1)[1] if addr and ":" in addr else None


def check_list(path, where, name, value):
    if re.search(r"\s", value) or "" in value.split(","):
        fail(path, f"{where}: {name} {value!r} has spaces or empty items (the list is not trimmed)")
        return False
    return True


# ---- Kubernetes ---------------------------------------------------------------------------
VAR_RE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
docs = []  # (path, doc)
for path in sorted(glob.glob("deploy/k8s/*.yaml")):
    try:
        for doc in yaml.safe_load_all(open(path)):
            if doc:
                docs.append((path, doc))
    except yaml.YAMLError as e:
        fail(path, f"YAML: {e}")

# cert-manager resources: no schema in step 1, so their shape here.
CERT_MANAGER_REQUIRED = {
    "Issuer": [("spec",), ("spec", "ca", "secretName")],
    "ClusterIssuer": [("spec",), ("spec", "ca", "secretName")],
    "Certificate": [("spec", "secretName"), ("spec", "issuerRef", "name"), ("spec", "uris")],
}
issuers = {}
for path, doc in docs:
    api = str(doc.get("apiVersion", ""))
    if not api.startswith("cert-manager.io/"):
        continue
    kind = doc.get("kind")
    name = (doc.get("metadata") or {}).get("name")
    where = f"{kind}/{name}"
    if api != "cert-manager.io/v1":
        fail(path, f"{where}: apiVersion {api}, want cert-manager.io/v1")
    if kind not in CERT_MANAGER_REQUIRED or not name:
        fail(path, f"{where}: want one of {sorted(CERT_MANAGER_REQUIRED)} with metadata.name")
        continue
    unknown = set(doc) - {"apiVersion", "kind", "metadata", "spec"}
    if unknown:
        fail(path, f"{where}: unknown top-level fields {sorted(unknown)}")
    good = True
    for field in CERT_MANAGER_REQUIRED[kind]:
        node = doc
        for key in field:
            node = node.get(key) if isinstance(node, dict) else None
        if not node:
            fail(path, f"{where}: required field {'.'.join(field)} is missing")
            good = False
    if good:
        issuers[(kind, name)] = path
        ok(path, f"{where}: cert-manager shape (required fields present)")
for path, doc in docs:
    if str(doc.get("apiVersion", "")).startswith("cert-manager.io/"):
        continue
    if doc.get("kind") not in ("Service", "StatefulSet", "Deployment", "DaemonSet", "PodDisruptionBudget", "NetworkPolicy"):
        fail(path, f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}: unexpected kind (add it to the checks)")
docs = [(p, d) for p, d in docs if not str(d.get("apiVersion", "")).startswith("cert-manager.io/")]
CSI_DRIVER = "csi.cert-manager.io"
SPIFFE_RE = re.compile(r"spiffe://(?P<td>[a-z0-9.-]+)/fenceflake/(?P<role>[a-z]+)/(?P<name>[A-Za-z0-9._${}-]+)")
trust_domains = set()


def check_tls_volume(path, where, pod, container, values, role, name):
    """The TLS files are in a read-only cert-manager csi volume of this pod whose SPIFFE URI is
    role/name and whose Issuer exists."""
    mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    dirs = {os.path.dirname(values.get(v, "")) for v in TLS_VARS}
    if len(dirs) != 1:
        fail(path, f"{where}: FENCEFLAKE_TLS_CA/CERT/KEY should be in one directory (one volume)")
        return
    tls_dir = dirs.pop()
    mount = next((m for m in mounts.values() if m.get("mountPath", "").rstrip("/") == tls_dir), None)
    if mount is None:
        fail(path, f"{where}: no volume is mounted at {tls_dir} (where FENCEFLAKE_TLS_* point)")
        return
    if mount.get("readOnly") is not True:
        fail(path, f"{where}: mount {mount['name']} at {tls_dir} must be readOnly")
    csi = vols.get(mount["name"], {}).get("csi")
    if not csi or csi.get("driver") != CSI_DRIVER or csi.get("readOnly") is not True:
        fail(path, f"{where}: volume {mount['name']} must be a read-only {CSI_DRIVER} csi volume (one certificate per pod)")
        return
    attrs = csi.get("volumeAttributes", {})
    files = {"FENCEFLAKE_TLS_CA": attrs.get("csi.cert-manager.io/ca-file", "ca.crt"),
             "FENCEFLAKE_TLS_CERT": attrs.get("csi.cert-manager.io/certificate-file", "tls.crt"),
             "FENCEFLAKE_TLS_KEY": attrs.get("csi.cert-manager.io/privatekey-file", "tls.key")}
    for var, file in files.items():
        if values[var] != f"{tls_dir}/{file}":
            fail(path, f"{where}: {var}={values[var]}, but the csi volume writes {tls_dir}/{file}")
    issuer = (attrs.get("csi.cert-manager.io/issuer-kind", "Issuer"), attrs.get("csi.cert-manager.io/issuer-name"))
    if issuer not in issuers:
        fail(path, f"{where}: csi volume issuer {issuer[0]}/{issuer[1]} is not defined in deploy/k8s (tls.yaml)")
    uris = [u.strip() for u in attrs.get("csi.cert-manager.io/uri-sans", "").split(",") if u.strip()]
    m = SPIFFE_RE.fullmatch(uris[0]) if len(uris) == 1 else None
    if not m:
        fail(path, f"{where}: csi uri-sans {uris} must be one spiffe://<trust domain>/fenceflake/<role>/<name>")
        return
    trust_domains.add(m["td"])
    if (m["role"], m["name"]) != (role, name):
        fail(path, f"{where}: the pod's certificate is {m['role']}/{m['name']}, want {role}/{name}")
    if attrs.get("csi.cert-manager.io/fs-group") != str(pod.get("securityContext", {}).get("runAsGroup")):
        fail(path, f"{where}: csi fs-group must be the pod's runAsGroup, or the process cannot read its key")
    for usage in ("server auth", "client auth"):
        if usage not in attrs.get("csi.cert-manager.io/key-usages", ""):
            fail(path, f"{where}: csi key-usages must include {usage!r} (every process is both)")
    ok(path, f"{where}: mutual TLS with its own {role}/{name} certificate from {issuer[0]}/{issuer[1]}")


registry_nodes = []  # (path, where, StatefulSet name, spec, values)
services = {d["metadata"]["name"]: (p, d) for p, d in docs if d.get("kind") == "Service"}
workloads = [(p, d) for p, d in docs if d.get("kind") in ("StatefulSet", "Deployment", "DaemonSet")]
registry_clients = set()
registry_worker_bits = []
k8s_worker_skews = []
worker_registry_lists = []  # (path, where, [addrs])


def named_ports(container):
    return {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}


def probe_port(container, probe):
    for kind in ("grpc", "httpGet", "tcpSocket"):
        if kind in probe:
            port = probe[kind]["port"]
            return kind, (named_ports(container).get(port) if isinstance(port, str) else port), port
    return None, None, None


for path, doc in workloads:
    name = doc["metadata"]["name"]
    kind = doc["kind"]
    spec = doc["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"].get("labels", {})
    if spec.get("selector", {}).get("matchLabels", {}).items() - labels.items():
        fail(path, f"{kind}/{name}: selector does not match the pod template labels")
    if pod.get("enableServiceLinks") is not False:
        fail(path, f"{kind}/{name}: set enableServiceLinks: false (service links inject FENCEFLAKE_*-like variables)")
    psc = pod.get("securityContext", {})
    if psc.get("runAsNonRoot") is not True:
        fail(path, f"{kind}/{name}: pod securityContext.runAsNonRoot must be true")
    for c in pod.get("containers", []):
        where = f"{kind}/{name} container {c['name']}"
        if "fenceflake" not in c.get("image", ""):
            continue
        csc = c.get("securityContext", {})
        if csc.get("readOnlyRootFilesystem") is not True or csc.get("allowPrivilegeEscalation") is not False:
            fail(path, f"{where}: needs readOnlyRootFilesystem: true and allowPrivilegeEscalation: false")
        if c.get("command"):
            fail(path, f"{where}: the image's ENTRYPOINT is /fenceflake and it has no shell; use args, not command")
        args = [str(a) for a in c.get("args", [])]
        if not args or args[0] not in FLAGS:
            fail(path, f"{where}: args[0] must be a subcommand ({', '.join(FLAGS)}), got {args[:1]}")
            continue
        sub = args[0]
        env = c.get("env", [])
        env_names = [e["name"] for e in env]
        defined = set()
        values = {}
        for e in env:
            for ref in VAR_RE.findall(str(e.get("value", ""))):
                if ref not in defined:
                    fail(path, f"{where}: {e['name']} uses $({ref}), which is not defined above it")
            defined.add(e["name"])
            if "value" in e:
                values[e["name"]] = str(e["value"])
        arg_flags = []
        for a in args[1:]:
            for ref in VAR_RE.findall(a):
                if ref not in defined:
                    fail(path, f"{where}: argument {a!r} uses $({ref}), which is not defined in env")
            if a.startswith("--"):
                long, _, val = a[2:].partition("=")
                arg_flags.append(long)
                flag = long_to_flag(sub).get(long)
                if flag and flag.env and val:
                    values[flag.env] = val
        dup = {n for n in env_names if env_names.count(n) > 1}
        if dup:
            fail(path, f"{where}: variables set twice: {sorted(dup)}")
        settings_ok = check_settings(path, where, sub, env_names, arg_flags)
        for list_var in ("FENCEFLAKE_REGISTRY", "FENCEFLAKE_INITIAL_CLUSTER"):
            if list_var in values:
                settings_ok &= check_list(path, where, list_var, values[list_var])
        # Ports: what it listens on must be what the probes and named ports say.
        ports = named_ports(c)
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(probe_name)
            if probe:
                kind_, number, raw = probe_port(c, probe)
                if number is None:
                    fail(path, f"{where}: {probe_name} port {raw!r} is not a named containerPort")
        metrics_port = port_of(values.get("FENCEFLAKE_METRICS_ADDR"))
        if metrics_port and str(ports.get("metrics")) != metrics_port:
            fail(path, f"{where}: containerPort 'metrics' ({ports.get('metrics')}) != FENCEFLAKE_METRICS_ADDR port {metrics_port}")
        ready = c.get("readinessProbe", {})
        live = c.get("livenessProbe", {})
        if sub in ("registry", "worker"):
            listen = values.get("FENCEFLAKE_CLIENT_ADDR" if sub == "registry" else "FENCEFLAKE_LISTEN")
            kind_, number, _ = probe_port(c, ready)
            if kind_ != "grpc" or str(number) != port_of(listen):
                fail(path, f"{where}: readinessProbe must be grpc on the serving port {port_of(listen)} (health follows leader/park state)")
            kind_, number, _ = probe_port(c, live)
            if kind_ in (None, "grpc"):
                fail(path, f"{where}: livenessProbe must exist and must not be the gRPC health (NOT_SERVING while parked or leaderless is alive)")
            grace = pod.get("terminationGracePeriodSeconds", 30)
            if grace < 10:
                fail(path, f"{where}: terminationGracePeriodSeconds {grace} is too short for a graceful stop (drain 2 s + release 3 s)")
        if sub in ("registry", "worker") and check_tls(path, where, values):
            if sub == "registry":
                check_tls_volume(path, where, pod, c, values, "node", values.get("FENCEFLAKE_NODE_ID"))
            else:
                check_tls_volume(path, where, pod, c, values, "worker", "${POD_NAME}")
        admin_port = port_of(values.get("FENCEFLAKE_ADMIN_ADDR"))
        if sub == "registry" and admin_port and str(ports.get("admin")) != admin_port:
            fail(path, f"{where}: containerPort 'admin' ({ports.get('admin')}) != FENCEFLAKE_ADMIN_ADDR port {admin_port}")
        if sub == "registry" and settings_ok:
            if kind != "StatefulSet":
                fail(path, f"{where}: the registry must be a StatefulSet")
                continue
            if spec.get("replicas") != 1:
                fail(path, f"{where}: replicas {spec.get('replicas')}, want 1 (one StatefulSet per node: its certificate names its node id)")
            if spec.get("updateStrategy", {}).get("type") != "OnDelete":
                fail(path, f"{where}: updateStrategy must be OnDelete (five StatefulSets would otherwise restart all nodes at once)")
            svc_name = spec.get("serviceName")
            svc = services.get(svc_name)
            if not svc or svc[1]["spec"].get("clusterIP") != "None" or svc[1]["spec"].get("publishNotReadyAddresses") is not True:
                fail(path, f"{where}: serviceName {svc_name!r} must be a headless Service with publishNotReadyAddresses: true")
            registry_nodes.append((path, where, name, spec, values))
            registry_worker_bits.append(int(values.get("FENCEFLAKE_WORKER_ID_BITS", "10")))
        if sub == "worker" and settings_ok:
            worker_registry_lists.append((path, where, values["FENCEFLAKE_REGISTRY"].split(",")))
            worker_id = values.get("FENCEFLAKE_WORKER_ID", "auto")
            if worker_id == "ordinal" and kind != "StatefulSet":
                fail(path, f"{where}: --worker-id ordinal needs a StatefulSet (stable pod names)")
            if worker_id == "ordinal" and values.get("FENCEFLAKE_HOSTNAME", "$(POD_NAME)") != "$(POD_NAME)":
                fail(path, f"{where}: --worker-id ordinal needs the pod name as host name")
            if worker_id not in ("auto", "ordinal") and spec.get("replicas", 1) > 1:
                fail(path, f"{where}: a fixed --worker-id with more than one replica: every pod but one is refused")
            if "FENCEFLAKE_MAX_SKEW" in values:
                k8s_worker_skews.append((path, parse_duration_ms(values["FENCEFLAKE_MAX_SKEW"])))
            ok(path, f"{where}: flags and variables are `fenceflake {sub}`'s")
# The registry: five StatefulSets, nodes 1..5, one --initial-cluster, each node advertising
# its own entry, otherwise identical.
if registry_nodes:
    by_id = {}
    for path, where, name, spec, values in registry_nodes:
        node = values.get("FENCEFLAKE_NODE_ID", "")
        if not node.isdigit():
            fail(path, f"{where}: FENCEFLAKE_NODE_ID={node!r}: each registry StatefulSet names its node id")
        elif int(node) in by_id:
            fail(path, f"{where}: node id {node} is also {by_id[int(node)][1]}")
        else:
            by_id[int(node)] = (path, where, name, spec, values)
    if sorted(by_id) != [1, 2, 3, 4, 5]:
        fail(registry_nodes[0][0], f"registry StatefulSets are nodes {sorted(by_id)}, want exactly 1..5")
    specs = {values.get("FENCEFLAKE_INITIAL_CLUSTER") for _, _, _, _, values in registry_nodes}
    if len(specs) != 1:
        fail(registry_nodes[0][0], "the registry StatefulSets disagree on FENCEFLAKE_INITIAL_CLUSTER")
    path0 = registry_nodes[0][0]
    members = parse_initial_cluster(path0, "registry", specs.pop()) if len(specs) == 1 else None
    if members and sorted(by_id) == [1, 2, 3, 4, 5]:
        good = True
        for node, (path, where, name, spec, values) in sorted(by_id.items()):
            pod_name = f"{name}-0"
            mine = values.get("FENCEFLAKE_ADVERTISE_PEER_ADDR", "").replace("$(POD_NAME)", pod_name)
            peer, client = members[node]
            if mine != peer:
                fail(path, f"{where}: pod {pod_name} (node {node}) advertises {mine!r} but --initial-cluster says {peer!r}")
                good = False
            if not peer.startswith(f"{pod_name}.{spec.get('serviceName')}."):
                fail(path, f"{where}: node {node} peer address {peer!r} is not {pod_name}.{spec.get('serviceName')}.…")
                good = False
            if port_of(peer) != port_of(values.get("FENCEFLAKE_PEER_ADDR")) or port_of(client) != port_of(values.get("FENCEFLAKE_CLIENT_ADDR")):
                fail(path, f"{where}: node {node} ports in --initial-cluster differ from the listen addresses")
                good = False
        registry_clients.update(client for _, client in members.values())
        if good:
            ok(path0, "registry: five StatefulSets = nodes 1..5 of --initial-cluster, each pod advertising its own entry")
        # The five differ only in the node id: compare them with it replaced.
        def normalized(doc, node):
            # Blank exactly the fields that carry the node id, then compare the rest.
            text = yaml.safe_dump(doc, sort_keys=True)
            text = text.replace(f"fenceflake-registry-{node}\n", "fenceflake-registry-<N>\n")
            text = text.replace(f"/fenceflake/node/{node}\n", "/fenceflake/node/<N>\n")
            return re.sub(rf"name: FENCEFLAKE_NODE_ID\n(\s+)value: '{node}'", r"name: FENCEFLAKE_NODE_ID\n\1value: <N>", text)
        raw = {node: next(d for p, d in workloads if d["metadata"]["name"] == name) for node, (_, _, name, _, _) in by_id.items()}
        first = normalized(raw[1], 1)
        for node in range(2, 6):
            if normalized(raw[node], node) != first:
                fail(by_id[node][0], f"StatefulSet/{by_id[node][2]} differs from fenceflake-registry-1 in more than the node id")
# One trust domain for every pod certificate.
if len(trust_domains) > 1:
    fail("deploy/k8s", f"pod certificates use several trust domains: {sorted(trust_domains)}")
# Services must select some pod template.
for sname, (path, svc) in services.items():
    sel = svc["spec"].get("selector", {})
    targets = [(p, d) for p, d in workloads if sel and not (sel.items() - d["spec"]["template"]["metadata"].get("labels", {}).items())]
    if not targets:
        fail(path, f"Service/{sname}: selector {sel} matches no pod template")
        continue
    for port in svc["spec"].get("ports", []):
        tp = port.get("targetPort", port["port"])
        for p, d in targets:
            for c in d["spec"]["template"]["spec"]["containers"]:
                if isinstance(tp, str) and tp not in named_ports(c):
                    fail(path, f"Service/{sname}: targetPort {tp!r} is not a named port of {d['kind']}/{d['metadata']['name']}")
                elif isinstance(tp, int) and tp not in named_ports(c).values():
                    fail(path, f"Service/{sname}: targetPort {tp} is not a containerPort of {d['kind']}/{d['metadata']['name']}")
for path, doc in docs:
    if doc.get("kind") == "PodDisruptionBudget":
        sel = doc["spec"]["selector"].get("matchLabels", {})
        if not any(not (sel.items() - d["spec"]["template"]["metadata"].get("labels", {}).items()) for _, d in workloads):
            fail(path, f"PodDisruptionBudget/{doc['metadata']['name']}: selector matches no pod template")
for path, where, addrs in worker_registry_lists if registry_clients else []:  # else: registry failed above
    unknown = [a for a in addrs if a not in registry_clients]
    if unknown:
        fail(path, f"{where}: FENCEFLAKE_REGISTRY lists {unknown}, not client addresses of the registry manifests")
    elif len(addrs) < 3:
        fail(path, f"{where}: FENCEFLAKE_REGISTRY should list at least 3 registry nodes (one is not failover)")
for path, doc in workloads:
    if doc["kind"] == "StatefulSet":
        for c in doc["spec"]["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if c.get("args", [None])[0] == "worker" and env.get("FENCEFLAKE_WORKER_ID") == "ordinal":
                bits = max(registry_worker_bits or [10])
                if doc["spec"].get("replicas", 1) > 2 ** bits:
                    fail(path, f"StatefulSet/{doc['metadata']['name']}: more replicas than worker IDs (2^{bits})")

# ---- systemd units and their environment files --------------------------------------------
def parse_unit(path):
    sections, cur = {}, None
    for raw in open(path):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            cur = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, val = line.partition("=")
        cur.append((key.strip(), val.strip()))
    return sections


def unit_values(sections, section, key):
    out = []
    for k, v in sections.get(section, []):
        if k == key:
            if key in ("After", "Wants", "Requires", "Before"):
                out.extend(v.split())
            else:
                out.append(v)
    return out


def parse_env_file(path):
    values, names = {}, []
    for n, raw in enumerate(open(path), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, val = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            fail(path, f"line {n}: not KEY=VALUE")
            continue
        if val[:1] in "\"'" or re.search(r"\s", val):
            fail(path, f"line {n}: {key}: keep values unquoted and without spaces")
        names.append(key)
        values[key] = val
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        fail(path, f"variables set twice: {sorted(dup)}")
    return names, values


unit_env = {}  # env file path -> (subcommand, unit path, StateDirectory)
for upath in sorted(glob.glob("deploy/systemd/*.service")):
    u = parse_unit(upath)
    exec_start = unit_values(u, "Service", "ExecStart")
    if len(exec_start) != 1:
        fail(upath, "want exactly one ExecStart=")
        continue
    argv = exec_start[0].lstrip("-@:+!").split()
    if argv[0] != "/usr/local/bin/fenceflake" or len(argv) < 2 or argv[1] not in FLAGS:
        fail(upath, f"ExecStart= must run /usr/local/bin/fenceflake SUBCOMMAND, got {exec_start[0]!r}")
        continue
    sub = argv[1]
    arg_flags = [a[2:].partition("=")[0] for a in argv[2:] if a.startswith("--")]
    env_files = unit_values(u, "Service", "EnvironmentFile")
    inline = [v.split("=", 1)[0] for e in unit_values(u, "Service", "Environment") for v in e.split()]
    names, values, sources = list(inline), {}, {}
    cfg = upath  # where value problems are reported: the env file, if there is one
    for ef in env_files:
        ef = ef.lstrip("-")
        local = os.path.join("deploy/systemd", os.path.basename(ef))
        if not ef.startswith("/etc/fenceflake/") or not os.path.exists(local):
            fail(upath, f"EnvironmentFile={ef}: want /etc/fenceflake/NAME.env with an example deploy/systemd/NAME.env")
            continue
        n, v = parse_env_file(local)
        names += n
        values.update(v)
        sources.update({name: local for name in n})
        cfg = local
        unit_env[local] = (sub, upath)
    state_dirs = unit_values(u, "Service", "StateDirectory")
    if check_settings(cfg, f"{os.path.basename(upath)} ExecStart + {' '.join(env_files)}", sub, names, arg_flags, sources):
        ok(upath, f"every variable and flag is `fenceflake {sub}`'s")
    if sub in ("registry", "worker") and check_tls(cfg, sub, values):
        bad_paths = [values[v] for v in TLS_VARS if not values[v].startswith("/etc/fenceflake/tls/")]
        if bad_paths:
            fail(cfg, f"{sub}: TLS files {bad_paths} outside /etc/fenceflake/tls/ (README.md, \"Certificates\")")
        if "/bin/kill -HUP $MAINPID" not in unit_values(u, "Service", "ExecReload"):
            fail(upath, "want ExecReload=/bin/kill -HUP $MAINPID (`systemctl reload` re-reads the certificates)")
        if sub == "registry" and values.get("FENCEFLAKE_NODE_ID") and not values["FENCEFLAKE_TLS_CERT"].endswith(f"/node-{values['FENCEFLAKE_NODE_ID']}.pem"):
            fail(cfg, f"registry: FENCEFLAKE_TLS_CERT should be node-{values['FENCEFLAKE_NODE_ID']}.pem, this node's certificate")
        ok(upath, "mutual TLS: CA, certificate and key in /etc/fenceflake/tls/, reloaded on `systemctl reload`")
    for k, want in (("KillSignal", "SIGTERM"), ("Restart", "on-failure"), ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict")):
        if want not in unit_values(u, "Service", k):
            fail(upath, f"want {k}={want}")
    if not (unit_values(u, "Service", "DynamicUser") == ["yes"] or unit_values(u, "Service", "User")):
        fail(upath, "run as a dedicated user (DynamicUser=yes or User=)")
    stop = unit_values(u, "Service", "TimeoutStopSec")
    stop_ms = parse_duration_ms(stop[-1]) if stop else 90_000
    if sub in ("worker", "registry") and (stop_ms is None or stop_ms < 10_000):
        fail(upath, f"TimeoutStopSec {stop} is too short for the graceful stop (drain 2 s + release 3 s + margin)")
    dir_var = {"registry": "FENCEFLAKE_DATA_DIR", "worker": "FENCEFLAKE_STATE_DIR"}.get(sub)
    if dir_var and values.get(dir_var) and ["/var/lib/" + s for s in state_dirs] != [values[dir_var]]:
        fail(cfg, f"{dir_var}={values[dir_var]} is not the unit's StateDirectory (/var/lib/{' '.join(state_dirs)})")
    for list_var in ("FENCEFLAKE_REGISTRY", "FENCEFLAKE_INITIAL_CLUSTER"):
        if list_var in values:
            check_list(cfg, sub, list_var, values[list_var])
    if sub == "worker":
        after, wants = unit_values(u, "Unit", "After"), unit_values(u, "Unit", "Wants") + unit_values(u, "Unit", "Requires")
        if "time-sync.target" not in after or not {"chronyd.service", "chrony-wait.service"} <= set(after) or not {"chronyd.service", "chrony-wait.service"} <= set(wants):
            fail(upath, "the worker must be ordered After= time-sync.target and chronyd/chrony-wait, and pull in chronyd.service and chrony-wait.service")
    if sub == "registry" and "FENCEFLAKE_INITIAL_CLUSTER" in values:
        members = parse_initial_cluster(cfg, "registry", values["FENCEFLAKE_INITIAL_CLUSTER"])
        if members:
            node = values.get("FENCEFLAKE_NODE_ID", "")
            if not node.isdigit() or int(node) not in members:
                fail(cfg, f"FENCEFLAKE_NODE_ID={node} is not one of the --initial-cluster ids")
            else:
                peer, client = members[int(node)]
                mine = values.get("FENCEFLAKE_ADVERTISE_PEER_ADDR", values.get("FENCEFLAKE_PEER_ADDR"))
                if mine != peer:
                    fail(cfg, f"node {node} advertises {mine!r} but --initial-cluster says {peer!r}")
                for nid, (p, cl) in members.items():
                    if port_of(p) != port_of(values.get("FENCEFLAKE_PEER_ADDR")) or port_of(cl) != port_of(values.get("FENCEFLAKE_CLIENT_ADDR")):
                        fail(cfg, f"node {nid} ports in --initial-cluster differ from the listen addresses")
            unit_env["clients"] = {cl for _, cl in members.values()}
            ok(cfg, "--initial-cluster = nodes 1..5, this node's advertised peer address is its entry")
    if sub == "worker":
        unit_env["worker_values"] = (cfg, values)
for env_path in sorted(glob.glob("deploy/systemd/*.env")):
    if env_path not in unit_env:
        fail(env_path, "no unit in deploy/systemd uses it (EnvironmentFile=/etc/fenceflake/" + os.path.basename(env_path) + ")")
if "worker_values" in unit_env and "clients" in unit_env:
    upath, values = unit_env["worker_values"]
    unknown = [a for a in values.get("FENCEFLAKE_REGISTRY", "").split(",") if a not in unit_env["clients"]]
    if unknown:
        fail(upath, f"FENCEFLAKE_REGISTRY lists {unknown}, not client addresses of registry.env's --initial-cluster")

# ---- chrony policy ------------------------------------------------------------------------
directives = [line.split() for line in open(CHRONY_PARSED) if line.strip()]
if directives:
    by_name = {}
    for d in directives:
        by_name.setdefault(d[0], []).append(d[1:])
    steps = by_name.get("makestep", [])
    skews = [ms for _, ms in k8s_worker_skews if ms]
    if "worker_values" in unit_env:
        skews.append(parse_duration_ms(unit_env["worker_values"][1].get("FENCEFLAKE_MAX_SKEW", "500ms")))
    min_skew_s = min(skews or [500]) / 1000
    if len(steps) != 1:
        fail(CHRONY_CONF, "want exactly one makestep (boot-time only)")
    else:
        threshold, limit = float(steps[0][0]), int(steps[0][1])
        if not 1 <= limit <= 3:
            fail(CHRONY_CONF, f"makestep limit {limit}: steps must be allowed only in the first 1..3 updates (never -1)")
        if threshold >= min_skew_s:
            fail(CHRONY_CONF, f"makestep threshold {threshold} s must be below the workers' --max-skew ({min_skew_s} s)")
    if by_name.get("leapsecmode") != [["slew"]]:
        fail(CHRONY_CONF, "want leapsecmode slew (the kernel's leap second is a 1 s backward step)")
    rate = by_name.get("maxslewrate")
    if not rate or float(rate[-1][0]) > 1000:
        fail(CHRONY_CONF, "want maxslewrate <= 1000 ppm (bounded slew)")
    if "confdir" in by_name or "include" in by_name:
        fail(CHRONY_CONF, "no confdir/include: another file could re-enable steps")
    if CHRONY_CONF not in bad:
        ok(CHRONY_CONF, "boot-only makestep below --max-skew, bounded slew, leap seconds slewed")

sys.exit(1 if bad else 0)
PY
then
    if grep -q '^FAIL' "$tmp/consistency.out"; then
        grep '^FAIL' "$tmp/consistency.out" >&2
        while read -r _ file _; do fail "${file%:}" "consistency (above)"; done < <(grep '^FAIL' "$tmp/consistency.out" | sort -u -k2,2)
    else
        cat "$tmp/consistency.out" >&2
        fail "deploy/check-manifests.sh" "the consistency checker crashed"
    fi
else
    grep '^ok' "$tmp/consistency.out"
fi

if [[ ${#failures[@]} -gt 0 ]]; then
    echo "deploy/check-manifests.sh: FAILED: $(printf '%s\n' "${failures[@]}" | sort -u | tr '\n' ' ')" >&2
    exit 1
fi
echo "deploy/check-manifests.sh: all deployment files OK"

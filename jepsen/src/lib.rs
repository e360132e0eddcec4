//! fenceflake-jepsen: the Jepsen-style harness for Fenceflake. This library holds its pure
//! core — the run history, the checkers that judge it, and the report that shows it.
//!
//! - [`history`]: the events of a run (`history.jsonl`): client ops against workers,
//!   registry ops, nemesis faults, lease changes reported by workers.
//! - [`checker`]: unique IDs, per-worker monotonicity, lease fencing and deadlines, registry
//!   linearizability (WGL search per worker ID), parking under quorum loss, performance,
//!   availability while a worker is paused, the adversary's forged calls (all refused, no
//!   worker parked), copies of a state dir converging, and workers serving on the cluster's
//!   time while a registry clock is off.
//! - runtime: [`net`] (namespaces, bridge, nftables faults, iptables delay rules), [`delay`]
//!   (the latency nemesis's NFQUEUE packet holder), [`process`] (real processes in
//!   them), [`supervise`] (restart-always for workers that exit on their own), [`scenario`]
//!   (nemesis schedules), [`workload`] (the client, run inside the client namespace),
//!   [`registry_workload`] (its Acquire / Renew / GetLease / Release calls on reserved IDs for
//!   the linearizability checker, over any transport and timeline: the simulator runs it too), [`adversary`] (the `adversary` scenario's forged calls, run by the workload),
//!   [`run`] (one whole run), [`clock`] (the shared monotonic time base),
//!   [`tls`] (each run's CA and one certificate per process, or `--insecure` plaintext).
//! - [`report`]: `results.json` and a self-contained `report.html` with inline SVG plots.
//!
//! A checker says `false` only on proof of a violation and `unknown` when the history
//! cannot show the property either way, so a run is green only when every property was seen
//! to hold.

pub mod adversary;
pub mod checker;
pub mod clock;
pub mod delay;
pub mod history;
pub mod net;
pub mod process;
pub mod registry_workload;
pub mod report;
pub mod run;
pub mod scenario;
pub mod supervise;
pub mod tcp_trace;
pub mod tls;
pub mod workload;

/// libfaketime's preload library, if installed (Debian `libfaketime`): clock nemeses need it.
pub fn faketime_library() -> Option<std::path::PathBuf> {
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
}

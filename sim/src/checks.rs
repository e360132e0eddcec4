//! The checkers a simulated history is judged by: the harness's own (`unique`, `monotonic`,
//! `lease`, `convergence`, the registry's linearizability, parking under quorum loss and the
//! adversary's forged calls), with
//! the settings the simulation's timings call for, and the replicas' check of the nodes'
//! disks.

use std::time::Duration;

use fenceflake_jepsen::checker::adversary::{self, Faults};
use fenceflake_jepsen::checker::linear::{self, Expiry};
use fenceflake_jepsen::checker::{convergence, lease, monotonic, parking, unique, CheckResult, IdLayout};
use fenceflake_jepsen::history::Event;
use fenceflake_jepsen::registry_workload;

use crate::nemesis::{QUORUM_LOSS, QUORUM_LOSS_CALM};
use crate::nodes::{SimNode, COOL_DOWN_MS, RENEW_WINDOW};
use crate::replicas;
use crate::restore::DISASTER;

/// How far a simulated process's monotonic clock may run ahead of true time: each reading
/// taken while simulated time stands still costs 1 µs (`clock.rs`), so this is a hundred
/// thousand readings by one node within one instant — far more than a node takes.
const MONO_LEAD_MAX: Duration = Duration::from_millis(100);

/// When the registry may have expired one of the registry workload's leases.
///
/// A leader re-grants a lease to another holder only after `ttl + cool_down` have passed on
/// its *monotonic* clock since the later of the lease's last renewal (noted when applied, so
/// after the renewal's call) and its own leadership (`registry::expiry`). The nemesis steps
/// and drifts only wall clocks; a simulated monotonic clock is true time, ahead by at most
/// [`MONO_LEAD_MAX`]. So a re-grant returns at least `ttl + cool_down - MONO_LEAD_MAX` after
/// the call of the op that last granted or renewed the lease: `AfterIdle` with that bound is
/// sound here, and much stronger than `Anytime` (the harness's setting, whose processes'
/// clocks it cannot bound as tightly).
fn linear_config() -> linear::Config {
    let idle = Duration::from_millis(registry_workload::LEASE_TTL_MS + COOL_DOWN_MS) - MONO_LEAD_MAX;
    let min_idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
    linear::Config { expiry: Expiry::AfterIdle { min_idle_ns }, ..linear::Config::default() }
}

/// Parking under the nemesis's quorum loss and the disaster (every registry disk lost, until
/// the restore's embargo lifts), for the simulated workers' 3 s leases.
fn parking_config() -> parking::Config {
    parking::Config {
        fault_prefixes: vec![QUORUM_LOSS.to_string(), DISASTER.to_string()],
        // No simulated fault promises that the registry stays reachable (the latency fault
        // is not sized against the TTL, and may add TCP retransmissions of up to a second).
        reachable_prefixes: Vec::new(),
        // The deadline and the IDs' timestamps are both on the worker's wall clock; the
        // nemesis changes no clock during the window, and a drift of at most 2000 ppm moves
        // them apart by at most 6 ms over a 3 s lease, plus the deadline's 2 ms rounding.
        epsilon_ms: 50,
        // A renewal committed just before the window is answered within one registry RPC
        // timeout (TTL/3: 1 s) or abandoned, and the worker's caller records the deadline it
        // states with its next batch, at most 20 ms later.
        commit_grace_ms: 1_200,
        // The nemesis heals everything at the end of the window and then injects nothing for
        // this long: a worker that served before must serve again within it. After a restore
        // the high-water marks lie a renew window past the embargo, so the bound has the
        // window on top (one bound for every window: the quorum loss's is that much looser).
        resume_within_ms: u64::try_from((QUORUM_LOSS_CALM + RENEW_WINDOW).as_millis()).unwrap_or(u64::MAX),
    }
}

/// Every checker over the history, and the replicas' check of the nodes' disks.
pub fn check(events: &[Event], nodes: &[SimNode]) -> Vec<CheckResult> {
    let layout = IdLayout::default();
    vec![
        unique::check(events),
        monotonic::check(events),
        lease::check(events, &layout),
        linear::check(events, &linear_config()),
        parking::check(events, &layout, &parking_config()),
        convergence::check(events),
        // The nemesis parks workers and cuts the adversary off itself: only the forged calls'
        // verdicts are the adversary's.
        adversary::check_with(events, Faults::Others),
        replicas::check(nodes),
    ]
}

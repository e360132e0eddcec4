//! The client machine: the harness's own registry workload
//! (`fenceflake_jepsen::registry_workload`: Acquire, Renew, GetLease, Release on worker IDs
//! reserved for it) talking to every node's client address through the simulated network,
//! for the linearizability checker. Its two processes are the harness's, on the same reserved
//! IDs, which the simulated workers never take: they ask for any ID (`auto`), and the
//! registry grants the lowest free one, far below. The nemesis partitions it like any other
//! machine.

use std::sync::Arc;
use std::time::Duration;

use fenceflake_jepsen::registry_workload::{self, ExpiryRace, Reader, RoundPause, LEASE_TTL_MS, REGISTRY_WORKLOAD_IDS};
use fenceflake_proto::v1::registry_client::RegistryClient;
use tokio::task::JoinHandle;

use crate::net::Net;
use crate::nodes::COOL_DOWN_MS;
use crate::recorder::Recorder;

/// The client machine's name, as the network and the nemesis know it.
pub const MACHINE: &str = "client";
/// Between rounds: ten times the harness's pause. Each call is a Raft write, replicated to
/// five nodes and snapshotted, and at the harness's pace the client's calls took most of a
/// run's real time (10× real time for seeds 0..100 instead of 57×); a few hundred calls per run
/// still give every fault a window with calls in flight.
const ROUND_PAUSE: RoundPause = RoundPause { min_ms: 50, max_ms: 500 };
/// A third of the rounds end in a race at expiry (`ExpiryRace`: the holder renews as a new
/// holder asks for the ID, the compare-and-set's schedule). The race starts when a leader that
/// applied the last renewal has expired the lease, and up to 60 ms later: the client hears of
/// that renewal a hop or two after the leader applied it, a few ms in the simulated network, and
/// the race is won or lost within the Raft commit of one of the two calls.
const EXPIRY_RACE: ExpiryRace = ExpiryRace {
    per_mille: 333,
    after: Duration::from_millis(LEASE_TTL_MS + COOL_DOWN_MS),
    spread: Duration::from_millis(60),
};
/// Each process's reader: a `GetLease` of the ID it is on every 30–90 ms, for the first reads
/// of a leadership (`Reader`).
const READER: Reader = Reader { pause: RoundPause { min_ms: 30, max_ms: 90 } };
/// Its one process (it is never killed).
const PROCESS: &str = "client#1";

/// Start the workload's processes, each until `until` of simulated time has passed since the
/// run began; their random choices come from `seed`. Returns the process and its tasks, for
/// the restore to stop (dropping the runtime at the end of the run ends them otherwise).
pub fn start(
    net: &Arc<Net>,
    recorder: &Arc<Recorder>,
    registry: &[String],
    seed: u64,
    until: Duration,
) -> Vec<(&'static str, JoinHandle<()>)> {
    net.set_running(PROCESS, true);
    let end_ns = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX);
    let mut tasks = Vec::new();
    for (index, first_id) in (0u64..).zip(REGISTRY_WORKLOAD_IDS) {
        // The harness's process numbers, so a simulated history reads like a harness one.
        let process = 1000 + index;
        let workload = registry_workload::Process {
            process,
            first_id,
            seed: seed.wrapping_add(index),
            round_pause: ROUND_PAUSE,
            expiry_race: Some(EXPIRY_RACE),
            reader: Some(READER),
        };
        let clients = registry.iter().map(|addr| RegistryClient::new(net.channel(PROCESS, addr))).collect();
        let recorder = recorder.clone();
        let task = tokio::spawn(async move { registry_workload::run(workload, clients, end_ns, &*recorder).await });
        tasks.push((PROCESS, task));
    }
    tasks
}

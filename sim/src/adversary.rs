//! The adversary machine: the harness's own forger (`fenceflake_jepsen::adversary`) with the
//! identity `worker/adversary`, from the start until the faults end, forging every call the
//! trust boundary must refuse (another worker's lease renewed or released with its true
//! token, stale tokens that try to trip the canary, another holder's ID, every operator RPC,
//! calls without a certificate or with one of another CA) against the simulated workers'
//! leases, through every node's client address; the harness's `adversary` checker judges
//! them. The nemesis partitions and pauses it like any other machine.
//!
//! Its scout is what the workers state in their replies (`Generate` answers carry the token):
//! the latest lease each running worker reported, from the history, with its holder ID, when
//! nothing since can have ended it early; checked again just before forging against it, since
//! the nemesis kills workers (whose IDs may come free) mid-round.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fenceflake_jepsen::adversary::{Adversary, Callers, Scout, Victim, CALL_TIMEOUT};
use fenceflake_jepsen::history::{Event, LeaseEvent, LeaseEventKind, ProcessEventKind};
use fenceflake_proto::tls::Peer;
use fenceflake_proto::v1::registry_client::RegistryClient;
use fenceflake_registry::raft::types::NodeId;
use tokio::task::JoinHandle;

use crate::net::Net;
use crate::nodes::client_addr;
use crate::recorder::Recorder;

/// The adversary's machine, as the network, the nemesis and `identity.rs` know it.
pub const MACHINE: &str = "adversary";
/// Its one process (never killed).
const PROCESS: &str = "adversary#1";
/// Between rounds: a round forges about a hundred calls, each a Raft write or a refusal, and
/// a few rounds a second would cost most of a run's real time; one every 1–2 s still puts
/// forged calls inside every fault's window.
const ROUND_PAUSE: Duration = Duration::from_millis(1_500);

/// The serving workers' leases, as the history has them.
struct History {
    recorder: Arc<Recorder>,
    net: Arc<Net>,
    /// How many events `latest` and `copied` have taken in.
    seen: usize,
    /// Each worker's latest lease event, or `None` once something may have ended it early.
    latest: BTreeMap<String, Option<LeaseEvent>>,
    /// Workers whose state dir was copied, and the copies.
    copied: BTreeSet<String>,
}

impl History {
    /// Each running worker's lease, if its latest lease event says it serves one and nothing
    /// since could have ended it early: no exit or restart (`Process` events), no kill or
    /// restart by the nemesis (a new process's first Acquire takes the lease over, or gives
    /// its ID up), and never a copy of its state dir (a copy's Acquire supersedes the source's
    /// lease, which may give its ID up at once). A paused worker shows nothing either. And its
    /// deadline must be more than one forged call away: the registry expires a lease no sooner
    /// than its worker's deadline, so a forged Acquire answered within its timeout found the
    /// lease held (the nemesis pauses nodes and workers, never the adversary).
    fn serving(&mut self) -> BTreeMap<String, LeaseEvent> {
        let timeout_ns = u64::try_from(CALL_TIMEOUT.as_nanos()).unwrap_or(u64::MAX);
        let held_until = self.recorder.now_ns().saturating_add(timeout_ns);
        let (latest, copied) = (&mut self.latest, &mut self.copied);
        self.seen = self.recorder.visit_since(self.seen, |event| match event {
            Event::Lease(lease) => {
                latest.insert(lease.worker.clone(), Some(lease.clone()));
            }
            Event::Process(process) => {
                copied.extend(process.copy_of.clone());
                if process.event == ProcessEventKind::Cloned {
                    copied.insert(process.process.clone());
                }
                latest.insert(process.process.clone(), None);
            }
            Event::Nemesis(fault) if fault.name == "kill" => {
                let worker = fault.detail.split(' ').next().unwrap_or_default();
                latest.insert(worker.to_string(), None);
            }
            _ => {}
        });
        let serving =
            [LeaseEventKind::Acquired, LeaseEventKind::Renewed, LeaseEventKind::Resumed, LeaseEventKind::Restated];
        self.latest
            .iter()
            .filter_map(|(worker, lease)| Some((worker, lease.as_ref()?)))
            .filter(|(_, lease)| serving.contains(&lease.event) && lease.deadline_mono_ns > Some(held_until))
            .filter(|(worker, _)| !self.copied.contains(*worker) && self.net.machine_runs(worker))
            .map(|(worker, lease)| (worker.clone(), lease.clone()))
            .collect()
    }
}

impl Scout for History {
    async fn victims(&mut self) -> Vec<Victim> {
        self.serving()
            .into_values()
            .filter_map(|l| {
                let holder = self.recorder.holder_of_alias(l.holder.as_deref()?)?;
                Some(Victim { worker_id: l.worker_id, token: l.token, holder })
            })
            .collect()
    }

    async fn still_holds(&mut self, victim: &Victim) -> bool {
        self.serving().values().any(|l| l.worker_id == victim.worker_id && l.token == victim.token)
    }
}

/// Start the adversary, forging until `until` of simulated time; its made-up tokens come
/// from `seed`. Returns its process and task, for the restore to stop.
pub fn start(
    net: &Arc<Net>,
    recorder: &Arc<Recorder>,
    members: &[NodeId],
    seed: u64,
    until: Duration,
) -> (&'static str, JoinHandle<()>) {
    net.set_running(PROCESS, true);
    let clients = |peer: Option<Peer>| -> Vec<RegistryClient<_>> {
        members
            .iter()
            .map(|id| {
                let addr = client_addr(*id);
                let channel = match &peer {
                    None => net.channel(PROCESS, &addr),
                    Some(peer) => net.channel_as(PROCESS, &addr, peer.clone()),
                };
                RegistryClient::new(channel)
            })
            .collect()
    };
    let callers = Callers {
        names: members.iter().map(|id| format!("r{id}")).collect(),
        own: clients(None),
        // What the TLS acceptor records for a plaintext caller, and for a certificate it
        // cannot chain to the cluster CA (the handshake itself is the harness's business).
        plaintext: Some(clients(Some(Peer::Plaintext))),
        foreign: Some(clients(Some(Peer::Unrecognized("a certificate of another CA".into())))),
    };
    let adversary = Adversary::new(
        callers,
        History {
            recorder: recorder.clone(),
            net: net.clone(),
            seen: 0,
            latest: BTreeMap::new(),
            copied: BTreeSet::new(),
        },
        recorder.clone(),
        seed,
        ROUND_PAUSE,
    );
    let stop_ns = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX);
    (PROCESS, tokio::spawn(adversary.run(0, stop_ns)))
}

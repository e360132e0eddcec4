//! Who each simulated machine is to the servers it calls: the identity its certificate would
//! carry, which the simulated network attaches to every request as the TLS acceptor would
//! (`Peer::Verified`), so the registry's real authorization (roles per RPC, leases bound to
//! identities, peers speaking only for themselves) runs on every call.
//!
//! The names follow the harness's certificates (`fenceflake_jepsen::tls`): `node/<id>` per
//! registry node, `worker/<host>` per worker machine, `worker/linearizability` for the
//! registry client, `operator/harness` for the operator replacing registry members
//! (`membership.rs`), `worker/adversary` for the adversary. A copy of a worker's state dir runs under its source's identity, as the
//! harness's copies do (a cloned VM keeps the certificate beside the state dir): the copies
//! of one holder ID are then one identity to the registry, which supersedes all but one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use fenceflake_jepsen::history::{Event, ProcessEventKind};
use fenceflake_jepsen::{adversary, tls};
use fenceflake_proto::tls::{PeerIdentity, Role};

use crate::recorder::Recorder;
use crate::registry_client;

/// Every simulated machine's identity, resolved once per machine.
#[derive(Debug)]
pub struct Identities {
    /// Where copies of state dirs are recorded (`Cloned` process events).
    recorder: Arc<Recorder>,
    known: Mutex<BTreeMap<String, PeerIdentity>>,
}

fn identity((role, name): (Role, &str)) -> PeerIdentity {
    PeerIdentity { trust_domain: tls::TRUST_DOMAIN.to_string(), role, name: name.to_string() }
}

impl Identities {
    pub fn new(recorder: Arc<Recorder>) -> Identities {
        Identities { recorder, known: Mutex::default() }
    }

    /// The identity of `machine` (a machine name, not `machine#start`).
    pub fn of(&self, machine: &str) -> PeerIdentity {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = known.get(machine) {
            return found.clone();
        }
        let found = self.resolve(machine);
        known.insert(machine.to_string(), found.clone());
        found
    }

    fn resolve(&self, machine: &str) -> PeerIdentity {
        let node = machine.strip_prefix('r').filter(|id| id.parse::<u64>().is_ok());
        match machine {
            registry_client::MACHINE => identity((Role::Worker, tls::WORKLOAD_REGISTRY.1)),
            crate::adversary::MACHINE => identity((Role::Worker, adversary::IDENTITY.1)),
            crate::membership::MACHINE => identity((Role::Operator, tls::CONTROLLER.1)),
            _ if node.is_some() => identity((Role::Node, node.unwrap_or_default())),
            worker => identity((Role::Worker, &self.original(worker))),
        }
    }

    /// The machine whose state dir `worker`'s was copied from, first of the chain of copies.
    fn original(&self, worker: &str) -> String {
        let events = self.recorder.events();
        let mut name = worker.to_string();
        while let Some(source) = events.iter().find_map(|event| match event {
            Event::Process(p) if p.event == ProcessEventKind::Cloned && p.process == name => p.copy_of.clone(),
            _ => None,
        }) {
            name = source;
        }
        name
    }
}

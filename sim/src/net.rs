//! The simulated network: every gRPC call of the registry's peers and of the workers goes
//! through a [`SimChannel`], which hands the encoded request straight to the target node's
//! generated tonic server (so prost encoding, validation, authorization and the services'
//! code all run) after a one-way delay drawn from the run's seed, and brings the answer back
//! after another.
//!
//! Faults, all decided from the seed: latency and jitter per hop; packet loss as TCP sees it
//! (a retransmission: extra delay); duplicated requests (a proxy or a client library that
//! retries a call whose answer it did not see: the server runs it twice, the caller sees one
//! answer; never the registry client's, the adversary's nor a node's `Forward` or
//! `ForwardRenewals`, see
//! [`duplicable`]); directed cuts (a partition, one-way or both ways), under
//! which a request or its answer is lost and the caller waits out its own timeout, as behind
//! a firewall DROP rule; a stopped process, whose port refuses at once (`UNAVAILABLE`); a
//! paused machine (SIGSTOP, a suspended VM), which neither sends nor answers until it runs
//! again: what it sent is sent then, what reached it waits in its socket buffers, and its
//! callers' timeouts run meanwhile.
//!
//! Every request carries its caller's identity (`identity.rs`) as a verified TLS connection
//! would; the servers run `Security::Transport`, so authorization runs as under mutual TLS.
//!
//! What it does not model (the harness does): HTTP/2 connections, their keepalives and flow
//! control, TLS handshakes and certificate checks, and bytes on a wire (a message is delivered whole or not at all).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use fenceflake_proto::channel::{BoxChannel, ChannelError};
use fenceflake_proto::tls::{ConnInfo, Peer, PeerIdentity};
use fenceflake_registry::server::ServedServices;
use http_body_util::{BodyExt, Full};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::Bytes;
use tower::{Service, ServiceExt};

use crate::identity::Identities;
use crate::{adversary, registry_client};

/// Which of a node's services an address reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Peer,
    Client,
}

/// How slow the network is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    /// One-way delay of a hop, uniformly in `[min_us, max_us]`.
    pub min_us: u64,
    pub max_us: u64,
    /// Per mille of hops that lose a packet and wait for TCP's retransmission.
    pub loss_per_mille: u32,
    /// Per mille of requests delivered twice, the copy a little later.
    pub duplicate_per_mille: u32,
}

impl Latency {
    pub const CALM: Latency = Latency { min_us: 100, max_us: 1_000, loss_per_mille: 0, duplicate_per_mille: 0 };
}

/// TCP's first retransmission timeout (Linux: 200 ms minimum), then it doubles.
const RETRANSMIT_MS: (u64, u64) = (200, 1_000);

#[derive(Debug)]
struct NetState {
    rng: StdRng,
    latency: Latency,
    /// Directed cuts between machines: `(from, to)` loses everything from `from` to `to`.
    cuts: BTreeSet<(String, String)>,
    /// Processes that run now (`machine#start`); the rest refuse connections, and what a
    /// dead process's leftover tasks send is lost.
    running: BTreeSet<String>,
    /// Address → (the process serving it now, its services, which port).
    addresses: BTreeMap<String, (String, ServedServices, Port)>,
    /// Machines paused now: their processes neither send nor receive.
    paused: BTreeSet<String>,
}

/// The one network of a run.
#[derive(Debug)]
pub struct Net {
    state: Mutex<NetState>,
    /// Bumped whenever a machine runs again, to wake what waits for it.
    resumed: watch::Sender<u64>,
    /// Who each machine is to the servers it calls.
    identities: Identities,
}

/// The machine a process (`machine#start`) runs on.
pub fn machine(process: &str) -> &str {
    process.split('#').next().unwrap_or(process)
}

impl NetState {
    fn cut(&self, from: &str, to: &str) -> bool {
        self.cuts.contains(&(machine(from).to_string(), machine(to).to_string()))
    }
}

/// What happens to a hop, decided when it is sent.
enum Fate {
    Refused(String),
    /// Delivered after `delay`; and once more after `again`, if it is duplicated.
    Travels {
        delay: Duration,
        to: String,
        again: Option<Duration>,
    },
}

impl Net {
    pub fn new(seed: u64, identities: Identities) -> Arc<Net> {
        Arc::new(Net {
            state: Mutex::new(NetState {
                rng: StdRng::seed_from_u64(seed),
                latency: Latency::CALM,
                cuts: BTreeSet::new(),
                running: BTreeSet::new(),
                addresses: BTreeMap::new(),
                paused: BTreeSet::new(),
            }),
            resumed: watch::Sender::new(0),
            identities,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `process` (`machine#start`) serves `port` of `services` at `addr`.
    pub fn bind(&self, addr: &str, process: &str, services: ServedServices, port: Port) {
        self.lock().addresses.insert(addr.to_string(), (process.to_string(), services, port));
    }

    /// Forget every bound service, at the end of a run. A node's services hold its Raft,
    /// whose peer connector holds this network: without this the cycle kept every run's
    /// cluster (tables, disks, logs) alive until the process exited, about 20 MB a seed.
    pub fn unbind_all(&self) {
        self.lock().addresses.clear();
    }

    pub fn set_running(&self, process: &str, running: bool) {
        let mut state = self.lock();
        if running {
            state.running.insert(process.to_string());
        } else {
            state.running.remove(process);
        }
    }

    pub fn set_latency(&self, latency: Latency) {
        self.lock().latency = latency;
    }

    /// Lose everything from `from` to `to` until [`Net::heal`]; whether it was not cut yet.
    pub fn cut(&self, from: &str, to: &str) -> bool {
        self.lock().cuts.insert((from.to_string(), to.to_string()))
    }

    /// Heal the cut from `from` to `to` alone.
    pub fn uncut(&self, from: &str, to: &str) {
        self.lock().cuts.remove(&(from.to_string(), to.to_string()));
    }

    /// Heal every cut to or from `machine`.
    pub fn heal_machine(&self, machine: &str) {
        self.lock().cuts.retain(|(from, to)| from != machine && to != machine);
    }

    /// Every cut healed and the latency calm again.
    pub fn heal(&self) {
        let mut state = self.lock();
        state.cuts.clear();
        state.latency = Latency::CALM;
    }

    /// `machine` stops running (SIGSTOP, or its VM suspended) until [`Net::resume`].
    pub fn pause(&self, machine: &str) {
        self.lock().paused.insert(machine.to_string());
    }

    pub fn resume(&self, machine: &str) {
        if self.lock().paused.remove(machine) {
            self.resumed.send_modify(|generation| *generation += 1);
        }
    }

    pub fn is_paused(&self, machine: &str) -> bool {
        self.lock().paused.contains(machine)
    }

    /// Whether a process of `name` runs now, and the machine is not paused.
    pub fn machine_runs(&self, name: &str) -> bool {
        let state = self.lock();
        !state.paused.contains(name) && state.running.iter().any(|process| machine(process) == name)
    }

    /// Returns once the machine of `process` (a machine or `machine#start`) runs.
    pub async fn until_running(&self, process: &str) {
        let mut resumed = self.resumed.subscribe();
        while self.is_paused(machine(process)) {
            // The sender lives as long as the net, which outlives every caller.
            if resumed.changed().await.is_err() {
                return;
            }
        }
    }

    /// A channel from `from` to whatever serves `addr`, authenticated as `from`'s machine.
    pub fn channel(self: &Arc<Self>, from: &str, addr: &str) -> BoxChannel {
        let peer = Peer::Verified(self.identity(from));
        self.channel_as(from, addr, peer)
    }

    /// A channel from `from` to `addr` on which the servers see `peer` (a caller without a
    /// certificate, or with one they do not accept), whoever `from` is.
    pub fn channel_as(self: &Arc<Self>, from: &str, addr: &str, peer: Peer) -> BoxChannel {
        BoxChannel::new(SimChannel { net: self.clone(), from: from.to_string(), addr: addr.to_string(), peer })
    }

    /// The identity of the machine of `process` (a machine or `machine#start`).
    pub fn identity(&self, process: &str) -> PeerIdentity {
        self.identities.of(machine(process))
    }

    fn delay(state: &mut NetState) -> Duration {
        let Latency { min_us, max_us, loss_per_mille, .. } = state.latency;
        let mut us = state.rng.gen_range(min_us..=max_us.max(min_us));
        if state.rng.gen_range(0..1_000) < loss_per_mille {
            us += state.rng.gen_range(RETRANSMIT_MS.0..=RETRANSMIT_MS.1) * 1_000;
        }
        Duration::from_micros(us)
    }

    /// `duplicable`: whether a retrying intermediary may run this request twice.
    fn send(&self, from: &str, addr: &str, duplicable: bool) -> Fate {
        let mut state = self.lock();
        let Some((to, _, _)) = state.addresses.get(addr) else {
            return Fate::Refused(format!("no such address {addr}"));
        };
        let to = to.clone();
        if !state.running.contains(from) {
            return Fate::Refused(format!("{from} is not running"));
        }
        let delay = Net::delay(&mut state);
        let duplicated = state.rng.gen_range(0..1_000) < state.latency.duplicate_per_mille && duplicable;
        let again = duplicated.then(|| delay + Net::delay(&mut state));
        Fate::Travels { delay, to, again }
    }

    /// The service a hop from `from` reaches on arrival: `Ok(None)` if the hop was lost.
    fn arrive(&self, from: &str, addr: &str) -> Result<Option<BoxChannel>, String> {
        let state = self.lock();
        let Some((to, services, port)) = state.addresses.get(addr) else {
            return Err(format!("no such address {addr}"));
        };
        if state.cut(from, to) || !state.running.contains(from) {
            return Ok(None);
        }
        if !state.running.contains(to) {
            return Err(format!("{addr}: connection refused ({to} is down)"));
        }
        let slot = match port {
            Port::Peer => &services.peer,
            Port::Client => &services.client,
        };
        ServedServices::get(slot).map(Some).ok_or_else(|| format!("{addr}: connection refused (not serving yet)"))
    }

    /// Whether the answer from `to` reaches `from`, and after how long.
    fn answer(&self, to: &str, from: &str) -> Option<Duration> {
        let mut state = self.lock();
        let lost = state.cut(to, from) || !state.running.contains(to) || !state.running.contains(from);
        (!lost).then(|| Net::delay(&mut state))
    }
}

impl Net {
    /// Carry `request` from `from` to `addr` (served by `to`) after `delay`, and serve it;
    /// `Ok(None)` if it was lost on the way.
    async fn deliver(
        &self,
        from: &str,
        addr: &str,
        to: &str,
        delay: Duration,
        peer: Peer,
        mut request: http::Request<Body>,
    ) -> Result<Option<http::Response<Body>>, ChannelError> {
        tokio::time::sleep(delay).await;
        // What reaches a paused machine waits for it in its socket buffer.
        self.until_running(to).await;
        let Some(service) = self.arrive(from, addr).map_err(unavailable)? else {
            return Ok(None);
        };
        // What the TLS acceptor would record for the connection (`Security::Transport`).
        request.extensions_mut().insert(ConnInfo { remote_addr: None, peer });
        Ok(Some(service.oneshot(request).await?))
    }
}

/// Two identical requests from one: the body read whole, then given to both.
async fn twins(request: http::Request<Body>) -> Result<(http::Request<Body>, http::Request<Body>), ChannelError> {
    let (parts, body) = request.into_parts();
    let bytes = body.collect().await.map_err(|e| ChannelError::new(tonic::Status::internal(e.to_string())))?.to_bytes();
    let copy = |bytes: Bytes| {
        let mut twin = http::Request::new(Body::new(Full::new(bytes)));
        *twin.method_mut() = parts.method.clone();
        *twin.uri_mut() = parts.uri.clone();
        *twin.version_mut() = parts.version;
        *twin.headers_mut() = parts.headers.clone();
        *twin.extensions_mut() = parts.extensions.clone();
        twin
    };
    Ok((copy(bytes.clone()), copy(bytes)))
}

/// Whether a request may be duplicated: not those of the machines whose checkers account for
/// every effect of their calls — the registry client (the linearizability checker takes an
/// op's answer for its only effect: a copy served later would run an Acquire again after its
/// Release) and the adversary (a copy of its Acquire served after it released its lease grants
/// it a lease whose token it never heard of, which its reads then report as leaked) — and not
/// a node's `Forward` (or `ForwardRenewals`) of callers' requests, which the product sends once, with no retry, over
/// a mutual-TLS connection pinned to the target node (no retrying proxy sits in it); a worker's
/// duplicated request still reaches the leader twice, forwarded once per copy. Everything else may: the workers' calls (a proxy or client library retrying) and
/// Raft's own messages.
fn duplicable(from: &str, path: &str) -> bool {
    ![registry_client::MACHINE, adversary::MACHINE].contains(&machine(from))
        && !path.ends_with("/Forward")
        && !path.ends_with("/ForwardRenewals")
}

/// The duplicate of a request, served once more after `again`; nobody hears its answer.
async fn deliver_copy(
    net: Arc<Net>,
    from: String,
    addr: String,
    to: String,
    again: Duration,
    peer: Peer,
    copy: http::Request<Body>,
) {
    // An error or a loss of the copy is no one's business: its caller has its answer.
    let _ = net.deliver(&from, &addr, &to, again, peer, copy).await;
}

/// A client's channel to one address.
#[derive(Debug, Clone)]
struct SimChannel {
    net: Arc<Net>,
    from: String,
    addr: String,
    /// Who the servers see calling.
    peer: Peer,
}

fn unavailable(why: String) -> ChannelError {
    ChannelError::new(tonic::Status::unavailable(why))
}

impl Service<http::Request<Body>> for SimChannel {
    type Response = http::Response<Body>;
    type Error = ChannelError;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, ChannelError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ChannelError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let SimChannel { net, from, addr, peer } = self.clone();
        Box::pin(async move {
            // A paused process sends nothing until it runs again.
            net.until_running(&from).await;
            let duplicable = duplicable(&from, request.uri().path());
            let (delay, to) = match net.send(&from, &addr, duplicable) {
                Fate::Refused(why) => return Err(unavailable(why)),
                Fate::Travels { delay, to, again: None } => (delay, to),
                Fate::Travels { delay, to, again: Some(again) } => {
                    let (original, copy) = twins(request).await?;
                    request = original;
                    let (net, from, addr) = (net.clone(), from.clone(), addr.clone());
                    tokio::spawn(deliver_copy(net, from, addr, to.clone(), again, peer.clone(), copy));
                    (delay, to)
                }
            };
            let Some(response) = net.deliver(&from, &addr, &to, delay, peer, request).await? else {
                // Lost on the way: the caller's own timeout ends the call.
                return std::future::pending().await;
            };
            match net.answer(&to, &from) {
                Some(back) => {
                    tokio::time::sleep(back).await;
                    net.until_running(&from).await;
                    Ok(response)
                }
                None => std::future::pending().await,
            }
        })
    }
}

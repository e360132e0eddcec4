//! The simulated network: every gRPC call of the registry's peers and of the workers goes
//! through a [`SimChannel`], which hands the encoded request straight to the target node's
//! generated tonic server (so prost encoding, validation, authorization and the services'
//! code all run) after a one-way delay drawn from the run's seed, and brings the answer back
//! after another.
//!
//! Faults, all decided from the seed: latency and jitter per hop; packet loss as TCP sees it
//! (a retransmission: extra delay); directed cuts (a partition, one-way or both ways), under
//! which a request or its answer is lost and the caller waits out its own timeout, as behind
//! a firewall DROP rule; a stopped process, whose port refuses at once (`UNAVAILABLE`).
//!
//! What it does not model (the harness does): HTTP/2 connections, their keepalives and flow
//! control, TLS handshakes, and bytes on a wire (a message is delivered whole or not at all).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use fenceflake_proto::channel::{BoxChannel, ChannelError};
use fenceflake_proto::tls::{ConnInfo, Peer};
use fenceflake_registry::server::ServedServices;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::body::Body;
use tonic::codegen::http;
use tower::{Service, ServiceExt};

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
}

impl Latency {
    pub const CALM: Latency = Latency { min_us: 100, max_us: 1_000, loss_per_mille: 0 };
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
}

/// The one network of a run.
#[derive(Debug)]
pub struct Net {
    state: Mutex<NetState>,
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
    Travels { delay: Duration, to: String },
}

impl Net {
    pub fn new(seed: u64) -> Arc<Net> {
        Arc::new(Net {
            state: Mutex::new(NetState {
                rng: StdRng::seed_from_u64(seed),
                latency: Latency::CALM,
                cuts: BTreeSet::new(),
                running: BTreeSet::new(),
                addresses: BTreeMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `process` (`machine#start`) serves `port` of `services` at `addr`.
    pub fn bind(&self, addr: &str, process: &str, services: ServedServices, port: Port) {
        self.lock().addresses.insert(addr.to_string(), (process.to_string(), services, port));
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

    /// Lose everything from `from` to `to` until [`Net::heal`].
    pub fn cut(&self, from: &str, to: &str) {
        self.lock().cuts.insert((from.to_string(), to.to_string()));
    }

    /// Every cut healed and the latency calm again.
    pub fn heal(&self) {
        let mut state = self.lock();
        state.cuts.clear();
        state.latency = Latency::CALM;
    }

    /// A channel from `from` to whatever serves `addr`.
    pub fn channel(self: &Arc<Self>, from: &str, addr: &str) -> BoxChannel {
        BoxChannel::new(SimChannel { net: self.clone(), from: from.to_string(), addr: addr.to_string() })
    }

    fn delay(state: &mut NetState) -> Duration {
        let Latency { min_us, max_us, loss_per_mille } = state.latency;
        let mut us = state.rng.gen_range(min_us..=max_us.max(min_us));
        if state.rng.gen_range(0..1_000) < loss_per_mille {
            us += state.rng.gen_range(RETRANSMIT_MS.0..=RETRANSMIT_MS.1) * 1_000;
        }
        Duration::from_micros(us)
    }

    fn send(&self, from: &str, addr: &str) -> Fate {
        let mut state = self.lock();
        let Some((to, _, _)) = state.addresses.get(addr) else {
            return Fate::Refused(format!("no such address {addr}"));
        };
        let to = to.clone();
        if !state.running.contains(from) {
            return Fate::Refused(format!("{from} is not running"));
        }
        Fate::Travels { delay: Net::delay(&mut state), to }
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

/// A client's channel to one address.
#[derive(Debug, Clone)]
struct SimChannel {
    net: Arc<Net>,
    from: String,
    addr: String,
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
        let SimChannel { net, from, addr } = self.clone();
        Box::pin(async move {
            let (delay, to) = match net.send(&from, &addr) {
                Fate::Refused(why) => return Err(unavailable(why)),
                Fate::Travels { delay, to } => (delay, to),
            };
            tokio::time::sleep(delay).await;
            let Some(service) = net.arrive(&from, &addr).map_err(unavailable)? else {
                // Lost on the way: the caller's own timeout ends the call.
                return std::future::pending().await;
            };
            // Every simulated server runs `--insecure`: the caller is not authenticated.
            request.extensions_mut().insert(ConnInfo { remote_addr: None, peer: Peer::Unchecked });
            let response = service.oneshot(request).await?;
            match net.answer(&to, &from) {
                Some(back) => {
                    tokio::time::sleep(back).await;
                    Ok(response)
                }
                None => std::future::pending().await,
            }
        })
    }
}

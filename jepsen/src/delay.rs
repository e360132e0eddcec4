//! The latency nemesis's packet holder: this kernel has no `sch_netem` (`tc qdisc ... netem`
//! fails with "Specified qdisc kind is unknown") and no `nft queue` expression
//! (`CONFIG_NFT_QUEUE` is off), but it has the xtables `NFQUEUE` target and bridge netfilter.
//! So [`crate::net::Network::apply_delays`] sends each delayed link's bridged packets to a
//! netfilter queue with an iptables rule in the bridge namespace, and a thread of the harness,
//! moved into that namespace, holds each packet for its link's delay plus jitter and then
//! accepts it (crate `nfq`: netlink, no C library).
//!
//! Packet order is kept per link: a packet is never released before the one queued ahead of
//! it on the same link (its release time is the later of its own and its predecessor's), so
//! jitter spreads delays without reordering a TCP stream (reordering would add duplicate
//! ACKs and spurious retransmissions on top of the delay). A packet is never held longer than
//! its link's delay + jitter, since its predecessor arrived no later with no longer a bound.
//!
//! The queue is bound fail-open and the rules carry `--queue-bypass`: a full queue, or no
//! thread listening (stopped, or the harness gone), lets packets through undelayed instead of
//! dropping them. Stopping releases every held packet at once. Stop the thread *before*
//! replacing or removing the rules: replacing the table unregisters its hook, and the kernel
//! drops every packet still queued from it.

use std::collections::{BTreeMap, BinaryHeap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The netfilter queue the rules send delayed packets to.
pub const QUEUE_NUM: u16 = 0;
/// Packets the kernel may hold for us: far above what a few hundred ms of the cluster's
/// registry traffic needs; beyond it the queue fails open.
const QUEUE_MAX_LEN: u32 = 16_384;
/// Bytes of each packet copied to us: the IPv4 header's addresses are all we read.
const COPY_BYTES: u16 = 20;
/// How often the thread wakes when nothing is due sooner: the release precision.
const POLL: Duration = Duration::from_millis(1);

/// One delayed direction between two addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub from: Ipv4Addr,
    pub to: Ipv4Addr,
    pub delay: Duration,
    pub jitter: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DelayError {
    #[error("cannot enter network namespace {netns}: {source}")]
    Netns { netns: String, source: std::io::Error },
    #[error("netfilter queue {QUEUE_NUM}: {what}: {source} (is nfnetlink_queue in the kernel?)")]
    Queue { what: &'static str, source: std::io::Error },
    #[error("the delay thread: {0}")]
    Thread(String),
}

/// When each packet of the delayed links goes: the link table, each link's last release (to
/// keep order), and the seeded jitter source.
#[derive(Debug)]
pub struct Schedule {
    links: BTreeMap<(Ipv4Addr, Ipv4Addr), Link>,
    last_release: BTreeMap<(Ipv4Addr, Ipv4Addr), Instant>,
    rng: StdRng,
}

impl Schedule {
    pub fn new(links: &[Link], seed: u64) -> Schedule {
        Schedule {
            links: links.iter().map(|l| ((l.from, l.to), *l)).collect(),
            last_release: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// When a packet from `from` to `to` that arrived at `now` may go: `None` for a link
    /// that is not delayed (accept at once).
    pub fn release_at(&mut self, now: Instant, from: Ipv4Addr, to: Ipv4Addr) -> Option<Instant> {
        let link = self.links.get(&(from, to))?;
        let jitter = Duration::from_nanos(self.rng.gen_range(0..=link.jitter.as_nanos() as u64));
        let own = now + link.delay + jitter;
        let last = self.last_release.entry((from, to)).or_insert(own);
        *last = (*last).max(own);
        Some(*last)
    }
}

/// The source and destination of an IPv4 packet (the payload a queue hands over starts at
/// the network header); `None` for anything else.
pub fn addresses(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let header: &[u8; 20] = packet.get(..20)?.try_into().ok()?;
    if header[0] >> 4 != 4 {
        return None;
    }
    let from = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
    let to = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
    Some((from, to))
}

/// What a delay thread did, for the nemesis record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DelayStats {
    pub delayed: u64,
    /// Queued packets of no delayed link (accepted at once): zero unless the rules and the
    /// table disagree.
    pub passed: u64,
    /// Verdicts the kernel refused (the packet was gone).
    pub failed_verdicts: u64,
    pub longest_hold: Duration,
}

impl std::fmt::Display for DelayStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} packets delayed (longest held {} ms), {} passed undelayed, {} verdicts refused",
            self.delayed,
            self.longest_hold.as_millis(),
            self.passed,
            self.failed_verdicts
        )
    }
}

/// A packet waiting for its release time; the heap's top is the earliest (then the first
/// queued).
struct Held {
    release: Instant,
    arrived: Instant,
    seq: u64,
    message: nfq::Message,
}

impl PartialEq for Held {
    fn eq(&self, other: &Held) -> bool {
        (self.release, self.seq) == (other.release, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Held) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Held) -> std::cmp::Ordering {
        (other.release, other.seq).cmp(&(self.release, self.seq))
    }
}

/// A running delay thread inside a network namespace. [`DelayQueue::stop`] (or dropping it)
/// releases every held packet and leaves the queue.
#[derive(Debug)]
pub struct DelayQueue {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<DelayStats, DelayError>>>,
}

impl DelayQueue {
    /// Enter network namespace `netns` (by its `ip netns` name) on a new thread, bind the
    /// queue and start holding packets of `links`; returns once the queue is bound, or why it
    /// could not be.
    pub fn start(netns: &str, links: &[Link], seed: u64) -> Result<DelayQueue, DelayError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let netns = netns.to_string();
        let schedule = Schedule::new(links, seed);
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("delay-queue".into())
            .spawn(move || {
                let queue = match enter(&netns).and_then(|()| bind()) {
                    Ok(queue) => {
                        let _ = ready_tx.send(Ok(()));
                        queue
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return Ok(DelayStats::default());
                    }
                };
                hold(queue, schedule, &flag)
            })
            .map_err(|e| DelayError::Thread(e.to_string()))?;
        let mut running = DelayQueue { stop, thread: Some(thread) };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(running),
            Ok(Err(e)) => {
                let _ = running.join();
                Err(e)
            }
            Err(_) => Err(running.join().err().unwrap_or_else(|| DelayError::Thread("exited before binding".into()))),
        }
    }

    /// Release every held packet, leave the queue, and say what was done.
    pub fn stop(mut self) -> Result<DelayStats, DelayError> {
        self.join()
    }

    fn join(&mut self) -> Result<DelayStats, DelayError> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().ok_or_else(|| DelayError::Thread("already stopped".into()))?;
        thread.join().map_err(|_| DelayError::Thread("panicked".into()))?
    }
}

impl Drop for DelayQueue {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.join();
        }
    }
}

/// Move this thread (only) into network namespace `netns`: the queue's netlink socket then
/// serves that namespace's netfilter.
fn enter(netns: &str) -> Result<(), DelayError> {
    let error = |source| DelayError::Netns { netns: netns.to_string(), source };
    let file = std::fs::File::open(format!("/run/netns/{netns}")).map_err(error)?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| error(e.into()))
}

fn bind() -> Result<nfq::Queue, DelayError> {
    let error = |what| move |source| DelayError::Queue { what, source };
    let mut queue = nfq::Queue::open().map_err(error("open the netlink socket"))?;
    queue.bind(QUEUE_NUM).map_err(error("bind"))?;
    queue.set_copy_range(QUEUE_NUM, COPY_BYTES).map_err(error("set the copy range"))?;
    queue.set_queue_max_len(QUEUE_NUM, QUEUE_MAX_LEN).map_err(error("set the queue length"))?;
    queue.set_fail_open(QUEUE_NUM, true).map_err(error("set fail-open"))?;
    queue.set_nonblocking(true);
    Ok(queue)
}

/// Receive, hold and release until `stop`; then release everything held.
fn hold(mut queue: nfq::Queue, mut schedule: Schedule, stop: &AtomicBool) -> Result<DelayStats, DelayError> {
    let mut held = BinaryHeap::new();
    let mut stats = DelayStats::default();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        loop {
            let message = match queue.recv() {
                Ok(message) => message,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // The kernel's answer to a verdict on a packet it no longer holds (dropped
                // with its hook when rules were replaced, or with its device): nfq reports
                // it on the next receive.
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => {
                    stats.failed_verdicts += 1;
                    continue;
                }
                Err(source) => return Err(DelayError::Queue { what: "receive", source }),
            };
            let now = Instant::now();
            let release = addresses(message.get_payload()).and_then(|(from, to)| schedule.release_at(now, from, to));
            match release {
                Some(release) => {
                    seq += 1;
                    stats.delayed += 1;
                    held.push(Held { release, arrived: now, seq, message });
                }
                None => {
                    stats.passed += 1;
                    accept(&mut queue, message, &mut stats);
                }
            }
        }
        let now = Instant::now();
        while held.peek().is_some_and(|h| h.release <= now) {
            if let Some(h) = held.pop() {
                stats.longest_hold = stats.longest_hold.max(now - h.arrived);
                accept(&mut queue, h.message, &mut stats);
            }
        }
        let next = held.peek().map_or(POLL, |h| h.release.saturating_duration_since(now));
        std::thread::sleep(next.min(POLL));
    }
    for h in held.into_sorted_vec().into_iter().rev() {
        accept(&mut queue, h.message, &mut stats);
    }
    let _ = queue.unbind(QUEUE_NUM);
    Ok(stats)
}

fn accept(queue: &mut nfq::Queue, mut message: nfq::Message, stats: &mut DelayStats) {
    message.set_verdict(nfq::Verdict::Accept);
    if queue.verdict(message).is_err() {
        stats.failed_verdicts += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, 7, last)
    }

    fn link(from: u8, to: u8, delay_ms: u64, jitter_ms: u64) -> Link {
        Link {
            from: ip(from),
            to: ip(to),
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
        }
    }

    /// Goal: a packet of a delayed link is held its delay plus at most its jitter, a link
    /// not listed (the other direction of a one-way delay) is not held, and jitter really
    /// varies the hold.
    #[test]
    fn holds_within_delay_plus_jitter_and_only_listed_directions() {
        let mut schedule = Schedule::new(&[link(1, 2, 100, 50)], 9);
        let t0 = Instant::now();
        let mut holds = Vec::new();
        for i in 0..200u64 {
            // Packets far apart, so order keeping never stretches a hold.
            let now = t0 + Duration::from_secs(i);
            let release = schedule.release_at(now, ip(1), ip(2)).unwrap();
            holds.push(release - now);
        }
        assert!(
            holds.iter().all(|h| *h >= Duration::from_millis(100) && *h <= Duration::from_millis(150)),
            "{holds:?}"
        );
        assert!(*holds.iter().max().unwrap() - *holds.iter().min().unwrap() > Duration::from_millis(25), "no jitter");
        assert_eq!(schedule.release_at(t0, ip(2), ip(1)), None, "the reverse direction is not delayed");
        assert_eq!(schedule.release_at(t0, ip(1), ip(3)), None);
    }

    /// Goal: back-to-back packets of one link leave in the order they came, never later than
    /// their own bound; links do not hold each other up.
    #[test]
    fn keeps_order_per_link_without_exceeding_the_bound() {
        let mut schedule = Schedule::new(&[link(1, 2, 10, 200), link(2, 1, 5, 0)], 4);
        let t0 = Instant::now();
        let mut last = t0;
        for i in 0..500u64 {
            let now = t0 + Duration::from_micros(100 * i);
            let release = schedule.release_at(now, ip(1), ip(2)).unwrap();
            assert!(release >= last, "packet {i} overtook its predecessor");
            assert!(release - now <= Duration::from_millis(210));
            last = release;
        }
        assert_eq!(schedule.release_at(t0, ip(2), ip(1)), Some(t0 + Duration::from_millis(5)));
    }

    /// Goal: the same seed gives the same holds.
    #[test]
    fn jitter_is_seeded() {
        let t0 = Instant::now();
        let run = |seed| {
            let mut s = Schedule::new(&[link(1, 2, 0, 1000)], seed);
            (0..10u64).map(|i| s.release_at(t0 + Duration::from_secs(i), ip(1), ip(2))).collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }

    /// Goal: addresses are read from an IPv4 header; anything shorter or not IPv4 is
    /// nobody's link.
    #[test]
    fn reads_ipv4_addresses() {
        let mut packet = [0u8; 40];
        packet[0] = 0x45;
        packet[12..16].copy_from_slice(&[10, 231, 7, 1]);
        packet[16..20].copy_from_slice(&[10, 231, 7, 2]);
        assert_eq!(addresses(&packet), Some((ip(1), ip(2))));
        assert_eq!(addresses(&packet[..19]), None);
        packet[0] = 0x60;
        assert_eq!(addresses(&packet), None);
    }
}

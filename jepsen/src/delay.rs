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
//! dropping them.
//!
//! A delay must never lose a packet: a lost segment costs TCP a retransmission timeout, which
//! after seconds of slow round trips is over a second (more than a worker's registry attempt),
//! so a "delay" that drops is a different fault. The kernel drops a queued packet in three
//! cases, and the holder avoids each:
//! - *leaving the queue* (unbind, or closing the socket) drops every packet it still queues,
//!   received or not. [`DelayQueue::stop`] releases what it holds, then lets through at once
//!   what still arrives (the replies the released packets provoke, ACKs above all) for a
//!   while, and leaves at a moment the kernel queues nothing for it (what arrives in the few
//!   microseconds between that look and leaving is still dropped, and a packet it had to
//!   leave queued is counted: `still queued on leaving`);
//! - *configuring the queue*: `nfq` waits for the kernel's ack of each setting and discards any
//!   packet message read meanwhile, and a discarded packet is never given a verdict. So the
//!   queue is bound and configured before any rule sends it a packet: [`DelayQueue::start`]
//!   first, [`crate::net::Network::apply_delays`] after;
//! - *unregistering any netfilter hook in the namespace* (replacing the iptables table, or the
//!   nftables fault table of partitions and loss) drops every packet queued in that namespace.
//!   So the rules and the fault table change only while no thread is bound: a new delay whose
//!   directions the installed rules already send to the queue is applied in place
//!   ([`DelayQueue::retarget`], which neither releases early nor drops), anything else stops
//!   the thread first, and a heal lifts the delays before it replaces the fault table.
//!
//! With [`PacketTrace`], the thread writes a line per queued packet of some hosts (the
//! workers): when it was held, for how long, released or let through, with its TCP header.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
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
/// Bytes of each packet copied to us: the IPv4 header's addresses, and for the packet trace
/// the TCP header's ports, sequence numbers and flags.
const COPY_BYTES: u16 = 60;
/// How often the thread wakes when nothing is due sooner: the release precision.
const POLL: Duration = Duration::from_millis(1);
/// How long a stopping thread keeps letting packets through at once after releasing what it
/// held, before it looks for a moment the kernel queues nothing for it to leave in: the
/// replies the released packets provoke (ACKs, answers that need a Raft commit over links no
/// longer delayed) come within milliseconds, and leaving drops whatever is queued.
const DRAIN_MIN: Duration = Duration::from_millis(50);
/// Longest it keeps doing so, should the kernel never be seen queueing nothing (a busy link):
/// what is queued then is dropped, and counted.
const DRAIN_MAX: Duration = Duration::from_millis(250);

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

    /// Delay `links` from now on, jitter drawn from `seed`. Packets already held keep their
    /// release times, and a link's next packet still leaves after its last one (order kept
    /// across the change).
    pub fn retarget(&mut self, links: &[Link], seed: u64) {
        self.links = links.iter().map(|l| ((l.from, l.to), *l)).collect();
        self.rng = StdRng::seed_from_u64(seed);
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

/// Where the thread writes a line per queued packet between some hosts (the workers): when
/// it was queued and released, with its TCP ports, flags, sequence numbers and length, so a
/// request that was held, released early, dropped or retransmitted can be followed.
#[derive(Debug, Clone)]
pub struct PacketTrace {
    pub file: std::path::PathBuf,
    /// The run's time origin (CLOCK_MONOTONIC ns): lines are stamped in run time.
    pub origin_ns: u64,
    /// Packets from or to these addresses are traced.
    pub hosts: std::collections::BTreeSet<Ipv4Addr>,
}

/// `from:port>to:port FLAGS seq=S ack=A len=N` of an IPv4 TCP packet (its first bytes), or
/// just the addresses of anything else.
pub fn describe(packet: &[u8]) -> Option<String> {
    let (from, to) = addresses(packet)?;
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    let Some(tcp) = packet.get(ihl..ihl + 20).filter(|_| packet[9] == 6) else {
        return Some(format!("{from}>{to} proto={} len={total}", packet[9]));
    };
    let port = |i: usize| u16::from_be_bytes([tcp[i], tcp[i + 1]]);
    let word = |i: usize| u32::from_be_bytes([tcp[i], tcp[i + 1], tcp[i + 2], tcp[i + 3]]);
    let doff = usize::from(tcp[12] >> 4) * 4;
    let flags: String = [(0x02, 'S'), (0x10, 'A'), (0x08, 'P'), (0x01, 'F'), (0x04, 'R')]
        .iter()
        .filter(|(bit, _)| tcp[13] & bit != 0)
        .map(|(_, c)| *c)
        .collect();
    Some(format!(
        "{from}:{}>{to}:{} {flags} seq={} ack={} len={}",
        port(0),
        port(2),
        word(4),
        word(8),
        total.saturating_sub(ihl + doff)
    ))
}

/// The open trace of a running thread.
struct Tracer {
    out: std::io::BufWriter<std::fs::File>,
    origin_ns: u64,
    hosts: std::collections::BTreeSet<Ipv4Addr>,
    dirty: bool,
}

impl Tracer {
    fn open(trace: &PacketTrace) -> Option<Tracer> {
        let file = std::fs::File::options().create(true).append(true).open(&trace.file).ok()?;
        Some(Tracer {
            out: std::io::BufWriter::new(file),
            origin_ns: trace.origin_ns,
            hosts: trace.hosts.clone(),
            dirty: false,
        })
    }

    /// One line for `packet` if it is traced: `<run ms> <what> <packet> <extra>`.
    fn packet(&mut self, what: &str, packet: &[u8], extra: std::fmt::Arguments<'_>) {
        let Some((from, to)) = addresses(packet) else { return };
        if !self.hosts.contains(&from) && !self.hosts.contains(&to) {
            return;
        }
        self.line(format_args!("{what} {} {extra}", describe(packet).unwrap_or_default()));
    }

    fn line(&mut self, text: std::fmt::Arguments<'_>) {
        use std::io::Write as _;
        let run_ns = crate::clock::mono_ns().saturating_sub(self.origin_ns);
        let _ = writeln!(self.out, "{:.3} {text}", run_ns as f64 / 1e6);
        self.dirty = true;
    }

    fn flush(&mut self) {
        use std::io::Write as _;
        if std::mem::take(&mut self.dirty) {
            let _ = self.out.flush();
        }
    }
}

/// What a delay thread did, for the nemesis record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DelayStats {
    pub delayed: u64,
    /// Queued packets of no delayed link, accepted at once: the directions a retarget no
    /// longer delays (those a one-way window leaves alone), else zero unless the rules and the
    /// table disagree.
    pub passed: u64,
    /// Verdicts the kernel refused (the packet was gone).
    pub failed_verdicts: u64,
    pub longest_hold: Duration,
    /// How late past its due time a packet was released at worst: beyond the 1 ms poll, the
    /// thread was kept off the CPU, and holds then exceeded their link's bound by as much.
    pub latest_release: Duration,
    /// Packets let through at once while stopping, after every held one was released (most
    /// are the replies the released packets provoked).
    pub let_through_at_stop: u64,
    /// The kernel's count of this queue's packets, read just before leaving it: `None` if
    /// `/proc` could not tell.
    pub kernel: Option<KernelQueueStats>,
}

/// The kernel's counters of the queue (`/proc/net/netfilter/nfnetlink_queue` of the bridge
/// namespace), read as the thread leaves it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelQueueStats {
    /// Packets the kernel still queued for the thread as it left: leaving drops them (TCP
    /// must retransmit them). Zero unless the drain ran out of time.
    pub queued_at_leave: u64,
    /// Packets the kernel could not queue (queue full): with fail-open, let through at once.
    pub queue_dropped: u64,
    /// Packets the kernel could not hand to the thread's socket (its buffer full): with
    /// fail-open, let through at once, ahead of their link's held packets.
    pub user_dropped: u64,
}

impl std::fmt::Display for DelayStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} packets delayed (longest held {} ms), {} passed undelayed, {} verdicts refused",
            self.delayed,
            self.longest_hold.as_millis(),
            self.passed,
            self.failed_verdicts,
        )?;
        if self.latest_release > Duration::from_millis(5) {
            write!(f, ", released up to {} ms late (the holder was short of CPU)", self.latest_release.as_millis())?;
        }
        if self.let_through_at_stop > 0 {
            write!(f, ", {} let through while stopping", self.let_through_at_stop)?;
        }
        if let Some(k) = self.kernel {
            write!(
                f,
                "; kernel: {} still queued on leaving (dropped), {} over the queue length and {} over the socket buffer (let through)",
                k.queued_at_leave, k.queue_dropped, k.user_dropped
            )?;
        }
        Ok(())
    }
}

/// This queue's line of `/proc/net/netfilter/nfnetlink_queue` as the calling thread's network
/// namespace sees it: `queue_number peer_portid queue_total copy_mode copy_range
/// queue_dropped user_dropped id_sequence 1`.
fn kernel_queue_stats() -> Option<KernelQueueStats> {
    let text = std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue").ok()?;
    let fields: Vec<u64> = text
        .lines()
        .map(|l| l.split_whitespace().filter_map(|f| f.parse().ok()).collect::<Vec<u64>>())
        .find(|f| f.first() == Some(&u64::from(QUEUE_NUM)) && f.len() >= 7)?;
    Some(KernelQueueStats { queued_at_leave: fields[2], queue_dropped: fields[5], user_dropped: fields[6] })
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

/// A change of a running thread's delays, with where to send the stats of the delays it
/// replaces.
struct Retarget {
    links: Vec<Link>,
    seed: u64,
    /// Release every held packet at once, in order (else they keep their release times).
    release_held: bool,
    done: std::sync::mpsc::Sender<DelayStats>,
}

/// A running delay thread inside a network namespace. [`DelayQueue::stop`] (or dropping it)
/// releases every held packet and leaves the queue.
#[derive(Debug)]
pub struct DelayQueue {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<DelayStats, DelayError>>>,
    retarget: std::sync::mpsc::Sender<Retarget>,
    /// The directions of the links it started with: those the rules send to the queue.
    directions: BTreeSet<(Ipv4Addr, Ipv4Addr)>,
}

impl std::fmt::Debug for Retarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retarget").field("links", &self.links.len()).field("seed", &self.seed).finish()
    }
}

impl DelayQueue {
    /// Enter network namespace `netns` (by its `ip netns` name) on a new thread, bind and
    /// configure the queue and start holding packets of `links`; returns once the queue is
    /// ready, or why it could not be. Install the rules that send it packets only then.
    pub fn start(netns: &str, links: &[Link], seed: u64, trace: Option<PacketTrace>) -> Result<DelayQueue, DelayError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let netns = netns.to_string();
        let schedule = Schedule::new(links, seed);
        let flag = stop.clone();
        let (retarget, retargets) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("delay-queue".into())
            .spawn(move || {
                let realtime = realtime();
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
                let mut tracer = trace.as_ref().and_then(Tracer::open);
                if let Some(t) = tracer.as_mut() {
                    t.line(format_args!("queue bound: {:?}; {realtime}", kernel_queue_stats()));
                }
                hold(queue, schedule, &flag, &retargets, tracer)
            })
            .map_err(|e| DelayError::Thread(e.to_string()))?;
        let directions = links.iter().map(|l| (l.from, l.to)).collect();
        let mut running = DelayQueue { stop, thread: Some(thread), retarget, directions };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(running),
            Ok(Err(e)) => {
                let _ = running.join();
                Err(e)
            }
            Err(_) => Err(running.join().err().unwrap_or_else(|| DelayError::Thread("exited before binding".into()))),
        }
    }

    /// Whether the rules it started with send every direction of `links` to the queue, so
    /// [`DelayQueue::retarget`] can apply them.
    pub fn covers(&self, links: &[Link]) -> bool {
        links.iter().all(|l| self.directions.contains(&(l.from, l.to)))
    }

    /// Delay `links` from now on (directions it [`covers`](DelayQueue::covers); a covered
    /// direction not listed is let through at once), and say what the delays it replaces did.
    /// Packets already held keep their release times; nothing is dropped, the rules stay as
    /// they are.
    pub fn retarget(&self, links: &[Link], seed: u64) -> Result<DelayStats, DelayError> {
        self.change(links.to_vec(), seed, false)
    }

    /// End the delays without leaving the queue: release every held packet at once (in
    /// order) and let everything through until the next [`DelayQueue::retarget`]; say what
    /// the delays did. Nothing is dropped, the rules stay as they are.
    pub fn pause(&self) -> Result<DelayStats, DelayError> {
        self.change(Vec::new(), 0, true)
    }

    fn change(&self, links: Vec<Link>, seed: u64, release_held: bool) -> Result<DelayStats, DelayError> {
        let (done, stats) = std::sync::mpsc::channel();
        self.retarget
            .send(Retarget { links, seed, release_held, done })
            .map_err(|_| DelayError::Thread("gone".into()))?;
        stats.recv_timeout(Duration::from_secs(5)).map_err(|_| DelayError::Thread("did not take the new delays".into()))
    }

    /// Release every held packet, let through what still comes until the kernel queues
    /// nothing more, leave the queue, and say what was done.
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

/// Put this thread under SCHED_FIFO (`chrt`), so that a busy machine does not hold packets past
/// their release time: the thread sleeps between releases, so it takes little CPU, but it must
/// get it when due. Best effort: says what it got.
fn realtime() -> String {
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let Some(tid) = tid else { return "scheduling unchanged (no thread id)".into() };
    match std::process::Command::new("chrt").args(["-f", "-p", "10", &tid]).output() {
        Ok(out) if out.status.success() => "SCHED_FIFO 10".into(),
        Ok(out) => format!("scheduling unchanged: chrt: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => format!("scheduling unchanged: chrt: {e}"),
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

/// Receive, hold and release until `stop` (taking new delays as they come); then release
/// everything held, let through what still arrives, and leave the queue.
fn hold(
    queue: nfq::Queue,
    schedule: Schedule,
    stop: &AtomicBool,
    retargets: &std::sync::mpsc::Receiver<Retarget>,
    tracer: Option<Tracer>,
) -> Result<DelayStats, DelayError> {
    let mut holder = Holder { queue, schedule, held: BinaryHeap::new(), stats: DelayStats::default(), seq: 0, tracer };
    while !stop.load(Ordering::Relaxed) {
        while let Ok(change) = retargets.try_recv() {
            holder.change(change);
        }
        holder.receive_all()?;
        let now = Instant::now();
        holder.release_due(now);
        holder.flush_trace();
        let next = holder.held.peek().map_or(POLL, |h| h.release.saturating_duration_since(now));
        std::thread::sleep(next.min(POLL));
    }
    holder.release_all("released-at-stop");
    holder.drain()?;
    let Holder { mut queue, stats, mut tracer, .. } = holder;
    let _ = queue.unbind(QUEUE_NUM);
    if let Some(t) = tracer.as_mut() {
        t.line(format_args!("left the queue: {stats}"));
        t.flush();
    }
    Ok(stats)
}

/// The thread's state: the queue, the delays, the held packets (the heap's top is the next
/// due), what was done since the last change of delays, and the packet trace.
struct Holder {
    queue: nfq::Queue,
    schedule: Schedule,
    held: BinaryHeap<Held>,
    stats: DelayStats,
    seq: u64,
    tracer: Option<Tracer>,
}

impl Holder {
    fn trace(&mut self, what: &str, packet: &[u8], extra: std::fmt::Arguments<'_>) {
        if let Some(t) = self.tracer.as_mut() {
            t.packet(what, packet, extra);
        }
    }

    fn flush_trace(&mut self) {
        if let Some(t) = self.tracer.as_mut() {
            t.flush();
        }
    }

    fn accept(&mut self, message: nfq::Message) {
        accept(&mut self.queue, message, &mut self.stats);
    }

    /// Take new delays (releasing what is held at once if asked) and answer with what the
    /// old ones did.
    fn change(&mut self, Retarget { links, seed, release_held, done }: Retarget) {
        self.schedule.retarget(&links, seed);
        if let Some(t) = self.tracer.as_mut() {
            let fate = if release_held { "released at once" } else { "keep their release times" };
            t.line(format_args!("new delays: {} directions; the {} packets held {fate}", links.len(), self.held.len()));
        }
        if release_held {
            self.release_all("released-at-change");
        }
        let _ = done.send(std::mem::take(&mut self.stats));
    }

    /// Hold every packet the kernel queued for us by now (let through one of no delayed link).
    fn receive_all(&mut self) -> Result<(), DelayError> {
        while let Some(message) = receive(&mut self.queue, &mut self.stats, &mut self.tracer)? {
            let now = Instant::now();
            let addresses = addresses(message.get_payload());
            match addresses.and_then(|(from, to)| self.schedule.release_at(now, from, to)) {
                Some(release) => {
                    self.seq += 1;
                    self.stats.delayed += 1;
                    let hold = (release - now).as_millis();
                    self.trace("held", message.get_payload(), format_args!("for={hold}ms"));
                    self.held.push(Held { release, arrived: now, seq: self.seq, message });
                }
                None => {
                    self.stats.passed += 1;
                    self.trace("passed", message.get_payload(), format_args!(""));
                    self.accept(message);
                }
            }
        }
        Ok(())
    }

    /// Release the packets due by `now`, in order.
    fn release_due(&mut self, now: Instant) {
        while self.held.peek().is_some_and(|h| h.release <= now) {
            if let Some(h) = self.held.pop() {
                self.stats.longest_hold = self.stats.longest_hold.max(now - h.arrived);
                self.stats.latest_release = self.stats.latest_release.max(now - h.release);
                let after = (now - h.arrived).as_millis();
                self.trace("released", h.message.get_payload(), format_args!("after={after}ms"));
                self.accept(h.message);
            }
        }
    }

    /// Release every held packet at once, in order.
    fn release_all(&mut self, what: &str) {
        let now = Instant::now();
        for h in std::mem::take(&mut self.held).into_sorted_vec().into_iter().rev() {
            let after = (now - h.arrived).as_millis();
            self.trace(what, h.message.get_payload(), format_args!("after={after}ms"));
            self.accept(h.message);
        }
    }

    /// Before leaving the queue, which drops whatever the kernel still queues for us: the
    /// packets just released provoke replies at once (ACKs above all) that the rules still
    /// send here, so let everything through for a while, then stop at the first moment the
    /// kernel queues nothing (recorded in the stats).
    fn drain(&mut self) -> Result<(), DelayError> {
        let started = Instant::now();
        loop {
            while let Some(message) = receive(&mut self.queue, &mut self.stats, &mut self.tracer)? {
                self.stats.let_through_at_stop += 1;
                self.trace("let-through-at-stop", message.get_payload(), format_args!(""));
                self.accept(message);
            }
            let kernel = kernel_queue_stats();
            let idle = kernel.is_none_or(|k| k.queued_at_leave == 0);
            if (idle && started.elapsed() >= DRAIN_MIN) || started.elapsed() >= DRAIN_MAX {
                self.stats.kernel = kernel;
                return Ok(());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// The next packet the kernel queued for us, `None` when there is none now. A refused verdict
/// reported meanwhile is counted.
fn receive(
    queue: &mut nfq::Queue,
    stats: &mut DelayStats,
    tracer: &mut Option<Tracer>,
) -> Result<Option<nfq::Message>, DelayError> {
    loop {
        match queue.recv() {
            Ok(message) => return Ok(Some(message)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
            // The kernel's answer to a verdict on a packet it no longer holds (dropped with
            // every other queued packet when a netfilter hook of the namespace went, or with
            // its device): nfq reports it on the next receive.
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => {
                stats.failed_verdicts += 1;
                if let Some(t) = tracer.as_mut() {
                    t.line(format_args!("verdict refused: the kernel no longer held the packet"));
                }
            }
            Err(source) => return Err(DelayError::Queue { what: "receive", source }),
        }
    }
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

    /// Goal: new delays apply to packets that arrive after the change, a direction no longer
    /// listed is let through, and a link's packets still leave in order across the change
    /// (the one held under the old, longer delay is not overtaken).
    #[test]
    fn retarget_keeps_order_and_applies_new_delays() {
        let mut schedule = Schedule::new(&[link(1, 2, 300, 0), link(2, 1, 300, 0)], 1);
        let t0 = Instant::now();
        let before = schedule.release_at(t0, ip(1), ip(2)).unwrap();
        assert_eq!(before, t0 + Duration::from_millis(300));
        schedule.retarget(&[link(1, 2, 50, 0)], 2);
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(schedule.release_at(t1, ip(1), ip(2)), Some(before), "waits for the packet held before the change");
        let t2 = t0 + Duration::from_millis(400);
        assert_eq!(schedule.release_at(t2, ip(1), ip(2)), Some(t2 + Duration::from_millis(50)));
        assert_eq!(schedule.release_at(t2, ip(2), ip(1)), None, "no longer delayed");
    }

    /// Goal: the packet trace names a TCP segment by ports, flags, sequence numbers and
    /// payload length.
    #[test]
    fn describes_tcp_segments() {
        let mut packet = [0u8; 40];
        packet[0] = 0x45;
        packet[2..4].copy_from_slice(&(40u16 + 60).to_be_bytes());
        packet[9] = 6;
        packet[12..16].copy_from_slice(&[10, 231, 7, 1]);
        packet[16..20].copy_from_slice(&[10, 231, 7, 2]);
        packet[20..22].copy_from_slice(&35802u16.to_be_bytes());
        packet[22..24].copy_from_slice(&2379u16.to_be_bytes());
        packet[24..28].copy_from_slice(&7u32.to_be_bytes());
        packet[28..32].copy_from_slice(&9u32.to_be_bytes());
        packet[32] = 5 << 4;
        packet[33] = 0x18;
        assert_eq!(describe(&packet).as_deref(), Some("10.231.7.1:35802>10.231.7.2:2379 AP seq=7 ack=9 len=60"));
        packet[9] = 17;
        assert_eq!(describe(&packet).as_deref(), Some("10.231.7.1>10.231.7.2 proto=17 len=100"));
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

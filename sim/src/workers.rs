//! Simulated worker processes: the real library-mode `Generator` (acquire, boot, lease
//! keeper, minting state, ceiling file) over the simulated network, each with its own state
//! dir on disk, its own clocks, and a caller that asks it for IDs. A worker whose lease ends
//! for good (FENCED, SUPERSEDED…) exits and is restarted by its supervisor, as
//! `restart: always` would; the nemesis kills (SIGKILL) and restarts workers, pauses them,
//! starts new ones on a copy of another's state dir (a cloned VM), and standbys that ask for
//! a paused worker's ID by number (as an operator replacing a hung worker would).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fenceflake_jepsen::history::{
    self, ClientOp, Event, GenerateFn, IdRange, LeaseEvent, LeaseEventKind, Phase, ProcessEvent, ProcessEventKind,
};
use fenceflake_proto::switches::{self, Mechanism};
use fenceflake_worker::config::{Incarnations, WorkerIdSpec};
use fenceflake_worker::{Batch, Clock, Generator, Security, StartError, WorkerConfig, WorkerId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

use crate::clock::{MonoStall, ProcessClock, WallError};
use crate::net::Net;
use crate::recorder::Recorder;

/// How long the supervisor waits before starting an exited worker again.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// What every worker process of a run shares.
#[derive(Debug, Clone)]
pub struct WorkerEnv {
    pub net: Arc<Net>,
    pub recorder: Arc<Recorder>,
    /// The client addresses of the registry nodes.
    pub registry: Vec<String>,
    pub lease_ttl: Duration,
    pub seed: u64,
}

/// One worker "machine": a state dir, a wall clock, and the process running on it, if any.
#[derive(Debug)]
pub struct SimWorker {
    pub name: String,
    pub state_dir: PathBuf,
    pub wall: Arc<WallError>,
    pub mono_stall: Arc<MonoStall>,
    /// Which worker ID it asks for.
    worker_id: WorkerIdSpec,
    /// Process starts so far (each a new incarnation, and a new op stream in the history).
    starts: u64,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    /// `machine#start`, as the network knows it.
    id: String,
    task: JoinHandle<()>,
    generator: Arc<Mutex<Option<Generator>>>,
}

impl SimWorker {
    pub fn new(name: &str, root: &Path) -> SimWorker {
        SimWorker {
            name: name.to_string(),
            state_dir: root.join(name),
            wall: Arc::new(WallError::default()),
            mono_stall: Arc::new(MonoStall::default()),
            worker_id: WorkerIdSpec::Auto,
            starts: 0,
            running: None,
        }
    }

    /// A worker that asks for exactly `worker_id`: refused (it exits, and its supervisor
    /// starts it again) until that ID is free.
    pub fn standby(name: &str, root: &Path, worker_id: WorkerId) -> SimWorker {
        SimWorker { worker_id: WorkerIdSpec::Fixed(worker_id), ..SimWorker::new(name, root) }
    }

    /// The worker ID its process holds now, if it runs and holds one.
    pub fn worker_id(&self) -> Option<WorkerId> {
        let running = self.running.as_ref()?;
        let generator = running.generator.lock().unwrap_or_else(PoisonError::into_inner);
        generator.as_ref().map(|g| g.status().worker_id)
    }

    /// The worker ID it mints with now: its process runs, is not parked, and its lease has
    /// time left.
    pub fn minting_with(&self) -> Option<WorkerId> {
        let running = self.running.as_ref()?;
        let generator = running.generator.lock().unwrap_or_else(PoisonError::into_inner);
        let status = generator.as_ref()?.status();
        (status.park.is_none() && !status.lease_remaining.is_zero()).then_some(status.worker_id)
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// Start the process (and its supervisor, which restarts it whenever it exits).
    pub fn start(&mut self, env: &WorkerEnv) {
        if self.running.is_some() {
            return;
        }
        self.starts += 1;
        let id = format!("{}#{}", self.name, self.starts);
        env.net.set_running(&id, true);
        let generator = Arc::new(Mutex::new(None));
        let process = Process {
            name: self.name.clone(),
            id: id.clone(),
            state_dir: self.state_dir.clone(),
            wall: self.wall.clone(),
            mono_stall: self.mono_stall.clone(),
            worker_id: self.worker_id.clone(),
            env: env.clone(),
            generator: generator.clone(),
            stream: self.stream_base(),
        };
        self.running = Some(Running { id, task: tokio::spawn(process.supervise()), generator });
    }

    /// Op streams of this worker's starts are numbered apart, so each start's ops are their
    /// own `process` in the history.
    fn stream_base(&self) -> u64 {
        let index: u64 = self.name.trim_start_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or(0);
        let kind = match self.name.chars().next() {
            Some('c') => 500_000,
            Some('s') => 700_000,
            _ => 0,
        };
        kind + index * 1_000 + self.starts * 10
    }

    /// Record that its state dir was lost, torn or rolled back while it was down.
    pub fn record_state_lost(&self, recorder: &Recorder) {
        recorder.push(Event::Process(ProcessEvent {
            process: self.name.clone(),
            event: ProcessEventKind::StateLost,
            code: None,
            copy_of: None,
            cause: None,
            time_ns: recorder.now_ns(),
            wall_ms: recorder.world().true_wall_ms(),
        }));
    }

    /// SIGKILL: the process stops at once, releasing nothing.
    pub fn kill(&mut self, net: &Net) {
        if let Some(running) = self.running.take() {
            running.task.abort();
            if let Some(generator) = running.generator.lock().unwrap_or_else(PoisonError::into_inner).take() {
                generator.kill();
            }
            net.set_running(&running.id, false);
        }
    }
}

/// One running worker process and its supervisor.
struct Process {
    name: String,
    id: String,
    state_dir: PathBuf,
    wall: Arc<WallError>,
    mono_stall: Arc<MonoStall>,
    worker_id: WorkerIdSpec,
    env: WorkerEnv,
    generator: Arc<Mutex<Option<Generator>>>,
    stream: u64,
}

impl Process {
    fn config(&self) -> WorkerConfig {
        let security = Security::Transport(self.env.net.identity(&self.name));
        let mut config =
            WorkerConfig::new(self.env.registry.clone(), self.state_dir.clone(), self.name.clone(), security);
        config.lease_ttl = self.env.lease_ttl;
        config.worker_id = self.worker_id.clone();
        config.id_wait = Duration::from_secs(30);
        if switches::is_off(Mechanism::Incarnations) {
            config.incarnations = Incarnations::DisabledUnsafe;
        }
        config
    }

    async fn supervise(self) {
        let mut restarts = 0u64;
        loop {
            let clock = ProcessClock::start(self.env.recorder.world(), self.wall.clone(), self.mono_stall.clone());
            let channels =
                self.env.registry.iter().map(|addr| (addr.clone(), self.env.net.channel(&self.id, addr))).collect();
            match Generator::start_over(self.config(), Arc::new(clock.clone()), channels).await {
                Ok(generator) => {
                    *self.generator.lock().unwrap_or_else(PoisonError::into_inner) = Some(generator.clone());
                    let stream = self.stream + restarts;
                    // The grant, when it was answered (a status poll would see it then), not
                    // with the first batch: that may wait out the boot wait.
                    let mut lease = None;
                    self.lease_event(&generator, None, clock.wall_ms(), &mut lease);
                    let cause = tokio::select! {
                        biased;
                        cause = generator.ended() => cause.to_string(),
                        () = self.call(&generator, &clock, stream, &mut lease) => String::new(),
                    };
                    generator.kill();
                    self.generator.lock().unwrap_or_else(PoisonError::into_inner).take();
                    tracing::debug!(worker = %self.name, %cause, "worker exited");
                    self.process_event(ProcessEventKind::Exited, Some(1), Some(cause));
                }
                Err(error) => {
                    tracing::debug!(worker = %self.name, %error, "worker failed to start");
                    self.process_event(ProcessEventKind::Exited, Some(2), Some(start_failure_cause(&error)));
                }
            }
            tokio::time::sleep(RESTART_PAUSE).await;
            restarts += 1;
            self.process_event(ProcessEventKind::Restarted, None, None);
        }
    }

    fn process_event(&self, event: ProcessEventKind, code: Option<i32>, cause: Option<String>) {
        let recorder = &self.env.recorder;
        recorder.push(Event::Process(ProcessEvent {
            process: self.name.clone(),
            event,
            code,
            copy_of: None,
            cause,
            time_ns: recorder.now_ns(),
            wall_ms: recorder.world().true_wall_ms(),
        }));
    }

    /// The caller: one ID or a batch at a time, a few ms apart, forever. It runs on the
    /// worker's machine: while that is paused it neither calls nor hears an answer, so a call
    /// the pause caught half way hands out its IDs only after the resume.
    async fn call(&self, generator: &Generator, clock: &ProcessClock, stream: u64, lease: &mut Option<LeaseSeen>) {
        let recorder = &self.env.recorder;
        let mut rng = StdRng::seed_from_u64(self.env.seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for op_id in 0.. {
            tokio::time::sleep(Duration::from_micros(rng.gen_range(500..20_000))).await;
            self.env.net.until_running(&self.name).await;
            let count: u32 = if rng.gen_bool(0.5) { 1 } else { rng.gen_range(2..=64) };
            let f = if count == 1 { GenerateFn::Generate } else { GenerateFn::GenerateBatch };
            let mut invoke = ClientOp::invoke(stream, op_id, f, &self.name, recorder.now_ns(), clock.wall_ms());
            invoke.count = Some(count);
            recorder.push(Event::Op(invoke.clone()));
            let result =
                if count == 1 { generator.generate_with_lease().await } else { generator.generate_batch(count).await };
            self.env.net.until_running(&self.name).await;
            match result {
                Ok(batch) => {
                    self.lease_event(generator, Some(&batch), clock.wall_ms(), lease);
                    let ranges =
                        batch.runs.iter().map(|r| IdRange { first: r.first, count: u64::from(r.count) }).collect();
                    let lease = Some((u32::from(batch.worker_id.get()), batch.token.get()));
                    recorder.push(Event::Op(invoke.ok(recorder.now_ns(), clock.wall_ms(), ranges, lease)));
                }
                Err(error) => {
                    // A status poll, as the harness's workload makes: a renewal answered while
                    // the worker mints nothing (a boot wait for a `not_before` up to a
                    // high-water window ahead) is recorded when it happened, not with the
                    // first batch after the wait.
                    self.lease_event(generator, None, clock.wall_ms(), lease);
                    let failed = invoke.failed(Phase::Fail, recorder.now_ns(), clock.wall_ms(), &error.to_string());
                    recorder.push(Event::Op(failed));
                }
            }
        }
    }

    /// Record the lease when it is new (the grant, `batch` `None`), and then whenever the
    /// deadline a batch states moved: the lease checker takes the deadline an op had to
    /// respect from the latest lease event. A move is a renewal (`renewed`) only if the
    /// lease's monotonic deadline moved; otherwise the worker's wall clock stepped or drifted
    /// (or the ms rounding moved) under the same deadline (`restated`), which the parking
    /// checker must not take for an extension during a quorum loss.
    fn lease_event(&self, generator: &Generator, batch: Option<&Batch>, wall_ms: u64, last: &mut Option<LeaseSeen>) {
        let recorder = &self.env.recorder;
        let status = generator.status();
        let now = recorder.now_ns();
        let remaining_ns = u64::try_from(status.lease_remaining.as_nanos()).unwrap_or(u64::MAX);
        let (worker_id, token, deadline_wall_ms) = match batch {
            Some(b) => (b.worker_id.get(), b.token.get(), b.deadline_wall_ms),
            None => (status.worker_id.get(), status.token.get(), status.deadline_wall_ms),
        };
        let lease = (worker_id, token);
        let deadline_mono_ns = match last {
            // A lapsed lease states no monotonic deadline (`now` would move with time).
            Some(l) if remaining_ns == 0 && l.lease == lease => l.deadline_mono_ns,
            _ => now + remaining_ns,
        };
        let seen = LeaseSeen { lease, deadline_wall_ms, deadline_mono_ns };
        let event = match last {
            Some(l) if l.lease == seen.lease => {
                if seen.deadline_mono_ns > l.deadline_mono_ns + RENEWAL_MIN_NS {
                    LeaseEventKind::Renewed
                } else if seen.deadline_wall_ms != l.deadline_wall_ms {
                    LeaseEventKind::Restated
                } else {
                    return;
                }
            }
            _ => LeaseEventKind::Acquired,
        };
        *last = Some(seen);
        recorder.push(Event::Lease(LeaseEvent {
            worker: self.name.clone(),
            event,
            worker_id: u32::from(worker_id),
            token,
            deadline_wall_ms: (deadline_wall_ms > 0).then_some(deadline_wall_ms),
            deadline_mono_ns: Some(now + remaining_ns),
            reason: None,
            holder: Some(recorder.holder_alias(status.holder.as_str())),
            time_ns: now,
            wall_ms,
        }));
    }
}

/// A failed start's cause in the history: the registry's refusal of a fixed worker ID, held
/// by another worker or quarantined, as [`history::CAUSE_WORKER_ID_HELD`] or
/// [`history::CAUSE_QUARANTINED`] (the parking checker excuses such a worker from serving
/// again), anything else as the error's text.
fn start_failure_cause(error: &StartError) -> String {
    match error {
        StartError::WorkerIdHeld { .. } => history::CAUSE_WORKER_ID_HELD.to_string(),
        StartError::WorkerIdQuarantined { .. } => history::CAUSE_QUARANTINED.to_string(),
        other => other.to_string(),
    }
}

/// What the caller last recorded of its process's lease.
#[derive(Debug, Clone, Copy)]
struct LeaseSeen {
    lease: (u16, u64),
    deadline_wall_ms: u64,
    /// The deadline on the worker's monotonic clock, as true time since the run began.
    deadline_mono_ns: u64,
}

/// A monotonic deadline that moves later by more than this was renewed: a renewal moves it
/// by about a third of the TTL, while two readings of one deadline differ only by how far
/// the worker's clock ran ahead of true time between them (1 µs a reading, `clock.rs`).
const RENEWAL_MIN_NS: u64 = 5_000_000;

/// Copy a state dir (a cloned VM's disk).
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

/// A new worker process on a copy of `source`'s state dir.
pub fn clone_of(source: &SimWorker, name: &str, root: &Path, recorder: &Recorder) -> std::io::Result<SimWorker> {
    let clone = SimWorker::new(name, root);
    if source.state_dir.exists() {
        copy_dir(&source.state_dir, &clone.state_dir)?;
    }
    recorder.push(Event::Process(ProcessEvent {
        process: name.to_string(),
        event: ProcessEventKind::Cloned,
        code: None,
        copy_of: Some(source.name.clone()),
        cause: None,
        time_ns: recorder.now_ns(),
        wall_ms: recorder.world().true_wall_ms(),
    }));
    Ok(clone)
}

//! The run history: every client, registry, nemesis and lease event as one JSON object per
//! line (`history.jsonl`), the writer and loader, and the pairing of invocations with their
//! completions that every checker starts from.
//!
//! Times: `time_ns` is the harness's monotonic clock in nanoseconds since the run started
//! (the one clock all events share, so it orders them); `wall_ms` is a wall clock in ms since
//! the Unix epoch, for humans and for comparing with the timestamps inside IDs.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One line of `history.jsonl`, tagged by `"kind"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A client call to a worker's `Generate` / `GenerateBatch`.
    Op(ClientOp),
    /// A call to the registry's lease API, for the linearizability checker.
    Registry(RegistryOp),
    /// A fault the nemesis started or stopped.
    Nemesis(NemesisEvent),
    /// A lease change a worker reported (collected from its log or status by the harness).
    Lease(LeaseEvent),
    /// A forged call of the `adversary` scenario and how the registry answered it.
    Adversary(ForgedCall),
    /// A worker process the harness supervises started as a copy, exited on its own, or was
    /// restarted after such an exit (never a nemesis kill: those are `nemesis` events).
    Process(ProcessEvent),
}

impl Event {
    pub fn time_ns(&self) -> u64 {
        match self {
            Event::Op(e) => e.time_ns,
            Event::Registry(e) => e.time_ns,
            Event::Nemesis(e) => e.time_ns,
            Event::Lease(e) => e.time_ns,
            Event::Adversary(e) => e.time_ns,
            Event::Process(e) => e.time_ns,
        }
    }
}

/// Where an operation is in its life. `fail` means it definitely did not take effect (e.g.
/// `UNAVAILABLE` from a parked worker); `info` means it may or may not have (a timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Invoke,
    Ok,
    Fail,
    Info,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerateFn {
    Generate,
    GenerateBatch,
}

/// A run of consecutive IDs `first..first+count`, written as `[first, count]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u64, u64)", into = "(u64, u64)")]
pub struct IdRange {
    pub first: u64,
    pub count: u64,
}

impl From<(u64, u64)> for IdRange {
    fn from((first, count): (u64, u64)) -> IdRange {
        IdRange { first, count }
    }
}

impl From<IdRange> for (u64, u64) {
    fn from(r: IdRange) -> (u64, u64) {
        (r.first, r.count)
    }
}

impl IdRange {
    /// The last ID of the range; `None` for an empty range.
    pub fn last(&self) -> Option<u64> {
        self.count.checked_sub(1).map(|n| self.first.saturating_add(n))
    }
}

/// The value of an ok client op: every ID it returned, as ranges (a single `Generate` is one
/// range of count 1).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IdRanges {
    pub ranges: Vec<IdRange>,
}

/// A client call to one worker process. `op_id` is unique per `process`; the invoke and its
/// completion share both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientOp {
    pub phase: Phase,
    pub process: u64,
    pub op_id: u64,
    pub f: GenerateFn,
    /// The worker process's name in the harness ("w1"), not its worker ID.
    pub worker: String,
    pub time_ns: u64,
    pub wall_ms: u64,
    /// The requested count of a `generate_batch` invoke.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// Ok only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<IdRanges>,
    /// Ok only, and only when the response carries them (`GenerateBatch` does, `Generate` not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// Fail and info: `"CODE: message"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ClientOp {
    /// The invoke event of a new op.
    pub fn invoke(process: u64, op_id: u64, f: GenerateFn, worker: &str, time_ns: u64, wall_ms: u64) -> ClientOp {
        ClientOp {
            phase: Phase::Invoke,
            process,
            op_id,
            f,
            worker: worker.to_string(),
            time_ns,
            wall_ms,
            count: None,
            value: None,
            worker_id: None,
            token: None,
            error: None,
        }
    }

    /// The ok completion of this invoke.
    pub fn ok(&self, time_ns: u64, wall_ms: u64, ranges: Vec<IdRange>, lease: Option<(u32, u64)>) -> ClientOp {
        ClientOp {
            phase: Phase::Ok,
            time_ns,
            wall_ms,
            count: None,
            value: Some(IdRanges { ranges }),
            worker_id: lease.map(|(w, _)| w),
            token: lease.map(|(_, t)| t),
            ..self.clone()
        }
    }

    /// A fail or info completion of this invoke.
    pub fn failed(&self, phase: Phase, time_ns: u64, wall_ms: u64, error: &str) -> ClientOp {
        ClientOp { phase, time_ns, wall_ms, count: None, error: Some(error.to_string()), ..self.clone() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegistryFn {
    Acquire,
    Renew,
    Release,
    Get,
}

/// A call to the registry's lease API. Inputs (`worker_id`, `holder`, `token`) are repeated
/// on the completion; `result` is present on ok, and on a fail that the registry answered
/// with a lease rejection (which says something about the lease table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryOp {
    pub phase: Phase,
    pub process: u64,
    pub op_id: u64,
    pub f: RegistryFn,
    /// `None` only for an Acquire of any free ID; its ok result names the ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<u32>,
    /// Acquire only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// Renew and Release only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    pub time_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RegistryResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Acquire and Renew ok: the times the lease states, to hold against the harness's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamps: Option<LeaseStamps>,
}

/// The registry's clock as a granted or renewed lease shows it, and the harness's (unfaked)
/// wall clock around the call: a leader's clock far off the cluster's moves these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStamps {
    /// The harness's wall clock when the call was sent and when its answer came (ms since
    /// the Unix epoch).
    pub sent_wall_ms: u64,
    pub received_wall_ms: u64,
    /// The leader's wall clock when it handled the call.
    pub registry_time_ms: u64,
    pub not_before_ms: u64,
    pub mint_until_ms: u64,
    pub ttl_ms: u64,
}

/// What the registry answered, tagged by `"outcome"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum RegistryResult {
    /// Acquire ok.
    Granted { worker_id: u32, token: u64 },
    /// Renew ok.
    Renewed { token: u64 },
    /// Release ok.
    Released,
    /// GetLease ok. `holder` is `null` when the ID is FREE (never held or released); an
    /// EXPIRED or QUARANTINED lease still names its holder.
    Lease { holder: Option<String>, token: u64 },
    /// A definite answer that the operation was refused (phase `fail`).
    Rejected { reason: Rejection },
}

/// Why the registry refused, from the reason on its status (`fenceflake_proto::wire::Reason`):
/// `ALREADY_HELD` → `already_held`, `FENCED` / `EXPIRED` → `fenced` / `expired`; any other
/// refusal (quarantine, bad TTL, the holder holds another ID) is `other`, which the model
/// does not check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    AlreadyHeld,
    Fenced,
    Expired,
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NemesisPhase {
    Start,
    Stop,
}

/// A fault the nemesis applied (`start`) or healed (`stop`); start and stop share `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NemesisEvent {
    pub phase: NemesisPhase,
    pub name: String,
    pub time_ns: u64,
    #[serde(default)]
    pub wall_ms: u64,
    #[serde(default)]
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseEventKind {
    Acquired,
    Renewed,
    Released,
    Parked,
    Resumed,
    /// The same deadline stated anew on the worker's wall clock, which stepped or drifted
    /// since: no renewal, the lease is not extended. Only the simulator tells it apart (it
    /// sees the worker's monotonic deadline); the harness's status polls record `renewed`.
    Restated,
}

/// A lease change of one worker process. `time_ns` must be when the worker made the change
/// (its log line's time mapped onto the harness clock), not when the harness collected it:
/// the checkers take "the deadline known at time t" from the latest event at or before t.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEvent {
    pub worker: String,
    pub event: LeaseEventKind,
    pub worker_id: u32,
    pub token: u64,
    /// The lease deadline as the worker knew it at that moment, on the worker's wall clock
    /// (ms since the Unix epoch). `None` when the source did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_wall_ms: Option<u64>,
    /// The same deadline on the harness clock (ns since run start), when the harness could
    /// compute it (e.g. from a status poll's `lease_remaining_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_mono_ns: Option<u64>,
    /// Parked only: the park reason (`LEASE_EXPIRED`, `FENCED`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The holder ID the worker acquired with, when the source said (`Status` does): copies
    /// of one state dir share it until the registry supersedes all but one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    pub time_ns: u64,
    #[serde(default)]
    pub wall_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessEventKind {
    /// A new process started on a copy (`cp -a`) of another process's state dir.
    Cloned,
    /// The process exited on its own (a lost lease ends a worker non-zero).
    Exited,
    /// The supervisor started it again, same flags and state dir, after an `exited`.
    Restarted,
    /// While it was down, its state dir was lost, torn or rolled back to an old snapshot (the
    /// simulator's disk faults): the persisted ceiling that carries a worker's order across
    /// restarts is gone or behind, so what it mints next is a new worker's as far as order
    /// goes (uniqueness still holds: the registry's `not_before`).
    StateLost,
}

/// What the harness's restart-always supervision saw of one worker process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEvent {
    /// The process's name in the harness (`w3`, `c1`), as in client ops and lease events.
    pub process: String,
    pub event: ProcessEventKind,
    /// `exited`: the exit code (`None`: ended by a signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// `cloned`: the process whose state dir it started on a copy of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_of: Option<String>,
    /// `exited`: why, as the worker's park cause on the wire (`SUPERSEDED`, `FENCED`,
    /// `STATE_DIR_FAILED`...) or [`CAUSE_WORKER_ID_HELD`], when the recorder knows it. The
    /// simulator does; the harness sees only an exit code, which is the same for every cause.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// When the harness saw it: it looks every 100 ms, so an exit is at most that late.
    pub time_ns: u64,
    #[serde(default)]
    pub wall_ms: u64,
}

/// The exit cause of a worker that asked for a fixed worker ID (`--worker-id N`) and was
/// refused it because another worker holds it: it cannot serve until that one lets the ID go,
/// by design, so no checker expects it to.
pub const CAUSE_WORKER_ID_HELD: &str = "WORKER_ID_HELD";
/// The exit cause of a worker whose worker ID is quarantined (the registry's canary saw two
/// holders mint at overlapping times): the park cause on the wire, and the cause the
/// simulator records when a worker asking for that ID by number is refused it at start. It
/// cannot serve with that ID until an operator clears it.
pub const CAUSE_QUARANTINED: &str = "QUARANTINED";

/// What the `adversary` scenario forges: a client with a valid `worker` certificate of the
/// run's CA (its own identity, `worker/adversary`) against other identities' leases and the
/// operator RPCs, and two callers without a valid certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forged {
    /// `ListLeases`: must show no token of another identity's lease.
    ListLeases,
    /// `GetLease` of a worker's ID: must show no token.
    GetLease,
    /// `Release` of a worker's lease with its true token and `last_ts_ms` 0.
    Release,
    /// `Renew` of a worker's lease with its true token and `max_minted_ts_ms` near `u64::MAX`.
    RenewMintedMax,
    /// `Renew` of a worker's lease with its true token and `wall_ms_at_send` near `u64::MAX`.
    RenewWallMax,
    /// `Renew` with a made-up stale token and a huge `max_minted_ts_ms`: the canary must not
    /// believe it (FENCED, and the worker ID not quarantined).
    RenewStale,
    /// `Acquire` naming a worker's holder ID: must not get that worker's lease.
    AcquireHolder,
    Quarantine,
    Unquarantine,
    ListAudit,
    AddLearner,
    PromoteMember,
    RemoveMember,
    ExportSnapshot,
    /// `ImportSnapshot` with a junk payload.
    ImportSnapshot,
    TransferLeader,
    /// `Release` with a worker's true token over plaintext (no certificate).
    Plaintext,
    /// `Release` with a worker's true token, presenting a `worker` certificate of another CA.
    ForeignCa,
}

impl Forged {
    /// Every forged call, in the order the report lists them.
    pub const ALL: [Forged; 18] = [
        Forged::ListLeases,
        Forged::GetLease,
        Forged::Release,
        Forged::RenewMintedMax,
        Forged::RenewWallMax,
        Forged::RenewStale,
        Forged::AcquireHolder,
        Forged::Quarantine,
        Forged::Unquarantine,
        Forged::ListAudit,
        Forged::AddLearner,
        Forged::PromoteMember,
        Forged::RemoveMember,
        Forged::ExportSnapshot,
        Forged::ImportSnapshot,
        Forged::TransferLeader,
        Forged::Plaintext,
        Forged::ForeignCa,
    ];

    /// The call as the report names it.
    pub fn label(self) -> &'static str {
        match self {
            Forged::ListLeases => "ListLeases (tokens of others' leases?)",
            Forged::GetLease => "GetLease of a worker's ID (its token?)",
            Forged::Release => "Release of a worker's lease, true token, last_ts_ms 0",
            Forged::RenewMintedMax => "Renew of a worker's lease, true token, max_minted_ts_ms ~ u64::MAX",
            Forged::RenewWallMax => "Renew of a worker's lease, true token, wall_ms_at_send ~ u64::MAX",
            Forged::RenewStale => "Renew with a made-up stale token, huge max_minted_ts_ms (canary)",
            Forged::AcquireHolder => "Acquire with a worker's holder ID",
            Forged::Quarantine => "Quarantine of a worker's ID",
            Forged::Unquarantine => "Unquarantine",
            Forged::ListAudit => "ListAudit",
            Forged::AddLearner => "AddLearner",
            Forged::PromoteMember => "PromoteMember",
            Forged::RemoveMember => "RemoveMember",
            Forged::ExportSnapshot => "ExportSnapshot",
            Forged::ImportSnapshot => "ImportSnapshot (junk payload)",
            Forged::TransferLeader => "TransferLeader",
            Forged::Plaintext => "Release with the true token, plaintext (no certificate)",
            Forged::ForeignCa => "Release with the true token, certificate of another CA",
        }
    }
}

/// How a forged call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForgedOutcome {
    /// Refused as it must be: the check under test said no (a read answered without any
    /// token of another identity; an Acquire granted only a lease of the adversary's own on
    /// another worker ID).
    Refused,
    /// The check under test let it through: the call did what it asked, or a later check
    /// refused it (e.g. the claim bounds after the identity check), or a read showed a token of
    /// another identity, or the canary believed a made-up token.
    Accepted,
    /// A server answered, but the answer proves nothing about the check: the lease changed
    /// hands before the call (FENCED, EXPIRED), no leader, an unknown outcome.
    Inconclusive,
    /// A transport error or no answer in time: the call may never have reached a server.
    NeverConnected,
}

/// One forged call of the `adversary` scenario.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForgedCall {
    pub call: Forged,
    /// The registry node it was sent to (`n3`).
    pub node: String,
    pub outcome: ForgedOutcome,
    /// The worker ID whose lease it forged against, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<u32>,
    /// The token it sent, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    /// The rest of the request, where it matters (`max_minted_ts_ms=...`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request: String,
    /// What came back: `OK: ...`, or the status as the workload records it.
    pub answer: String,
    pub time_ns: u64,
}

/// All forged calls of a history, in file order.
pub fn forged_calls(events: &[Event]) -> impl Iterator<Item = &ForgedCall> {
    events.iter().filter_map(|e| match e {
        Event::Adversary(c) => Some(c),
        _ => None,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("history {path} line {line}: {source}")]
    Parse { path: PathBuf, line: usize, source: serde_json::Error },
    #[error("cannot encode a history event: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Appends events to `history.jsonl`, one JSON object per line.
#[derive(Debug)]
pub struct HistoryWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl HistoryWriter {
    /// Opens `path` for appending, creating it if needed.
    pub fn open(path: &Path) -> Result<HistoryWriter, HistoryError> {
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| io_error(path, e))?;
        Ok(HistoryWriter { path: path.to_path_buf(), out: BufWriter::new(file) })
    }

    /// Buffers one event; call [`HistoryWriter::flush`] to make it durable.
    pub fn append(&mut self, event: &Event) -> Result<(), HistoryError> {
        let line = serde_json::to_string(event).map_err(HistoryError::Encode)?;
        writeln!(self.out, "{line}").map_err(|e| io_error(&self.path, e))
    }

    /// Writes buffered events and fsyncs, so a harness crash loses nothing appended before.
    pub fn flush(&mut self) -> Result<(), HistoryError> {
        self.out.flush().map_err(|e| io_error(&self.path, e))?;
        self.out.get_ref().sync_data().map_err(|e| io_error(&self.path, e))
    }
}

fn io_error(path: &Path, source: std::io::Error) -> HistoryError {
    HistoryError::Io { path: path.to_path_buf(), source }
}

/// Reads every event of a `history.jsonl`, in file order. Blank lines are skipped; any other
/// line that does not parse is an error naming its line number.
pub fn load(path: &Path) -> Result<Vec<Event>, HistoryError> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let mut events = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| io_error(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str(&line).map_err(|e| HistoryError::Parse {
            path: path.to_path_buf(),
            line: index + 1,
            source: e,
        })?;
        events.push(event);
    }
    Ok(events)
}

/// What pairing needs from an operation event.
pub trait Operation {
    fn process(&self) -> u64;
    fn op_id(&self) -> u64;
    fn phase(&self) -> Phase;
    fn time_ns(&self) -> u64;
}

macro_rules! impl_operation {
    ($($t:ty),*) => {$(
        impl Operation for $t {
            fn process(&self) -> u64 { self.process }
            fn op_id(&self) -> u64 { self.op_id }
            fn phase(&self) -> Phase { self.phase }
            fn time_ns(&self) -> u64 { self.time_ns }
        }
    )*};
}
impl_operation!(ClientOp, RegistryOp);

/// An invoke with its completion, if one was recorded.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a, T> {
    pub invoke: &'a T,
    pub completion: Option<&'a T>,
}

impl<T: Operation> Invocation<'_, T> {
    /// How it ended; an op that never completed counts as `info` (it may have taken effect).
    pub fn outcome(&self) -> Phase {
        self.completion.map_or(Phase::Info, |c| c.phase())
    }

    pub fn invoke_ns(&self) -> u64 {
        self.invoke.time_ns()
    }

    /// When it completed; `None` if it never did (it may take effect at any later time).
    pub fn complete_ns(&self) -> Option<u64> {
        self.completion.map(|c| c.time_ns())
    }
}

impl Invocation<'_, ClientOp> {
    /// The IDs of an ok op (empty otherwise).
    pub fn ranges(&self) -> &[IdRange] {
        match self.completion {
            Some(c) if c.phase == Phase::Ok => c.value.as_ref().map_or(&[], |v| &v.ranges),
            _ => &[],
        }
    }

    /// The smallest and largest ID of an ok op, if it returned any.
    pub fn id_bounds(&self) -> Option<(u64, u64)> {
        let ranges = self.ranges().iter().filter(|r| r.count > 0);
        let min = ranges.clone().map(|r| r.first).min()?;
        let max = ranges.filter_map(IdRange::last).max()?;
        Some((min, max))
    }
}

/// Pairs each invoke with the next completion of the same `(process, op_id)`, in invoke
/// order. A completion without an earlier invoke is dropped (the harness writes the invoke
/// first, so that would be a harness bug, not a system behaviour).
pub fn pair<'a, T: Operation>(ops: impl IntoIterator<Item = &'a T>) -> Vec<Invocation<'a, T>> {
    let mut out: Vec<Invocation<'a, T>> = Vec::new();
    let mut open: HashMap<(u64, u64), usize> = HashMap::new();
    for op in ops {
        let key = (op.process(), op.op_id());
        if op.phase() == Phase::Invoke {
            open.insert(key, out.len());
            out.push(Invocation { invoke: op, completion: None });
        } else if let Some(index) = open.remove(&key) {
            out[index].completion = Some(op);
        }
    }
    out
}

/// All client ops of a history, paired.
pub fn client_ops(events: &[Event]) -> Vec<Invocation<'_, ClientOp>> {
    pair(events.iter().filter_map(|e| match e {
        Event::Op(op) => Some(op),
        _ => None,
    }))
}

/// All registry ops of a history, paired.
pub fn registry_ops(events: &[Event]) -> Vec<Invocation<'_, RegistryOp>> {
    pair(events.iter().filter_map(|e| match e {
        Event::Registry(op) => Some(op),
        _ => None,
    }))
}

/// All lease events of a history, in file order.
pub fn lease_events(events: &[Event]) -> impl Iterator<Item = &LeaseEvent> {
    events.iter().filter_map(|e| match e {
        Event::Lease(l) => Some(l),
        _ => None,
    })
}

/// All process events of a history, in file order.
pub fn process_events(events: &[Event]) -> impl Iterator<Item = &ProcessEvent> {
    events.iter().filter_map(|e| match e {
        Event::Process(p) => Some(p),
        _ => None,
    })
}

/// One fault interval: a nemesis `start` and the next `stop` of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NemesisWindow {
    pub name: String,
    pub start_ns: u64,
    /// `None` if the run ended with the fault still in place.
    pub stop_ns: Option<u64>,
    pub detail: String,
}

impl NemesisWindow {
    /// Whether `t` falls inside `[start, stop)`.
    pub fn contains(&self, t: u64) -> bool {
        t >= self.start_ns && self.stop_ns.is_none_or(|stop| t < stop)
    }
}

/// Every nemesis interval of a history, ordered by start.
pub fn nemesis_windows(events: &[Event]) -> Vec<NemesisWindow> {
    let mut windows: Vec<NemesisWindow> = Vec::new();
    let mut open: HashMap<&str, usize> = HashMap::new();
    for event in events {
        let Event::Nemesis(n) = event else { continue };
        match n.phase {
            NemesisPhase::Start => {
                open.insert(&n.name, windows.len());
                windows.push(NemesisWindow {
                    name: n.name.clone(),
                    start_ns: n.time_ns,
                    stop_ns: None,
                    detail: n.detail.clone(),
                });
            }
            NemesisPhase::Stop => {
                if let Some(index) = open.remove(n.name.as_str()) {
                    windows[index].stop_ns = Some(n.time_ns);
                }
            }
        }
    }
    windows.sort_by_key(|w| w.start_ns);
    windows
}

#[cfg(test)]
#[path = "history_tests.rs"]
mod tests;

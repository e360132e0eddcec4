//! Named limits of a registry node: every bound the registry enforces lives here.

/// Longest accepted holder identity, in bytes. A holder names one worker process
/// (e.g. `host/pid/boot-nonce`); anything longer is a client bug, not an identity.
pub const HOLDER_LEN_MAX: usize = 256;

/// Largest worker-ID field the registry will manage (2^16 IDs); the default layout uses 10.
pub use fenceflake_proto::wire::WORKER_ID_BITS_MAX;

/// Longest quarantine reason kept in the table and the audit log, in bytes.
pub const REASON_LEN_MAX: usize = 512;

/// Longest identity (a SPIFFE ID URI) recorded as a lease's owner: trust domain (255) plus
/// the fixed path and a name of at most 64 bytes.
pub const OWNER_LEN_MAX: usize = 400;

/// How far ahead of the leader's clock a renewal's `wall_ms_at_send` may be before it is
/// refused (`CLOCK_SKEW`) instead of moving the high-water mark: well above any skew a worker
/// tolerates itself (500 ms by default), far below what would let a claim poison an ID.
pub const CLAIM_AHEAD_MAX_MS: u64 = 30_000;

/// The largest high-water window (`--renew-window`) a renewal may carry: the next holder of
/// a worker ID whose holder vanished may wait up to the window for its `not_before`, so the
/// bound keeps a mistyped flag (or a forged entry) from making an ID unusable for long.
/// Part of how apply rules 3 and 4 apply an entry (a window above it counts as it): a release
/// that changes it must bring new apply rules, or replicas would apply one entry two ways.
pub const RENEW_WINDOW_MAX_MS: u64 = 300_000;

/// The largest `--election-timeout-max`. A node's data dir records the largest value it
/// stated to leaders, and a restart with a smaller one refuses votes for the recorded value
/// first (`start_quiet.rs`): without a bound, one mistyped restart (`10m` for `100ms`) would
/// leave the node unable to vote for that long after every later restart until one process
/// outlived it, and a rolling fix of all nodes would leave the cluster unable to elect. Ten
/// seconds is far above any timing that keeps a failover shorter than a worker's lease (a
/// failover waits one election timeout and more) and below what an outage of a mistake costs.
pub const ELECTION_TIMEOUT_MAX_MS_LIMIT: u64 = 10_000;

/// Commands packed into one Raft entry by the proposer. One entry costs one fsync on each
/// replica, so batching is what lets renewals scale; the bound keeps an entry small.
pub const COMMANDS_PER_ENTRY_MAX: usize = 1024;

/// Slots of the log position reserved per entry: a fencing token is
/// `log_index << TOKEN_SLOT_BITS | slot`, so every command in a batch gets its own token.
pub const TOKEN_SLOT_BITS: u32 = 12;

/// A fencing token is `generation << TOKEN_GENERATION_SHIFT | (offset + log position)`. Each
/// restore from a backup starts a new generation, so the restored cluster's tokens are above every
/// token the lost cluster could have issued after the backup was taken (it cannot know them).
pub const TOKEN_GENERATION_SHIFT: u32 = 56;

/// Log indexes a token has room for: `2^43` entries, 27 years at 10 000 entries a second (one
/// fsync each; batching keeps real clusters far below that). One bit below what the generation
/// leaves, so that a restore's random offset fits beside any position.
pub const TOKEN_LOG_INDEX_BITS: u32 = 43;

/// Width of a restore's random token offset (`0..2^55`, drawn by the leader that proposes the
/// restore). Two clusters restored from one backup share a generation; their offsets make equal
/// token values improbable (docs/design.md, Restores): each pair of grants of one worker ID
/// collides with probability at most `2^-55`.
pub const TOKEN_OFFSET_BITS: u32 = 55;

/// Largest backup `ctl snapshot import` accepts, in bytes: the restore travels as one Raft
/// entry, which must fit a peer message with room to spare. A full 16-bit table (65,536 held
/// IDs with production-sized holder and identity names) is a 49 MB file (pretty-printed; its
/// compact form in the entry is about two thirds of that): `backup::tests` checks it fits.
pub const BACKUP_BYTES_MAX: usize = PEER_MESSAGE_BYTES_MAX / 2;

/// Largest message on the client port: a backup plus its envelope. Only `ImportSnapshot`
/// may send one that large, and only `ExportSnapshot` answers with one.
pub const CLIENT_MESSAGE_BYTES_MAX: usize = BACKUP_BYTES_MAX + 64 * 1024;

/// Largest request any other client RPC may send (each stream message of `RenewStream` too):
/// far above any valid one (the longest field is a 512-byte reason), so that an authenticated
/// caller cannot make a node buffer a backup's worth of memory per call.
pub const CLIENT_REQUEST_BYTES_MAX: usize = 1024 * 1024;

/// Audit entries kept (oldest dropped first); each is a proven overlap and pages a human,
/// so this is far more than any sane cluster will see.
pub const AUDIT_ENTRIES_MAX: usize = 4096;

/// Proposals waiting for the batcher; beyond this, callers get `UNAVAILABLE` (back-pressure)
/// instead of an unbounded queue.
pub const PROPOSAL_QUEUE_MAX: usize = 16 * 1024;

/// Renewals of one `RenewStream` in flight at once; beyond this the server stops reading the
/// stream (HTTP/2 flow control then holds the caller back) instead of buffering without bound.
/// A stream is one caller's renewals multiplexed: a process holding the whole 16-bit worker-ID
/// space renews about 20 000 leases a second (TTL 10 s, every TTL/3), a few dozen in flight at
/// a few ms each, well under this. The bound also keeps one caller from taking more than a
/// 64th of the proposal queue; answers waiting for a caller that does not read are bounded by
/// as many again (the stream's answer channel).
pub const RENEW_STREAM_IN_FLIGHT_MAX: usize = 256;

/// Renewals one `ForwardRenewals` peer call carries at most (a leader refuses more, and the
/// follower then forwards them singly): far more than a follower's queue holds while its calls
/// are in flight, even when a whole 16-bit fleet renews through it (about 4 000 a second
/// each); at ~200 bytes each, a small call.
pub const FORWARDED_RENEWALS_PER_CALL_MAX: usize = 512;

/// Renewals waiting on a follower for a forwarding call; a renewal that cannot enter the queue
/// before its deadline is answered `UNAVAILABLE` (overloaded; definite: never sent).
pub const FORWARD_QUEUE_MAX: usize = 16 * 1024;

/// Encoded Raft payloads accepted on the peer port (snapshots are chunked well below this).
/// Sized by the largest restore (see [`BACKUP_BYTES_MAX`]); peers are authenticated members,
/// and only a restore's entry comes near it.
pub const PEER_MESSAGE_BYTES_MAX: usize = 128 * 1024 * 1024;

/// Largest body of one peer message (its JSON), leaving room for the protobuf envelope.
pub const PEER_BODY_BYTES_MAX: usize = PEER_MESSAGE_BYTES_MAX - 64 * 1024;

/// The body an AppendEntries of several entries is cut down to (above it, it goes back to
/// openraft as `PayloadTooLarge` with fewer entries): what releases before the 128 MiB peer
/// message accepted, so that a rolling upgrade's older nodes keep catching up. Only a single
/// entry above it (a large restore, into a cluster whose nodes all run one release) goes whole.
pub const APPEND_BODY_BYTES_BUDGET: usize = 16 * 1024 * 1024 - 64 * 1024;

/// Largest Raft entry (a batch of encoded commands) the proposer builds: above the largest
/// restore a client can send, and small enough that one entry always fits a peer message
/// (so replication can always make progress, one entry at a time). A single command above it
/// is refused with `INVALID_ARGUMENT` before it is proposed.
pub const ENTRY_BYTES_MAX: usize = PEER_MESSAGE_BYTES_MAX / 4 * 3;

const _: () = assert!(COMMANDS_PER_ENTRY_MAX <= 1 << TOKEN_SLOT_BITS);
const _: () = assert!(WORKER_ID_BITS_MAX <= 22);
const _: () = assert!(TOKEN_SLOT_BITS < TOKEN_GENERATION_SHIFT);
// The largest offset plus the largest position stays below the generation bits.
const _: () = assert!(
    ((1u64 << TOKEN_OFFSET_BITS) - 1) + ((1u64 << (TOKEN_LOG_INDEX_BITS + TOKEN_SLOT_BITS)) - 1)
        < 1u64 << TOKEN_GENERATION_SHIFT
);
const _: () = assert!(CLIENT_MESSAGE_BYTES_MAX < ENTRY_BYTES_MAX);
const _: () = assert!(RENEW_STREAM_IN_FLIGHT_MAX * 64 <= PROPOSAL_QUEUE_MAX);
const _: () = assert!(ENTRY_BYTES_MAX + 1024 * 1024 <= PEER_BODY_BYTES_MAX);
// A full batch of the largest valid renewals (each far below 1 KiB) fits a peer message.
const _: () = assert!(FORWARDED_RENEWALS_PER_CALL_MAX * 1024 <= APPEND_BODY_BYTES_BUDGET);
const _: () = assert!(APPEND_BODY_BYTES_BUDGET <= PEER_BODY_BYTES_MAX);

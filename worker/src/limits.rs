//! Named limits of the worker: every bound the minting core, clock guard and ceiling rely on.
//!
//! Each constant says why it exists; relations between them are checked at compile time so a
//! change to one that breaks another fails the build instead of a run.

/// Bits of the worker-ID field in the default (Twitter-compatible) layout: 1024 worker IDs.
pub const DEFAULT_WORKER_ID_BITS: u8 = 10;

/// Bits of the sequence field in the default layout: 4,096 IDs per millisecond per worker.
pub const DEFAULT_SEQUENCE_BITS: u8 = 12;

/// Bits of the timestamp field in the default layout: about 69 years of milliseconds.
pub const DEFAULT_TIMESTAMP_BITS: u8 = 41;

/// Largest worker-ID field: worker IDs travel as `u16`, and more than 65,536 workers would
/// outgrow what one registry can lease and renew. Defined once in the wire contract, since
/// the registry refuses a cluster config above it and the worker a grant above it.
pub use fenceflake_proto::wire::WORKER_ID_BITS_MAX;

/// Largest sequence field: 4M IDs per millisecond is far beyond what one process can hand
/// out, and the sequence travels as `u32`. Smallest timestamp field: 2^31 ms is about 24.8
/// days. Bits below the always-zero sign bit: 63. Defined once in the wire contract, with the
/// one layout rule (`wire::layout_timestamp_bits`) the registry applies before it bootstraps.
pub use fenceflake_proto::wire::{ID_PAYLOAD_BITS, SEQUENCE_BITS_MAX, TIMESTAMP_BITS_MIN};

/// Most IDs one `GenerateBatch` may ask for. Bounds the work and the response of one call;
/// at least one whole millisecond of the default layout so a full ms is one range.
pub const MAX_BATCH_COUNT: u32 = 100_000;

/// Default longest clock regression the guard waits out instead of parking (docs/design.md
/// "Clock guard"). Spinning blocks minting, so it must stay short.
pub const DEFAULT_MAX_SPIN_MS: u64 = 20;

/// Largest configurable spin: beyond a second a regression is an incident, not jitter, and
/// the worker must park and say so rather than stall callers.
pub const MAX_SPIN_MS: u64 = 1_000;

/// Default distance the persisted ceiling runs ahead of the newest minted timestamp: one
/// fsync per second of minting, and at most one second of boot wait after a crash.
pub const DEFAULT_FLUSH_INTERVAL_MS: u64 = 1_000;

/// Largest configurable flush interval; it is also the boot wait after a crash, so it must
/// fit inside [`MAX_BOOT_WAIT_MS`].
pub const MAX_FLUSH_INTERVAL_MS: u64 = 10_000;

/// Default largest difference between the worker's wall clock and the registry leader's
/// before the worker refuses to mint (`CLOCK_SKEW`).
pub const DEFAULT_MAX_SKEW_MS: u64 = 500;

/// Longest a booting worker waits for its wall clock to pass the ceiling / `not_before`: a
/// restart that takes its holder's lease over (a new incarnation) waits out up to one whole
/// TTL of the previous process, plus 30 s. Longer means the clock is far behind the state it
/// left, and a human must look.
pub const MAX_BOOT_WAIT_MS: u64 = MAX_LEASE_TTL_MS + 30_000;

/// Largest ceiling file accepted when reading: a valid one is about 40 bytes, so anything
/// bigger is corruption and is not read into memory.
pub const CEILING_FILE_MAX_BYTES: u64 = 128;

/// Default lease TTL asked of the registry: renewals every ~3.3 s, and a registry outage
/// shorter than `ttl - margin` (9 s) costs nothing.
pub const DEFAULT_LEASE_TTL_MS: u64 = 10_000;

/// Cap of the default safety margin subtracted from the TTL on the worker's monotonic clock:
/// absorbs the drift between the worker's and the registry's monotonic clocks over one TTL.
/// The default is `min(this, ttl / DEFAULT_MARGIN_TTL_DIVISOR)` (`config::default_margin`):
/// 1 s for the default 10 s lease, a tenth of shorter ones.
pub const DEFAULT_MARGIN_MAX_MS: u64 = 1_000;

/// The default margin is at most this fraction (`1/n`) of the TTL, so a short lease still
/// keeps the margin below a third of it (one missed renewal must not park the worker).
pub const DEFAULT_MARGIN_TTL_DIVISOR: u32 = 10;

/// Longest TTL a worker asks for: the registry's default maximum. Longer leases only delay
/// the re-grant of a dead worker's ID.
pub const MAX_LEASE_TTL_MS: u64 = 60_000;

/// Shortest TTL: renewals every `ttl/3` must leave room for a few round trips and retries.
pub const MIN_LEASE_TTL_MS: u64 = 300;

/// Renewal jitter: each renewal waits `ttl/3` minus up to this percentage, so workers started
/// together do not renew in lockstep, and never later than `ttl/3`.
pub const RENEW_JITTER_PERCENT: u64 = 20;

/// Bounds on the timeout of one registry RPC; the timeout itself is `ttl/3` clamped to them:
/// above a round trip of `ttl/4`, and a hanging node still leaves time to try another before
/// the deadline.
pub const REGISTRY_RPC_TIMEOUT_MIN_MS: u64 = 200;
pub const REGISTRY_RPC_TIMEOUT_MAX_MS: u64 = 2_000;

/// Default connect timeout to one registry node (`--registry-connect-timeout`), TCP and TLS
/// handshakes together (two round trips): a LAN; a node that does not accept in this long is
/// treated as down and the next one is tried, so a sweep past dead nodes stays short.
pub const DEFAULT_REGISTRY_CONNECT_TIMEOUT_MS: u64 = 250;
/// The smallest connect timeout accepted: below it even a loopback TLS handshake under load
/// would fail.
pub const MIN_REGISTRY_CONNECT_TIMEOUT_MS: u64 = 10;

/// Backoff between sweeps over all registry nodes: starts here, doubles, with jitter.
pub const REGISTRY_BACKOFF_MIN_MS: u64 = 50;

/// Backoff cap: short enough that a healed registry is noticed within a second.
pub const REGISTRY_BACKOFF_MAX_MS: u64 = 1_000;

/// Most registry addresses a worker accepts: a registry has five nodes; more means a
/// misconfiguration.
pub const MAX_REGISTRY_ADDRS: usize = 16;

/// How long a booting worker keeps trying to acquire its lease before giving up (and letting
/// its supervisor restart it).
pub const ACQUIRE_TIMEOUT_MS: u64 = 30_000;

/// Default of `--id-wait`: how long a starting worker waits while the registry says no worker
/// ID can be had now (every ID held or quarantined, or the one asked for held by the
/// registry's restore embargo). An embargo lasts the registry's max TTL + cool-down (61 s with
/// the defaults); waiting it out beats exiting into a supervisor's crash-loop backoff.
pub const DEFAULT_ID_WAIT_MS: u64 = 300_000;

/// Largest `--id-wait`: beyond an hour a worker without an ID is an incident to look at, not
/// an embargo to sit out.
pub const MAX_ID_WAIT_MS: u64 = 3_600_000;

/// Retries while waiting for a worker ID start this far apart, doubling (with jitter) up to
/// [`ID_WAIT_BACKOFF_MAX_MS`]: a lifted embargo is noticed within seconds, and a thousand
/// waiting workers cost the registry a few hundred Acquires a second at most.
pub const ID_WAIT_BACKOFF_MIN_MS: u64 = 500;
pub const ID_WAIT_BACKOFF_MAX_MS: u64 = 5_000;

/// How long a stopping worker tries to release its lease; past this the lease simply expires.
pub const RELEASE_TIMEOUT_MS: u64 = 3_000;

/// Longest one Generate/GenerateBatch call may take (spins, sequence exhaustion, ceiling
/// fsyncs included) before it gives up with UNAVAILABLE.
pub const GENERATE_TIMEOUT_MS: u64 = 2_000;

/// How often the worker re-evaluates whether it is serving (lease deadline passed, clock
/// recovered) when nothing else happens, to update health and metrics.
pub const STATE_POLL_MS: u64 = 50;

/// Default per-caller rate limit, in IDs per second: a quarter of one worker's hard ceiling
/// (4,096,000 IDs/s), so one caller cannot starve the others.
pub const DEFAULT_RATE_LIMIT_IDS_PER_SEC: u64 = 1_000_000;

/// Default per-caller burst: one maximal batch, so any valid batch can succeed.
pub const DEFAULT_RATE_LIMIT_BURST: u64 = MAX_BATCH_COUNT as u64;

/// Callers tracked by the rate limiter; past this the longest-idle buckets are dropped (they
/// were full anyway, or nearly so). Bounds memory against callers that vary `x-caller`.
pub const MAX_RATE_LIMITED_CALLERS: usize = 10_000;

/// Longest `x-caller` value honoured; longer ones are cut, bounding per-caller memory.
pub const MAX_CALLER_KEY_BYTES: usize = 128;

const _: () = assert!(DEFAULT_TIMESTAMP_BITS + DEFAULT_WORKER_ID_BITS + DEFAULT_SEQUENCE_BITS == ID_PAYLOAD_BITS);
const _: () = assert!(DEFAULT_WORKER_ID_BITS <= WORKER_ID_BITS_MAX);
const _: () = assert!(DEFAULT_SEQUENCE_BITS <= SEQUENCE_BITS_MAX);
const _: () = assert!(DEFAULT_TIMESTAMP_BITS >= TIMESTAMP_BITS_MIN);
// A worker ID must fit the `u16` it travels in, and a sequence value the `u32`.
const _: () = assert!(WORKER_ID_BITS_MAX <= 16);
const _: () = assert!(SEQUENCE_BITS_MAX < 32);
// A whole millisecond of the default layout fits one batch (docs/design.md "Liveness").
const _: () = assert!(MAX_BATCH_COUNT as u64 >= 1u64 << DEFAULT_SEQUENCE_BITS);
const _: () = assert!(DEFAULT_MAX_SPIN_MS <= MAX_SPIN_MS);
const _: () = assert!(DEFAULT_FLUSH_INTERVAL_MS >= 1);
const _: () = assert!(DEFAULT_FLUSH_INTERVAL_MS <= MAX_FLUSH_INTERVAL_MS);
// A crash costs a boot wait of up to one flush interval; that must not already exceed the
// boot-wait limit, or every crash would need a human.
const _: () = assert!(MAX_FLUSH_INTERVAL_MS <= MAX_BOOT_WAIT_MS);
const _: () = assert!(MIN_LEASE_TTL_MS <= DEFAULT_LEASE_TTL_MS && DEFAULT_LEASE_TTL_MS <= MAX_LEASE_TTL_MS);
// The default margin leaves two renewal intervals of slack before the deadline, for every
// TTL: it is at most a tenth of the TTL (below the third `validate` demands), and above zero
// for the shortest TTL.
const _: () = assert!(DEFAULT_MARGIN_MAX_MS * 3 < DEFAULT_LEASE_TTL_MS);
const _: () = assert!(DEFAULT_MARGIN_TTL_DIVISOR > 3);
const _: () = assert!(MIN_LEASE_TTL_MS / DEFAULT_MARGIN_TTL_DIVISOR as u64 > 0);
const _: () = assert!(REGISTRY_RPC_TIMEOUT_MIN_MS <= REGISTRY_RPC_TIMEOUT_MAX_MS);
const _: () = assert!(REGISTRY_BACKOFF_MIN_MS <= REGISTRY_BACKOFF_MAX_MS);
const _: () = assert!(ID_WAIT_BACKOFF_MIN_MS <= ID_WAIT_BACKOFF_MAX_MS);
// The default wait outlasts an embargo at the longest TTL a worker asks for, several times.
const _: () = assert!(DEFAULT_ID_WAIT_MS >= 2 * (MAX_LEASE_TTL_MS + ID_WAIT_BACKOFF_MAX_MS));
const _: () = assert!(DEFAULT_ID_WAIT_MS <= MAX_ID_WAIT_MS);
const _: () = assert!(RENEW_JITTER_PERCENT < 100);
// A spin must fit inside one call, or every regression would time callers out.
const _: () = assert!(MAX_SPIN_MS < GENERATE_TIMEOUT_MS);
// A maximal batch must fit in the default burst, or it could never be served.
const _: () = assert!(DEFAULT_RATE_LIMIT_BURST >= MAX_BATCH_COUNT as u64);

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
/// outgrow what one registry can lease and renew.
pub const WORKER_ID_BITS_MAX: u8 = 16;

/// Largest sequence field: 4M IDs per millisecond is far beyond what one process can hand
/// out, and the sequence travels as `u32`.
pub const SEQUENCE_BITS_MAX: u8 = 22;

/// Smallest timestamp field: 2^31 ms is about 24.8 days. Anything shorter would wrap within
/// a single deployment's lifetime.
pub const TIMESTAMP_BITS_MIN: u8 = 31;

/// Bits available below the always-zero sign bit, so IDs stay positive as signed 64-bit.
pub const ID_PAYLOAD_BITS: u8 = 63;

/// Most IDs one `GenerateBatch` may ask for. Bounds the work and the response of one call;
/// at least one whole millisecond of the default layout so a full ms is one range.
pub const MAX_BATCH_COUNT: u32 = 100_000;

/// Default longest clock regression the guard waits out instead of parking (DESIGN.md
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

/// Longest a booting worker waits for its wall clock to pass the ceiling / `not_before`.
/// Longer means the clock is far behind the state it left, and a human must look.
pub const MAX_BOOT_WAIT_MS: u64 = 30_000;

/// Largest ceiling file accepted when reading: a valid one is about 40 bytes, so anything
/// bigger is corruption and is not read into memory.
pub const CEILING_FILE_MAX_BYTES: u64 = 128;

const _: () = assert!(DEFAULT_TIMESTAMP_BITS + DEFAULT_WORKER_ID_BITS + DEFAULT_SEQUENCE_BITS == ID_PAYLOAD_BITS);
const _: () = assert!(DEFAULT_WORKER_ID_BITS <= WORKER_ID_BITS_MAX);
const _: () = assert!(DEFAULT_SEQUENCE_BITS <= SEQUENCE_BITS_MAX);
const _: () = assert!(DEFAULT_TIMESTAMP_BITS >= TIMESTAMP_BITS_MIN);
// A worker ID must fit the `u16` it travels in, and a sequence value the `u32`.
const _: () = assert!(WORKER_ID_BITS_MAX <= 16);
const _: () = assert!(SEQUENCE_BITS_MAX < 32);
// A whole millisecond of the default layout fits one batch (DESIGN.md "Liveness").
const _: () = assert!(MAX_BATCH_COUNT as u64 >= 1u64 << DEFAULT_SEQUENCE_BITS);
const _: () = assert!(DEFAULT_MAX_SPIN_MS <= MAX_SPIN_MS);
const _: () = assert!(DEFAULT_FLUSH_INTERVAL_MS >= 1);
const _: () = assert!(DEFAULT_FLUSH_INTERVAL_MS <= MAX_FLUSH_INTERVAL_MS);
// A crash costs a boot wait of up to one flush interval; that must not already exceed the
// boot-wait limit, or every crash would need a human.
const _: () = assert!(MAX_FLUSH_INTERVAL_MS <= MAX_BOOT_WAIT_MS);

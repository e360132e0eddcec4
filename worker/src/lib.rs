//! Fenceflake worker: the pure minting core, the safety mechanisms around it, and the
//! process around those — lease keeper, gRPC service and library mode. The balancing client
//! for callers is the `fenceflake-client` crate, which links only the protobuf contract.
//!
//! The pieces, from the inside out:
//! - [`layout`]: the bit layout `0 | timestamp | worker ID | sequence`, encode and decode.
//! - [`minter`]: turns a millisecond into runs of IDs for one worker ID; asserts IDs only
//!   grow and always carry the worker ID. Never reads a clock.
//! - [`clock_guard`]: the ladder for a wall clock that went back (proceed, spin, borrow the
//!   frozen millisecond, park) and the skew check against the registry (over each call's
//!   round trip: `fenceflake_proto::clock_offset`).
//! - [`ceiling`]: the persisted timestamp ceiling, so a restart never replays a millisecond
//!   (safety mechanism 5).
//! - [`deadline`]: the lease deadline on the monotonic clock, counted from the request's
//!   send time (safety mechanism 2).
//! - [`clock`]: the only place time is read; [`ManualClock`] drives tests and simulation.
//! - [`limits`]: every bound above and below, named and cross-checked at compile time.
//! - [`boot`]: from which millisecond a booting worker may mint (ceiling, `not_before`) and
//!   whether its clock is trusted.
//! - [`mint_state`]: one minting step under the lock — park checks, the guard ladder, the
//!   ceiling flush and the deadline re-check after the wall clock was read.
//! - `fast_path`: single IDs without the lock — one compare-and-swap over the last ID,
//!   bounds published by [`mint_state`], its only writer; why that is safe is argued there.
//! - [`state_dir`], [`holder`], [`durable_file`]: the locked state directory with the
//!   ceiling and the persisted holder ID.
//! - [`registry_client`]: the registry API behind a trait, over gRPC with node failover.
//! - `acquire`: the first lease at start — retries an unavailable registry, waits out an
//!   embargo or a full table (bounded by `id_wait`), gives up a remembered holder in the way.
//! - `shared`: what a running worker's handles and tasks share (the mint state under its
//!   lock, the registry, the published park cause); below both the keeper and the generator.
//! - [`keeper`]: renews the lease, extends the deadline, parks on FENCED/QUARANTINED.
//! - [`generator`]: library mode — [`Generator`] runs all of the above in-process.
//! - [`service`], [`rate_limit`], [`server`], [`metrics`]: the gRPC service with per-caller
//!   limits and health, the Prometheus metrics.
//!
//! Architecture invariant: the modules up to [`limits`] use no tokio and no network; the
//! ones after them do the waiting, counting and logging those modules decide.

mod acquire;
pub mod boot;
pub mod ceiling;
pub mod clock;
pub mod clock_guard;
pub mod config;
pub mod deadline;
pub mod durable_file;
mod fast_path;
pub mod generator;
pub mod holder;
pub mod keeper;
pub mod layout;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod mint_state;
pub mod minter;
pub mod park;
pub mod rate_limit;
pub mod registry_client;
pub mod server;
pub mod service;
mod shared;
pub mod state_dir;
pub mod worker_id;

pub use ceiling::{boot_wait_until, CeilingError, CeilingPolicy, CeilingStore, Loaded};
pub use clock::{Clock, ManualClock, MonoTime, SystemClock};
pub use clock_guard::{
    check_skew, judge_skew, ClockGuardPolicy, GuardAction, ParkReason, RoundTrip, SkewError, SkewVerdict,
};
pub use config::{ConfigError, WorkerConfig, WorkerIdSpec};
pub use deadline::{DeadlineError, LeaseDeadline};
/// What [`WorkerConfig::security`] holds: mutual TLS with a certificate, or plaintext.
pub use fenceflake_proto::tls::Security;
pub use generator::{Batch, Generator, StartError, WorkerStatus};
pub use holder::{HolderId, Incarnation};
pub use layout::{DecodedId, EncodeError, Layout, LayoutError};
pub use lease::{LeaseGrant, SequenceBitsDisagree, Token};
pub use mint_state::GenerateError;
pub use minter::{IdRun, MintOutcome, Minter, MinterError};
pub use park::ParkCause;
pub use rate_limit::{RateLimitConfig, RateLimiter};
pub use worker_id::WorkerId;

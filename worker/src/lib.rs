//! Fenceflake worker: the pure minting core and the safety mechanisms around it.
//!
//! The pieces, from the inside out:
//! - [`layout`]: the bit layout `0 | timestamp | worker ID | sequence`, encode and decode.
//! - [`minter`]: turns a millisecond into runs of IDs for one worker ID; asserts IDs only
//!   grow and always carry the worker ID. Never reads a clock.
//! - [`clock_guard`]: the ladder for a wall clock that went back (proceed, spin, borrow the
//!   frozen millisecond, park) and the skew check against the registry.
//! - [`ceiling`]: the persisted timestamp ceiling, so a restart never replays a millisecond
//!   (safety mechanism 5).
//! - [`deadline`]: the lease deadline on the monotonic clock, counted from the request's
//!   send time (safety mechanism 2).
//! - [`clock`]: the only place time is read; [`ManualClock`] drives tests and simulation.
//! - [`limits`]: every bound above, named and cross-checked at compile time.
//!
//! Architecture invariant: nothing here uses tokio or the network. The lease keeper and the
//! gRPC service sit on top and do the waiting, counting and logging these modules decide.

pub mod ceiling;
pub mod clock;
pub mod clock_guard;
pub mod deadline;
pub mod layout;
pub mod limits;
pub mod minter;
pub mod worker_id;

pub use ceiling::{boot_wait_until, CeilingError, CeilingPolicy, CeilingStore, Loaded};
pub use clock::{Clock, ManualClock, MonoTime, SystemClock};
pub use clock_guard::{check_skew, ClockGuardPolicy, GuardAction, ParkReason, SkewError};
pub use deadline::{DeadlineError, LeaseDeadline};
pub use layout::{DecodedId, EncodeError, Layout, LayoutError};
pub use minter::{IdRun, MintOutcome, Minter, MinterError};
pub use worker_id::WorkerId;

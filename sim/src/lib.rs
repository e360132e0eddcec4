//! Fenceflake's deterministic simulator: the real registry (openraft, lease table, leader,
//! proposer, services) and the real workers (acquire, keeper, minting state, ceiling) in one
//! process, under simulated time, network, disks and clocks, all from one `u64` seed; the
//! harness's checkers over every simulated history. See README.md.

#[cfg(not(tokio_unstable))]
compile_error!(
    "fenceflake-sim must be built with `--cfg tokio_unstable` (the only way to seed tokio's scheduler): \
     build it from sim/, whose .cargo/config.toml sets it, not with RUSTFLAGS overriding that"
);

pub mod adversary;
pub mod checks;
pub mod clock;
pub mod identity;
pub mod membership;
pub mod nemesis;
pub mod net;
pub mod nodes;
pub mod recorder;
pub mod registry_client;
pub mod replicas;
pub mod report;
pub mod restore;
pub mod seeds;
pub mod upgrade;
pub mod worker_disk;
pub mod workers;
pub mod world;

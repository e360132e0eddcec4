//! One Fenceflake registry node: the pure lease table, leader-side expiry, openraft glue on
//! sled storage, the Raft transport and the public `Registry` gRPC service.

pub mod backup;
pub mod clock;
pub mod clock_check;
pub mod clock_watch;
pub mod config;
pub mod error;
pub mod expiry;
pub mod forward;
pub mod grant_plan;
pub mod leader;
pub mod leader_lease;
pub mod lease;
pub mod limits;
pub mod lost_disk;
pub mod metrics;
pub mod node;
pub mod pre_vote;
pub mod proposal;
pub mod proposer;
pub mod raft;
pub mod rpc;
pub mod rules_raise;
pub mod served;
pub mod server;
pub mod service;
pub mod start_quiet;
pub mod storage;
#[cfg(test)]
mod strategies;
pub mod transfer;

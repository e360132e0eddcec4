//! One Fenceflake registry node: the pure lease table, leader-side expiry, openraft glue on
//! sled storage, the Raft transport and the public `Registry` gRPC service.

pub mod clock;
pub mod expiry;
pub mod lease;
pub mod limits;
pub mod raft;
pub mod storage;

//! openraft glue: type config, the Raft network over gRPC, and the peer-port service.

pub mod network;
pub mod runtime;
pub mod types;

//! gRPC services of a registry node: public `Registry` (client port) and internal
//! `RaftTransport` (peer port), with the field validation they share.

pub mod peer;
pub mod registry;
pub mod validate;

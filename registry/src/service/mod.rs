//! gRPC services of a registry node: public `Registry` (client port) and internal
//! `RaftTransport` (peer port), with the field validation they share, and the stream that
//! carries `Registry` renewals (`RenewStream`).

pub mod peer;
pub mod registry;
pub mod renew_stream;
pub mod validate;

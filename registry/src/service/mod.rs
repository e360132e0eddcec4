//! gRPC services of a registry node: public `Registry` (client port) and internal
//! `RaftTransport` (peer port), with the field validation they share, the stream that
//! carries `Registry` renewals (`RenewStream`), and the request size limit per RPC.

pub mod peer;
pub mod registry;
pub mod renew_stream;
pub mod sized;
pub mod validate;

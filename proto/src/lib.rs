//! Generated code for the `fenceflake.v1` protobuf package, plus its file descriptor set
//! (for gRPC server reflection), the wire contract beyond the messages (`wire`: reasons,
//! metadata keys, shared limits), the one duration syntax of every binary's flags, and the
//! Prometheus text and serving helpers every server shares.

/// The `fenceflake.v1` package: public Registry and Generator services, internal Raft transport.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("fenceflake.v1");
}

pub mod channel;
pub mod clock_offset;
pub mod duration;
pub mod entropy;
pub mod metrics;
pub mod serving;
pub mod switches;
pub mod tls;
pub mod wire;

/// Encoded `FileDescriptorSet` of every fenceflake proto, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fenceflake_descriptor");

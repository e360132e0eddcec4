//! Generated code for the `fenceflake.v1` protobuf package, plus its file descriptor set
//! (for gRPC server reflection), and the Prometheus text helpers every server shares.

/// The `fenceflake.v1` package: public Registry and Generator services, internal Raft transport.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("fenceflake.v1");
}

pub mod metrics;
pub mod serving;

/// Encoded `FileDescriptorSet` of every fenceflake proto, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("fenceflake_descriptor");

//! Accepting connections for a Fenceflake gRPC server from a listener the caller bound.

/// Accepted sockets with TCP_NODELAY. The server builder's `tcp_nodelay` does not apply to
/// sockets from a caller's listener, and Nagle then holds small replies back: forwarded
/// registry requests paid ~45 ms each before this (BENCHMARKS.md).
pub fn nodelay(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

//! The one client-side gRPC service type of the registry's and the worker's clients: a boxed
//! tower service, so the same client code runs over a real `tonic::transport::Channel` in
//! production and over the simulator's in-memory network (which hands requests straight to a
//! node's generated server, after its simulated delays, drops and partitions).

use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::Channel;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceExt};

/// A gRPC channel of any kind: `tonic`'s, or the simulator's.
pub type BoxChannel = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, ChannelError>;

/// Why a channel could not carry a call. tonic turns it into a `Status` by looking through
/// its source chain (a `Status` the simulator put there, or a transport error's cause), just
/// as for a bare channel's error. A concrete type, not a boxed trait object: the generated
/// clients' futures stay `Send` for every lifetime only then.
#[derive(Debug)]
pub struct ChannelError(BoxError);

impl ChannelError {
    pub fn new(error: impl Into<BoxError>) -> ChannelError {
        ChannelError(error.into())
    }
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// A real channel, boxed.
pub fn boxed(channel: Channel) -> BoxChannel {
    BoxCloneSyncService::new(channel.map_err(ChannelError::new))
}

//! The Registry service as the client and admin ports serve it, its request size chosen by
//! RPC: `ImportSnapshot` may send a backup (up to [`CLIENT_MESSAGE_BYTES_MAX`]), every other
//! RPC is refused above [`CLIENT_REQUEST_BYTES_MAX`]. tonic checks each message's length prefix
//! against the limit of the server that decodes it, before buffering it; one limit for the
//! whole service would let any authenticated caller make a node buffer a backup's worth of
//! memory per call.

use std::convert::Infallible;
use std::task::{Context, Poll};

use fenceflake_proto::v1::registry_server::RegistryServer;
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::NamedService;

use super::registry::RegistryService;
use crate::limits::{CLIENT_MESSAGE_BYTES_MAX, CLIENT_REQUEST_BYTES_MAX};

/// The one RPC whose requests may be large.
const IMPORT_PATH: &str = "/fenceflake.v1.Registry/ImportSnapshot";

/// One service, two decoders: both share the same `RegistryService`.
#[derive(Debug, Clone)]
pub struct SizedRegistry {
    import: RegistryServer<RegistryService>,
    rest: RegistryServer<RegistryService>,
}

impl SizedRegistry {
    pub fn new(service: RegistryService) -> SizedRegistry {
        // Answers may be large for every RPC alike: only `ExportSnapshot`'s are, and the node
        // builds them itself.
        let server = RegistryServer::new(service).max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX);
        SizedRegistry {
            import: server.clone().max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX),
            rest: server.max_decoding_message_size(CLIENT_REQUEST_BYTES_MAX),
        }
    }
}

impl<B> Service<http::Request<B>> for SizedRegistry
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A generated server is always ready (each call runs on its own).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() == IMPORT_PATH {
            self.import.call(request)
        } else {
            self.rest.call(request)
        }
    }
}

impl NamedService for SizedRegistry {
    const NAME: &'static str = <RegistryServer<RegistryService> as NamedService>::NAME;
}

//! A tower layer in front of every Fenceflake gRPC server: a connection without a verified
//! identity (plaintext on a TLS port, or a certificate without a Fenceflake SPIFFE ID of this
//! cluster) gets `UNAUTHENTICATED` before its request body is read — only the gRPC health
//! service answers it. Without this, an anonymous caller could make a server decode messages
//! of up to the port's size limit before the per-RPC `authorize` refused them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http;

use super::accept::{ConnInfo, Peer};
use super::authz;

/// The gRPC health service's path prefix: probes need no certificate.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// `Server::builder().layer(tls::RefuseStrangersLayer)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefuseStrangersLayer;

impl<S> tower::Layer<S> for RefuseStrangersLayer {
    type Service = RefuseStrangers<S>;

    fn layer(&self, inner: S) -> RefuseStrangers<S> {
        RefuseStrangers { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RefuseStrangers<S> {
    inner: S,
}

type Answer<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RefuseStrangers<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = Answer<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let stranger = request
            .extensions()
            .get::<ConnInfo>()
            .is_some_and(|info| matches!(info.peer, Peer::Plaintext | Peer::Unrecognized(_)));
        if stranger && !request.uri().path().starts_with(HEALTH_PREFIX) {
            let probe =
                tonic::Request::from_parts(tonic::metadata::MetadataMap::new(), request.extensions().clone(), ());
            // The same status the per-RPC check would give, without reading the body.
            let status = authz::caller(&probe).err().unwrap_or_else(|| tonic::Status::unauthenticated("refused"));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}

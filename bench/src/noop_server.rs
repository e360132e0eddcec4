//! BENCHMARK BASELINE, NOT PRODUCT CODE: the `fenceflake.v1.Generator` service with a trivial
//! implementation (a constant ID, a constant range, an empty status) served by tonic, so that
//! `fenceflake-bench worker` can measure what a unary RPC costs on this machine with no
//! minting behind it, the same way and in the same run as the real worker.

use std::future::Future;

use anyhow::Context;
use fenceflake_proto::tls::{self, Security};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::generator_server::GeneratorServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// The ID every `Generate` of the baseline answers.
const CONSTANT_ID: u64 = 0x0123_4567_89ab_cdef;

/// A Generator service that does no work.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopGenerator;

#[tonic::async_trait]
impl pb::generator_server::Generator for NoopGenerator {
    async fn generate(&self, _request: Request<pb::GenerateRequest>) -> Result<Response<pb::GenerateResponse>, Status> {
        Ok(Response::new(pb::GenerateResponse { id: CONSTANT_ID, worker_id: 1, token: 1, deadline_wall_ms: 0 }))
    }

    async fn generate_batch(
        &self,
        request: Request<pb::GenerateBatchRequest>,
    ) -> Result<Response<pb::GenerateBatchResponse>, Status> {
        let count = request.get_ref().count;
        Ok(Response::new(pb::GenerateBatchResponse {
            ranges: vec![pb::IdRange { first: CONSTANT_ID, count }],
            worker_id: 1,
            token: 1,
            deadline_wall_ms: 0,
        }))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(pb::StatusResponse::default()))
    }
}

/// Serve the baseline on `listener` until `shutdown`, accepting as the worker does: through
/// the TLS acceptor with `security` (mutual TLS, or plaintext when insecure; TCP_NODELAY on
/// every socket). Without `nodelay` (plaintext only) sockets keep Nagle's algorithm on.
pub async fn serve(
    listener: TcpListener,
    security: Security,
    nodelay: bool,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let server = tonic::transport::Server::builder().add_service(GeneratorServer::new(NoopGenerator));
    let served = if nodelay {
        server.serve_with_incoming_shutdown(tls::incoming(listener, security, "noop-grpc"), shutdown).await
    } else {
        anyhow::ensure!(!security.is_tls(), "Nagle's algorithm is kept only on a plaintext baseline");
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(false));
        server.serve_with_incoming_shutdown(incoming, shutdown).await
    };
    served.context("serving the no-op baseline")
}

//! Which worker answered: `generate_answered` / `generate_batch_answered` name the endpoint
//! whose reply the caller got, also when it was not the first one tried (a refused
//! connection failed over, a hung worker hedged around). Fake workers on loopback, each
//! answering with its own worker ID, so a wrong index shows.

use std::time::Duration;

use fenceflake_client::{Security, WorkerClient};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::generator_server::{Generator, GeneratorServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// A worker that mints from a fixed lease: worker ID `worker_id`, token 7.
struct FakeWorker {
    worker_id: u32,
}

#[tonic::async_trait]
impl Generator for FakeWorker {
    async fn generate(&self, _: Request<pb::GenerateRequest>) -> Result<Response<pb::GenerateResponse>, Status> {
        Ok(Response::new(pb::GenerateResponse {
            id: u64::from(self.worker_id) << 12,
            worker_id: self.worker_id,
            token: 7,
            deadline_wall_ms: 1,
        }))
    }

    async fn generate_batch(
        &self,
        request: Request<pb::GenerateBatchRequest>,
    ) -> Result<Response<pb::GenerateBatchResponse>, Status> {
        let range = pb::IdRange { first: u64::from(self.worker_id) << 12, count: request.get_ref().count };
        Ok(Response::new(pb::GenerateBatchResponse {
            ranges: vec![range],
            worker_id: self.worker_id,
            token: 7,
            deadline_wall_ms: 1,
        }))
    }

    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(pb::StatusResponse {
            worker_id: self.worker_id,
            state: "SERVING".into(),
            ..Default::default()
        }))
    }
}

/// A serving fake worker's address.
async fn serving(worker_id: u32) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let server = tonic::transport::Server::builder()
        .add_service(GeneratorServer::new(FakeWorker { worker_id }))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    addr
}

/// An address that refuses connections (bound, then closed).
fn refusing() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// Goal: a call that failed over from a refused connection names the worker that answered,
/// and its reply is that worker's (its worker ID), for single and batch calls.
#[tokio::test]
async fn the_answering_worker_is_named_after_failover() {
    let addrs = [refusing(), serving(2).await];
    let client = WorkerClient::new(&addrs, None, &Security::Insecure).expect("client");
    for _ in 0..4 {
        let single = client.generate_answered().await.expect("served by the live worker");
        assert_eq!((single.worker, single.reply.worker_id), (1, 2));
        let batch = client.generate_batch_answered(3).await.expect("served by the live worker");
        assert_eq!((batch.worker, batch.reply.worker_id, batch.reply.ranges[0].count), (1, 2, 3));
    }
}

/// Goal: with a hung worker (accepts TCP, never answers) tried first, the hedge's winner is
/// named, not the worker the call went to first.
#[tokio::test]
async fn the_hedge_winner_is_named() {
    // Accepted by the kernel's backlog, never read: the HTTP/2 handshake hangs.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addrs = [hung.local_addr().expect("addr").to_string(), serving(5).await];
    let client = WorkerClient::with_timeout(&addrs, None, Duration::from_secs(5), &Security::Insecure).expect("client");
    // The first call starts at the hung worker (round-robin from index 0).
    let answered = client.generate_answered().await.expect("hedged to the live worker");
    assert_eq!((answered.worker, answered.reply.worker_id, answered.reply.id), (1, 5, 5 << 12));
    let stats = client.stats();
    assert_eq!((stats.hedges, stats.workers[0].answers), (1, 0), "hedged once; the hung worker answered nothing");
}

//! RenewStream against a real TLS cluster on loopback: tagged renewals, the errors a unary
//! Renew would return as tagged answers on a stream that stays open, and who may open one.

use std::collections::BTreeSet;
use std::time::Duration;

use fenceflake_proto::tls::Role;
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use fenceflake_tests::cluster::Cluster;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::Code;

/// How long a test waits for one answer on a stream.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

fn acquire(holder: &str, worker_id: u32) -> pb::AcquireRequest {
    pb::AcquireRequest { holder: holder.into(), worker_id: Some(worker_id), ttl_ms: 10_000, incarnation: 0 }
}

fn renewal(lease: &pb::Lease) -> pb::RenewRequest {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970");
    pb::RenewRequest {
        worker_id: lease.worker_id,
        token: lease.token,
        wall_ms_at_send: now.as_millis() as u64,
        max_minted_ts_ms: 0,
    }
}

/// One open RenewStream of the test.
struct Stream {
    tx: mpsc::Sender<pb::RenewStreamRequest>,
    rx: tonic::Streaming<pb::RenewStreamResponse>,
}

impl Stream {
    async fn open(client: &mut RegistryClient<Channel>) -> Result<Stream, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let rx = client.renew_stream(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Stream { tx, rx })
    }

    async fn send(&self, tag: u64, renew: Option<pb::RenewRequest>) {
        self.tx.send(pb::RenewStreamRequest { tag, renew }).await.expect("the stream takes a message");
    }

    async fn answer(&mut self) -> pb::RenewStreamResponse {
        next(&mut self.rx).await.expect("an answer, not the end of the stream")
    }

    /// Close the caller's side; what the server sends then.
    async fn close(self) -> Option<pb::RenewStreamResponse> {
        let Stream { tx, mut rx } = self;
        drop(tx);
        next(&mut rx).await
    }
}

/// The next message of `rx` (`None`: the stream ended without an error).
async fn next(rx: &mut tonic::Streaming<pb::RenewStreamResponse>) -> Option<pb::RenewStreamResponse> {
    tokio::time::timeout(ANSWER_TIMEOUT, rx.message()).await.expect("an answer in time").expect("no stream error")
}

fn lease_of(answer: &pb::RenewStreamResponse) -> &pb::Lease {
    match &answer.result {
        Some(pb::renew_stream_response::Result::Lease(lease)) => lease,
        other => panic!("tag {}: expected a lease, got {other:?}", answer.tag),
    }
}

fn error_of(answer: &pb::RenewStreamResponse) -> &pb::RenewError {
    match &answer.result {
        Some(pb::renew_stream_response::Result::Error(error)) => error,
        other => panic!("tag {}: expected an error, got {other:?}", answer.tag),
    }
}

/// Goal: through a follower (which forwards to the leader, as for a unary Renew), renewals
/// sent together under distinct tags each come back once with their tag and the lease; a
/// stale token is answered FAILED_PRECONDITION (FENCED) under its tag and a message without a
/// renewal INVALID_ARGUMENT naming `renew`, while the stream stays usable; once the caller
/// closes its side the server ends the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_errors_and_the_end_of_a_stream() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_all_know_the_leader(Duration::from_secs(15)).await;
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    let mut client = cluster.client(follower);
    let stale = client.acquire(acquire("holder-a", 7)).await.expect("acquire a").into_inner();
    let release = pb::ReleaseRequest { worker_id: 7, token: stale.token, last_ts_ms: 0 };
    client.release(release).await.expect("release a");
    let lease = client.acquire(acquire("holder-b", 7)).await.expect("acquire b").into_inner();
    assert!(lease.token > stale.token);

    let mut stream = Stream::open(&mut client).await.expect("a worker opens a RenewStream");
    let tags: BTreeSet<u64> = (100..108).collect();
    for &tag in &tags {
        stream.send(tag, Some(renewal(&lease))).await;
    }
    let mut answered = BTreeSet::new();
    for _ in 0..tags.len() {
        let answer = stream.answer().await;
        let renewed = lease_of(&answer);
        assert_eq!((renewed.worker_id, renewed.token, renewed.holder.as_str()), (7, lease.token, "holder-b"));
        assert!(answered.insert(answer.tag), "tag {} answered twice", answer.tag);
    }
    assert_eq!(answered, tags);

    stream.send(1, Some(renewal(&stale))).await;
    let fenced = stream.answer().await;
    let error = error_of(&fenced);
    assert_eq!((fenced.tag, error.code, error.reason.as_str()), (1, Code::FailedPrecondition as i32, "FENCED"));
    assert!(error.message.starts_with("FENCED:"), "{error:?}");

    stream.send(2, None).await;
    let invalid = stream.answer().await;
    let error = error_of(&invalid);
    assert_eq!((invalid.tag, error.code, error.reason.as_str()), (2, Code::InvalidArgument as i32, "INVALID"));
    assert!(error.message.contains("renew"), "{error:?}");

    stream.send(3, Some(renewal(&lease))).await;
    let after = stream.answer().await;
    assert_eq!((after.tag, lease_of(&after).token), (3, lease.token), "the stream stays usable");

    assert!(stream.close().await.is_none(), "the stream ends once the caller closed its side");
}

/// Goal: a RenewStream is authorized once, at open, as a unary Renew: a certificate whose role
/// may not Renew (an ID consumer's `client`, an operator's) is refused PERMISSION_DENIED
/// naming Renew before any message is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_workers_open_a_renew_stream() {
    let cluster = Cluster::start(1, &[]).await;
    for role in [Role::Client, Role::Operator] {
        let err = match Stream::open(&mut cluster.client_as(1, role)).await {
            Ok(_) => panic!("a {role} opened a RenewStream"),
            Err(err) => err,
        };
        assert_eq!(err.code(), Code::PermissionDenied, "{role}: {err:?}");
        assert!(err.message().contains("Renew"), "{role}: {err:?}");
    }
}

/// Goal: thousands of renewals through one follower at once — which it forwards to the leader
/// many per `ForwardRenewals` call, the answers streamed back — are each answered with their
/// own lease under their own tag, and none fails: neither a renewal lost from a batch, nor an
/// answer given to another, nor the connection reset under the follower by HTTP/2's guard
/// against rapidly reset streams (each batch's answer stream is read to its end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_renewals_through_a_follower_each_get_their_own_answer() {
    const STREAMS: u32 = 8;
    const RENEWALS_PER_STREAM: u64 = 400;
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.wait_all_know_the_leader(Duration::from_secs(15)).await;
    let follower = (1..=3).find(|n| *n != leader).expect("a follower");
    let mut tasks = Vec::new();
    for s in 0..STREAMS {
        let mut client = cluster.client(follower);
        let lease = client.acquire(acquire(&format!("holder-{s}"), s)).await.expect("acquire").into_inner();
        tasks.push(tokio::spawn(async move {
            let Stream { tx, mut rx } = Stream::open(&mut client).await.expect("open");
            let renewal = renewal(&lease);
            let sender = tokio::spawn(async move {
                for tag in 0..RENEWALS_PER_STREAM {
                    let request = pb::RenewStreamRequest { tag, renew: Some(renewal) };
                    tx.send(request).await.expect("the stream takes a message");
                }
                tx
            });
            let mut answered = BTreeSet::new();
            for _ in 0..RENEWALS_PER_STREAM {
                let answer = next(&mut rx).await.expect("an answer");
                let renewed = lease_of(&answer);
                assert_eq!((renewed.worker_id, renewed.token), (s, lease.token), "tag {}", answer.tag);
                assert!(answered.insert(answer.tag), "tag {} answered twice", answer.tag);
            }
            drop(sender.await.expect("sender"));
            answered.len()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("a stream's task"), RENEWALS_PER_STREAM as usize);
    }
}

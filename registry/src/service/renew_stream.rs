//! `RenewStream`: many renewals of one caller over one bidirectional stream, the counterpart
//! of etcd's LeaseKeepAlive. The stream only carries them: each renewal is answered by the
//! same function as a unary `Renew` (validation, proposal, metrics, forwarding), here run
//! concurrently and bounded, its answer tagged with the caller's tag.

use std::future::Future;

use fenceflake_proto::v1 as pb;
use fenceflake_proto::wire::Reason;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::error::RegistryError;
use crate::limits::RENEW_STREAM_IN_FLIGHT_MAX;

/// The answers of one stream, as tonic sends them.
pub type Answers = ReceiverStream<Result<pb::RenewStreamResponse, Status>>;

/// Answer the renewals read from `requests` with `renew` (at most
/// [`RENEW_STREAM_IN_FLIGHT_MAX`] at once), until the caller closes its side and the last
/// answer is out, the caller goes away, or `stopped` resolves.
pub fn serve<S, F, Fut>(requests: S, renew: F, stopped: impl Future<Output = ()> + Send + 'static) -> Answers
where
    S: Stream<Item = Result<pb::RenewStreamRequest, Status>> + Send + Unpin + 'static,
    F: Fn(pb::RenewRequest) -> Fut + Send + 'static,
    Fut: Future<Output = Result<pb::Lease, Status>> + Send + 'static,
{
    // Bounded like the reading: a caller that does not read its answers fills this, the
    // answering tasks then wait on it, and with all slots taken the stream is no longer read.
    let (answers, rx) = mpsc::channel(RENEW_STREAM_IN_FLIGHT_MAX);
    tokio::spawn(pump(requests, renew, answers, stopped, RENEW_STREAM_IN_FLIGHT_MAX));
    ReceiverStream::new(rx)
}

/// Why a stream ended, for the debug log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The caller closed its side and every renewal read was answered.
    Closed,
    /// The caller stopped reading answers for good (it went away).
    CallerGone,
    /// The node is stopping.
    Stopping,
}

/// Read renewals while fewer than `in_flight_max` are being answered; answer each in a task of
/// its own, so that one waiting on the Raft log does not hold up others.
async fn pump<S, F, Fut>(
    mut requests: S,
    renew: F,
    answers: mpsc::Sender<Result<pb::RenewStreamResponse, Status>>,
    stopped: impl Future<Output = ()>,
    in_flight_max: usize,
) where
    S: Stream<Item = Result<pb::RenewStreamRequest, Status>> + Unpin,
    F: Fn(pb::RenewRequest) -> Fut,
    Fut: Future<Output = Result<pb::Lease, Status>> + Send + 'static,
{
    let mut in_flight = JoinSet::new();
    let (mut reading, mut read) = (true, 0u64);
    tokio::pin!(stopped);
    let end = loop {
        if !reading && in_flight.is_empty() {
            break End::Closed;
        }
        tokio::select! {
            // The server's graceful shutdown waits for every open stream to end, so a stream
            // must not outlive its node.
            () = &mut stopped => {
                let status = Reason::OutcomeUnknown.status(
                    "the registry node is stopping: renewals in flight may still commit; renew again on another node",
                );
                // Best effort: a caller that does not read gets the end of the stream only.
                let _ = answers.try_send(Err(status));
                break End::Stopping;
            }
            () = answers.closed() => break End::CallerGone,
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Err(e) = joined {
                    tracing::warn!(error = %e, "a RenewStream renewal task failed");
                }
            }
            next = requests.next(), if reading && in_flight.len() < in_flight_max => match next {
                Some(Ok(request)) => {
                    read += 1;
                    let answer = answer(request.tag, request.renew.map(&renew));
                    let answers = answers.clone();
                    in_flight.spawn(async move {
                        // A send fails only once the caller is gone: its answer is dropped.
                        let _ = answers.send(Ok(answer.await)).await;
                    });
                }
                Some(Err(status)) => {
                    tracing::debug!(code = ?status.code(), why = status.message(), "RenewStream read failed");
                    reading = false;
                }
                None => reading = false,
            },
        }
    };
    // Dropping `in_flight` cancels what is left, as a unary call is cancelled when its caller
    // goes away.
    tracing::debug!(end = ?end, read, dropped = in_flight.len(), "RenewStream ended");
}

/// The tagged answer to one message: its renewal's, or INVALID_ARGUMENT without one.
async fn answer<Fut>(tag: u64, renewal: Option<Fut>) -> pb::RenewStreamResponse
where
    Fut: Future<Output = Result<pb::Lease, Status>>,
{
    let result =
        match renewal {
            Some(renewal) => renewal.await,
            None => Err(RegistryError::invalid("renew", "missing: every RenewStream message carries a RenewRequest")
                .to_status()),
        };
    tagged(tag, result)
}

/// `result` as the stream carries it: a lease, or the unary status's code, message and reason.
fn tagged(tag: u64, result: Result<pb::Lease, Status>) -> pb::RenewStreamResponse {
    let result = match result {
        Ok(lease) => pb::renew_stream_response::Result::Lease(lease),
        Err(status) => pb::renew_stream_response::Result::Error(pb::RenewError {
            code: status.code() as i32,
            message: status.message().to_string(),
            reason: Reason::of(&status).map(|r| r.as_str().to_string()).unwrap_or_default(),
        }),
    };
    pb::RenewStreamResponse { tag, result: Some(result) }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::{watch, Semaphore};

    use super::*;

    fn renewal(tag: u64, worker_id: u32) -> Result<pb::RenewStreamRequest, Status> {
        Ok(pb::RenewStreamRequest {
            tag,
            renew: Some(pb::RenewRequest { worker_id, token: 1, wall_ms_at_send: 0, max_minted_ts_ms: 0 }),
        })
    }

    /// Renewals answered once `gate` lets them through, counting how many run at once.
    #[derive(Clone)]
    struct Gated {
        gate: Arc<Semaphore>,
        running: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
        started: Arc<AtomicUsize>,
    }

    impl Gated {
        fn new(permits: usize) -> Gated {
            Gated {
                gate: Arc::new(Semaphore::new(permits)),
                running: Arc::default(),
                peak: Arc::default(),
                started: Arc::default(),
            }
        }

        fn renew(
            &self,
        ) -> impl Fn(pb::RenewRequest) -> std::pin::Pin<Box<dyn Future<Output = Result<pb::Lease, Status>> + Send>>
        {
            let g = self.clone();
            move |r| {
                let g = g.clone();
                Box::pin(async move {
                    let now = g.running.fetch_add(1, Ordering::SeqCst) + 1;
                    g.peak.fetch_max(now, Ordering::SeqCst);
                    g.started.fetch_add(1, Ordering::SeqCst);
                    let permit = g.gate.acquire().await.map_err(|_| Status::internal("gate closed"))?;
                    permit.forget();
                    g.running.fetch_sub(1, Ordering::SeqCst);
                    Ok(pb::Lease { worker_id: r.worker_id, ..pb::Lease::default() })
                })
            }
        }
    }

    async fn settle() {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    /// Goal: with more renewals sent than may be in flight, exactly the bound runs at once and
    /// the rest stays unread (back-pressure, not a buffer); every one is answered with its tag
    /// once they may finish, and the stream then ends because the caller closed its side.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_flight_is_bounded_and_every_tag_is_answered() {
        let (tx, rx) = mpsc::channel(64);
        for tag in 0..20 {
            tx.send(renewal(tag, tag as u32)).await.expect("queued");
        }
        drop(tx);
        let gated = Gated::new(0);
        let (answers_tx, answers_rx) = mpsc::channel(64);
        let pump = tokio::spawn(pump(ReceiverStream::new(rx), gated.renew(), answers_tx, std::future::pending(), 4));
        settle().await;
        assert_eq!(gated.started.load(Ordering::SeqCst), 4, "only the bound is read and started");
        gated.gate.add_permits(100);
        let mut answers = ReceiverStream::new(answers_rx);
        let mut tags = Vec::new();
        while let Some(answer) = answers.next().await {
            let answer = answer.expect("no stream error");
            match answer.result {
                Some(pb::renew_stream_response::Result::Lease(lease)) => {
                    assert_eq!(u64::from(lease.worker_id), answer.tag)
                }
                other => panic!("tag {}: {other:?}", answer.tag),
            }
            tags.push(answer.tag);
        }
        pump.await.expect("pump ends");
        tags.sort_unstable();
        assert_eq!(tags, (0..20).collect::<Vec<_>>());
        assert!(gated.peak.load(Ordering::SeqCst) <= 4, "peak {}", gated.peak.load(Ordering::SeqCst));
    }

    /// Goal: a caller that never reads its answers stops the reading once the answer channel and
    /// the in-flight slots are full: nothing is buffered beyond them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_does_not_read_stops_the_reading() {
        let (tx, rx) = mpsc::channel(64);
        for tag in 0..50 {
            tx.send(renewal(tag, 1)).await.expect("queued");
        }
        let gated = Gated::new(1000);
        let (answers_tx, _answers_rx) = mpsc::channel(3);
        let _pump = tokio::spawn(pump(ReceiverStream::new(rx), gated.renew(), answers_tx, std::future::pending(), 4));
        settle().await;
        // 3 answers in the channel, 4 tasks waiting to send theirs: 7 read and no more.
        assert_eq!(gated.started.load(Ordering::SeqCst), 7);
    }

    /// Goal: one slow renewal does not hold up the ones read after it, and a message without a
    /// renewal gets INVALID_ARGUMENT naming the field, with its tag, on a stream that stays open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_come_out_of_order_and_a_missing_renewal_is_invalid() {
        let (tx, rx) = mpsc::channel(8);
        let slow = Arc::new(Semaphore::new(0));
        let renew = {
            let slow = slow.clone();
            move |r: pb::RenewRequest| {
                let slow = slow.clone();
                async move {
                    if r.worker_id == 7 {
                        let _ = slow.acquire().await.map_err(|_| Status::internal("closed"))?;
                    }
                    Ok(pb::Lease { worker_id: r.worker_id, ..pb::Lease::default() })
                }
            }
        };
        let answers = serve(ReceiverStream::new(rx), renew, std::future::pending());
        let mut answers = answers;
        tx.send(renewal(1, 7)).await.expect("sent");
        tx.send(Ok(pb::RenewStreamRequest { tag: 2, renew: None })).await.expect("sent");
        tx.send(renewal(3, 8)).await.expect("sent");
        let first = answers.next().await.expect("answer").expect("ok");
        let second = answers.next().await.expect("answer").expect("ok");
        let mut early = [first, second];
        early.sort_by_key(|a| a.tag);
        match &early[0].result {
            Some(pb::renew_stream_response::Result::Error(e)) => {
                assert_eq!(
                    (early[0].tag, e.code, e.reason.as_str()),
                    (2, tonic::Code::InvalidArgument as i32, "INVALID")
                );
                assert!(e.message.contains("renew"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(early[1].tag, 3);
        slow.add_permits(1);
        assert_eq!(answers.next().await.expect("answer").expect("ok").tag, 1);
        drop(tx);
        assert!(answers.next().await.is_none(), "ends once closed and answered");
    }

    /// Goal: a stopping node ends its streams (its server waits for them) with UNAVAILABLE
    /// OUTCOME_UNKNOWN, renewals in flight dropped without a panic.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopping_node_ends_the_stream() {
        let (tx, rx) = mpsc::channel(8);
        let gated = Gated::new(0);
        let (stop, mut stopped) = watch::channel(false);
        let stopped = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let mut answers = serve(ReceiverStream::new(rx), gated.renew(), stopped);
        tx.send(renewal(1, 1)).await.expect("sent");
        settle().await;
        stop.send(true).expect("pump listens");
        let end = answers.next().await.expect("an end status").expect_err("an error");
        assert_eq!((end.code(), Reason::of(&end)), (tonic::Code::Unavailable, Some(Reason::OutcomeUnknown)));
        assert!(answers.next().await.is_none());
    }
}

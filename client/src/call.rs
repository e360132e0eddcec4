//! One call: attempts raced in a `JoinSet` — the first to the next admitted worker, another
//! when the hedge delay passes (within the budget) or when an attempt fails — and the first
//! answer wins. Attempts still pending when the call returns are detached, not cancelled:
//! they run to their own timeout and report to their worker's health (answered, parked,
//! timed out → ejected), so a hung worker is found out even when a hedge hid it.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::generator_client::GeneratorClient;
use fenceflake_proto::wire::CALLER_METADATA_KEY;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::error::{classify, ClientError, Failure};
use crate::policy::{timeouts, Timeouts, ATTEMPT_FLOOR};
use crate::{lock, Answered, Inner, Kind};

/// What an attempt task hands back: which worker, and its answer or why it failed.
type Attempt<Resp> = (usize, Result<Resp, Failure>);

/// The state of one call.
struct Race<'a, Resp> {
    inner: &'a Arc<Inner>,
    /// Workers in the order this call tries them.
    order: Vec<usize>,
    tried: usize,
    set: JoinSet<Attempt<Resp>>,
    /// Pending attempts: worker and send time.
    pending: Vec<(usize, Instant)>,
    last_launch: Instant,
    timeouts: Timeouts,
    failures: Vec<String>,
    retry_after_ms: Option<u64>,
}

pub(crate) async fn call<Req, Resp, F, Fut>(
    inner: &Arc<Inner>,
    kind: Kind,
    rpc: F,
    message: Req,
) -> Result<Answered<Resp>, ClientError>
where
    Req: Clone + Send + 'static,
    Resp: Send + 'static,
    F: Fn(GeneratorClient<Channel>, Request<Req>) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + inner.call_timeout;
    let p99 = lock(&inner.latencies[kind as usize]).p99();
    let mut race = Race {
        inner,
        order: order(inner, start),
        tried: 0,
        set: JoinSet::new(),
        pending: Vec::new(),
        last_launch: start,
        timeouts: timeouts(p99, inner.call_timeout),
        failures: Vec::new(),
        retry_after_ms: None,
    };
    let launch = |race: &mut Race<Resp>| race.launch_next(kind, rpc, &message);
    launch(&mut race);
    let mut hedging = true;
    loop {
        let can_hedge = hedging && race.tried < race.order.len();
        tokio::select! {
            joined = race.set.join_next() => {
                let (w, outcome) = match joined {
                    Some(Ok(attempt)) => attempt,
                    Some(Err(e)) => std::panic::resume_unwind(e.into_panic()),
                    None => break,
                };
                race.pending.retain(|(p, _)| *p != w);
                match outcome {
                    Ok(reply) => {
                        race.won();
                        return Ok(Answered { worker: w, reply });
                    }
                    Err(Failure::Fatal(error)) => {
                        race.set.detach_all();
                        return Err(error);
                    }
                    Err(failure) => race.failed(w, failure),
                }
                if !launch(&mut race) && race.set.is_empty() {
                    break;
                }
            }
            () = sleep_until(race.last_launch + race.timeouts.hedge), if can_hedge => {
                if lock(&inner.budget).try_spend() {
                    inner.hedges.fetch_add(1, Ordering::Relaxed);
                    launch(&mut race);
                } else {
                    hedging = false;
                }
            }
            () = sleep_until(deadline) => {
                race.gave_up();
                break;
            }
        }
    }
    Err(race.error())
}

/// The round-robin order of the admitted workers (all of them if none is: better to try
/// than to fail without trying); starts the probes of ejected workers that are due.
fn order(inner: &Arc<Inner>, now: Instant) -> Vec<usize> {
    let n = inner.workers.len();
    let start = inner.next.fetch_add(1, Ordering::Relaxed);
    let mut admitted = Vec::with_capacity(n);
    for w in 0..n {
        let mut health = lock(&inner.workers[w].health);
        if health.admits(now) {
            admitted.push(w);
        } else if health.start_probe(now) {
            drop(health);
            tokio::spawn(probe(inner.clone(), w));
        }
    }
    if admitted.is_empty() {
        admitted.extend(0..n);
    }
    // Rotate the admitted ones, so load spreads evenly over them whichever are left out.
    let k = start % admitted.len();
    admitted.rotate_left(k);
    admitted
}

/// A cheap `Status` call to an ejected worker: readmitted if it answers SERVING in time.
async fn probe(inner: Arc<Inner>, w: usize) {
    let worker = &inner.workers[w];
    worker.counters.probes.fetch_add(1, Ordering::Relaxed);
    let mut client = worker.client.clone();
    let answer = tokio::time::timeout(ATTEMPT_FLOOR, client.status(pb::StatusRequest {})).await;
    let serving = matches!(&answer, Ok(Ok(r)) if r.get_ref().state == "SERVING");
    if lock(&worker.health).on_probe(serving, Instant::now()) {
        worker.counters.readmissions.fetch_add(1, Ordering::Relaxed);
    }
}

/// One attempt against worker `w`, bounded by `timeout`; reports to the worker's health and
/// the latency window whether or not the call still waits for it.
async fn attempt<Req, Resp, F, Fut>(
    inner: Arc<Inner>,
    w: usize,
    kind: Kind,
    rpc: F,
    request: Request<Req>,
    timeout: Duration,
) -> Attempt<Resp>
where
    F: Fn(GeneratorClient<Channel>, Request<Req>) -> Fut,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let worker = &inner.workers[w];
    let counters = &worker.counters;
    counters.attempts.fetch_add(1, Ordering::Relaxed);
    let sent = Instant::now();
    let result = tokio::time::timeout(timeout, rpc(worker.client.clone(), request)).await;
    let now = Instant::now();
    let outcome = match result {
        Ok(Ok(response)) => {
            lock(&inner.latencies[kind as usize]).record(now - sent);
            counters.answers.fetch_add(1, Ordering::Relaxed);
            lock(&worker.health).on_answer();
            Ok(response.into_inner())
        }
        Ok(Err(status)) => {
            let failure = classify(&status);
            match failure {
                Failure::Skip(_) => lock(&worker.health).on_unavailable(now),
                _ => lock(&worker.health).on_answer(),
            }
            Err(failure)
        }
        Err(_elapsed) => {
            counters.timeouts.fetch_add(1, Ordering::Relaxed);
            if lock(&worker.health).on_timeout(now) {
                counters.ejections.fetch_add(1, Ordering::Relaxed);
            }
            Err(Failure::TimedOut(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)))
        }
    };
    (w, outcome)
}

impl<Resp: Send + 'static> Race<'_, Resp> {
    /// Send the request to the next worker in the order; false if every one was tried.
    fn launch_next<Req, F, Fut>(&mut self, kind: Kind, rpc: F, message: &Req) -> bool
    where
        Req: Clone + Send + 'static,
        F: Fn(GeneratorClient<Channel>, Request<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
    {
        let Some(&w) = self.order.get(self.tried) else { return false };
        self.tried += 1;
        let mut request = Request::new(message.clone());
        if let Some(caller) = &self.inner.caller {
            request.metadata_mut().insert(CALLER_METADATA_KEY, caller.clone());
        }
        let now = Instant::now();
        self.set.spawn(attempt(self.inner.clone(), w, kind, rpc, request, self.timeouts.attempt));
        self.pending.push((w, now));
        self.last_launch = now;
        true
    }

    /// An answer arrived: earn hedge budget, mark the workers it outpaced (pending longer
    /// than the hedge delay) as suspect, leave their attempts to finish on their own.
    fn won(&mut self) {
        lock(&self.inner.budget).on_success();
        let now = Instant::now();
        for &(w, sent) in &self.pending {
            if now - sent >= self.timeouts.hedge {
                lock(&self.inner.workers[w].health).on_outpaced();
            }
        }
        self.set.detach_all();
    }

    fn failed(&mut self, w: usize, failure: Failure) {
        let addr = &self.inner.workers[w].addr;
        match failure {
            Failure::Limited(ms) => {
                self.retry_after_ms = Some(self.retry_after_ms.map_or(ms, |r| r.min(ms)));
                self.failures.push(format!("{addr}: rate limited"));
            }
            Failure::Skip(reason) => self.failures.push(format!("{addr}: {reason}")),
            Failure::TimedOut(ms) => self.failures.push(format!("{addr}: no answer within {ms} ms")),
            Failure::Fatal(_) => unreachable!("fatal failures end the call"),
        }
    }

    /// The call's own timeout passed: name the workers still pending.
    fn gave_up(&mut self) {
        let ms = self.inner.call_timeout.as_millis();
        for &(w, _) in &self.pending {
            self.failures.push(format!("{}: no answer within the call's {ms} ms", self.inner.workers[w].addr));
        }
        self.set.detach_all();
    }

    fn error(self) -> ClientError {
        match self.retry_after_ms {
            Some(retry_after_ms) if self.failures.iter().all(|f| f.ends_with("rate limited")) => {
                ClientError::RateLimited { retry_after_ms }
            }
            _ => ClientError::NoWorkerServed { failures: self.failures },
        }
    }
}

//! The ID workload's balanced mode (`--workload-client balanced`): every call goes through
//! one `fenceflake_client::WorkerClient` over all the workers — hedged, with latency-derived
//! attempt timeouts and outlier ejection — so the history shows what a real caller sees
//! while a worker hangs.
//!
//! Which worker answers is known only when the call ends (a hedge may win), so the invoke
//! is written then, stamped with the call's start, and names the worker that answered: the
//! history sorts by time before it is judged, and the recorded interval contains the
//! answering attempt's, so every real-time check stays sound. A call that got no IDs names
//! [`ANY_WORKER`]. A hedge's loser, if it minted, only burns IDs: its reply is never seen.

use fenceflake_client::{Answered, ClientError, WorkerClient};
use fenceflake_proto::tls::Security;

use super::{completed, record, Deadlines, Minted, Shared, OP_TIMEOUT};
use crate::clock::{wall_ms, RunClock};
use crate::history::{ClientOp, Event, GenerateFn, Phase};

/// The worker a balanced call that got no IDs is recorded under: it may have tried several.
pub(crate) const ANY_WORKER: &str = "any";

/// One client over the workers, and their names in the order of its addresses.
#[derive(Debug)]
pub(super) struct Balanced {
    client: WorkerClient,
    names: Vec<String>,
}

impl Balanced {
    /// A client over `workers` (name, address), giving up on a call after the direct mode's
    /// [`OP_TIMEOUT`], so both modes wait equally long before a call counts as failed.
    pub(super) fn new(workers: &[(String, String)], security: &Security) -> anyhow::Result<Balanced> {
        let addrs: Vec<String> = workers.iter().map(|(_, addr)| addr.clone()).collect();
        let client = WorkerClient::with_timeout(&addrs, None, OP_TIMEOUT, security)?;
        Ok(Balanced { client, names: workers.iter().map(|(name, _)| name.clone()).collect() })
    }

    /// One Generate (batch = None) or GenerateBatch call, recorded invoke → ok/fail/info.
    pub(super) async fn call(
        &self,
        process: u64,
        op_id: u64,
        batch: Option<u32>,
        clock: RunClock,
        history: &Shared,
        deadlines: &Deadlines,
    ) {
        let (start_ns, start_wall_ms) = (clock.now_ns(), wall_ms());
        let (f, reply) = match batch {
            None => (GenerateFn::Generate, self.client.generate_answered().await.map(minted)),
            Some(count) => (GenerateFn::GenerateBatch, self.client.generate_batch_answered(count).await.map(minted)),
        };
        let worker = match &reply {
            Ok((index, _)) => self.names.get(*index).map_or(ANY_WORKER, String::as_str),
            Err(_) => ANY_WORKER,
        };
        let mut invoke = ClientOp::invoke(process, op_id, f, worker, start_ns, start_wall_ms);
        invoke.count = batch;
        record(history, Event::Op(invoke.clone()));
        let completion = match reply {
            Ok((_, ids)) => completed(&invoke, ids, clock, history, deadlines),
            Err(e) => invoke.failed(phase(&e), clock.now_ns(), wall_ms(), &e.to_string()),
        };
        record(history, Event::Op(completion));
    }
}

fn minted<T: Into<Minted>>(answered: Answered<T>) -> (usize, Minted) {
    (answered.worker, answered.reply.into())
}

/// How a failed balanced call ends: `fail` only when no worker can have minted — every one
/// rate-limited it, or it was refused before minting (a bad count, a role that may not
/// call). Otherwise `info`: some attempt timed out or was cut off, and may have minted.
fn phase(error: &ClientError) -> Phase {
    match error {
        ClientError::RateLimited { .. } | ClientError::Refused { .. } => Phase::Fail,
        ClientError::NoWorkerServed { .. }
        | ClientError::BadAddr { .. }
        | ClientError::WorkerCount { .. }
        | ClientError::BadCaller { .. } => Phase::Info,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: only a rate limit from every worker or a refused request is definite; a call
    /// that no worker served may have minted (an attempt timed out after the worker minted).
    #[test]
    fn failed_calls_are_definite_only_when_nothing_can_have_minted() {
        assert_eq!(phase(&ClientError::RateLimited { retry_after_ms: 5 }), Phase::Fail);
        let refused = ClientError::Refused { code: tonic::Code::InvalidArgument, message: "count 0".into() };
        assert_eq!(phase(&refused), Phase::Fail);
        let timed_out = ClientError::NoWorkerServed { failures: vec!["w1: no answer within 100 ms".into()] };
        assert_eq!(phase(&timed_out), Phase::Info);
    }
}

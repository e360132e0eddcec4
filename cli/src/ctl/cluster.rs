//! How `ctl` reaches the cluster: the first node that answers (for commands any node can
//! serve or forward), and the cluster as the *leader* sees it (for status, members and
//! add-member's wait: only the leader knows replication progress and quorum health).
//! Under TLS every node must present a registry `node` certificate of the cluster CA.

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use fenceflake_proto::tls::{self, Role, Security};
use fenceflake_proto::v1 as pb;
use fenceflake_proto::v1::registry_client::RegistryClient;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

/// Largest message ctl accepts or sends (a backup is the largest there is): what the registry's
/// client port accepts.
const MESSAGE_BYTES_MAX: usize = fenceflake_registry::limits::CLIENT_MESSAGE_BYTES_MAX;

/// The registry nodes named by `--registry`.
pub struct Cluster {
    pub addrs: Vec<String>,
    pub timeout: Duration,
    /// ctl's certificate (an `operator`, or a `reader` for status and leases), or plaintext.
    pub security: Security,
}

/// Every answering node's status, and the leader's own if it answered.
#[derive(Debug)]
pub struct ClusterView {
    pub answered: Vec<pb::ClusterStatusResponse>,
    pub leader: Option<pb::ClusterStatusResponse>,
    /// The leader the answering nodes name (highest term), whether or not it answered.
    pub named_leader: Option<u64>,
}

impl ClusterView {
    /// The status to show: the leader's, else the answering node with the highest term.
    pub fn best(&self) -> &pb::ClusterStatusResponse {
        self.leader
            .as_ref()
            .unwrap_or_else(|| self.answered.iter().max_by_key(|s| s.term).expect("a view has at least one answer"))
    }
}

impl Cluster {
    pub fn client(&self, addr: &str) -> anyhow::Result<RegistryClient<Channel>> {
        let endpoint = Endpoint::from_shared(tls::endpoint_url(addr))
            .with_context(|| format!("bad registry address {addr:?}"))?
            .connect_timeout(Duration::from_secs(1))
            .timeout(self.timeout);
        let channel = tls::connect_lazy(endpoint, &self.security, &[Role::Node]);
        Ok(RegistryClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX))
    }

    /// `f` against the first node that answers (a node that is down or has no leader makes us
    /// try the next; followers forward to the leader).
    pub async fn call<T, F, Fut>(&self, f: F) -> anyhow::Result<T>
    where
        F: Fn(RegistryClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut errors = Vec::new();
        for addr in &self.addrs {
            match f(self.client(addr)?).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if retryable(&status) => errors.push(format!("{addr}: {}", describe(&status))),
                Err(status) => bail!("{addr}: {}", describe(&status)),
            }
        }
        Err(anyhow!("no registry node answered:\n  {}", same_errors_once(errors).join("\n  ")))
    }

    /// Ask every node for its status at once, then the leader too if none of them is it.
    pub async fn view(&self) -> anyhow::Result<ClusterView> {
        let (mut answered, errors) = self.statuses(&self.addrs).await;
        if answered.is_empty() {
            bail!("no registry node answered:\n  {}", same_errors_once(errors).join("\n  "));
        }
        let leader = |all: &[pb::ClusterStatusResponse]| {
            all.iter().filter(|s| s.state == "LEADER").max_by_key(|s| s.term).cloned()
        };
        let named_leader = answered.iter().filter(|s| s.leader_id != 0).max_by_key(|s| s.term).map(|s| s.leader_id);
        let mut found = leader(&answered);
        if let (None, Some(id)) = (&found, named_leader) {
            let addr =
                answered.iter().flat_map(|s| &s.members).find(|m| m.node_id == id).map(|m| m.client_addr.clone());
            if let Some(addr) = addr.filter(|a| !a.is_empty() && !self.addrs.contains(a)) {
                let (more, _) = self.statuses(&[addr]).await;
                found = leader(&more);
                answered.extend(more);
            }
        }
        Ok(ClusterView { answered, leader: found, named_leader })
    }

    async fn statuses(&self, addrs: &[String]) -> (Vec<pb::ClusterStatusResponse>, Vec<String>) {
        let mut asks = JoinSet::new();
        for addr in addrs {
            let client = self.client(addr);
            let addr = addr.clone();
            asks.spawn(async move {
                let answer = match client {
                    Ok(mut c) => c.cluster_status(pb::ClusterStatusRequest {}).await.map_err(|s| describe(&s)),
                    Err(e) => Err(e.to_string()),
                };
                answer.map(tonic::Response::into_inner).map_err(|e| format!("{addr}: {e}"))
            });
        }
        let (mut answered, mut errors) = (Vec::new(), Vec::new());
        while let Some(joined) = asks.join_next().await {
            match joined {
                Ok(Ok(status)) => answered.push(status),
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(format!("status request failed: {e}")),
            }
        }
        answered.sort_by_key(|s| s.node_id);
        (answered, errors)
    }
}

/// `addr: error` lines, with one line for all the nodes that failed the same way (a refused
/// certificate is refused by every node).
fn same_errors_once(errors: Vec<String>) -> Vec<String> {
    let mut by_error: Vec<(String, Vec<String>)> = Vec::new();
    for line in errors {
        let (addr, error) =
            line.split_once(": ").map_or((String::new(), line.clone()), |(a, e)| (a.to_string(), e.to_string()));
        match by_error.iter_mut().find(|(e, _)| *e == error) {
            Some((_, addrs)) => addrs.push(addr),
            None => by_error.push((error, vec![addr])),
        }
    }
    by_error.into_iter().map(|(error, addrs)| format!("{}: {error}", addrs.join(", "))).collect()
}

fn retryable(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown)
}

/// A status as an operator should read it (a transport failure with its causes: a refused
/// certificate shows up only there).
fn describe(status: &tonic::Status) -> String {
    match status.code() {
        tonic::Code::Unimplemented => "this address does not serve the Registry API (a peer or metrics port?); \
             ctl talks to a node's client port (its --client-addr)"
            .to_string(),
        _ => fenceflake_client::error::describe_status(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: nodes that failed the same way are named on one line, in the order first seen;
    /// different failures keep lines of their own.
    #[test]
    fn identical_failures_are_reported_once() {
        let errors = vec![
            "a:1: PermissionDenied: ClusterStatus needs role operator".to_string(),
            "b:2: Unavailable: connection refused".to_string(),
            "c:3: PermissionDenied: ClusterStatus needs role operator".to_string(),
        ];
        assert_eq!(
            same_errors_once(errors),
            vec![
                "a:1, c:3: PermissionDenied: ClusterStatus needs role operator".to_string(),
                "b:2: Unavailable: connection refused".to_string(),
            ]
        );
    }
}

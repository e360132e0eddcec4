//! A tower layer in front of every Fenceflake gRPC server: a connection without a verified
//! identity (plaintext on a TLS port, or a certificate without a Fenceflake SPIFFE ID of this
//! cluster) gets `UNAUTHENTICATED` before its request body is read — only the gRPC health
//! service answers it. Without this, an anonymous caller could make a server decode messages
//! of up to the port's size limit before the per-RPC `authorize` refused them. A port that
//! only one role may call (the registry's peer port: nodes) also refuses every other role
//! before the body: its messages may be large (a restore's Raft entry), and a worker's or
//! client's certificate must not buy that much of a node's memory.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http;

use super::accept::{ConnInfo, Peer};
use super::authz;
use super::identity::Role;

/// The gRPC health service's path prefix: probes need no certificate.
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";

/// `Server::builder().layer(tls::RefuseStrangersLayer::default())`: any verified member of
/// the cluster passes; [`RefuseStrangersLayer::only`]: only the given role does.
#[derive(Debug, Clone, Copy, Default)]
pub struct RefuseStrangersLayer {
    only: Option<Role>,
}

impl RefuseStrangersLayer {
    /// A port only `role` may call (health probes aside).
    pub fn only(role: Role) -> RefuseStrangersLayer {
        RefuseStrangersLayer { only: Some(role) }
    }
}

impl<S> tower::Layer<S> for RefuseStrangersLayer {
    type Service = RefuseStrangers<S>;

    fn layer(&self, inner: S) -> RefuseStrangers<S> {
        RefuseStrangers { inner, only: self.only }
    }
}

#[derive(Debug, Clone)]
pub struct RefuseStrangers<S> {
    inner: S,
    only: Option<Role>,
}

/// The status a request on `path` from a connection with `info` gets before its body is
/// read, or `None` if it may go on to the per-RPC check.
fn refusal(info: Option<&ConnInfo>, path: &str, only: Option<Role>) -> Option<tonic::Status> {
    if path.starts_with(HEALTH_PREFIX) {
        return None;
    }
    match (info.map(|i| &i.peer), only) {
        (Some(Peer::Plaintext | Peer::Unrecognized(_)), _) => {
            let mut probe = tonic::Request::new(());
            if let Some(info) = info {
                probe.extensions_mut().insert(info.clone());
            }
            // The same status the per-RPC check would give.
            Some(authz::caller(&probe).err().unwrap_or_else(|| tonic::Status::unauthenticated("refused")))
        }
        (Some(Peer::Verified(identity)), Some(role)) if identity.role != role => {
            Some(tonic::Status::permission_denied(format!(
                "{} may not call this port: it answers {} certificates only (a registry's peer port? ctl, \
                 workers and readers call its client port)",
                identity.uri(),
                format!("{role:?}").to_lowercase()
            )))
        }
        _ => None,
    }
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
        if let Some(status) = refusal(request.extensions().get::<ConnInfo>(), request.uri().path(), self.only) {
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::identity::PeerIdentity;

    fn verified(role: Role) -> ConnInfo {
        let identity = PeerIdentity { trust_domain: "td".into(), role, name: "x".into() };
        ConnInfo { remote_addr: None, peer: Peer::Verified(identity) }
    }

    /// Goal (issue 11, review): strangers are refused before the body on every port; on a
    /// port for one role, every other role is too (PERMISSION_DENIED); health probes pass.
    #[test]
    fn strangers_and_other_roles_are_refused_before_the_body() {
        let path = "/fenceflake.v1.RaftTransport/AppendEntries";
        let plaintext = ConnInfo { remote_addr: None, peer: Peer::Plaintext };
        let code = |info: &ConnInfo, only| refusal(Some(info), path, only).map(|s| s.code());
        assert_eq!(code(&plaintext, None), Some(tonic::Code::Unauthenticated));
        assert_eq!(code(&plaintext, Some(Role::Node)), Some(tonic::Code::Unauthenticated));
        assert_eq!(code(&verified(Role::Worker), None), None, "any member: the per-RPC check decides");
        assert_eq!(code(&verified(Role::Worker), Some(Role::Node)), Some(tonic::Code::PermissionDenied));
        assert_eq!(code(&verified(Role::Operator), Some(Role::Node)), Some(tonic::Code::PermissionDenied));
        assert_eq!(code(&verified(Role::Node), Some(Role::Node)), None);
        let unchecked = ConnInfo { remote_addr: None, peer: Peer::Unchecked };
        assert_eq!(code(&unchecked, Some(Role::Node)), None, "--insecure: nobody is checked");
        assert!(refusal(Some(&plaintext), "/grpc.health.v1.Health/Check", Some(Role::Node)).is_none());
    }
}

//! Per-RPC authorization from the connection's verified identity: the one place that turns
//! "who connected" into `UNAUTHENTICATED`/`PERMISSION_DENIED`.

use tonic::{Request, Status};

use super::accept::{ConnInfo, Peer};
use super::identity::{PeerIdentity, Role};

/// An authorized caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The server runs `--insecure`: the caller is unknown and may do anything.
    Unchecked,
    Verified(PeerIdentity),
}

impl Caller {
    pub fn identity(&self) -> Option<&PeerIdentity> {
        match self {
            Caller::Unchecked => None,
            Caller::Verified(identity) => Some(identity),
        }
    }

    /// Whether the caller holds `role` (an unchecked caller holds every role).
    pub fn has(&self, role: Role) -> bool {
        self.identity().is_none_or(|i| i.role == role)
    }

    /// For logs: the identity's URI, or `unchecked`.
    pub fn describe(&self) -> String {
        self.identity().map_or_else(|| "unchecked (--insecure)".to_string(), PeerIdentity::uri)
    }
}

/// UNSAFE, only in the separately built test binary (feature `unsafe-test-switches`): with
/// `FENCEFLAKE_UNSAFE_DISABLE_AUTHORIZATION=1`, every caller is unchecked, so the harness can
/// show that its `adversary` scenario catches what a registry without authorization allows.
#[cfg(feature = "unsafe-test-switches")]
fn authorization_disabled() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED.get_or_init(|| {
        let off = std::env::var("FENCEFLAKE_UNSAFE_DISABLE_AUTHORIZATION").is_ok_and(|v| v == "1" || v == "true");
        if off {
            tracing::error!("UNSAFE: authorization is disabled; every caller may do anything (harness self-test only)");
        }
        off
    })
}

#[cfg(not(feature = "unsafe-test-switches"))]
fn authorization_disabled() -> bool {
    false
}

/// The caller of `request`, authenticated but not yet authorized.
pub fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    if authorization_disabled() {
        return Ok(Caller::Unchecked);
    }
    let Some(info) = request.extensions().get::<ConnInfo>() else {
        // Fail closed: a server must accept through `tls::incoming` to serve anything.
        return Err(Status::unauthenticated(
            "no connection identity (server not started through fenceflake's TLS acceptor)",
        ));
    };
    match &info.peer {
        Peer::Unchecked => Ok(Caller::Unchecked),
        Peer::Verified(identity) => Ok(Caller::Verified(identity.clone())),
        Peer::Plaintext => Err(Status::unauthenticated(
            "this server requires mutual TLS, and the call came in plaintext: give the client --tls-ca, --tls-cert and --tls-key (was it started with --insecure?)",
        )),
        Peer::Unrecognized(why) => Err(Status::unauthenticated(format!("client certificate not accepted: {why}"))),
    }
}

/// The caller of `request` if it holds one of `allowed` for `rpc`; else `PERMISSION_DENIED`
/// naming the RPC, the roles it needs and the caller.
pub fn authorize<T>(request: &Request<T>, rpc: &str, allowed: &[Role]) -> Result<Caller, Status> {
    let caller = caller(request)?;
    if allowed.iter().any(|role| caller.has(*role)) {
        return Ok(caller);
    }
    let needs: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
    Err(Status::permission_denied(format!(
        "{rpc} needs role {}; the caller is {}",
        needs.join(" or "),
        caller.describe()
    )))
}

/// A request as the transport would deliver it from `peer` (for unit tests of services).
pub fn request_from<T>(message: T, peer: Peer) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(ConnInfo { remote_addr: None, peer });
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(role: Role) -> Peer {
        Peer::Verified(PeerIdentity { trust_domain: "td".into(), role, name: "1".into() })
    }

    #[test]
    fn refuses_without_a_verified_identity() {
        for peer in [Peer::Plaintext, Peer::Unrecognized("no SAN".into())] {
            let status = authorize(&request_from((), peer), "Renew", &[Role::Worker]).expect_err("refused");
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
        }
        let status = authorize(&Request::new(()), "Renew", &[Role::Worker]).expect_err("no conn info");
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn the_wrong_role_is_denied_naming_rpc_and_role() {
        let status =
            authorize(&request_from((), verified(Role::Worker)), "AddVoter", &[Role::Operator]).expect_err("denied");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("AddVoter needs role operator"), "{}", status.message());
        assert!(status.message().contains("spiffe://td/fenceflake/worker/1"), "{}", status.message());
    }

    #[test]
    fn the_right_role_or_an_insecure_server_is_let_through() {
        let caller = authorize(&request_from((), verified(Role::Operator)), "AddVoter", &[Role::Operator]).expect("ok");
        assert!(caller.has(Role::Operator));
        assert_eq!(
            authorize(&request_from((), Peer::Unchecked), "AddVoter", &[Role::Operator]).ok(),
            Some(Caller::Unchecked)
        );
    }
}

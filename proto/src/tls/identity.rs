//! Who is on the other end of a connection: the SPIFFE ID in its certificate's URI SAN,
//! `spiffe://<trust-domain>/fenceflake/<role>/<name>`, and the role it grants.

use std::fmt;
use std::str::FromStr;

/// What a certificate lets its holder do. Checked per RPC by each server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A registry node: the peer port only; its name is its node id.
    Node,
    /// A generator worker: Acquire/Renew/Release of its own leases, its own GetLease.
    Worker,
    /// An ID consumer: the Generator API only.
    Client,
    /// Quarantine, membership, snapshot export/import, audit, and everything a reader may do.
    Operator,
    /// Status and leases without their tokens.
    Reader,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Node, Role::Worker, Role::Client, Role::Operator, Role::Reader];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Worker => "worker",
            Role::Client => "client",
            Role::Operator => "operator",
            Role::Reader => "reader",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            let names: Vec<_> = Role::ALL.iter().map(|r| r.as_str()).collect();
            format!("unknown role {s:?}: one of {}", names.join(", "))
        })
    }
}

/// An authenticated caller or server: the parsed SPIFFE ID of a verified certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    pub trust_domain: String,
    pub role: Role,
    pub name: String,
}

impl PeerIdentity {
    /// The URI as it appears in the certificate (and in logs, audit entries and lease records).
    pub fn uri(&self) -> String {
        format!("spiffe://{}/fenceflake/{}/{}", self.trust_domain, self.role, self.name)
    }

    /// A node's id, when this identity is a node's.
    pub fn node_id(&self) -> Option<u64> {
        (self.role == Role::Node).then(|| self.name.parse().ok()).flatten()
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Longest name part accepted (the certificate tool issues at most this).
pub const NAME_LEN_MAX: usize = 64;

/// Whether `name` may be the last part of a Fenceflake SPIFFE ID.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_LEN_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `domain` is a SPIFFE trust domain (lowercase letters, digits, dots, dashes).
pub fn valid_trust_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 255
        && domain.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
}

impl FromStr for PeerIdentity {
    type Err = String;

    fn from_str(uri: &str) -> Result<PeerIdentity, String> {
        let bad = |why: &str| {
            format!(
                "{uri:?} is not a Fenceflake SPIFFE ID ({why}): want spiffe://<trust-domain>/fenceflake/<role>/<name>"
            )
        };
        let rest = uri.strip_prefix("spiffe://").ok_or_else(|| bad("no spiffe:// scheme"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [trust_domain, "fenceflake", role, name] = parts[..] else {
            return Err(bad("wrong path"));
        };
        if !valid_trust_domain(trust_domain) {
            return Err(bad("bad trust domain"));
        }
        let role: Role = role.parse().map_err(|e: String| bad(&e))?;
        if !valid_name(name) {
            return Err(bad("bad name"));
        }
        // Canonical decimal only: `node/01` and `node/1` must not be two names of one node.
        if role == Role::Node && name.parse::<u64>().map_or(true, |id| id == 0 || id.to_string() != name) {
            return Err(bad("a node's name is its node id, a number from 1 without leading zeros"));
        }
        Ok(PeerIdentity { trust_domain: trust_domain.to_string(), role, name: name.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_role_and_round_trips() {
        for role in Role::ALL {
            let name = if role == Role::Node { "3" } else { "w-1.a_b" };
            let uri = format!("spiffe://prod.example/fenceflake/{role}/{name}");
            let id: PeerIdentity = uri.parse().expect("valid");
            assert_eq!(id.role, role);
            assert_eq!(id.uri(), uri);
        }
    }

    #[test]
    fn refuses_malformed_ids() {
        for uri in [
            "https://td/fenceflake/worker/a",
            "spiffe://td/other/worker/a",
            "spiffe://td/fenceflake/admin/a",
            "spiffe://td/fenceflake/worker/",
            "spiffe://td/fenceflake/worker/a/b",
            "spiffe://TD/fenceflake/worker/a",
            "spiffe://td/fenceflake/node/abc",
            "spiffe://td/fenceflake/node/0",
            "spiffe://td/fenceflake/node/01",
            "spiffe://td/fenceflake/worker/a b",
        ] {
            assert!(uri.parse::<PeerIdentity>().is_err(), "{uri} accepted");
        }
    }

    #[test]
    fn node_ids_come_from_node_names_only() {
        let node: PeerIdentity = "spiffe://td/fenceflake/node/7".parse().expect("valid");
        assert_eq!(node.node_id(), Some(7));
        let worker: PeerIdentity = "spiffe://td/fenceflake/worker/7".parse().expect("valid");
        assert_eq!(worker.node_id(), None);
    }
}

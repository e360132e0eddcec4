//! Field validation for every public RPC: a bad value gets `INVALID_ARGUMENT` naming the
//! field and the value, before anything reaches Raft.

use fenceflake_proto::tls::PeerIdentity;

use crate::error::RegistryError;
use crate::lease::{ClusterConfig, HolderId, Incarnation, Token, WorkerId};
use crate::limits::{HOLDER_LEN_MAX, OWNER_LEN_MAX, REASON_LEN_MAX};
use crate::proposal::Proposal;
use crate::raft::types::NodeId;

pub fn holder(value: &str) -> Result<HolderId, RegistryError> {
    if value.is_empty() {
        return Err(RegistryError::invalid(
            "holder",
            "must not be empty (name the worker process, e.g. host/pid/nonce)",
        ));
    }
    if value.len() > HOLDER_LEN_MAX {
        return Err(RegistryError::invalid(
            "holder",
            format!("{} bytes is over the {HOLDER_LEN_MAX}-byte limit", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(RegistryError::invalid("holder", format!("{value:?} contains control characters")));
    }
    let holder = HolderId(value.to_string());
    if holder.is_reserved() {
        return Err(RegistryError::invalid(
            "holder",
            format!("{value:?} starts with {:?}, which is reserved for the registry", HolderId::RESERVED_PREFIX),
        ));
    }
    Ok(holder)
}

/// A worker ID within the configured range (unchecked if this node has no config yet: the
/// leader's state machine checks it again anyway).
pub fn worker_id(value: u32, config: Option<&ClusterConfig>) -> Result<WorkerId, RegistryError> {
    if let Some(config) = config {
        if value >= config.worker_id_count() {
            return Err(RegistryError::invalid(
                "worker_id",
                format!(
                    "{value} is outside 0..{} ({} worker-ID bits)",
                    config.worker_id_count(),
                    config.worker_id_bits
                ),
            ));
        }
    }
    Ok(WorkerId(value))
}

pub fn ttl_ms(value: u64, config: Option<&ClusterConfig>) -> Result<u64, RegistryError> {
    if value == 0 {
        return Err(RegistryError::invalid("ttl_ms", "0 is not a lease (use e.g. 10000)"));
    }
    if let Some(config) = config {
        if value > config.ttl_ms_max {
            return Err(RegistryError::invalid(
                "ttl_ms",
                format!("{value} is above the cluster maximum {}", config.ttl_ms_max),
            ));
        }
    }
    Ok(value)
}

pub fn token(value: u64) -> Result<Token, RegistryError> {
    if value == 0 {
        return Err(RegistryError::invalid("token", "0 is never a granted token"));
    }
    Ok(Token(value))
}

pub fn reason(value: &str) -> Result<String, RegistryError> {
    if value.trim().is_empty() {
        return Err(RegistryError::invalid("reason", "must not be empty: say why, for the audit log"));
    }
    if value.len() > REASON_LEN_MAX {
        return Err(RegistryError::invalid(
            "reason",
            format!("{} bytes is over the {REASON_LEN_MAX}-byte limit", value.len()),
        ));
    }
    Ok(value.to_string())
}

pub fn node_id(value: u64) -> Result<NodeId, RegistryError> {
    if value == 0 {
        return Err(RegistryError::invalid("node_id", "must be > 0"));
    }
    Ok(value)
}

pub fn address(field: &str, value: &str, required: bool) -> Result<String, RegistryError> {
    if value.is_empty() && !required {
        return Ok(String::new());
    }
    let ok = value.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !ok {
        return Err(RegistryError::invalid(field, format!("{value:?} is not HOST:PORT")));
    }
    Ok(value.to_string())
}

/// An identity carried in a proposal (set by the node that authenticated the caller): a
/// Fenceflake SPIFFE ID of bounded length.
fn owner(field: &str, value: Option<&str>) -> Result<(), RegistryError> {
    let Some(value) = value else { return Ok(()) };
    if value.len() > OWNER_LEN_MAX {
        return Err(RegistryError::invalid(field, format!("{} bytes, above {OWNER_LEN_MAX}", value.len())));
    }
    value.parse::<PeerIdentity>().map(drop).map_err(|why| RegistryError::invalid(field, why))
}

/// Every field of a proposal, checked exactly as the client port checks the request it is
/// made from. Every proposal passes here before it is executed, whether it came from this
/// node's client port or was forwarded over the peer port (where a follower of another
/// version, or anything that reaches the port, could send anything).
pub fn proposal(p: &Proposal, config: Option<&ClusterConfig>) -> Result<(), RegistryError> {
    let id = |w: WorkerId| worker_id(w.0, config).map(drop);
    match p {
        Proposal::Acquire { holder: h, worker_id: w, ttl_ms: t, owner: o, incarnation: i } => {
            if *i == Some(Incarnation(0)) {
                return Err(RegistryError::invalid(
                    "incarnation",
                    "0 stands for none on the wire; a stated one is never 0",
                ));
            }
            holder(&h.0)?;
            w.map(id).transpose()?;
            owner("owner", o.as_deref())?;
            ttl_ms(*t, config).map(drop)
        }
        Proposal::Renew(r) => id(r.worker_id).and(token(r.token.0).map(drop)).and(owner("caller", r.caller.as_deref())),
        Proposal::Release(r) => {
            id(r.worker_id).and(token(r.token.0).map(drop)).and(owner("caller", r.caller.as_deref()))
        }
        Proposal::Quarantine(q) => id(q.worker_id).and(reason(&q.reason).map(drop)),
        Proposal::Unquarantine(u) => id(u.worker_id),
        Proposal::GetLease { worker_id: w } => id(*w),
        Proposal::ListLeases { .. } | Proposal::ListAudit | Proposal::ExportSnapshot => Ok(()),
        Proposal::AddLearner { node_id: n, node } => {
            node_id(*n)?;
            address("peer_addr", &node.peer_addr, true)?;
            address("client_addr", &node.client_addr, false).map(drop)
        }
        Proposal::PromoteMember { node_id: n } | Proposal::RemoveMember { node_id: n } => node_id(*n).map(drop),
        Proposal::NoteServed { node_id: n } => node_id(*n).map(drop),
        Proposal::TransferLeader { to } => to.map(node_id).transpose().map(drop),
        Proposal::ImportSnapshot { backup } => backup.check().map_err(|why| RegistryError::invalid("data", why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClusterConfig {
        ClusterConfig { epoch_ms: 0, worker_id_bits: 10, sequence_bits: 12, ttl_ms_max: 60_000, cool_down_ms: 0 }
    }

    fn field_of(e: RegistryError) -> String {
        match e {
            RegistryError::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn each_bad_value_names_its_field() {
        let c = config();
        assert_eq!(field_of(holder("").unwrap_err()), "holder");
        assert_eq!(field_of(holder(&"x".repeat(HOLDER_LEN_MAX + 1)).unwrap_err()), "holder");
        assert_eq!(field_of(holder("a\nb").unwrap_err()), "holder");
        assert_eq!(field_of(holder("fenceflake:restore-embargo/7").unwrap_err()), "holder");
        assert_eq!(field_of(worker_id(1024, Some(&c)).unwrap_err()), "worker_id");
        assert_eq!(field_of(ttl_ms(0, Some(&c)).unwrap_err()), "ttl_ms");
        assert_eq!(field_of(ttl_ms(60_001, Some(&c)).unwrap_err()), "ttl_ms");
        assert_eq!(field_of(token(0).unwrap_err()), "token");
        assert_eq!(field_of(reason(" ").unwrap_err()), "reason");
        assert_eq!(field_of(node_id(0).unwrap_err()), "node_id");
        assert_eq!(field_of(address("peer_addr", "nope", true).unwrap_err()), "peer_addr");
        assert!(worker_id(1023, Some(&c)).is_ok());
        assert!(ttl_ms(60_000, Some(&c)).is_ok());
        assert!(holder("host-1/4242/7f3a").is_ok());
    }

    /// Goal: a forwarded proposal gets the client port's checks: forged values are refused
    /// by field, valid ones pass.
    #[test]
    fn forwarded_proposals_are_validated_like_requests() {
        use crate::lease::{Quarantine, Renew};
        let c = config();
        let bad = [
            (
                Proposal::Acquire {
                    holder: HolderId("fenceflake:x".into()),
                    worker_id: None,
                    ttl_ms: 1,
                    owner: None,
                    incarnation: None,
                },
                "holder",
            ),
            (
                Proposal::Acquire {
                    holder: HolderId("a".into()),
                    worker_id: Some(WorkerId(4096)),
                    ttl_ms: 1,
                    owner: None,
                    incarnation: None,
                },
                "worker_id",
            ),
            (Proposal::Quarantine(Quarantine { worker_id: WorkerId(1), reason: "é".repeat(REASON_LEN_MAX) }), "reason"),
            (
                Proposal::Renew(Renew {
                    worker_id: WorkerId(1),
                    token: Token(0),
                    wall_ms_at_send: 0,
                    max_minted_ts_ms: 0,
                    caller: None,
                    window_ms: 0,
                }),
                "token",
            ),
            (
                Proposal::Acquire {
                    holder: HolderId("a".into()),
                    worker_id: None,
                    ttl_ms: 1,
                    owner: Some("spiffe://td/fenceflake/worker/a/../b".into()),
                    incarnation: None,
                },
                "owner",
            ),
            (
                Proposal::Acquire {
                    holder: HolderId("a".into()),
                    worker_id: None,
                    ttl_ms: 1,
                    owner: None,
                    incarnation: Some(Incarnation(0)),
                },
                "incarnation",
            ),
            (Proposal::TransferLeader { to: Some(0) }, "node_id"),
        ];
        for (p, field) in bad {
            assert_eq!(field_of(proposal(&p, Some(&c)).unwrap_err()), field, "{p:?}");
        }
        let ok = Proposal::Renew(Renew {
            worker_id: WorkerId(1),
            token: Token(9),
            wall_ms_at_send: 0,
            max_minted_ts_ms: 0,
            caller: None,
            window_ms: 0,
        });
        assert!(proposal(&ok, Some(&c)).is_ok());
    }

    mod props {
        use proptest::option;
        use proptest::prelude::*;

        use super::super::*;
        use crate::strategies;

        /// Every field a refusal may name: the request fields, and `data` (a backup).
        const FIELDS: [&str; 12] = [
            "holder",
            "worker_id",
            "ttl_ms",
            "token",
            "reason",
            "node_id",
            "peer_addr",
            "client_addr",
            "owner",
            "caller",
            "incarnation",
            "data",
        ];

        /// The field a refusal names (`None`: not an `INVALID_ARGUMENT`, or one without a field).
        fn named_field(error: RegistryError) -> Option<String> {
            match error {
                RegistryError::Invalid { field, why } if !why.is_empty() => Some(field),
                _ => None,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Goal (issue 9): no value of any request field panics a validator, and each
            /// refusal names the field it refuses.
            #[test]
            fn every_field_value_is_accepted_or_refused_by_name(
                text in strategies::text(),
                number in any::<u64>(),
                small in prop_oneof![Just(0u64), 1..70_000u64],
                config in option::of(strategies::node_config()),
            ) {
                let config = config.as_ref();
                let checks = [
                    ("holder", holder(&text).map(drop)),
                    ("worker_id", worker_id(number as u32, config).map(drop)),
                    ("worker_id", worker_id(small as u32, config).map(drop)),
                    ("ttl_ms", ttl_ms(number, config).map(drop)),
                    ("ttl_ms", ttl_ms(small, config).map(drop)),
                    ("token", token(small).map(drop)),
                    ("reason", reason(&text).map(drop)),
                    ("node_id", node_id(small).map(drop)),
                    ("peer_addr", address("peer_addr", &text, true).map(drop)),
                    ("client_addr", address("client_addr", &text, false).map(drop)),
                    ("owner", owner("owner", Some(&text))),
                ];
                for (field, result) in checks {
                    if let Err(error) = result {
                        prop_assert_eq!(named_field(error), Some(field.to_string()), "{:?}", text);
                    }
                }
            }

            /// Goal (issue 9): no proposal (a request, or anything a peer forwards) panics the
            /// validation, and each refusal names one of the request's fields.
            #[test]
            fn every_proposal_is_accepted_or_refused_by_field(
                p in strategies::proposal(),
                config in option::of(strategies::node_config()),
            ) {
                if let Err(error) = proposal(&p, config.as_ref()) {
                    let field = named_field(error);
                    prop_assert!(field.as_deref().is_some_and(|f| FIELDS.contains(&f)), "{:?}: {:?}", p, field);
                }
            }
        }
    }
}

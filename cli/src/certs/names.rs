//! The names inside Fenceflake certificates: roles, certificate names, trust domains and the
//! SPIFFE IDs built from them (`spiffe://<trust domain>/fenceflake/<role>/<name>`).

pub use fenceflake_proto::tls::{PeerIdentity, Role, NAME_LEN_MAX};

/// Longest trust domain, as SPIFFE allows (`fenceflake_proto::tls::valid_trust_domain`).
pub const TRUST_DOMAIN_LEN_MAX: usize = 255;
/// The trust domain `certs init` uses when none is given.
pub const DEFAULT_TRUST_DOMAIN: &str = "fenceflake.local";

/// clap value parser for `--role`; an unknown role is refused listing the five.
pub fn parse_role(text: &str) -> Result<Role, String> {
    text.parse()
}

/// Checks `name` for a certificate of `role`: `[A-Za-z0-9._-]{1,64}` (and not `.` or `..`,
/// which SPIFFE forbids as path segments); for a node, its registry node id (a decimal
/// integer ≥ 1, written without leading zeros, as peers compare it with the node id).
pub fn validate_name(role: Role, name: &str) -> Result<(), String> {
    if !fenceflake_proto::tls::valid_name(name) || name == "." || name == ".." {
        return Err(format!(
            "certificate name {name:?} is not allowed: use 1 to {NAME_LEN_MAX} characters of A-Z a-z 0-9 . _ - \
             (not \".\" or \"..\")"
        ));
    }
    if role == Role::Node {
        let is_node_id = name.parse::<u64>().is_ok_and(|id| id >= 1 && id.to_string() == name);
        if !is_node_id {
            return Err(format!(
                "certificate name {name:?} is not a registry node id: a node's name is its --node-id, \
                 a decimal integer >= 1 without leading zeros"
            ));
        }
    }
    Ok(())
}

/// Checks a SPIFFE trust domain: 1 to 255 characters of lowercase `a-z 0-9 . -`.
pub fn validate_trust_domain(trust_domain: &str) -> Result<(), String> {
    if !fenceflake_proto::tls::valid_trust_domain(trust_domain) {
        return Err(format!(
            "trust domain {trust_domain:?} is not allowed: use 1 to {TRUST_DOMAIN_LEN_MAX} characters of \
             lowercase a-z 0-9 . - (as SPIFFE requires)"
        ));
    }
    Ok(())
}

/// clap value parser for `--trust-domain`.
pub fn parse_trust_domain(text: &str) -> Result<String, String> {
    validate_trust_domain(text).map(|()| text.to_owned())
}

/// clap value parser for `--dns`: a syntactically valid DNS name.
pub fn parse_dns_name(text: &str) -> Result<String, String> {
    rustls::pki_types::DnsName::try_from(text)
        .map(|_| text.to_owned())
        .map_err(|_| format!("{text:?} is not a DNS name (letters, digits, - and . labels, e.g. node1.example.com)"))
}

/// The trust domain's own SPIFFE ID, the URI SAN of the CA certificate.
pub fn trust_domain_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}")
}

/// The identity a leaf certificate gives its holder; `.uri()` is its SPIFFE ID.
pub fn identity(trust_domain: &str, role: Role, name: &str) -> PeerIdentity {
    PeerIdentity { trust_domain: trust_domain.to_owned(), role, name: name.to_owned() }
}

/// The trust domain named by a CA's URI SANs (`spiffe://<trust domain>`, no path), if any.
pub fn trust_domain_from_uris<'a>(mut uris: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    uris.find_map(|uri| uri.strip_prefix("spiffe://").filter(|td| validate_trust_domain(td).is_ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: names are `[A-Za-z0-9._-]{1,64}`; a refusal names the value and the charset.
    #[test]
    fn names_use_the_allowed_charset() {
        for ok in ["w1", "gen-7.eu_west", "A", &"x".repeat(64)] {
            assert_eq!(validate_name(Role::Worker, ok), Ok(()), "{ok}");
        }
        for bad in ["", "a/b", "a b", "é", "a:b", ".", "..", &"x".repeat(65)] {
            let err = validate_name(Role::Client, bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")) && err.contains("A-Z a-z 0-9 . _ -"), "{err}");
        }
    }

    /// Goal: a node's name is its node id, a decimal integer >= 1 as peers print it.
    #[test]
    fn node_names_are_node_ids() {
        for ok in ["1", "5", "18446744073709551615"] {
            assert_eq!(validate_name(Role::Node, ok), Ok(()), "{ok}");
        }
        for bad in ["0", "01", "-1", "n1", "1.0", "18446744073709551616"] {
            let err = validate_name(Role::Node, bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")) && err.contains("node id"), "{err}");
        }
        assert_eq!(validate_name(Role::Operator, "01"), Ok(()), "only node names are ids");
    }

    /// Goal: trust domains are lowercase `[a-z0-9.-]{1,255}`; refusals name the value.
    #[test]
    fn trust_domains_are_lowercase_dns_like() {
        for ok in ["fenceflake.local", "prod-1.example.com", &"a".repeat(255)] {
            assert_eq!(parse_trust_domain(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "Prod.example", "a_b", "a/b", "spiffe://x", &"a".repeat(256)] {
            let err = parse_trust_domain(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")) && err.contains("lowercase"), "{err}");
        }
    }

    /// Goal: the SPIFFE IDs have the documented shape and the CA's trust domain reads back.
    #[test]
    fn spiffe_ids_and_trust_domain_round_trip() {
        let id = identity("td.example", Role::Node, "3");
        assert_eq!(id.uri(), "spiffe://td.example/fenceflake/node/3");
        assert_eq!(id.uri().parse::<PeerIdentity>(), Ok(id), "what peers parse");
        let ca_uris = ["https://x", "spiffe://Bad", "spiffe://td.example/path", "spiffe://td.example"];
        assert_eq!(trust_domain_from_uris(ca_uris.into_iter()), Some("td.example"));
        assert_eq!(trust_domain_from_uris([trust_domain_id("a.b").as_str()].into_iter()), Some("a.b"));
        assert_eq!(trust_domain_from_uris(["spiffe://a/b"].into_iter()), None);
    }

    /// Goal: an unknown role is refused naming it and listing the five.
    #[test]
    fn roles_parse_by_name() {
        assert_eq!(parse_role("operator"), Ok(Role::Operator));
        let err = parse_role("admin").unwrap_err();
        assert!(err.contains("\"admin\"") && err.contains("node, worker, client, operator, reader"), "{err}");
    }

    /// Goal: --dns accepts host names and refuses junk, naming it.
    #[test]
    fn dns_names_are_checked() {
        assert!(parse_dns_name("node1.fenceflake.svc").is_ok());
        assert!(parse_dns_name("localhost").is_ok());
        let err = parse_dns_name("bad host").unwrap_err();
        assert!(err.contains("\"bad host\""), "{err}");
    }
}

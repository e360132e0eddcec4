//! The registry's RPC names in one place: the latency histogram's label set, what each
//! proposal came from, and the service's counters all use [`Rpc`], so an RPC added later
//! cannot be dropped silently by the metrics (the match below must name it).

use fenceflake_proto::tls::Role;

/// One RPC of the public `Registry` service, or `NoteServed` (a node's own announcement that
/// it has served, proposed through the same path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    Acquire,
    Renew,
    Release,
    GetLease,
    ListLeases,
    ClusterStatus,
    Quarantine,
    Unquarantine,
    ListAudit,
    AddLearner,
    PromoteMember,
    RemoveMember,
    ExportSnapshot,
    ImportSnapshot,
    TransferLeader,
    NoteServed,
}

impl Rpc {
    /// Every RPC, in declaration order (`ALL[rpc.index()] == rpc`).
    pub const ALL: [Rpc; 16] = [
        Rpc::Acquire,
        Rpc::Renew,
        Rpc::Release,
        Rpc::GetLease,
        Rpc::ListLeases,
        Rpc::ClusterStatus,
        Rpc::Quarantine,
        Rpc::Unquarantine,
        Rpc::ListAudit,
        Rpc::AddLearner,
        Rpc::PromoteMember,
        Rpc::RemoveMember,
        Rpc::ExportSnapshot,
        Rpc::ImportSnapshot,
        Rpc::TransferLeader,
        Rpc::NoteServed,
    ];

    /// The gRPC method name (the `rpc` metric label).
    pub fn name(self) -> &'static str {
        match self {
            Rpc::Acquire => "Acquire",
            Rpc::Renew => "Renew",
            Rpc::Release => "Release",
            Rpc::GetLease => "GetLease",
            Rpc::ListLeases => "ListLeases",
            Rpc::ClusterStatus => "ClusterStatus",
            Rpc::Quarantine => "Quarantine",
            Rpc::Unquarantine => "Unquarantine",
            Rpc::ListAudit => "ListAudit",
            Rpc::AddLearner => "AddLearner",
            Rpc::PromoteMember => "PromoteMember",
            Rpc::RemoveMember => "RemoveMember",
            Rpc::ExportSnapshot => "ExportSnapshot",
            Rpc::ImportSnapshot => "ImportSnapshot",
            Rpc::TransferLeader => "TransferLeader",
            Rpc::NoteServed => "NoteServed",
        }
    }

    /// Who may call it: the one authorization table of the registry's public RPCs (docs/security.md).
    /// `NoteServed` is internal (a node's own proposal over the peer port): nobody calls it.
    pub fn roles(self) -> &'static [Role] {
        match self {
            Rpc::Acquire | Rpc::Renew | Rpc::Release => &[Role::Worker],
            Rpc::GetLease | Rpc::ListLeases | Rpc::ClusterStatus => {
                &[Role::Worker, Role::Operator, Role::Reader, Role::Node]
            }
            Rpc::Quarantine
            | Rpc::Unquarantine
            | Rpc::ListAudit
            | Rpc::AddLearner
            | Rpc::PromoteMember
            | Rpc::RemoveMember
            | Rpc::ExportSnapshot
            | Rpc::ImportSnapshot
            | Rpc::TransferLeader => &[Role::Operator],
            Rpc::NoteServed => &[],
        }
    }

    /// Whether only operators may call it (served on the admin listener too, and switched off
    /// on the client port by `--admin-only`).
    pub fn is_operator_only(self) -> bool {
        self.roles() == [Role::Operator]
    }

    /// Position in [`Rpc::ALL`], for per-RPC arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: clients (ID consumers) can call nothing on the registry, workers only their
    /// lease RPCs and reads, and every RPC that changes cluster state is operator-only.
    #[test]
    fn the_authorization_table_keeps_roles_apart() {
        for rpc in Rpc::ALL {
            assert!(!rpc.roles().contains(&Role::Client), "{rpc:?}");
            let writes_leases = matches!(rpc, Rpc::Acquire | Rpc::Renew | Rpc::Release);
            assert_eq!(
                rpc.roles().contains(&Role::Worker),
                writes_leases || !rpc.is_operator_only() && rpc != Rpc::NoteServed,
                "{rpc:?}"
            );
            assert_eq!(
                rpc.roles().contains(&Role::Reader),
                matches!(rpc, Rpc::GetLease | Rpc::ListLeases | Rpc::ClusterStatus),
                "{rpc:?}"
            );
        }
    }

    /// Goal: `ALL` is complete and in order, and every public name is a method of the
    /// `fenceflake.v1.Registry` service as compiled (a rename in the proto fails here).
    #[test]
    fn every_rpc_is_listed_once_and_names_a_real_method() {
        for (i, rpc) in Rpc::ALL.into_iter().enumerate() {
            assert_eq!(rpc.index(), i, "{rpc:?}");
        }
        let descriptors = fenceflake_proto::FILE_DESCRIPTOR_SET;
        for rpc in Rpc::ALL.into_iter().filter(|r| *r != Rpc::NoteServed) {
            let name = rpc.name().as_bytes();
            assert!(descriptors.windows(name.len()).any(|w| w == name), "{} is not in the proto", rpc.name());
        }
    }
}

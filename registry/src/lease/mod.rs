//! The pure lease domain: identities, commands, and the deterministic lease table
//! (docs/design.md mechanisms 1, 3's compare-and-set, and 4). No tokio, openraft, tonic or clock here.

pub mod backup;
pub mod command;
pub mod ids;
pub mod record;
pub mod table;

pub use backup::TableBackup;
pub use command::{Batch, Command, LeaseGrant, Outcome, Quarantine, Rejection, Release, Renew, Rules, Unquarantine};
pub use ids::{HolderId, Incarnation, LogPos, Token, TokenOffset, WorkerId};
pub use record::{AuditEntry, AuditKind, ClusterConfig, GrantExpectation, LeaseRecord, TableGlobals};
pub use table::{CoveredRenewal, LeaseTable};

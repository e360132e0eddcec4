//! The pure lease domain: identities, commands, and the deterministic lease table
//! (docs/design.md mechanisms 1, 3's compare-and-set, and 4). No tokio, openraft, tonic or clock here.

pub mod backup;
pub mod command;
pub mod ids;
pub mod table;

pub use backup::TableBackup;
pub use command::{Batch, ClusterConfig, Command, GrantExpectation, LeaseGrant, Outcome, Rejection};
pub use ids::{HolderId, LogPos, Token, WorkerId};
pub use table::{AuditEntry, AuditKind, LeaseRecord, LeaseTable, TableGlobals};

//! The lost-disk guard of a node that starts without Raft state (no vote, no log, no
//! membership): before it takes part in anything it asks its peers, and it starts only when
//! their answers prove that starting is safe. It fails closed: a node that cannot decide keeps
//! asking (and says so), it never starts on silence.

pub mod answer;
pub mod ask;
pub mod decision;
pub mod gate;

pub use answer::{HistoryAnswer, KnownMembership};
pub use ask::settle;
pub use decision::{decide, Decision, Evidence, Start};
pub use gate::StartGate;

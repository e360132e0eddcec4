//! Whether this node's Raft may hear from its peers yet. A node without Raft state starts
//! with the gate closed: its peer port answers `NodeHistory` (so that peers deciding the same
//! question hear "empty") and refuses every Raft message until the guard lets it start, so an
//! empty node under a known id never votes or acknowledges anything.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct StartGate(Arc<AtomicBool>);

impl StartGate {
    pub fn new(open: bool) -> StartGate {
        StartGate(Arc::new(AtomicBool::new(open)))
    }

    pub fn open(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

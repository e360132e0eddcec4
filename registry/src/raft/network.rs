//! Client side of the Raft transport: openraft's `RaftNetwork` over gRPC to peers' peer ports.

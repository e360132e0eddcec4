//! Server side of the Raft transport.

//! Fenceflake worker: minting core, clock guard, persisted ceiling.

//! Replay and verification for auditors (`croupier replay`): re-reads the event streams,
//! verifies the hash chain and gapless positions, and (in a later issue) rebuilds every round,
//! bet and balance.
//!
//! Depends on `domain`, `protocol` and the `store` port; never on a service.

pub mod replay;

pub use replay::{ReplayError, ReplayOptions, ReplayReport, replay};

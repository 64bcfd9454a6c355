//! Replay and verification for auditors (`croupier replay`): re-reads the Postgres log in one
//! snapshot, verifies the hash chain, gapless positions and published checkpoints, rebuilds
//! every round, bet, settlement and wallet, and checks them against the published rules,
//! implemented again here (`rules`) so that a bug in the code that applied them is caught
//! rather than confirmed.
//!
//! Depends on `domain` and `protocol` for the events' shapes only; never on a service, and not
//! on `domain`'s fairness or payout code.

pub mod copy;
pub mod crosscheck;
pub mod model;
pub mod msgpack;
pub mod recall;
pub mod replay;
pub mod report;
pub mod rules;
pub mod schema;
pub mod source;
pub mod wire;

pub use model::{Limits, Scope};
pub use replay::{ReplayError, ReplayOptions, replay, replay_with_progress};
pub use report::{Check, Report, Violation};
pub use source::Checkpoint;

//! Replay and verification for auditors (`croupier replay`): re-reads the event streams,
//! verifies the hash chain and gapless positions, and rebuilds every round, bet and balance.
//!
//! Depends on `domain`, `protocol` and the `store` port.

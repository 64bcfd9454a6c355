//! GS, the game service: accepts bets in batches (debiting wallets), records round transitions,
//! settles each round exactly once, publishes results through an outbox, and owns degraded mode.
//! Stateless: any number of instances may run.
//!
//! Depends on `domain`, `protocol` and the `bus` and `store` ports; never on another service.

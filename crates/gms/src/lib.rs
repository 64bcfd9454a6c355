//! GMS, the game management service: runs each table's round state machine on a timer, holds a
//! leader lease per table, and publishes every transition to the bus. It knows nothing of bets
//! or clients.
//!
//! Depends on `domain`, `protocol` and the `bus` port; never on another service or an adapter.

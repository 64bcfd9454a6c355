//! The pure heart of Croupier: ids, money, tables, rounds and their state machine, bets,
//! selections, payouts, wallet rules and the provably fair outcome algorithm (DESIGN §4).
//!
//! Depends on nothing of ours and performs no IO: no tokio, no clock, no random source. Time,
//! ids and seeds come in as arguments, so every rule is a plain function that tests can call.

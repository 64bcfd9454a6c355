//! The pure heart of Croupier: ids, money, tables, rounds and their state machine, bets,
//! selections, payouts, wallet rules and the provably fair outcome algorithm (docs/contract/events.md).
//!
//! Depends on nothing of ours and performs no IO: no tokio, no clock, no random source. Time,
//! ids and seeds come in as arguments, so every rule is a plain function that tests can call.
//!
//! - [`ids`], [`money`], [`time`]: the newtypes every other crate passes around.
//! - [`roulette`]: pockets, the table layout, selections and payouts.
//! - [`fairness`]: the commit–reveal outcome algorithm and its verification.
//! - [`game`]: the seam through which the round engine reaches a game's rules.
//! - [`round`]: the round state machine (`decide` / `apply`).
//! - [`bet`], [`wallet`]: whether a bet is accepted, table limits, settlement, balance rules.

pub mod bet;
pub mod fairness;
pub mod game;
pub mod ids;
pub mod money;
pub mod roulette;
pub mod round;
pub mod text;
pub mod time;
pub mod wallet;

pub use bet::{
    Bet, BetRejection, ClosedReason, LimitBreach, LimitsError, RoundPayouts, TableLimits, settle,
    validate_bet,
};
pub use fairness::{FairnessError, SeedHash, ServerSeed};
pub use game::{EuropeanRoulette, Game};
pub use ids::{BetId, IdError, PlayerId, RoundId, TableId};
pub use money::{Money, MoneyError};
pub use roulette::{
    Color, Outcome, OutcomeError, RawSelection, Selection, SelectionError, SelectionKind,
};
pub use round::{
    BettingWindow, Phase, Rejection, ReplayError, RoundCommand, RoundEvent, RoundState, Settlement,
    apply, decide,
};
pub use time::{Timestamp, TimestampError};
pub use wallet::{WalletError, credit, debit};

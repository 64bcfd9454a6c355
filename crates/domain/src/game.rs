//! The seam between the round engine and a particular game.
//!
//! The round state machine (`round.rs`) knows phases, times and the seed commitment; everything
//! that depends on the rules of a game (what a result looks like, how a seed becomes one, what a
//! player may bet on and what it pays) goes through [`Game`]. A second game is a new type that
//! implements this trait; the engine does not change.

use std::fmt;
use std::hash::Hash;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::fairness::{self, ServerSeed};
use crate::ids::{RoundId, TableId};
use crate::money::{Money, MoneyError};
use crate::roulette::{Outcome, RawSelection, Selection, SelectionError};

/// A round-based game. Games are marker types without state: the rules are the type, so a round
/// state can name its game without carrying a value around.
pub trait Game: fmt::Debug + Clone + Copy + PartialEq + Eq + Send + Sync + 'static {
    /// What a round produces (a pocket, a card, a die face).
    type Outcome: fmt::Debug
        + fmt::Display
        + Clone
        + Copy
        + PartialEq
        + Eq
        + Hash
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static;
    /// A bet that exists in this game, already validated.
    type Selection: fmt::Debug + Clone + PartialEq + Eq + Hash + Send + Sync + 'static;
    /// A selection as it arrives from a client, not yet validated.
    type RawSelection;
    type SelectionError: std::error::Error + Send + Sync + 'static;

    /// A short stable name, for logs and table configuration.
    const NAME: &'static str;

    /// The result a seed gives for a table and round; deterministic, so anyone can repeat it.
    fn outcome_from_seed(seed: &ServerSeed, table: &TableId, round: RoundId) -> Self::Outcome;

    fn validate_selection(raw: Self::RawSelection)
    -> Result<Self::Selection, Self::SelectionError>;

    /// What a stake on `selection` returns for `outcome`, stake included; zero when it loses.
    fn payout(
        selection: &Self::Selection,
        amount: Money,
        outcome: Self::Outcome,
    ) -> Result<Money, MoneyError>;
}

/// Single-zero roulette, the first game of Croupier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EuropeanRoulette;

impl Game for EuropeanRoulette {
    type Outcome = Outcome;
    type Selection = Selection;
    type RawSelection = RawSelection;
    type SelectionError = SelectionError;

    const NAME: &'static str = "european_roulette";

    fn outcome_from_seed(seed: &ServerSeed, table: &TableId, round: RoundId) -> Outcome {
        fairness::outcome(seed, table, round)
    }

    fn validate_selection(raw: RawSelection) -> Result<Selection, SelectionError> {
        Selection::parse(raw)
    }

    fn payout(selection: &Selection, amount: Money, outcome: Outcome) -> Result<Money, MoneyError> {
        selection.payout(amount, outcome)
    }
}

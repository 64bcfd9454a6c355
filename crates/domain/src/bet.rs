//! Bets: whether one may be accepted, within which limits, and what a round's bets pay
//! (docs/contract/events.md, wallet rules).
//!
//! A bet is accepted only if the round is open and `now` is before `closes_at`, the stake is
//! within the table limits (per bet and per player per round), and the balance covers it. The
//! three ways to say no map one-to-one onto the wire codes `BETTING_CLOSED`, `LIMIT_EXCEEDED` and
//! `INSUFFICIENT_FUNDS`. The selection needs no check here: a [`Selection`] is valid by
//! construction.

use serde::{Deserialize, Serialize};

use crate::ids::{BetId, PlayerId, RoundId, TableId};
use crate::money::{Money, MoneyError};
use crate::roulette::{Outcome, Selection};
use crate::round::{BettingWindow, Phase, Settlement};
use crate::time::Timestamp;
use crate::wallet::{self, WalletError};

/// Stake limits of a table. The fields are public because no combination is unsafe: limits that
/// make no sense (a minimum above the maximum) reject every bet but never accept a bad one.
/// [`TableLimits::new`] refuses such combinations for configuration code that wants to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TableLimits {
    /// The smallest stake of one bet.
    pub min_bet: Money,
    /// The largest stake of one bet.
    pub max_bet: Money,
    /// The most one player may stake in one round, all bets together.
    pub max_round_stake: Money,
}

/// Evaluated only in `const` items, so an out-of-range literal fails the build, not a request.
const fn literal(minor: i64) -> Money {
    match Money::new(minor) {
        Ok(money) => money,
        Err(_) => panic!("limit literal out of range"),
    }
}

impl TableLimits {
    /// `CROUPIER_MIN_BET` 10, `CROUPIER_MAX_BET` 100000, `CROUPIER_MAX_ROUND_STAKE` 1000000.
    pub const DEFAULT: TableLimits = TableLimits {
        min_bet: literal(10),
        max_bet: literal(100_000),
        max_round_stake: literal(1_000_000),
    };
}

impl Default for TableLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Limits that would reject every bet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("the minimum bet must be at least 1")]
    ZeroMinimum,
    #[error("the minimum bet {min_bet} is above the maximum bet {max_bet}")]
    MinimumAboveMaximum { min_bet: Money, max_bet: Money },
    #[error("the maximum bet {max_bet} is above the maximum stake per round {max_round_stake}")]
    MaximumAboveRoundStake {
        max_bet: Money,
        max_round_stake: Money,
    },
}

impl TableLimits {
    pub fn new(
        min_bet: Money,
        max_bet: Money,
        max_round_stake: Money,
    ) -> Result<Self, LimitsError> {
        if min_bet.is_zero() {
            Err(LimitsError::ZeroMinimum)
        } else if min_bet > max_bet {
            Err(LimitsError::MinimumAboveMaximum { min_bet, max_bet })
        } else if max_bet > max_round_stake {
            Err(LimitsError::MaximumAboveRoundStake {
                max_bet,
                max_round_stake,
            })
        } else {
            Ok(Self {
                min_bet,
                max_bet,
                max_round_stake,
            })
        }
    }
}

/// Why betting is closed for this bet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedReason {
    /// The round has not been seen open.
    NotOpened,
    /// The round has moved past `Open`.
    Phase(Phase),
    /// The round is still `Open` but its closing time has come.
    PastClosingTime {
        closes_at: Timestamp,
        now: Timestamp,
    },
}

impl std::fmt::Display for ClosedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotOpened => f.write_str("the round is not open"),
            Self::Phase(phase) => write!(f, "the round is {phase}"),
            Self::PastClosingTime { closes_at, .. } => write!(f, "betting closed at {closes_at}"),
        }
    }
}

/// Which limit a stake breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitBreach {
    BelowMinimum {
        amount: Money,
        min_bet: Money,
    },
    AboveMaximum {
        amount: Money,
        max_bet: Money,
    },
    RoundStake {
        amount: Money,
        already_staked: Money,
        max_round_stake: Money,
    },
}

impl std::fmt::Display for LimitBreach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BelowMinimum { amount, min_bet } => {
                write!(f, "stake {amount} is below the minimum bet {min_bet}")
            }
            Self::AboveMaximum { amount, max_bet } => {
                write!(f, "stake {amount} is above the maximum bet {max_bet}")
            }
            Self::RoundStake {
                amount,
                already_staked,
                max_round_stake,
            } => write!(
                f,
                "stake {amount} on top of {already_staked} already staked this round exceeds {max_round_stake}"
            ),
        }
    }
}

/// Why a bet is refused. One variant per wire error code; see [`BetRejection::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BetRejection {
    #[error("betting is closed: {0}")]
    BettingClosed(ClosedReason),
    #[error("limit exceeded: {0}")]
    LimitExceeded(LimitBreach),
    #[error("balance {balance} does not cover the stake {amount}")]
    InsufficientFunds { balance: Money, amount: Money },
}

impl BetRejection {
    /// The error code sent to the client (docs/contract/websocket.md).
    pub const fn code(&self) -> &'static str {
        match self {
            Self::BettingClosed(_) => "BETTING_CLOSED",
            Self::LimitExceeded(_) => "LIMIT_EXCEEDED",
            Self::InsufficientFunds { .. } => "INSUFFICIENT_FUNDS",
        }
    }
}

/// Decides whether a stake of `amount` may be accepted at `now`, and returns the balance after
/// debiting it. `round` is `None` for a round not seen open; `already_staked` is what this player
/// has staked on this round before. Checks run in the order a player can act on them: is the
/// table taking bets at all, is the stake allowed, can the player pay for it.
pub fn validate_bet(
    round: Option<BettingWindow>,
    now: Timestamp,
    amount: Money,
    limits: &TableLimits,
    already_staked: Money,
    balance: Money,
) -> Result<Money, BetRejection> {
    let window = round.ok_or(BetRejection::BettingClosed(ClosedReason::NotOpened))?;
    if window.phase != Phase::Open {
        return Err(BetRejection::BettingClosed(ClosedReason::Phase(
            window.phase,
        )));
    }
    if !window.accepts_bets_at(now) {
        return Err(BetRejection::BettingClosed(ClosedReason::PastClosingTime {
            closes_at: window.closes_at,
            now,
        }));
    }
    // A zero amount can only come from code that skipped `Money::stake`; it is below any minimum.
    if amount < limits.min_bet || amount.is_zero() {
        return Err(BetRejection::LimitExceeded(LimitBreach::BelowMinimum {
            amount,
            min_bet: limits.min_bet,
        }));
    }
    if amount > limits.max_bet {
        return Err(BetRejection::LimitExceeded(LimitBreach::AboveMaximum {
            amount,
            max_bet: limits.max_bet,
        }));
    }
    let round_total = already_staked.checked_add(amount);
    if round_total.is_none_or(|total| total > limits.max_round_stake) {
        return Err(BetRejection::LimitExceeded(LimitBreach::RoundStake {
            amount,
            already_staked,
            max_round_stake: limits.max_round_stake,
        }));
    }
    wallet::debit(balance, amount).map_err(|e| match e {
        WalletError::InsufficientFunds { balance, amount }
        | WalletError::Overflow { balance, amount } => {
            BetRejection::InsufficientFunds { balance, amount }
        }
    })
}

/// An accepted bet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Bet {
    pub id: BetId,
    pub player: PlayerId,
    pub table: TableId,
    pub round: RoundId,
    pub selection: Selection,
    pub amount: Money,
}

impl Bet {
    /// What this bet returns, stake included, when the round lands on `outcome`.
    pub fn payout(&self, outcome: Outcome) -> Result<Money, MoneyError> {
        self.selection.payout(self.amount, outcome)
    }
}

/// The payout of each bet of a round and the round's totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundPayouts {
    pub payouts: Vec<(BetId, Money)>,
    pub totals: Settlement,
}

/// Pays every bet of a round for `outcome`. Fails only if a total would exceed [`Money::MAX`].
pub fn settle<'a, I>(bets: I, outcome: Outcome) -> Result<RoundPayouts, MoneyError>
where
    I: IntoIterator<Item = &'a Bet>,
{
    let mut payouts = Vec::new();
    let mut staked = Money::ZERO;
    let mut paid = Money::ZERO;
    for bet in bets {
        let payout = bet.payout(outcome)?;
        staked = staked.checked_add(bet.amount).ok_or(MoneyError::Overflow)?;
        paid = paid.checked_add(payout).ok_or(MoneyError::Overflow)?;
        payouts.push((bet.id, payout));
    }
    let bets = payouts.len() as u64;
    Ok(RoundPayouts {
        payouts,
        totals: Settlement { bets, staked, paid },
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::roulette::RawSelection;

    fn money(n: i64) -> Money {
        Money::new(n).expect("valid amount")
    }

    fn now() -> Timestamp {
        Timestamp::parse("2026-11-25T22:17:00Z").expect("valid")
    }

    fn open_until(closes_at: Timestamp) -> Option<BettingWindow> {
        Some(BettingWindow {
            phase: Phase::Open,
            closes_at,
        })
    }

    fn later() -> Timestamp {
        now()
            .checked_add(Duration::from_secs(10))
            .expect("in range")
    }

    fn check(
        round: Option<BettingWindow>,
        amount: i64,
        staked: i64,
        balance: i64,
    ) -> Result<Money, BetRejection> {
        validate_bet(
            round,
            now(),
            money(amount),
            &TableLimits::default(),
            money(staked),
            money(balance),
        )
    }

    #[test]
    fn a_bet_within_limits_on_an_open_round_debits_the_stake() {
        assert_eq!(check(open_until(later()), 100, 0, 1_000), Ok(money(900)));
    }

    #[test]
    fn bet_is_rejected_when_round_is_closed() {
        for phase in [
            Phase::Closed,
            Phase::Resulted,
            Phase::Settled,
            Phase::Voided,
        ] {
            let window = Some(BettingWindow {
                phase,
                closes_at: later(),
            });
            let rejection = check(window, 100, 0, 1_000).expect_err("closed");
            assert_eq!(rejection.code(), "BETTING_CLOSED");
        }
    }

    #[test]
    fn bet_is_rejected_when_the_round_has_not_been_seen_open() {
        assert_eq!(
            check(None, 100, 0, 1_000),
            Err(BetRejection::BettingClosed(ClosedReason::NotOpened))
        );
    }

    #[test]
    fn bet_is_rejected_at_closes_at_even_if_the_round_is_still_open() {
        let rejection = check(open_until(now()), 100, 0, 1_000).expect_err("too late");
        assert_eq!(rejection.code(), "BETTING_CLOSED");
        let just_before = now()
            .checked_add(Duration::from_micros(1))
            .expect("in range");
        assert!(check(open_until(just_before), 100, 0, 1_000).is_ok());
    }

    #[test]
    fn stakes_outside_the_table_limits_are_refused() {
        assert!(check(open_until(later()), 10, 0, 1_000_000).is_ok());
        assert!(check(open_until(later()), 100_000, 0, 1_000_000).is_ok());
        for (amount, staked) in [(9, 0), (100_001, 0), (100_000, 900_001), (1, 0)] {
            let rejection =
                check(open_until(later()), amount, staked, 10_000_000).expect_err("limit");
            assert_eq!(rejection.code(), "LIMIT_EXCEEDED", "{amount} on {staked}");
        }
        assert!(check(open_until(later()), 100_000, 900_000, 1_000_000).is_ok());
    }

    #[test]
    fn a_bet_the_balance_does_not_cover_is_refused() {
        assert_eq!(
            check(open_until(later()), 100, 0, 99),
            Err(BetRejection::InsufficientFunds {
                balance: money(99),
                amount: money(100)
            })
        );
        assert_eq!(check(open_until(later()), 100, 0, 100), Ok(Money::ZERO));
    }

    #[test]
    fn a_closed_round_is_reported_before_limits_and_funds() {
        let window = Some(BettingWindow {
            phase: Phase::Closed,
            closes_at: later(),
        });
        assert_eq!(
            check(window, 1, 0, 0).map_err(|e| e.code()),
            Err("BETTING_CLOSED")
        );
        assert_eq!(
            check(open_until(later()), 1, 0, 0).map_err(|e| e.code()),
            Err("LIMIT_EXCEEDED")
        );
    }

    #[test]
    fn limits_that_would_reject_every_bet_are_refused() {
        assert_eq!(
            TableLimits::new(money(10), money(100_000), money(1_000_000)),
            Ok(TableLimits::default())
        );
        assert_eq!(
            TableLimits::new(Money::ZERO, money(1), money(1)),
            Err(LimitsError::ZeroMinimum)
        );
        assert!(TableLimits::new(money(5), money(4), money(10)).is_err());
        assert!(TableLimits::new(money(1), money(11), money(10)).is_err());
    }

    #[test]
    fn settling_a_round_pays_winners_and_totals_stakes_and_payouts() {
        let bet = |n: u128, raw: RawSelection, amount: i64| Bet {
            id: BetId::from_uuid(uuid::Uuid::from_u128(n)),
            player: PlayerId::parse("alice").expect("valid"),
            table: TableId::parse("roulette-1").expect("valid"),
            round: RoundId::FIRST,
            selection: Selection::parse(raw).expect("valid"),
            amount: money(amount),
        };
        let bets = [
            bet(1, RawSelection::Straight { numbers: vec![17] }, 100),
            bet(2, RawSelection::Red, 50),
            bet(3, RawSelection::Dozen { index: 2 }, 30),
        ];
        // 17 is black and in the second dozen.
        let result = settle(&bets, Outcome::new(17).expect("pocket")).expect("in range");
        assert_eq!(
            result
                .payouts
                .iter()
                .map(|(_, m)| m.get())
                .collect::<Vec<_>>(),
            vec![3_600, 0, 90]
        );
        assert_eq!(
            result.totals,
            Settlement {
                bets: 3,
                staked: money(180),
                paid: money(3_690)
            }
        );
    }

    #[test]
    fn bets_serialize_with_their_selection_in_wire_form() {
        let bet = Bet {
            id: BetId::parse("00000000-0000-4000-8000-000000000001").expect("valid"),
            player: PlayerId::parse("alice").expect("valid"),
            table: TableId::parse("roulette-1").expect("valid"),
            round: RoundId::FIRST,
            selection: Selection::parse(RawSelection::Split {
                numbers: vec![2, 1],
            })
            .expect("valid"),
            amount: money(100),
        };
        let json = serde_json::to_string(&bet).expect("serialize");
        assert_eq!(
            json,
            r#"{"id":"00000000-0000-4000-8000-000000000001","player":"alice","table":"roulette-1","round":1,"selection":{"kind":"split","numbers":[1,2]},"amount":100}"#
        );
        let back: Bet = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, bet);
    }
}

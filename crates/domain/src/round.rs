//! The round state machine: `Open → Closed → Resulted → Settled`, or `Voided` (docs/contract/events.md).
//!
//! Deciding is separate from applying: [`decide`] looks at a state, a command and the current time
//! and either refuses with a typed [`Rejection`] or returns the events that record what happened;
//! [`apply`] folds an event into the state and never fails, because an event is a fact. A round
//! is rebuilt from its events alone, and [`RoundState::replay`] does so while checking that the
//! events are ones `decide` could have produced, which is what an auditor needs.
//!
//! Game rules are reached only through [`Game`]; time, seeds and ids arrive as arguments.

use std::fmt;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use crate::fairness::{SeedHash, ServerSeed};
use crate::game::{EuropeanRoulette, Game};
use crate::ids::{RoundId, TableId};
use crate::money::Money;
use crate::roulette::Outcome;
use crate::time::Timestamp;

/// Where a round stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Accepting bets until `closes_at`.
    Open,
    /// No more bets; the outcome is not yet known.
    Closed,
    /// The outcome and seed are published; bets are not yet paid.
    Resulted,
    /// Every bet is paid.
    Settled,
    /// The round could not be completed; every stake is refunded.
    Voided,
}

impl Phase {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Closed => "closed",
            Self::Resulted => "resulted",
            Self::Settled => "settled",
            Self::Voided => "voided",
        }
    }

    /// The phase a round normally moves to next; `None` for the two final phases.
    pub const fn successor(self) -> Option<Phase> {
        match self {
            Self::Open => Some(Self::Closed),
            Self::Closed => Some(Self::Resulted),
            Self::Resulted => Some(Self::Settled),
            Self::Settled | Self::Voided => None,
        }
    }

    /// A round may be voided only while its outcome is unknown: voiding after the outcome is
    /// public would let whoever voids choose which results stand.
    pub const fn can_void(self) -> bool {
        matches!(self, Self::Open | Self::Closed)
    }

    pub const fn is_final(self) -> bool {
        matches!(self, Self::Settled | Self::Voided)
    }

    /// Whether a round in phase `self` may move to `to` in one step.
    pub fn can_become(self, to: Phase) -> bool {
        self.successor() == Some(to) || (to == Self::Voided && self.can_void())
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What can be asked of a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundCommand {
    /// Start taking bets, committing to the seed by its hash.
    Open {
        closes_at: Timestamp,
        seed_hash: SeedHash,
    },
    /// Stop taking bets; allowed from `closes_at` on.
    CloseBetting,
    /// Reveal the seed; the outcome follows from it.
    DeclareOutcome { server_seed: ServerSeed },
    /// Record that every bet has been paid.
    MarkSettled {
        bets: u64,
        staked: Money,
        paid: Money,
    },
    /// Give up on the round; its stakes are refunded.
    Void { reason: String },
}

impl RoundCommand {
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Open { .. } => "open",
            Self::CloseBetting => "close_betting",
            Self::DeclareOutcome { .. } => "declare_outcome",
            Self::MarkSettled { .. } => "mark_settled",
            Self::Void { .. } => "void",
        }
    }
}

/// What happened to a round. The field names and `kind` strings are those of docs/contract/events.md; the
/// envelope (`id`, `v`, `at`, `table`, `round`) is added at the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RoundEvent<O = Outcome> {
    RoundOpened {
        closes_at: Timestamp,
        seed_hash: SeedHash,
    },
    BettingClosed,
    OutcomeDeclared {
        outcome: O,
        server_seed: ServerSeed,
    },
    RoundSettled {
        bets: u64,
        staked: Money,
        paid: Money,
    },
    RoundVoided {
        reason: String,
    },
}

impl<O> RoundEvent<O> {
    /// The `kind` string on the wire.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::RoundOpened { .. } => "round_opened",
            Self::BettingClosed => "betting_closed",
            Self::OutcomeDeclared { .. } => "outcome_declared",
            Self::RoundSettled { .. } => "round_settled",
            Self::RoundVoided { .. } => "round_voided",
        }
    }

    /// The phase a round is in once this event is applied.
    pub const fn phase_after(&self) -> Phase {
        match self {
            Self::RoundOpened { .. } => Phase::Open,
            Self::BettingClosed => Phase::Closed,
            Self::OutcomeDeclared { .. } => Phase::Resulted,
            Self::RoundSettled { .. } => Phase::Settled,
            Self::RoundVoided { .. } => Phase::Voided,
        }
    }
}

/// The totals a round was settled with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Settlement {
    pub bets: u64,
    pub staked: Money,
    pub paid: Money,
}

/// Why a command was refused. Each is a business rule saying no, not a failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("{command} is not allowed before the round is opened")]
    NotOpened { command: &'static str },
    #[error("{command} is not allowed when the round is {from}")]
    IllegalTransition { from: Phase, command: &'static str },
    #[error("betting would close at {closes_at}, which is not after now ({now})")]
    ClosesInThePast {
        closes_at: Timestamp,
        now: Timestamp,
    },
    #[error("betting is open until {closes_at}; it is only {now}")]
    BettingStillOpen {
        closes_at: Timestamp,
        now: Timestamp,
    },
    #[error("the revealed seed hashes to {revealed}, but the round committed to {committed}")]
    SeedMismatch {
        committed: SeedHash,
        revealed: SeedHash,
    },
    #[error("a settlement of {bets} bet(s) cannot stake {staked} and pay {paid}")]
    InconsistentSettlement {
        bets: u64,
        staked: Money,
        paid: Money,
    },
    #[error("voiding a round needs a reason")]
    MissingVoidReason,
}

/// Why a sequence of recorded events is not a round `decide` could have produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("event #{index} ({event}) cannot follow a round that is {}", phase_name(*.from))]
    OutOfOrder {
        index: usize,
        from: Option<Phase>,
        event: &'static str,
    },
    #[error(
        "event #{index} reveals a seed hashing to {revealed}, but the round committed to {committed}"
    )]
    SeedMismatch {
        index: usize,
        committed: SeedHash,
        revealed: SeedHash,
    },
    #[error("event #{index} declares outcome {declared}, but the seed gives {expected}")]
    OutcomeMismatch {
        index: usize,
        declared: String,
        expected: String,
    },
}

fn phase_name(phase: Option<Phase>) -> &'static str {
    phase.map_or("not yet opened", Phase::as_str)
}

/// One round of one table, as far as its events go. `G` is the game whose rules decide the
/// outcome; it defaults to European roulette so that most code can just write `RoundState`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundState<G: Game = EuropeanRoulette> {
    table: TableId,
    round: RoundId,
    phase: Option<Phase>,
    closes_at: Option<Timestamp>,
    seed_hash: Option<SeedHash>,
    outcome: Option<G::Outcome>,
    server_seed: Option<ServerSeed>,
    settlement: Option<Settlement>,
    void_reason: Option<String>,
    game: PhantomData<G>,
}

impl RoundState {
    /// A roulette round that has not been opened yet: the state before its first event.
    pub fn new(table: TableId, round: RoundId) -> Self {
        Self::unopened(table, round)
    }
}

impl<G: Game> RoundState<G> {
    /// A round of game `G` that has not been opened yet.
    pub fn unopened(table: TableId, round: RoundId) -> Self {
        Self {
            table,
            round,
            phase: None,
            closes_at: None,
            seed_hash: None,
            outcome: None,
            server_seed: None,
            settlement: None,
            void_reason: None,
            game: PhantomData,
        }
    }

    /// Rebuilds a round from its recorded events, checking that each one could have been
    /// produced by [`decide`]: phases in order, the revealed seed matching the commitment, and
    /// the declared outcome being the one the seed gives. Timing rules are not checked here
    /// because the events do not carry their own times (the envelope does).
    pub fn replay<'a, I>(table: TableId, round: RoundId, events: I) -> Result<Self, ReplayError>
    where
        I: IntoIterator<Item = &'a RoundEvent<G::Outcome>>,
    {
        let mut state = Self::unopened(table, round);
        for (index, event) in events.into_iter().enumerate() {
            let to = event.phase_after();
            let in_order = match state.phase {
                None => to == Phase::Open,
                Some(from) => from.can_become(to),
            };
            if !in_order {
                return Err(ReplayError::OutOfOrder {
                    index,
                    from: state.phase,
                    event: event.kind(),
                });
            }
            if let RoundEvent::OutcomeDeclared {
                outcome,
                server_seed,
            } = event
            {
                let revealed = server_seed.hash();
                if let Some(committed) = state.seed_hash.filter(|c| *c != revealed) {
                    return Err(ReplayError::SeedMismatch {
                        index,
                        committed,
                        revealed,
                    });
                }
                let expected = G::outcome_from_seed(server_seed, &state.table, state.round);
                if expected != *outcome {
                    return Err(ReplayError::OutcomeMismatch {
                        index,
                        declared: outcome.to_string(),
                        expected: expected.to_string(),
                    });
                }
            }
            apply(&mut state, event);
        }
        Ok(state)
    }

    pub fn table(&self) -> &TableId {
        &self.table
    }

    pub fn round(&self) -> RoundId {
        self.round
    }

    /// `None` until the round has been opened.
    pub fn phase(&self) -> Option<Phase> {
        self.phase
    }

    pub fn closes_at(&self) -> Option<Timestamp> {
        self.closes_at
    }

    pub fn seed_hash(&self) -> Option<&SeedHash> {
        self.seed_hash.as_ref()
    }

    pub fn outcome(&self) -> Option<G::Outcome> {
        self.outcome
    }

    /// Known once the outcome is declared; until then the seed is secret and not part of the state.
    pub fn server_seed(&self) -> Option<&ServerSeed> {
        self.server_seed.as_ref()
    }

    pub fn settlement(&self) -> Option<Settlement> {
        self.settlement
    }

    pub fn void_reason(&self) -> Option<&str> {
        self.void_reason.as_deref()
    }

    /// What bet validation needs to know about this round; `None` before it opens.
    pub fn betting_window(&self) -> Option<BettingWindow> {
        Some(BettingWindow {
            phase: self.phase?,
            closes_at: self.closes_at?,
        })
    }
}

/// The part of a round that decides whether a bet may still be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BettingWindow {
    pub phase: Phase,
    pub closes_at: Timestamp,
}

impl BettingWindow {
    /// Bets are taken while the round is open and strictly before `closes_at`.
    pub fn accepts_bets_at(&self, now: Timestamp) -> bool {
        self.phase == Phase::Open && now < self.closes_at
    }
}

/// Decides what a command does to a round at time `now`.
pub fn decide<G: Game>(
    state: &RoundState<G>,
    command: RoundCommand,
    now: Timestamp,
) -> Result<Vec<RoundEvent<G::Outcome>>, Rejection> {
    let name = command.name();
    let Some(from) = state.phase else {
        return match command {
            RoundCommand::Open {
                closes_at,
                seed_hash,
            } => {
                if closes_at <= now {
                    Err(Rejection::ClosesInThePast { closes_at, now })
                } else {
                    Ok(vec![RoundEvent::RoundOpened {
                        closes_at,
                        seed_hash,
                    }])
                }
            }
            _ => Err(Rejection::NotOpened { command: name }),
        };
    };
    let illegal = Rejection::IllegalTransition {
        from,
        command: name,
    };
    match (from, command) {
        (Phase::Open, RoundCommand::CloseBetting) => match state.closes_at {
            Some(closes_at) if now < closes_at => {
                Err(Rejection::BettingStillOpen { closes_at, now })
            }
            _ => Ok(vec![RoundEvent::BettingClosed]),
        },
        (Phase::Closed, RoundCommand::DeclareOutcome { server_seed }) => {
            let revealed = server_seed.hash();
            if let Some(committed) = state.seed_hash.filter(|c| *c != revealed) {
                return Err(Rejection::SeedMismatch {
                    committed,
                    revealed,
                });
            }
            let outcome = G::outcome_from_seed(&server_seed, &state.table, state.round);
            Ok(vec![RoundEvent::OutcomeDeclared {
                outcome,
                server_seed,
            }])
        }
        (Phase::Resulted, RoundCommand::MarkSettled { bets, staked, paid }) => {
            // Every stake is at least one minor unit, so fewer minor units than bets (or money
            // without bets) means the totals were not computed from the bets.
            let consistent = u64::try_from(staked.get()).is_ok_and(|s| s >= bets)
                && (bets > 0 || paid.is_zero());
            if consistent {
                Ok(vec![RoundEvent::RoundSettled { bets, staked, paid }])
            } else {
                Err(Rejection::InconsistentSettlement { bets, staked, paid })
            }
        }
        (phase, RoundCommand::Void { reason }) if phase.can_void() => {
            let reason = reason.trim();
            if reason.is_empty() {
                Err(Rejection::MissingVoidReason)
            } else {
                Ok(vec![RoundEvent::RoundVoided {
                    reason: reason.to_owned(),
                }])
            }
        }
        _ => Err(illegal),
    }
}

/// Folds one event into the state. Events are facts, so this cannot fail; use
/// [`RoundState::replay`] to check events that come from outside.
pub fn apply<G: Game>(state: &mut RoundState<G>, event: &RoundEvent<G::Outcome>) {
    state.phase = Some(event.phase_after());
    match event {
        RoundEvent::RoundOpened {
            closes_at,
            seed_hash,
        } => {
            state.closes_at = Some(*closes_at);
            state.seed_hash = Some(*seed_hash);
        }
        RoundEvent::BettingClosed => {}
        RoundEvent::OutcomeDeclared {
            outcome,
            server_seed,
        } => {
            state.outcome = Some(*outcome);
            state.server_seed = Some(server_seed.clone());
        }
        RoundEvent::RoundSettled { bets, staked, paid } => {
            state.settlement = Some(Settlement {
                bets: *bets,
                staked: *staked,
                paid: *paid,
            });
        }
        RoundEvent::RoundVoided { reason } => {
            state.void_reason = Some(reason.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SEED: &str = "2c6efcecf60887650f301debdbc5a88446094e3fd5c747cc59bbeb9a019e7f9d";

    fn at(s: &str) -> Timestamp {
        Timestamp::parse(s).expect("valid timestamp")
    }

    fn seed() -> ServerSeed {
        ServerSeed::from_hex(SEED).expect("valid seed")
    }

    fn t0() -> Timestamp {
        at("2026-11-25T22:17:00Z")
    }

    fn closes() -> Timestamp {
        at("2026-11-25T22:17:15Z")
    }

    fn money(n: i64) -> Money {
        Money::new(n).expect("valid amount")
    }

    fn new_round() -> RoundState {
        RoundState::new(
            TableId::parse("roulette-1").expect("valid table"),
            RoundId::FIRST,
        )
    }

    /// Given a round that has gone through `commands` (each accepted at the time given).
    fn given(commands: Vec<(RoundCommand, Timestamp)>) -> RoundState {
        let mut state = new_round();
        for (command, now) in commands {
            let events = decide(&state, command, now).expect("the setup is accepted");
            for event in &events {
                apply(&mut state, event);
            }
        }
        state
    }

    fn open() -> (RoundCommand, Timestamp) {
        (
            RoundCommand::Open {
                closes_at: closes(),
                seed_hash: seed().hash(),
            },
            t0(),
        )
    }

    fn close() -> (RoundCommand, Timestamp) {
        (RoundCommand::CloseBetting, closes())
    }

    fn declare() -> (RoundCommand, Timestamp) {
        (
            RoundCommand::DeclareOutcome {
                server_seed: seed(),
            },
            closes(),
        )
    }

    fn settle() -> (RoundCommand, Timestamp) {
        (
            RoundCommand::MarkSettled {
                bets: 2,
                staked: money(200),
                paid: money(3_600),
            },
            closes(),
        )
    }

    #[test]
    fn opening_a_new_round_commits_to_the_seed_hash() {
        // Given a round that has not been opened
        let state = new_round();
        // When it is opened
        let events = decide(
            &state,
            RoundCommand::Open {
                closes_at: closes(),
                seed_hash: seed().hash(),
            },
            t0(),
        );
        // Then it records the closing time and the commitment
        assert_eq!(
            events,
            Ok(vec![RoundEvent::RoundOpened {
                closes_at: closes(),
                seed_hash: seed().hash(),
            }])
        );
    }

    #[test]
    fn a_round_cannot_open_with_a_closing_time_that_has_passed() {
        let state = new_round();
        let result = decide(
            &state,
            RoundCommand::Open {
                closes_at: t0(),
                seed_hash: seed().hash(),
            },
            t0(),
        );
        assert_eq!(
            result,
            Err(Rejection::ClosesInThePast {
                closes_at: t0(),
                now: t0()
            })
        );
    }

    #[test]
    fn nothing_but_open_is_accepted_before_a_round_opens() {
        let state = new_round();
        for (command, now) in [close(), declare(), settle()] {
            let name = command.name();
            assert_eq!(
                decide(&state, command, now),
                Err(Rejection::NotOpened { command: name })
            );
        }
    }

    #[test]
    fn betting_closes_at_closes_at_and_not_a_microsecond_earlier() {
        // Given an open round
        let state = given(vec![open()]);
        // When closing is asked one microsecond early, then it is refused
        let early = closes()
            .checked_sub(Duration::from_micros(1))
            .expect("in range");
        assert_eq!(
            decide(&state, RoundCommand::CloseBetting, early),
            Err(Rejection::BettingStillOpen {
                closes_at: closes(),
                now: early
            })
        );
        // When closing is asked at closes_at, then betting closes
        assert_eq!(
            decide(&state, RoundCommand::CloseBetting, closes()),
            Ok(vec![RoundEvent::BettingClosed])
        );
    }

    #[test]
    fn declaring_the_committed_seed_gives_the_outcome_it_determines() {
        // Given a closed round of roulette-1, round 1
        let state = given(vec![open(), close()]);
        // When the committed seed is revealed
        let events = decide(
            &state,
            RoundCommand::DeclareOutcome {
                server_seed: seed(),
            },
            closes(),
        );
        // Then the outcome is the one of the contract's test vector
        assert_eq!(
            events,
            Ok(vec![RoundEvent::OutcomeDeclared {
                outcome: Outcome::new(13).expect("pocket"),
                server_seed: seed(),
            }])
        );
    }

    #[test]
    fn declaring_a_seed_other_than_the_committed_one_is_refused() {
        let state = given(vec![open(), close()]);
        let other = ServerSeed::from_bytes([0; 32]);
        assert_eq!(
            decide(
                &state,
                RoundCommand::DeclareOutcome {
                    server_seed: other.clone()
                },
                closes()
            ),
            Err(Rejection::SeedMismatch {
                committed: seed().hash(),
                revealed: other.hash(),
            })
        );
    }

    #[test]
    fn the_outcome_cannot_be_declared_while_betting_is_open() {
        let state = given(vec![open()]);
        assert_eq!(
            decide(
                &state,
                RoundCommand::DeclareOutcome {
                    server_seed: seed()
                },
                closes()
            ),
            Err(Rejection::IllegalTransition {
                from: Phase::Open,
                command: "declare_outcome"
            })
        );
    }

    #[test]
    fn a_resulted_round_is_settled_with_its_totals() {
        let mut state = given(vec![open(), close(), declare()]);
        let (command, now) = settle();
        let events = decide(&state, command, now).expect("accepted");
        for event in &events {
            apply(&mut state, event);
        }
        assert_eq!(state.phase(), Some(Phase::Settled));
        assert_eq!(
            state.settlement(),
            Some(Settlement {
                bets: 2,
                staked: money(200),
                paid: money(3_600)
            })
        );
    }

    #[test]
    fn a_settlement_with_fewer_minor_units_staked_than_bets_is_refused() {
        let state = given(vec![open(), close(), declare()]);
        let result = decide(
            &state,
            RoundCommand::MarkSettled {
                bets: 3,
                staked: money(2),
                paid: money(0),
            },
            closes(),
        );
        assert!(matches!(
            result,
            Err(Rejection::InconsistentSettlement { .. })
        ));
        let nothing = decide(
            &state,
            RoundCommand::MarkSettled {
                bets: 0,
                staked: Money::ZERO,
                paid: Money::ZERO,
            },
            closes(),
        );
        assert!(nothing.is_ok());
    }

    #[test]
    fn an_open_or_closed_round_can_be_voided_with_a_reason() {
        for setup in [vec![open()], vec![open(), close()]] {
            let state = given(setup);
            assert_eq!(
                decide(
                    &state,
                    RoundCommand::Void {
                        reason: "  seed lost ".into()
                    },
                    closes()
                ),
                Ok(vec![RoundEvent::RoundVoided {
                    reason: "seed lost".into()
                }])
            );
            assert_eq!(
                decide(
                    &state,
                    RoundCommand::Void {
                        reason: "   ".into()
                    },
                    closes()
                ),
                Err(Rejection::MissingVoidReason)
            );
        }
    }

    #[test]
    fn a_round_whose_outcome_is_public_cannot_be_voided() {
        let state = given(vec![open(), close(), declare()]);
        assert_eq!(
            decide(
                &state,
                RoundCommand::Void {
                    reason: "dislike the result".into()
                },
                closes()
            ),
            Err(Rejection::IllegalTransition {
                from: Phase::Resulted,
                command: "void"
            })
        );
    }

    #[test]
    fn settled_and_voided_rounds_accept_no_further_command() {
        let settled = given(vec![open(), close(), declare(), settle()]);
        let voided = given(vec![
            open(),
            (
                RoundCommand::Void {
                    reason: "operator".into(),
                },
                t0(),
            ),
        ]);
        for state in [settled, voided] {
            for (command, now) in [open(), close(), declare(), settle()] {
                assert!(matches!(
                    decide(&state, command, now),
                    Err(Rejection::IllegalTransition { .. })
                ));
            }
        }
    }

    #[test]
    fn a_round_is_rebuilt_from_its_events() {
        let full = given(vec![open(), close(), declare(), settle()]);
        let events = vec![
            RoundEvent::RoundOpened {
                closes_at: closes(),
                seed_hash: seed().hash(),
            },
            RoundEvent::BettingClosed,
            RoundEvent::OutcomeDeclared {
                outcome: Outcome::new(13).expect("pocket"),
                server_seed: seed(),
            },
            RoundEvent::RoundSettled {
                bets: 2,
                staked: money(200),
                paid: money(3_600),
            },
        ];
        let rebuilt = RoundState::replay(full.table().clone(), full.round(), &events);
        assert_eq!(rebuilt, Ok(full));
    }

    #[test]
    fn replay_refuses_events_out_of_order_or_a_forged_outcome() {
        let table = TableId::parse("roulette-1").expect("valid table");
        let skipped = [
            RoundEvent::RoundOpened {
                closes_at: closes(),
                seed_hash: seed().hash(),
            },
            RoundEvent::OutcomeDeclared {
                outcome: Outcome::new(13).expect("pocket"),
                server_seed: seed(),
            },
        ];
        assert_eq!(
            RoundState::<EuropeanRoulette>::replay(table.clone(), RoundId::FIRST, &skipped),
            Err(ReplayError::OutOfOrder {
                index: 1,
                from: Some(Phase::Open),
                event: "outcome_declared"
            })
        );
        let forged = [
            skipped[0].clone(),
            RoundEvent::BettingClosed,
            RoundEvent::OutcomeDeclared {
                outcome: Outcome::new(0).expect("pocket"),
                server_seed: seed(),
            },
        ];
        assert_eq!(
            RoundState::<EuropeanRoulette>::replay(table, RoundId::FIRST, &forged),
            Err(ReplayError::OutcomeMismatch {
                index: 2,
                declared: "0".into(),
                expected: "13".into()
            })
        );
    }

    #[test]
    fn round_events_serialize_as_the_design_event_bodies() {
        let opened: RoundEvent = RoundEvent::RoundOpened {
            closes_at: closes(),
            seed_hash: seed().hash(),
        };
        let json = serde_json::to_value(&opened).expect("serialize");
        assert_eq!(json["kind"], "round_opened");
        assert_eq!(json["closes_at"], "2026-11-25T22:17:15.000000Z");
        assert_eq!(json["seed_hash"], seed().hash().to_hex());
        let closed: RoundEvent = RoundEvent::BettingClosed;
        assert_eq!(
            serde_json::to_string(&closed).expect("serialize"),
            r#"{"kind":"betting_closed"}"#
        );
        let declared: RoundEvent = RoundEvent::OutcomeDeclared {
            outcome: Outcome::new(13).expect("pocket"),
            server_seed: seed(),
        };
        assert_eq!(
            serde_json::to_string(&declared).expect("serialize"),
            format!(r#"{{"kind":"outcome_declared","outcome":13,"server_seed":"{SEED}"}}"#)
        );
        let packed = rmp_serde::to_vec_named(&declared).expect("serialize");
        let back: RoundEvent = rmp_serde::from_slice(&packed).expect("deserialize");
        assert_eq!(back, declared);
    }

    /// A second game, to show the engine runs any [`Game`] without change: a coin whose side
    /// is the parity of the first byte of the seed's hash.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Coin;

    impl Game for Coin {
        type Outcome = bool;
        type Selection = bool;
        type RawSelection = bool;
        type SelectionError = std::convert::Infallible;
        const NAME: &'static str = "coin";

        fn outcome_from_seed(seed: &ServerSeed, _: &TableId, _: RoundId) -> bool {
            seed.hash().as_bytes()[0] % 2 == 0
        }

        fn validate_selection(raw: bool) -> Result<bool, std::convert::Infallible> {
            Ok(raw)
        }

        fn payout(
            selection: &bool,
            amount: Money,
            outcome: bool,
        ) -> Result<Money, crate::money::MoneyError> {
            Ok(if *selection == outcome {
                amount
                    .checked_mul(2)
                    .ok_or(crate::money::MoneyError::Overflow)?
            } else {
                Money::ZERO
            })
        }
    }

    #[test]
    fn the_engine_runs_a_second_game_through_the_game_seam() {
        let mut state = RoundState::<Coin>::unopened(
            TableId::parse("coin-1").expect("valid table"),
            RoundId::FIRST,
        );
        let (open, now) = open();
        for (command, now) in [
            (open, now),
            (RoundCommand::CloseBetting, closes()),
            (
                RoundCommand::DeclareOutcome {
                    server_seed: seed(),
                },
                closes(),
            ),
        ] {
            for event in decide(&state, command, now).expect("accepted") {
                apply(&mut state, &event);
            }
        }
        assert_eq!(state.phase(), Some(Phase::Resulted));
        assert_eq!(state.outcome(), Some(seed().hash().as_bytes()[0] % 2 == 0));
    }
}

//! The bus event envelope of `docs/contract/events.md`: flat objects
//! `{kind, id, v, at, table, round, ...}`.
//!
//! GMS publishes the round transitions (`round_opened`, `betting_closed`, `outcome_declared`,
//! `round_voided`); GS publishes what happens to bets and wallets; an operator's switch of
//! betting (`betting_switched`, ADR 0022) is recorded in the store only and never published. The
//! same MessagePack bytes are the bus payload and the store's `data` column, and the `event`
//! field of a WebSocket `event` message. This module owns the shape only: it decides nothing.
//!
//! In Rust an event is an envelope ([`Event`]: id, version, time) around a typed body
//! ([`EventBody`]); on the wire the body's fields sit beside the envelope's, after `kind`.

use std::fmt;
use std::str::FromStr;

use domain::{
    BetId, Money, Outcome, PlayerId, RoundEvent, RoundId, SeedHash, Selection, ServerSeed, TableId,
    Timestamp,
};
use schemars::JsonSchema;
use serde::de;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::serde_util::{buffer_object, from_buffer, tag};
use crate::status::Betting;

/// The schema version this code writes in `v`. Readers accept any version and keep it: a reader
/// that cares about a newer shape can look at `v`.
pub const EVENT_VERSION: u16 = 1;

/// One event: the envelope common to every kind, and the kind's own fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unique per event: the store's `event_id` and, for GS, the `Nats-Msg-Id`.
    pub id: Uuid,
    /// Schema version of this event's shape ([`EVENT_VERSION`] when we write it).
    pub v: u16,
    /// When the producer decided it.
    pub at: Timestamp,
    pub body: EventBody,
}

/// The kind-specific part of an event. Serialized alone it is just its fields (no `kind`): put
/// it in an [`Event`] to get the wire form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum EventBody {
    RoundOpened(RoundOpened),
    BettingClosed(BettingClosed),
    OutcomeDeclared(OutcomeDeclared),
    RoundVoided(RoundVoided),
    BetPlaced(BetPlaced),
    BetSettled(BetSettled),
    BetRefunded(BetRefunded),
    RoundSettled(RoundSettled),
    FundsDeposited(FundsDeposited),
    BettingSwitched(BettingSwitched),
}

/// Who publishes an event kind, and so on which subject it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Producer {
    /// GMS: round transitions on `table.<t>.round`.
    Gms,
    /// GS: bets, wallets and results on `player.<p>.wallet` and `table.<t>.result`.
    Gs,
    /// An operator, through the CLI (`croupier betting`): recorded in the event store only
    /// (stream `operator`), never published on the bus.
    Operator,
}

/// The `kind` of an event, without its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    RoundOpened,
    BettingClosed,
    OutcomeDeclared,
    RoundVoided,
    BetPlaced,
    BetSettled,
    BetRefunded,
    RoundSettled,
    FundsDeposited,
    BettingSwitched,
}

impl EventKind {
    /// Every kind, in the order of `docs/contract/events.md`.
    pub const ALL: [EventKind; 10] = [
        EventKind::RoundOpened,
        EventKind::BettingClosed,
        EventKind::OutcomeDeclared,
        EventKind::RoundVoided,
        EventKind::BetPlaced,
        EventKind::BetSettled,
        EventKind::BetRefunded,
        EventKind::RoundSettled,
        EventKind::FundsDeposited,
        EventKind::BettingSwitched,
    ];

    /// The wire name, e.g. `"round_opened"` (also the store's `type` column).
    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::RoundOpened => "round_opened",
            EventKind::BettingClosed => "betting_closed",
            EventKind::OutcomeDeclared => "outcome_declared",
            EventKind::RoundVoided => "round_voided",
            EventKind::BetPlaced => "bet_placed",
            EventKind::BetSettled => "bet_settled",
            EventKind::BetRefunded => "bet_refunded",
            EventKind::RoundSettled => "round_settled",
            EventKind::FundsDeposited => "funds_deposited",
            EventKind::BettingSwitched => "betting_switched",
        }
    }

    pub const fn producer(self) -> Producer {
        match self {
            EventKind::RoundOpened
            | EventKind::BettingClosed
            | EventKind::OutcomeDeclared
            | EventKind::RoundVoided => Producer::Gms,
            EventKind::BetPlaced
            | EventKind::BetSettled
            | EventKind::BetRefunded
            | EventKind::RoundSettled
            | EventKind::FundsDeposited => Producer::Gs,
            EventKind::BettingSwitched => Producer::Operator,
        }
    }

    /// Whether events of this kind are published on the bus (all but an operator's).
    pub const fn is_published(self) -> bool {
        !matches!(self.producer(), Producer::Operator)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `kind` that names no event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event kind")]
pub struct UnknownEventKind;

impl FromStr for EventKind {
    type Err = UnknownEventKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or(UnknownEventKind)
    }
}

/// GMS opened a round for bets until `closes_at`, committing to its seed with `seed_hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RoundOpened {
    #[schemars(with = "crate::schema::TableIdSchema")]
    pub table: TableId,
    #[schemars(with = "crate::schema::RoundIdSchema")]
    pub round: RoundId,
    /// Bets are accepted only before this instant (by the GS clock).
    #[schemars(with = "crate::schema::TimestampSchema")]
    pub closes_at: Timestamp,
    /// Lowercase hex of SHA-256 of the round's server seed.
    #[schemars(with = "crate::schema::SeedHashSchema")]
    pub seed_hash: SeedHash,
}

/// GMS closed betting on a round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BettingClosed {
    #[schemars(with = "crate::schema::TableIdSchema")]
    pub table: TableId,
    #[schemars(with = "crate::schema::RoundIdSchema")]
    pub round: RoundId,
}

/// GMS revealed the seed and the outcome it gives (provably fair: `docs/contract/fairness.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OutcomeDeclared {
    #[schemars(with = "crate::schema::TableIdSchema")]
    pub table: TableId,
    #[schemars(with = "crate::schema::RoundIdSchema")]
    pub round: RoundId,
    #[schemars(with = "crate::schema::OutcomeSchema")]
    pub outcome: Outcome,
    /// Lowercase hex of the 32 seed bytes; its SHA-256 is the round's `seed_hash`.
    #[schemars(with = "crate::schema::ServerSeedSchema")]
    pub server_seed: ServerSeed,
}

/// The round cannot be completed; every stake on it is refunded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RoundVoided {
    #[schemars(with = "crate::schema::TableIdSchema")]
    pub table: TableId,
    #[schemars(with = "crate::schema::RoundIdSchema")]
    pub round: RoundId,
    /// Why, for people.
    pub reason: String,
}

/// GS accepted a bet and debited its stake; `balance` is the balance after the debit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BetPlaced {
    #[schemars(with = "crate::schema::TableIdSchema")]
    pub table: TableId,
    #[schemars(with = "crate::schema::RoundIdSchema")]
    pub round: RoundId,
    #[schemars(with = "crate::schema::BetIdSchema")]
    pub bet_id: BetId,
    #[schemars(with = "crate::schema::PlayerIdSchema")]
    pub player: PlayerId,
    #[serde(deserialize_with = "crate::serde_util::selection")]
    #[schemars(with = "crate::schema::SelectionSchema")]
    pub selection: Selection,
    #[serde(with = "crate::serde_util::stake")]
    #[schemars(with = "crate::schema::StakeSchema")]
    pub amount: Money,
    #[schemars(with = "crate::schema::MoneySchema")]
    pub balance: Money,
}

/// GS settled a bet: `payout` (0 for a losing bet) was credited; `balance` is after the credit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BetSettled {
    #[schemars(with = "crate::schema::TableIdSchema")]
    pub table: TableId,
    #[schemars(with = "crate::schema::RoundIdSchema")]
    pub round: RoundId,
    #[schemars(with = "crate::schema::BetIdSchema")]
    pub bet_id: BetId,
    #[schemars(with = "crate::schema::PlayerIdSchema")]
    pub player: PlayerId,
    #[schemars(with = "crate::schema::MoneySchema")]
    pub payout: Money,
    #[schemars(with = "crate::schema::MoneySchema")]
    pub balance: Money,
}

/// GS refunded the stake of a bet on a voided round; `balance` is after the credit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BetRefunded {
    #[schemars(with = "crate::schema::TableIdSchema")]
    pub table: TableId,
    #[schemars(with = "crate::schema::RoundIdSchema")]
    pub round: RoundId,
    #[schemars(with = "crate::schema::BetIdSchema")]
    pub bet_id: BetId,
    #[schemars(with = "crate::schema::PlayerIdSchema")]
    pub player: PlayerId,
    #[serde(with = "crate::serde_util::stake")]
    #[schemars(with = "crate::schema::StakeSchema")]
    pub amount: Money,
    #[schemars(with = "crate::schema::MoneySchema")]
    pub balance: Money,
}

/// GS settled every bet of a round (published on `table.<t>.result`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RoundSettled {
    #[schemars(with = "crate::schema::TableIdSchema")]
    pub table: TableId,
    #[schemars(with = "crate::schema::RoundIdSchema")]
    pub round: RoundId,
    /// How many bets the round had.
    pub bets: u64,
    /// Sum of their stakes.
    #[schemars(with = "crate::schema::MoneySchema")]
    pub staked: Money,
    /// Sum of their payouts.
    #[schemars(with = "crate::schema::MoneySchema")]
    pub paid: Money,
}

/// GS credited a deposit to a player's wallet; idempotent by `deposit_id`. A deposit belongs to
/// no round, so it has no `round`; it names a `table` only when one is involved (a deposit made
/// through the CLI has none), and the field is then left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FundsDeposited {
    // Left out when absent, never written as null: the schema lists it as optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "crate::schema::TableIdSchema")]
    pub table: Option<TableId>,
    #[schemars(with = "crate::schema::PlayerIdSchema")]
    pub player: PlayerId,
    /// The idempotency key of the deposit, chosen by whoever asks for it.
    #[schemars(with = "crate::schema::DepositIdSchema")]
    pub deposit_id: DepositId,
    #[serde(with = "crate::serde_util::stake")]
    #[schemars(with = "crate::schema::StakeSchema")]
    pub amount: Money,
    #[schemars(with = "crate::schema::MoneySchema")]
    pub balance: Money,
}

/// An operator switched betting off or on (`croupier betting off|on`, ADR 0022), for one table or
/// for every table. Recorded in the event store only (stream `operator`), never published: the
/// switch itself is the `status` bucket's key `operator` or `operator.<table>`, and this event is
/// its record, so that a replay shows who switched what and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BettingSwitched {
    /// The table switched, or `null` for every table (always written).
    #[serde(deserialize_with = "crate::serde_util::nullable")]
    #[schemars(with = "Option<crate::schema::TableIdSchema>")]
    pub table: Option<TableId>,
    /// `"disabled"` (switched off) or `"enabled"` (the operator's switch lifted).
    pub betting: Betting,
    /// Why, in the operator's words.
    pub reason: String,
    /// Who switched (the operator's name).
    pub by: String,
}

/// The idempotency key of a deposit: 1 to 128 printable ASCII characters (a UUID, an external
/// payment reference, ...).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DepositId(String);

/// Why a string is not a deposit id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a deposit id is 1 to {max} printable ASCII characters", max = DepositId::MAX_LEN)]
pub struct DepositIdError;

impl DepositId {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<DepositId, DepositIdError> {
        if (1..=Self::MAX_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(DepositId(s.to_owned()))
        } else {
            Err(DepositIdError)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DepositId {
    type Error = DepositIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<DepositId> for String {
    fn from(id: DepositId) -> String {
        id.0
    }
}

impl FromStr for DepositId {
    type Err = DepositIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for DepositId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! body_from {
    ($($variant:ident),*) => {
        $(
            impl From<$variant> for EventBody {
                fn from(body: $variant) -> EventBody {
                    EventBody::$variant(body)
                }
            }
        )*
    };
}

body_from!(
    RoundOpened,
    BettingClosed,
    OutcomeDeclared,
    RoundVoided,
    BetPlaced,
    BetSettled,
    BetRefunded,
    RoundSettled,
    FundsDeposited,
    BettingSwitched
);

impl EventBody {
    pub const fn kind(&self) -> EventKind {
        match self {
            EventBody::RoundOpened(_) => EventKind::RoundOpened,
            EventBody::BettingClosed(_) => EventKind::BettingClosed,
            EventBody::OutcomeDeclared(_) => EventKind::OutcomeDeclared,
            EventBody::RoundVoided(_) => EventKind::RoundVoided,
            EventBody::BetPlaced(_) => EventKind::BetPlaced,
            EventBody::BetSettled(_) => EventKind::BetSettled,
            EventBody::BetRefunded(_) => EventKind::BetRefunded,
            EventBody::RoundSettled(_) => EventKind::RoundSettled,
            EventBody::FundsDeposited(_) => EventKind::FundsDeposited,
            EventBody::BettingSwitched(_) => EventKind::BettingSwitched,
        }
    }

    /// The table, which every kind names except a deposit made outside any table and an
    /// operator's switch of every table.
    pub fn table(&self) -> Option<&TableId> {
        match self {
            EventBody::RoundOpened(b) => Some(&b.table),
            EventBody::BettingClosed(b) => Some(&b.table),
            EventBody::OutcomeDeclared(b) => Some(&b.table),
            EventBody::RoundVoided(b) => Some(&b.table),
            EventBody::BetPlaced(b) => Some(&b.table),
            EventBody::BetSettled(b) => Some(&b.table),
            EventBody::BetRefunded(b) => Some(&b.table),
            EventBody::RoundSettled(b) => Some(&b.table),
            EventBody::FundsDeposited(b) => b.table.as_ref(),
            EventBody::BettingSwitched(b) => b.table.as_ref(),
        }
    }

    /// The round, which every kind names except `funds_deposited` and `betting_switched`.
    pub fn round(&self) -> Option<RoundId> {
        match self {
            EventBody::RoundOpened(b) => Some(b.round),
            EventBody::BettingClosed(b) => Some(b.round),
            EventBody::OutcomeDeclared(b) => Some(b.round),
            EventBody::RoundVoided(b) => Some(b.round),
            EventBody::BetPlaced(b) => Some(b.round),
            EventBody::BetSettled(b) => Some(b.round),
            EventBody::BetRefunded(b) => Some(b.round),
            EventBody::RoundSettled(b) => Some(b.round),
            EventBody::FundsDeposited(_) | EventBody::BettingSwitched(_) => None,
        }
    }

    /// The player of a wallet event (`bet_placed`, `bet_settled`, `bet_refunded`,
    /// `funds_deposited`); `None` for table events.
    pub fn player(&self) -> Option<&PlayerId> {
        match self {
            EventBody::BetPlaced(b) => Some(&b.player),
            EventBody::BetSettled(b) => Some(&b.player),
            EventBody::BetRefunded(b) => Some(&b.player),
            EventBody::FundsDeposited(b) => Some(&b.player),
            EventBody::RoundOpened(_)
            | EventBody::BettingClosed(_)
            | EventBody::OutcomeDeclared(_)
            | EventBody::RoundVoided(_)
            | EventBody::RoundSettled(_)
            | EventBody::BettingSwitched(_) => None,
        }
    }
}

impl Event {
    /// An event of the current schema version.
    pub fn new(id: Uuid, at: Timestamp, body: impl Into<EventBody>) -> Event {
        Event {
            id,
            v: EVENT_VERSION,
            at,
            body: body.into(),
        }
    }

    /// The wire name of the kind, e.g. `"round_opened"`.
    pub const fn kind(&self) -> &'static str {
        self.body.kind().as_str()
    }

    pub const fn event_kind(&self) -> EventKind {
        self.body.kind()
    }

    /// See [`EventBody::table`].
    pub fn table(&self) -> Option<&TableId> {
        self.body.table()
    }

    /// See [`EventBody::round`].
    pub fn round(&self) -> Option<RoundId> {
        self.body.round()
    }

    /// See [`EventBody::player`].
    pub fn player(&self) -> Option<&PlayerId> {
        self.body.player()
    }
}

/// The wire shape on the way out: `kind` first, then the envelope, then the body's fields.
#[derive(Serialize)]
struct EventOut<'a> {
    kind: &'static str,
    #[serde(with = "crate::serde_util::uuid_string")]
    id: Uuid,
    v: u16,
    at: &'a Timestamp,
    #[serde(flatten)]
    body: &'a EventBody,
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        EventOut {
            kind: self.kind(),
            id: self.id,
            v: self.v,
            at: &self.at,
            body: &self.body,
        }
        .serialize(serializer)
    }
}

/// The envelope fields, on the way in.
#[derive(Deserialize)]
struct Envelope {
    #[serde(with = "crate::serde_util::uuid_string")]
    id: Uuid,
    v: u16,
    at: Timestamp,
}

const KIND_NAMES: &[&str] = &[
    "round_opened",
    "betting_closed",
    "outcome_declared",
    "round_voided",
    "bet_placed",
    "bet_settled",
    "bet_refunded",
    "round_settled",
    "funds_deposited",
    "betting_switched",
];

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Buffer the object, dispatch on `kind`, then read the envelope and the kind's fields
        // from the same buffer; each ignores the fields it does not know.
        let object = buffer_object(deserializer)?;
        let kind = tag::<D::Error>(&object, "kind", KIND_NAMES)?;
        let kind: EventKind = kind
            .parse()
            .map_err(|_| de::Error::unknown_variant(kind, KIND_NAMES))?;
        let Envelope { id, v, at } = from_buffer(&object)?;
        let body = match kind {
            EventKind::RoundOpened => EventBody::RoundOpened(from_buffer(&object)?),
            EventKind::BettingClosed => EventBody::BettingClosed(from_buffer(&object)?),
            EventKind::OutcomeDeclared => EventBody::OutcomeDeclared(from_buffer(&object)?),
            EventKind::RoundVoided => EventBody::RoundVoided(from_buffer(&object)?),
            EventKind::BetPlaced => EventBody::BetPlaced(from_buffer(&object)?),
            EventKind::BetSettled => EventBody::BetSettled(from_buffer(&object)?),
            EventKind::BetRefunded => EventBody::BetRefunded(from_buffer(&object)?),
            EventKind::RoundSettled => EventBody::RoundSettled(from_buffer(&object)?),
            EventKind::FundsDeposited => EventBody::FundsDeposited(from_buffer(&object)?),
            EventKind::BettingSwitched => EventBody::BettingSwitched(from_buffer(&object)?),
        };
        Ok(Event { id, v, at, body })
    }
}

impl EventBody {
    /// The wire body of a domain round event (`docs/contract/events.md`): the domain leaves out the
    /// table and round, which the envelope adds.
    pub fn from_round_event(table: TableId, round: RoundId, event: RoundEvent) -> EventBody {
        match event {
            RoundEvent::RoundOpened {
                closes_at,
                seed_hash,
            } => EventBody::RoundOpened(RoundOpened {
                table,
                round,
                closes_at,
                seed_hash,
            }),
            RoundEvent::BettingClosed => EventBody::BettingClosed(BettingClosed { table, round }),
            RoundEvent::OutcomeDeclared {
                outcome,
                server_seed,
            } => EventBody::OutcomeDeclared(OutcomeDeclared {
                table,
                round,
                outcome,
                server_seed,
            }),
            RoundEvent::RoundSettled { bets, staked, paid } => {
                EventBody::RoundSettled(RoundSettled {
                    table,
                    round,
                    bets,
                    staked,
                    paid,
                })
            }
            RoundEvent::RoundVoided { reason } => EventBody::RoundVoided(RoundVoided {
                table,
                round,
                reason,
            }),
        }
    }

    /// The domain round event this body carries, for the kinds that change a round's phase;
    /// `None` for bet, wallet and operator events.
    pub fn to_round_event(&self) -> Option<RoundEvent> {
        Some(match self {
            EventBody::RoundOpened(b) => RoundEvent::RoundOpened {
                closes_at: b.closes_at,
                seed_hash: b.seed_hash,
            },
            EventBody::BettingClosed(_) => RoundEvent::BettingClosed,
            EventBody::OutcomeDeclared(b) => RoundEvent::OutcomeDeclared {
                outcome: b.outcome,
                server_seed: b.server_seed.clone(),
            },
            EventBody::RoundSettled(b) => RoundEvent::RoundSettled {
                bets: b.bets,
                staked: b.staked,
                paid: b.paid,
            },
            EventBody::RoundVoided(b) => RoundEvent::RoundVoided {
                reason: b.reason.clone(),
            },
            EventBody::BetPlaced(_)
            | EventBody::BetSettled(_)
            | EventBody::BetRefunded(_)
            | EventBody::FundsDeposited(_)
            | EventBody::BettingSwitched(_) => return None,
        })
    }
}

//! The bet request/reply on the bus (`docs/contract/bus.md`): a gateway sends a [`PlaceBetRequest`]
//! to `bets.place.<table>` (core NATS request/reply, queue group `gs`, with a deadline) and GS
//! answers with a [`PlaceBetReply`]. Both are MessagePack maps with named fields.
//!
//! Owns the payloads only; subjects live in `subject`, transport in the `bus` crate.

use domain::{BetId, Money, PlayerId, RoundId, Selection, TableId};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error_code::ErrorCode;
use crate::serde_util::{buffer_object, from_buffer};

/// A bet forwarded by a gateway, for the player the connection's token names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlaceBetRequest {
    /// The client's `request_id`, for tracing; the answer is matched by the request/reply inbox.
    pub request_id: String,
    #[schemars(with = "crate::schema::BetIdSchema")]
    pub bet_id: BetId,
    #[schemars(with = "crate::schema::PlayerIdSchema")]
    pub player: PlayerId,
    #[schemars(with = "crate::schema::TableIdSchema")]
    pub table: TableId,
    #[schemars(with = "crate::schema::RoundIdSchema")]
    pub round: RoundId,
    #[serde(deserialize_with = "crate::serde_util::selection")]
    #[schemars(with = "crate::schema::SelectionSchema")]
    pub selection: Selection,
    #[serde(with = "crate::serde_util::stake")]
    #[schemars(with = "crate::schema::StakeSchema")]
    pub amount: Money,
}

/// GS's answer: accepted `{bet_id, status: "accepted", balance}` or rejected `{code, message}`.
/// Read as a rejection when it has `code`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PlaceBetReply {
    Accepted(BetAccepted),
    Rejected(BetRejected),
}

/// The only status a bet answer has: a refusal is an error, not a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BetStatus {
    #[default]
    Accepted,
}

/// The bet is recorded and its stake debited. A retry with the same `bet_id` gets the same
/// answer (`docs/contract/events.md`, idempotency).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BetAccepted {
    #[schemars(with = "crate::schema::BetIdSchema")]
    pub bet_id: BetId,
    pub status: BetStatus,
    /// The player's balance after the stake was debited.
    #[schemars(with = "crate::schema::MoneySchema")]
    pub balance: Money,
}

/// The bet was refused and not recorded; a retry is judged afresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BetRejected {
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl PlaceBetReply {
    pub fn accepted(bet_id: BetId, balance: Money) -> PlaceBetReply {
        PlaceBetReply::Accepted(BetAccepted {
            bet_id,
            status: BetStatus::Accepted,
            balance,
        })
    }

    pub fn rejected(code: ErrorCode, message: impl Into<String>) -> PlaceBetReply {
        PlaceBetReply::Rejected(BetRejected {
            code,
            message: message.into(),
        })
    }
}

impl<'de> Deserialize<'de> for PlaceBetReply {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = buffer_object(deserializer)?;
        if object.get("code").is_some() {
            from_buffer(&object).map(PlaceBetReply::Rejected)
        } else {
            from_buffer(&object).map(PlaceBetReply::Accepted)
        }
    }
}

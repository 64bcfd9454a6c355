//! The WebSocket protocol v1 (`docs/contract/websocket.md`): every message the gateway sends
//! ([`ServerMessage`]) and receives ([`ClientMessage`]), and the channels a client subscribes to
//! ([`Channel`]).
//!
//! Messages are objects tagged by `type`; unknown extra fields are ignored. Owns shapes and
//! their validation only: sessions, auth and fan-out belong to the gateway.

use std::fmt;
use std::str::FromStr;

use domain::{
    BetId, IdError, Money, Outcome, Phase, PlayerId, RoundId, SeedHash, Selection, TableId,
    Timestamp,
};
use schemars::JsonSchema;
use serde::de;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::bus_rpc::{BetAccepted, BetStatus, PlaceBetRequest};
use crate::codec::{DecodeError, EncodeError, Encoding, salvage_request_id};
use crate::error_code::ErrorCode;
use crate::event::{
    BetPlaced, BetRefunded, BetSettled, BettingClosed, Event, EventBody, FundsDeposited,
    OutcomeDeclared, RoundOpened, RoundSettled, RoundVoided,
};
use crate::serde_util::{buffer_object, from_buffer, tag};
use crate::status::Betting;

/// A channel: `table.<table>` (public: the table's round events and results) or `player.<id>`
/// (private to that player: wallet events).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Table(TableId),
    Player(PlayerId),
}

/// A channel name that is neither `table.<id>` nor `player.<id>`. Answered with
/// `UNKNOWN_CHANNEL`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("a channel is table.<table> or player.<player>")]
    UnknownPrefix,
    #[error("invalid id in channel name: {0}")]
    InvalidId(IdError),
}

impl ChannelError {
    pub const fn code(&self) -> ErrorCode {
        ErrorCode::UnknownChannel
    }
}

impl Channel {
    /// The channel an event is delivered on: wallet events go to their player's channel, the
    /// rest (round transitions and `round_settled`) to their table's; `None` for
    /// `betting_switched`, which is never published (ADR 0022).
    pub fn of_event(event: &Event) -> Option<Channel> {
        Some(match &event.body {
            EventBody::RoundOpened(RoundOpened { table, .. })
            | EventBody::BettingClosed(BettingClosed { table, .. })
            | EventBody::OutcomeDeclared(OutcomeDeclared { table, .. })
            | EventBody::RoundVoided(RoundVoided { table, .. })
            | EventBody::RoundSettled(RoundSettled { table, .. }) => Channel::Table(table.clone()),
            EventBody::BetPlaced(BetPlaced { player, .. })
            | EventBody::BetSettled(BetSettled { player, .. })
            | EventBody::BetRefunded(BetRefunded { player, .. })
            | EventBody::FundsDeposited(FundsDeposited { player, .. }) => {
                Channel::Player(player.clone())
            }
            EventBody::BettingSwitched(_) => return None,
        })
    }

    /// The JetStream filter subject of this channel (`docs/contract/bus.md`): `table.<t>.>` on
    /// stream `TABLES`, `player.<p>.>` on stream `PLAYERS` (logical: the bus applies the prefix).
    pub fn subject_filter(&self) -> String {
        format!("{self}.>")
    }

    /// The (unprefixed) name of the stream that carries this channel.
    pub const fn stream(&self) -> &'static str {
        match self {
            Channel::Table(_) => crate::subject::TABLES_STREAM,
            Channel::Player(_) => crate::subject::PLAYERS_STREAM,
        }
    }
}

impl FromStr for Channel {
    type Err = ChannelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(id) = s.strip_prefix("table.") {
            TableId::parse(id)
                .map(Channel::Table)
                .map_err(ChannelError::InvalidId)
        } else if let Some(id) = s.strip_prefix("player.") {
            PlayerId::parse(id)
                .map(Channel::Player)
                .map_err(ChannelError::InvalidId)
        } else {
            Err(ChannelError::UnknownPrefix)
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Channel::Table(id) => write!(f, "table.{id}"),
            Channel::Player(id) => write!(f, "player.{id}"),
        }
    }
}

impl Serialize for Channel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Channel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Server → client

/// The longest `message` [`ServerMessage::bad_message`] writes, in characters.
pub const MAX_ERROR_MESSAGE_CHARS: usize = 200;

/// Everything the server sends, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Welcome(Welcome),
    Subscribed(Subscribed),
    Event(EventMessage),
    BetResult(BetResult),
    Status(StatusMessage),
    Error(ErrorMessage),
    Pong,
}

/// Always the first frame of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Welcome {
    /// Identifies this connection in logs.
    pub session: String,
    /// The player the token names; `null` for a spectator.
    #[schemars(with = "Option<crate::schema::PlayerIdSchema>")]
    pub player: Option<PlayerId>,
    pub betting: Betting,
}

/// The answer to `subscribe`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Subscribed {
    #[schemars(with = "crate::schema::ChannelSchema")]
    pub channel: Channel,
    /// The last stream sequence on the channel when the subscription started.
    pub seq: u64,
    /// Identifies the stream's life; it changes only if the stream is recreated.
    pub epoch: String,
    /// With `since`: whether every event after it was replayed. `false` means the client must
    /// reload its state.
    pub recovered: bool,
    /// Where things stand on the channel.
    pub state: ChannelState,
}

/// The state a late joiner needs: a table's or a player's. Read as a table's when it has
/// `recent`, else as a player's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ChannelState {
    Table(TableState),
    Player(PlayerState),
}

/// Where a table stands. The round fields are `null` before the table's first round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TableState {
    #[schemars(with = "Option<crate::schema::RoundIdSchema>")]
    pub round: Option<RoundId>,
    #[schemars(with = "Option<crate::schema::PhaseSchema>")]
    pub phase: Option<Phase>,
    #[schemars(with = "Option<crate::schema::TimestampSchema>")]
    pub closes_at: Option<Timestamp>,
    #[schemars(with = "Option<crate::schema::SeedHashSchema>")]
    pub seed_hash: Option<SeedHash>,
    /// The last outcomes, most recent first.
    #[schemars(with = "Vec<crate::schema::OutcomeSchema>")]
    pub recent: Vec<Outcome>,
}

/// Where a player stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlayerState {
    #[schemars(with = "crate::schema::MoneySchema")]
    pub balance: Money,
}

/// An event on a channel, with its stream sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EventMessage {
    #[schemars(with = "crate::schema::ChannelSchema")]
    pub channel: Channel,
    /// The JetStream stream sequence: increasing per channel, not contiguous.
    pub seq: u64,
    pub event: Event,
}

/// A bet was accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BetResult {
    pub request_id: String,
    #[schemars(with = "crate::schema::BetIdSchema")]
    pub bet_id: BetId,
    pub status: BetStatus,
    /// The balance after the stake was debited.
    #[schemars(with = "crate::schema::MoneySchema")]
    pub balance: Money,
}

/// Betting was switched on or off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StatusMessage {
    pub betting: Betting,
    /// Why betting is off: `store_unavailable`, `store_slow`, `gs_unavailable`,
    /// `bus_unavailable` or `operator`; empty while betting is on.
    pub reason: String,
}

/// A message was not acted upon. The connection stays usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorMessage {
    /// The `request_id` of the message answered, when it had one; always present, maybe `null`.
    pub request_id: Option<String>,
    pub code: ErrorCode,
    pub message: String,
}

impl ServerMessage {
    /// The wire `type`, e.g. `"bet_result"`.
    pub const fn message_type(&self) -> &'static str {
        match self {
            ServerMessage::Welcome(_) => "welcome",
            ServerMessage::Subscribed(_) => "subscribed",
            ServerMessage::Event(_) => "event",
            ServerMessage::BetResult(_) => "bet_result",
            ServerMessage::Status(_) => "status",
            ServerMessage::Error(_) => "error",
            ServerMessage::Pong => "pong",
        }
    }

    pub fn error(
        request_id: Option<String>,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> ServerMessage {
        ServerMessage::Error(ErrorMessage {
            request_id,
            code,
            message: message.into(),
        })
    }

    /// The `BAD_MESSAGE` answer to a frame that did not decode, naming the request when its
    /// `request_id` can be salvaged. The message is cut to [`MAX_ERROR_MESSAGE_CHARS`]: a decode
    /// error may quote the offending value, which the client sent and may be long.
    pub fn bad_message(bytes: &[u8], encoding: Encoding, error: &DecodeError) -> ServerMessage {
        let mut message = error.to_string();
        if let Some((cut, _)) = message.char_indices().nth(MAX_ERROR_MESSAGE_CHARS) {
            message.truncate(cut);
            message.push('…');
        }
        ServerMessage::error(salvage_request_id(bytes, encoding), error.code(), message)
    }

    /// The answer to an accepted bet, under the request's own `request_id`.
    pub fn bet_result(request_id: String, accepted: BetAccepted) -> ServerMessage {
        ServerMessage::BetResult(BetResult {
            request_id,
            bet_id: accepted.bet_id,
            status: accepted.status,
            balance: accepted.balance,
        })
    }

    pub fn encode(&self, encoding: Encoding) -> Result<bytes::Bytes, EncodeError> {
        encoding.encode(self)
    }

    pub fn decode(bytes: &[u8], encoding: Encoding) -> Result<ServerMessage, DecodeError> {
        encoding.decode(bytes)
    }
}

/// Encodes the `event` message for `event` on `channel` at `seq` without cloning the event: the
/// gateway encodes each event once per channel and encoding, then fans the bytes out.
pub fn encode_event_message(
    encoding: Encoding,
    channel: &Channel,
    seq: u64,
    event: &Event,
) -> Result<bytes::Bytes, EncodeError> {
    #[derive(Serialize)]
    struct EventMessageRef<'a> {
        #[serde(rename = "type")]
        message_type: &'static str,
        channel: &'a Channel,
        seq: u64,
        event: &'a Event,
    }
    encoding.encode(&EventMessageRef {
        message_type: "event",
        channel,
        seq,
        event,
    })
}

/// The MessagePack `event` message for an event whose bus payload is `payload`, written around
/// the payload's own bytes instead of encoding the event again: the same bytes as
/// [`encode_event_message`] gives for the decoded event, since the bus payload is that event's
/// MessagePack (`docs/contract/bus.md`). `payload` must be one MessagePack map: the caller has
/// decoded it already (as `protocol::decode_event`), and nothing here looks inside it.
pub fn msgpack_event_message_around(channel: &Channel, seq: u64, payload: &[u8]) -> bytes::Bytes {
    let name = channel.to_string();
    let mut out = Vec::with_capacity(32 + name.len() + payload.len());
    // Writing to a Vec does not fail either; rmp reports only the writer's errors.
    let _ = rmp::encode::write_map_len(&mut out, 4);
    let _ = rmp::encode::write_str(&mut out, "type");
    let _ = rmp::encode::write_str(&mut out, "event");
    let _ = rmp::encode::write_str(&mut out, "channel");
    let _ = rmp::encode::write_str(&mut out, &name);
    let _ = rmp::encode::write_str(&mut out, "seq");
    let _ = rmp::encode::write_uint(&mut out, seq);
    let _ = rmp::encode::write_str(&mut out, "event");
    out.extend_from_slice(payload);
    bytes::Bytes::from(out)
}

/// The `event` message in `encoding` for `event`, read from the bus as `payload`: MessagePack
/// written around the payload ([`msgpack_event_message_around`]), JSON encoded from the event.
/// What the gateway sends, live and on a resume alike.
pub fn event_message_from_bus(
    encoding: Encoding,
    channel: &Channel,
    seq: u64,
    event: &Event,
    payload: &[u8],
) -> Result<bytes::Bytes, EncodeError> {
    match encoding {
        Encoding::MsgPack => Ok(msgpack_event_message_around(channel, seq, payload)),
        Encoding::Json => encode_event_message(encoding, channel, seq, event),
    }
}

// ---------------------------------------------------------------------------------------------
// Client → server

/// Everything a client sends, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    Bet(PlaceBet),
    Ping,
}

/// Subscribe to a channel, optionally resuming after `since` (with the `epoch` last seen).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Subscribe {
    /// Kept as text so that a bad name is answered `UNKNOWN_CHANNEL`, not `BAD_MESSAGE`: see
    /// [`Subscribe::parse_channel`].
    #[schemars(with = "crate::schema::ChannelSchema")]
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

impl Subscribe {
    pub fn parse_channel(&self) -> Result<Channel, ChannelError> {
        self.channel.parse()
    }
}

/// Stop receiving a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Unsubscribe {
    /// Kept as text, like [`Subscribe::channel`].
    #[schemars(with = "crate::schema::ChannelSchema")]
    pub channel: String,
}

impl Unsubscribe {
    pub fn parse_channel(&self) -> Result<Channel, ChannelError> {
        self.channel.parse()
    }
}

/// Place a bet. Idempotent by `bet_id`: retry with the same one after a `TIMEOUT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlaceBet {
    /// Chosen by the client; echoed in the answer.
    pub request_id: String,
    #[schemars(with = "crate::schema::BetIdSchema")]
    pub bet_id: BetId,
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

impl PlaceBet {
    /// The request a gateway forwards to GS for the connection's player.
    pub fn into_request(self, player: PlayerId) -> PlaceBetRequest {
        PlaceBetRequest {
            request_id: self.request_id,
            bet_id: self.bet_id,
            player,
            table: self.table,
            round: self.round,
            selection: self.selection,
            amount: self.amount,
        }
    }
}

impl ClientMessage {
    /// The wire `type`, e.g. `"subscribe"`.
    pub const fn message_type(&self) -> &'static str {
        match self {
            ClientMessage::Subscribe(_) => "subscribe",
            ClientMessage::Unsubscribe(_) => "unsubscribe",
            ClientMessage::Bet(_) => "bet",
            ClientMessage::Ping => "ping",
        }
    }

    /// The `request_id` an answer must carry (bets only).
    pub fn request_id(&self) -> Option<&str> {
        match self {
            ClientMessage::Bet(bet) => Some(&bet.request_id),
            ClientMessage::Subscribe(_) | ClientMessage::Unsubscribe(_) | ClientMessage::Ping => {
                None
            }
        }
    }

    pub fn encode(&self, encoding: Encoding) -> Result<bytes::Bytes, EncodeError> {
        encoding.encode(self)
    }

    /// Decodes a client frame. Every failure is a `BAD_MESSAGE`
    /// ([`DecodeError::code`]); answer it with [`ServerMessage::bad_message`].
    pub fn decode(bytes: &[u8], encoding: Encoding) -> Result<ClientMessage, DecodeError> {
        encoding.decode(bytes)
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding the tagged messages (see `serde_util` for why not with serde's derive).

const SERVER_TYPES: &[&str] = &[
    "welcome",
    "subscribed",
    "event",
    "bet_result",
    "status",
    "error",
    "pong",
];

const CLIENT_TYPES: &[&str] = &["subscribe", "unsubscribe", "bet", "ping"];

impl<'de> Deserialize<'de> for ServerMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = buffer_object(deserializer)?;
        Ok(match tag::<D::Error>(&object, "type", SERVER_TYPES)? {
            "welcome" => ServerMessage::Welcome(from_buffer(&object)?),
            "subscribed" => ServerMessage::Subscribed(from_buffer(&object)?),
            "event" => ServerMessage::Event(from_buffer(&object)?),
            "bet_result" => ServerMessage::BetResult(from_buffer(&object)?),
            "status" => ServerMessage::Status(from_buffer(&object)?),
            "error" => ServerMessage::Error(from_buffer(&object)?),
            "pong" => ServerMessage::Pong,
            other => return Err(de::Error::unknown_variant(other, SERVER_TYPES)),
        })
    }
}

impl<'de> Deserialize<'de> for ClientMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = buffer_object(deserializer)?;
        Ok(match tag::<D::Error>(&object, "type", CLIENT_TYPES)? {
            "subscribe" => ClientMessage::Subscribe(from_buffer(&object)?),
            "unsubscribe" => ClientMessage::Unsubscribe(from_buffer(&object)?),
            "bet" => ClientMessage::Bet(from_buffer(&object)?),
            "ping" => ClientMessage::Ping,
            other => return Err(de::Error::unknown_variant(other, CLIENT_TYPES)),
        })
    }
}

impl<'de> Deserialize<'de> for ChannelState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = buffer_object(deserializer)?;
        if object.get("recent").is_some() {
            from_buffer(&object).map(ChannelState::Table)
        } else {
            from_buffer(&object).map(ChannelState::Player)
        }
    }
}

//! Wire types at the edge: the bus event envelope (`docs/contract/events.md`,
//! `docs/contract/bus.md`) and the WebSocket messages (`docs/contract/websocket.md`), with their
//! JSON and MessagePack codecs.
//!
//! May depend on `domain` only (plus encoding crates); never on an adapter or a service.
//!
//! - [`event`]: the events GMS and GS publish (`{kind, id, v, at, table, round, ...}`), and the
//!   operator's `betting_switched`, stored only.
//! - [`ws`]: WebSocket messages, both directions, and channels.
//! - [`bus_rpc`]: the `bets.place.<t>` request and reply.
//! - [`status`]: the betting status (KV bucket `status`, `welcome`, `status` messages).
//! - [`subject`]: NATS subjects, streams and buckets, in logical names (the bus applies the prefix).
//! - [`codec`]: JSON and MessagePack, the size limit, typed encode and decode errors.
//! - [`error_code`]: the error codes clients see.
//! - [`schema`]: JSON Schemas generated from these types (checked in under `schemas/`).

pub mod bus_rpc;
pub mod codec;
pub mod error_code;
pub mod event;
pub mod schema;
mod serde_util;
pub mod status;
pub mod subject;
pub mod ws;

pub use bus_rpc::{BetAccepted, BetRejected, BetStatus, PlaceBetReply, PlaceBetRequest};
pub use codec::{
    DecodeError, EncodeError, Encoding, MAX_MESSAGE_BYTES, decode_event, encode_event,
    salvage_request_id,
};
pub use error_code::ErrorCode;
pub use event::{
    BetPlaced, BetRefunded, BetSettled, BettingClosed, BettingSwitched, DepositId, EVENT_VERSION,
    Event, EventBody, EventKind, FundsDeposited, OutcomeDeclared, Producer, RoundOpened,
    RoundSettled, RoundVoided,
};
pub use status::{Betting, BettingStatus, GsHeartbeat};
pub use subject::{gms_msg_id, subject_for};
pub use ws::{
    BetResult, Channel, ChannelError, ChannelState, ClientMessage, ErrorMessage, EventMessage,
    PlaceBet, PlayerState, ServerMessage, StatusMessage, Subscribe, Subscribed, TableState,
    Unsubscribe, Welcome, encode_event_message, event_message_from_bus,
    msgpack_event_message_around,
};

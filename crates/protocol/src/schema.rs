//! JSON Schemas of every wire message and event (`docs/contract/`), generated from the Rust
//! types with schemars and checked in under `schemas/` (see [`generate`]). A test fails when the
//! checked-in files differ from what this code generates.
//!
//! Domain types carry no schemars dependency, so their schemas are described here by small
//! marker types (`TableIdSchema`, ...) that the wire types name with `#[schemars(with = ...)]`.
//! The schemas describe what a producer writes (schemars' serialize contract); readers also
//! ignore unknown fields, which the schemas allow.

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Map, Value};

use crate::bus_rpc::{PlaceBetReply, PlaceBetRequest};
use crate::event::{
    BetPlaced, BetRefunded, BetSettled, BettingClosed, BettingSwitched, Event, FundsDeposited,
    OutcomeDeclared, RoundOpened, RoundSettled, RoundVoided,
};
use crate::status::BettingStatus;
use crate::ws::{
    BetResult, ClientMessage, ErrorMessage, EventMessage, PlaceBet, ServerMessage, StatusMessage,
    Subscribe, Subscribed, Unsubscribe, Welcome,
};

/// One generated schema file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFile {
    /// The schema's name, e.g. `event.round_opened`; examples are named after it.
    pub name: &'static str,
    /// The file name under `schemas/`, e.g. `event.round_opened.schema.json`.
    pub file_name: String,
    /// Pretty-printed JSON with sorted keys and a final newline.
    pub contents: String,
}

/// Every schema file, in a stable order. Run `cargo run -p protocol --example gen-schemas` to
/// write them to `schemas/`.
pub fn generate() -> Vec<SchemaFile> {
    let mut files = Vec::new();
    let mut add = |name: &'static str, schema: Schema| {
        files.push(SchemaFile {
            name,
            file_name: format!("{name}.schema.json"),
            contents: canonical_json(schema.to_value()),
        });
    };

    add("event", root::<Event>());
    add("event.round_opened", root::<RoundOpenedEvent>());
    add("event.betting_closed", root::<BettingClosedEvent>());
    add("event.outcome_declared", root::<OutcomeDeclaredEvent>());
    add("event.round_voided", root::<RoundVoidedEvent>());
    add("event.bet_placed", root::<BetPlacedEvent>());
    add("event.bet_settled", root::<BetSettledEvent>());
    add("event.bet_refunded", root::<BetRefundedEvent>());
    add("event.round_settled", root::<RoundSettledEvent>());
    add("event.funds_deposited", root::<FundsDepositedEvent>());
    add("event.betting_switched", root::<BettingSwitchedEvent>());

    add("ws.server", root::<ServerMessage>());
    add("ws.server.welcome", root::<WelcomeMessage>());
    add("ws.server.subscribed", root::<SubscribedMessage>());
    add("ws.server.event", root::<EventMessageMessage>());
    add("ws.server.bet_result", root::<BetResultMessage>());
    add("ws.server.status", root::<StatusMessageMessage>());
    add("ws.server.error", root::<ErrorMessageMessage>());
    add("ws.server.pong", root::<PongMessage>());

    add("ws.client", root::<ClientMessage>());
    add("ws.client.subscribe", root::<SubscribeMessage>());
    add("ws.client.unsubscribe", root::<UnsubscribeMessage>());
    add("ws.client.bet", root::<BetMessage>());
    add("ws.client.ping", root::<PingMessage>());

    add("bus.place_bet_request", root::<PlaceBetRequest>());
    add("bus.place_bet_reply", root::<PlaceBetReply>());
    add("bus.betting_status", root::<BettingStatus>());
    add("bus.gs_heartbeat", root::<crate::status::GsHeartbeat>());
    files
}

/// Draft-07, the JSON Schema version AsyncAPI 3 documents accept
/// (`application/schema+json;version=draft-07`).
fn root<T: JsonSchema>() -> Schema {
    SchemaSettings::draft07()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<T>()
}

/// Sorted keys at every level, so the files do not depend on whether some crate in the build
/// turned on serde_json's `preserve_order`. (Also used for the audit's schemas.)
pub fn canonical_json(value: Value) -> String {
    fn sort(value: Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(String, Value)> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(sort).collect()),
            other => other,
        }
    }
    // Serializing a `Value` cannot fail: its keys are strings.
    let mut text = serde_json::to_string_pretty(&sort(value)).unwrap_or_default();
    text.push('\n');
    text
}

/// Adds the constant tag (`kind` or `type`) to an object schema, first among the required.
fn add_tag(schema: &mut Schema, field: &str, tag: &str) {
    let object = schema.ensure_object();
    let properties = object
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(properties) = properties {
        properties.insert(
            field.to_owned(),
            serde_json::json!({ "type": "string", "const": tag }),
        );
    }
    let required = object
        .entry("required")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(required) = required {
        required.retain(|r| r.as_str() != Some(field));
        required.insert(0, Value::String(field.to_owned()));
    }
    object
        .entry("type")
        .or_insert_with(|| Value::String("object".to_owned()));
}

// ---------------------------------------------------------------------------------------------
// Schemas of domain types.

macro_rules! domain_schema {
    ($(#[$meta:meta])* $name:ident, $title:literal, $schema:tt) => {
        $(#[$meta])*
        #[derive(Debug)]
        pub(crate) struct $name;

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                $title.into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

const ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";
const UUID_PATTERN: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
const MAX_MONEY: i64 = domain::Money::MAX_MINOR;

domain_schema!(TableIdSchema, "TableId", {
    "description": "A table id, e.g. `roulette-1`.",
    "type": "string",
    "pattern": ID_PATTERN
});

domain_schema!(PlayerIdSchema, "PlayerId", {
    "description": "A player id (the JWT `sub`), e.g. `alice`.",
    "type": "string",
    "pattern": ID_PATTERN
});

domain_schema!(RoundIdSchema, "RoundId", {
    "description": "A round number within its table: 1, 2, 3, ...",
    "type": "integer",
    "minimum": 1
});

domain_schema!(BetIdSchema, "BetId", {
    "description": "A bet id: a UUID chosen by the client, the bet's idempotency key.",
    "type": "string",
    "format": "uuid",
    "pattern": UUID_PATTERN
});

domain_schema!(UuidSchema, "Uuid", {
    "type": "string",
    "format": "uuid",
    "pattern": UUID_PATTERN
});

domain_schema!(MoneySchema, "Money", {
    "description": "An amount in minor units, 0 to 2^53 - 1.",
    "type": "integer",
    "minimum": 0,
    "maximum": MAX_MONEY
});

domain_schema!(StakeSchema, "Stake", {
    "description": "An amount staked, refunded or deposited, in minor units: 1 to 2^53 - 1.",
    "type": "integer",
    "minimum": 1,
    "maximum": MAX_MONEY
});

domain_schema!(TimestampSchema, "Timestamp", {
    "description": "An instant: RFC 3339 in UTC with exactly six fractional digits.",
    "type": "string",
    "format": "date-time",
    "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$"
});

domain_schema!(OutcomeSchema, "Outcome", {
    "description": "A pocket of the European wheel.",
    "type": "integer",
    "minimum": 0,
    "maximum": 36
});

domain_schema!(SeedHashSchema, "SeedHash", {
    "description": "Lowercase hex of SHA-256 of the round's server seed.",
    "type": "string",
    "pattern": "^[0-9a-f]{64}$"
});

domain_schema!(ServerSeedSchema, "ServerSeed", {
    "description": "Lowercase hex of the round's 32 seed bytes.",
    "type": "string",
    "pattern": "^[0-9a-f]{64}$"
});

domain_schema!(PhaseSchema, "Phase", {
    "description": "The phase of a round.",
    "type": "string",
    "enum": ["open", "closed", "resulted", "settled", "voided"]
});

domain_schema!(ChannelSchema, "Channel", {
    "description": "A channel: `table.<table>` or `player.<player>`.",
    "type": "string",
    "pattern": "^(table|player)\\.[A-Za-z0-9_-]{1,64}$"
});

domain_schema!(DepositIdSchema, "DepositId", {
    "description": "The idempotency key of a deposit: 1 to 128 printable ASCII characters.",
    "type": "string",
    "pattern": "^[!-~]{1,128}$"
});

domain_schema!(SelectionSchema, "Selection", {
    "description": "What a bet is on. Inside bets name adjacent numbers of the layout (splits 0-1, 0-2, 0-3 and streets 0-1-2, 0-2-3 are valid; 0-1-2-3 is a corner).",
    "oneOf": [
        inside("straight", 1),
        inside("split", 2),
        inside("street", 3),
        inside("corner", 4),
        inside("six_line", 6),
        {
            "type": "object",
            "properties": {
                "kind": { "type": "string", "enum": ["red", "black", "odd", "even", "low", "high"] }
            },
            "required": ["kind"]
        },
        {
            "type": "object",
            "properties": {
                "kind": { "type": "string", "enum": ["dozen", "column"] },
                "index": { "type": "integer", "minimum": 1, "maximum": 3 }
            },
            "required": ["kind", "index"]
        }
    ]
});

fn inside(kind: &str, count: usize) -> Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            "kind": { "type": "string", "const": kind },
            "numbers": {
                "type": "array",
                "items": { "type": "integer", "minimum": 0, "maximum": 36 },
                "minItems": count,
                "maxItems": count
            }
        },
        "required": ["kind", "numbers"]
    })
}

// ---------------------------------------------------------------------------------------------
// Tagged messages: a struct's schema plus its constant `kind` or `type`.

// The envelope every event shares, around a kind's fields. (No doc comment: the description of a
// kind's schema is that of its body.)
#[derive(JsonSchema)]
#[allow(dead_code)] // only described, never built
struct EventEnvelope<B> {
    /// Unique per event; the store's `event_id`.
    #[schemars(with = "UuidSchema")]
    id: (),
    /// Schema version of the event's shape (1).
    v: u16,
    /// When the producer decided it.
    #[schemars(with = "TimestampSchema")]
    at: (),
    #[serde(flatten)]
    body: B,
}

/// The answer to `ping`.
#[derive(JsonSchema)]
struct PongFields {}

/// A keep-alive; answered with `pong`.
#[derive(JsonSchema)]
struct PingFields {}

macro_rules! tagged_schema {
    ($name:ident, $inner:ty, $field:literal, $tag:literal) => {
        #[derive(Debug)]
        pub(crate) struct $name;

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(generator: &mut SchemaGenerator) -> Schema {
                let mut schema = <$inner as JsonSchema>::json_schema(generator);
                add_tag(&mut schema, $field, $tag);
                schema
            }
        }
    };
}

macro_rules! event_schema {
    ($name:ident, $body:ty, $kind:literal) => {
        #[derive(Debug)]
        pub(crate) struct $name;

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(generator: &mut SchemaGenerator) -> Schema {
                let mut schema = <EventEnvelope<$body> as JsonSchema>::json_schema(generator);
                add_tag(&mut schema, "kind", $kind);
                let body = <$body as JsonSchema>::json_schema(generator);
                if let Some(description) = body.get("description") {
                    schema.insert("description".to_owned(), description.clone());
                }
                schema
            }
        }
    };
}

event_schema!(RoundOpenedEvent, RoundOpened, "round_opened");
event_schema!(BettingClosedEvent, BettingClosed, "betting_closed");
event_schema!(OutcomeDeclaredEvent, OutcomeDeclared, "outcome_declared");
event_schema!(RoundVoidedEvent, RoundVoided, "round_voided");
event_schema!(BetPlacedEvent, BetPlaced, "bet_placed");
event_schema!(BetSettledEvent, BetSettled, "bet_settled");
event_schema!(BetRefundedEvent, BetRefunded, "bet_refunded");
event_schema!(RoundSettledEvent, RoundSettled, "round_settled");
event_schema!(FundsDepositedEvent, FundsDeposited, "funds_deposited");
event_schema!(BettingSwitchedEvent, BettingSwitched, "betting_switched");

tagged_schema!(WelcomeMessage, Welcome, "type", "welcome");
tagged_schema!(SubscribedMessage, Subscribed, "type", "subscribed");
tagged_schema!(EventMessageMessage, EventMessage, "type", "event");
tagged_schema!(BetResultMessage, BetResult, "type", "bet_result");
tagged_schema!(StatusMessageMessage, StatusMessage, "type", "status");
tagged_schema!(ErrorMessageMessage, ErrorMessage, "type", "error");
tagged_schema!(PongMessage, PongFields, "type", "pong");

tagged_schema!(SubscribeMessage, Subscribe, "type", "subscribe");
tagged_schema!(UnsubscribeMessage, Unsubscribe, "type", "unsubscribe");
tagged_schema!(BetMessage, PlaceBet, "type", "bet");
tagged_schema!(PingMessage, PingFields, "type", "ping");

fn one_of(description: &str, variants: Vec<Schema>) -> Schema {
    let variants: Vec<Value> = variants.into_iter().map(Schema::to_value).collect();
    json_schema!({
        "description": description,
        "oneOf": variants
    })
}

impl JsonSchema for Event {
    fn schema_name() -> Cow<'static, str> {
        "Event".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let variants = vec![
            generator.subschema_for::<RoundOpenedEvent>(),
            generator.subschema_for::<BettingClosedEvent>(),
            generator.subschema_for::<OutcomeDeclaredEvent>(),
            generator.subschema_for::<RoundVoidedEvent>(),
            generator.subschema_for::<BetPlacedEvent>(),
            generator.subschema_for::<BetSettledEvent>(),
            generator.subschema_for::<BetRefundedEvent>(),
            generator.subschema_for::<RoundSettledEvent>(),
            generator.subschema_for::<FundsDepositedEvent>(),
            generator.subschema_for::<BettingSwitchedEvent>(),
        ];
        one_of(
            "An event (docs/contract/events.md): a flat object tagged by `kind`.",
            variants,
        )
    }
}

impl JsonSchema for ServerMessage {
    fn schema_name() -> Cow<'static, str> {
        "ServerMessage".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let variants = vec![
            generator.subschema_for::<WelcomeMessage>(),
            generator.subschema_for::<SubscribedMessage>(),
            generator.subschema_for::<EventMessageMessage>(),
            generator.subschema_for::<BetResultMessage>(),
            generator.subschema_for::<StatusMessageMessage>(),
            generator.subschema_for::<ErrorMessageMessage>(),
            generator.subschema_for::<PongMessage>(),
        ];
        one_of(
            "A message from the server (docs/contract/websocket.md), tagged by `type`.",
            variants,
        )
    }
}

impl JsonSchema for ClientMessage {
    fn schema_name() -> Cow<'static, str> {
        "ClientMessage".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let variants = vec![
            generator.subschema_for::<SubscribeMessage>(),
            generator.subschema_for::<UnsubscribeMessage>(),
            generator.subschema_for::<BetMessage>(),
            generator.subschema_for::<PingMessage>(),
        ];
        one_of(
            "A message from a client (docs/contract/websocket.md), tagged by `type`. Unknown fields are ignored.",
            variants,
        )
    }
}

//! Shared by the integration tests: every message family behind one enum, sample values,
//! proptest strategies for every message, a small JSON Schema (draft-07) checker, and paths.

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use domain::{
    BetId, Money, Outcome, Phase, PlayerId, RawSelection, RoundId, SeedHash, Selection, ServerSeed,
    TableId, Timestamp,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use protocol::*;
use serde_json::Value;
use uuid::Uuid;

/// The proptest configuration of every property in this crate: a fixed seed, so a run is
/// reproducible, and no failure files written into the source tree.
pub fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x00C0_FFEE_u64),
        failure_persistence: None,
        ..Config::default()
    }
}

pub fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

pub fn examples_dir() -> PathBuf {
    schemas_dir().join("examples")
}

// ---------------------------------------------------------------------------------------------
// Every family of wire message.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Event(Event),
    Server(ServerMessage),
    Client(ClientMessage),
    Request(PlaceBetRequest),
    Reply(PlaceBetReply),
    Status(BettingStatus),
    Heartbeat(GsHeartbeat),
}

/// The decoders of every family, by the name prefix of their schemas and examples.
pub const FAMILIES: [&str; 7] = [
    "event",
    "ws.server",
    "ws.client",
    "bus.place_bet_request",
    "bus.place_bet_reply",
    "bus.betting_status",
    "bus.gs_heartbeat",
];

/// The family an example or schema name belongs to.
pub fn family_of(name: &str) -> &'static str {
    FAMILIES
        .into_iter()
        .find(|f| name == *f || name.starts_with(&format!("{f}.")))
        .unwrap_or_else(|| panic!("{name} belongs to no message family"))
}

pub fn decode(family: &str, bytes: &[u8], encoding: Encoding) -> Result<Message, DecodeError> {
    Ok(match family {
        "event" => Message::Event(encoding.decode(bytes)?),
        "ws.server" => Message::Server(ServerMessage::decode(bytes, encoding)?),
        "ws.client" => Message::Client(ClientMessage::decode(bytes, encoding)?),
        "bus.place_bet_request" => Message::Request(encoding.decode(bytes)?),
        "bus.place_bet_reply" => Message::Reply(encoding.decode(bytes)?),
        "bus.betting_status" => Message::Status(encoding.decode(bytes)?),
        "bus.gs_heartbeat" => Message::Heartbeat(encoding.decode(bytes)?),
        other => panic!("unknown family {other}"),
    })
}

impl Message {
    pub fn encode(&self, encoding: Encoding) -> Vec<u8> {
        let bytes = match self {
            Message::Event(m) => encoding.encode(m),
            Message::Server(m) => encoding.encode(m),
            Message::Client(m) => encoding.encode(m),
            Message::Request(m) => encoding.encode(m),
            Message::Reply(m) => encoding.encode(m),
            Message::Status(m) => encoding.encode(m),
            Message::Heartbeat(m) => encoding.encode(m),
        };
        bytes.expect("every message encodes").to_vec()
    }

    pub fn to_pretty_json(&self) -> String {
        let text = match self {
            Message::Event(m) => serde_json::to_string_pretty(m),
            Message::Server(m) => serde_json::to_string_pretty(m),
            Message::Client(m) => serde_json::to_string_pretty(m),
            Message::Request(m) => serde_json::to_string_pretty(m),
            Message::Reply(m) => serde_json::to_string_pretty(m),
            Message::Status(m) => serde_json::to_string_pretty(m),
            Message::Heartbeat(m) => serde_json::to_string_pretty(m),
        };
        text.expect("every message encodes") + "\n"
    }

    pub fn family(&self) -> &'static str {
        match self {
            Message::Event(_) => "event",
            Message::Server(_) => "ws.server",
            Message::Client(_) => "ws.client",
            Message::Request(_) => "bus.place_bet_request",
            Message::Reply(_) => "bus.place_bet_reply",
            Message::Status(_) => "bus.betting_status",
            Message::Heartbeat(_) => "bus.gs_heartbeat",
        }
    }

    /// The name of the most specific schema describing this message.
    pub fn schema_name(&self) -> String {
        match self {
            Message::Event(e) => format!("event.{}", e.kind()),
            Message::Server(m) => format!("ws.server.{}", m.message_type()),
            Message::Client(m) => format!("ws.client.{}", m.message_type()),
            other => other.family().to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Schemas on disk and a small draft-07 checker.

/// The checked-in schema file of `name`, parsed (each file is read once per test binary).
pub fn load_schema(name: &str) -> Value {
    static CACHE: Mutex<BTreeMap<String, Value>> = Mutex::new(BTreeMap::new());
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache
        .entry(name.to_owned())
        .or_insert_with(|| {
            let path = schemas_dir().join(format!("{name}.schema.json"));
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            serde_json::from_str(&text).expect("schema files are JSON")
        })
        .clone()
}

/// Every schema a message of `name` must satisfy: its own and those of the unions above it
/// (`ws.server.welcome.spectator` → `ws.server.welcome`, `ws.server`).
pub fn schemas_for(name: &str, known: &[String]) -> Vec<String> {
    known
        .iter()
        .filter(|s| name == s.as_str() || name.starts_with(&format!("{s}.")))
        .cloned()
        .collect()
}

pub fn schema_names() -> Vec<String> {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            protocol::schema::generate()
                .into_iter()
                .map(|f| f.name.to_owned())
                .collect()
        })
        .clone()
}

/// Checks `instance` against `schema` (within document `root`). Supports the keywords schemars
/// emits for our types and refuses any other, so a new keyword cannot be silently skipped.
pub fn check(root: &Value, schema: &Value, instance: &Value, at: &str) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        return match schema {
            Value::Bool(true) => Ok(()),
            _ => Err(format!("{at}: schema is not an object")),
        };
    };
    for (keyword, arg) in schema {
        match keyword.as_str() {
            "$schema" | "title" | "description" | "definitions" | "format" => {}
            "$ref" => {
                let name = arg
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/definitions/"))
                    .ok_or_else(|| format!("{at}: unsupported $ref {arg}"))?;
                let target = &root["definitions"][name];
                if target.is_null() {
                    return Err(format!("{at}: dangling $ref {name}"));
                }
                check(root, target, instance, at)?;
            }
            "allOf" => {
                for s in arg.as_array().into_iter().flatten() {
                    check(root, s, instance, at)?;
                }
            }
            "anyOf" => {
                let any = arg
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|s| check(root, s, instance, at).is_ok());
                if !any {
                    return Err(format!("{at}: matches no anyOf branch: {instance}"));
                }
            }
            "oneOf" => {
                let matching = arg
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|s| check(root, s, instance, at).is_ok())
                    .count();
                if matching != 1 {
                    return Err(format!(
                        "{at}: matches {matching} oneOf branches, not 1: {instance}"
                    ));
                }
            }
            "type" => {
                let types: Vec<&str> = match arg {
                    Value::String(t) => vec![t.as_str()],
                    Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                    _ => return Err(format!("{at}: bad type keyword")),
                };
                if !types.iter().any(|t| has_type(instance, t)) {
                    return Err(format!("{at}: {instance} is not of type {types:?}"));
                }
            }
            "const" => {
                if instance != arg {
                    return Err(format!("{at}: {instance} is not {arg}"));
                }
            }
            "enum" => {
                if !arg.as_array().into_iter().flatten().any(|v| v == instance) {
                    return Err(format!("{at}: {instance} is not one of {arg}"));
                }
            }
            "properties" => {
                if let (Some(props), Some(object)) = (arg.as_object(), instance.as_object()) {
                    for (key, sub) in props {
                        if let Some(value) = object.get(key) {
                            check(root, sub, value, &format!("{at}.{key}"))?;
                        }
                    }
                }
            }
            "required" => {
                if let Some(object) = instance.as_object() {
                    for key in arg
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                    {
                        if !object.contains_key(key) {
                            return Err(format!("{at}: missing required {key}"));
                        }
                    }
                }
            }
            "items" => {
                if let Some(items) = instance.as_array() {
                    for (i, item) in items.iter().enumerate() {
                        check(root, arg, item, &format!("{at}[{i}]"))?;
                    }
                }
            }
            "minItems" | "maxItems" => {
                if let Some(items) = instance.as_array() {
                    let bound = arg.as_u64().unwrap_or(0) as usize;
                    let ok = if keyword == "minItems" {
                        items.len() >= bound
                    } else {
                        items.len() <= bound
                    };
                    if !ok {
                        return Err(format!(
                            "{at}: {} items breaks {keyword} {bound}",
                            items.len()
                        ));
                    }
                }
            }
            "minimum" | "maximum" => {
                if let (Some(value), Some(bound)) = (as_i128(instance), as_i128(arg)) {
                    let ok = if keyword == "minimum" {
                        value >= bound
                    } else {
                        value <= bound
                    };
                    if !ok {
                        return Err(format!("{at}: {value} breaks {keyword} {bound}"));
                    }
                }
            }
            "pattern" => {
                if let Some(text) = instance.as_str() {
                    let pattern = arg.as_str().unwrap_or_default();
                    if !matches_pattern(pattern, text) {
                        return Err(format!("{at}: {text:?} does not match {pattern}"));
                    }
                }
            }
            other => {
                return Err(format!(
                    "{at}: the test checker does not know keyword {other}"
                ));
            }
        }
    }
    Ok(())
}

fn has_type(instance: &Value, t: &str) -> bool {
    match t {
        "object" => instance.is_object(),
        "array" => instance.is_array(),
        "string" => instance.is_string(),
        "boolean" => instance.is_boolean(),
        "null" => instance.is_null(),
        "number" => instance.is_number(),
        "integer" => instance.is_i64() || instance.is_u64(),
        _ => false,
    }
}

fn as_i128(v: &Value) -> Option<i128> {
    v.as_i64()
        .map(i128::from)
        .or_else(|| v.as_u64().map(i128::from))
}

/// The patterns our schemas use, matched by hand (no regex engine in the dependency tree).
fn matches_pattern(pattern: &str, text: &str) -> bool {
    let id = |s: &str| {
        (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match pattern {
        "^[A-Za-z0-9_-]{1,64}$" => id(text),
        "^[0-9a-f]{64}$" => text.len() == 64 && lower_hex(text),
        "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$" => {
            let parts: Vec<&str> = text.split('-').collect();
            parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12]) && parts.iter().all(|p| lower_hex(p))
        }
        "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{6}Z$" => {
            let shape = "dddd-dd-ddTdd:dd:dd.ddddddZ";
            text.len() == shape.len()
                && text.bytes().zip(shape.bytes()).all(|(c, s)| match s {
                    b'd' => c.is_ascii_digit(),
                    other => c == other,
                })
        }
        "^(table|player)\\.[A-Za-z0-9_-]{1,64}$" => text
            .strip_prefix("table.")
            .or_else(|| text.strip_prefix("player."))
            .is_some_and(id),
        "^[!-~]{1,128}$" => {
            (1..=128).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic())
        }
        other => panic!("the test checker has no matcher for pattern {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Proptest strategies for every message.

pub fn table_id() -> impl Strategy<Value = TableId> {
    "[A-Za-z0-9_-]{1,64}".prop_map(|s| TableId::parse(&s).expect("pattern matches the id rule"))
}

pub fn player_id() -> impl Strategy<Value = PlayerId> {
    "[A-Za-z0-9_-]{1,64}".prop_map(|s| PlayerId::parse(&s).expect("pattern matches the id rule"))
}

pub fn round_id() -> impl Strategy<Value = RoundId> {
    prop_oneof![1u64..100, 1u64..=u64::MAX].prop_map(|n| RoundId::new(n).expect("non-zero"))
}

pub fn bet_id() -> impl Strategy<Value = BetId> {
    any::<u128>().prop_map(|n| BetId::from_uuid(Uuid::from_u128(n)))
}

pub fn money() -> impl Strategy<Value = Money> {
    prop_oneof![0i64..1000, 0i64..=Money::MAX_MINOR].prop_map(|n| Money::new(n).expect("in range"))
}

pub fn stake() -> impl Strategy<Value = Money> {
    prop_oneof![1i64..1000, 1i64..=Money::MAX_MINOR]
        .prop_map(|n| Money::stake(n).expect("in range"))
}

pub fn timestamp() -> impl Strategy<Value = Timestamp> {
    // Years 0000 to 9999.
    (-62_167_219_200_000_000i64..=253_402_300_799_999_999)
        .prop_map(|us| Timestamp::from_unix_micros(us).expect("in range"))
}

pub fn outcome() -> impl Strategy<Value = Outcome> {
    (0u8..=36).prop_map(|n| Outcome::new(n).expect("a pocket"))
}

pub fn phase() -> impl Strategy<Value = Phase> {
    prop_oneof![
        Just(Phase::Open),
        Just(Phase::Closed),
        Just(Phase::Resulted),
        Just(Phase::Settled),
        Just(Phase::Voided),
    ]
}

pub fn server_seed() -> impl Strategy<Value = ServerSeed> {
    any::<[u8; 32]>().prop_map(ServerSeed::from_bytes)
}

pub fn seed_hash() -> impl Strategy<Value = SeedHash> {
    any::<[u8; 32]>().prop_map(SeedHash::from_bytes)
}

/// Every selection of the table, from candidates that the domain confirms.
pub fn all_selections() -> Vec<Selection> {
    let mut raws: Vec<RawSelection> = Vec::new();
    for n in 0u8..=36 {
        raws.push(RawSelection::Straight { numbers: vec![n] });
    }
    raws.extend([[0u8, 1], [0, 2], [0, 3]].map(|p| RawSelection::Split {
        numbers: p.to_vec(),
    }));
    for n in 1u8..=36 {
        if n % 3 != 0 {
            raws.push(RawSelection::Split {
                numbers: vec![n, n + 1],
            });
        }
        if n <= 33 {
            raws.push(RawSelection::Split {
                numbers: vec![n, n + 3],
            });
        }
    }
    raws.extend([[0u8, 1, 2], [0, 2, 3]].map(|s| RawSelection::Street {
        numbers: s.to_vec(),
    }));
    raws.push(RawSelection::Corner {
        numbers: vec![0, 1, 2, 3],
    });
    for row in 0u8..12 {
        let first = 3 * row + 1;
        raws.push(RawSelection::Street {
            numbers: vec![first, first + 1, first + 2],
        });
        if row < 11 {
            raws.push(RawSelection::SixLine {
                numbers: (first..first + 6).collect(),
            });
            for col in 0u8..2 {
                let n = first + col;
                raws.push(RawSelection::Corner {
                    numbers: vec![n, n + 1, n + 3, n + 4],
                });
            }
        }
    }
    raws.extend([
        RawSelection::Red,
        RawSelection::Black,
        RawSelection::Odd,
        RawSelection::Even,
        RawSelection::Low,
        RawSelection::High,
    ]);
    for index in 1u8..=3 {
        raws.push(RawSelection::Dozen { index });
        raws.push(RawSelection::Column { index });
    }
    raws.into_iter()
        .map(|raw| Selection::parse(raw.clone()).unwrap_or_else(|e| panic!("{raw:?}: {e}")))
        .collect()
}

pub fn selection() -> impl Strategy<Value = Selection> {
    proptest::sample::select(all_selections())
}

/// Any text, including empty, non-ASCII and control characters.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,24}", "[a-z0-9 _.-]{0,24}"]
}

// Every arm is boxed: unboxed, the value trees of these nested unions are large enough in a
// debug build to overflow a test thread's stack.

pub fn event_body() -> BoxedStrategy<EventBody> {
    prop_oneof![
        (table_id(), round_id(), timestamp(), seed_hash())
            .prop_map(|(table, round, closes_at, seed_hash)| {
                EventBody::RoundOpened(RoundOpened {
                    table,
                    round,
                    closes_at,
                    seed_hash,
                })
            })
            .boxed(),
        (table_id(), round_id())
            .prop_map(|(table, round)| EventBody::BettingClosed(BettingClosed { table, round }))
            .boxed(),
        (table_id(), round_id(), outcome(), server_seed())
            .prop_map(|(table, round, outcome, server_seed)| {
                EventBody::OutcomeDeclared(OutcomeDeclared {
                    table,
                    round,
                    outcome,
                    server_seed,
                })
            })
            .boxed(),
        (table_id(), round_id(), text())
            .prop_map(|(table, round, reason)| {
                EventBody::RoundVoided(RoundVoided {
                    table,
                    round,
                    reason,
                })
            })
            .boxed(),
        (
            table_id(),
            round_id(),
            bet_id(),
            player_id(),
            selection(),
            stake(),
            money()
        )
            .prop_map(
                |(table, round, bet_id, player, selection, amount, balance)| {
                    EventBody::BetPlaced(BetPlaced {
                        table,
                        round,
                        bet_id,
                        player,
                        selection,
                        amount,
                        balance,
                    })
                }
            )
            .boxed(),
        (
            table_id(),
            round_id(),
            bet_id(),
            player_id(),
            money(),
            money()
        )
            .prop_map(|(table, round, bet_id, player, payout, balance)| {
                EventBody::BetSettled(BetSettled {
                    table,
                    round,
                    bet_id,
                    player,
                    payout,
                    balance,
                })
            })
            .boxed(),
        (
            table_id(),
            round_id(),
            bet_id(),
            player_id(),
            stake(),
            money()
        )
            .prop_map(|(table, round, bet_id, player, amount, balance)| {
                EventBody::BetRefunded(BetRefunded {
                    table,
                    round,
                    bet_id,
                    player,
                    amount,
                    balance,
                })
            })
            .boxed(),
        (table_id(), round_id(), any::<u64>(), money(), money())
            .prop_map(|(table, round, bets, staked, paid)| {
                EventBody::RoundSettled(RoundSettled {
                    table,
                    round,
                    bets,
                    staked,
                    paid,
                })
            })
            .boxed(),
        (
            proptest::option::of(table_id()),
            player_id(),
            "[!-~]{1,128}",
            stake(),
            money()
        )
            .prop_map(|(table, player, deposit_id, amount, balance)| {
                EventBody::FundsDeposited(FundsDeposited {
                    table,
                    player,
                    deposit_id: DepositId::parse(&deposit_id).expect("printable ASCII"),
                    amount,
                    balance,
                })
            })
            .boxed(),
        (proptest::option::of(table_id()), betting(), text(), text())
            .prop_map(|(table, betting, reason, by)| {
                EventBody::BettingSwitched(BettingSwitched {
                    table,
                    betting,
                    reason,
                    by,
                })
            })
            .boxed(),
    ]
    .boxed()
}

pub fn event() -> BoxedStrategy<Event> {
    (
        any::<u128>(),
        prop_oneof![Just(EVENT_VERSION), any::<u16>()],
        timestamp(),
        event_body(),
    )
        .prop_map(|(id, v, at, body)| Event {
            id: Uuid::from_u128(id),
            v,
            at,
            body,
        })
        .boxed()
}

pub fn channel() -> BoxedStrategy<Channel> {
    prop_oneof![
        table_id().prop_map(Channel::Table),
        player_id().prop_map(Channel::Player)
    ]
    .boxed()
}

pub fn betting() -> BoxedStrategy<Betting> {
    prop_oneof![Just(Betting::Enabled), Just(Betting::Disabled)].boxed()
}

pub fn error_code() -> BoxedStrategy<ErrorCode> {
    proptest::sample::select(ErrorCode::ALL.to_vec()).boxed()
}

pub fn channel_state() -> BoxedStrategy<ChannelState> {
    prop_oneof![
        (
            proptest::option::of(round_id()),
            proptest::option::of(phase()),
            proptest::option::of(timestamp()),
            proptest::option::of(seed_hash()),
            proptest::collection::vec(outcome(), 0..12),
        )
            .prop_map(|(round, phase, closes_at, seed_hash, recent)| {
                ChannelState::Table(TableState {
                    round,
                    phase,
                    closes_at,
                    seed_hash,
                    recent,
                })
            })
            .boxed(),
        money()
            .prop_map(|balance| ChannelState::Player(PlayerState { balance }))
            .boxed(),
    ]
    .boxed()
}

pub fn server_message() -> BoxedStrategy<ServerMessage> {
    prop_oneof![
        (text(), proptest::option::of(player_id()), betting())
            .prop_map(|(session, player, betting)| {
                ServerMessage::Welcome(Welcome {
                    session,
                    player,
                    betting,
                })
            })
            .boxed(),
        (
            channel(),
            any::<u64>(),
            text(),
            any::<bool>(),
            channel_state()
        )
            .prop_map(|(channel, seq, epoch, recovered, state)| {
                ServerMessage::Subscribed(Subscribed {
                    channel,
                    seq,
                    epoch,
                    recovered,
                    state,
                })
            })
            .boxed(),
        (channel(), any::<u64>(), event())
            .prop_map(|(channel, seq, event)| {
                ServerMessage::Event(EventMessage {
                    channel,
                    seq,
                    event,
                })
            })
            .boxed(),
        (text(), bet_id(), money())
            .prop_map(|(request_id, bet_id, balance)| {
                ServerMessage::BetResult(BetResult {
                    request_id,
                    bet_id,
                    status: BetStatus::Accepted,
                    balance,
                })
            })
            .boxed(),
        (betting(), text())
            .prop_map(|(betting, reason)| ServerMessage::Status(StatusMessage { betting, reason }))
            .boxed(),
        (proptest::option::of(text()), error_code(), text())
            .prop_map(|(request_id, code, message)| {
                ServerMessage::Error(ErrorMessage {
                    request_id,
                    code,
                    message,
                })
            })
            .boxed(),
        Just(ServerMessage::Pong).boxed(),
    ]
    .boxed()
}

pub fn client_message() -> BoxedStrategy<ClientMessage> {
    prop_oneof![
        // Valid channel names, as the schema asks of clients; a bad name still decodes (and is
        // answered UNKNOWN_CHANNEL), which the wire tests check.
        (
            channel(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(text())
        )
            .prop_map(|(channel, since, epoch)| {
                ClientMessage::Subscribe(Subscribe {
                    channel: channel.to_string(),
                    since,
                    epoch,
                })
            })
            .boxed(),
        channel()
            .prop_map(|channel| {
                ClientMessage::Unsubscribe(Unsubscribe {
                    channel: channel.to_string(),
                })
            })
            .boxed(),
        place_bet().prop_map(ClientMessage::Bet).boxed(),
        Just(ClientMessage::Ping).boxed(),
    ]
    .boxed()
}

pub fn place_bet() -> BoxedStrategy<PlaceBet> {
    (
        text(),
        bet_id(),
        table_id(),
        round_id(),
        selection(),
        stake(),
    )
        .prop_map(
            |(request_id, bet_id, table, round, selection, amount)| PlaceBet {
                request_id,
                bet_id,
                table,
                round,
                selection,
                amount,
            },
        )
        .boxed()
}

pub fn place_bet_request() -> BoxedStrategy<PlaceBetRequest> {
    (place_bet(), player_id())
        .prop_map(|(bet, player)| bet.into_request(player))
        .boxed()
}

pub fn place_bet_reply() -> BoxedStrategy<PlaceBetReply> {
    prop_oneof![
        (bet_id(), money())
            .prop_map(|(bet_id, balance)| PlaceBetReply::accepted(bet_id, balance))
            .boxed(),
        (error_code(), text())
            .prop_map(|(code, message)| PlaceBetReply::rejected(code, message))
            .boxed(),
    ]
    .boxed()
}

pub fn betting_status() -> BoxedStrategy<BettingStatus> {
    (betting(), text(), timestamp())
        .prop_map(|(betting, reason, at)| BettingStatus {
            betting,
            reason,
            at,
        })
        .boxed()
}

pub fn gs_heartbeat() -> BoxedStrategy<GsHeartbeat> {
    (text(), any::<bool>(), text(), timestamp())
        .prop_map(|(instance, serving, store, at)| GsHeartbeat {
            instance,
            serving,
            store,
            at,
        })
        .boxed()
}

/// Any message of any family.
pub fn message() -> BoxedStrategy<Message> {
    prop_oneof![
        event().prop_map(Message::Event).boxed(),
        server_message().prop_map(Message::Server).boxed(),
        client_message().prop_map(Message::Client).boxed(),
        place_bet_request().prop_map(Message::Request).boxed(),
        place_bet_reply().prop_map(Message::Reply).boxed(),
        betting_status().prop_map(Message::Status).boxed(),
        gs_heartbeat().prop_map(Message::Heartbeat).boxed(),
    ]
    .boxed()
}

/// Arbitrary JSON, biased towards the field names and tags of our messages so that the decoders
/// get past their first checks.
pub fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1.0e6f64..1.0e6).prop_map(Value::from),
        (0i64..40).prop_map(Value::from),
        prop_oneof![text(), word()].prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((prop_oneof![word(), text()], inner), 0..8)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Field names, tags and values that mean something to our decoders.
pub fn word() -> impl Strategy<Value = String> {
    proptest::sample::select(vec![
        "type",
        "kind",
        "id",
        "v",
        "at",
        "table",
        "round",
        "request_id",
        "bet_id",
        "player",
        "selection",
        "amount",
        "balance",
        "channel",
        "since",
        "epoch",
        "numbers",
        "index",
        "payout",
        "bets",
        "staked",
        "paid",
        "deposit_id",
        "reason",
        "outcome",
        "server_seed",
        "seed_hash",
        "closes_at",
        "session",
        "betting",
        "status",
        "code",
        "message",
        "seq",
        "state",
        "recovered",
        "event",
        "recent",
        "phase",
        "bet",
        "ping",
        "pong",
        "subscribe",
        "unsubscribe",
        "welcome",
        "subscribed",
        "bet_result",
        "error",
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
        "by",
        "straight",
        "split",
        "red",
        "dozen",
        "accepted",
        "enabled",
        "disabled",
        "table.roulette-1",
        "player.alice",
        "roulette-1",
        "alice",
        "6f9619ff-8b86-4011-b42d-00c04fc964ff",
        "2026-11-25T22:17:00.000000Z",
        "BAD_MESSAGE",
    ])
    .prop_map(str::to_owned)
}

// ---------------------------------------------------------------------------------------------
// Golden examples as values.

/// The golden example `name` (without `.json`), decoded.
pub fn example(name: &str) -> Message {
    let path = examples_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    decode(family_of(name), text.as_bytes(), Encoding::Json)
        .unwrap_or_else(|e| panic!("{name} does not decode: {e}"))
}

/// The golden event of `kind`.
pub fn example_event(kind: &str) -> Event {
    match example(&format!("event.{kind}")) {
        Message::Event(event) => event,
        other => panic!("not an event: {other:?}"),
    }
}

/// The golden JSON of `name`, as data to tamper with.
pub fn example_value(name: &str) -> Value {
    let path = examples_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).expect("readable example");
    serde_json::from_str(&text).expect("JSON")
}

/// Encodes JSON data in `encoding` (MessagePack: a map with named fields).
pub fn bytes_of(value: &Value, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Json => serde_json::to_vec(value).expect("encodes"),
        Encoding::MsgPack => rmp_serde::to_vec_named(value).expect("encodes"),
    }
}

pub const BOTH: [Encoding; 2] = [Encoding::Json, Encoding::MsgPack];

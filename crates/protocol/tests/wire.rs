//! The WebSocket protocol as a client sees it (`docs/contract/websocket.md`): what decodes, what is
//! a `BAD_MESSAGE`, what is an `UNKNOWN_CHANNEL`, and what the server writes.

mod common;

use common::*;
use protocol::*;
use serde_json::{Value, json};

fn client(value: &Value, encoding: Encoding) -> Result<ClientMessage, DecodeError> {
    ClientMessage::decode(&bytes_of(value, encoding), encoding)
}

fn bet() -> Value {
    example_value("ws.client.bet")
}

fn with(mut value: Value, key: &str, field: Value) -> Value {
    value[key] = field;
    value
}

fn without(mut value: Value, key: &str) -> Value {
    if let Some(map) = value.as_object_mut() {
        map.remove(key);
    }
    value
}

fn json_text(message: &ServerMessage) -> String {
    String::from_utf8(message.encode(Encoding::Json).expect("encodes").to_vec()).expect("UTF-8")
}

#[test]
fn the_client_messages_written_in_the_contract_decode() {
    let cases = [
        r#"{"type":"subscribe","channel":"table.roulette-1"}"#,
        r#"{"type":"subscribe","channel":"table.roulette-1","since":17,"epoch":"e1"}"#,
        r#"{"type":"unsubscribe","channel":"player.alice"}"#,
        r#"{"type":"bet","request_id":"r1","bet_id":"6f9619ff-8b86-4011-b42d-00c04fc964ff","table":"roulette-1","round":3,"selection":{"kind":"straight","numbers":[17]},"amount":100}"#,
        r#"{"type":"ping"}"#,
    ];
    let types = ["subscribe", "subscribe", "unsubscribe", "bet", "ping"];
    for (text, expected) in cases.iter().zip(types) {
        let message = ClientMessage::decode(text.as_bytes(), Encoding::Json)
            .unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(message.message_type(), expected);
    }
}

#[test]
fn an_unknown_type_is_a_bad_message_that_names_it_in_both_encodings() {
    for encoding in BOTH {
        let err = client(&json!({"type": "dance"}), encoding).expect_err("unknown type");
        assert_eq!(err.code(), ErrorCode::BadMessage);
        assert!(err.to_string().contains("unknown variant `dance`"), "{err}");
    }
}

#[test]
fn a_message_without_a_type_is_a_bad_message() {
    for encoding in BOTH {
        let err = client(&json!({"channel": "table.roulette-1"}), encoding).expect_err("no type");
        assert!(err.to_string().contains("missing field `type`"), "{err}");
    }
}

#[test]
fn a_type_that_is_not_a_string_is_a_bad_message_in_messagepack_as_in_json() {
    // rmp-serde alone would read 3 as the index of the fourth variant, `ping`.
    for encoding in BOTH {
        for tag in [
            json!(3),
            json!(0),
            json!(true),
            json!(null),
            json!(["ping"]),
        ] {
            let value = json!({ "type": tag });
            assert!(client(&value, encoding).is_err(), "{value} in {encoding:?}");
        }
    }
}

#[test]
fn anything_but_an_object_is_a_bad_message() {
    for text in [
        "",
        " ",
        "[]",
        r#"["ping"]"#,
        r#""ping""#,
        "17",
        "null",
        "true",
        "{",
    ] {
        let err = ClientMessage::decode(text.as_bytes(), Encoding::Json).expect_err(text);
        assert_eq!(err.code(), ErrorCode::BadMessage);
    }
    for value in [json!(["ping"]), json!("ping"), json!(17), json!(null)] {
        let bytes = bytes_of(&value, Encoding::MsgPack);
        assert!(matches!(
            ClientMessage::decode(&bytes, Encoding::MsgPack),
            Err(DecodeError::NotAnObject)
        ));
    }
    assert!(ClientMessage::decode(&[], Encoding::MsgPack).is_err());
}

#[test]
fn a_missing_field_is_a_bad_message_that_names_the_field() {
    for field in [
        "request_id",
        "bet_id",
        "table",
        "round",
        "selection",
        "amount",
    ] {
        for encoding in BOTH {
            let err = client(&without(bet(), field), encoding).expect_err(field);
            assert!(
                err.to_string()
                    .contains(&format!("missing field `{field}`")),
                "{field}: {err}"
            );
        }
    }
}

#[test]
fn an_ill_typed_or_out_of_range_field_is_a_bad_message() {
    let bad = [
        ("amount", json!("100")),
        ("amount", json!(1.5)),
        ("amount", json!(0)),
        ("amount", json!(-1)),
        ("amount", json!(9_007_199_254_740_992_u64)),
        ("round", json!(0)),
        ("round", json!(-3)),
        ("bet_id", json!("not-a-uuid")),
        ("table", json!("roulette.1")),
        ("table", json!("")),
        ("request_id", json!(17)),
        ("selection", json!({"kind": "split", "numbers": [1, 5]})),
        ("selection", json!({"kind": "straight", "numbers": [37]})),
        ("selection", json!({"kind": "dozen", "index": 4})),
        ("selection", json!({"kind": 0, "numbers": [17]})),
        ("selection", json!("red")),
        ("selection", json!(["straight", [17]])),
        ("selection", json!({"kind": "straight", "numbers": "17"})),
    ];
    for (field, value) in bad {
        for encoding in BOTH {
            let message = with(bet(), field, value.clone());
            let err = client(&message, encoding)
                .expect_err(&format!("{field} = {value} in {encoding:?}"));
            assert_eq!(err.code(), ErrorCode::BadMessage);
        }
    }
    for encoding in BOTH {
        let subscribe = json!({"type": "subscribe", "channel": "table.roulette-1", "since": "x"});
        assert!(client(&subscribe, encoding).is_err());
        let subscribe = json!({"type": "subscribe", "channel": 7});
        assert!(client(&subscribe, encoding).is_err());
    }
}

#[test]
fn the_largest_amount_a_json_client_can_hold_exactly_is_accepted() {
    let message = with(bet(), "amount", json!(9_007_199_254_740_991_u64));
    for encoding in BOTH {
        let Ok(ClientMessage::Bet(bet)) = client(&message, encoding) else {
            panic!("a bet of 2^53 - 1 decodes");
        };
        assert_eq!(bet.amount, domain::Money::MAX);
    }
}

#[test]
fn unknown_extra_fields_are_ignored_in_both_encodings() {
    for encoding in BOTH {
        let decorated = with(
            bet(),
            "client_version",
            json!({"major": 3, "tags": [1, "x", null]}),
        );
        let plain = client(&bet(), encoding).expect("decodes");
        assert_eq!(client(&decorated, encoding).expect("decodes"), plain);
        let ping = json!({"type": "ping", "t": 1_700_000_000});
        assert_eq!(
            client(&ping, encoding).expect("decodes"),
            ClientMessage::Ping
        );
        let subscribe = json!({"type": "subscribe", "channel": "player.alice", "since": null});
        assert!(matches!(
            client(&subscribe, encoding),
            Ok(ClientMessage::Subscribe(Subscribe { since: None, .. }))
        ));
    }
}

#[test]
fn messagepack_with_integer_or_repeated_keys_is_refused() {
    // {0: "ping"}: rmp-serde alone would read key 0 as the first field.
    let integer_key = [0x81, 0x00, 0xa4, b'p', b'i', b'n', b'g'];
    assert!(ClientMessage::decode(&integer_key, Encoding::MsgPack).is_err());
    // {"type": "ping", "type": "ping"}
    let mut repeated = vec![0x82];
    for _ in 0..2 {
        repeated.extend([0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g']);
    }
    let err = ClientMessage::decode(&repeated, Encoding::MsgPack).expect_err("repeated key");
    assert!(err.to_string().contains("duplicate"), "{err}");
    let json = br#"{"type":"ping","type":"ping"}"#;
    assert!(ClientMessage::decode(json, Encoding::Json).is_err());
}

#[test]
fn a_bad_message_reply_names_the_request_when_its_id_can_be_salvaged() {
    for encoding in BOTH {
        let bytes = bytes_of(&with(bet(), "amount", json!("lots")), encoding);
        let err = ClientMessage::decode(&bytes, encoding).expect_err("bad amount");
        let reply = ServerMessage::bad_message(&bytes, encoding, &err);
        let ServerMessage::Error(error) = &reply else {
            panic!("an error message");
        };
        assert_eq!(error.request_id.as_deref(), Some("r-17"));
        assert_eq!(error.code, ErrorCode::BadMessage);
        assert!(
            error.message.contains("amount") || error.message.contains("integer"),
            "{}",
            error.message
        );
    }
    let bytes = b"[1,2,3]";
    let err = ClientMessage::decode(bytes, Encoding::Json).expect_err("not an object");
    let reply = ServerMessage::bad_message(bytes, Encoding::Json, &err);
    assert!(json_text(&reply).contains(r#""request_id":null,"code":"BAD_MESSAGE""#));
}

#[test]
fn a_bad_message_reply_quotes_a_long_bad_value_only_in_part() {
    let huge = "x".repeat(50_000);
    let bytes = bytes_of(&json!({"type": huge}), Encoding::Json);
    let err = ClientMessage::decode(&bytes, Encoding::Json).expect_err("unknown type");
    let ServerMessage::Error(reply) = ServerMessage::bad_message(&bytes, Encoding::Json, &err)
    else {
        panic!("an error message");
    };
    assert!(
        reply
            .message
            .starts_with("invalid JSON message: unknown variant `xxx")
    );
    assert_eq!(
        reply.message.chars().count(),
        ws::MAX_ERROR_MESSAGE_CHARS + 1
    );
}

#[test]
fn an_error_always_carries_request_id_even_when_null() {
    let without = ServerMessage::error(None, ErrorCode::Overloaded, "try later");
    assert_eq!(
        json_text(&without),
        r#"{"type":"error","request_id":null,"code":"OVERLOADED","message":"try later"}"#
    );
    let with = ServerMessage::error(Some("r9".into()), ErrorCode::Timeout, "retry");
    assert_eq!(
        json_text(&with),
        r#"{"type":"error","request_id":"r9","code":"TIMEOUT","message":"retry"}"#
    );
}

#[test]
fn a_spectator_is_welcomed_with_player_null() {
    let welcome = ServerMessage::Welcome(Welcome {
        session: "s1".into(),
        player: None,
        betting: Betting::Enabled,
    });
    assert_eq!(
        json_text(&welcome),
        r#"{"type":"welcome","session":"s1","player":null,"betting":"enabled"}"#
    );
    assert_eq!(json_text(&ServerMessage::Pong), r#"{"type":"pong"}"#);
}

#[test]
fn a_subscribe_to_a_bad_channel_decodes_and_is_answered_unknown_channel() {
    for name in [
        "lobby",
        "table.",
        "table.a.b",
        "player.al ice",
        "tables.roulette-1",
        "TABLE.x",
        "",
    ] {
        let message = json!({"type": "subscribe", "channel": name});
        let Ok(ClientMessage::Subscribe(subscribe)) = client(&message, Encoding::Json) else {
            panic!("{name:?} decodes as a subscribe");
        };
        let err = subscribe.parse_channel().expect_err(name);
        assert_eq!(err.code(), ErrorCode::UnknownChannel, "{name:?}");
    }
    let unsubscribe = Unsubscribe {
        channel: "nowhere".into(),
    };
    assert_eq!(
        unsubscribe.parse_channel().map_err(|e| e.code()),
        Err(ErrorCode::UnknownChannel)
    );
}

#[test]
fn channels_are_table_or_player_names_and_map_to_stream_filters() {
    let table: Channel = "table.roulette-1".parse().expect("valid");
    let player: Channel = "player.alice".parse().expect("valid");
    assert_eq!(table.to_string(), "table.roulette-1");
    assert_eq!(player.to_string(), "player.alice");
    assert_eq!(table.subject_filter(), "table.roulette-1.>");
    assert_eq!(table.stream(), "TABLES");
    assert_eq!(player.stream(), "PLAYERS");
    assert_eq!(player.subject_filter(), "player.alice.>");
    assert_eq!(
        serde_json::to_string(&table).expect("encodes"),
        r#""table.roulette-1""#
    );
    assert!(serde_json::from_str::<Channel>(r#""lobby""#).is_err());
}

#[test]
fn each_event_goes_to_the_channel_of_its_player_or_else_of_its_table() {
    for kind in [
        "round_opened",
        "betting_closed",
        "outcome_declared",
        "round_voided",
        "round_settled",
    ] {
        let event = example_event(kind);
        assert_eq!(
            Channel::of_event(&event).map(|c| c.to_string()).as_deref(),
            Some("table.roulette-1"),
            "{kind}"
        );
    }
    for kind in [
        "bet_placed",
        "bet_settled",
        "bet_refunded",
        "funds_deposited",
    ] {
        let event = example_event(kind);
        assert_eq!(
            Channel::of_event(&event).map(|c| c.to_string()).as_deref(),
            Some("player.alice"),
            "{kind}"
        );
    }
    assert_eq!(Channel::of_event(&example_event("betting_switched")), None);
}

#[test]
fn subscribed_state_is_read_as_a_table_state_or_a_player_state() {
    let Message::Server(ServerMessage::Subscribed(table)) = example("ws.server.subscribed") else {
        panic!("a subscribed message");
    };
    assert!(matches!(
        table.state,
        ChannelState::Table(TableState { round: Some(_), .. })
    ));
    let Message::Server(ServerMessage::Subscribed(fresh)) =
        example("ws.server.subscribed.before_first_round")
    else {
        panic!("a subscribed message");
    };
    assert!(matches!(
        fresh.state,
        ChannelState::Table(TableState {
            round: None,
            phase: None,
            closes_at: None,
            seed_hash: None,
            ..
        })
    ));
    let Message::Server(ServerMessage::Subscribed(player)) = example("ws.server.subscribed.player")
    else {
        panic!("a subscribed message");
    };
    assert!(matches!(
        player.state,
        ChannelState::Player(PlayerState { .. })
    ));
}

#[test]
fn an_event_message_encoded_without_cloning_matches_the_server_message() {
    let event = example_event("bet_placed");
    let channel: Channel = "player.alice".parse().expect("valid");
    for encoding in BOTH {
        let direct = encode_event_message(encoding, &channel, 78, &event).expect("encodes");
        let message = ServerMessage::Event(EventMessage {
            channel: channel.clone(),
            seq: 78,
            event: event.clone(),
        });
        assert_eq!(direct, message.encode(encoding).expect("encodes"));
    }
}

#[test]
fn an_event_message_written_around_the_bus_payload_is_the_encoded_message() {
    for kind in protocol::EventKind::ALL {
        let kind = kind.as_str();
        let event = example_event(kind);
        let payload = protocol::encode_event(&event).expect("encodes");
        for channel in ["player.alice", "table.roulette-1"] {
            let channel: Channel = channel.parse().expect("valid");
            for seq in [
                0,
                1,
                78,
                127,
                128,
                255,
                256,
                65_535,
                65_536,
                u64::from(u32::MAX) + 1,
            ] {
                let around = protocol::msgpack_event_message_around(&channel, seq, &payload);
                let encoded = encode_event_message(Encoding::MsgPack, &channel, seq, &event)
                    .expect("encodes");
                assert_eq!(around, encoded, "{kind} on {channel} at {seq}");
                for encoding in BOTH {
                    assert_eq!(
                        protocol::event_message_from_bus(encoding, &channel, seq, &event, &payload)
                            .expect("encodes"),
                        encode_event_message(encoding, &channel, seq, &event).expect("encodes"),
                        "{kind} on {channel} at {seq} in {encoding:?}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_bet_becomes_a_bus_request_for_the_connections_player_and_its_acceptance_a_bet_result() {
    let Message::Client(ClientMessage::Bet(bet)) = example("ws.client.bet") else {
        panic!("a bet");
    };
    let alice = domain::PlayerId::parse("alice").expect("valid");
    let request = bet.clone().into_request(alice.clone());
    assert_eq!(request.player, alice);
    assert_eq!(request.request_id, bet.request_id);
    assert_eq!(
        (request.bet_id, request.round, request.amount),
        (bet.bet_id, bet.round, bet.amount)
    );
    assert_eq!(
        (&request.table, &request.selection),
        (&bet.table, &bet.selection)
    );

    let Message::Reply(PlaceBetReply::Accepted(accepted)) = example("bus.place_bet_reply.accepted")
    else {
        panic!("an accepted reply");
    };
    let result = ServerMessage::bet_result("r-17".into(), accepted);
    assert_eq!(Message::Server(result), example("ws.server.bet_result"));
    let Message::Reply(PlaceBetReply::Rejected(rejected)) = example("bus.place_bet_reply.rejected")
    else {
        panic!("a rejected reply");
    };
    assert_eq!(rejected.code, ErrorCode::BettingClosed);
}

#[test]
fn betting_status_from_the_kv_bucket_becomes_a_status_message() {
    let Message::Status(status) = example("bus.betting_status") else {
        panic!("a betting status");
    };
    assert_eq!(
        Message::Server(ServerMessage::Status(status.to_message())),
        example("ws.server.status")
    );
    assert!(!status.betting.is_enabled());
}

#[test]
fn decoding_any_example_needs_well_under_the_stack_of_a_runtime_thread() {
    // tokio's worker threads have 2 MiB; a quarter of that is plenty, nesting included.
    let handle = std::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(|| {
            for name in [
                "ws.server.event.wallet",
                "ws.client.bet",
                "ws.server.subscribed",
            ] {
                let value = example_value(name);
                for encoding in BOTH {
                    decode(family_of(name), &bytes_of(&value, encoding), encoding)
                        .expect("decodes");
                }
            }
            // As deep as serde_json allows, inside an ignored field of a buffered message.
            let deep = format!(
                r#"{{"type":"ping","x":{}{}}}"#,
                "[".repeat(126),
                "]".repeat(126)
            );
            assert!(ClientMessage::decode(deep.as_bytes(), Encoding::Json).is_ok());
            let deeper = format!(
                r#"{{"type":"ping","x":{}{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            );
            assert!(ClientMessage::decode(deeper.as_bytes(), Encoding::Json).is_err());
        })
        .expect("spawns");
    assert!(handle.join().is_ok());
}

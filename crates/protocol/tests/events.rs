//! Bus events (`docs/contract/events.md`, `docs/contract/bus.md`): their flat shape, what decoding
//! accepts and refuses, and where each is published.

mod common;

use common::*;
use domain::{Money, RoundEvent, RoundId, TableId};
use protocol::subject;
use protocol::*;
use serde_json::{Value, json};

fn event_of(value: &Value, encoding: Encoding) -> Result<Event, DecodeError> {
    encoding.decode(&bytes_of(value, encoding))
}

const ALL_KINDS: [&str; 10] = [
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

#[test]
fn an_event_is_one_flat_object_kind_first_then_the_envelope_then_its_fields() {
    let event = example_event("bet_placed");
    let text =
        String::from_utf8(Encoding::Json.encode(&event).expect("encodes").to_vec()).expect("UTF-8");
    let keys = [
        "kind",
        "id",
        "v",
        "at",
        "table",
        "round",
        "bet_id",
        "player",
        "selection",
        "amount",
        "balance",
    ];
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| {
            text.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k} missing in {text}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert!(text.starts_with(r#"{"kind":"bet_placed","id":"#), "{text}");
}

#[test]
fn every_kind_of_the_contract_has_a_type_with_that_wire_name() {
    let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(names, ALL_KINDS);
    for kind in EventKind::ALL {
        assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
        assert_eq!(example_event(kind.as_str()).event_kind(), kind);
        assert_eq!(example_event(kind.as_str()).kind(), kind.as_str());
    }
    assert!("round_exploded".parse::<EventKind>().is_err());
}

#[test]
fn events_report_their_table_round_and_player() {
    let opened = example_event("round_opened");
    assert_eq!(opened.table().map(TableId::as_str), Some("roulette-1"));
    assert_eq!(opened.round().map(RoundId::get), Some(1));
    assert_eq!(opened.player(), None);
    let placed = example_event("bet_placed");
    assert_eq!(placed.player().map(|p| p.as_str()), Some("alice"));
    let deposit = example_event("funds_deposited");
    assert_eq!(deposit.round(), None);
    assert_eq!(deposit.table(), None);
    assert_eq!(deposit.player().map(|p| p.as_str()), Some("alice"));
    let switched = example_event("betting_switched");
    assert_eq!(switched.table().map(TableId::as_str), Some("roulette-1"));
    assert_eq!(switched.round(), None);
    assert_eq!(switched.player(), None);
    let everywhere = every_table_switch();
    assert_eq!(everywhere.table(), None);
}

fn every_table_switch() -> Event {
    match example("event.betting_switched.every_table") {
        Message::Event(event) => event,
        other => panic!("not an event: {other:?}"),
    }
}

#[test]
fn an_operator_switch_names_its_table_or_null_for_every_table_and_is_never_published() {
    let one = example_event("betting_switched");
    let EventBody::BettingSwitched(body) = &one.body else {
        panic!("a switch");
    };
    assert_eq!(body.betting, Betting::Disabled);
    assert_eq!(
        (body.reason.as_str(), body.by.as_str()),
        ("wheel being serviced", "dana")
    );
    let every = every_table_switch();
    for encoding in BOTH {
        // `table` is written as null, never left out, for every table.
        let value: Value = match encoding {
            Encoding::Json => {
                serde_json::from_slice(&encoding.encode(&every).expect("encodes")).expect("JSON")
            }
            Encoding::MsgPack => {
                rmp_serde::from_slice(&encoding.encode(&every).expect("encodes")).expect("map")
            }
        };
        assert_eq!(
            value.get("table"),
            Some(&Value::Null),
            "{encoding:?}: {value}"
        );
        let back: Event = encoding
            .decode(&encoding.encode(&every).expect("encodes"))
            .expect("decodes");
        assert_eq!(back, every);
    }
    for switch in [&one, &every] {
        assert_eq!(switch.event_kind().producer(), Producer::Operator);
        assert!(!switch.event_kind().is_published());
        assert_eq!(subject_for(switch), None);
        assert_eq!(gms_msg_id(switch), None);
        assert!(switch.body.to_round_event().is_none());
    }
    for kind in EventKind::ALL {
        assert_eq!(
            kind.is_published(),
            kind != EventKind::BettingSwitched,
            "{kind}"
        );
    }
}

#[test]
fn a_deposit_has_no_round_and_names_a_table_only_when_it_has_one() {
    let mut deposit = example_event("funds_deposited");
    let value: Value =
        serde_json::from_slice(&Encoding::Json.encode(&deposit).expect("encodes")).expect("JSON");
    assert!(
        value.get("round").is_none() && value.get("table").is_none(),
        "{value}"
    );

    let EventBody::FundsDeposited(body) = &mut deposit.body else {
        panic!("a deposit");
    };
    body.table = Some(TableId::parse("roulette-1").expect("valid"));
    for encoding in BOTH {
        let bytes = encoding.encode(&deposit).expect("encodes");
        let back: Event = encoding.decode(&bytes).expect("decodes");
        assert_eq!(back, deposit);
        assert_eq!(back.table().map(TableId::as_str), Some("roulette-1"));
    }
}

#[test]
fn an_unknown_kind_is_refused_and_named() {
    let value = with_field(
        example_value("event.betting_closed"),
        "kind",
        json!("round_exploded"),
    );
    for encoding in BOTH {
        let err = event_of(&value, encoding).expect_err("unknown kind");
        assert!(
            err.to_string().contains("unknown variant `round_exploded`"),
            "{err}"
        );
    }
}

#[test]
fn an_event_missing_a_field_of_its_kind_or_of_the_envelope_is_refused_naming_the_field() {
    for (kind, field) in [
        ("round_opened", "seed_hash"),
        ("outcome_declared", "server_seed"),
        ("bet_placed", "selection"),
        ("round_settled", "paid"),
        ("funds_deposited", "deposit_id"),
        ("betting_switched", "betting"),
        ("betting_switched", "by"),
        ("betting_switched", "table"),
        ("betting_closed", "round"),
        ("bet_settled", "id"),
        ("round_voided", "at"),
        ("bet_refunded", "v"),
        ("round_opened", "kind"),
    ] {
        let mut value = example_value(&format!("event.{kind}"));
        value.as_object_mut().map(|m| m.remove(field));
        for encoding in BOTH {
            let err = event_of(&value, encoding).expect_err(field);
            assert!(
                err.to_string()
                    .contains(&format!("missing field `{field}`")),
                "{kind}.{field}: {err}"
            );
        }
    }
}

#[test]
fn fields_of_other_kinds_and_unknown_fields_are_ignored() {
    let plain = example_event("round_opened");
    let value = with_field(
        example_value("event.round_opened"),
        "outcome",
        json!("not a pocket"),
    );
    let value = with_field(value, "trace", json!({"span": [1, 2]}));
    for encoding in BOTH {
        assert_eq!(event_of(&value, encoding).expect("decodes"), plain);
    }
}

#[test]
fn invalid_values_in_an_event_are_refused() {
    for (kind, field, bad) in [
        ("round_opened", "seed_hash", json!("ABC")),
        ("round_opened", "closes_at", json!("yesterday")),
        ("outcome_declared", "outcome", json!(37)),
        ("outcome_declared", "server_seed", json!(7)),
        ("bet_placed", "amount", json!(0)),
        ("bet_refunded", "amount", json!(0)),
        ("funds_deposited", "amount", json!(0)),
        ("bet_settled", "balance", json!(-1)),
        ("round_settled", "bets", json!(-1)),
        ("betting_closed", "id", json!("not-a-uuid")),
        ("betting_closed", "v", json!(70_000)),
        ("betting_closed", "table", json!("a b")),
        ("funds_deposited", "deposit_id", json!("")),
        ("funds_deposited", "deposit_id", json!("with space")),
        ("betting_switched", "betting", json!("maybe")),
        ("betting_switched", "table", json!("a b")),
        ("betting_switched", "reason", json!(7)),
    ] {
        let value = with_field(example_value(&format!("event.{kind}")), field, bad.clone());
        for encoding in BOTH {
            assert!(
                event_of(&value, encoding).is_err(),
                "{kind}.{field} = {bad} in {encoding:?}"
            );
        }
    }
}

#[test]
fn a_zero_payout_and_an_empty_round_are_valid() {
    let settled = with_field(example_value("event.bet_settled"), "payout", json!(0));
    let round = with_field(example_value("event.round_settled"), "staked", json!(0));
    for encoding in BOTH {
        assert!(event_of(&settled, encoding).is_ok());
        assert!(event_of(&round, encoding).is_ok());
    }
}

#[test]
fn an_event_of_a_later_version_is_read_and_keeps_its_version() {
    let value = with_field(example_value("event.betting_closed"), "v", json!(2));
    for encoding in BOTH {
        assert_eq!(event_of(&value, encoding).expect("decodes").v, 2);
    }
    assert_eq!(example_event("betting_closed").v, EVENT_VERSION);
}

#[test]
fn ids_timestamps_and_seeds_are_strings_in_messagepack_too() {
    for kind in ALL_KINDS {
        let event = example_event(kind);
        let packed = encode_event(&event).expect("encodes");
        let value: Value = rmp_serde::from_slice(&packed).expect("a map");
        assert!(
            value["id"].is_string() && value["at"].is_string(),
            "{kind}: {value}"
        );
        assert_eq!(decode_event(&packed).expect("decodes"), event);
    }
    let value: Value =
        rmp_serde::from_slice(&encode_event(&example_event("outcome_declared")).expect("encodes"))
            .expect("map");
    assert_eq!(
        value["server_seed"],
        json!("2c6efcecf60887650f301debdbc5a88446094e3fd5c747cc59bbeb9a019e7f9d")
    );
}

#[test]
fn a_timestamp_in_another_offset_is_read_as_the_same_instant_in_utc() {
    let value = with_field(
        example_value("event.betting_closed"),
        "at",
        json!("2026-11-25T23:17:15.000312+01:00"),
    );
    assert_eq!(
        event_of(&value, Encoding::Json).expect("decodes"),
        example_event("betting_closed")
    );
}

#[test]
fn domain_round_events_become_wire_bodies_and_back() {
    for kind in [
        "round_opened",
        "betting_closed",
        "outcome_declared",
        "round_voided",
        "round_settled",
    ] {
        let event = example_event(kind);
        let round_event: RoundEvent = event.body.to_round_event().expect("a round event");
        assert_eq!(round_event.kind(), kind);
        let table = event.table().cloned().expect("a table");
        let round = event.round().expect("a round");
        assert_eq!(
            EventBody::from_round_event(table, round, round_event),
            event.body
        );
    }
    for kind in [
        "bet_placed",
        "bet_settled",
        "bet_refunded",
        "funds_deposited",
        "betting_switched",
    ] {
        assert!(
            example_event(kind).body.to_round_event().is_none(),
            "{kind}"
        );
    }
}

#[test]
fn event_new_writes_the_current_version() {
    let closed = example_event("betting_closed");
    let fresh = Event::new(closed.id, closed.at, closed.body.clone());
    assert_eq!(fresh.v, EVENT_VERSION);
    assert_eq!(fresh, closed);
}

#[test]
fn each_event_is_published_on_the_subject_of_the_contract() {
    let cases = [
        ("round_opened", "table.roulette-1.round"),
        ("betting_closed", "table.roulette-1.round"),
        ("outcome_declared", "table.roulette-1.round"),
        ("round_voided", "table.roulette-1.round"),
        ("round_settled", "table.roulette-1.result"),
        ("bet_placed", "player.alice.wallet"),
        ("bet_settled", "player.alice.wallet"),
        ("bet_refunded", "player.alice.wallet"),
        ("funds_deposited", "player.alice.wallet"),
    ];
    for (kind, expected) in cases {
        assert_eq!(
            subject_for(&example_event(kind)).as_deref(),
            Some(expected),
            "{kind}"
        );
    }
    assert_eq!(subject_for(&example_event("betting_switched")), None);
}

#[test]
fn gms_message_ids_are_table_round_kind_and_gs_events_have_none() {
    assert_eq!(
        gms_msg_id(&example_event("round_opened")).as_deref(),
        Some("roulette-1:1:round_opened")
    );
    assert_eq!(
        gms_msg_id(&example_event("round_voided")).as_deref(),
        Some("roulette-1:2:round_voided")
    );
    for kind in [
        "bet_placed",
        "round_settled",
        "funds_deposited",
        "betting_switched",
    ] {
        assert_eq!(gms_msg_id(&example_event(kind)), None, "{kind}");
    }
}

// The CROUPIER_NATS_PREFIX mapping of these names is the bus adapter's, tested there
// (`bus::nats::names`, and `names_are_prefixed_on_the_server_and_logical_on_the_way_back`).
#[test]
fn logical_names_are_those_of_the_contract() {
    let table = TableId::parse("roulette-1").expect("valid");
    let player = domain::PlayerId::parse("alice").expect("valid");
    assert_eq!(
        subject::table_round_subject(&table),
        "table.roulette-1.round"
    );
    assert_eq!(
        subject::table_result_subject(&table),
        "table.roulette-1.result"
    );
    assert_eq!(
        subject::player_wallet_subject(&player),
        "player.alice.wallet"
    );
    assert_eq!(subject::bets_place_subject(&table), "bets.place.roulette-1");
    assert_eq!(subject::bets_place_wildcard(), "bets.place.*");
    assert_eq!(subject::TABLES_STREAM, "TABLES");
    assert_eq!(subject::TABLES_SUBJECTS, "table.>");
    assert_eq!(subject::PLAYERS_SUBJECTS, "player.>");
    assert_eq!(subject::GMS_LEASES_BUCKET, "gms_leases");
    assert_eq!(subject::STATUS_BUCKET, "status");
    assert_eq!(subject::STATUS_OPERATOR_KEY, "operator");
    assert_eq!(
        subject::status_operator_table_key(&table),
        "operator.roulette-1"
    );
    assert_eq!(
        subject::table_of_operator_key("operator.roulette-1"),
        Some(table.clone())
    );
    for other in [
        "operator",
        "betting",
        "operator.",
        "operator.a b",
        "operatorx.t",
    ] {
        assert_eq!(subject::table_of_operator_key(other), None, "{other}");
    }
    assert_eq!(subject::GS_QUEUE_GROUP, "gs");
}

#[test]
fn money_fields_keep_their_exact_value_up_to_two_to_the_53_minus_one() {
    let value = with_field(
        example_value("event.bet_settled"),
        "balance",
        json!(Money::MAX_MINOR),
    );
    for encoding in BOTH {
        let event = event_of(&value, encoding).expect("decodes");
        let EventBody::BetSettled(body) = event.body else {
            panic!("a settled bet");
        };
        assert_eq!(body.balance, Money::MAX);
    }
}

fn with_field(mut value: Value, key: &str, field: Value) -> Value {
    value[key] = field;
    value
}

//! Every message, in both encodings: what is encoded decodes to the same value, the MessagePack
//! map carries exactly the JSON object's fields, and the JSON satisfies the checked-in schema.
//!
//! Proptest cases (fixed seed, see `common::config`): 2048 arbitrary messages across all
//! families, plus 512 arbitrary events.

mod common;

use common::*;
use proptest::prelude::*;
use protocol::{Encoding, Event, decode_event, encode_event};

fn assert_round_trip(message: &Message) -> Result<(), TestCaseError> {
    let family = message.family();
    let json = message.encode(Encoding::Json);
    let packed = message.encode(Encoding::MsgPack);

    let from_json = decode(family, &json, Encoding::Json)
        .map_err(|e| TestCaseError::fail(format!("JSON does not decode: {e}")))?;
    prop_assert_eq!(&from_json, message);
    let from_msgpack = decode(family, &packed, Encoding::MsgPack)
        .map_err(|e| TestCaseError::fail(format!("MessagePack does not decode: {e}")))?;
    prop_assert_eq!(&from_msgpack, message);

    let json_value: serde_json::Value =
        serde_json::from_slice(&json).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let msgpack_value: serde_json::Value =
        rmp_serde::from_slice(&packed).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(
        &msgpack_value,
        &json_value,
        "the two encodings carry different fields"
    );

    let known = schema_names();
    for schema_name in schemas_for(&message.schema_name(), &known) {
        let schema = load_schema(&schema_name);
        if let Err(e) = check(&schema, &schema, &json_value, &schema_name) {
            return Err(TestCaseError::fail(format!("breaks {schema_name}: {e}")));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn any_message_round_trips_in_both_encodings_and_satisfies_its_schema(message in message()) {
        assert_round_trip(&message)?;
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn any_event_round_trips_through_the_bus_codec(event in event()) {
        let bytes = encode_event(&event).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: Event = decode_event(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(back, event);
    }
}

#[test]
fn every_variant_of_every_family_is_covered_by_the_strategies() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeSet;

    let mut runner = TestRunner::new(config(1));
    let strategy = message();
    let mut seen = BTreeSet::new();
    for _ in 0..4000 {
        let tree = strategy.new_tree(&mut runner).expect("generates");
        seen.insert(tree.current().schema_name());
    }
    let expected: BTreeSet<String> = schema_names()
        .into_iter()
        .filter(|n| !["event", "ws.server", "ws.client"].contains(&n.as_str()))
        .collect();
    assert_eq!(seen, expected);
}

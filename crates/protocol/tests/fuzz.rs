//! No decoder panics, whatever it is fed, and the two encodings judge the same data alike.
//!
//! Proptest cases (fixed seed, see `common::config`), each run through all six decoders in both
//! encodings plus `salvage_request_id`:
//! - 4096 arbitrary byte strings (0 to 512 bytes);
//! - 4096 arbitrary byte strings that open a JSON object or a MessagePack map;
//! - 2048 arbitrary JSON values, fed as JSON text and as MessagePack;
//! - 2048 golden examples with random mutations, fed in both encodings;
//! - 1024 valid messages cut short at a random byte.

mod common;

use common::*;
use proptest::prelude::*;
use proptest::sample::Index;
use protocol::{Encoding, MAX_MESSAGE_BYTES, salvage_request_id};
use serde_json::Value;

/// Feeds `bytes` to every decoder; returns the results so callers can compare encodings.
fn decode_all(bytes: &[u8], encoding: Encoding) -> Vec<Result<Message, String>> {
    let _ = salvage_request_id(bytes, encoding);
    FAMILIES
        .iter()
        .map(|family| decode(family, bytes, encoding).map_err(|e| e.to_string()))
        .collect()
}

fn assert_encodings_agree(value: &Value) -> Result<(), TestCaseError> {
    let json = serde_json::to_vec(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let packed = rmp_serde::to_vec_named(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let from_json = decode_all(&json, Encoding::Json);
    let from_msgpack = decode_all(&packed, Encoding::MsgPack);
    if json.len() <= MAX_MESSAGE_BYTES && packed.len() <= MAX_MESSAGE_BYTES {
        for ((family, a), b) in FAMILIES.iter().zip(&from_json).zip(&from_msgpack) {
            match (a, b) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{} decodes differently", family),
                (Err(_), Err(_)) => {}
                (a, b) => {
                    return Err(TestCaseError::fail(format!(
                        "{family}: JSON gives {a:?} but MessagePack gives {b:?} for {value}"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn examples() -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(examples_dir()).expect("schemas/examples exists") {
        let path = entry.expect("readable").path();
        let text = std::fs::read_to_string(&path).expect("readable example");
        out.push(serde_json::from_str(&text).expect("examples are JSON"));
    }
    out.sort_by_key(|v: &Value| v.to_string());
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(Value),
    RemoveKey(Index),
    InsertKey(String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        json_value().prop_map(Mutation::Replace),
        any::<Index>().prop_map(Mutation::RemoveKey),
        (word(), json_value()).prop_map(|(k, v)| Mutation::InsertKey(k, v)),
    ]
}

fn count_nodes(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count_nodes).sum(),
        Value::Object(map) => map.values().map(count_nodes).sum(),
        _ => 0,
    }
}

/// Applies `mutation` at the `target`-th node in pre-order; returns whether it was applied.
fn mutate(value: &mut Value, target: &mut usize, mutation: &Mutation) -> bool {
    if *target == 0 {
        match (mutation, &mut *value) {
            (Mutation::Replace(v), node) => *node = v.clone(),
            (Mutation::RemoveKey(i), Value::Object(map)) if !map.is_empty() => {
                let key = map
                    .keys()
                    .nth(i.index(map.len()))
                    .cloned()
                    .unwrap_or_default();
                map.remove(&key);
            }
            (Mutation::InsertKey(k, v), Value::Object(map)) => {
                map.insert(k.clone(), v.clone());
            }
            (_, node) => *node = Value::Null,
        }
        return true;
    }
    *target -= 1;
    match value {
        Value::Array(items) => items.iter_mut().any(|item| mutate(item, target, mutation)),
        Value::Object(map) => map.values_mut().any(|item| mutate(item, target, mutation)),
        _ => false,
    }
}

fn mutated_example() -> impl Strategy<Value = Value> {
    let examples = examples();
    (
        proptest::sample::select(examples),
        proptest::collection::vec((any::<Index>(), mutation()), 1..4),
    )
        .prop_map(|(mut value, mutations)| {
            for (at, mutation) in mutations {
                let mut target = at.index(count_nodes(&value));
                mutate(&mut value, &mut target, &mutation);
            }
            value
        })
}

fn map_opening_bytes() -> impl Strategy<Value = Vec<u8>> {
    let msgpack = (
        0x80u8..=0x8f,
        proptest::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(|(marker, rest)| {
            let mut bytes = vec![marker];
            bytes.extend(rest);
            bytes
        });
    let json_like = proptest::collection::vec(
        proptest::sample::select(b"{}[]\":,-.0123456789eEtrufalsn \\abcdkindtypebet".to_vec()),
        0..256,
    )
    .prop_map(|rest| {
        let mut bytes = b"{\"".to_vec();
        bytes.extend(rest);
        bytes
    });
    prop_oneof![msgpack, json_like]
}

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn no_decoder_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let _ = decode_all(&bytes, encoding);
        }
    }

    #[test]
    fn no_decoder_panics_on_arbitrary_bytes_that_open_an_object(bytes in map_opening_bytes()) {
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let _ = decode_all(&bytes, encoding);
        }
    }
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn no_decoder_panics_on_arbitrary_json_values_and_both_encodings_agree(value in json_value()) {
        assert_encodings_agree(&value)?;
    }

    #[test]
    fn no_decoder_panics_on_mutated_golden_examples_and_both_encodings_agree(value in mutated_example()) {
        assert_encodings_agree(&value)?;
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn a_message_cut_short_is_an_error_not_a_panic(message in message(), cut in any::<Index>()) {
        for encoding in [Encoding::Json, Encoding::MsgPack] {
            let bytes = message.encode(encoding);
            let short = &bytes[..cut.index(bytes.len())];
            prop_assert!(decode(message.family(), short, encoding).is_err());
            let _ = decode_all(short, encoding);
        }
    }
}

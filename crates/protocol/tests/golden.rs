//! The checked-in `schemas/`: golden examples decode and re-encode byte for byte, agree across
//! encodings and satisfy their schemas; the schema files are what the code generates; the
//! AsyncAPI document points only at files that exist, and at every message schema.

mod common;

use std::collections::BTreeSet;
use std::fs;

use common::*;
use protocol::Encoding;

/// (example name, file text) for every file in `schemas/examples/`.
fn examples() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = fs::read_dir(examples_dir())
        .expect("schemas/examples exists")
        .map(|entry| entry.expect("readable directory").path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .map(|path| {
            let name = path
                .file_stem()
                .and_then(|s| s.to_str())
                .expect("UTF-8 file name")
                .to_owned();
            let text = fs::read_to_string(&path).expect("readable example");
            (name, text)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_golden_example_decodes_and_re_encodes_byte_for_byte() {
    let examples = examples();
    assert!(examples.len() >= 26, "only {} examples", examples.len());
    for (name, text) in examples {
        let message = decode(family_of(&name), text.as_bytes(), Encoding::Json)
            .unwrap_or_else(|e| panic!("{name}.json does not decode: {e}"));
        assert_eq!(
            message.to_pretty_json(),
            text,
            "{name}.json is not in canonical form (pretty JSON, fields in wire order, final newline)"
        );
    }
}

#[test]
fn every_golden_example_survives_the_trip_through_messagepack_with_the_same_fields() {
    for (name, text) in examples() {
        let family = family_of(&name);
        let message = decode(family, text.as_bytes(), Encoding::Json).expect("decodes");
        let packed = message.encode(Encoding::MsgPack);
        let back = decode(family, &packed, Encoding::MsgPack)
            .unwrap_or_else(|e| panic!("{name} does not decode from MessagePack: {e}"));
        assert_eq!(back, message, "{name}");
        // The MessagePack map, read as JSON data, is the example itself: same keys, same values.
        let as_value: serde_json::Value = rmp_serde::from_slice(&packed).expect("a map");
        let expected: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(as_value, expected, "{name}");
    }
}

#[test]
fn every_golden_example_is_named_after_the_message_it_holds_and_satisfies_its_schemas() {
    let known = schema_names();
    for (name, text) in examples() {
        let message = decode(family_of(&name), text.as_bytes(), Encoding::Json).expect("decodes");
        let own = message.schema_name();
        assert!(
            name == own || name.starts_with(&format!("{own}.")),
            "{name}.json holds a {own}"
        );
        let instance: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let schemas = schemas_for(&name, &known);
        assert!(
            schemas.len() >= 2 || name.starts_with("bus."),
            "{name}: {schemas:?}"
        );
        for schema_name in schemas {
            let schema = load_schema(&schema_name);
            if let Err(e) = check(&schema, &schema, &instance, &name) {
                panic!("{name}.json breaks {schema_name}.schema.json: {e}");
            }
        }
    }
}

#[test]
fn every_message_schema_has_at_least_one_golden_example() {
    let names: Vec<String> = examples().into_iter().map(|(n, _)| n).collect();
    for schema in schema_names() {
        assert!(
            names
                .iter()
                .any(|n| *n == schema || n.starts_with(&format!("{schema}."))),
            "no example in schemas/examples/ for {schema}"
        );
    }
}

#[test]
fn checked_in_schemas_are_exactly_what_the_code_generates() {
    let generated = protocol::schema::generate();
    let mut stale = Vec::new();
    for file in &generated {
        let path = schemas_dir().join(&file.file_name);
        if fs::read_to_string(&path).ok().as_deref() != Some(file.contents.as_str()) {
            stale.push(file.file_name.clone());
        }
    }
    for entry in fs::read_dir(schemas_dir()).expect("schemas/ exists") {
        let name = entry
            .expect("readable")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".schema.json") && !generated.iter().any(|f| f.file_name == name) {
            stale.push(format!("{name} (no longer generated)"));
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/ is stale: {stale:?}; run `cargo run -p protocol --example gen-schemas`"
    );
}

#[test]
fn generated_schemas_name_no_definition_they_do_not_carry() {
    for file in protocol::schema::generate() {
        let schema: serde_json::Value = serde_json::from_str(&file.contents).expect("JSON");
        let text = file.contents.as_str();
        for part in text.split("\"#/definitions/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(
                !schema["definitions"][name].is_null(),
                "{} refers to missing definition {name}",
                file.file_name
            );
        }
    }
}

#[test]
fn the_asyncapi_document_refers_to_existing_schemas_and_to_every_message_schema() {
    let text = fs::read_to_string(schemas_dir().join("asyncapi.yaml")).expect("asyncapi.yaml");
    assert!(
        text.starts_with("asyncapi: 3.0.0"),
        "an AsyncAPI 3 document"
    );
    let referenced: BTreeSet<String> = text
        .split("$ref: './")
        .skip(1)
        .map(|rest| rest.split('\'').next().unwrap_or_default().to_owned())
        .collect();
    for file in &referenced {
        assert!(
            schemas_dir().join(file).is_file(),
            "asyncapi.yaml refers to missing {file}"
        );
    }
    for file in protocol::schema::generate() {
        assert!(
            referenced.contains(&file.file_name),
            "asyncapi.yaml does not mention {}",
            file.file_name
        );
    }
    for subject in [
        "table.{table}.round",
        "table.{table}.result",
        "player.{player}.wallet",
        "bets.place.{table}",
        "gms_leases",
        "status",
        "CROUPIER_NATS_PREFIX",
        "TABLES",
        "PLAYERS",
        "croupier.v1.json",
        "croupier.v1.msgpack",
    ] {
        assert!(
            text.contains(subject),
            "asyncapi.yaml does not mention {subject}"
        );
    }
}

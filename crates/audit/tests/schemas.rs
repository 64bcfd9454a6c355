//! `schemas/audit/` is what the code generates: a changed report shape fails here until the
//! schemas are regenerated (`cargo run -p audit --example gen-audit-schemas`).

use std::fs;
use std::path::PathBuf;

#[test]
fn the_replay_schemas_in_the_repository_are_fresh() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/audit");
    let mut stale = Vec::new();
    for file in audit::schema::generate() {
        if fs::read_to_string(dir.join(file.file_name)).ok().as_deref()
            != Some(file.contents.as_str())
        {
            stale.push(file.file_name);
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/audit/ is stale: {stale:?}; run `cargo run -p audit --example gen-audit-schemas`"
    );
}

#[test]
fn the_report_schema_lists_every_field_a_report_has() {
    let schema: serde_json::Value = serde_json::from_str(
        &audit::schema::generate()
            .into_iter()
            .find(|f| f.file_name == "replay.report.schema.json")
            .expect("the report schema")
            .contents,
    )
    .expect("JSON");
    let properties = schema["properties"].as_object().expect("properties");
    for field in [
        "ok",
        "events",
        "head",
        "tables",
        "violations",
        "violations_total",
        "checkpoints_verified",
        "money",
        "bus",
    ] {
        assert!(
            properties.contains_key(field),
            "{field} is not in the schema"
        );
    }
    assert!(
        !properties.contains_key("recall"),
        "a recall is printed on its own"
    );
}

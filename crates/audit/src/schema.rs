//! JSON Schemas of what `croupier replay` prints with `--json`: the report, a last-game
//! recall, and the answer of `--verify-recall`. Written to `schemas/audit/` by
//! `cargo run -p audit --example gen-audit-schemas` (part of `just schemas`); a test fails when the
//! files are stale.

use schemars::JsonSchema;
use schemars::generate::SchemaSettings;
use serde::Serialize;

use crate::recall::Recall;
use crate::report::{Report, Violation};

/// What `croupier replay --verify-recall FILE --json` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct RecallVerdict {
    /// True when every check of the recall holds.
    pub ok: bool,
    pub table: String,
    pub round: u64,
    pub violations: Vec<Violation>,
}

/// What a replay that could not run prints with `--json` (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Failure {
    /// Always false.
    pub ok: bool,
    /// Why the replay could not run.
    pub error: String,
}

/// One schema file: its name under `schemas/audit/` and its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFile {
    pub file_name: &'static str,
    pub contents: String,
}

pub fn generate() -> Vec<SchemaFile> {
    vec![
        file::<Report>("replay.report.schema.json"),
        file::<Recall>("replay.recall.schema.json"),
        file::<RecallVerdict>("replay.verify_recall.schema.json"),
        file::<Failure>("replay.failure.schema.json"),
    ]
}

fn file<T: JsonSchema>(file_name: &'static str) -> SchemaFile {
    let schema = SchemaSettings::draft07()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<T>();
    SchemaFile {
        file_name,
        contents: protocol::schema::canonical_json(schema.to_value()),
    }
}

//! The published contract (`docs/contract/`) held to the code and to the repository:
//!
//! - every hash-chain example in `docs/contract/event-store.md` (the test vector, and a real row
//!   an auditor recomputes with `printf`, `xxd` and `sha256sum`) recomputes with
//!   [`store::chain_hash`], and the shell lines that build it say the same bytes as its table;
//! - no tracked file points outside the repository for the contract (it used to live in a file
//!   beside the checkout, which a clone does not have);
//! - every `docs/contract/…` path the repository names, and every relative link inside
//!   `docs/contract/`, exists.
//!
//! Needs no database: it reads files, and asks `git ls-files` which ones are tracked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// This file: it has to spell out what it looks for.
const THIS_FILE: &str = "crates/store/tests/contract_docs.rs";

/// The fields of a chain example, in the order the chain hashes them (then the result).
const INPUTS: [&str; 7] = [
    "prev", "position", "event_id", "stream", "type", "data", "metadata",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    let path = workspace_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text between `<!-- chain-example: NAME -->` and the next `<!-- /chain-example -->`.
fn example_section<'a>(doc: &'a str, name: &str) -> &'a str {
    let start_marker = format!("<!-- chain-example: {name} -->");
    let start = doc
        .find(&start_marker)
        .unwrap_or_else(|| panic!("event-store.md has no {start_marker}"))
        + start_marker.len();
    let end = doc[start..]
        .find("<!-- /chain-example -->")
        .unwrap_or_else(|| panic!("chain example {name} is not closed"));
    &doc[start..start + end]
}

/// The `| field | hex | … |` rows of a section's table: field name → hex digits (a cell
/// reading `(empty)` is zero bytes).
fn table(section: &str) -> BTreeMap<String, String> {
    section
        .lines()
        .filter(|line| line.starts_with('|'))
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let field = *cells.first()?;
            let value = cells.get(1)?.trim_matches('`');
            let known = INPUTS.contains(&field) || field == "hash";
            known.then(|| {
                let value = if value == "(empty)" { "" } else { value };
                (field.to_owned(), value.to_owned())
            })
        })
        .collect()
}

/// Every `field=hex` line of a section (the psql output and the shell pipeline), in order.
fn assignments(section: &str) -> Vec<(String, String)> {
    section
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(name, value)| {
            (INPUTS.contains(name) || *name == "hash")
                && value.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

fn bytes(field: &str, hex_digits: &str) -> Vec<u8> {
    hex::decode(hex_digits).unwrap_or_else(|e| panic!("{field} is not hex: {e}"))
}

/// Checks one example: the table recomputes to its hash, and the text around it agrees.
fn check_example(doc: &str, name: &str) {
    let section = example_section(doc, name);
    let fields = table(section);
    for field in INPUTS.iter().chain(&["hash"]) {
        assert!(
            fields.contains_key(*field),
            "example {name}: the table has no row {field}"
        );
    }
    let prev: [u8; 32] = bytes("prev", &fields["prev"])
        .try_into()
        .expect("prev is 32 bytes");
    let position: [u8; 8] = bytes("position", &fields["position"])
        .try_into()
        .expect("position is 8 bytes");
    let event_id = uuid::Uuid::from_slice(&bytes("event_id", &fields["event_id"]))
        .expect("event_id is 16 bytes");
    let stream = String::from_utf8(bytes("stream", &fields["stream"])).expect("stream is UTF-8");
    let kind = String::from_utf8(bytes("type", &fields["type"])).expect("type is UTF-8");
    let recomputed = store::chain_hash(
        &prev,
        i64::from_be_bytes(position),
        event_id,
        &stream,
        &kind,
        &bytes("data", &fields["data"]),
        &bytes("metadata", &fields["metadata"]),
    );
    assert_eq!(
        hex::encode(recomputed),
        fields["hash"],
        "example {name}: the chain hash of the table's fields is not its `hash`"
    );

    // The shell lines say the same bytes as the table, and every input is set by them.
    let lines = assignments(section);
    for input in INPUTS {
        assert!(
            lines.iter().any(|(n, _)| n == input),
            "example {name}: the pipeline never sets {input}"
        );
    }
    for (field, value) in &lines {
        assert_eq!(
            value, &fields[field],
            "example {name}: `{field}=` in the text differs from the table"
        );
    }
    // And the output the document shows for the pipeline is the hash.
    let printed = format!("# → {}  -", fields["hash"]);
    assert!(
        section.contains(&printed),
        "example {name}: the pipeline's shown output is not `{printed}`"
    );
}

#[test]
fn the_hash_chain_test_vector_in_the_contract_recomputes() {
    check_example(&read("docs/contract/event-store.md"), "test-vector");
}

#[test]
fn the_real_row_in_the_contract_recomputes_to_its_stored_hash() {
    check_example(&read("docs/contract/event-store.md"), "real-row");
}

/// The repository's tracked files, relative to its root.
fn tracked_files() -> Vec<String> {
    let output = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(workspace_root())
        .output()
        .expect("git runs (this test needs a git checkout)");
    assert!(
        output.status.success(),
        "git ls-files failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
        .stdout
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_tracked_file_points_outside_the_repository() {
    // Spelled in pieces so that the search below would not find this file either.
    let needles = [format!("shared/{}", "DESIGN"), format!("../{}", "shared")];
    let root = workspace_root();
    let mut offenders = Vec::new();
    for file in tracked_files() {
        if file == THIS_FILE {
            continue;
        }
        // A tracked file deleted in the working tree is not there to point anywhere.
        let Ok(content) = std::fs::read(root.join(&file)) else {
            continue;
        };
        for needle in &needles {
            if contains(&content, needle.as_bytes()) {
                offenders.push(format!("{file} mentions {needle}"));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "the contract is in docs/contract/; point there instead:\n{}",
        offenders.join("\n")
    );
}

/// The anchors of a Markdown file's headings as GitHub makes them: lowercase, spaces to `-`,
/// letters, digits, `-` and `_` kept, everything else dropped.
fn anchors(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.starts_with('#'))
        .map(|heading| {
            heading
                .trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

#[test]
fn every_contract_path_the_repository_names_exists() {
    let root = workspace_root();
    let mut missing = Vec::new();
    for file in tracked_files() {
        let Ok(content) = std::fs::read_to_string(root.join(&file)) else {
            continue;
        };
        let mut rest = content.as_str();
        while let Some(at) = rest.find("docs/contract/") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || "/._-".contains(c)))
                .unwrap_or(tail.len());
            let path = tail[..end].trim_end_matches('.');
            if !root.join(path).exists() {
                missing.push(format!("{file} names {path}"));
            }
            rest = &tail[end..];
        }
    }
    // Relative links from the contract's own documents, anchors included:
    // `](events.md#values)`, `](#error-codes)`, `](../adr/README.md)`.
    for file in tracked_files() {
        let Some(name) = file.strip_prefix("docs/contract/") else {
            continue;
        };
        if !name.ends_with(".md") {
            continue;
        }
        let content = read(&file);
        for link in content.split("](").skip(1) {
            let link = link.split(')').next().unwrap_or_default();
            let (target, anchor) = link.split_once('#').unwrap_or((link, ""));
            if link.contains("://") {
                continue;
            }
            let target = if target.is_empty() { name } else { target };
            let path = root.join("docs/contract").join(target);
            if !path.exists() {
                missing.push(format!("{file} links to {target}"));
            } else if !anchor.is_empty() && !anchors(&path).contains(&anchor.to_owned()) {
                missing.push(format!(
                    "{file} links to {target}#{anchor}, a heading it lacks"
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths that do not exist:\n{}",
        missing.join("\n")
    );
}

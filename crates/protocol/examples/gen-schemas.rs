//! Writes the JSON Schemas of every wire message to `schemas/` at the workspace root:
//! `cargo run -p protocol --example gen-schemas` (what `just schemas` runs).
//!
//! Removes `*.schema.json` files that no type generates any more, so a renamed message leaves no
//! stale schema behind. Touches nothing else in `schemas/` (examples, AsyncAPI, README).

use std::path::{Path, PathBuf};
use std::{fs, io};

fn main() -> io::Result<()> {
    let dir = schemas_dir();
    fs::create_dir_all(&dir)?;
    let files = protocol::schema::generate();

    let mut changed = 0;
    for file in &files {
        let path = dir.join(&file.file_name);
        if fs::read_to_string(&path).ok().as_deref() != Some(file.contents.as_str()) {
            fs::write(&path, &file.contents)?;
            changed += 1;
            println!("wrote {}", path.display());
        }
    }

    for entry in fs::read_dir(&dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".schema.json") && !files.iter().any(|f| f.file_name == name) {
            fs::remove_file(&path)?;
            changed += 1;
            println!("removed stale {}", path.display());
        }
    }

    println!(
        "{} schemas in {} ({changed} changed)",
        files.len(),
        dir.display()
    );
    Ok(())
}

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

//! Writes the JSON Schemas of `croupier replay --json` to `schemas/audit/`:
//! `cargo run -p audit --example gen-audit-schemas` (part of `just schemas`).

use std::path::PathBuf;
use std::{fs, io};

fn main() -> io::Result<()> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/audit");
    fs::create_dir_all(&dir)?;
    for file in audit::schema::generate() {
        let path = dir.join(file.file_name);
        if fs::read_to_string(&path).ok().as_deref() != Some(file.contents.as_str()) {
            fs::write(&path, &file.contents)?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

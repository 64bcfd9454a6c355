//! `.data/endpoints.env`: where `just up` writes the endpoints of the stack it runs
//! (`docs/contract/cli.md`).
//! The CLI reads it for any of those variables the environment does not set, so that
//! `croupier token` or `croupier wallet deposit` in another shell find the running stack.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Variables read from the file, by name.
#[derive(Debug, Default, Clone)]
pub struct Endpoints {
    values: HashMap<String, String>,
}

impl Endpoints {
    /// Finds `.data/endpoints.env` in the working directory or its nearest ancestor holding one
    /// (`CROUPIER_ENDPOINTS_FILE` names another file). A missing file is no error.
    pub fn discover() -> Self {
        let path = std::env::var_os("CROUPIER_ENDPOINTS_FILE")
            .map(PathBuf::from)
            .or_else(|| {
                let cwd = std::env::current_dir().ok()?;
                cwd.ancestors()
                    .map(|dir| dir.join(".data/endpoints.env"))
                    .find(|candidate| candidate.is_file())
            });
        path.map(|p| Self::read(&p)).unwrap_or_default()
    }

    pub fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        Self {
            values: parse(&text),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
}

/// Parses POSIX-shell `KEY='value'` lines (a `'\''` inside stands for one quote); comments and
/// anything else are skipped.
fn parse(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.trim().split_once('=')?;
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return None;
            }
            let value = value.strip_prefix('\'')?.strip_suffix('\'')?;
            Some((key.to_string(), value.replace("'\\''", "'")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn shell_quoted_lines_are_read_and_the_rest_skipped() {
        let map = parse(
            "# comment\nNATS_URL='nats://127.0.0.1:4223'\nX='it'\\''s'\nbroken line\nY=unquoted\n",
        );
        assert_eq!(
            map.get("NATS_URL").map(String::as_str),
            Some("nats://127.0.0.1:4223")
        );
        assert_eq!(map.get("X").map(String::as_str), Some("it's"));
        assert!(!map.contains_key("Y"));
        assert_eq!(map.len(), 2);
    }
}

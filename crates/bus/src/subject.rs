//! NATS subject rules shared by both adapters: validation of names and subjects, and wildcard
//! matching (`*` one token, `>` one or more trailing tokens) for the in-process adapter.

use crate::error::BusError;

/// Whether `subject` (no wildcards) matches `pattern`.
pub(crate) fn matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for pattern_token in pattern.split('.') {
        match (pattern_token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(token)) if literal == token => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Whether some subject could match both patterns (used to refuse overlapping streams).
pub(crate) fn overlaps(a: &str, b: &str) -> bool {
    let mut a_tokens = a.split('.');
    let mut b_tokens = b.split('.');
    loop {
        match (a_tokens.next(), b_tokens.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A subject a message is published or requested on: non-empty tokens, no wildcards, no
/// whitespace.
pub(crate) fn check_subject(subject: &str) -> Result<(), BusError> {
    check_tokens(subject, false).map_err(|detail| BusError::invalid("subject", detail))
}

/// A subject filter: like a subject, but `*` may stand for a token and `>` for the tail.
pub(crate) fn check_filter(filter: &str) -> Result<(), BusError> {
    check_tokens(filter, true).map_err(|detail| BusError::invalid("subject filter", detail))
}

fn check_tokens(subject: &str, wildcards: bool) -> Result<(), String> {
    if subject.is_empty() {
        return Err("empty".into());
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!("{subject:?} has an empty token"));
        }
        if token.chars().any(char::is_whitespace) {
            return Err(format!("{subject:?} contains whitespace"));
        }
        let wildcard = *token == "*" || *token == ">";
        if wildcard && !wildcards {
            return Err(format!("{subject:?} contains a wildcard"));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err(format!("{subject:?} has '>' before its last token"));
        }
        if !wildcard && (token.contains('*') || token.contains('>')) {
            return Err(format!("{subject:?} has a wildcard inside a token"));
        }
    }
    Ok(())
}

/// A stream, consumer or bucket name, or the namespace prefix: `[A-Za-z0-9_-]+`.
pub(crate) fn check_name(what: &'static str, name: &str) -> Result<(), BusError> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(())
    } else {
        Err(BusError::invalid(
            what,
            format!("{name:?} must match [A-Za-z0-9_-]+"),
        ))
    }
}

/// A key-value key: tokens of `[A-Za-z0-9_=/-]`, separated by dots (JetStream KV rules).
pub(crate) fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.split('.').all(|token| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/' | '='))
        })
}

/// A key-value watch pattern: a key whose tokens may also be `*` or a final `>`.
pub(crate) fn valid_key_pattern(pattern: &str) -> bool {
    let tokens: Vec<&str> = pattern.split('.').collect();
    tokens.iter().enumerate().all(|(i, token)| match *token {
        "*" => true,
        ">" => i + 1 == tokens.len(),
        other => valid_key(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(matches("table.>", "table.roulette-1.round"));
        assert!(matches("table.*.round", "table.roulette-1.round"));
        assert!(!matches("table.*.round", "table.roulette-1.result"));
        assert!(!matches("table.>", "table"));
        assert!(!matches("table.*", "table.a.b"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
        assert!(!matches("a.b.c", "a.b"));
        assert!(matches(">", "anything.at.all"));
    }

    #[test]
    fn overlapping_patterns_are_detected() {
        assert!(overlaps("table.>", "table.a.round"));
        assert!(overlaps("table.*.round", "table.a.*"));
        assert!(!overlaps("table.>", "player.>"));
        assert!(!overlaps("a.*", "a.b.c"));
    }

    #[test]
    fn subjects_with_wildcards_or_empty_tokens_are_refused() {
        assert!(check_subject("table.a.round").is_ok());
        assert!(check_subject("table.*.round").is_err());
        assert!(check_subject("table..round").is_err());
        assert!(check_subject("").is_err());
        assert!(check_filter("table.*.>").is_ok());
        assert!(check_filter("table.>.round").is_err());
        assert!(check_filter("table.a*").is_err());
    }

    #[test]
    fn names_and_keys_follow_jetstream_rules() {
        assert!(check_name("prefix", "t0123abc_x-y").is_ok());
        assert!(check_name("prefix", "a.b").is_err());
        assert!(check_name("prefix", "").is_err());
        assert!(valid_key("roulette-1"));
        assert!(valid_key("a.b"));
        assert!(!valid_key("a b"));
        assert!(!valid_key(".a"));
        assert!(valid_key_pattern("a.*"));
        assert!(valid_key_pattern(">"));
        assert!(!valid_key_pattern("a.>.b"));
    }
}

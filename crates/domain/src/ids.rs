//! Identifiers: tables, players, rounds and bets (docs/contract/events.md).
//!
//! Table and player ids become NATS subject tokens and JWT subjects, so they are restricted to
//! `[A-Za-z0-9_-]{1,64}`: no dots, wildcards or spaces can ever reach a subject. Every id is a
//! newtype whose only way in is a parsing constructor (serde included), so a value of these
//! types is valid wherever it travels.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a string or number is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error(
        "id contains {character:?} at byte {index}; only A-Z, a-z, 0-9, '_' and '-' are allowed"
    )]
    InvalidCharacter { character: char, index: usize },
    #[error("round numbers start at 1")]
    ZeroRound,
    #[error("{0:?} is not a round number (decimal digits, at most u64::MAX)")]
    NotARoundNumber(String),
    #[error("bet id is not a UUID: {0}")]
    InvalidUuid(#[source] uuid::Error),
}

/// The longest table or player id, in bytes.
pub const MAX_NAME_LEN: usize = 64;

fn check_name(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    // Look for a bad character before the length so a long id with a bad byte reports the byte,
    // which is the more useful message.
    if let Some((index, character)) = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(IdError::InvalidCharacter { character, index });
    }
    if s.len() > MAX_NAME_LEN {
        return Err(IdError::TooLong {
            len: s.len(),
            max: MAX_NAME_LEN,
        });
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses an id matching `[A-Za-z0-9_-]{1,64}`.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_name(s)?;
                Ok(Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(s: String) -> Result<Self, IdError> {
                check_name(&s)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_id!(
    /// A table, e.g. `roulette-1`. Part of NATS subjects (`table.<t>.round`) and of the fairness
    /// message, so its exact bytes matter.
    TableId
);

name_id!(
    /// A player, e.g. `alice`: the JWT `sub` and the `player.<p>` subject token.
    PlayerId
);

/// A round number within one table: 1, 2, 3, ...
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct RoundId(u64);

impl RoundId {
    /// The first round of every table.
    pub const FIRST: RoundId = RoundId(1);

    pub fn new(n: u64) -> Result<Self, IdError> {
        if n == 0 {
            Err(IdError::ZeroRound)
        } else {
            Ok(Self(n))
        }
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// The round after this one; `None` only after `u64::MAX` rounds, which no table will reach,
    /// but a silent wrap would reuse a round id.
    pub fn next(self) -> Option<RoundId> {
        self.0.checked_add(1).map(RoundId)
    }
}

impl TryFrom<u64> for RoundId {
    type Error = IdError;

    fn try_from(n: u64) -> Result<Self, IdError> {
        Self::new(n)
    }
}

impl From<RoundId> for u64 {
    fn from(id: RoundId) -> u64 {
        id.0
    }
}

impl FromStr for RoundId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        // u64's own parser accepts a leading '+'; a round is plain decimal digits only.
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse::<u64>()
                .map_err(|_| IdError::NotARoundNumber(s.to_owned()))
                .and_then(Self::new)
        } else {
            Err(IdError::NotARoundNumber(s.to_owned()))
        }
    }
}

impl fmt::Display for RoundId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A bet, identified by a UUID the client chooses: it is the idempotency key of the bet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BetId(Uuid);

impl BetId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        Uuid::parse_str(s).map(Self).map_err(IdError::InvalidUuid)
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl TryFrom<String> for BetId {
    type Error = IdError;

    fn try_from(s: String) -> Result<Self, IdError> {
        Self::parse(&s)
    }
}

// uuid's own serde writes 16 raw bytes to MessagePack (a non-human-readable format); the wire
// contract is the same hyphenated string in JSON and MessagePack. Written from a stack buffer and
// read from the borrowed text, so neither way allocates.
impl Serialize for BetId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = Uuid::encode_buffer();
        serializer.serialize_str(self.0.hyphenated().encode_lower(&mut text))
    }
}

impl<'de> Deserialize<'de> for BetId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::text::deserialize_parsed(deserializer, "a UUID string", BetId::parse)
    }
}

impl From<BetId> for String {
    fn from(id: BetId) -> String {
        id.0.hyphenated().to_string()
    }
}

impl From<Uuid> for BetId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl FromStr for BetId {
    type Err = IdError;

    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::parse(s)
    }
}

impl fmt::Display for BetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_id_accepts_letters_digits_underscore_and_dash() {
        let id = TableId::parse("vip_7-Roulette").expect("valid id");
        assert_eq!(id.as_str(), "vip_7-Roulette");
        assert_eq!(id.to_string(), "vip_7-Roulette");
    }

    #[test]
    fn table_id_of_64_bytes_is_accepted_and_65_is_refused() {
        assert!(TableId::parse(&"a".repeat(64)).is_ok());
        assert_eq!(
            TableId::parse(&"a".repeat(65)),
            Err(IdError::TooLong { len: 65, max: 64 })
        );
    }

    #[test]
    fn ids_that_would_break_a_nats_subject_are_refused() {
        for bad in ["", "a.b", "a b", "*", ">", "tab\u{e9}", "a\n"] {
            assert!(PlayerId::parse(bad).is_err(), "{bad:?} should be refused");
            assert!(TableId::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(
            PlayerId::parse("al.ce"),
            Err(IdError::InvalidCharacter {
                character: '.',
                index: 2
            })
        );
    }

    #[test]
    fn player_id_deserialization_validates() {
        let ok: PlayerId = serde_json::from_str("\"alice\"").expect("valid");
        assert_eq!(ok.as_str(), "alice");
        assert!(serde_json::from_str::<PlayerId>("\"al ice\"").is_err());
        assert_eq!(serde_json::to_string(&ok).expect("serialize"), "\"alice\"");
    }

    #[test]
    fn round_zero_is_refused_and_rounds_count_up() {
        assert_eq!(RoundId::new(0), Err(IdError::ZeroRound));
        let first = RoundId::new(1).expect("valid");
        assert_eq!(first, RoundId::FIRST);
        assert_eq!(first.next().map(RoundId::get), Some(2));
        assert_eq!(RoundId::new(u64::MAX).expect("valid").next(), None);
    }

    #[test]
    fn round_id_is_an_integer_on_the_wire_and_zero_is_refused() {
        let r: RoundId = serde_json::from_str("42").expect("valid");
        assert_eq!(r.get(), 42);
        assert_eq!(serde_json::to_string(&r).expect("serialize"), "42");
        assert!(serde_json::from_str::<RoundId>("0").is_err());
        assert!(serde_json::from_str::<RoundId>("-1").is_err());
    }

    #[test]
    fn round_id_parses_plain_decimal_digits_only() {
        assert_eq!("17".parse::<RoundId>().map(RoundId::get), Ok(17));
        for bad in ["", "0", "+1", "-1", "1a", " 1", "99999999999999999999"] {
            assert!(bad.parse::<RoundId>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn bet_id_is_a_hyphenated_string_in_json_and_messagepack() {
        let id = BetId::parse("6F9619FF-8B86-4011-B42D-00C04FC964FF").expect("valid");
        let text = "6f9619ff-8b86-4011-b42d-00c04fc964ff";
        assert_eq!(id.to_string(), text);
        assert_eq!(
            serde_json::to_string(&id).expect("serialize"),
            format!("\"{text}\"")
        );
        let packed = rmp_serde::to_vec_named(&id).expect("serialize");
        let expected = rmp_serde::to_vec_named(text).expect("serialize");
        assert_eq!(packed, expected);
        let back: BetId = rmp_serde::from_slice(&packed).expect("deserialize");
        assert_eq!(back, id);
        assert!(BetId::parse("not-a-uuid").is_err());
    }
}

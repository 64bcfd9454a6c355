//! Small serde helpers shared by the wire types: strict buffering and tag dispatch for the
//! messages tagged by `type` or `kind`, UUIDs as strings in every encoding, and stakes (amounts
//! that must be at least 1 minor unit).
//!
//! Why tags are dispatched by hand: serde's derived `#[serde(tag = ...)]` reads a tag through
//! its buffered `Content`, which takes an integer as the index of a variant, so
//! `{"kind": 0, ...}` nested in a message would be a `round_opened`. Here a tag must be one of
//! the variant names, as a string.

use std::borrow::Cow;

use serde::de::value::{BorrowedStrDeserializer, MapDeserializer, SeqDeserializer};
use serde::de::{self, IntoDeserializer, MapAccess, SeqAccess, Unexpected, Visitor};
use serde::{Deserialize, Deserializer};

/// A UUID as its lowercase hyphenated string, in JSON and MessagePack alike (uuid's own serde
/// would write 16 raw bytes to MessagePack).
pub(crate) mod uuid_string {
    use serde::{Deserializer, Serializer};
    use uuid::Uuid;

    pub(crate) fn serialize<S: Serializer>(id: &Uuid, serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = Uuid::encode_buffer();
        serializer.serialize_str(id.hyphenated().encode_lower(&mut text))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Uuid, D::Error> {
        domain::text::deserialize_parsed(deserializer, "a string", |text| {
            Uuid::try_parse(text).map_err(|e| format!("not a UUID: {e}"))
        })
    }
}

/// An amount staked, refunded or deposited: `1 ..= 2^53 − 1` (`docs/contract/events.md`). `Money`
/// alone admits zero, which is right for balances and payouts but not for these.
pub(crate) mod stake {
    use domain::Money;
    use serde::{Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        amount: &Money,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        amount.serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Money, D::Error> {
        deserializer.deserialize_i64(StakeVisitor)
    }

    struct StakeVisitor;

    impl serde::de::Visitor<'_> for StakeVisitor {
        type Value = Money;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an amount in minor units, an integer from 1 to 2^53 - 1")
        }

        fn visit_i64<E: serde::de::Error>(self, minor: i64) -> Result<Money, E> {
            Money::stake(minor).map_err(E::custom)
        }

        fn visit_u64<E: serde::de::Error>(self, minor: u64) -> Result<Money, E> {
            match i64::try_from(minor) {
                Ok(minor) => Money::stake(minor).map_err(E::custom),
                Err(_) => Err(E::custom(format_args!(
                    "amount {minor} exceeds the maximum of {}",
                    Money::MAX_MINOR
                ))),
            }
        }
    }
}

/// A message's data read strictly from any self-describing format, before any of it is typed:
/// map keys are strings and unique, strings are UTF-8, numbers finite, and there are no binary or
/// extension values. MessagePack is read through it so that it means exactly what the same JSON
/// means (see `codec`), and messages tagged by a field buffer themselves in it (see
/// [`buffer_object`]).
///
/// Strings and keys borrow from the input where the format allows (JSON without escapes,
/// MessagePack read from a slice), so buffering a message costs one vector per map or array. A
/// number is kept as JSON keeps it: `U64` for every integer from 0 up, `I64` only below 0.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Raw<'de> {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(Cow<'de, str>),
    Seq(Vec<Raw<'de>>),
    Map(Vec<(Cow<'de, str>, Raw<'de>)>),
}

/// The most items or entries a buffered array or map reserves room for because its length header
/// says so; more grow as they arrive. Our largest map has 11 entries.
const PRESIZED: usize = 16;

/// Up to this many keys a map's keys are checked for duplicates as each arrives; a bigger map
/// (no message of ours has one) is checked once, sorted, so a hostile map costs `n log n`.
const KEYS_CHECKED_ONE_BY_ONE: usize = 16;

impl<'de> Raw<'de> {
    /// The value of `key`, if this is a map that has it.
    pub(crate) fn get(&self, key: &str) -> Option<&Raw<'de>> {
        match self {
            Raw::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Raw::Str(s) => Some(s),
            _ => None,
        }
    }

    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Raw::Null => Unexpected::Unit,
            Raw::Bool(b) => Unexpected::Bool(*b),
            Raw::U64(u) => Unexpected::Unsigned(*u),
            Raw::I64(i) => Unexpected::Signed(*i),
            Raw::F64(f) => Unexpected::Float(*f),
            Raw::Str(s) => Unexpected::Str(s),
            Raw::Seq(_) => Unexpected::Seq,
            Raw::Map(_) => Unexpected::Map,
        }
    }
}

impl<'de> Deserialize<'de> for Raw<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Raw<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("null, a boolean, a number, a string, an array or a map with string keys")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Raw<'de>, E> {
        Ok(Raw::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Raw<'de>, E> {
        Ok(u64::try_from(v).map_or(Raw::I64(v), Raw::U64))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Raw<'de>, E> {
        Ok(Raw::U64(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Raw<'de>, E> {
        if v.is_finite() {
            Ok(Raw::F64(v))
        } else {
            Err(E::custom("a number must be finite"))
        }
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Raw<'de>, E> {
        Ok(Raw::Str(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Raw<'de>, E> {
        Ok(Raw::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Raw<'de>, E> {
        Ok(Raw::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Raw<'de>, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Raw<'de>, A::Error> {
        // The length header is not to be trusted: it sizes the vector only up to a small cap.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(PRESIZED));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Raw::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw<'de>, A::Error> {
        let mut entries: Vec<(Cow<'de, str>, Raw<'de>)> =
            Vec::with_capacity(map.size_hint().unwrap_or(0).min(PRESIZED));
        while let Some(Key(key)) = map.next_key()? {
            if entries.len() < KEYS_CHECKED_ONE_BY_ONE && entries.iter().any(|(k, _)| *k == key) {
                return Err(duplicate_key(&key));
            }
            let value = map.next_value()?;
            entries.push((key, value));
        }
        if entries.len() > KEYS_CHECKED_ONE_BY_ONE {
            let mut keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_ref()).collect();
            keys.sort_unstable();
            if let Some(pair) = keys.windows(2).find(|pair| pair[0] == pair[1]) {
                return Err(duplicate_key(pair[0]));
            }
        }
        Ok(Raw::Map(entries))
    }
}

fn duplicate_key<E: de::Error>(key: &str) -> E {
    E::custom(format_args!("duplicate key `{key}`"))
}

/// A map key: a string, borrowed where the input allows (read as any value is, then refused
/// unless it is a string).
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match deserializer.deserialize_str(RawVisitor)? {
            Raw::Str(key) => Ok(Key(key)),
            other => Err(de::Error::invalid_type(other.unexpected(), &"a string")),
        }
    }
}

/// Reads typed data out of a buffered [`Raw`], as serde_json reads it out of a `Value`: strings
/// are lent (so a typed reader copies only what it keeps), `null` is `None`, an enum is its
/// variant's name, and errors are serde_json's (with no position: the bytes were read already).
/// (Its `Deserializer` lifetime is the borrow of the buffer, named `'de` there because serde's
/// forwarding macro requires that name.)
#[derive(Clone, Copy)]
pub(crate) struct RawDeserializer<'a, 'de>(pub(crate) &'a Raw<'de>);

impl<'a> IntoDeserializer<'a, serde_json::Error> for RawDeserializer<'a, '_> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for RawDeserializer<'de, '_> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Raw::Null => visitor.visit_unit(),
            Raw::Bool(b) => visitor.visit_bool(*b),
            Raw::U64(u) => visitor.visit_u64(*u),
            Raw::I64(i) => visitor.visit_i64(*i),
            Raw::F64(f) => visitor.visit_f64(*f),
            Raw::Str(s) => visitor.visit_borrowed_str(s),
            Raw::Seq(items) => {
                let mut seq = SeqDeserializer::new(items.iter().map(RawDeserializer));
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            Raw::Map(entries) => {
                let mut map = MapDeserializer::new(
                    entries
                        .iter()
                        .map(|(k, v)| (BorrowedStrDeserializer::new(k), RawDeserializer(v))),
                );
                let value = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(value)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Raw::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Raw::Str(s) => visitor.visit_enum(BorrowedStrDeserializer::new(s)),
            other => Err(de::Error::invalid_type(other.unexpected(), &"a string")),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Raw::Str(s) => visitor.visit_borrowed_str(s),
            other => Err(de::Error::invalid_type(other.unexpected(), &visitor)),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_str(visitor)
    }

    /// A field name or an enum tag must be a string: serde's own readers of identifiers would
    /// take an integer as a variant's index (`{"kind": 0}` would be the first kind).
    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
        unit_struct seq tuple tuple_struct map struct
    }
}

/// Reads one object into a buffer, strictly (see [`Raw`]).
pub(crate) fn buffer_object<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Raw<'de>, D::Error> {
    match Raw::deserialize(deserializer)? {
        object @ Raw::Map(_) => Ok(object),
        other => Err(de::Error::invalid_type(other.unexpected(), &"an object")),
    }
}

/// The tag `field` of a buffered object: present, a string, and one of `variants`.
pub(crate) fn tag<'a, E: de::Error>(
    object: &'a Raw<'_>,
    field: &'static str,
    variants: &'static [&'static str],
) -> Result<&'a str, E> {
    match object.get(field) {
        None => Err(E::missing_field(field)),
        Some(Raw::Str(name)) if variants.contains(&name.as_ref()) => Ok(name),
        Some(Raw::Str(name)) => Err(E::unknown_variant(name, variants)),
        Some(other) => Err(E::invalid_type(other.unexpected(), &"a string")),
    }
}

/// Reads a message's fields from its buffered object; fields it does not know (the tag among
/// them) are ignored.
pub(crate) fn from_buffer<'a, T: Deserialize<'a>, E: de::Error>(
    object: &'a Raw<'_>,
) -> Result<T, E> {
    T::deserialize(RawDeserializer(object)).map_err(E::custom)
}

/// A field that must be present, as `null` or a value: serde would take a missing `Option`
/// field as `None` too, and the contract refuses an event with a field missing.
pub(crate) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    Option::<T>::deserialize(deserializer)
}

/// A selection, which must be an object: the domain's own reader would also take the positional
/// array `["straight", [17]]`, which the contract does not allow.
pub(crate) fn selection<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<domain::Selection, D::Error> {
    let object = buffer_object(deserializer)?;
    from_buffer(&object)
}

//! Small serde helpers shared by the wire types: strict buffering and tag dispatch for the
//! messages tagged by `type` or `kind`, UUIDs as strings in every encoding, and stakes (amounts
//! that must be at least 1 minor unit).
//!
//! Why tags are dispatched by hand: serde's derived `#[serde(tag = ...)]` reads a tag through
//! its buffered `Content`, which takes an integer as the index of a variant, so
//! `{"kind": 0, ...}` nested in a message would be a `round_opened`. Here a tag must be one of
//! the variant names, as a string.

use serde::de::{self, DeserializeOwned, MapAccess, SeqAccess, Unexpected, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

/// A UUID as its lowercase hyphenated string, in JSON and MessagePack alike (uuid's own serde
/// would write 16 raw bytes to MessagePack).
pub(crate) mod uuid_string {
    use serde::{Deserialize, Deserializer, Serializer};
    use uuid::Uuid;

    pub(crate) fn serialize<S: Serializer>(id: &Uuid, serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = Uuid::encode_buffer();
        serializer.serialize_str(id.hyphenated().encode_lower(&mut text))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Uuid, D::Error> {
        let text = String::deserialize(deserializer)?;
        Uuid::try_parse(&text)
            .map_err(|e| serde::de::Error::custom(format_args!("not a UUID: {e}")))
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

/// JSON data read strictly from any self-describing format: map keys are strings and unique,
/// strings are UTF-8, numbers finite, and there are no binary or extension values. MessagePack is
/// read through it so that it means exactly what the same JSON means (see `codec`), and tagged
/// messages buffer themselves in it (see [`buffer_object`]).
pub(crate) struct Strict(pub(crate) Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

pub(crate) struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("null, a boolean, a number, a string, an array or a map with string keys")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number must be finite"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // No capacity from the length header: it is not to be trusted.
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate key `{key}`")));
            }
            let Strict(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Reads one object into a buffer, strictly (see [`Strict`]).
pub(crate) fn buffer_object<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
    match Strict::deserialize(deserializer)?.0 {
        object @ Value::Object(_) => Ok(object),
        other => Err(de::Error::invalid_type(unexpected(&other), &"an object")),
    }
}

/// The tag `field` of a buffered object: present, a string, and one of `variants`.
pub(crate) fn tag<'a, E: de::Error>(
    object: &'a Value,
    field: &'static str,
    variants: &'static [&'static str],
) -> Result<&'a str, E> {
    match object.get(field) {
        None => Err(E::missing_field(field)),
        Some(Value::String(name)) if variants.contains(&name.as_str()) => Ok(name),
        Some(Value::String(name)) => Err(E::unknown_variant(name, variants)),
        Some(other) => Err(E::invalid_type(unexpected(other), &"a string")),
    }
}

/// Reads a message's fields from its buffered object; fields it does not know (the tag among
/// them) are ignored.
pub(crate) fn from_buffer<T: DeserializeOwned, E: de::Error>(object: &Value) -> Result<T, E> {
    T::deserialize(object).map_err(E::custom)
}

fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Unexpected::Unsigned(u),
            (None, Some(i), _) => Unexpected::Signed(i),
            (None, None, Some(f)) => Unexpected::Float(f),
            (None, None, None) => Unexpected::Other("number"),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
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

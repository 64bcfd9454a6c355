//! Values the wire carries as strings (ids, timestamps, hex digests), read from the string the
//! deserializer lends, so reading one allocates nothing that the value does not keep.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserializer;

/// Reads a string and turns it into a `T` with `parse`; its error becomes the deserializer's
/// (a custom error with `parse`'s text). `expecting` completes "invalid type: …, expected …".
pub fn deserialize_parsed<'de, D, T, E, P>(
    deserializer: D,
    expecting: &'static str,
    parse: P,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    E: fmt::Display,
    P: FnOnce(&str) -> Result<T, E>,
{
    deserializer.deserialize_str(Parsed {
        expecting,
        parse,
        value: PhantomData,
    })
}

struct Parsed<P, T> {
    expecting: &'static str,
    parse: P,
    value: PhantomData<fn() -> T>,
}

impl<T, E: fmt::Display, P: FnOnce(&str) -> Result<T, E>> serde::de::Visitor<'_> for Parsed<P, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<Error: serde::de::Error>(self, s: &str) -> Result<T, Error> {
        (self.parse)(s).map_err(Error::custom)
    }
}

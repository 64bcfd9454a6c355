//! A MessagePack reader over a byte slice, for the few shapes an event has (a map of strings,
//! integers, nil, and one nested selection map): values are borrowed from the slice, a
//! skipped value costs its length and nothing else, and every malformed input is an error
//! naming what was found where. `rmp` classifies the markers; only the lengths are read here.
//!
//! It replaces `rmp_serde` in the audit's decoder (ADR 0018, session 12): serde's generic
//! visitors, a UTF-8 check of every string and an allocation per selection were a fifth of a
//! whole replay's CPU, paid three times per event.

use rmp::Marker;

/// Nesting a skipped value may have (an event has at most two levels).
const MAX_DEPTH: u8 = 8;

/// A value read as a number: MessagePack keeps the sign in the marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int {
    Unsigned(u64),
    Negative(i64),
}

impl Int {
    pub fn to_u64(self) -> Option<u64> {
        match self {
            Int::Unsigned(u) => Some(u),
            Int::Negative(_) => None,
        }
    }

    pub fn to_i64(self) -> Option<i64> {
        match self {
            Int::Unsigned(u) => i64::try_from(u).ok(),
            Int::Negative(i) => Some(i),
        }
    }
}

/// The reader: a slice and the offset of the next byte.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    /// Whether every byte was read.
    pub fn is_done(&self) -> bool {
        self.at == self.bytes.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| format!("ends inside a value at byte {}", self.at))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    /// A big-endian unsigned integer of `n` (1, 2, 4 or 8) bytes.
    fn be(&mut self, n: usize) -> Result<u64, String> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn len(&mut self, n: usize) -> Result<usize, String> {
        usize::try_from(self.be(n)?).map_err(|_| "a length beyond memory".to_string())
    }

    fn marker(&mut self) -> Result<Marker, String> {
        Ok(Marker::from_u8(self.take(1)?[0]))
    }

    /// What the next value is, for an error message.
    fn found(&self, marker: Marker) -> String {
        let what = match marker {
            Marker::FixPos(_)
            | Marker::FixNeg(_)
            | Marker::U8
            | Marker::U16
            | Marker::U32
            | Marker::U64
            | Marker::I8
            | Marker::I16
            | Marker::I32
            | Marker::I64 => "an integer",
            Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => "a map",
            Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => "an array",
            Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => "a string",
            Marker::Null => "nil",
            Marker::True | Marker::False => "a boolean",
            Marker::F32 | Marker::F64 => "a float",
            Marker::Bin8 | Marker::Bin16 | Marker::Bin32 => "binary",
            _ => "an extension",
        };
        format!("{what} at byte {}", self.at.saturating_sub(1))
    }

    /// The length of a map whose marker is next.
    pub fn map_len(&mut self) -> Result<usize, String> {
        let start = self.at;
        self.opt_map_len()?
            .ok_or_else(|| format!("a map expected, nil at byte {start}"))
    }

    /// The length of a map whose marker is next, or `None` for nil.
    pub fn opt_map_len(&mut self) -> Result<Option<usize>, String> {
        match self.marker()? {
            Marker::Null => Ok(None),
            Marker::FixMap(n) => Ok(Some(usize::from(n))),
            Marker::Map16 => self.len(2).map(Some),
            Marker::Map32 => self.len(4).map(Some),
            other => Err(format!("a map expected, {}", self.found(other))),
        }
    }

    /// The length of an array whose marker is next, or `None` for nil.
    pub fn opt_array_len(&mut self) -> Result<Option<usize>, String> {
        match self.marker()? {
            Marker::Null => Ok(None),
            Marker::FixArray(n) => Ok(Some(usize::from(n))),
            Marker::Array16 => self.len(2).map(Some),
            Marker::Array32 => self.len(4).map(Some),
            other => Err(format!("an array expected, {}", self.found(other))),
        }
    }

    fn str_after(&mut self, marker: Marker) -> Result<Option<&'a [u8]>, String> {
        let n = match marker {
            Marker::FixStr(n) => usize::from(n),
            Marker::Str8 => self.len(1)?,
            Marker::Str16 => self.len(2)?,
            Marker::Str32 => self.len(4)?,
            _ => return Ok(None),
        };
        self.take(n).map(Some)
    }

    /// A string's bytes, not checked for UTF-8 (for map keys, compared with known ASCII names).
    pub fn key(&mut self) -> Result<&'a [u8], String> {
        let marker = self.marker()?;
        self.str_after(marker)?
            .ok_or_else(|| format!("a string key expected, {}", self.found(marker)))
    }

    /// A string, or `None` for nil.
    pub fn opt_str(&mut self) -> Result<Option<&'a str>, String> {
        let marker = self.marker()?;
        if marker == Marker::Null {
            return Ok(None);
        }
        let bytes = self
            .str_after(marker)?
            .ok_or_else(|| format!("a string expected, {}", self.found(marker)))?;
        std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| format!("a string that is not UTF-8 before byte {}", self.at))
    }

    /// A string (nil is an error).
    pub fn str(&mut self) -> Result<&'a str, String> {
        let start = self.at;
        self.opt_str()?
            .ok_or_else(|| format!("a string expected, nil at byte {start}"))
    }

    /// An integer, or `None` for nil.
    pub fn opt_int(&mut self) -> Result<Option<Int>, String> {
        let marker = self.marker()?;
        Ok(Some(match marker {
            Marker::Null => return Ok(None),
            Marker::FixPos(n) => Int::Unsigned(u64::from(n)),
            Marker::FixNeg(n) => Int::Negative(i64::from(n)),
            Marker::U8 => Int::Unsigned(self.be(1)?),
            Marker::U16 => Int::Unsigned(self.be(2)?),
            Marker::U32 => Int::Unsigned(self.be(4)?),
            Marker::U64 => Int::Unsigned(self.be(8)?),
            // Two's complement of the width read, sign-extended.
            Marker::I8 => int(self.be(1)? as u8 as i8 as i64),
            Marker::I16 => int(self.be(2)? as u16 as i16 as i64),
            Marker::I32 => int(self.be(4)? as u32 as i32 as i64),
            Marker::I64 => int(self.be(8)? as i64),
            other => return Err(format!("an integer expected, {}", self.found(other))),
        }))
    }

    /// Skips one value of any kind.
    pub fn skip(&mut self) -> Result<(), String> {
        self.skip_nested(0)
    }

    fn skip_nested(&mut self, depth: u8) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(format!("values nested deeper than {MAX_DEPTH}"));
        }
        let marker = self.marker()?;
        let (bytes, items) = match marker {
            Marker::FixPos(_)
            | Marker::FixNeg(_)
            | Marker::Null
            | Marker::True
            | Marker::False
            | Marker::Reserved => (0, 0),
            Marker::U8 | Marker::I8 => (1, 0),
            Marker::U16 | Marker::I16 => (2, 0),
            Marker::U32 | Marker::I32 | Marker::F32 => (4, 0),
            Marker::U64 | Marker::I64 | Marker::F64 => (8, 0),
            Marker::FixStr(n) => (usize::from(n), 0),
            Marker::Str8 | Marker::Bin8 => (self.len(1)?, 0),
            Marker::Str16 | Marker::Bin16 => (self.len(2)?, 0),
            Marker::Str32 | Marker::Bin32 => (self.len(4)?, 0),
            Marker::FixExt1 => (2, 0),
            Marker::FixExt2 => (3, 0),
            Marker::FixExt4 => (5, 0),
            Marker::FixExt8 => (9, 0),
            Marker::FixExt16 => (17, 0),
            Marker::Ext8 => (self.len(1)? + 1, 0),
            Marker::Ext16 => (self.len(2)? + 1, 0),
            Marker::Ext32 => (self.len(4)?.saturating_add(1), 0),
            Marker::FixArray(n) => (0, usize::from(n)),
            Marker::Array16 => (0, self.len(2)?),
            Marker::Array32 => (0, self.len(4)?),
            Marker::FixMap(n) => (0, 2 * usize::from(n)),
            Marker::Map16 => (0, 2 * self.len(2)?),
            Marker::Map32 => (0, self.len(4)?.saturating_mul(2)),
        };
        self.take(bytes)?;
        for _ in 0..items {
            self.skip_nested(depth + 1)?;
        }
        Ok(())
    }
}

fn int(i: i64) -> Int {
    if i >= 0 {
        Int::Unsigned(i as u64)
    } else {
        Int::Negative(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(value: &serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec_named(value).expect("encodes")
    }

    #[test]
    fn integers_of_every_width_and_sign_read_as_written() {
        for n in [
            0i64,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            4_294_967_295,
            4_294_967_296,
            i64::MAX,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32_768,
            -32_769,
            i64::from(i32::MIN),
            i64::from(i32::MIN) - 1,
            i64::MIN,
        ] {
            let bytes = rmp_serde::to_vec(&n).expect("encodes");
            let mut reader = Reader::new(&bytes);
            assert_eq!(
                reader.opt_int().expect("reads").and_then(Int::to_i64),
                Some(n)
            );
            assert!(reader.is_done());
        }
        let bytes = rmp_serde::to_vec(&u64::MAX).expect("encodes");
        let read = Reader::new(&bytes).opt_int().expect("reads");
        assert_eq!(read, Some(Int::Unsigned(u64::MAX)));
        assert_eq!(read.and_then(Int::to_i64), None);
    }

    #[test]
    fn every_kind_of_value_is_skipped_to_its_end() {
        let long = "x".repeat(70_000);
        let value = serde_json::json!([
            null, true, false, 1, -1, 300, -300, 70_000, 5_000_000_000u64, 1.5, "short",
            long, [1, [2, [3]]], {"a": {"b": [1, 2]}, "c": null}
        ]);
        let mut bytes = encode(&value);
        bytes.extend_from_slice(&[0xc4, 2, 9, 9, 0xd4, 1, 7, 0xc7, 1, 5, 6]); // bin, fixext, ext8
        let mut reader = Reader::new(&bytes);
        for _ in 0..4 {
            reader.skip().expect("skips");
        }
        assert!(reader.is_done());
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        for bad in [
            &[][..],
            &[0xd9][..],                         // str8 without its length
            &[0xa5, b'a', b'b'][..],             // a string cut short
            &[0xdd, 0xff, 0xff, 0xff, 0xff][..], // array32 of 4G items, none there
            &[0xdf, 0xff, 0xff, 0xff, 0xff][..], // map32 likewise
            &[0xcb, 1, 2][..],                   // a float cut short
        ] {
            assert!(Reader::new(bad).skip().is_err(), "{bad:?}");
        }
        // Nesting beyond the limit.
        let deep = [0x91u8; 64];
        assert!(
            Reader::new(&deep)
                .skip()
                .expect_err("too deep")
                .contains("nested")
        );
        // A string that is not UTF-8.
        assert!(Reader::new(&[0xa2, 0xff, 0xfe]).str().is_err());
        // Types named in errors.
        let error = Reader::new(&[0x01]).str().expect_err("not a string");
        assert!(error.contains("an integer at byte 0"), "{error}");
        let error = Reader::new(&[0xa1, b'x'])
            .opt_int()
            .expect_err("not an int");
        assert!(error.contains("a string at byte 0"), "{error}");
    }
}

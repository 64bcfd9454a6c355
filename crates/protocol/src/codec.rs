//! The two encodings of the wire (`docs/contract/bus.md`, `docs/contract/websocket.md`): JSON and
//! MessagePack maps with named fields, the size limit every decoder enforces before it parses, and
//! the typed errors of both directions.
//!
//! Owns only the byte level: which message types exist is the business of `event`, `ws` and
//! `bus_rpc`. No decoder here panics, whatever the bytes (proptests hold it to that), and none
//! reserves memory because a length header asks for it: what a decoder builds is bounded by a
//! constant factor of the (at most 64 KiB) input.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error_code::ErrorCode;
use crate::event::Event;
use crate::serde_util::{Raw, RawDeserializer};

/// The largest message any decoder accepts: 64 KiB, the WebSocket message limit of
/// `docs/contract/websocket.md`.
/// The largest legitimate message (a `subscribed` with its table state) is well under 1 KiB, so
/// this only bounds what a hostile peer can make us parse.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// How deeply MessagePack arrays and maps may nest. Our deepest message (an `event` frame holding
/// a `bet_placed` with its selection's numbers) nests four levels; the bound keeps the stack a
/// hostile message can make the decoder use small. serde_json has its own fixed limit (128).
const MSGPACK_MAX_DEPTH: usize = 16;

/// One of the two encodings. On the WebSocket it is chosen by subprotocol; the bus always uses
/// MessagePack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `croupier.v1.json`: UTF-8 JSON in text frames. The default.
    Json,
    /// `croupier.v1.msgpack`: MessagePack maps with the same field names, in binary frames.
    MsgPack,
}

impl Encoding {
    /// The WebSocket subprotocol of JSON, the default.
    pub const JSON_SUBPROTOCOL: &'static str = "croupier.v1.json";
    /// The WebSocket subprotocol of MessagePack.
    pub const MSGPACK_SUBPROTOCOL: &'static str = "croupier.v1.msgpack";

    /// The encoding named by a `Sec-WebSocket-Protocol` token, if it is one of ours.
    pub fn from_subprotocol(token: &str) -> Option<Encoding> {
        match token.trim() {
            Self::JSON_SUBPROTOCOL => Some(Encoding::Json),
            Self::MSGPACK_SUBPROTOCOL => Some(Encoding::MsgPack),
            _ => None,
        }
    }

    /// Picks the first of the client's offered subprotocols that we speak, in the client's order
    /// of preference. `None` means none was offered that we know: serve JSON (the default) and
    /// echo no subprotocol.
    pub fn negotiate<'a, I>(offered: I) -> Option<Encoding>
    where
        I: IntoIterator<Item = &'a str>,
    {
        offered.into_iter().find_map(Self::from_subprotocol)
    }

    /// The subprotocol token to echo in the handshake.
    pub const fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => Self::JSON_SUBPROTOCOL,
            Encoding::MsgPack => Self::MSGPACK_SUBPROTOCOL,
        }
    }

    /// Whether messages travel in binary frames (MessagePack) rather than text frames (JSON).
    pub const fn is_binary(self) -> bool {
        matches!(self, Encoding::MsgPack)
    }

    /// Encodes a message: compact JSON, or a MessagePack map with named fields
    /// (`rmp_serde::to_vec_named`), so both carry the same keys.
    pub fn encode<T: Serialize + ?Sized>(self, message: &T) -> Result<Bytes, EncodeError> {
        match self {
            Encoding::Json => serde_json::to_vec(message)
                .map(Bytes::from)
                .map_err(EncodeError::Json),
            Encoding::MsgPack => rmp_serde::to_vec_named(message)
                .map(Bytes::from)
                .map_err(EncodeError::MsgPack),
        }
    }

    /// Decodes one message. Refuses input over [`MAX_MESSAGE_BYTES`] before looking at it, and
    /// anything that is not a single object (map) with nothing after it.
    ///
    /// Unknown fields are ignored (`docs/contract/websocket.md`); a missing or ill-typed field, an
    /// unknown `type` or `kind`, or an id, amount or selection that does not parse is an error.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, DecodeError> {
        check_size(bytes)?;
        match self {
            Encoding::Json => {
                if !json_starts_an_object(bytes) {
                    return Err(DecodeError::NotAnObject);
                }
                serde_json::from_slice(bytes).map_err(DecodeError::Json)
            }
            Encoding::MsgPack => {
                // Checked again after parsing; this spares parsing what cannot be a message.
                if !msgpack_starts_a_map(bytes) {
                    return Err(DecodeError::NotAnObject);
                }
                decode_msgpack(bytes)
            }
        }
    }
}

/// Why a value could not be encoded. With this crate's types it does not happen (every map key
/// is a string); the error exists so that callers need no `unwrap`.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot encode as JSON: {0}")]
    Json(serde_json::Error),
    #[error("cannot encode as MessagePack: {0}")]
    MsgPack(rmp_serde::encode::Error),
}

/// Why bytes are not a valid message. The `Display` text is meant for the `message` field of a
/// `BAD_MESSAGE` error: it says what is wrong and where, quoting at most the offending value
/// (which [`crate::ServerMessage::bad_message`] shortens).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message is {len} bytes; the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("a message must be a single object (a map)")]
    NotAnObject,
    #[error("invalid JSON message: {0}")]
    Json(serde_json::Error),
    #[error("invalid MessagePack message: {0}")]
    MsgPack(rmp_serde::decode::Error),
    /// Well-formed MessagePack that is not the expected message (unknown `type`, missing or
    /// ill-typed field, ...).
    #[error("invalid message: {0}")]
    Content(serde_json::Error),
    #[error("{trailing} unexpected bytes after the MessagePack message")]
    TrailingBytes { trailing: usize },
}

impl DecodeError {
    /// The WebSocket error code for this failure: always `BAD_MESSAGE`. (The gateway refuses an
    /// oversized frame with close code 1009 before it gets here.)
    pub const fn code(&self) -> ErrorCode {
        ErrorCode::BadMessage
    }
}

/// Encodes an event for the bus (and for the store's `data` column): a MessagePack map with
/// named fields.
pub fn encode_event(event: &Event) -> Result<Bytes, EncodeError> {
    // Sized for a typical event (a bet's is about 230 bytes), so it is written without regrowing.
    let mut out = Vec::with_capacity(320);
    rmp_serde::encode::write_named(&mut out, event).map_err(EncodeError::MsgPack)?;
    Ok(Bytes::from(out))
}

/// Decodes an event from a bus payload (MessagePack), with the same limits as every decoder.
pub fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    Encoding::MsgPack.decode(bytes)
}

/// Recovers the `request_id` of a message that failed to decode, so that the `BAD_MESSAGE` reply
/// can name the request it answers (`docs/contract/websocket.md`). `None` unless the bytes are an
/// object within the size limit whose `request_id` is a string; every other field may be anything.
pub fn salvage_request_id(bytes: &[u8], encoding: Encoding) -> Option<String> {
    check_size(bytes).ok()?;
    let object = match encoding {
        Encoding::Json => {
            if !json_starts_an_object(bytes) {
                return None;
            }
            serde_json::from_slice::<Raw<'_>>(bytes).ok()?
        }
        Encoding::MsgPack => msgpack_raw(bytes).ok()?,
    };
    object.get("request_id")?.as_str().map(str::to_owned)
}

fn check_size(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        Err(DecodeError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE_BYTES,
        })
    } else {
        Ok(())
    }
}

// serde's derived structs also accept positional arrays; the contract says every message is an
// object, so the first byte must open one.
fn json_starts_an_object(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|b| *b == b'{')
}

fn msgpack_starts_a_map(bytes: &[u8]) -> bool {
    // fixmap 0x80..=0x8f, map 16 0xde, map 32 0xdf.
    bytes
        .first()
        .is_some_and(|b| matches!(b, 0x80..=0x8f | 0xde | 0xdf))
}

fn decode_msgpack<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    // Two steps. First the MessagePack is read into plain JSON data, strictly: map keys must be
    // strings and unique, strings UTF-8, no binary or extension values. Then the message is read
    // from that data exactly as from JSON text. Read directly, rmp-serde would take an integer
    // for an enum tag or a field name by its index (`{"type": 3}` would be a `ping`), so the
    // same bytes would mean something in MessagePack that they cannot mean in JSON.
    let raw = msgpack_raw(bytes)?;
    T::deserialize(RawDeserializer(&raw)).map_err(DecodeError::Content)
}

/// The first step of [`decode_msgpack`]: one map, strictly, with nothing after it. Strings are
/// borrowed from `bytes`, and nothing is reserved because a length header asks for it.
fn msgpack_raw(bytes: &[u8]) -> Result<Raw<'_>, DecodeError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(MSGPACK_MAX_DEPTH);
    let raw = Raw::deserialize(&mut de).map_err(DecodeError::MsgPack)?;
    // The borrowing reader does not say where it stopped; the value's markers and lengths do
    // (`value_end`).
    let trailing = trailing_bytes(bytes);
    if trailing > 0 {
        return Err(DecodeError::TrailingBytes { trailing });
    }
    if !matches!(raw, Raw::Map(_)) {
        return Err(DecodeError::NotAnObject);
    }
    Ok(raw)
}

/// How many bytes follow the first value of `bytes`, which has been read whole already: its
/// end is found from the markers and lengths alone, as a MessagePack value lays them out.
fn trailing_bytes(bytes: &[u8]) -> usize {
    value_end(bytes).map_or(0, |end| bytes.len() - end)
}

/// Where the first MessagePack value of `bytes` ends; `None` if `bytes` stops inside it. Counts
/// the values still to skip rather than recursing, so nesting costs no stack.
fn value_end(bytes: &[u8]) -> Option<usize> {
    use rmp::Marker;

    let mut at = 0usize;
    let mut pending: u64 = 1;
    let skip = |at: &mut usize, n: usize| -> Option<()> {
        *at = at.checked_add(n).filter(|end| *end <= bytes.len())?;
        Some(())
    };
    let length = |at: &mut usize, width: usize| -> Option<usize> {
        let field = bytes.get(*at..*at + width)?;
        *at += width;
        Some(field.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b)))
    };
    while pending > 0 {
        pending -= 1;
        let marker = Marker::from_u8(*bytes.get(at)?);
        at += 1;
        match marker {
            Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
            }
            Marker::Reserved => return None,
            Marker::U8 | Marker::I8 => skip(&mut at, 1)?,
            Marker::U16 | Marker::I16 => skip(&mut at, 2)?,
            Marker::U32 | Marker::I32 | Marker::F32 => skip(&mut at, 4)?,
            Marker::U64 | Marker::I64 | Marker::F64 => skip(&mut at, 8)?,
            Marker::FixStr(n) => skip(&mut at, usize::from(n))?,
            Marker::Str8 | Marker::Bin8 => {
                let n = length(&mut at, 1)?;
                skip(&mut at, n)?;
            }
            Marker::Str16 | Marker::Bin16 => {
                let n = length(&mut at, 2)?;
                skip(&mut at, n)?;
            }
            Marker::Str32 | Marker::Bin32 => {
                let n = length(&mut at, 4)?;
                skip(&mut at, n)?;
            }
            Marker::FixExt1 => skip(&mut at, 2)?,
            Marker::FixExt2 => skip(&mut at, 3)?,
            Marker::FixExt4 => skip(&mut at, 5)?,
            Marker::FixExt8 => skip(&mut at, 9)?,
            Marker::FixExt16 => skip(&mut at, 17)?,
            Marker::Ext8 => {
                let n = length(&mut at, 1)?;
                skip(&mut at, n + 1)?;
            }
            Marker::Ext16 => {
                let n = length(&mut at, 2)?;
                skip(&mut at, n + 1)?;
            }
            Marker::Ext32 => {
                let n = length(&mut at, 4)?;
                skip(&mut at, n + 1)?;
            }
            Marker::FixArray(n) => pending += u64::from(n),
            Marker::Array16 => pending += length(&mut at, 2)? as u64,
            Marker::Array32 => pending += length(&mut at, 4)? as u64,
            Marker::FixMap(n) => pending += 2 * u64::from(n),
            Marker::Map16 => pending += 2 * length(&mut at, 2)? as u64,
            Marker::Map32 => pending += 2 * length(&mut at, 4)? as u64,
        }
    }
    Some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Probe {
        name: String,
        n: u32,
    }

    fn probe() -> Probe {
        Probe {
            name: "x".into(),
            n: 7,
        }
    }

    #[test]
    fn subprotocols_name_their_encodings_and_nothing_else() {
        assert_eq!(
            Encoding::from_subprotocol("croupier.v1.json"),
            Some(Encoding::Json)
        );
        assert_eq!(
            Encoding::from_subprotocol(" croupier.v1.msgpack "),
            Some(Encoding::MsgPack)
        );
        assert_eq!(Encoding::from_subprotocol("croupier.v2.json"), None);
        assert_eq!(Encoding::from_subprotocol("CROUPIER.V1.JSON"), None);
        for e in [Encoding::Json, Encoding::MsgPack] {
            assert_eq!(Encoding::from_subprotocol(e.subprotocol()), Some(e));
        }
        assert!(Encoding::MsgPack.is_binary());
        assert!(!Encoding::Json.is_binary());
    }

    #[test]
    fn negotiation_takes_the_first_offered_subprotocol_we_speak() {
        assert_eq!(
            Encoding::negotiate(["chat", "croupier.v1.msgpack", "croupier.v1.json"]),
            Some(Encoding::MsgPack)
        );
        assert_eq!(Encoding::negotiate(["chat"]), None);
        assert_eq!(Encoding::negotiate([]), None);
    }

    #[test]
    fn msgpack_encoding_writes_a_map_with_named_fields() {
        let bytes = Encoding::MsgPack.encode(&probe()).expect("encode");
        // fixmap of 2, then the key "name".
        assert_eq!(&bytes[..6], &[0x82, 0xa4, b'n', b'a', b'm', b'e']);
        let back: Probe = Encoding::MsgPack.decode(&bytes).expect("decode");
        assert_eq!(back, probe());
    }

    #[test]
    fn input_over_the_limit_is_refused_before_parsing() {
        let mut big = vec![b' '; MAX_MESSAGE_BYTES];
        big.push(b'{');
        for e in [Encoding::Json, Encoding::MsgPack] {
            match e.decode::<Probe>(&big) {
                Err(DecodeError::TooLarge { len, max }) => {
                    assert_eq!(len, MAX_MESSAGE_BYTES + 1);
                    assert_eq!(max, MAX_MESSAGE_BYTES);
                }
                other => panic!("expected TooLarge, got {other:?}"),
            }
        }
    }

    #[test]
    fn arrays_are_refused_even_where_serde_would_read_them_positionally() {
        assert!(matches!(
            Encoding::Json.decode::<Probe>(br#"["x", 7]"#),
            Err(DecodeError::NotAnObject)
        ));
        let packed = rmp_serde::to_vec(&probe()).expect("encode as array");
        assert!(matches!(
            Encoding::MsgPack.decode::<Probe>(&packed),
            Err(DecodeError::NotAnObject)
        ));
        assert!(matches!(
            Encoding::Json.decode::<Probe>(b""),
            Err(DecodeError::NotAnObject)
        ));
    }

    #[test]
    fn trailing_bytes_after_a_message_are_refused_in_both_encodings() {
        assert!(matches!(
            Encoding::Json.decode::<Probe>(br#"{"name":"x","n":7} {}"#),
            Err(DecodeError::Json(_))
        ));
        let mut packed = Encoding::MsgPack.encode(&probe()).expect("encode").to_vec();
        packed.push(0xc0);
        assert!(matches!(
            Encoding::MsgPack.decode::<Probe>(&packed),
            Err(DecodeError::TrailingBytes { trailing: 1 })
        ));
    }

    /// Where rmp-serde's own reader, counting what it reads, says the first value ends.
    fn end_by_rmp_serde(bytes: &[u8]) -> Option<usize> {
        let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
        serde::de::IgnoredAny::deserialize(&mut de).ok()?;
        usize::try_from(de.position()).ok()
    }

    fn any_msgpack() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            any::<i64>().prop_map(|n| rmp_serde::to_vec(&n).expect("encode")),
            any::<u64>().prop_map(|n| rmp_serde::to_vec(&n).expect("encode")),
            any::<f32>().prop_map(|n| rmp_serde::to_vec(&n).expect("encode")),
            any::<f64>().prop_map(|n| rmp_serde::to_vec(&n).expect("encode")),
            any::<Option<bool>>().prop_map(|b| rmp_serde::to_vec(&b).expect("encode")),
            ".{0,40}".prop_map(|s| rmp_serde::to_vec(&s).expect("encode")),
            (0usize..300).prop_map(|n| rmp_serde::to_vec(&"x".repeat(n * 250)).expect("encode")),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| {
                let mut out = Vec::new();
                rmp::encode::write_bin(&mut out, &b).expect("encode");
                out
            }),
            (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(t, b)| {
                let mut out = Vec::new();
                rmp::encode::write_ext_meta(&mut out, b.len() as u32, t).expect("encode");
                out.extend_from_slice(&b);
                out
            }),
        ];
        leaf.prop_recursive(4, 64, 20, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..20).prop_map(|items| {
                    let mut out = Vec::new();
                    rmp::encode::write_array_len(&mut out, items.len() as u32).expect("encode");
                    items.iter().for_each(|i| out.extend_from_slice(i));
                    out
                }),
                proptest::collection::vec((inner.clone(), inner), 0..20).prop_map(|entries| {
                    let mut out = Vec::new();
                    rmp::encode::write_map_len(&mut out, entries.len() as u32).expect("encode");
                    for (k, v) in &entries {
                        out.extend_from_slice(k);
                        out.extend_from_slice(v);
                    }
                    out
                }),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn a_values_end_is_found_where_rmp_serde_finds_it(
            value in any_msgpack(),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let mut bytes = value.clone();
            bytes.extend_from_slice(&tail);
            proptest::prop_assert_eq!(value_end(&bytes), Some(value.len()));
            proptest::prop_assert_eq!(end_by_rmp_serde(&bytes), Some(value.len()));
            // Cut inside the value: no end.
            let cut = cut.index(value.len());
            proptest::prop_assert_eq!(value_end(&value[..cut]), None);
        }
    }

    #[test]
    fn deeply_nested_msgpack_is_refused_without_exhausting_the_stack() {
        // {"name": [[[[ ... ]]]]} nested far beyond the depth limit.
        let mut bytes = vec![0x81, 0xa4, b'n', b'a', b'm', b'e'];
        bytes.extend(std::iter::repeat_n(0x91, 60_000));
        bytes.push(0xc0);
        assert!(Encoding::MsgPack.decode::<Probe>(&bytes).is_err());
        assert!(salvage_request_id(&bytes, Encoding::MsgPack).is_none());
    }

    #[test]
    fn a_length_header_larger_than_the_input_is_an_error_not_an_allocation() {
        // {"name": str32 claiming 4 GiB}
        let bytes = [
            0x81, 0xa4, b'n', b'a', b'm', b'e', 0xdb, 0xff, 0xff, 0xff, 0xff,
        ];
        assert!(matches!(
            Encoding::MsgPack.decode::<Probe>(&bytes),
            Err(DecodeError::MsgPack(_))
        ));
    }

    #[test]
    fn request_id_is_salvaged_from_a_malformed_message_when_it_is_a_string() {
        let json = br#"{"type":"bet","request_id":"r-17","amount":"lots"}"#;
        assert_eq!(
            salvage_request_id(json, Encoding::Json).as_deref(),
            Some("r-17")
        );
        assert_eq!(
            salvage_request_id(br#"{"request_id":17}"#, Encoding::Json),
            None
        );
        assert_eq!(
            salvage_request_id(br#"{"type":"bet"}"#, Encoding::Json),
            None
        );
        assert_eq!(salvage_request_id(b"[1,2]", Encoding::Json), None);
        assert_eq!(salvage_request_id(b"{", Encoding::Json), None);

        let packed = rmp_serde::to_vec_named(&serde_json::json!({
            "type": "bet", "request_id": "r-18", "selection": [1, {"a": null}]
        }))
        .expect("encode");
        assert_eq!(
            salvage_request_id(&packed, Encoding::MsgPack).as_deref(),
            Some("r-18")
        );
    }

    #[test]
    fn decode_errors_read_as_messages_for_a_client() {
        let err = Encoding::Json
            .decode::<Probe>(br#"{"name":"x"}"#)
            .expect_err("missing field");
        assert_eq!(err.code(), ErrorCode::BadMessage);
        let text = err.to_string();
        assert!(
            text.starts_with("invalid JSON message: missing field `n`"),
            "{text}"
        );
    }
}

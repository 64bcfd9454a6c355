//! The audit's own reading of the event store's rows from `COPY … TO STDOUT (FORMAT binary)`.
//!
//! tokio-postgres's `BinaryCopyOutStream` builds a vector of column ranges per row, and the
//! store's reader copies every text and byte column into new allocations: four or five heap
//! allocations a row, a tenth of a million-event replay's CPU. Here a row's `data` and
//! `metadata` are slices of the message that carried them (no copy) and its `stream` and `type`
//! are held inline when short (they are: `player-…`, `round-<table>-<n>`, `bet_placed`).
//!
//! The format is PostgreSQL's (`COPY` documentation, "Binary Format"): an 11-byte signature,
//! a flags word and a header extension, then per row a field count and each field as a length
//! (−1 for NULL) and its bytes, and a field count of −1 at the end. PostgreSQL sends one
//! `CopyData` message per row (the header rides with the first), which is what this reader,
//! like tokio-postgres's, relies on: a message that holds anything else is an error, never a
//! guess.

use bytes::{Buf, Bytes};
use compact_str::CompactString;
use uuid::Uuid;

use crate::model::Row;
use crate::wire::Time;

/// The columns read, in this order (`docs/contract/event-store.md`). `recorded_at` is not
/// read: nothing the audit checks depends on when a row was written.
pub const COLUMNS: &str = "position, event_id, stream, version, type, data, metadata, hash";
const FIELDS: i16 = 8;

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Reads the rows of one `COPY` in order: [`Reader::row`] for each message.
#[derive(Debug, Default)]
pub struct Reader {
    header_read: bool,
}

impl Reader {
    /// The row in one `CopyData` message, or `None` for the end-of-data marker. `prev_hash`
    /// and `at` are left for the caller (zero).
    pub fn row(&mut self, mut message: Bytes) -> Result<Option<Row>, String> {
        if !self.header_read {
            if message.len() < SIGNATURE.len() + 8 || !message.starts_with(SIGNATURE) {
                return Err("the COPY output does not start with PGCOPY's signature".into());
            }
            message.advance(SIGNATURE.len());
            let flags = message.get_u32();
            if flags & (1 << 16) != 0 {
                return Err("the COPY output carries OIDs, which were not asked for".into());
            }
            let extension = message.get_u32() as usize;
            if message.len() < extension {
                return Err("the COPY header extension is cut short".into());
            }
            message.advance(extension);
            self.header_read = true;
        }
        let mut fields = Fields { message };
        let count = fields.i16()?;
        if count == -1 {
            return Ok(None);
        }
        if count != FIELDS {
            return Err(format!("a row of {count} fields, not {FIELDS}"));
        }
        let position = i64::from_be_bytes(fields.fixed("position")?);
        let at = |e: String| format!("position {position}: {e}");
        let event_id = Uuid::from_bytes(fields.fixed("event_id").map_err(at)?);
        let stream = fields.text("stream").map_err(at)?;
        let version = i32::from_be_bytes(fields.fixed("version").map_err(at)?);
        let kind = fields.text("type").map_err(at)?;
        let data = fields.bytes("data").map_err(at)?;
        let metadata = fields.bytes("metadata").map_err(at)?;
        let hash: [u8; 32] = fields.fixed("hash").map_err(at)?;
        if fields.message.has_remaining() {
            return Err(at(format!(
                "{} bytes after the last field",
                fields.message.len()
            )));
        }
        Ok(Some(Row {
            position,
            event_id,
            stream,
            version,
            kind,
            data,
            metadata,
            hash,
            prev_hash: [0; 32],
            at: Time::ZERO,
        }))
    }
}

/// The fields of one row, read in order.
struct Fields {
    message: Bytes,
}

impl Fields {
    fn i16(&mut self) -> Result<i16, String> {
        if self.message.len() < 2 {
            return Err("a message too short for a row".into());
        }
        Ok(self.message.get_i16())
    }

    /// The next field's bytes (a slice of the message, no copy).
    fn bytes(&mut self, name: &str) -> Result<Bytes, String> {
        if self.message.len() < 4 {
            return Err(format!("the row ends before {name}"));
        }
        let len = self.message.get_i32();
        let len = usize::try_from(len).map_err(|_| format!("{name} is NULL"))?;
        if self.message.len() < len {
            return Err(format!("{name} is cut short"));
        }
        Ok(self.message.split_to(len))
    }

    /// The next field, which must be exactly `N` bytes (an integer, a UUID, a hash).
    fn fixed<const N: usize>(&mut self, name: &str) -> Result<[u8; N], String> {
        let bytes = self.bytes(name)?;
        <[u8; N]>::try_from(bytes.as_ref())
            .map_err(|_| format!("{name} has {} bytes instead of {N}", bytes.len()))
    }

    fn text(&mut self, name: &str) -> Result<CompactString, String> {
        let bytes = self.bytes(name)?;
        CompactString::from_utf8(bytes.as_ref()).map_err(|_| format!("{name} is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    }

    fn row(position: i64, stream: &str) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&FIELDS.to_be_bytes());
        field(&mut out, &position.to_be_bytes());
        field(&mut out, &[7; 16]);
        field(&mut out, stream.as_bytes());
        field(&mut out, &3i32.to_be_bytes());
        field(&mut out, b"bet_placed");
        field(&mut out, b"\x81\xa1a\x01");
        field(&mut out, b"");
        field(&mut out, &[9; 32]);
        out
    }

    fn header() -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&4u32.to_be_bytes());
        out.extend_from_slice(b"skip");
        out
    }

    #[test]
    fn reads_the_header_rows_and_the_end() {
        let mut reader = Reader::default();
        let mut first = header();
        first.extend(row(1, "player-p1"));
        let one = reader
            .row(Bytes::from(first))
            .expect("valid")
            .expect("a row");
        assert_eq!(
            (
                one.position,
                one.stream.as_str(),
                one.version,
                one.kind.as_str()
            ),
            (1, "player-p1", 3, "bet_placed")
        );
        assert_eq!(one.event_id, Uuid::from_bytes([7; 16]));
        assert_eq!(
            (&one.data[..], &one.metadata[..]),
            (&b"\x81\xa1a\x01"[..], &b""[..])
        );
        assert_eq!(one.hash, [9; 32]);
        let two = reader
            .row(Bytes::from(row(2, "round-t-1")))
            .expect("valid")
            .expect("a row");
        assert_eq!(two.position, 2);
        assert!(matches!(
            reader.row(Bytes::from_static(b"\xff\xff")),
            Ok(None)
        ));
    }

    #[test]
    fn malformed_messages_are_errors_that_say_what() {
        let no_signature = Reader::default()
            .row(Bytes::from(row(1, "s")))
            .expect_err("malformed");
        assert!(no_signature.contains("signature"), "{no_signature}");

        let mut reader = Reader::default();
        let _ = reader
            .row(Bytes::from([header(), row(1, "s")].concat()))
            .expect("valid");
        let mut cut = row(2, "s");
        cut.truncate(cut.len() - 5);
        let cut = reader.row(Bytes::from(cut)).expect_err("malformed");
        assert!(cut.starts_with("position 2: hash"), "{cut}");

        let mut two_rows = row(3, "s");
        two_rows.extend(row(4, "s"));
        let extra = reader.row(Bytes::from(two_rows)).expect_err("malformed");
        assert!(extra.contains("after the last field"), "{extra}");

        let mut null = row(5, "s");
        let at = 2 + 4 + 8 + 4 + 16; // the stream's length
        null[at..at + 4].copy_from_slice(&(-1i32).to_be_bytes());
        let null = reader.row(Bytes::from(null)).expect_err("malformed");
        assert!(null.contains("stream is NULL"), "{null}");

        let mut bad_utf8 = row(6, "s");
        bad_utf8[at + 4] = 0xff;
        let bad_utf8 = reader.row(Bytes::from(bad_utf8)).expect_err("malformed");
        assert!(bad_utf8.contains("not UTF-8"), "{bad_utf8}");
    }
}

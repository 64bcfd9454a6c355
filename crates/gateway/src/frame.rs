//! Server-to-client WebSocket frames (RFC 6455 §5.2), built whole: header and payload in one
//! buffer. A server's frames are never masked, so one event's frame is the same bytes for every
//! connection of an encoding: the hub builds it once and every socket is handed those bytes.
//!
//! Owns only the framing; what goes in a frame is `protocol`'s, when it goes out `outbox`'s.

use bytes::{BufMut, Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload};
use protocol::Encoding;

/// The longest header of an unmasked frame: two bytes and an eight-byte length.
const MAX_HEAD: usize = 10;

/// One final, unmasked frame, header and payload in one buffer (fastwebsockets formats the
/// header).
fn build(mut frame: Frame<'_>) -> Bytes {
    let mut head = [0; MAX_HEAD];
    let size = frame.fmt_head(&mut head);
    let mut out = BytesMut::with_capacity(size + frame.payload.len());
    out.put_slice(&head[..size]);
    out.put_slice(&frame.payload);
    out.freeze()
}

/// A protocol message in the connection's encoding: a text frame for JSON, binary for
/// MessagePack (`docs/contract/websocket.md`).
pub(crate) fn message(encoding: Encoding, payload: &[u8]) -> Bytes {
    let payload = Payload::Borrowed(payload);
    build(if encoding.is_binary() {
        Frame::binary(payload)
    } else {
        Frame::text(payload)
    })
}

/// A Close frame with its status code and reason.
pub(crate) fn close(code: u16, reason: &str) -> Bytes {
    build(Frame::close(code, reason.as_bytes()))
}

/// A Ping frame.
pub(crate) fn ping(payload: &[u8]) -> Bytes {
    control(OpCode::Ping, payload)
}

/// A control frame the reader is obliged to answer with (a Pong for a Ping, the echo of a
/// Close), as the WebSocket library hands it over.
pub(crate) fn control(opcode: OpCode, payload: &[u8]) -> Bytes {
    build(Frame::new(true, opcode, None, Payload::Borrowed(payload)))
}

/// Whether `frame` (built here) is a Close frame.
#[cfg(test)]
pub(crate) fn is_close(frame: &[u8]) -> bool {
    frame
        .first()
        .is_some_and(|b| b & 0x0F == OpCode::Close as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_shortest_form_rfc_6455_allows() {
        let short = message(Encoding::Json, &[b'x'; 125]);
        assert_eq!(&short[..2], &[0x81, 125]);
        assert_eq!(short.len(), 127);
        let medium = message(Encoding::MsgPack, &[0; 126]);
        assert_eq!(&medium[..4], &[0x82, 126, 0, 126]);
        let long = message(Encoding::Json, &vec![0; 70_000]);
        assert_eq!(&long[..2], &[0x81, 127]);
        assert_eq!(
            u64::from_be_bytes(long[2..10].try_into().expect("8")),
            70_000
        );
        assert_eq!(long.len(), 70_010);
    }

    #[test]
    fn a_close_frame_carries_its_code_then_its_reason() {
        let frame = close(4008, "slow consumer");
        assert_eq!(&frame[..4], &[0x88, 15, 0x0F, 0xA8]);
        assert_eq!(&frame[4..], b"slow consumer");
        assert!(is_close(&frame));
        assert!(!is_close(&ping(b"idle")));
    }
}

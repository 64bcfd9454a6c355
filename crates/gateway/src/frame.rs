//! Server-to-client WebSocket frames (RFC 6455 §5.2), built whole: header and payload in one
//! buffer. A server's frames are never masked, so one event's frame is the same bytes for every
//! connection of an encoding: the hub builds it once and every socket is handed those bytes.
//!
//! Owns only the framing; what goes in a frame is `protocol`'s, when it goes out `outbox`'s.

use bytes::{BufMut, Bytes, BytesMut};
use protocol::Encoding;

const FIN: u8 = 0x80;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// One final frame of `opcode` (the low four bits of the first byte) carrying `payload`.
fn build(opcode: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut frame = BytesMut::with_capacity(len + 10);
    frame.put_u8(FIN | opcode);
    if len < 126 {
        frame.put_u8(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        frame.put_u8(126);
        frame.put_u16(short);
    } else {
        frame.put_u8(127);
        frame.put_u64(len as u64);
    }
    frame.put_slice(payload);
    frame.freeze()
}

/// A protocol message in the connection's encoding: a text frame for JSON, binary for
/// MessagePack (DESIGN §7).
pub(crate) fn message(encoding: Encoding, payload: &[u8]) -> Bytes {
    build(if encoding.is_binary() { BINARY } else { TEXT }, payload)
}

/// A Close frame with its status code and reason.
pub(crate) fn close(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    build(CLOSE, &payload)
}

/// A Ping frame.
pub(crate) fn ping(payload: &[u8]) -> Bytes {
    build(PING, payload)
}

/// A control frame the reader is obliged to answer with (a Pong for a Ping, the echo of a
/// Close), as the WebSocket library hands it over.
pub(crate) fn control(opcode: fastwebsockets::OpCode, payload: &[u8]) -> Bytes {
    let code = match opcode {
        fastwebsockets::OpCode::Close => CLOSE,
        fastwebsockets::OpCode::Ping => PING,
        fastwebsockets::OpCode::Pong => PONG,
        fastwebsockets::OpCode::Text => TEXT,
        fastwebsockets::OpCode::Binary => BINARY,
        fastwebsockets::OpCode::Continuation => 0,
    };
    build(code, payload)
}

/// Whether `frame` (built here) is a Close frame.
#[cfg(test)]
pub(crate) fn is_close(frame: &[u8]) -> bool {
    frame.first().is_some_and(|b| b & 0x0F == CLOSE)
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

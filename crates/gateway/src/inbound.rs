//! Client-to-server WebSocket frames (RFC 6455 §5), parsed as their bytes arrive.
//!
//! Why ours and not the library's reader (issue 19, ADR 0029): fastwebsockets' reader keeps an
//! 8 KiB buffer for the life of every connection, more than half of what an idle connection
//! costs, and its `read_frame` is not cancel-safe, which took a second task per connection. Here
//! the session reads when the socket is readable, into `pending`, and keeps between reads only
//! the bytes of a frame not yet whole — usually none, and then nothing is allocated.
//!
//! Accepts what the library's reader accepted, with the same answers: control frames inside a
//! fragmented message, a cap of [`MAX_MESSAGE_BYTES`] on a frame (refused from its header,
//! before its payload is buffered) and across a message's fragments, the Close checks of
//! RFC 6455 §5.5.1 and §7.4, UTF-8 in single-frame text messages. One difference, which RFC
//! 6455 §5.1 requires: a client frame that is not masked is refused.
//!
//! Owns only the framing; what a message means is `protocol`'s, what is answered `session`'s.

use std::borrow::Cow;

use fastwebsockets::{CloseCode, OpCode};
use protocol::MAX_MESSAGE_BYTES;
use tokio::net::tcp::OwnedReadHalf;

/// The longest header of a client frame: two bytes, an eight-byte length and the mask.
const MAX_HEAD: usize = 14;
/// The most a Ping may carry (RFC 6455 §5.5).
const MAX_PING: u64 = 125;
/// Bytes asked of the socket at a time when no longer frame is in progress: room for many small
/// messages in one read (on the stack; on the heap only what came, while it is parsed).
const READ_CHUNK: usize = 4096;

/// A whole frame read from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame<'a> {
    /// A complete message: a final Text or Binary frame, or the reassembled fragments of one.
    Message(Cow<'a, [u8]>),
    /// A fragment of a message, kept until its last.
    Fragment,
    /// A Ping: the client is owed a Pong with this payload.
    Ping(&'a [u8]),
    Pong,
    /// The client closes: its Close payload, which is echoed.
    Close(&'a [u8]),
}

/// Why the connection must end: the session closes it with the matching code.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal<'a> {
    /// A frame, or a message's fragments together, over [`MAX_MESSAGE_BYTES`]: 1009.
    TooBig,
    /// Not a WebSocket frame this side of the protocol accepts: 1002, with this reason.
    Protocol(&'static str),
    /// A Close with a code no peer may send: answered with a Close 1002 carrying its reason.
    CloseCode(&'a str),
}

/// One connection's read state. Empty while the connection is idle: no allocation.
#[derive(Debug, Default)]
pub(crate) struct Reader {
    /// Bytes read from the socket, from `start` not yet parsed: between reads, the beginning of
    /// an unfinished frame, if any.
    pending: Vec<u8>,
    start: usize,
    /// The message being reassembled, from its first fragment until its last.
    fragments: Option<Vec<u8>>,
}

/// What a frame's header says.
struct Head {
    fin: bool,
    opcode: OpCode,
    mask: [u8; 4],
    /// Bytes of header (length and mask included).
    len: usize,
    /// Bytes of payload (at most [`MAX_MESSAGE_BYTES`], checked).
    payload: usize,
}

impl Head {
    /// Parses the header at the start of `bytes`: `None` until it is all there. A frame that
    /// must be refused is refused from its header, before any of its payload is kept.
    fn parse(bytes: &[u8], reassembled: Option<usize>) -> Result<Option<Head>, Refusal<'static>> {
        let [first, second, ..] = *bytes else {
            return Ok(None);
        };
        if first & 0b0111_0000 != 0 {
            // No extension is negotiated, so no reserved bit may be set (RFC 6455 §5.2).
            return Err(Refusal::Protocol(""));
        }
        let opcode = OpCode::try_from(first & 0x0F).map_err(|_| Refusal::Protocol(""))?;
        let fin = first & 0x80 != 0;
        if second & 0x80 == 0 {
            return Err(Refusal::Protocol("client frames must be masked"));
        }
        let extra = match second & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let len = 2 + extra + 4;
        let Some(rest) = bytes.get(2..len) else {
            return Ok(None);
        };
        let (length, mask) = rest.split_at(extra);
        let payload = match *length {
            [] => u64::from(second & 0x7F),
            [a, b] => u64::from(u16::from_be_bytes([a, b])),
            _ => u64::from_be_bytes(length.try_into().map_err(|_| Refusal::Protocol(""))?),
        };
        let control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
        if control && !fin {
            return Err(Refusal::Protocol(""));
        }
        if opcode == OpCode::Ping && payload > MAX_PING {
            return Err(Refusal::Protocol(""));
        }
        let cap = MAX_MESSAGE_BYTES as u64;
        if payload > cap {
            return Err(Refusal::TooBig);
        }
        // A continuation that would take its message over the cap is refused now rather than
        // once it is all here: the answer is the same, the bytes are never held.
        if let (OpCode::Continuation, Some(so_far)) = (opcode, reassembled)
            && so_far as u64 + payload > cap
        {
            return Err(Refusal::TooBig);
        }
        Ok(Some(Head {
            fin,
            opcode,
            mask: mask.try_into().map_err(|_| Refusal::Protocol(""))?,
            len,
            payload: payload as usize,
        }))
    }
}

impl Reader {
    /// A reader that parses `leftover` first: what the HTTP server read past the upgrade.
    pub(crate) fn new(leftover: &[u8]) -> Self {
        Reader {
            pending: leftover.to_vec(),
            ..Reader::default()
        }
    }

    /// Whether bytes wait to be parsed (at the start, `leftover`).
    pub(crate) fn has_pending(&self) -> bool {
        self.start < self.pending.len()
    }

    /// Reads what the socket has, without waiting: a whole frame in progress at once, else up
    /// to a chunk. `Ok(0)` is the end of the stream; `WouldBlock`, that the readiness was stale.
    pub(crate) fn read_from(&mut self, socket: &OwnedReadHalf) -> std::io::Result<usize> {
        self.compact();
        if self.pending.is_empty() {
            // Between frames (nearly always), through the stack: nothing is allocated for a
            // readiness that proves stale, and what is kept is only what came.
            let mut chunk = [0; READ_CHUNK];
            let read = socket.try_read(&mut chunk)?;
            self.pending.extend_from_slice(&chunk[..read]);
            return Ok(read);
        }
        // The rest of the frame in progress at once (a big one in few reads), or a chunk.
        let rest = self.needed().saturating_sub(self.pending.len());
        self.pending.reserve(rest.max(READ_CHUNK));
        let read = socket.try_read_buf(&mut self.pending);
        if !matches!(read, Ok(n) if n > 0) {
            // Nothing came (a stale readiness, nearly always): a peer that stalls in a frame
            // header keeps its few bytes, not the chunk reserved for them.
            self.compact();
        }
        read
    }

    /// The next whole frame among the bytes read, `None` until there is one. After a refusal,
    /// nothing more may be read.
    pub(crate) fn next(&mut self) -> Result<Option<Frame<'_>>, Refusal<'_>> {
        let reassembled = self.fragments.as_ref().map(Vec::len);
        let Some(head) = Head::parse(&self.pending[self.start..], reassembled)? else {
            return Ok(None);
        };
        let from = self.start + head.len;
        let to = from + head.payload;
        if to > self.pending.len() {
            return Ok(None);
        }
        self.start = to;
        fastwebsockets::unmask(&mut self.pending[from..to], head.mask);
        let payload = &self.pending[from..to];
        match head.opcode {
            OpCode::Close => match payload {
                [] => Ok(Some(Frame::Close(payload))),
                [_] => Err(Refusal::Protocol("")),
                [a, b, reason @ ..] => {
                    let Ok(reason) = std::str::from_utf8(reason) else {
                        return Err(Refusal::Protocol(""));
                    };
                    if !CloseCode::from(u16::from_be_bytes([*a, *b])).is_allowed() {
                        return Err(Refusal::CloseCode(reason));
                    }
                    Ok(Some(Frame::Close(payload)))
                }
            },
            OpCode::Ping => Ok(Some(Frame::Ping(payload))),
            OpCode::Pong => Ok(Some(Frame::Pong)),
            // Only a text message in one frame is checked here (as the library did); one in
            // fragments is left to the decoder, which answers it `BAD_MESSAGE`.
            OpCode::Text if head.fin && std::str::from_utf8(payload).is_err() => {
                Err(Refusal::Protocol(""))
            }
            OpCode::Text | OpCode::Binary if self.fragments.is_none() => {
                if head.fin {
                    Ok(Some(Frame::Message(Cow::Borrowed(payload))))
                } else {
                    self.fragments = Some(payload.to_vec());
                    Ok(Some(Frame::Fragment))
                }
            }
            OpCode::Continuation => {
                // A continuation of nothing (§5.4).
                let Some(message) = self.fragments.as_mut() else {
                    return Err(Refusal::Protocol("bad fragmentation"));
                };
                message.extend_from_slice(payload);
                if head.fin {
                    // Released with the message: a big one must not stay with an idle
                    // connection.
                    Ok(self.fragments.take().map(|m| Frame::Message(Cow::Owned(m))))
                } else {
                    Ok(Some(Frame::Fragment))
                }
            }
            // A new message inside a fragmented one (§5.4).
            OpCode::Text | OpCode::Binary => Err(Refusal::Protocol("bad fragmentation")),
        }
    }

    /// Drops the bytes parsed; frees the buffer when nothing is left, so that an idle
    /// connection holds none.
    pub(crate) fn compact(&mut self) {
        if self.start >= self.pending.len() {
            self.pending = Vec::new();
            self.start = 0;
        } else {
            self.pending.drain(..self.start);
            self.start = 0;
            // A chunk read for many small frames is not kept for the end of one.
            self.pending.shrink_to(self.needed().max(MAX_HEAD));
        }
    }

    /// The whole size of the frame begun at `start`, once its header says; until then, the
    /// longest header.
    fn needed(&self) -> usize {
        let reassembled = self.fragments.as_ref().map(Vec::len);
        match Head::parse(&self.pending[self.start..], reassembled) {
            Ok(Some(head)) => head.len + head.payload,
            _ => MAX_HEAD,
        }
    }

    /// Appends bytes as if read from the socket.
    #[cfg(test)]
    fn push(&mut self, bytes: &[u8]) {
        self.compact();
        self.pending.extend_from_slice(bytes);
    }

    /// Bytes held between reads.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.pending.capacity() + self.fragments.as_ref().map_or(0, Vec::capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

    /// A client frame: masked unless `mask` is `None`, with the shortest length that fits.
    fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let bit = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(bit | n as u8),
            n if n <= 0xFFFF => {
                out.push(bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mut payload = payload.to_vec();
        if let Some(mask) = mask {
            out.extend_from_slice(&mask);
            fastwebsockets::unmask(&mut payload, mask);
        }
        out.extend_from_slice(&payload);
        out
    }

    fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        frame(fin, opcode, payload, Some(MASK))
    }

    /// What the reader made of a frame, owned so that a test can collect them.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Message(Vec<u8>),
        Fragment,
        Ping(Vec<u8>),
        Pong,
        Close(Vec<u8>),
        TooBig,
        Protocol(&'static str),
        CloseCode(String),
    }

    /// Everything the reader parses from `bytes` fed in pieces cut at `cuts`, stopping at a
    /// refusal as the session does.
    fn feed(reader: &mut Reader, bytes: &[u8], cuts: &[usize]) -> Vec<Seen> {
        let mut seen = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
            reader.push(&bytes[at..cut]);
            at = cut;
            loop {
                let item = match reader.next() {
                    Ok(None) => break,
                    Ok(Some(Frame::Message(m))) => Seen::Message(m.into_owned()),
                    Ok(Some(Frame::Fragment)) => Seen::Fragment,
                    Ok(Some(Frame::Ping(p))) => Seen::Ping(p.to_vec()),
                    Ok(Some(Frame::Pong)) => Seen::Pong,
                    Ok(Some(Frame::Close(p))) => Seen::Close(p.to_vec()),
                    Err(Refusal::TooBig) => Seen::TooBig,
                    Err(Refusal::Protocol(why)) => Seen::Protocol(why),
                    Err(Refusal::CloseCode(reason)) => Seen::CloseCode(reason.to_string()),
                };
                let refused = matches!(item, Seen::TooBig | Seen::Protocol(_) | Seen::CloseCode(_));
                seen.push(item);
                if refused {
                    return seen;
                }
            }
            reader.compact();
        }
        seen
    }

    /// `bytes` parsed whole, then cut in two at every byte, then fed one byte at a time: the
    /// same frames each way.
    fn parse_every_way(bytes: &[u8]) -> Vec<Seen> {
        let whole = feed(&mut Reader::default(), bytes, &[]);
        for cut in 1..bytes.len() {
            let split = feed(&mut Reader::default(), bytes, &[cut]);
            assert_eq!(split, whole, "cut at byte {cut}");
        }
        let bytewise: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(feed(&mut Reader::default(), bytes, &bytewise), whole);
        whole
    }

    #[test]
    fn frames_split_at_every_byte_boundary_parse_the_same() {
        let mut bytes = masked(true, 1, br#"{"type":"ping"}"#);
        bytes.extend(masked(true, 9, b"are you there"));
        bytes.extend(masked(true, 2, &[0x81, 0xA4]));
        bytes.extend(masked(true, 10, b""));
        assert_eq!(
            parse_every_way(&bytes),
            vec![
                Seen::Message(br#"{"type":"ping"}"#.to_vec()),
                Seen::Ping(b"are you there".to_vec()),
                Seen::Message(vec![0x81, 0xA4]),
                Seen::Pong,
            ]
        );
    }

    #[test]
    fn lengths_in_7_16_and_64_bits_are_read() {
        for len in [0, 125, 126, 1000, 0xFFFF, 0x1_0000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let bytes = masked(true, 2, &payload);
            let cuts: Vec<usize> = [1, 2, 3, 4, 9, 13, 14, bytes.len() - 1]
                .into_iter()
                .filter(|&c| c < bytes.len())
                .collect();
            let seen = feed(&mut Reader::default(), &bytes, &cuts);
            assert_eq!(seen, vec![Seen::Message(payload)], "length {len}");
        }
        // A 64-bit length is valid for a short payload too (only the shortest form is
        // required of servers).
        let mut long_form = vec![0x82, 0x80 | 127];
        long_form.extend_from_slice(&3u64.to_be_bytes());
        long_form.extend_from_slice(&[0; 4]);
        long_form.extend_from_slice(b"abc");
        assert_eq!(
            parse_every_way(&long_form),
            vec![Seen::Message(b"abc".to_vec())]
        );
    }

    #[test]
    fn unmasked_client_frames_are_a_protocol_error() {
        let bytes = frame(true, 1, b"{}", None);
        assert_eq!(
            parse_every_way(&bytes),
            vec![Seen::Protocol("client frames must be masked")]
        );
    }

    #[test]
    fn fragments_are_reassembled_around_control_frames() {
        let mut bytes = masked(false, 1, b"{\"ty");
        bytes.extend(masked(true, 9, b"p"));
        bytes.extend(masked(false, 0, b"pe\":\"pi"));
        bytes.extend(masked(true, 10, b"x"));
        bytes.extend(masked(true, 0, b"ng\"}"));
        assert_eq!(
            parse_every_way(&bytes),
            vec![
                Seen::Fragment,
                Seen::Ping(b"p".to_vec()),
                Seen::Fragment,
                Seen::Pong,
                Seen::Message(br#"{"type":"ping"}"#.to_vec()),
            ]
        );
    }

    #[test]
    fn a_new_message_inside_a_fragmented_one_or_a_continuation_of_nothing_is_refused() {
        let mut bytes = masked(false, 1, b"a");
        bytes.extend(masked(true, 2, b"b"));
        assert_eq!(
            parse_every_way(&bytes),
            vec![Seen::Fragment, Seen::Protocol("bad fragmentation")]
        );
        assert_eq!(
            parse_every_way(&masked(true, 0, b"b")),
            vec![Seen::Protocol("bad fragmentation")]
        );
    }

    #[test]
    fn a_frame_over_the_cap_is_refused_from_its_header_before_its_payload_is_held() {
        let mut reader = Reader::default();
        let bytes = masked(true, 2, &vec![0; MAX_MESSAGE_BYTES + 1]);
        // The header alone is enough to refuse it.
        assert_eq!(feed(&mut reader, &bytes[..14], &[]), vec![Seen::TooBig]);
        // Exactly at the cap is a message.
        let at_cap = masked(true, 2, &vec![7; MAX_MESSAGE_BYTES]);
        assert_eq!(
            feed(&mut Reader::default(), &at_cap, &[100]),
            vec![Seen::Message(vec![7; MAX_MESSAGE_BYTES])]
        );
    }

    #[test]
    fn fragments_over_the_cap_together_are_refused_at_the_header_that_crosses_it() {
        let part = vec![b' '; 30 * 1024];
        let mut bytes = masked(false, 1, &part);
        bytes.extend(masked(false, 0, &part));
        let third = masked(true, 0, &part);
        let header_end = bytes.len() + 8;
        bytes.extend(third);
        let seen = feed(&mut Reader::default(), &bytes[..header_end], &[]);
        assert_eq!(seen, vec![Seen::Fragment, Seen::Fragment, Seen::TooBig]);
    }

    #[test]
    fn reserved_bits_unknown_opcodes_and_bad_control_frames_are_protocol_errors() {
        for bad in [
            masked(true, 0x40 | 1, b"{}"),
            masked(true, 0x10 | 2, b"{}"),
            masked(true, 3, b"{}"),
            masked(true, 0xB, b""),
            // A fragmented control frame, a Ping over 125 bytes.
            masked(false, 9, b""),
            masked(true, 9, &[0; 126]),
            // A one-byte Close, a Close whose reason is not UTF-8, a text message that is not.
            masked(true, 8, &[3]),
            masked(true, 8, &[3, 0xE8, 0xFF]),
            masked(true, 1, &[0xFF, 0xFE]),
        ] {
            assert_eq!(
                parse_every_way(&bad),
                vec![Seen::Protocol("")],
                "{bad:02x?}"
            );
        }
    }

    #[test]
    fn a_close_is_handed_over_for_its_echo_and_a_forbidden_code_answered_with_its_reason() {
        let mut normal = vec![0x03, 0xE8];
        normal.extend_from_slice(b"bye");
        assert_eq!(
            parse_every_way(&masked(true, 8, &normal)),
            vec![Seen::Close(normal.clone())]
        );
        assert_eq!(
            parse_every_way(&masked(true, 8, b"")),
            vec![Seen::Close(vec![])]
        );
        // 1005 may not be sent by a peer.
        let mut status = vec![0x03, 0xED];
        status.extend_from_slice(b"why");
        assert_eq!(
            parse_every_way(&masked(true, 8, &status)),
            vec![Seen::CloseCode("why".to_string())]
        );
    }

    #[test]
    fn an_idle_reader_holds_no_bytes_and_an_unfinished_frame_only_its_own() {
        let mut reader = Reader::new(&masked(true, 1, b"{}"));
        assert!(reader.has_pending());
        assert_eq!(
            feed(&mut reader, &[], &[]),
            vec![Seen::Message(b"{}".to_vec())]
        );
        assert_eq!(reader.held(), 0);
        // Half a frame, after a whole one in the same read: only the half is kept.
        let mut bytes = masked(true, 1, &[b' '; 2000]);
        let next = masked(true, 1, b"{\"type\":\"ping\"}");
        bytes.extend_from_slice(&next[..5]);
        feed(&mut reader, &bytes, &[]);
        assert!(reader.held() <= next.len(), "held {}", reader.held());
        feed(&mut reader, &next[5..], &[]);
        assert_eq!(reader.held(), 0);
        // A fragmented message's buffer goes with the message.
        let mut fragmented = masked(false, 2, &[1; 5000]);
        fragmented.extend(masked(true, 0, &[2; 10]));
        feed(&mut reader, &fragmented, &[]);
        assert_eq!(reader.held(), 0);
    }
}

//! A connection's write side, shared by its session and the hub's fan-out writers (ADR 0015).
//!
//! A broadcast event is written by a fan-out writer (ADR 0015, ADR 0035), straight to the
//! socket with one non-blocking write, as long as nothing waits before it: no task is woken for
//! it. When the socket would block, or frames already wait, the event goes on the connection's
//! own queue instead, bounded in events and bytes (ADR 0012), and the session is woken to write
//! the queue out as the socket drains. The session's own frames (`welcome`, answers,
//! `subscribed`, replays, Close) go through the same queue, so the one lock of [`Conn`] decides
//! the order of everything the socket carries.
//!
//! Owns the queue, the per-channel sequence filter and the bounds; knows nothing of the protocol
//! beyond whole frames. Depends on tokio's socket only.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use protocol::Encoding;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Queued frames handed to one `writev`: frames that wait together leave in one write instead
/// of one each, without building a large iovec on the stack.
const COALESCE_FRAMES: usize = 64;

/// Identifies a channel's feed on this node (see `hub::Members`).
pub(crate) type FeedId = u64;

/// How much one connection may have waiting before it is a slow consumer (ADR 0012).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub events: usize,
    pub bytes: usize,
}

/// Where a connection's writing stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Frames are taken.
    Open,
    /// Broadcast events went over the bounds: no more are taken, and the session closes the
    /// connection with 4008 after what waits.
    Slow,
    /// A Close frame is queued: nothing follows it.
    Closing,
    /// The socket failed, or the session ended: nothing is written any more.
    Broken,
}

/// What a write attempt left behind.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    /// Queued frames written out so far (compare with a [`Mark`]).
    pub written: u64,
    /// Whether the queue is empty.
    pub drained: bool,
    pub state: State,
    /// Since when frames have waited without the socket taking any of their bytes.
    pub stalled_since: Option<Instant>,
}

/// The queue position just after some frames: they are out once `Progress::written` reaches it.
pub(crate) type Mark = u64;

/// The connection takes no more frames.
#[derive(Debug)]
pub(crate) struct Gone;

/// A connection's write side (see the module's documentation).
pub(crate) struct Conn {
    socket: OwnedWriteHalf,
    encoding: Encoding,
    /// The share of each channel's members this connection is listed in (`hub::Members`).
    shard: usize,
    bounds: Bounds,
    outbox: Mutex<Outbox>,
    /// Wakes the session: frames were queued behind a blocked socket, or the state changed.
    wake: Notify,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("encoding", &self.encoding)
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Outbox {
    /// Frames waiting, oldest first; the front one may be partly written.
    queue: VecDeque<Queued>,
    /// Bytes of the front frame already written.
    front_written: usize,
    /// Broadcast events waiting (queued or held) and their bytes: what the bounds count.
    events: usize,
    event_bytes: usize,
    /// Frames ever queued, and those written out completely.
    queued: u64,
    written: u64,
    /// The channels this connection receives.
    subs: Subs,
    state: Option<State>,
    stalled_since: Option<Instant>,
}

struct Queued {
    frame: Bytes,
    /// A broadcast event (counted against the bounds), not one of the session's frames.
    event: bool,
}

/// A channel the connection receives.
struct Sub {
    feed: FeedId,
    /// The last sequence delivered (or announced in `subscribed`): anything at or below it is
    /// not sent again.
    last_seq: u64,
    /// While a `subscribe` is answered (state read, replay fetched), live events wait here with
    /// their sequences instead of going out ahead of `subscribed` and the replay.
    held: Option<Vec<(u64, Bytes)>>,
}

/// Channels a connection usually has at once (its table and its own player channel): kept in
/// the connection itself, so that delivering an event touches no allocation of its own.
const INLINE_SUBS: usize = 2;

/// A connection's channels: the first [`INLINE_SUBS`] inline, any more on the heap.
#[derive(Default)]
struct Subs {
    inline: [Option<Sub>; INLINE_SUBS],
    more: Vec<Sub>,
}

impl Subs {
    fn find(&mut self, feed: FeedId) -> Option<&mut Sub> {
        self.inline
            .iter_mut()
            .flatten()
            .chain(self.more.iter_mut())
            .find(|s| s.feed == feed)
    }

    fn push(&mut self, sub: Sub) {
        match self.inline.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(sub),
            None => self.more.push(sub),
        }
    }

    fn remove(&mut self, feed: FeedId) -> Option<Sub> {
        if let Some(slot) = self
            .inline
            .iter_mut()
            .find(|slot| slot.as_ref().is_some_and(|s| s.feed == feed))
        {
            return slot.take();
        }
        let index = self.more.iter().position(|s| s.feed == feed)?;
        Some(self.more.swap_remove(index))
    }
}

impl Outbox {
    fn state(&self) -> State {
        self.state.unwrap_or(State::Open)
    }

    /// Counts one more broadcast event of `len` bytes as waiting, unless that would take the
    /// connection over its bounds (then it is a slow consumer).
    fn admit(&mut self, len: usize, bounds: Bounds) -> bool {
        if self.events + 1 > bounds.events || self.event_bytes + len > bounds.bytes {
            self.state = Some(State::Slow);
            return false;
        }
        self.events += 1;
        self.event_bytes += len;
        true
    }

    fn discount(&mut self, len: usize) {
        self.events = self.events.saturating_sub(1);
        self.event_bytes = self.event_bytes.saturating_sub(len);
    }

    fn push(&mut self, frame: Bytes, event: bool) {
        if self.queue.is_empty() {
            self.stalled_since = Some(Instant::now());
        }
        self.queue.push_back(Queued { frame, event });
        self.queued += 1;
    }

    fn progress(&self) -> Progress {
        Progress {
            written: self.written,
            drained: self.queue.is_empty(),
            state: self.state(),
            stalled_since: self.stalled_since,
        }
    }
}

impl Conn {
    pub fn new(socket: OwnedWriteHalf, encoding: Encoding, shard: usize, bounds: Bounds) -> Self {
        Self {
            socket,
            encoding,
            shard,
            bounds,
            outbox: Mutex::new(Outbox::default()),
            wake: Notify::new(),
        }
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    fn lock(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One broadcast event of channel `feed` (the fan-out writers' path): written now when nothing
    /// waits and the socket takes it whole, else queued (or held, during a `subscribe`) within
    /// the bounds. Never waits.
    pub fn deliver(&self, feed: FeedId, seq: u64, frame: &Bytes) {
        let mut guard = self.lock();
        let outbox = &mut *guard;
        if outbox.state() != State::Open {
            return;
        }
        let Some(sub) = outbox.subs.find(feed) else {
            return;
        };
        if seq <= sub.last_seq {
            return;
        }
        sub.last_seq = seq;
        if sub.held.is_some() {
            if !outbox.admit(frame.len(), self.bounds) {
                self.wake.notify_one();
            } else if let Some(held) = outbox.subs.find(feed).and_then(|s| s.held.as_mut()) {
                held.push((seq, frame.clone()));
            }
            return;
        }
        if !outbox.queue.is_empty() {
            if outbox.admit(frame.len(), self.bounds) {
                outbox.push(frame.clone(), true);
            } else {
                self.wake.notify_one();
            }
            return;
        }
        let written = match self.socket.try_write(frame) {
            Ok(n) if n == frame.len() => return,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                outbox.state = Some(State::Broken);
                self.wake.notify_one();
                return;
            }
        };
        // The socket would block: the session writes the rest as it drains. A frame begun must
        // be finished, whatever the bounds say, or the stream of frames would be corrupt.
        if !outbox.admit(frame.len(), self.bounds) {
            outbox.events += 1;
            outbox.event_bytes += frame.len();
        }
        outbox.push(frame.clone(), true);
        outbox.front_written = written;
        self.wake.notify_one();
    }

    /// Starts holding live events of `feed` for a `subscribe` being answered; whether the
    /// connection was not receiving the channel yet (then the caller adds it to the feed).
    pub fn hold(&self, feed: FeedId) -> bool {
        let mut guard = self.lock();
        let outbox = &mut *guard;
        match outbox.subs.find(feed) {
            Some(sub) => {
                let dropped = sub.held.replace(Vec::new()).unwrap_or_default();
                sub.last_seq = 0;
                for (_, frame) in dropped {
                    outbox.discount(frame.len());
                }
                false
            }
            None => {
                outbox.subs.push(Sub {
                    feed,
                    last_seq: 0,
                    held: Some(Vec::new()),
                });
                true
            }
        }
    }

    /// Ends the hold of `feed`: queues `frames` (`subscribed`, then the replay), then the live
    /// events held meanwhile that are after `last`, in one step, so that nothing of the channel
    /// goes out between or ahead of them. Live events follow directly from here on.
    pub fn go_live(&self, feed: FeedId, last: u64, frames: Vec<Bytes>) -> Result<Mark, Gone> {
        let mut guard = self.lock();
        let outbox = &mut *guard;
        if matches!(outbox.state(), State::Closing | State::Broken) {
            return Err(Gone);
        }
        let held = match outbox.subs.find(feed) {
            Some(sub) => {
                let held = sub.held.take().unwrap_or_default();
                sub.last_seq = held
                    .iter()
                    .map(|(seq, _)| *seq)
                    .filter(|seq| *seq > last)
                    .max()
                    .unwrap_or(last);
                held
            }
            None => Vec::new(),
        };
        for frame in frames {
            outbox.push(frame, false);
        }
        for (seq, frame) in held {
            if seq > last {
                outbox.push(frame, true);
            } else {
                outbox.discount(frame.len());
            }
        }
        Ok(outbox.queued)
    }

    /// Stops receiving `feed` (the caller has taken the connection off the feed).
    pub fn release(&self, feed: FeedId) {
        let mut guard = self.lock();
        let outbox = &mut *guard;
        if let Some(sub) = outbox.subs.remove(feed) {
            for (_, frame) in sub.held.unwrap_or_default() {
                outbox.discount(frame.len());
            }
        }
    }

    /// Queues one of the session's own frames.
    pub fn push(&self, frame: Bytes) -> Result<Mark, Gone> {
        let mut outbox = self.lock();
        if matches!(outbox.state(), State::Closing | State::Broken) {
            return Err(Gone);
        }
        outbox.push(frame, false);
        Ok(outbox.queued)
    }

    /// Queues a Close frame after everything that waits; nothing is taken after it.
    pub fn push_close(&self, frame: Bytes) -> Result<Mark, Gone> {
        let mut outbox = self.lock();
        if matches!(outbox.state(), State::Closing | State::Broken) {
            return Err(Gone);
        }
        outbox.state = Some(State::Closing);
        outbox.push(frame, false);
        Ok(outbox.queued)
    }

    /// The session ended: fan-outs skip the connection from now on.
    pub fn abandon(&self) {
        let mut outbox = self.lock();
        outbox.state = Some(State::Broken);
        outbox.queue.clear();
    }

    #[cfg(test)]
    pub fn progress(&self) -> Progress {
        self.lock().progress()
    }

    /// Writes what waits, several frames per `writev`, until the queue is empty or the socket
    /// would block. Never waits.
    pub fn write_queued(&self) -> Progress {
        let mut guard = self.lock();
        let outbox = &mut *guard;
        let mut progressed = false;
        while !outbox.queue.is_empty() && outbox.state() != State::Broken {
            let mut slices = [IoSlice::new(&[]); COALESCE_FRAMES];
            let mut count = 0;
            for (i, queued) in outbox.queue.iter().take(COALESCE_FRAMES).enumerate() {
                let start = if i == 0 { outbox.front_written } else { 0 };
                slices[i] = IoSlice::new(&queued.frame[start..]);
                count += 1;
            }
            let mut n = match self.socket.try_write_vectored(&slices[..count]) {
                Ok(0) => {
                    outbox.state = Some(State::Broken);
                    break;
                }
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    outbox.state = Some(State::Broken);
                    break;
                }
            };
            progressed = true;
            while n > 0 {
                let Some(front) = outbox.queue.front() else {
                    break;
                };
                let left = front.frame.len() - outbox.front_written;
                if n < left {
                    outbox.front_written += n;
                    break;
                }
                n -= left;
                outbox.front_written = 0;
                if let Some(done) = outbox.queue.pop_front() {
                    if done.event {
                        outbox.discount(done.frame.len());
                    }
                    outbox.written += 1;
                }
            }
        }
        if outbox.queue.is_empty() {
            outbox.stalled_since = None;
            if outbox.queue.capacity() > COALESCE_FRAMES {
                // A burst's queue is not kept for the rest of an idle connection's life.
                outbox.queue = VecDeque::new();
            }
        } else if progressed {
            outbox.stalled_since = Some(Instant::now());
        }
        outbox.progress()
    }

    /// Waits until the socket may take more bytes.
    pub async fn writable(&self) -> io::Result<()> {
        self.socket.writable().await
    }

    /// Waits until a fan-out writer wakes the session (see [`Conn::deliver`]).
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpSocket, TcpStream};

    /// A connected pair whose sending side fills up after a few KiB (small buffers both
    /// sides), like a client that stopped reading.
    async fn pair(bounds: Bounds) -> (Conn, TcpStream) {
        let listener = TcpSocket::new_v4().expect("socket");
        // Accepted sockets inherit it, as with the gateway's `send_buffer` setting.
        listener.set_send_buffer_size(4096).expect("SO_SNDBUF");
        listener
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let listener = listener.listen(16).expect("listen");
        let client = TcpSocket::new_v4().expect("socket");
        client.set_recv_buffer_size(2048).expect("SO_RCVBUF");
        let connect = client.connect(listener.local_addr().expect("addr"));
        let (client, accepted) = tokio::join!(connect, listener.accept());
        let (server, _) = accepted.expect("accept");
        let (_read, write) = server.into_split();
        (
            Conn::new(write, Encoding::Json, 0, bounds),
            client.expect("connect"),
        )
    }

    fn event(seq: u64) -> Bytes {
        crate::frame::message(Encoding::Json, format!("{seq:0>1000}").as_bytes())
    }

    /// Reads frames built by `frame::message`/`frame::close` (short, unmasked) until a Close;
    /// the payloads of data frames, then the Close's code.
    async fn read_all(client: &mut TcpStream) -> (Vec<u64>, Option<u16>) {
        let mut bytes = Vec::new();
        let mut seqs = Vec::new();
        loop {
            let mut chunk = [0u8; 8192];
            let n = client.read(&mut chunk).await.expect("read");
            if n == 0 {
                return (seqs, None);
            }
            bytes.extend_from_slice(&chunk[..n]);
            loop {
                if bytes.len() < 2 {
                    break;
                }
                let (len, header) = match bytes[1] {
                    126 if bytes.len() >= 4 => {
                        (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4)
                    }
                    126 => break,
                    len => (usize::from(len), 2),
                };
                if bytes.len() < header + len {
                    break;
                }
                let frame: Vec<u8> = bytes.drain(..header + len).collect();
                if crate::frame::is_close(&frame) {
                    return (seqs, Some(u16::from_be_bytes([frame[2], frame[3]])));
                }
                let text = std::str::from_utf8(&frame[header..]).expect("utf-8");
                seqs.push(text.parse().expect("a sequence"));
            }
        }
    }

    #[tokio::test]
    async fn a_blocked_connection_gets_its_queued_events_in_order_then_4008_past_its_bound() {
        let bounds = Bounds {
            events: 32,
            bytes: 1 << 20,
        };
        let (conn, mut client) = pair(bounds).await;
        assert!(conn.hold(7));
        let mark = conn
            .go_live(7, 0, vec![crate::frame::message(Encoding::Json, b"0")])
            .expect("open");
        assert!(conn.write_queued().written >= mark, "nothing blocks yet");

        // The client does not read: direct writes fill the socket, then events queue until
        // the bound is passed and the connection turns slow.
        let mut seq = 0;
        while conn.progress().state == State::Open {
            seq += 1;
            assert!(seq < 10_000, "the bound never tripped");
            conn.deliver(7, seq, &event(seq));
        }
        assert_eq!(conn.progress().state, State::Slow);
        assert!(
            !conn.progress().drained,
            "events were queued behind the full socket"
        );
        // Nothing more is taken, not even the session's own frames after the Close.
        conn.deliver(7, seq + 1, &event(seq + 1));
        conn.push_close(crate::frame::close(4008, "slow consumer"))
            .expect("the close is queued");
        assert!(
            conn.push(crate::frame::message(Encoding::Json, b"late"))
                .is_err()
        );

        let reader = tokio::spawn(async move { read_all(&mut client).await });
        while !conn.write_queued().drained {
            conn.writable().await.expect("writable");
        }
        let (seqs, close) = reader.await.expect("reader");
        assert_eq!(seqs[0], 0, "the frames queued before the events come first");
        let events = &seqs[1..];
        assert!(
            events.len() as u64 >= bounds.events as u64,
            "everything queued within the bound is delivered ({} events)",
            events.len()
        );
        assert_eq!(
            events,
            (1..=events.len() as u64).collect::<Vec<_>>(),
            "in order, none skipped or doubled"
        );
        assert!(
            (events.len() as u64) < seq,
            "the event over the bound is not sent"
        );
        assert_eq!(close, Some(4008), "the Close comes last");
    }

    #[tokio::test]
    async fn events_held_during_a_subscribe_follow_its_frames_without_gap_or_double() {
        let bounds = Bounds {
            events: 64,
            bytes: 1 << 20,
        };
        let (conn, mut client) = pair(bounds).await;
        assert!(conn.hold(1));
        // Live events arrive while `subscribed` (seq 3) and a replay of 2..=3 are prepared:
        // the ones at or below the live point are dropped, the rest held.
        for seq in [2, 3, 4, 5] {
            conn.deliver(1, seq, &event(seq));
        }
        assert!(
            !conn.hold(1),
            "a second subscribe of the same feed resets the hold"
        );
        for seq in [3, 4, 5] {
            conn.deliver(1, seq, &event(seq));
        }
        let frames = vec![event(1), event(2), event(3)];
        conn.go_live(1, 3, frames).expect("open");
        conn.deliver(1, 5, &event(5));
        conn.deliver(1, 6, &event(6));
        conn.push_close(crate::frame::close(1001, "bye"))
            .expect("close");
        while !conn.write_queued().drained {
            conn.writable().await.expect("writable");
        }
        let (seqs, close) = read_all(&mut client).await;
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(close, Some(1001));
    }

    #[tokio::test]
    async fn a_connection_on_three_channels_gets_theirs_and_nothing_of_one_it_left() {
        let bounds = Bounds {
            events: 64,
            bytes: 1 << 20,
        };
        let (conn, mut client) = pair(bounds).await;
        for feed in [1, 2, 3] {
            assert!(conn.hold(feed));
            conn.go_live(feed, 0, Vec::new()).expect("open");
        }
        conn.deliver(3, 10, &event(10));
        conn.deliver(1, 11, &event(11));
        conn.release(2);
        conn.deliver(2, 12, &event(12));
        conn.deliver(2, 13, &event(13));
        conn.deliver(3, 14, &event(14));
        conn.push_close(crate::frame::close(1000, "done"))
            .expect("close");
        while !conn.write_queued().drained {
            conn.writable().await.expect("writable");
        }
        let (seqs, close) = read_all(&mut client).await;
        assert_eq!(seqs, vec![10, 11, 14]);
        assert_eq!(close, Some(1000));
    }

    #[tokio::test]
    async fn events_held_past_the_bound_make_the_connection_slow() {
        let bounds = Bounds {
            events: 3,
            bytes: 1 << 20,
        };
        let (conn, _client) = pair(bounds).await;
        assert!(conn.hold(1));
        for seq in 1..=3 {
            conn.deliver(1, seq, &event(seq));
        }
        assert_eq!(conn.progress().state, State::Open, "three fit");
        conn.deliver(1, 4, &event(4));
        assert_eq!(conn.progress().state, State::Slow);
    }
}

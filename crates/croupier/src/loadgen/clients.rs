//! loadgen's clients once connected: a few reader threads, each polling its share of the
//! sockets with `mio`, instead of a tokio task per client (ADR 0017).
//!
//! loadgen shares the machine with the server it measures, so its own cost per delivered
//! message is taken from that server: a task per client cost a wakeup, a scheduler round trip,
//! tungstenite's zero-filled read buffer and a second read for `WouldBlock` per message. Here a
//! readable socket is read once (a short read means it is empty: the poll is edge-triggered, so
//! data arriving later raises a new event), frames are found in place with tungstenite's
//! header parser, and latencies go to a histogram of the thread's own.
//!
//! The WebSocket handshake and the first request (`subscribe`, or NATS's `CONNECT`/`SUB`) are
//! done before a client is handed over ([`handshake`]), keeping whatever the server sent after
//! its response.
//!
//! A Croupier client whose connection ends while the run goes on (its gateway was killed, or
//! closed it) keeps its place in its reader thread: what it followed, where it stood on each
//! channel, its bets without an answer. The thread asks the connect runtime for a new
//! connection ([`Reconnect`], with `subscribe`s that resume each channel after the last `seq`
//! received) and adopts it into the same slot when it is handed over, then sends the
//! unanswered bets again with their `bet_id`s.

use std::collections::{HashMap, VecDeque};
use std::io::{Cursor, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response, generate_request};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::handshake::machine::TryParse;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};
use tokio_util::sync::CancellationToken;

use protocol::Encoding;

use super::bets::{self, BetTally, BetsOut, Pending, TableState};
use super::delivery::{Received, Record};
use super::{EventTime, Incoming, Shared, Target};

/// Largest HTTP response to an upgrade, and largest WebSocket message, a client accepts.
const MAX_RESPONSE: usize = 16 * 1024;
const MAX_MESSAGE: usize = 1024 * 1024;
/// Read size: one read takes every message waiting on a socket at these rates.
const READ_CHUNK: usize = 64 * 1024;
/// Connections waiting to be taken by a reader thread.
const HANDOVER_QUEUE: usize = 1024;
/// Reconnections asked of the connect runtime and not taken by it yet (all reader threads
/// together). A thread keeps the requests that do not fit in a backlog of its own, which holds
/// at most one per client of the thread (a client asks again only once reconnected), so a
/// gateway losing thousands of clients at once costs no unbounded queue.
pub(super) const RECONNECT_QUEUE: usize = 1024;
/// With `--check-delivery`, at the end of the run: how often a thread looks whether its
/// clients have caught up with where the channels stood.
const CAUGHT_UP_EVERY: Duration = Duration::from_millis(50);
/// Bets a bettor leaves unanswered before it stops betting (until answers come back).
const BETS_IN_FLIGHT: usize = 64;
/// `TIMEOUT` answers waiting for their retry, per reader thread: open-loop bettors keep betting
/// through an outage, so this is what bounds the queue (a bet beyond it keeps its `TIMEOUT`).
const MAX_RETRIES_WAITING: usize = 65_536;

/// A bet answered `TIMEOUT`, to ask again at `due` on client `index` (in `slot`).
struct Retry {
    due: Instant,
    slot: usize,
    index: usize,
    pending: Pending,
}

// Ordered by due time, soonest first out of `BinaryHeap` (a max-heap).
impl Ord for Retry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.due.cmp(&self.due)
    }
}

impl PartialOrd for Retry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Retry {
    fn eq(&self, other: &Self) -> bool {
        self.due == other.due
    }
}

impl Eq for Retry {}

/// A client after its handshake, ready for a reader thread.
pub(super) struct Connected {
    pub index: usize,
    pub stream: TcpStream,
    /// Bytes the server sent after its upgrade response (frames already on their way).
    pub leftover: Vec<u8>,
    /// Bettors carry a token (Croupier only).
    pub bettor: bool,
    /// It follows its player channel too (a bettor with `--bet-rate`, or `--player-channels`).
    pub player_channel: bool,
    /// The table it follows: an index into [`ReaderConfig::tables`].
    pub table: usize,
    /// The URL it connected to: an index into the `--url` list.
    pub url: usize,
    /// A reconnection: the slot the client holds in its reader thread.
    pub slot: Option<usize>,
}

/// What a reader thread is handed: a connection, or word that a client's reconnection gave
/// up.
pub(super) enum Handover {
    Connected(Connected),
    GaveUp { slot: usize, index: usize },
}

/// A client to connect again, asked by its reader thread of the connect runtime.
#[derive(Debug)]
pub(super) struct Reconnect {
    pub index: usize,
    pub slot: usize,
    /// The URL whose connection ended: the next ones of the list are tried, in turn.
    pub url: usize,
    /// The `subscribe`s resuming each channel it followed.
    pub first: Vec<String>,
}

/// Connects the WebSocket: the upgrade request, its response checked (status 101, the accept
/// key, for Croupier the subprotocol), then `first` sent as a text frame. Returns the stream and
/// whatever followed the response.
pub(super) async fn handshake(
    mut stream: tokio::net::TcpStream,
    request: Request,
    expect_protocol: Option<&str>,
    first: &[String],
) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let (bytes, key) = generate_request(request).context("build the upgrade request")?;
    stream.write_all(&bytes).await?;
    let mut buffer = Vec::with_capacity(1024);
    let (length, response) = loop {
        if stream.read_buf(&mut buffer).await? == 0 {
            anyhow::bail!("the server closed the connection during the handshake");
        }
        if let Some(parsed) = Response::try_parse(&buffer).context("the upgrade response")? {
            break parsed;
        }
        if buffer.len() > MAX_RESPONSE {
            anyhow::bail!("the upgrade response is over {MAX_RESPONSE} bytes");
        }
    };
    if response.status().as_u16() != 101 {
        anyhow::bail!("the server answered the upgrade with {}", response.status());
    }
    let accept = response.headers().get("Sec-WebSocket-Accept");
    if accept.map(|v| v.as_bytes()) != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
        anyhow::bail!("the upgrade response has a wrong Sec-WebSocket-Accept");
    }
    if let Some(expected) = expect_protocol {
        let protocol = response.headers().get("Sec-WebSocket-Protocol");
        if protocol.map(|v| v.as_bytes()) != Some(expected.as_bytes()) {
            anyhow::bail!("the server did not accept the subprotocol {expected}");
        }
    }
    let leftover = buffer.split_off(length);
    for message in first {
        stream.write_all(&text_frame(message.as_bytes())).await?;
    }
    let stream = stream.into_std()?;
    Ok((stream, leftover))
}

/// A masked client frame (RFC 6455 §5.3) with `payload`.
fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let header = FrameHeader {
        opcode,
        mask: Some(mask()),
        ..FrameHeader::default()
    };
    let frame = Frame::from_payload(header, bytes::Bytes::copy_from_slice(payload));
    let mut out = Vec::with_capacity(payload.len() + 14);
    // Writing to a Vec cannot fail.
    let _ = frame.format(&mut out);
    out
}

fn text_frame(payload: &[u8]) -> Vec<u8> {
    client_frame(OpCode::Data(Data::Text), payload)
}

fn mask() -> [u8; 4] {
    let id = uuid::Uuid::new_v4();
    let b = id.as_bytes();
    [b[0], b[1], b[2], b[3]]
}

/// Where a reader thread's connections come from, and how to wake it when one waits.
#[derive(Clone)]
pub(super) struct Handle {
    tx: SyncSender<Handover>,
    waker: Arc<mio::Waker>,
}

impl Handle {
    /// Hands a connection over; waits while the thread's queue is full.
    pub async fn hand_over(&self, mut handover: Handover) {
        loop {
            match self.tx.try_send(handover) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) => {
                    handover = back;
                    let _ = self.waker.wake();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
        let _ = self.waker.wake();
    }

    pub fn wake(&self) {
        let _ = self.waker.wake();
    }
}

/// What a reader thread measured, merged into [`Shared`] when it ends.
pub(super) struct Tally {
    pub latency: Histogram<u64>,
    pub bet_latency: Histogram<u64>,
    /// Outcome declared to `bet_settled` at the bettor (`--bet-rate`).
    pub settled_latency: Histogram<u64>,
    pub bets: BetTally,
    /// `--check-delivery`: each client's account of each channel it followed.
    pub delivery: Vec<Record>,
}

/// Settings every reader thread shares.
pub(super) struct ReaderConfig {
    pub target: Target,
    /// The tables followed; clients are spread over them.
    pub tables: Vec<String>,
    pub read_batching: Duration,
    /// `--bet-rate`: the time between two bets on one table, for this thread (the rate is split
    /// over threads and tables). `None`: bettors bet once per round, as before.
    pub bet_every: Option<Duration>,
    /// Stop betting on a round this long before its `closes_at` (µs).
    pub close_margin_us: i64,
    /// Bettor `i` bets as player `<players>-<i>`.
    pub players: String,
    pub bets_out: Option<BetsOut>,
    /// Where a client whose connection ended asks for a new one (Croupier only; without it a
    /// connection that ends is dropped).
    pub reconnects: Option<tokio::sync::mpsc::Sender<Reconnect>>,
    /// `--check-delivery`: keep what each client received on each channel.
    pub check_delivery: bool,
}

const WAKER: mio::Token = mio::Token(usize::MAX);

/// Starts a reader thread; it runs until `stop` is cancelled (and the handle woken).
/// A reader thread; with `paused`, one that stops reading its sockets while it is set
/// (`--burst`'s slow clients).
pub(super) fn spawn_reader(
    config: Arc<ReaderConfig>,
    shared: Arc<Shared>,
    stop: CancellationToken,
    paused: Option<Arc<AtomicBool>>,
) -> anyhow::Result<(Handle, std::thread::JoinHandle<anyhow::Result<Tally>>)> {
    let poll = mio::Poll::new().context("create a poll")?;
    let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER).context("create a waker")?);
    let (tx, rx) = std::sync::mpsc::sync_channel(HANDOVER_QUEUE);
    let thread = std::thread::Builder::new()
        .name("loadgen-reader".into())
        .spawn(move || {
            let mut reader = Reader::new(config, shared, poll, stop.clone())?;
            reader.paused = paused;
            reader.run(&rx, &stop)
        })
        .context("start a reader thread")?;
    Ok((Handle { tx, waker }, thread))
}

struct Conn {
    index: usize,
    /// `None` while the client waits to be connected again.
    stream: Option<mio::net::TcpStream>,
    /// Bytes of a frame not complete yet.
    partial: Vec<u8>,
    /// A fragmented message being put together.
    fragments: Option<Vec<u8>>,
    /// Frames the socket would not take yet.
    unsent: Vec<u8>,
    /// NATS protocol bytes not parsed yet (`--target nats`).
    nats: Vec<u8>,
    bettor: bool,
    table: usize,
    bets_sent: HashMap<String, Pending>,
    next_bet: u64,
    /// The URL connected to (an index into the `--url` list).
    url: usize,
    follows: Vec<Follow>,
    /// Bets sent on a connection that ended before their answer: sent again, same `bet_id`,
    /// on the next one.
    unanswered: Vec<Pending>,
}

/// A channel a client follows, and where it stands on it.
struct Follow {
    channel: Arc<str>,
    epoch: Option<String>,
    /// The last `seq` its view holds: the last event received, or the `subscribed.seq` it
    /// started from. A resume asks for what follows.
    at: u64,
    /// A `subscribed` came, so a new connection resumes instead of starting afresh.
    subscribed: bool,
    /// The `subscribe` in flight carries `since` (its answer says whether it recovered).
    resuming: bool,
    /// `--check-delivery`: the first `seq` it is responsible for (first `subscribed.seq` + 1).
    from: Option<u64>,
    received: Option<Received>,
}

impl Follow {
    fn new(channel: Arc<str>, check_delivery: bool) -> Self {
        Self {
            channel,
            epoch: None,
            at: 0,
            subscribed: false,
            resuming: false,
            from: None,
            received: check_delivery.then(Received::default),
        }
    }

    /// The `subscribe` for a new connection: a resume after `at` once the channel was
    /// subscribed (websocket.md, "Sequences and resume").
    fn resubscribe(&mut self) -> String {
        self.resuming = self.subscribed;
        if let Some(received) = &mut self.received {
            received.new_connection();
        }
        let mut message = serde_json::json!({"type": "subscribe", "channel": &*self.channel});
        if self.subscribed {
            message["since"] = self.at.into();
            if let Some(epoch) = &self.epoch {
                message["epoch"] = epoch.as_str().into();
            }
        }
        message.to_string()
    }
}

/// How a connection ended while measuring: the server's close code, if it sent one.
struct Ended(Option<u16>);

struct Reader {
    config: Arc<ReaderConfig>,
    shared: Arc<Shared>,
    poll: mio::Poll,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    scratch: Vec<u8>,
    tally: Tally,
    tables: Vec<TableState>,
    /// Bets made by this thread so far (picks each one's selection).
    bets_made: u64,
    stop: CancellationToken,
    /// Reconnections not taken by the connect runtime yet (at most one per client).
    backlog: VecDeque<Reconnect>,
    /// Bets answered `TIMEOUT`, soonest due first, to ask again (bounded: [`MAX_RETRIES_WAITING`]).
    retries: std::collections::BinaryHeap<Retry>,
    /// `--check-delivery`: every client reached where its channels stood at the end.
    caught_up: bool,
    checked_at: Instant,
    /// While set, nothing is read (`--burst`'s slow clients).
    paused: Option<Arc<AtomicBool>>,
    /// The last broadcast events read, by their exact bytes, oldest first (see [`Seen`]).
    seen: VecDeque<Rc<Seen>>,
}

/// How many distinct event messages a reader keeps read: enough for the events of every table
/// that arrive interleaved at a time (each table's event reaches its clients one after another).
const SEEN_EVENTS: usize = 16;

/// An `event` message as loadgen reads it, kept with its bytes. A broadcast reaches every client
/// of its channel as the same bytes, so the next clients that receive exactly these bytes are
/// read from here instead of parsing the JSON and the timestamps again: the reader then costs
/// about what the floor's reader costs per delivery (ADR 0030), and whatever each client
/// receives is still compared byte for byte. A message that differs in any byte is read afresh.
struct Seen {
    payload: Box<[u8]>,
    channel: Option<Box<str>>,
    seq: Option<u64>,
    event: Option<SeenEvent>,
}

/// The parts of an event's body loadgen reads.
struct SeenEvent {
    kind: Box<str>,
    /// `at`, in µs since the Unix epoch.
    at: Option<i64>,
    /// The table's index among `--table`'s.
    table: Option<usize>,
    round: Option<u64>,
    /// `round_opened`'s `closes_at`, in µs since the Unix epoch.
    closes_at: Option<i64>,
    bets: Option<u64>,
}

impl Reader {
    fn new(
        config: Arc<ReaderConfig>,
        shared: Arc<Shared>,
        poll: mio::Poll,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let tables = config
            .tables
            .iter()
            .map(|_| TableState::default())
            .collect();
        Ok(Self {
            config,
            shared,
            poll,
            conns: Vec::new(),
            free: Vec::new(),
            scratch: vec![0; READ_CHUNK],
            tally: Tally {
                latency: super::histogram()?,
                bet_latency: super::histogram()?,
                settled_latency: super::histogram()?,
                bets: BetTally::default(),
                delivery: Vec::new(),
            },
            tables,
            bets_made: 0,
            stop,
            backlog: VecDeque::new(),
            retries: std::collections::BinaryHeap::new(),
            caught_up: false,
            seen: VecDeque::with_capacity(SEEN_EVENTS),
            checked_at: Instant::now(),
            paused: None,
        })
    }

    fn run(mut self, rx: &Receiver<Handover>, stop: &CancellationToken) -> anyhow::Result<Tally> {
        let mut events = mio::Events::with_capacity(1024);
        let pause = self.config.read_batching;
        while !stop.is_cancelled() {
            if self
                .paused
                .as_ref()
                .is_some_and(|p| p.load(Ordering::Relaxed))
            {
                // The sockets' readiness stays with the poll until it is asked again.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            // Take what is ready; with nothing ready, pause first (`--read-batching`) so that
            // the next wait wakes to many sockets instead of one, then wait.
            let mut ready = false;
            if !pause.is_zero() {
                ready = self.wait(&mut events, Duration::ZERO)?;
                if !ready {
                    std::thread::sleep(pause);
                    ready = self.wait(&mut events, Duration::ZERO)?;
                }
            }
            if !ready {
                let now = Instant::now();
                let until_due = self.bet_rounds(now).min(self.retry_due(now));
                self.wait(&mut events, until_due.min(Duration::from_millis(100)))?;
            }
            for event in &events {
                if event.token() == WAKER {
                    continue;
                }
                let slot = event.token().0;
                if let Err(Ended(code)) = self.service(slot, event.is_writable()) {
                    self.lost(slot, code);
                }
            }
            while let Ok(handover) = rx.try_recv() {
                match handover {
                    Handover::Connected(connected) => self.adopt(connected),
                    Handover::GaveUp { slot, index } => self.gave_up(slot, index),
                }
            }
            self.bet_rounds(Instant::now());
            self.retry_timeouts(Instant::now());
            self.ask_reconnects();
            self.check_caught_up();
        }
        self.finish_bets();
        for slot in 0..self.conns.len() {
            if let Some(conn) = self.conns[slot].take() {
                self.record_delivery(&conn, false);
                self.conns[slot] = Some(conn);
            }
        }
        // Our own stop: a Close to each server, best effort.
        let mut close = Frame::close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
        close.header_mut().mask = Some(mask());
        let mut frame = Vec::with_capacity(16);
        let _ = close.format(&mut frame);
        for stream in self
            .conns
            .iter_mut()
            .flatten()
            .filter_map(|c| c.stream.as_mut())
        {
            let _ = stream.write(&frame);
        }
        Ok(self.tally)
    }

    /// Polls; says whether anything is ready.
    fn wait(&mut self, events: &mut mio::Events, timeout: Duration) -> anyhow::Result<bool> {
        match self.poll.poll(events, Some(timeout)) {
            Ok(()) => Ok(!events.is_empty()),
            Err(error) if error.kind() == ErrorKind::Interrupted => Ok(false),
            Err(error) => Err(error).context("poll"),
        }
    }

    fn adopt(&mut self, connected: Connected) {
        let mut stream = mio::net::TcpStream::from_std(connected.stream);
        if let Some(slot) = connected.slot {
            return self.readopt(
                slot,
                connected.index,
                connected.url,
                stream,
                connected.leftover,
            );
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if stream.set_nodelay(true).is_err() || self.register(&mut stream, slot).is_err() {
            self.free.push(slot);
            self.count_drop(None);
            return;
        }
        let table = connected.table.min(self.tables.len().saturating_sub(1));
        let rated = self.config.bet_every.is_some();
        if connected.bettor && rated {
            self.tables[table].bettors.push(slot);
        }
        let mut follows = Vec::new();
        if self.config.target == Target::Croupier {
            let check = self.config.check_delivery;
            let channel: Arc<str> = format!("table.{}", self.config.tables[table]).into();
            follows.push(Follow::new(channel, check));
            if connected.player_channel {
                let channel = format!("player.{}-{}", self.config.players, connected.index);
                follows.push(Follow::new(channel.into(), check));
            }
        }
        self.conns[slot] = Some(Conn {
            index: connected.index,
            stream: Some(stream),
            partial: Vec::new(),
            fragments: None,
            unsent: Vec::new(),
            nats: Vec::new(),
            bettor: connected.bettor,
            table,
            bets_sent: HashMap::new(),
            next_bet: 0,
            url: connected.url,
            follows,
            unanswered: Vec::new(),
        });
        self.leftover(slot, connected.leftover);
    }

    fn register(&self, stream: &mut mio::net::TcpStream, slot: usize) -> std::io::Result<()> {
        self.poll.registry().register(
            stream,
            mio::Token(slot),
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )
    }

    /// Frames that came with the upgrade response.
    fn leftover(&mut self, slot: usize, leftover: Vec<u8>) {
        if !leftover.is_empty()
            && let Err(Ended(code)) = self.take(slot, &leftover)
        {
            self.lost(slot, code);
        }
    }

    /// A reconnected client takes its slot again: its `subscribe`s went with the handshake;
    /// the bets its last connection left unanswered are sent again.
    fn readopt(
        &mut self,
        slot: usize,
        index: usize,
        url: usize,
        mut stream: mio::net::TcpStream,
        leftover: Vec<u8>,
    ) {
        let waiting = self
            .conns
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.index == index && c.stream.is_none());
        if !waiting {
            return;
        }
        if stream.set_nodelay(true).is_err() || self.register(&mut stream, slot).is_err() {
            self.end(slot, None);
            return;
        }
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        conn.stream = Some(stream);
        conn.url = url;
        if conn.bettor && self.config.bet_every.is_some() {
            self.tables[conn.table].bettors.push(slot);
        }
        let unanswered = std::mem::take(&mut conn.unanswered);
        let mut result = Ok(());
        for pending in unanswered {
            if result.is_err() {
                if let Some(conn) = self.conns[slot].as_mut() {
                    conn.unanswered.push(pending);
                }
            } else if pending.tries >= bets::MAX_TRIES {
                self.final_answer(index, &pending, "none");
            } else {
                // Its fate is unknown, as after a `TIMEOUT`: asked again with the same bet id.
                self.tally.bets.resent += 1;
                result = self.send_bet(slot, pending);
            }
        }
        match result {
            Ok(()) => self.leftover(slot, leftover),
            Err(Ended(code)) => self.lost(slot, code),
        }
    }

    /// A connection ended. While the run goes on a Croupier client is connected again
    /// ([`Reconnect`]); otherwise it is gone.
    fn lost(&mut self, slot: usize, code: Option<u16>) {
        if self.config.reconnects.is_none() || self.stop.is_cancelled() {
            return self.end(slot, code);
        }
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let Some(mut stream) = conn.stream.take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut stream);
        drop(stream);
        conn.partial.clear();
        conn.fragments = None;
        conn.unsent.clear();
        conn.nats.clear();
        for (_, pending) in conn.bets_sent.drain() {
            if pending.counted {
                conn.unanswered.push(pending);
            }
        }
        let request = Reconnect {
            index: conn.index,
            slot,
            url: conn.url,
            first: conn.follows.iter_mut().map(Follow::resubscribe).collect(),
        };
        let table = conn.table;
        self.tables[table].bettors.retain(|s| *s != slot);
        self.count_drop(code);
        self.backlog.push_back(request);
    }

    /// The connect runtime could not connect the client again: it is gone, and with it its
    /// bets without an answer.
    fn gave_up(&mut self, slot: usize, index: usize) {
        let waiting = self
            .conns
            .get(slot)
            .and_then(Option::as_ref)
            .is_some_and(|c| c.index == index && c.stream.is_none());
        if waiting {
            self.close(slot, true);
        }
    }

    /// Passes on the reconnections the connect runtime has room for.
    fn ask_reconnects(&mut self) {
        let Some(requests) = &self.config.reconnects else {
            return;
        };
        while let Some(request) = self.backlog.pop_front() {
            match requests.try_send(request) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(request)) => {
                    self.backlog.push_front(request);
                    break;
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                    self.backlog.clear();
                    break;
                }
            }
        }
    }

    /// `--check-delivery`, once the run asks where the channels stand: says when every
    /// client of this thread has received up to there (or was told where to resume from).
    fn check_caught_up(&mut self) {
        if !self.config.check_delivery
            || self.caught_up
            || self.checked_at.elapsed() < CAUGHT_UP_EVERY
        {
            return;
        }
        let Some(targets) = self.shared.drain_targets.get() else {
            return;
        };
        self.checked_at = Instant::now();
        let behind = self.conns.iter().flatten().any(|conn| {
            conn.stream.is_none()
                || conn
                    .follows
                    .iter()
                    .any(|f| f.at < targets.get(f.channel.as_ref()).copied().unwrap_or(0))
        });
        if !behind {
            self.caught_up = true;
            self.shared.caught_up.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `--check-delivery`: keeps the client's account of each channel it followed. `left`: it
    /// left before the run ended, so it answers only for what came before.
    fn record_delivery(&mut self, conn: &Conn, left: bool) {
        for follow in &conn.follows {
            let (Some(from), Some(received)) = (follow.from, &follow.received) else {
                continue;
            };
            self.tally.delivery.push(Record {
                channel: follow.channel.clone(),
                from,
                left_at: left.then_some(follow.at),
                runs: received.runs().to_vec(),
            });
        }
    }

    /// The connection is over for good.
    fn end(&mut self, slot: usize, code: Option<u16>) {
        if self.conns.get(slot).is_some_and(Option::is_some) {
            self.count_drop(code);
            self.close(slot, true);
        }
    }

    /// Frees the slot; the client's bets still without an answer are left without one.
    fn close(&mut self, slot: usize, left: bool) {
        let Some(mut conn) = self.conns[slot].take() else {
            return;
        };
        if let Some(stream) = conn.stream.as_mut() {
            let _ = self.poll.registry().deregister(stream);
        }
        self.free.push(slot);
        self.tables[conn.table].bettors.retain(|s| *s != slot);
        let unanswered: Vec<Pending> = conn
            .bets_sent
            .drain()
            .map(|(_, p)| p)
            .chain(conn.unanswered.drain(..))
            .collect();
        for pending in unanswered {
            self.final_answer(conn.index, &pending, "none");
        }
        self.record_delivery(&conn, left);
    }

    /// A `subscribed` answer: where the channel stands, and whether a resume recovered.
    fn subscribed(
        &mut self,
        slot: usize,
        channel: &str,
        seq: u64,
        epoch: Option<&str>,
        recovered: bool,
    ) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let Some(follow) = conn.follows.iter_mut().find(|f| &*f.channel == channel) else {
            return;
        };
        if follow.resuming {
            let counter = if recovered {
                &self.shared.resumes_recovered
            } else {
                &self.shared.resumes_not_recovered
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        // A recovered resume replays up to `seq` next, so the view moves with the replay;
        // otherwise the view starts at `seq` (what came before it is lost to this client).
        if !follow.resuming || !recovered {
            follow.at = follow.at.max(seq);
        }
        follow.resuming = false;
        follow.subscribed = true;
        if let Some(epoch) = epoch
            && follow.epoch.as_deref() != Some(epoch)
        {
            follow.epoch = Some(epoch.to_string());
        }
        if follow.from.is_none() {
            follow.from = Some(seq + 1);
        }
    }

    /// An event on a followed channel: the view moves on; with `--check-delivery` it is
    /// counted, and counted doubled if it came before.
    fn channel_event(&mut self, slot: usize, channel: &str, seq: u64) {
        let Some(conn) = self.conns[slot].as_mut() else {
            return;
        };
        let Some(follow) = conn.follows.iter_mut().find(|f| &*f.channel == channel) else {
            return;
        };
        follow.at = follow.at.max(seq);
        if let Some(received) = &mut follow.received
            && !received.record(seq)
        {
            self.shared.doubled.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count_drop(&self, code: Option<u16>) {
        self.shared.drops.fetch_add(1, Ordering::Relaxed);
        if code == Some(4008) {
            self.shared.slow_closes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads what the socket has and writes what waits.
    fn service(&mut self, slot: usize, writable: bool) -> Result<(), Ended> {
        if writable {
            self.flush(slot)?;
        }
        loop {
            let Some(stream) = self.conns[slot].as_mut().and_then(|c| c.stream.as_mut()) else {
                return Ok(());
            };
            let n = match stream.read(&mut self.scratch) {
                Ok(0) => return Err(Ended(None)),
                Ok(n) => n,
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Err(Ended(None)),
            };
            let data = std::mem::take(&mut self.scratch);
            let result = self.take(slot, &data[..n]);
            self.scratch = data;
            result?;
            // Edge-triggered: a read shorter than the buffer emptied the socket, and data
            // arriving after it raises a new event.
            if n < self.scratch.len() {
                return Ok(());
            }
        }
    }

    /// Takes newly read bytes: every complete frame in them is handled, the rest kept.
    fn take(&mut self, slot: usize, data: &[u8]) -> Result<(), Ended> {
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        if conn.partial.is_empty() {
            let used = self.frames(slot, data)?;
            if let Some(conn) = self.conns[slot].as_mut() {
                conn.partial.extend_from_slice(&data[used..]);
            }
        } else {
            conn.partial.extend_from_slice(data);
            let buffered = std::mem::take(&mut conn.partial);
            let used = self.frames(slot, &buffered)?;
            if let Some(conn) = self.conns[slot].as_mut() {
                conn.partial = buffered;
                conn.partial.drain(..used);
            }
        }
        match self.conns[slot].as_ref() {
            Some(conn) if conn.partial.len() > MAX_MESSAGE + 14 => Err(Ended(None)),
            _ => Ok(()),
        }
    }

    /// Handles the complete frames at the start of `data`; returns how many bytes they took.
    fn frames(&mut self, slot: usize, data: &[u8]) -> Result<usize, Ended> {
        let mut at = 0;
        while at < data.len() {
            let mut cursor = Cursor::new(&data[at..]);
            let (header, length) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(_) => return Err(Ended(None)),
            };
            let header_len = cursor.position() as usize;
            let length = usize::try_from(length).map_err(|_| Ended(None))?;
            if length > MAX_MESSAGE || header.mask.is_some() {
                return Err(Ended(None));
            }
            if data.len() - at - header_len < length {
                break;
            }
            let payload = &data[at + header_len..at + header_len + length];
            at += header_len + length;
            self.frame(slot, &header, payload)?;
        }
        Ok(at)
    }

    fn frame(&mut self, slot: usize, header: &FrameHeader, payload: &[u8]) -> Result<(), Ended> {
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        match header.opcode {
            OpCode::Data(Data::Text | Data::Binary) if header.is_final => {
                if conn.fragments.is_some() {
                    return Err(Ended(None));
                }
                self.message(slot, payload)
            }
            OpCode::Data(Data::Text | Data::Binary) => {
                conn.fragments = Some(payload.to_vec());
                Ok(())
            }
            OpCode::Data(Data::Continue) => {
                let Some(fragments) = conn.fragments.as_mut() else {
                    return Err(Ended(None));
                };
                fragments.extend_from_slice(payload);
                if fragments.len() > MAX_MESSAGE {
                    return Err(Ended(None));
                }
                if header.is_final {
                    let whole = conn.fragments.take().unwrap_or_default();
                    self.message(slot, &whole)?;
                }
                Ok(())
            }
            OpCode::Control(Control::Ping) => {
                self.send(slot, &client_frame(OpCode::Control(Control::Pong), payload))
            }
            OpCode::Control(Control::Pong) => Ok(()),
            OpCode::Control(Control::Close) => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                Err(Ended(code))
            }
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                Err(Ended(None))
            }
        }
    }

    fn message(&mut self, slot: usize, payload: &[u8]) -> Result<(), Ended> {
        match self.config.target {
            Target::Croupier => self.croupier_message(slot, payload),
            Target::Nats => self.nats_bytes(slot, payload),
        }
    }

    fn croupier_message(&mut self, slot: usize, payload: &[u8]) -> Result<(), Ended> {
        if let Some(seen) = self.seen.iter().find(|s| *s.payload == *payload) {
            let seen = seen.clone();
            return self.event(slot, &seen);
        }
        // Only the few fields measured are read, borrowed.
        let Ok(message) = serde_json::from_slice::<Incoming<'_>>(payload) else {
            return Ok(());
        };
        match message.kind.as_ref() {
            "event" => {
                let seen = Rc::new(self.read_event(payload, &message));
                if self.seen.len() == SEEN_EVENTS {
                    self.seen.pop_front();
                }
                self.seen.push_back(seen.clone());
                self.event(slot, &seen)?;
            }
            "subscribed" => {
                if let (Some(channel), Some(seq)) = (message.channel.as_deref(), message.seq) {
                    let recovered = message.recovered.unwrap_or(true);
                    self.subscribed(slot, channel, seq, message.epoch.as_deref(), recovered);
                }
            }
            "bet_result" | "error" => {
                let Some(conn) = self.conns[slot].as_mut() else {
                    return Ok(());
                };
                let Some(pending) = message
                    .request_id
                    .as_deref()
                    .and_then(|id| conn.bets_sent.remove(id))
                else {
                    return Ok(());
                };
                let index = conn.index;
                let code = if message.kind == "bet_result" {
                    "accepted"
                } else {
                    message.code.as_deref().unwrap_or("error")
                };
                if code == "TIMEOUT" && pending.counted && pending.tries < bets::MAX_TRIES {
                    // The bet's fate is unknown: ask again with the same bet id, after a pause.
                    self.tally.bets.timeouts_retried += 1;
                    if self.retries.len() >= MAX_RETRIES_WAITING {
                        // More bets in doubt than a run can mean to resolve: this one stays so.
                        self.final_answer(index, &pending, "TIMEOUT");
                        return Ok(());
                    }
                    let due = Instant::now() + bets::retry_pause(pending.tries);
                    self.retries.push(Retry {
                        due,
                        slot,
                        index,
                        pending,
                    });
                    return Ok(());
                }
                self.shared.bets_answered.fetch_add(1, Ordering::Relaxed);
                if code == "accepted" {
                    self.shared.bets_accepted.fetch_add(1, Ordering::Relaxed);
                }
                if self.shared.is_measuring() || pending.counted {
                    let micros = pending.due.elapsed().as_micros() as u64;
                    let _ = self.tally.bet_latency.record(micros.max(1));
                }
                let code = code.to_string();
                self.final_answer(index, &pending, &code);
            }
            _ => {}
        }
        Ok(())
    }

    /// What loadgen reads of an `event` message, parsed once per distinct message.
    fn read_event(&self, payload: &[u8], message: &Incoming<'_>) -> Seen {
        let micros = |t: &str| domain::Timestamp::parse(t).ok().map(|t| t.unix_micros());
        Seen {
            payload: payload.into(),
            channel: message.channel.as_deref().map(Into::into),
            seq: message.seq,
            event: message.event.as_ref().map(|event| SeenEvent {
                kind: event.kind.as_ref().into(),
                at: micros(&event.at),
                table: event
                    .table
                    .as_deref()
                    .and_then(|t| self.config.tables.iter().position(|name| name == t)),
                round: event.round,
                closes_at: event.closes_at.as_deref().and_then(micros),
                bets: event.bets,
            }),
        }
    }

    /// One `event` message received by the client in `slot`.
    fn event(&mut self, slot: usize, seen: &Seen) -> Result<(), Ended> {
        if let (Some(channel), Some(seq)) = (seen.channel.as_deref(), seen.seq) {
            self.channel_event(slot, channel, seq);
        }
        let Some(event) = seen.event.as_ref() else {
            self.delivered(None);
            return Ok(());
        };
        self.delivered(event.at);
        if let (Some(table), Some(round)) = (event.table, event.round) {
            self.track(table, round, event);
        }
        if self.config.bet_every.is_some() {
            return Ok(());
        }
        // Without a rate: each bettor bets once on each round it sees open.
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        if conn.bettor && conn.bets_sent.len() < BETS_IN_FLIGHT && &*event.kind == "round_opened" {
            let Some(round) = event.round else {
                return Ok(());
            };
            let table = conn.table;
            self.place(slot, table, round, Instant::now(), false)?;
        }
        Ok(())
    }

    /// Keeps what a table event says about its round: when it is open for bets (and until
    /// when), when its outcome and settlement were stamped; and times a bettor's `bet_settled`
    /// from its round's outcome.
    fn track(&mut self, table: usize, round: u64, event: &SeenEvent) {
        let now = Instant::now();
        let at = event.at;
        match &*event.kind {
            "round_opened" => {
                let closes_at = event.closes_at;
                let state = &mut self.tables[table];
                if let Some(closes_at) = closes_at
                    && round > state.opened
                {
                    state.stop_betting(now);
                    state.open = Some((round, closes_at));
                    state.opened = round;
                }
            }
            "betting_closed" | "round_voided" => {
                let state = &mut self.tables[table];
                if state.open.is_some_and(|(r, _)| r == round) {
                    state.open = None;
                    state.stop_betting(now);
                }
            }
            "outcome_declared" => {
                let times = self.tally.bets.rounds.entry((table, round)).or_default();
                times.outcome_at = times.outcome_at.or(at);
            }
            "round_settled" => {
                let times = self.tally.bets.rounds.entry((table, round)).or_default();
                if times.settled_at.is_none() && times.bet_on {
                    self.shared.rounds_unsettled.fetch_sub(1, Ordering::Relaxed);
                }
                times.settled_at = times.settled_at.or(at).or(Some(wall_micros()));
                times.bets = times.bets.or(event.bets);
            }
            "bet_settled" | "bet_refunded" => {
                let outcome = self
                    .tally
                    .bets
                    .rounds
                    .get(&(table, round))
                    .and_then(|t| t.outcome_at);
                if let Some(outcome) = outcome {
                    let latency = (wall_micros() - outcome).max(1) as u64;
                    let _ = self.tally.settled_latency.record(latency);
                }
            }
            _ => {}
        }
    }

    /// `--bet-rate`: sends every bet due by `now` on each table whose round is open; returns
    /// how long until the next one is due.
    fn bet_rounds(&mut self, now: Instant) -> Duration {
        let Some(every) = self.config.bet_every else {
            return Duration::MAX;
        };
        let betting = self.shared.betting.load(Ordering::Relaxed);
        let wall = wall_micros();
        let mut until = Duration::MAX;
        for table in 0..self.tables.len() {
            let state = &mut self.tables[table];
            let Some((round, closes_at)) = state.open else {
                continue;
            };
            if !betting || wall >= closes_at - self.config.close_margin_us {
                state.stop_betting(now);
                if betting {
                    state.open = None;
                }
                continue;
            }
            let mut due = *state.next_due.get_or_insert(now);
            if state.window_from.is_none() {
                state.window_from = Some(now);
            }
            // Behind by more than a second: this thread cannot keep the rate; the backlog is
            // dropped rather than burst (the report's bets sent say what was offered).
            if now.saturating_duration_since(due) > Duration::from_secs(1) {
                due = now;
            }
            while due <= now {
                let Some(slot) = self.tables[table].next_bettor() else {
                    break;
                };
                if let Err(Ended(code)) = self.place(slot, table, round, due, true) {
                    self.lost(slot, code);
                }
                due += every;
            }
            self.tables[table].next_due = Some(due);
            until = until.min(due.saturating_duration_since(now));
        }
        until
    }

    /// Makes a new bet on `round` for the bettor in `slot`, due at `due`.
    fn place(
        &mut self,
        slot: usize,
        table: usize,
        round: u64,
        due: Instant,
        counted: bool,
    ) -> Result<(), Ended> {
        self.bets_made += 1;
        let pending = Pending {
            due,
            bet_id: uuid::Uuid::new_v4(),
            table,
            round,
            n: self.bets_made,
            tries: 0,
            counted,
        };
        if counted {
            self.tally.bets.sent += 1;
            self.shared.bets_outstanding.fetch_add(1, Ordering::Relaxed);
        }
        self.send_bet(slot, pending)
    }

    /// Sends (or sends again) a pending bet under a new request id.
    fn send_bet(&mut self, slot: usize, mut pending: Pending) -> Result<(), Ended> {
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        if conn.stream.is_none() {
            if pending.counted {
                conn.unanswered.push(pending);
            }
            return Ok(());
        }
        pending.tries += 1;
        conn.next_bet += 1;
        let request_id = format!("{}-{}", conn.index, conn.next_bet);
        let message = bets::bet_message(&request_id, &pending, &self.config.tables[pending.table]);
        conn.bets_sent.insert(request_id, pending);
        self.send(slot, &text_frame(message.as_bytes()))
    }

    /// A counted bet's final answer (`accepted`, a code, or `none`): tallied and written out.
    fn final_answer(&mut self, index: usize, pending: &Pending, answer: &str) {
        if !pending.counted {
            return;
        }
        self.shared.bets_outstanding.fetch_sub(1, Ordering::Relaxed);
        match answer {
            "accepted" => {
                self.tally.bets.accepted += 1;
                let times = self
                    .tally
                    .bets
                    .rounds
                    .entry((pending.table, pending.round))
                    .or_default();
                if !times.bet_on && times.settled_at.is_none() {
                    self.shared.rounds_unsettled.fetch_add(1, Ordering::Relaxed);
                }
                times.bet_on = true;
            }
            "none" => self.tally.bets.unanswered += 1,
            code => {
                *self
                    .tally
                    .bets
                    .refusals
                    .entry(code.to_string())
                    .or_default() += 1
            }
        }
        if let Some(out) = &self.config.bets_out {
            let player = format!("{}-{index}", self.config.players);
            out.line(
                &pending.bet_id,
                &player,
                &self.config.tables[pending.table],
                pending.round,
                answer,
            );
        }
    }

    /// At the end: open windows closed, bets still waiting counted as unanswered.
    /// How long until the next `TIMEOUT` retry is due.
    fn retry_due(&self, now: Instant) -> Duration {
        self.retries.peek().map_or(Duration::MAX, |retry| {
            retry.due.saturating_duration_since(now)
        })
    }

    /// Sends the `TIMEOUT` retries that are due, each on its client's connection (or kept for
    /// its next one); a client gone for good takes its bet without an answer.
    fn retry_timeouts(&mut self, now: Instant) {
        while self.retries.peek().is_some_and(|retry| retry.due <= now) {
            let Some(Retry {
                slot,
                index,
                pending,
                ..
            }) = self.retries.pop()
            else {
                break;
            };
            let same_client = self.conns[slot].as_ref().is_some_and(|c| c.index == index);
            if !same_client {
                self.final_answer(index, &pending, "none");
                continue;
            }
            if let Err(Ended(code)) = self.send_bet(slot, pending) {
                self.lost(slot, code);
            }
        }
    }

    fn finish_bets(&mut self) {
        let now = Instant::now();
        for Retry { index, pending, .. } in std::mem::take(&mut self.retries) {
            self.final_answer(index, &pending, "none");
        }
        for state in &mut self.tables {
            state.stop_betting(now);
        }
        self.tally.bets.windows = self.tables.iter().map(|t| t.window).collect();
        for slot in 0..self.conns.len() {
            let Some(conn) = self.conns[slot].as_mut() else {
                continue;
            };
            let index = conn.index;
            let left: Vec<Pending> = conn
                .bets_sent
                .drain()
                .map(|(_, p)| p)
                .chain(conn.unanswered.drain(..))
                .collect();
            for pending in left {
                self.final_answer(index, &pending, "none");
            }
        }
    }

    /// NATS protocol over WebSocket: messages are a byte stream of protocol operations.
    fn nats_bytes(&mut self, slot: usize, payload: &[u8]) -> Result<(), Ended> {
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        let mut buffer = std::mem::take(&mut conn.nats);
        buffer.extend_from_slice(payload);
        let mut consumed = 0;
        let mut result = Ok(());
        while let Some(line_len) = buffer[consumed..].windows(2).position(|w| w == b"\r\n") {
            let line = &buffer[consumed..consumed + line_len];
            let body = consumed + line_len + 2;
            if line.starts_with(b"PING") {
                consumed = body;
                result = self.send(slot, &text_frame(b"PONG\r\n"));
                if result.is_err() {
                    break;
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix(b"MSG ") {
                // `MSG <subject> <sid> [reply-to] <#bytes>`: the size is the last field.
                let len = std::str::from_utf8(rest)
                    .ok()
                    .and_then(|rest| rest.split_ascii_whitespace().last())
                    .and_then(|n| n.parse::<usize>().ok());
                let Some(len) = len else {
                    consumed = body;
                    continue;
                };
                if buffer.len() < body + len + 2 {
                    break; // payload not complete yet
                }
                let at = Encoding::MsgPack
                    .decode::<EventTime>(&buffer[body..body + len])
                    .ok()
                    .map(|e| e.at.unix_micros());
                self.delivered(at);
                consumed = body + len + 2;
                continue;
            }
            // +OK, INFO, PONG, -ERR: nothing to measure.
            consumed = body;
        }
        buffer.drain(..consumed);
        if buffer.len() > MAX_MESSAGE {
            return Err(Ended(None));
        }
        if let Some(conn) = self.conns[slot].as_mut() {
            conn.nats = buffer;
        }
        result
    }

    fn delivered(&mut self, at_micros: Option<i64>) {
        self.shared.received.fetch_add(1, Ordering::Relaxed);
        if !self.shared.is_measuring() {
            return;
        }
        self.shared.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(at) = at_micros {
            let latency = (wall_micros() - at).max(0) as u64;
            let _ = self.tally.latency.record(latency.max(1));
        }
    }

    /// Writes a frame now, or keeps it for when the socket takes more.
    fn send(&mut self, slot: usize, frame: &[u8]) -> Result<(), Ended> {
        let Some(conn) = self.conns[slot].as_mut().filter(|c| c.stream.is_some()) else {
            return Ok(());
        };
        conn.unsent.extend_from_slice(frame);
        if conn.unsent.len() > MAX_MESSAGE {
            return Err(Ended(None));
        }
        self.flush(slot)
    }

    fn flush(&mut self, slot: usize) -> Result<(), Ended> {
        let Some(conn) = self.conns[slot].as_mut() else {
            return Ok(());
        };
        let Some(stream) = conn.stream.as_mut() else {
            return Ok(());
        };
        while !conn.unsent.is_empty() {
            match stream.write(&conn.unsent) {
                Ok(0) => return Err(Ended(None)),
                Ok(n) => {
                    conn.unsent.drain(..n);
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(Ended(None)),
            }
        }
        Ok(())
    }
}

/// The wall clock, µs since the epoch (events carry their publishers' wall-clock `at`).
fn wall_micros() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A frame as a server sends it: unmasked.
    fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        Frame::from_payload(header, bytes::Bytes::copy_from_slice(payload))
            .format(&mut out)
            .expect("format");
        out
    }

    fn reader(shared: &Arc<Shared>) -> Reader {
        let config = Arc::new(ReaderConfig {
            target: Target::Croupier,
            tables: vec!["t".into()],
            read_batching: Duration::ZERO,
            bet_every: None,
            close_margin_us: 0,
            players: "lg".into(),
            bets_out: None,
            reconnects: None,
            check_delivery: false,
        });
        let poll = mio::Poll::new().expect("poll");
        Reader::new(config, shared.clone(), poll, CancellationToken::new()).expect("reader")
    }

    /// A reader (measuring) holding one client of a real loopback connection, adopted with
    /// `leftover`; returns the server's end too.
    fn connected(leftover: &[u8], bettor: bool) -> (Reader, Arc<Shared>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        client.set_nonblocking(true).expect("nonblocking");
        let shared = Arc::new(Shared::new(1).expect("shared"));
        shared.measuring.store(true, Ordering::Relaxed);
        let mut reader = reader(&shared);
        reader.adopt(Connected {
            index: 0,
            stream: client,
            leftover: leftover.to_vec(),
            bettor,
            player_channel: false,
            table: 0,
            url: 0,
            slot: None,
        });
        (reader, shared, server)
    }

    /// A `round_opened` event message as the gateway sends it, stamped now.
    fn round_opened(round: u64) -> Vec<u8> {
        let at =
            domain::Timestamp::from_offset_datetime(time::OffsetDateTime::now_utc()).expect("now");
        let event = format!(
            r#"{{"type":"event","channel":"table.t","seq":{round},"event":{{"kind":"round_opened","at":"{at}","round":{round}}}}}"#
        );
        server_frame(OpCode::Data(Data::Text), event.as_bytes())
    }

    fn delivered(shared: &Shared) -> u64 {
        shared.delivered.load(Ordering::Relaxed)
    }

    #[test]
    fn split_and_joined_frames_pings_and_a_4008_close_are_each_handled() {
        let frame = round_opened(1);
        // The upgrade response came with the first half of a frame: nothing to count yet.
        let (head, tail) = frame.split_at(5);
        let (mut reader, shared, mut server) = connected(head, false);
        assert_eq!(delivered(&shared), 0);
        assert!(reader.take(0, tail).is_ok());
        assert_eq!(delivered(&shared), 1);
        assert_eq!(reader.tally.latency.len(), 1);

        // Two frames in one read are two deliveries.
        assert!(
            reader
                .take(0, &[frame.clone(), frame.clone()].concat())
                .is_ok()
        );
        assert_eq!(delivered(&shared), 3);
        assert_eq!(reader.tally.latency.len(), 3);

        // A ping is answered with a masked pong carrying the ping's payload.
        assert!(
            reader
                .take(0, &server_frame(OpCode::Control(Control::Ping), b"hi"))
                .is_ok()
        );
        let mut pong = [0u8; 8];
        server.read_exact(&mut pong).expect("pong");
        assert_eq!(pong[0], 0x8A, "FIN + pong");
        assert_eq!(pong[1], 0x80 | 2, "masked, 2 bytes");
        let mask = &pong[2..6];
        assert_eq!([pong[6] ^ mask[0], pong[7] ^ mask[1]], *b"hi");

        // The server's Close 4008 ends the connection as a slow consumer.
        let mut close_payload = 4008u16.to_be_bytes().to_vec();
        close_payload.extend_from_slice(b"slow");
        match reader.take(
            0,
            &server_frame(OpCode::Control(Control::Close), &close_payload),
        ) {
            Err(Ended(code)) => {
                assert_eq!(code, Some(4008));
                reader.end(0, code);
            }
            Ok(()) => panic!("a Close must end the connection"),
        }
        assert_eq!(shared.drops.load(Ordering::Relaxed), 1);
        assert_eq!(shared.slow_closes.load(Ordering::Relaxed), 1);
        assert!(reader.conns[0].is_none());
        assert_eq!(delivered(&shared), 3);
    }

    #[test]
    fn an_event_received_again_as_the_same_bytes_is_counted_and_tracked_like_the_first() {
        let (mut reader, shared, _server) = connected(&[], false);
        let opened = |round: u64| {
            let now = time::OffsetDateTime::now_utc();
            let at = domain::Timestamp::from_offset_datetime(now).expect("now");
            let closes = domain::Timestamp::from_offset_datetime(now + time::Duration::seconds(1))
                .expect("closes");
            let event = format!(
                r#"{{"type":"event","channel":"table.t","seq":{round},"event":{{"kind":"round_opened","at":"{at}","table":"t","round":{round},"closes_at":"{closes}"}}}}"#
            );
            (
                server_frame(OpCode::Data(Data::Text), event.as_bytes()),
                closes.unix_micros(),
            )
        };
        let (first, closes) = opened(1);
        for delivered_so_far in 1..=3 {
            assert!(reader.take(0, &first).is_ok());
            assert_eq!(delivered(&shared), delivered_so_far);
            assert_eq!(reader.tally.latency.len(), delivered_so_far);
            assert_eq!(reader.tables[0].open, Some((1, closes)));
        }
        assert_eq!(reader.seen.len(), 1, "read once, then recognised");

        // Any other bytes are read afresh, also once the first has left the kept ones.
        for round in 2..=SEEN_EVENTS as u64 + 2 {
            let (next, closes) = opened(round);
            assert!(reader.take(0, &next).is_ok());
            assert_eq!(reader.tables[0].open, Some((round, closes)));
        }
        assert_eq!(reader.seen.len(), SEEN_EVENTS);
        assert!(reader.take(0, &first).is_ok());
        assert_eq!(delivered(&shared), 3 + (SEEN_EVENTS as u64 + 1) + 1);
        // An older round does not reopen betting, whichever way it was read.
        assert_eq!(
            reader.tables[0].open.map(|(r, _)| r),
            Some(SEEN_EVENTS as u64 + 2)
        );
    }

    #[test]
    fn a_bettor_whose_bets_go_unanswered_stops_betting_at_its_bound() {
        let (mut reader, _shared, _server) = connected(&[], true);
        for round in 1..=BETS_IN_FLIGHT as u64 + 10 {
            assert!(reader.take(0, &round_opened(round)).is_ok());
        }
        let conn = reader.conns[0].as_ref().expect("still connected");
        assert_eq!(conn.bets_sent.len(), BETS_IN_FLIGHT);
        assert_eq!(conn.next_bet, BETS_IN_FLIGHT as u64);
    }

    /// The text of the masked client frames in `bytes`.
    fn client_texts(bytes: &[u8]) -> Vec<String> {
        let mut texts = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let mut cursor = Cursor::new(&bytes[at..]);
            let (header, length) = FrameHeader::parse(&mut cursor)
                .expect("a frame")
                .expect("a whole header");
            let start = at + cursor.position() as usize;
            let mask = header.mask.expect("masked");
            let payload: Vec<u8> = bytes[start..start + length as usize]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            texts.push(String::from_utf8(payload).expect("text"));
            at = start + length as usize;
        }
        texts
    }

    fn server_text(text: &str) -> Vec<u8> {
        server_frame(OpCode::Data(Data::Text), text.as_bytes())
    }

    #[test]
    fn a_lost_connection_resumes_after_the_last_seq_and_sends_its_unanswered_bets_again() {
        let (requests, mut asked) = tokio::sync::mpsc::channel(4);
        let shared = Arc::new(Shared::new(2).expect("shared"));
        let config = Arc::new(ReaderConfig {
            target: Target::Croupier,
            tables: vec!["t".into()],
            read_batching: Duration::ZERO,
            bet_every: Some(Duration::from_secs(1)),
            close_margin_us: 0,
            players: "lg".into(),
            bets_out: None,
            reconnects: Some(requests),
            check_delivery: true,
        });
        let poll = mio::Poll::new().expect("poll");
        let mut reader =
            Reader::new(config, shared.clone(), poll, CancellationToken::new()).expect("reader");
        let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
        let pair = || {
            let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            let (server, _) = listener.accept().expect("accept");
            client.set_nonblocking(true).expect("nonblocking");
            (client, server)
        };
        let (client, server) = pair();
        reader.adopt(Connected {
            index: 0,
            stream: client,
            leftover: Vec::new(),
            bettor: true,
            player_channel: true,
            table: 0,
            url: 1,
            slot: None,
        });
        let answers = [
            r#"{"type":"subscribed","channel":"table.t","seq":5,"epoch":"e1","recovered":true,"state":{}}"#,
            r#"{"type":"subscribed","channel":"player.lg-0","seq":2,"epoch":"e2","recovered":true,"state":{}}"#,
            r#"{"type":"event","channel":"table.t","seq":7,"event":{"kind":"x","at":"2024-01-01T00:00:00Z"}}"#,
        ];
        for answer in answers {
            assert!(reader.take(0, &server_text(answer)).is_ok());
        }
        assert!(reader.place(0, 0, 1, Instant::now(), true).is_ok());
        drop(server);
        reader.lost(0, None);
        reader.ask_reconnects();
        let request = asked.try_recv().expect("a reconnection asked");
        assert_eq!((request.index, request.slot, request.url), (0, 0, 1));
        let resumes: Vec<serde_json::Value> = request
            .first
            .iter()
            .map(|f| serde_json::from_str(f).expect("JSON"))
            .collect();
        assert_eq!(
            resumes,
            [
                serde_json::json!({"type":"subscribe","channel":"table.t","since":7,"epoch":"e1"}),
                serde_json::json!({"type":"subscribe","channel":"player.lg-0","since":2,"epoch":"e2"}),
            ]
        );
        let conn = reader.conns[0].as_ref().expect("kept while reconnecting");
        assert_eq!(conn.unanswered.len(), 1);
        let bet_id = conn.unanswered[0].bet_id.to_string();
        assert_eq!(shared.drops.load(Ordering::Relaxed), 1);

        // The new connection (to the next URL) resumes; the bet goes again, same bet id.
        let (client, mut server) = pair();
        let replayed = [
            r#"{"type":"subscribed","channel":"table.t","seq":9,"epoch":"e1","recovered":true,"state":{}}"#,
            r#"{"type":"event","channel":"table.t","seq":8,"event":{"kind":"x","at":"2024-01-01T00:00:00Z"}}"#,
            r#"{"type":"event","channel":"table.t","seq":9,"event":{"kind":"x","at":"2024-01-01T00:00:00Z"}}"#,
        ];
        reader.adopt(Connected {
            index: 0,
            stream: client,
            leftover: replayed.iter().flat_map(|m| server_text(m)).collect(),
            bettor: true,
            player_channel: true,
            table: 0,
            url: 0,
            slot: Some(0),
        });
        let mut sent = vec![0u8; 4096];
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let n = server.read(&mut sent).expect("the bet again");
        let texts = client_texts(&sent[..n]);
        assert_eq!(texts.len(), 1, "{texts:?}");
        assert!(texts[0].contains(&bet_id), "{}", texts[0]);
        assert_eq!(reader.tally.bets.resent, 1);
        assert_eq!(shared.resumes_recovered.load(Ordering::Relaxed), 1);
        let conn = reader.conns[0].as_ref().expect("connected");
        assert!(conn.stream.is_some() && conn.unanswered.is_empty());
        assert_eq!(conn.follows[0].at, 9);

        // A replay that sends an event again doubles it.
        let again = r#"{"type":"event","channel":"table.t","seq":8,"event":{"kind":"x","at":"2024-01-01T00:00:00Z"}}"#;
        assert!(reader.take(0, &server_text(again)).is_ok());
        assert_eq!(shared.doubled.load(Ordering::Relaxed), 1);
        let runs = reader.conns[0].as_ref().expect("connected").follows[0]
            .received
            .as_ref()
            .expect("checked")
            .runs()
            .to_vec();
        assert_eq!(runs.len(), 2, "one run per connection: {runs:?}");
    }

    #[test]
    fn a_masked_or_oversized_server_frame_ends_the_connection() {
        let (mut reader, _shared, _server) = connected(&[], false);
        // A client frame (masked) coming from the server is a protocol error.
        assert!(reader.take(0, &text_frame(b"{}")).is_err());
        // So is a frame announcing more than a client accepts.
        let mut header = Vec::new();
        FrameHeader {
            opcode: OpCode::Data(Data::Binary),
            ..FrameHeader::default()
        }
        .format(MAX_MESSAGE as u64 + 1, &mut header)
        .expect("header");
        assert!(reader.take(0, &header).is_err());
    }
}

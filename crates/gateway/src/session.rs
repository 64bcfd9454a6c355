//! One WebSocket connection: protocol v1 from `welcome` to Close.
//!
//! One task per connection, never one per message: the session owns the connection —
//! reading the client's frames, subscriptions and resumes, bets in flight, betting status,
//! idle checks, shutdown. It reads when the socket is readable (a wait that is cancel-safe, so
//! it is one more branch of its `select!`), parses the frames with [`crate::inbound`] and answers them
//! in order; between reads it keeps only an unfinished frame's bytes, so an idle connection
//! holds no read buffer (issue 19, ADR 0029). While it answers it does not read: a client
//! sending faster than it is answered waits on TCP, and cannot grow the node's memory.
//!
//! Writing (ADR 0015): the socket's write half is the connection's [`Conn`], shared with the
//! hub's fan-out writers, which write broadcast events to it directly without waking the
//! session. The session is woken only when the socket would block (it then writes the queue
//! out as the socket drains), when the connection goes over its bounds, and for its own frames,
//! which take the same queue so that one order holds for all.
//!
//! Back-pressure (ADR 0012): events waiting on a connection are bounded in number and bytes
//! (`GatewayLimits::outbound_max_*`), and frames may wait at most `write_timeout` without the
//! socket taking any of their bytes. A client past either bound is closed with 4008; the writers
//! never wait for it, so nobody else is delayed.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bus::{Bus, RequestError};
use bytes::Bytes;
use fastwebsockets::OpCode;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use protocol::{
    Channel, ClientMessage, Encoding, ErrorCode, PlaceBetReply, ServerMessage, Subscribed,
};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::Shared;
use crate::auth::Verified;
use crate::betting;
use crate::doubtful::Doubtful;
use crate::frame;
use crate::hub::{Feed, Subscription};
use crate::inbound::{Frame, Reader, Refusal};
use crate::limits::{BetTicket, Slot, TokenBucket};
use crate::outbox::{Bounds, Conn, Gone, Mark, Progress, State};

type BetFuture = Pin<Box<dyn Future<Output = ServerMessage> + Send>>;

/// Close codes of the protocol (`docs/contract/websocket.md`) and RFC 6455.
pub(crate) mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const TOO_BIG: u16 = 1009;
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// Bets a connection may have waiting on GS at once; more are refused with `RATE_LIMITED`.
const MAX_BETS_IN_FLIGHT: usize = 8;
/// How long the Close 4008 of a slow consumer may take to leave before the connection is
/// simply dropped (its window is likely shut).
const SLOW_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Events one resume (`subscribe` with `since`) may replay. A client further behind gets
/// `recovered: false` and reloads: the replay is held in memory until it reaches the live point,
/// so this bounds what one client can make the node hold (a few hundred bytes an event).
const MAX_REPLAY_EVENTS: usize = 2048;
/// How long one resume may take to reach the live point before the client is told
/// `recovered: false` instead.
const REPLAY_DEADLINE: Duration = Duration::from_secs(10);

/// What one frame from the client asks of the session, owned so that the read buffer is free
/// while it is answered. Boxed payloads keep it small: it is part of the session's future.
enum Inbound {
    Message(Box<ClientMessage>),
    /// A message that did not decode: answered with `BAD_MESSAGE`.
    Malformed(Box<ServerMessage>),
    /// A control frame the protocol obliges us to send (pong, close echo).
    Obligated(OpCode, Vec<u8>),
    /// Reading ends for this reason; the session closes with it.
    Close(u16, &'static str),
}

/// Runs one connection to its end. `stream` has completed the WebSocket handshake; `leftover`
/// is what the HTTP server had read past it.
pub(crate) async fn run<B: Bus>(
    stream: TcpStream,
    leftover: Bytes,
    encoding: Encoding,
    token: Option<Verified>,
    shared: Arc<Shared<B>>,
    slot: Slot,
) {
    let (read, write) = stream.into_split();
    let limits = &shared.config.limits;
    let bounds = Bounds {
        events: limits.outbound_max_messages,
        bytes: limits.outbound_max_bytes,
    };
    let conn = Arc::new(Conn::new(write, encoding, shared.hub.next_shard(), bounds));
    let inbound_bucket = TokenBucket::new(limits.client_msgs_per_s, limits.client_burst);
    let mut session = Session {
        read,
        reader: Reader::new(&leftover),
        conn: conn.clone(),
        backlogged: None,
        encoding,
        token,
        betting: shared.betting.subscribe(),
        shared,
        subscriptions: Subscriptions::default(),
        bets: FuturesUnordered::new(),
        inbound_bucket,
        heard: 0,
        heard_count: 0,
        quiet_since: Instant::now(),
        ping_sent: None,
    };
    drop(leftover);
    session.serve().await;
    // Off every channel (the writers skip it meanwhile), so that the socket closes now: the
    // session's read half goes with it — after a Close we do not wait for the peer's answer.
    conn.abandon();
    drop(session);
    drop(slot);
}

struct Session<B> {
    /// The socket's read half: read only when readable, without waiting, by `on_readable`.
    read: OwnedReadHalf,
    /// The client's frames being parsed; empty (nothing allocated) between frames.
    reader: Reader,
    conn: Arc<Conn>,
    /// While frames wait behind a blocked socket: when the connection is a slow consumer
    /// unless the socket takes some of them (`write_timeout` after it last did).
    backlogged: Option<Instant>,
    encoding: Encoding,
    /// The connection's token; `None` for a spectator.
    token: Option<Verified>,
    betting: watch::Receiver<betting::Current>,
    shared: Arc<Shared<B>>,
    subscriptions: Subscriptions,
    bets: FuturesUnordered<BetFuture>,
    /// The client's messages: `client_burst` at once, `client_msgs_per_s` sustained.
    inbound_bucket: TokenBucket,
    /// Frames read from the peer so far: the idle check watches the count move (a counter, not
    /// a clock, so an answer arriving within the same instant as our ping still counts).
    heard: u64,
    /// The frame count at the last idle check, and since when it has not moved.
    heard_count: u64,
    quiet_since: Instant,
    /// When we pinged a silent peer, until it sends anything.
    ping_sent: Option<Instant>,
}

/// Why writing stopped.
struct Closed;

impl<B: Bus> Session<B> {
    fn player(&self) -> Option<&domain::PlayerId> {
        self.token.as_ref().map(|t| &t.player)
    }

    async fn serve(&mut self) {
        // Dropped once sent: kept to the end of `serve`, it would be part of every idle
        // connection's future (a `ServerMessage`, its session id on the heap).
        {
            let welcome = ServerMessage::Welcome(protocol::Welcome {
                session: uuid::Uuid::new_v4().to_string(),
                player: self.player().cloned(),
                betting: self.betting.borrow_and_update().betting,
            });
            if self.send(&welcome).await.is_err() {
                return;
            }
        }
        // What the HTTP server read past the upgrade request comes before the socket's bytes.
        if self.reader.has_pending() && Box::pin(self.on_frames()).await.is_err() {
            return;
        }
        // The shutdown and status waits are re-created at each turn of the loop (joining and
        // leaving waiter lists every connection shares) rather than kept for the session: kept,
        // they would live across every handler's await and add about 0.25 KiB to each idle
        // connection, for no CPU difference measurable at 10k clients.
        let shutdown = self.shared.shutdown.clone();
        let conn = self.conn.clone();
        let idle = self.shared.config.idle_timeout;
        let mut idle_check = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
        idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut betting_open = true;
        loop {
            let step = tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = self.close(close::GOING_AWAY, "server shutting down").await;
                    return;
                }
                // Boxed: a client's message is rare next to events, and handling it inline
                // would size every idle connection's task for the largest path (a third of the
                // task).
                ready = self.read.readable() => Box::pin(self.on_readable(ready)).await,
                () = conn.woken() => self.write_queued().await,
                ready = conn.writable(), if self.backlogged.is_some() => match ready {
                    Ok(()) => self.write_queued().await,
                    Err(_) => Err(Closed),
                },
                () = tokio::time::sleep_until(self.backlogged.unwrap_or_else(Instant::now)), if self.backlogged.is_some() => {
                    self.slow_consumer("write deadline passed").await
                }
                Some(answer) = self.bets.next(), if !self.bets.is_empty() => self.send(&answer).await,
                changed = self.betting.changed(), if betting_open => match changed {
                    Ok(()) => {
                        let status = self.betting.borrow_and_update().to_message();
                        self.send(&ServerMessage::Status(status)).await
                    }
                    Err(_) => {
                        betting_open = false;
                        Ok(())
                    }
                },
                _ = idle_check.tick() => self.check_idle(idle).await,
            };
            if step.is_err() {
                return;
            }
        }
    }

    /// Pings a peer silent for `idle`; drops one still silent `idle` after the ping.
    async fn check_idle(&mut self, idle: Duration) -> Result<(), Closed> {
        let count = self.heard;
        if count != self.heard_count {
            self.heard_count = count;
            self.quiet_since = Instant::now();
            self.ping_sent = None;
            return Ok(());
        }
        match self.ping_sent {
            Some(pinged) if pinged.elapsed() >= idle => {
                metrics::counter!("gateway_idle_disconnects_total").increment(1);
                let _ = self.close(close::GOING_AWAY, "idle timeout").await;
                Err(Closed)
            }
            Some(_) => Ok(()),
            None if self.quiet_since.elapsed() >= idle => {
                self.ping_sent = Some(Instant::now());
                self.write(frame::ping(b"idle")).await
            }
            None => Ok(()),
        }
    }

    /// Whether the client may send one more message now; counted when not.
    fn admit_message(&mut self) -> bool {
        let admitted = self.inbound_bucket.try_take(Instant::now());
        if !admitted {
            metrics::counter!("gateway_rate_limited_total").increment(1);
        }
        admitted
    }

    /// Reads what the socket has and answers every whole frame in it, in order.
    async fn on_readable(&mut self, ready: std::io::Result<()>) -> Result<(), Closed> {
        match ready.and_then(|()| self.reader.read_from(&self.read)) {
            Ok(0) => {
                // The peer ended the stream without a Close (as the library's reader did, a
                // protocol error).
                self.on_inbound(Inbound::Close(close::PROTOCOL_ERROR, ""))
                    .await
            }
            Ok(_) => self.on_frames().await,
            // The readiness was stale: wait for the next.
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(_) => {
                self.on_inbound(Inbound::Close(close::PROTOCOL_ERROR, ""))
                    .await
            }
        }
    }

    /// Answers every whole frame read so far, then lets the read buffer go (but for an
    /// unfinished frame's bytes).
    async fn on_frames(&mut self) -> Result<(), Closed> {
        loop {
            let item = match self.reader.next() {
                Ok(None) => break,
                Ok(Some(frame)) => {
                    self.heard += 1;
                    match frame {
                        Frame::Message(bytes) => {
                            match self.encoding.decode(&bytes) {
                                Ok(message) => Inbound::Message(Box::new(message)),
                                Err(error) => Inbound::Malformed(Box::new(
                                    ServerMessage::bad_message(&bytes, self.encoding, &error),
                                )),
                            }
                        }
                        Frame::Ping(payload) => Inbound::Obligated(OpCode::Pong, payload.to_vec()),
                        Frame::Close(payload) => {
                            Inbound::Obligated(OpCode::Close, payload.to_vec())
                        }
                        Frame::Fragment | Frame::Pong => continue,
                    }
                }
                Err(Refusal::TooBig) => Inbound::Close(close::TOO_BIG, "message too big"),
                Err(Refusal::Protocol(why)) => Inbound::Close(close::PROTOCOL_ERROR, why),
                // The library's answer, kept: a Close 1002 with the peer's reason.
                Err(Refusal::CloseCode(reason)) => {
                    let mut payload = close::PROTOCOL_ERROR.to_be_bytes().to_vec();
                    payload.extend_from_slice(reason.as_bytes());
                    Inbound::Obligated(OpCode::Close, payload)
                }
            };
            self.on_inbound(item).await?;
        }
        self.reader.compact();
        Ok(())
    }

    async fn on_inbound(&mut self, item: Inbound) -> Result<(), Closed> {
        match item {
            Inbound::Message(message) => {
                if !self.admit_message() {
                    let request_id = match &*message {
                        ClientMessage::Bet(bet) => Some(bet.request_id.clone()),
                        _ => None,
                    };
                    return self
                        .error(
                            request_id,
                            ErrorCode::RateLimited,
                            "too many messages; slow down",
                        )
                        .await;
                }
                self.on_message(*message).await
            }
            Inbound::Malformed(answer) => {
                if !self.admit_message() {
                    return self
                        .error(None, ErrorCode::RateLimited, "too many messages; slow down")
                        .await;
                }
                self.send(&answer).await
            }
            Inbound::Obligated(opcode, payload) => {
                let frame = frame::control(opcode, &payload);
                if opcode == OpCode::Close {
                    let _ = self.write_close(frame).await;
                    Err(Closed)
                } else {
                    self.write(frame).await
                }
            }
            Inbound::Close(code, reason) => {
                let _ = self.close(code, reason).await;
                Err(Closed)
            }
        }
    }

    async fn on_message(&mut self, message: ClientMessage) -> Result<(), Closed> {
        match message {
            ClientMessage::Ping => self.send(&ServerMessage::Pong).await,
            ClientMessage::Subscribe(subscribe) => {
                let channel = match subscribe.parse_channel() {
                    Ok(channel) => channel,
                    Err(error) => return self.error(None, error.code(), error.to_string()).await,
                };
                if let Channel::Player(owner) = &channel {
                    match self.player() {
                        None => {
                            return self
                                .error(
                                    None,
                                    ErrorCode::Unauthorized,
                                    "player channels need a token",
                                )
                                .await;
                        }
                        Some(player) if player != owner => {
                            return self
                                .error(
                                    None,
                                    ErrorCode::Forbidden,
                                    "a player channel is private to its player",
                                )
                                .await;
                        }
                        Some(_) => {}
                    }
                }
                // Boxed: the resume path is large and rare; inline it would size every idle
                // connection's task for it.
                Box::pin(self.subscribe(channel, subscribe.since, subscribe.epoch)).await
            }
            ClientMessage::Unsubscribe(unsubscribe) => match unsubscribe.parse_channel() {
                Ok(channel) => {
                    self.subscriptions.remove(&channel);
                    Ok(())
                }
                Err(error) => self.error(None, error.code(), error.to_string()).await,
            },
            ClientMessage::Bet(bet) => {
                let request_id = bet.request_id.clone();
                let Some(token) = self.token.clone() else {
                    return self
                        .error(
                            Some(request_id),
                            ErrorCode::Unauthorized,
                            "bets need a token",
                        )
                        .await;
                };
                if token.expired(crate::auth::now_unix()) {
                    return self
                        .error(
                            Some(request_id),
                            ErrorCode::Unauthorized,
                            "token expired; reconnect with a fresh one",
                        )
                        .await;
                }
                let status = self.betting.borrow().clone();
                if !status.betting.is_enabled() {
                    if self.shared.doubt.contains(&token.player, &bet.bet_id) {
                        return self
                            .error(Some(request_id), ErrorCode::Timeout, DOUBTFUL)
                            .await;
                    }
                    let message = if status.reason.is_empty() {
                        "betting is switched off".to_string()
                    } else {
                        format!("betting is switched off: {}", status.reason)
                    };
                    return self
                        .error(Some(request_id), ErrorCode::BettingUnavailable, message)
                        .await;
                }
                if self.bets.len() >= MAX_BETS_IN_FLIGHT {
                    return self
                        .error(
                            Some(request_id),
                            ErrorCode::RateLimited,
                            "too many bets awaiting an answer",
                        )
                        .await;
                }
                let max = self.shared.config.limits.max_bets_in_flight;
                let Some(ticket) = BetTicket::take(&self.shared.admission, max) else {
                    metrics::counter!("gateway_overloaded_total").increment(1);
                    return self
                        .error(
                            Some(request_id),
                            ErrorCode::Overloaded,
                            "the gateway is overloaded; retry shortly with the same bet_id",
                        )
                        .await;
                };
                let table = bet.table.clone();
                let request = bet.into_request(token.player);
                let bus = self.shared.bus.clone();
                let timeout = self.shared.config.bet_timeout;
                let doubt = self.shared.doubt.clone();
                metrics::counter!("gateway_bets_forwarded_total").increment(1);
                self.bets.push(Box::pin(async move {
                    let answer = forward_bet(bus, table, request, timeout, doubt).await;
                    drop(ticket);
                    answer
                }));
                Ok(())
            }
        }
    }

    /// Subscribes to `channel`: live events after `subscribed.seq`, and with `since` first every
    /// event after it. The live feed is joined first and its events are held on the connection
    /// (within its bounds) while the replay runs; the replay stops at the live point and the
    /// live events it overlaps are skipped by sequence, so there is no gap and no duplicate.
    async fn subscribe(
        &mut self,
        channel: Channel,
        since: Option<u64>,
        epoch: Option<String>,
    ) -> Result<(), Closed> {
        let Subscription { feed, seq } = match self.shared.hub.subscribe(&channel, &self.conn).await
        {
            Ok(subscription) => subscription,
            Err(error) => {
                tracing::warn!(%channel, %error, "subscribe failed");
                return self
                    .error(
                        None,
                        ErrorCode::Overloaded,
                        "the channel is unavailable, retry",
                    )
                    .await;
            }
        };
        let mut recovered = true;
        let mut replayed = Vec::new();
        let mut last = seq;
        if let Some(since) = since {
            let same_life = epoch.as_deref().is_none_or(|e| e == feed.epoch());
            if !same_life {
                recovered = false;
            } else if since >= seq {
                // Nothing to replay: the client is at (or, via another node, past) our feed.
                last = since;
            } else {
                match replay(self.shared.bus.clone(), self.encoding, &channel, since, seq).await {
                    Ok(events) => replayed = events,
                    Err(why) => {
                        tracing::debug!(%channel, since, why, "resume not recovered");
                        metrics::counter!("gateway_resumes_unrecovered_total").increment(1);
                        recovered = false;
                    }
                }
            }
        }
        let answer = ServerMessage::Subscribed(Subscribed {
            channel: channel.clone(),
            seq,
            epoch: feed.epoch().to_string(),
            recovered,
            state: feed.state(),
        });
        let id = feed.id();
        self.subscriptions.insert(channel, feed, &self.conn);
        let mut frames = Vec::with_capacity(1 + replayed.len());
        if let Some(answer) = self.frame(&answer) {
            frames.push(answer);
        }
        frames.extend(
            replayed
                .iter()
                .map(|bytes| frame::message(self.encoding, bytes)),
        );
        match self.conn.go_live(id, last, frames) {
            Ok(mark) => self.write_out(mark).await,
            Err(Gone) => Err(Closed),
        }
    }

    /// Writes what waits (the socket became writable, or a writer queued events behind it, or
    /// the connection went over its bounds), without waiting.
    async fn write_queued(&mut self) -> Result<(), Closed> {
        let progress = self.conn.write_queued();
        self.after(progress).await
    }

    /// Takes stock after a write attempt: a slow or broken connection ends; frames still
    /// waiting keep the session watching the socket, with the write deadline running.
    async fn after(&mut self, progress: Progress) -> Result<(), Closed> {
        match progress.state {
            State::Broken => return Err(Closed),
            State::Slow => return self.slow_consumer("outbound backlog over its bound").await,
            State::Open | State::Closing => {}
        }
        let timeout = self.shared.config.limits.write_timeout;
        self.backlogged = (!progress.drained)
            .then(|| progress.stalled_since.unwrap_or_else(Instant::now) + timeout);
        Ok(())
    }

    /// Writes until the frames up to `mark` are out. A peer that takes none of what waits for
    /// `write_timeout` (its TCP window stays shut) is a slow consumer: closed with 4008 rather
    /// than holding the session.
    async fn write_out(&mut self, mark: Mark) -> Result<(), Closed> {
        loop {
            let progress = self.conn.write_queued();
            let written = progress.written;
            self.after(progress).await?;
            let Some(deadline) = self.backlogged else {
                return Ok(());
            };
            if written >= mark {
                return Ok(());
            }
            tokio::select! {
                ready = self.conn.writable() => ready.map_err(|_| Closed)?,
                () = self.conn.woken() => {}
                () = tokio::time::sleep_until(deadline) => {
                    return self.slow_consumer("write deadline passed").await;
                }
            }
        }
    }

    /// Closes the connection with 4008: best effort within a short grace, since the reason is
    /// usually that its window is shut.
    async fn slow_consumer(&mut self, why: &'static str) -> Result<(), Closed> {
        tracing::debug!(why, "slow consumer disconnected");
        metrics::counter!("gateway_slow_consumers_total").increment(1);
        // After what already waits (a frame begun must end), within a short grace.
        let Ok(mark) = self
            .conn
            .push_close(frame::close(close::SLOW_CONSUMER, "slow consumer"))
        else {
            return Err(Closed);
        };
        let conn = self.conn.clone();
        let _ = tokio::time::timeout(SLOW_CLOSE_GRACE, async move {
            loop {
                let progress = conn.write_queued();
                if progress.written >= mark || progress.state == State::Broken {
                    return;
                }
                if conn.writable().await.is_err() {
                    return;
                }
            }
        })
        .await;
        Err(Closed)
    }

    async fn error(
        &mut self,
        request_id: Option<String>,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Result<(), Closed> {
        self.send(&ServerMessage::error(request_id, code, message))
            .await
    }

    /// Writes one message now.
    async fn send(&mut self, message: &ServerMessage) -> Result<(), Closed> {
        // Every `error` a client gets passes here: the gateway's own and GS's relayed.
        if let ServerMessage::Error(error) = message {
            metrics::counter!("gateway_rejections_total", "code" => error.code.as_str())
                .increment(1);
        }
        match self.frame(message) {
            Some(frame) => self.write(frame).await,
            None => Ok(()),
        }
    }

    /// `message` as a frame of the connection's encoding.
    fn frame(&self, message: &ServerMessage) -> Option<Bytes> {
        match message.encode(self.encoding) {
            Ok(bytes) => Some(frame::message(self.encoding, &bytes)),
            Err(error) => {
                tracing::error!(%error, kind = message.message_type(), "message could not be encoded");
                None
            }
        }
    }

    /// Writes one frame now, after whatever waits.
    async fn write(&mut self, frame: Bytes) -> Result<(), Closed> {
        match self.conn.push(frame) {
            Ok(mark) => self.write_out(mark).await,
            Err(Gone) => Err(Closed),
        }
    }

    /// Writes a Close frame, the last one.
    async fn write_close(&mut self, frame: Bytes) -> Result<(), Closed> {
        match self.conn.push_close(frame) {
            Ok(mark) => self.write_out(mark).await,
            Err(Gone) => Err(Closed),
        }
    }

    async fn close(&mut self, code: u16, reason: &str) -> Result<(), Closed> {
        self.write_close(frame::close(code, reason)).await
    }
}

/// The channel's events after `since` up to and including `until` (a sequence of the channel's,
/// see `hub`), encoded for one client. Bounded in count and time; an error says why the client
/// must reload instead.
async fn replay<B: Bus>(
    bus: B,
    encoding: Encoding,
    channel: &Channel,
    since: u64,
    until: u64,
) -> Result<Vec<Bytes>, &'static str> {
    let stream = channel.stream();
    let work = async {
        let state = bus
            .stream_state(stream)
            .await
            .map_err(|_| "stream state unavailable")?;
        if since.saturating_add(1) < state.first_seq {
            return Err("events after `since` are no longer retained");
        }
        let mut messages = bus
            .replay(stream, &channel.subject_filter(), since + 1)
            .await
            .map_err(|_| "replay unavailable")?;
        let mut events = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.map_err(|_| "replay failed")?;
            if message.seq > until {
                break;
            }
            match protocol::decode_event(&message.payload) {
                Ok(event) => {
                    if events.len() >= MAX_REPLAY_EVENTS {
                        return Err("too far behind");
                    }
                    let bytes = protocol::event_message_from_bus(
                        encoding,
                        channel,
                        message.seq,
                        &event,
                        &message.payload,
                    )
                    .map_err(|_| "event could not be encoded")?;
                    events.push(bytes);
                }
                Err(error) => {
                    tracing::warn!(%channel, seq = message.seq, %error, "undecodable event skipped");
                }
            }
            if message.seq >= until {
                break;
            }
        }
        Ok(events)
    };
    tokio::time::timeout(REPLAY_DEADLINE, work)
        .await
        .unwrap_or(Err("replay did not reach the live point in time"))
}

/// A connection's channels. Holding a feed keeps the node's bus subscription for the channel
/// alive while anyone is subscribed; the last one to leave stops it.
#[derive(Default)]
struct Subscriptions {
    joined: Vec<(Channel, Joined)>,
}

impl Subscriptions {
    /// Records that `conn` receives `channel` through `feed` (a second subscribe of a channel
    /// keeps its place on the feed).
    fn insert(&mut self, channel: Channel, feed: Arc<Feed>, conn: &Arc<Conn>) {
        let existing = self.joined.iter_mut().find(|(c, _)| *c == channel);
        if let Some((_, joined)) = &existing
            && Arc::ptr_eq(&joined.feed, &feed)
        {
            return;
        }
        let joined = Joined {
            feed,
            conn: conn.clone(),
        };
        match existing {
            Some((_, existing)) => *existing = joined,
            None => self.joined.push((channel, joined)),
        }
    }

    fn remove(&mut self, channel: &Channel) {
        self.joined.retain(|(c, _)| c != channel);
    }
}

/// A connection on a feed; dropping it takes the connection off.
struct Joined {
    feed: Arc<Feed>,
    conn: Arc<Conn>,
}

impl Drop for Joined {
    fn drop(&mut self) {
        self.feed.leave(&self.conn);
    }
}

/// Sends a bet to GS and turns every outcome into an answer for the client: `bet_result`, or an
/// `error` under the bet's `request_id` — never silence. A bet in `doubt` (an earlier attempt
/// may stand, [`crate::doubtful`]) is never answered `BETTING_UNAVAILABLE`: that says "not
/// recorded", and neither "no game service" nor a GS that refused without reaching the store
/// knows. The answer is marked in `doubt` when it leaves the bet's fate unknown and cleared
/// when GS answered it definitely; a bet dropped unanswered (its client left) is marked.
async fn forward_bet<B: Bus>(
    bus: B,
    table: domain::TableId,
    request: protocol::PlaceBetRequest,
    timeout: Duration,
    doubt: Arc<Doubtful>,
) -> ServerMessage {
    let protocol::PlaceBetRequest {
        request_id,
        player,
        bet_id,
        ..
    } = &request;
    let request_id = request_id.clone();
    let payload = match Encoding::MsgPack.encode(&request) {
        Ok(payload) => payload,
        Err(error) => {
            return ServerMessage::error(
                Some(request_id),
                ErrorCode::BadMessage,
                error.to_string(),
            );
        }
    };
    let earlier_may_stand = doubt.contains(player, bet_id);
    // The request is sent from here on; its player moves into the guard, not copied.
    let mut in_flight = InFlight {
        doubt,
        bet: *bet_id,
        player: request.player,
        fate: Fate::Unknown,
    };
    let subject = protocol::subject::bets_place_subject(&table);
    let started = Instant::now();
    let (outcome, answer) = match bus.request(&subject, payload, timeout).await {
        Ok(reply) => match Encoding::MsgPack.decode::<PlaceBetReply>(&reply) {
            Ok(PlaceBetReply::Accepted(accepted)) => {
                in_flight.fate = Fate::Definite;
                ("accepted", ServerMessage::bet_result(request_id, accepted))
            }
            Ok(PlaceBetReply::Rejected(rejected))
                if earlier_may_stand && rejected.code == ErrorCode::BettingUnavailable =>
            {
                (
                    "timeout",
                    ServerMessage::error(Some(request_id), ErrorCode::Timeout, DOUBTFUL),
                )
            }
            Ok(PlaceBetReply::Rejected(rejected)) => {
                in_flight.fate = Fate::Definite;
                (
                    "rejected",
                    ServerMessage::error(Some(request_id), rejected.code, rejected.message),
                )
            }
            Err(error) => {
                tracing::error!(%error, "undecodable reply from GS");
                (
                    "timeout",
                    ServerMessage::error(
                        Some(request_id),
                        ErrorCode::Timeout,
                        "no valid answer from the game service; retry with the same bet_id",
                    ),
                )
            }
        },
        Err(RequestError::NoResponders) if earlier_may_stand => (
            "timeout",
            ServerMessage::error(Some(request_id), ErrorCode::Timeout, DOUBTFUL),
        ),
        Err(RequestError::NoResponders) => {
            // Nobody received this attempt, and no earlier one is in doubt here.
            in_flight.fate = Fate::Untouched;
            (
                "unavailable",
                ServerMessage::error(
                    Some(request_id),
                    ErrorCode::BettingUnavailable,
                    "no game service is available",
                ),
            )
        }
        Err(_) => (
            "timeout",
            ServerMessage::error(
                Some(request_id),
                ErrorCode::Timeout,
                "the game service did not answer in time; retry with the same bet_id",
            ),
        ),
    };
    metrics::histogram!("gateway_bet_answer_seconds", "outcome" => outcome)
        .record(started.elapsed());
    answer
}

/// The answer to a bet in doubt that cannot be looked up now.
const DOUBTFUL: &str = "betting is unavailable, and an earlier attempt of this bet may have been recorded: \
     retry with the same bet_id once betting is back";

/// What a bet's answer says of its fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// GS may have recorded it; the client does not know (also: dropped unanswered).
    Unknown,
    /// GS answered it: recorded (accepted) or refused after looking.
    Definite,
    /// This attempt reached no GS: an earlier doubt, if any, stands as it was.
    Untouched,
}

/// A bet on its way to GS; settles the node's doubt about it when it ends, however it ends.
struct InFlight {
    doubt: Arc<Doubtful>,
    player: domain::PlayerId,
    bet: domain::BetId,
    fate: Fate,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        match self.fate {
            Fate::Unknown => self.doubt.mark(&self.player, &self.bet),
            Fate::Definite => self.doubt.clear(&self.player, &self.bet),
            Fate::Untouched => {}
        }
    }
}

/// What every connection holds, by type (issue 19, ADR 0029): a type or future that grows makes
/// every idle connection heavier, so each is held to the size measured when the budget was set
/// (a debug build, as `cargo test` runs; release sizes are the same or smaller). The heap per
/// connection as a whole is `crates/croupier/tests/gateway_heap.rs`.
#[cfg(test)]
mod sizes {
    use std::mem::size_of;

    use super::*;

    /// The size of what `f` returns (an async fn's future), without calling it.
    fn output_of_2<A, B, R>(_: impl FnOnce(A, B) -> R) -> usize {
        size_of::<R>()
    }

    fn output_of_1<A, R>(_: impl FnOnce(A) -> R) -> usize {
        size_of::<R>()
    }

    fn output_of_6<A, B, C, D, E, F, R>(_: impl FnOnce(A, B, C, D, E, F) -> R) -> usize {
        size_of::<R>()
    }

    fn report(what: &str, size: usize, budget: usize) {
        println!("{what}: {size} bytes (budget {budget})");
        assert!(
            size <= budget,
            "{what} is {size} bytes, over its budget of {budget}: every idle connection holds \
             one (ADR 0029)"
        );
    }

    #[test]
    fn each_connection_holds_types_no_larger_than_measured() {
        // Measured: 288.
        report("Conn", size_of::<Conn>(), 320);
        // Measured: 280 (216 before the session read the socket itself: the read half and the
        // `Reader` moved in, the reader's `Arc<Heard>` went).
        report("Session", size_of::<Session<bus::LocalBus>>(), 304);
        // Measured: 32 (part of the session's future while a frame is answered).
        report("Inbound", size_of::<Inbound>(), 32);
        // Measured: 56 (in `Session`; its buffers are empty while the connection is idle).
        report("Reader", size_of::<Reader>(), 56);
        // Measured: 32.
        report("Verified", size_of::<Verified>(), 40);
        // Measured: 24.
        report("Subscriptions", size_of::<Subscriptions>(), 24);
        // Measured: 48 (on the heap, in `Subscriptions`).
        report("(Channel, Joined)", size_of::<(Channel, Joined)>(), 56);
        // Measured: 32.
        report("TokenBucket", size_of::<TokenBucket>(), 40);
        // Measured: 192 (every answer is one, in the session's future while it is sent).
        report("ServerMessage", size_of::<ServerMessage>(), 208);
    }

    #[test]
    fn each_connection_holds_futures_no_larger_than_measured() {
        // Measured: 1560 (the session task's 1,920 bytes on the heap, with the upgrade's block
        // around it and tokio's task header, which come in steps of 128: somewhere between
        // 1,568 and 1,624 bytes of future the task grows to 2,048).
        report(
            "the session's future (`run`)",
            output_of_6(run::<bus::LocalBus>),
            1600,
        );
        // Measured: 1088 (part of `run`'s; 1,296 while it kept `welcome`).
        report(
            "`Session::serve`'s future",
            output_of_1(Session::<bus::LocalBus>::serve),
            1152,
        );
        // Measured: 1656 (boxed: on the heap only while frames are answered, never while
        // the connection is idle).
        report(
            "`Session::on_readable`'s future",
            output_of_2(Session::<bus::LocalBus>::on_readable),
            1792,
        );
    }
}

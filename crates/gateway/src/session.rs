//! One WebSocket connection: protocol v1 from `welcome` to Close.
//!
//! Two tasks per connection, never one per message: a reader that owns the read half (so
//! `read_frame`, which is not cancel-safe, is never raced in a `select!`), reassembles
//! fragments under the size cap and decodes messages; and the session, which owns the write
//! half and everything else — subscriptions and resumes, bets in flight, betting status, idle
//! checks, shutdown — and is the only writer.
//!
//! Back-pressure (ADR 0012): a connection's outbound queue is its position in each channel's
//! broadcast ring, bounded in events and bytes (`GatewayLimits::outbound_max_*`, measured with
//! the hub's running totals), and every flush has a deadline (`write_timeout`). A client past
//! either bound is closed with 4008; the hub never waits for it, so nobody else is delayed.
//! Events ready together are written into one buffer and flushed once.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bus::{Bus, RequestError};
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket, WebSocketRead, WebSocketWrite};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use protocol::{
    Channel, ClientMessage, DecodeError, Encoding, ErrorCode, MAX_MESSAGE_BYTES, PlaceBetReply,
    ServerMessage, Subscribed, encode_event_message,
};
use tokio::io::{AsyncWrite, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::auth::Verified;
use crate::betting;
use crate::hub::{Feed, Outgoing, Subscription, Totals};
use crate::limits::{BetTicket, Slot, TokenBucket};

type Io = TokioIo<Upgraded>;
type BetFuture = Pin<Box<dyn Future<Output = ServerMessage> + Send>>;

/// Close codes of DESIGN §7 and RFC 6455.
pub(crate) mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const TOO_BIG: u16 = 1009;
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// Messages from the reader to the session. A client sending faster than the session answers
/// waits on this bound (TCP back-pressure), so it cannot grow the node's memory.
const INBOUND_QUEUE: usize = 16;
/// Bets a connection may have waiting on GS at once; more are refused with `RATE_LIMITED`.
const MAX_BETS_IN_FLIGHT: usize = 8;
/// Frames written into one buffer before it is flushed: events that are ready together leave
/// in one write instead of one each, without letting one burst hold a large buffer.
const COALESCE_FRAMES: usize = 64;
/// Bytes buffered before a flush is forced, whatever the frame count. The buffer is allocated
/// only while frames wait and freed after a flush if it grew past `KEEP_WRITE_BUFFER`, so an
/// idle connection holds none.
const COALESCE_BYTES: usize = 32 * 1024;
/// Capacity of the write buffer kept between flushes.
const KEEP_WRITE_BUFFER: usize = 4 * 1024;
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

/// Boxed payloads keep this small: the inbound queue's storage is `INBOUND_QUEUE`-sized blocks
/// of it, allocated for every connection.
enum Inbound {
    Message(Box<ClientMessage>),
    /// A frame that did not decode: answered with `BAD_MESSAGE`.
    Malformed(Box<ServerMessage>),
    /// A control frame the protocol obliges us to send (pong, close echo).
    Obligated(OpCode, Vec<u8>),
    /// The reader stopped for this reason; the session closes with it.
    Close(u16, &'static str),
}

/// Frames read from the peer so far: the reader counts, the session's idle check watches the
/// count move (a counter, not a clock, so an answer arriving within the same instant as our
/// ping still counts).
#[derive(Debug, Default)]
struct Heard(AtomicU64);

impl Heard {
    fn now(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Runs one connection to its end.
pub(crate) async fn run<B: Bus>(
    ws: WebSocket<Io>,
    encoding: Encoding,
    token: Option<Verified>,
    shared: Arc<Shared<B>>,
    slot: Slot,
) {
    let (read, mut write) = ws.split(|io| {
        let (read, write) = tokio::io::split(io);
        (read, Coalescing::new(write))
    });
    // Every frame goes through the coalescing buffer as header + payload (no copy into the
    // library's own write buffer, which would otherwise grow to the largest frame and stay).
    write.set_writev(true);
    write.set_writev_threshold(0);
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let reader_stop = CancellationToken::new();
    let heard = Arc::new(Heard::default());
    let reader = shared.tasks.spawn(read_loop(
        read,
        encoding,
        inbound_tx,
        heard.clone(),
        reader_stop.clone(),
    ));
    let limits = &shared.config.limits;
    let inbound_bucket = TokenBucket::new(limits.client_msgs_per_s, limits.client_burst);
    let mut session = Session {
        write,
        encoding,
        token,
        betting: shared.betting.subscribe(),
        shared,
        subscriptions: Subscriptions::default(),
        bets: FuturesUnordered::new(),
        inbound_bucket,
        heard,
        heard_count: 0,
        quiet_since: Instant::now(),
        ping_sent: None,
    };
    session.serve(inbound_rx).await;
    drop(slot);
    // The reader may be parked in `read_frame` on a silent peer: cancel it (it checks between
    // frames) and drop the TCP connection by dropping both halves — after a Close we do not wait
    // for the peer's answer.
    reader_stop.cancel();
    reader.abort();
}

async fn read_loop(
    read: WebSocketRead<ReadHalf<Io>>,
    encoding: Encoding,
    inbound: mpsc::Sender<Inbound>,
    heard: Arc<Heard>,
    stop: CancellationToken,
) {
    let mut read = read;
    read.set_auto_close(true);
    read.set_auto_pong(true);
    // A single frame larger than the cap is refused by the library before it is buffered; the
    // reassembly below enforces the same cap across fragments.
    // (The library refuses a frame of `max` bytes or more; ours is a limit on bytes accepted.)
    read.set_max_message_size(MAX_MESSAGE_BYTES + 1);
    let mut message: Vec<u8> = Vec::new();
    let mut message_opcode = OpCode::Text;
    // Whether a fragmented message is being reassembled (a continuation is expected).
    let mut fragmented = false;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let obligated = inbound.clone();
        let mut send_obligated = move |frame: Frame<'_>| {
            let opcode = frame.opcode;
            let payload = frame.payload.to_vec();
            let obligated = obligated.clone();
            async move {
                obligated
                    .send(Inbound::Obligated(opcode, payload))
                    .await
                    .map_err(|_| std::io::Error::other("session ended"))
            }
        };
        let frame = match read.read_frame(&mut send_obligated).await {
            Ok(frame) => frame,
            Err(fastwebsockets::WebSocketError::FrameTooLarge) => {
                let _ = inbound
                    .send(Inbound::Close(close::TOO_BIG, "message too big"))
                    .await;
                return;
            }
            Err(_) => {
                let _ = inbound
                    .send(Inbound::Close(close::PROTOCOL_ERROR, ""))
                    .await;
                return;
            }
        };
        heard.now();
        let complete = match frame.opcode {
            OpCode::Close => return,
            OpCode::Ping | OpCode::Pong => continue,
            OpCode::Text | OpCode::Binary if !fragmented => {
                message.clear();
                message_opcode = frame.opcode;
                message.extend_from_slice(&frame.payload);
                frame.fin
            }
            OpCode::Continuation if fragmented => {
                if message.len() + frame.payload.len() > MAX_MESSAGE_BYTES {
                    let _ = inbound
                        .send(Inbound::Close(close::TOO_BIG, "message too big"))
                        .await;
                    return;
                }
                message.extend_from_slice(&frame.payload);
                frame.fin
            }
            // A new message inside a fragmented one, or a continuation of nothing (RFC 6455 §5.4).
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                let _ = inbound
                    .send(Inbound::Close(close::PROTOCOL_ERROR, "bad fragmentation"))
                    .await;
                return;
            }
        };
        if message.len() > MAX_MESSAGE_BYTES {
            let _ = inbound
                .send(Inbound::Close(close::TOO_BIG, "message too big"))
                .await;
            return;
        }
        fragmented = !complete;
        if !complete {
            continue;
        }
        let decoded = decode(encoding, message_opcode, &message);
        let item = match decoded {
            Ok(message) => Inbound::Message(Box::new(message)),
            Err(error) => Inbound::Malformed(Box::new(ServerMessage::bad_message(
                &message, encoding, &error,
            ))),
        };
        if inbound.send(item).await.is_err() {
            return;
        }
        // Keep the buffer for the next message only while it is small: one big message must
        // not pin 64 KiB for the rest of an idle connection's life.
        if message.capacity() > 4096 {
            message = Vec::new();
        }
    }
}

fn decode(encoding: Encoding, opcode: OpCode, bytes: &[u8]) -> Result<ClientMessage, DecodeError> {
    let _ = opcode; // either frame type is accepted; the subprotocol decides the encoding
    encoding.decode(bytes)
}

struct Session<B> {
    write: WebSocketWrite<Coalescing<WriteHalf<Io>>>,
    encoding: Encoding,
    /// The connection's token; `None` for a spectator.
    token: Option<Verified>,
    betting: watch::Receiver<betting::Current>,
    shared: Arc<Shared<B>>,
    subscriptions: Subscriptions,
    bets: FuturesUnordered<BetFuture>,
    /// The client's messages: `client_burst` at once, `client_msgs_per_s` sustained.
    inbound_bucket: TokenBucket,
    heard: Arc<Heard>,
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

    async fn serve(&mut self, mut inbound: mpsc::Receiver<Inbound>) {
        let welcome = ServerMessage::Welcome(protocol::Welcome {
            session: uuid::Uuid::new_v4().to_string(),
            player: self.player().cloned(),
            betting: self.betting.borrow_and_update().betting,
        });
        if self.send(&welcome).await.is_err() {
            return;
        }
        // The shutdown and status waits are re-created at each turn of the loop (joining and
        // leaving waiter lists every connection shares) rather than kept for the session: kept,
        // they would live across every handler's await and add about 0.25 KiB to each idle
        // connection, for no CPU difference measurable at 10k clients.
        let shutdown = self.shared.shutdown.clone();
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
                item = inbound.recv() => match item {
                    // Boxed: a client's message is rare next to events, and handling it inline
                    // would size every idle connection's task for the largest path (a third
                    // of the task).
                    Some(item) => Box::pin(self.on_inbound(item)).await,
                    None => return,
                },
                Some((index, item)) = self.subscriptions.next(), if !self.subscriptions.is_empty() => {
                    self.on_events(index, item).await
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
        let count = self.heard.count();
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
                let frame = Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b"idle"));
                self.write_frame(frame).await
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
                let frame = Frame::new(true, opcode, None, Payload::Owned(payload));
                self.write_frame(frame).await?;
                if opcode == OpCode::Close {
                    Err(Closed)
                } else {
                    Ok(())
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
                self.bets.push(Box::pin(async move {
                    let answer = forward_bet(bus, table, request, timeout).await;
                    drop(ticket);
                    answer
                }));
                Ok(())
            }
        }
    }

    /// Subscribes to `channel`: live events after `subscribed.seq`, and with `since` first every
    /// event after it. The live feed is joined first and buffers (in its bounded ring) while the
    /// replay runs; the replay stops at the live point and the live events it overlaps are
    /// skipped by sequence, so there is no gap and no duplicate.
    async fn subscribe(
        &mut self,
        channel: Channel,
        since: Option<u64>,
        epoch: Option<String>,
    ) -> Result<(), Closed> {
        let Subscription {
            feed,
            receiver,
            seq,
            start,
        } = match self.shared.hub.subscribe(&channel).await {
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
        self.subscriptions.insert(
            channel,
            FeedStream {
                events: BroadcastStream::new(receiver),
                feed,
                last_seq: last,
                taken: start,
            },
        );
        self.queue(&answer).await?;
        for bytes in replayed {
            self.queue_bytes(bytes).await?;
        }
        self.flush().await
    }

    /// Handles `first` and every event already waiting behind it (up to `COALESCE_FRAMES`),
    /// writing them into one buffer flushed once; then checks the connection's backlog.
    async fn on_events(
        &mut self,
        index: usize,
        first: Result<Arc<Outgoing>, BroadcastStreamRecvError>,
    ) -> Result<(), Closed> {
        let mut item = Some((index, first));
        let mut frames = 0;
        while let Some((index, event)) = item.take() {
            let Ok(event) = event else {
                // A whole ring behind: the hub already dropped events for it.
                return self.slow_consumer("a whole ring behind").await;
            };
            if self.take_event(index, &event) {
                let bytes = event.bytes(self.encoding).clone();
                self.queue_bytes(bytes).await?;
                frames += 1;
            }
            if frames < COALESCE_FRAMES {
                item = self.subscriptions.next().now_or_never().flatten();
            }
        }
        self.flush().await?;
        let (messages, bytes) = self.backlog();
        let limits = &self.shared.config.limits;
        if messages > limits.outbound_max_messages as u64
            || bytes > limits.outbound_max_bytes as u64
        {
            return self.slow_consumer("outbound backlog over its bound").await;
        }
        Ok(())
    }

    /// Records that the connection took `event` from the ring of its subscription `index`;
    /// whether to send it (an event at or below the last one delivered on the channel is not
    /// sent again).
    fn take_event(&mut self, index: usize, event: &Outgoing) -> bool {
        let Some(stream) = self.subscriptions.get_mut(index) else {
            return false;
        };
        stream.taken = event.mark;
        if event.seq <= stream.last_seq {
            return false;
        }
        stream.last_seq = event.seq;
        true
    }

    /// Events and bytes broadcast on the connection's channels that it has not taken yet.
    fn backlog(&self) -> (u64, u64) {
        self.subscriptions
            .iter()
            .fold((0, 0), |(messages, bytes), stream| {
                let sent = stream.feed.sent();
                (
                    messages + sent.messages.saturating_sub(stream.taken.messages),
                    bytes
                        + sent
                            .bytes(self.encoding)
                            .saturating_sub(stream.taken.bytes(self.encoding)),
                )
            })
    }

    /// Closes the connection with 4008: best effort within a short grace, since the reason is
    /// usually that its window is shut.
    async fn slow_consumer(&mut self, why: &'static str) -> Result<(), Closed> {
        tracing::debug!(why, "slow consumer disconnected");
        metrics::counter!("gateway_slow_consumers_total").increment(1);
        let frame = Frame::close(close::SLOW_CONSUMER, b"slow consumer");
        let _ = tokio::time::timeout(SLOW_CLOSE_GRACE, async {
            if self.write.write_frame(frame).await.is_ok() {
                let _ = self.write.flush().await;
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
        self.queue(message).await?;
        self.flush().await
    }

    /// Adds one message to the write buffer (sent at the next flush).
    async fn queue(&mut self, message: &ServerMessage) -> Result<(), Closed> {
        match message.encode(self.encoding) {
            Ok(bytes) => self.queue_bytes(bytes).await,
            Err(error) => {
                tracing::error!(%error, kind = message.message_type(), "message could not be encoded");
                Ok(())
            }
        }
    }

    async fn queue_bytes(&mut self, bytes: Bytes) -> Result<(), Closed> {
        let opcode = if self.encoding.is_binary() {
            OpCode::Binary
        } else {
            OpCode::Text
        };
        let frame = Frame::new(true, opcode, None, Payload::Borrowed(&bytes));
        self.queue_frame(frame).await
    }

    /// Adds one frame to the write buffer; this writes to the socket only when the buffer is
    /// over `COALESCE_BYTES`, under the same deadline as a flush.
    async fn queue_frame(&mut self, frame: Frame<'_>) -> Result<(), Closed> {
        let deadline = self.shared.config.limits.write_timeout;
        let written = tokio::time::timeout(deadline, self.write.write_frame(frame)).await;
        self.after_write(written.map(|r| r.map_err(|_| ()))).await
    }

    /// Writes everything buffered. A peer that does not take it within `write_timeout` (its
    /// TCP window stays shut) is a slow consumer: closed with 4008 rather than holding the
    /// session.
    async fn flush(&mut self) -> Result<(), Closed> {
        let deadline = self.shared.config.limits.write_timeout;
        let written = tokio::time::timeout(deadline, self.write.flush()).await;
        self.after_write(written.map(|r| r.map_err(|_| ()))).await
    }

    async fn after_write(
        &mut self,
        written: Result<Result<(), ()>, tokio::time::error::Elapsed>,
    ) -> Result<(), Closed> {
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(())) => Err(Closed),
            Err(_) => self.slow_consumer("write deadline passed").await,
        }
    }

    /// Writes one frame now.
    async fn write_frame(&mut self, frame: Frame<'_>) -> Result<(), Closed> {
        self.queue_frame(frame).await?;
        self.flush().await
    }

    async fn close(&mut self, code: u16, reason: &str) -> Result<(), Closed> {
        let frame = Frame::close(code, reason.as_bytes());
        self.write_frame(frame).await
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
                    let bytes = encode_event_message(encoding, channel, message.seq, &event)
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

/// A connection's channels. Not `tokio_stream::StreamMap`: that clones its key (the channel's
/// name, a `String`) for every item it yields, an allocation and a copy per event per
/// connection. An item here carries the subscription's index instead, valid until the next
/// `insert` or `remove` (which only a client's message does, never while events are handled).
#[derive(Default)]
struct Subscriptions {
    streams: Vec<(Channel, FeedStream)>,
    /// Where the next poll starts, so that a busy channel cannot starve another.
    start: usize,
}

impl Subscriptions {
    fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Subscribes to `channel`, replacing an earlier subscription to it.
    fn insert(&mut self, channel: Channel, stream: FeedStream) {
        match self.streams.iter_mut().find(|(c, _)| *c == channel) {
            Some((_, existing)) => *existing = stream,
            None => self.streams.push((channel, stream)),
        }
    }

    fn remove(&mut self, channel: &Channel) {
        self.streams.retain(|(c, _)| c != channel);
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut FeedStream> {
        self.streams.get_mut(index).map(|(_, stream)| stream)
    }

    fn iter(&self) -> impl Iterator<Item = &FeedStream> {
        self.streams.iter().map(|(_, stream)| stream)
    }

    /// The next event of any channel, with the index of its subscription; `None` when there
    /// are no subscriptions left (a channel whose feed ended is dropped).
    fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<(usize, FeedItem)>> {
        let mut turns = self.streams.len();
        while turns > 0 {
            turns -= 1;
            let index = self.start % self.streams.len();
            match self.streams[index].1.events.poll_next_unpin(cx) {
                std::task::Poll::Ready(Some(item)) => {
                    self.start = index + 1;
                    return std::task::Poll::Ready(Some((index, item)));
                }
                std::task::Poll::Ready(None) => {
                    self.streams.remove(index);
                    if self.streams.is_empty() {
                        break;
                    }
                }
                std::task::Poll::Pending => self.start = index + 1,
            }
        }
        if self.streams.is_empty() {
            std::task::Poll::Ready(None)
        } else {
            std::task::Poll::Pending
        }
    }

    async fn next(&mut self) -> Option<(usize, FeedItem)> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }
}

type FeedItem = Result<Arc<Outgoing>, BroadcastStreamRecvError>;

/// A connection's stream of one channel. Holding the feed keeps the node's bus subscription
/// for the channel alive while anyone is subscribed; the last one to leave stops it.
struct FeedStream {
    events: BroadcastStream<Arc<Outgoing>>,
    feed: Arc<Feed>,
    /// The last sequence delivered (or announced in `subscribed`): anything at or below it is
    /// not sent again.
    last_seq: u64,
    /// The feed's totals as of the last event taken from the ring: the backlog is measured
    /// from here.
    taken: Totals,
}

/// Sends a bet to GS and turns every outcome into an answer for the client: `bet_result`, or an
/// `error` under the bet's `request_id` — never silence.
async fn forward_bet<B: Bus>(
    bus: B,
    table: domain::TableId,
    request: protocol::PlaceBetRequest,
    timeout: Duration,
) -> ServerMessage {
    let request_id = request.request_id.clone();
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
    let subject = protocol::subject::bets_place_subject(&table);
    match bus.request(&subject, payload, timeout).await {
        Ok(reply) => match Encoding::MsgPack.decode::<PlaceBetReply>(&reply) {
            Ok(PlaceBetReply::Accepted(accepted)) => {
                ServerMessage::bet_result(request_id, accepted)
            }
            Ok(PlaceBetReply::Rejected(rejected)) => {
                ServerMessage::error(Some(request_id), rejected.code, rejected.message)
            }
            Err(error) => {
                tracing::error!(%error, "undecodable reply from GS");
                ServerMessage::error(
                    Some(request_id),
                    ErrorCode::Timeout,
                    "no valid answer from the game service; retry with the same bet_id",
                )
            }
        },
        Err(RequestError::NoResponders) => ServerMessage::error(
            Some(request_id),
            ErrorCode::BettingUnavailable,
            "no game service is available",
        ),
        Err(_) => ServerMessage::error(
            Some(request_id),
            ErrorCode::Timeout,
            "the game service did not answer in time; retry with the same bet_id",
        ),
    }
}

/// The socket's write side behind a write buffer that exists only while frames wait for a
/// flush: frames queued together leave in one `write`, and an idle connection holds no buffer
/// (at most `KEEP_WRITE_BUFFER` is kept between flushes). Writes only buffer until the buffer
/// holds `COALESCE_BYTES`; then it is written out first.
struct Coalescing<W> {
    inner: W,
    buffer: Vec<u8>,
    /// How much of `buffer` has been written to `inner`.
    written: usize,
}

impl<W: AsyncWrite + Unpin> Coalescing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            buffer: Vec::new(),
            written: 0,
        }
    }

    /// Writes the buffer out to `inner`; the buffer is then empty.
    fn poll_drain(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        while self.written < self.buffer.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.buffer[self.written..])
            )?;
            if n == 0 {
                return std::task::Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.written = 0;
        if self.buffer.capacity() > KEEP_WRITE_BUFFER {
            self.buffer = Vec::new();
        } else {
            self.buffer.clear();
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Coalescing<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.buffer.len() >= COALESCE_BYTES {
            std::task::ready!(this.poll_drain(cx))?;
        }
        let mut total = 0;
        for buf in bufs {
            this.buffer.extend_from_slice(buf);
            total += buf.len();
        }
        std::task::Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

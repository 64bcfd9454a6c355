//! One WebSocket connection: protocol v1 from `welcome` to Close.
//!
//! Two tasks per connection, never one per message: a reader that owns the read half (so
//! `read_frame`, which is not cancel-safe, is never raced in a `select!`), reassembles
//! fragments under the size cap and decodes messages; and the session, which owns the write
//! half and everything else — subscriptions and resumes, bets in flight, betting status, idle
//! checks, shutdown — and is the only writer.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bus::{Bus, RequestError};
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket, WebSocketRead, WebSocketWrite};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use protocol::{
    Channel, ClientMessage, DecodeError, Encoding, ErrorCode, MAX_MESSAGE_BYTES, PlaceBetReply,
    ServerMessage, Subscribed, encode_event_message,
};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::auth::Verified;
use crate::betting;
use crate::hub::{Feed, Outgoing, Subscription};

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
/// Events one resume (`subscribe` with `since`) may replay. A client further behind gets
/// `recovered: false` and reloads: the replay is held in memory until it reaches the live point,
/// so this bounds what one client can make the node hold (a few hundred bytes an event).
const MAX_REPLAY_EVENTS: usize = 2048;
/// How long one resume may take to reach the live point before the client is told
/// `recovered: false` instead.
const REPLAY_DEADLINE: Duration = Duration::from_secs(10);

enum Inbound {
    Message(ClientMessage),
    /// A frame that did not decode: answered with `BAD_MESSAGE`.
    Malformed(ServerMessage),
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
) {
    let (read, write) = ws.split(tokio::io::split);
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
    metrics::gauge!("gateway_connections").increment(1);
    let mut session = Session {
        write,
        encoding,
        token,
        betting: shared.betting.subscribe(),
        shared,
        subscriptions: StreamMap::new(),
        last_seq: HashMap::new(),
        bets: FuturesUnordered::new(),
        heard,
        heard_count: 0,
        quiet_since: Instant::now(),
        ping_sent: None,
    };
    session.serve(inbound_rx).await;
    metrics::gauge!("gateway_connections").decrement(1);
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
            Ok(message) => Inbound::Message(message),
            Err(error) => {
                Inbound::Malformed(ServerMessage::bad_message(&message, encoding, &error))
            }
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
    write: WebSocketWrite<WriteHalf<Io>>,
    encoding: Encoding,
    /// The connection's token; `None` for a spectator.
    token: Option<Verified>,
    betting: watch::Receiver<betting::Current>,
    shared: Arc<Shared<B>>,
    subscriptions: StreamMap<Channel, FeedStream>,
    /// Per channel, the last sequence delivered (or announced in `subscribed`): anything at or
    /// below it is not sent again.
    last_seq: HashMap<Channel, u64>,
    bets: FuturesUnordered<BetFuture>,
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
                    Some(item) => self.on_inbound(item).await,
                    None => return,
                },
                Some((channel, item)) = self.subscriptions.next(), if !self.subscriptions.is_empty() => {
                    self.on_event(channel, item).await
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

    async fn on_inbound(&mut self, item: Inbound) -> Result<(), Closed> {
        match item {
            Inbound::Message(message) => self.on_message(message).await,
            Inbound::Malformed(answer) => self.send(&answer).await,
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
                self.subscribe(channel, subscribe.since, subscribe.epoch)
                    .await
            }
            ClientMessage::Unsubscribe(unsubscribe) => match unsubscribe.parse_channel() {
                Ok(channel) => {
                    self.subscriptions.remove(&channel);
                    self.last_seq.remove(&channel);
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
                let table = bet.table.clone();
                let request = bet.into_request(token.player);
                let bus = self.shared.bus.clone();
                let timeout = self.shared.config.bet_timeout;
                self.bets
                    .push(Box::pin(forward_bet(bus, table, request, timeout)));
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
        self.last_seq.insert(channel.clone(), last);
        self.subscriptions.insert(
            channel,
            FeedStream {
                events: BroadcastStream::new(receiver),
                _feed: feed,
            },
        );
        self.send(&answer).await?;
        for bytes in replayed {
            self.send_bytes(bytes).await?;
        }
        Ok(())
    }

    async fn on_event(
        &mut self,
        channel: Channel,
        item: Result<Arc<Outgoing>, BroadcastStreamRecvError>,
    ) -> Result<(), Closed> {
        match item {
            Ok(event) => {
                let last = self.last_seq.entry(channel).or_insert(0);
                if event.seq <= *last {
                    return Ok(());
                }
                *last = event.seq;
                let bytes = event.bytes(self.encoding).clone();
                self.send_bytes(bytes).await
            }
            Err(_lagged) => {
                metrics::counter!("gateway_slow_consumers_total").increment(1);
                let _ = self.close(close::SLOW_CONSUMER, "slow consumer").await;
                Err(Closed)
            }
        }
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

    async fn send(&mut self, message: &ServerMessage) -> Result<(), Closed> {
        match message.encode(self.encoding) {
            Ok(bytes) => self.send_bytes(bytes).await,
            Err(error) => {
                tracing::error!(%error, kind = message.message_type(), "message could not be encoded");
                Ok(())
            }
        }
    }

    async fn send_bytes(&mut self, bytes: Bytes) -> Result<(), Closed> {
        let opcode = if self.encoding.is_binary() {
            OpCode::Binary
        } else {
            OpCode::Text
        };
        let frame = Frame::new(true, opcode, None, Payload::Borrowed(&bytes));
        self.write_frame(frame).await
    }

    /// Writes one frame. A peer that does not take it within the idle timeout (its TCP window
    /// stays shut) is dead or hopelessly slow: the connection is dropped rather than holding
    /// the session forever.
    async fn write_frame(&mut self, frame: Frame<'_>) -> Result<(), Closed> {
        let idle = self.shared.config.idle_timeout;
        match tokio::time::timeout(idle, self.write.write_frame(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(Closed),
        }
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
            .replay(stream, &format!("{channel}.>"), since + 1)
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

/// A connection's stream of one channel. Holding the feed keeps the node's bus subscription
/// for the channel alive while anyone is subscribed; the last one to leave stops it.
struct FeedStream {
    events: BroadcastStream<Arc<Outgoing>>,
    _feed: Arc<Feed>,
}

impl futures_util::Stream for FeedStream {
    type Item = Result<Arc<Outgoing>, BroadcastStreamRecvError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.events.poll_next_unpin(cx)
    }
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
    let subject = format!("bets.place.{table}");
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

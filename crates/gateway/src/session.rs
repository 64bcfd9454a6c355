//! One WebSocket connection: protocol v1 from `welcome` to Close.
//!
//! Two tasks per connection, never one per message: a reader that owns the read half (so
//! `read_frame`, which is not cancel-safe, is never raced in a `select!`), reassembles
//! fragments under the size cap and decodes messages; and the session, which owns the write
//! half and everything else — subscriptions, bets in flight, shutdown — and is the only writer.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
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
    ServerMessage, Subscribed,
};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_util::sync::CancellationToken;

use crate::Shared;
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

enum Inbound {
    Message(ClientMessage),
    /// A frame that did not decode: answered with `BAD_MESSAGE`.
    Malformed(ServerMessage),
    /// A control frame the protocol obliges us to send (pong, close echo).
    Obligated(OpCode, Vec<u8>),
    /// The reader stopped for this reason; the session closes with it.
    Close(u16, &'static str),
}

/// Runs one connection to its end.
pub(crate) async fn run<B: Bus>(
    ws: WebSocket<Io>,
    encoding: Encoding,
    player: Option<domain::PlayerId>,
    shared: Arc<Shared<B>>,
) {
    let (read, write) = ws.split(tokio::io::split);
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let reader_stop = CancellationToken::new();
    let reader = shared
        .tasks
        .spawn(read_loop(read, encoding, inbound_tx, reader_stop.clone()));
    let mut session = Session {
        write,
        encoding,
        player,
        shared,
        subscriptions: StreamMap::new(),
        last_seq: HashMap::new(),
        bets: FuturesUnordered::new(),
    };
    session.serve(inbound_rx).await;
    // The reader may be parked in `read_frame` on a silent peer: cancel it (it checks between
    // frames) and drop the TCP connection by dropping both halves.
    reader_stop.cancel();
    reader.abort();
}

async fn read_loop(
    read: WebSocketRead<ReadHalf<Io>>,
    encoding: Encoding,
    inbound: mpsc::Sender<Inbound>,
    stop: CancellationToken,
) {
    let mut read = read;
    read.set_auto_close(true);
    read.set_auto_pong(true);
    // A single frame larger than the cap is refused by the library before it is buffered; the
    // reassembly below enforces the same cap across fragments.
    read.set_max_message_size(MAX_MESSAGE_BYTES);
    let mut message: Vec<u8> = Vec::new();
    let mut message_opcode = OpCode::Text;
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
        let complete = match frame.opcode {
            OpCode::Close => return,
            OpCode::Ping | OpCode::Pong => continue,
            OpCode::Text | OpCode::Binary => {
                message.clear();
                message_opcode = frame.opcode;
                message.extend_from_slice(&frame.payload);
                frame.fin
            }
            OpCode::Continuation => {
                if message.len() + frame.payload.len() > MAX_MESSAGE_BYTES {
                    let _ = inbound
                        .send(Inbound::Close(close::TOO_BIG, "message too big"))
                        .await;
                    return;
                }
                message.extend_from_slice(&frame.payload);
                frame.fin
            }
        };
        if message.len() > MAX_MESSAGE_BYTES {
            let _ = inbound
                .send(Inbound::Close(close::TOO_BIG, "message too big"))
                .await;
            return;
        }
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
    player: Option<domain::PlayerId>,
    shared: Arc<Shared<B>>,
    subscriptions: StreamMap<Channel, FeedStream>,
    /// Per channel, the last sequence delivered (or announced in `subscribed`): anything at or
    /// below it is not sent again.
    last_seq: HashMap<Channel, u64>,
    bets: FuturesUnordered<BetFuture>,
}

/// Why writing stopped.
struct Closed;

impl<B: Bus> Session<B> {
    async fn serve(&mut self, mut inbound: mpsc::Receiver<Inbound>) {
        let welcome = ServerMessage::Welcome(protocol::Welcome {
            session: uuid::Uuid::new_v4().to_string(),
            player: self.player.clone(),
            betting: self.shared.betting(),
        });
        if self.send(&welcome).await.is_err() {
            return;
        }
        let shutdown = self.shared.shutdown.clone();
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
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn on_inbound(&mut self, item: Inbound) -> Result<(), Closed> {
        match item {
            Inbound::Message(message) => self.on_message(message).await,
            Inbound::Malformed(answer) => self.send(&answer).await,
            Inbound::Obligated(opcode, payload) => {
                let frame = Frame::new(true, opcode, None, Payload::Owned(payload));
                self.write.write_frame(frame).await.map_err(|_| Closed)?;
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
                if let Channel::Player(owner) = &channel
                    && self.player.as_ref() != Some(owner)
                {
                    let message = match self.player {
                        None => "player channels need a token",
                        Some(_) => "a player channel is private to its player",
                    };
                    return self.error(None, ErrorCode::Forbidden, message).await;
                }
                self.subscribe(channel).await
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
                let Some(player) = self.player.clone() else {
                    return self
                        .error(
                            Some(request_id),
                            ErrorCode::Unauthorized,
                            "bets need a token",
                        )
                        .await;
                };
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
                let request = bet.into_request(player);
                let bus = self.shared.bus.clone();
                let timeout = self.shared.config.bet_timeout;
                self.bets
                    .push(Box::pin(forward_bet(bus, table, request, timeout)));
                Ok(())
            }
        }
    }

    async fn subscribe(&mut self, channel: Channel) -> Result<(), Closed> {
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
        let answer = ServerMessage::Subscribed(Subscribed {
            channel: channel.clone(),
            seq,
            epoch: feed.epoch().to_string(),
            recovered: true,
            state: feed.state(),
        });
        self.last_seq.insert(channel.clone(), seq);
        self.subscriptions.insert(
            channel,
            FeedStream {
                events: BroadcastStream::new(receiver),
                _feed: feed,
            },
        );
        self.send(&answer).await
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
        self.write.write_frame(frame).await.map_err(|_| Closed)
    }

    async fn close(&mut self, code: u16, reason: &str) -> Result<(), Closed> {
        let frame = Frame::close(code, reason.as_bytes());
        self.write.write_frame(frame).await.map_err(|_| Closed)
    }
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

//! The `Bus` port: what services need from a message bus, in logical names (`table.<t>.round`,
//! stream `TABLES`, bucket `gms_leases`). Adapters map these names to the server (prefixing,
//! JetStream headers) and hand back logical names, so services never see the namespace.
//!
//! Owned by the inside: it depends on no adapter and no async-nats type leaks through it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::stream::BoxStream;
use tokio::sync::mpsc;
use tokio_util::sync::DropGuard;

use crate::definitions::Definitions;
use crate::error::{BusError, KvError, PublishError, RequestError};

/// A message bus: JetStream-style streams with message-id dedup and optimistic concurrency,
/// ordered replay, durable consumers with explicit ack, core request/reply with queue groups,
/// and key-value buckets with TTL. Services take `impl Bus`; only the composition root picks
/// [`crate::NatsBus`] or [`crate::LocalBus`].
pub trait Bus: Clone + Send + Sync + 'static {
    /// A handle on one key-value bucket.
    type Kv: Kv;

    /// Creates or updates the streams, durable consumers and buckets of `definitions`.
    /// Idempotent: run it at every start.
    fn setup(&self, definitions: &Definitions)
    -> impl Future<Output = Result<(), BusError>> + Send;

    /// Stores a message in the stream that captures its subject. A msg id seen within the
    /// stream's duplicate window is not stored again: the answer has `duplicate: true` and the
    /// first copy's sequence. With `expected_last_subject_seq`, the message is stored only if
    /// the last message on its subject has that sequence (0: none), else
    /// [`PublishError::WrongLastSequence`] — unless that last message carries this very msg id:
    /// then this is the retry of a publish that was stored, answered as a duplicate.
    fn publish(
        &self,
        publish: Publish,
    ) -> impl Future<Output = Result<Published, PublishError>> + Send;

    /// The last message stored on `subject` (no wildcards) in `stream`, if any.
    fn last_message(
        &self,
        stream: &str,
        subject: &str,
    ) -> impl Future<Output = Result<Option<StoredMessage>, BusError>> + Send;

    /// Where `stream` stands: its first and last sequences and its epoch.
    fn stream_state(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<StreamState, BusError>> + Send;

    /// The messages of `stream` matching `filter_subject` (wildcards `*` and `>`) with a
    /// sequence `>= from_seq` in order, then live ones as they are stored: no gap and no
    /// duplicate, across reconnects. Dropping the subscription cancels it.
    fn replay(
        &self,
        stream: &str,
        filter_subject: &str,
        from_seq: u64,
    ) -> impl Future<Output = Result<Subscription, BusError>> + Send;

    /// The stored messages of `stream` matching `filter_subject` with sequences
    /// `from_seq..=to_seq`, in order and in batches, for reading a stream's history once (an
    /// audit): the feed ends after the last of them, which is before `to_seq` when the stream
    /// holds none that match up to there (the reader compares where it ended).
    /// Like [`Bus::replay`], it resumes across reconnects with no gap and no duplicate, but
    /// it does not wait for live messages, and it hands over messages a batch at a time.
    fn read_range(
        &self,
        stream: &str,
        filter_subject: &str,
        from_seq: u64,
        to_seq: u64,
    ) -> impl Future<Output = Result<Batches, BusError>> + Send;

    /// Reads `stream` through the durable consumer `durable` (created if missing, with the
    /// settings of its [`crate::ConsumerDef`] when one was set up): every matching message from
    /// the start of the stream, each until it is acked; one not acked within the consumer's
    /// `ack_wait` is delivered again. Several `consume` calls on one durable share its messages.
    fn consume(
        &self,
        stream: &str,
        durable: &str,
        filter_subject: &str,
    ) -> impl Future<Output = Result<Deliveries, BusError>> + Send;

    /// Sends a request on `subject` (core messaging, not stored) and waits up to `timeout` for
    /// the first answer.
    fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> impl Future<Output = Result<Bytes, RequestError>> + Send;

    /// Receives the requests on `subject` (wildcards allowed) as a member of `queue_group`:
    /// each request reaches one member of each group. Ready when this returns.
    fn serve(
        &self,
        subject: &str,
        queue_group: &str,
    ) -> impl Future<Output = Result<Requests, BusError>> + Send;

    /// A handle on the key-value bucket `bucket` (set up beforehand).
    fn kv(&self, bucket: &str) -> impl Future<Output = Result<Self::Kv, BusError>> + Send;

    /// Whether the bus is connected to its server right now (always true in-process).
    fn is_connected(&self) -> bool;
}

/// One key-value bucket. Keys are subject-like tokens (`roulette-1`, `a.b`); watch patterns may
/// use `*` and `>`. Revisions increase across the whole bucket. In a bucket with a `max_age`, an
/// entry not written again within it expires: it reads as absent and can be created again.
pub trait Kv: Clone + Send + Sync + 'static {
    /// The live value of `key`, if any.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KvEntry>, KvError>> + Send;

    /// Writes `value` unconditionally; returns its revision.
    fn put(&self, key: &str, value: Bytes) -> impl Future<Output = Result<u64, KvError>> + Send;

    /// Writes `value` only if `key` has no live value (absent, deleted or expired), else
    /// [`KvError::AlreadyExists`].
    fn create(&self, key: &str, value: Bytes) -> impl Future<Output = Result<u64, KvError>> + Send;

    /// Writes `value` only if the last revision of `key` is `expected_revision` (compare and
    /// set), else [`KvError::WrongRevision`].
    fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_revision: u64,
    ) -> impl Future<Output = Result<u64, KvError>> + Send;

    /// Deletes `key` (watchers see an event without a value).
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), KvError>> + Send;

    /// The current value of each key matching `key_or_pattern`, then every change, in revision
    /// order. A watcher that falls behind may skip intermediate values of a key, never its
    /// latest one. Expiry is not an event.
    fn watch(&self, key_or_pattern: &str) -> impl Future<Output = Result<KvWatch, KvError>> + Send;
}

/// A message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Logical subject, no wildcards.
    pub subject: String,
    pub payload: Bytes,
    /// `Nats-Msg-Id`: the stream stores a msg id once per duplicate window. Without one, the
    /// nats adapter makes one up so that its own retries stay safe.
    pub msg_id: Option<String>,
    /// `Nats-Expected-Last-Subject-Sequence`: 0 means "no message on this subject yet".
    pub expected_last_subject_seq: Option<u64>,
}

impl Publish {
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            subject: subject.into(),
            payload: payload.into(),
            msg_id: None,
            expected_last_subject_seq: None,
        }
    }

    pub fn msg_id(mut self, msg_id: impl Into<String>) -> Self {
        self.msg_id = Some(msg_id.into());
        self
    }

    pub fn expected_last_subject_seq(mut self, seq: u64) -> Self {
        self.expected_last_subject_seq = Some(seq);
        self
    }
}

/// Where a published message is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Logical stream name.
    pub stream: String,
    pub seq: u64,
    /// The msg id was already stored within the duplicate window (possibly by an earlier
    /// attempt of this same publish): `seq` is that first copy's.
    pub duplicate: bool,
}

/// A message as stored in a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Logical subject.
    pub subject: String,
    /// Stream sequence.
    pub seq: u64,
    pub payload: Bytes,
    pub msg_id: Option<String>,
}

/// Where a stream stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamState {
    /// The lowest sequence still stored (0 while the stream has never stored anything).
    pub first_seq: u64,
    /// The last sequence assigned (0 while empty).
    pub last_seq: u64,
    /// Identifies this life of the stream: it changes only when the stream is recreated, so a
    /// sequence from another epoch means nothing here.
    pub epoch: String,
    /// The stream drops old messages by its own limits (age, count or bytes), so a first
    /// sequence past 1 can be legitimate. Without limits it keeps everything, and a first
    /// sequence past 1 means messages were removed by hand.
    pub retention_limited: bool,
}

/// A value in a key-value bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    pub value: Bytes,
    pub revision: u64,
}

/// A change seen by a watcher: `value` is `None` when the key was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEvent {
    pub key: String,
    pub value: Option<Bytes>,
    pub revision: u64,
}

/// A message delivered by a durable consumer; [`AckMessage::ack`] it once handled.
#[derive(Debug)]
pub struct AckMessage {
    pub msg: StoredMessage,
    /// How many times this message has been delivered (1 the first time).
    pub delivered: u64,
    pub(crate) acker: Acker,
}

#[derive(Debug)]
pub(crate) enum Acker {
    Nats(Box<async_nats::jetstream::Message>),
    Local(crate::local::LocalAck),
}

impl AckMessage {
    /// Acknowledges the message: it is not delivered again.
    pub async fn ack(&self) -> Result<(), BusError> {
        match &self.acker {
            Acker::Nats(message) => message
                .ack()
                .await
                .map_err(|e| BusError::Other(format!("ack failed: {e}"))),
            Acker::Local(ack) => {
                ack.ack();
                Ok(())
            }
        }
    }
}

/// A request received by [`Bus::serve`]; answer it with [`Request::respond`].
#[derive(Debug)]
pub struct Request {
    /// Logical subject the request was sent to.
    pub subject: String,
    pub payload: Bytes,
    pub(crate) replier: Replier,
}

#[derive(Debug)]
pub(crate) enum Replier {
    Nats {
        client: async_nats::Client,
        reply: Option<async_nats::Subject>,
    },
    Local(mpsc::Sender<Bytes>),
}

impl Request {
    /// Sends the answer. A requester that gave up meanwhile is not an error.
    pub async fn respond(self, payload: Bytes) -> Result<(), BusError> {
        match self.replier {
            Replier::Nats { client, reply } => {
                let Some(reply) = reply else {
                    return Err(BusError::Other("the request has no reply subject".into()));
                };
                client
                    .publish(reply, payload)
                    .await
                    .map_err(|e| BusError::Other(format!("respond failed: {e}")))
            }
            Replier::Local(sender) => {
                // The requester keeps the first answer; later ones and late ones are dropped.
                let _ = sender.try_send(payload);
                Ok(())
            }
        }
    }
}

/// A stream of bus deliveries. Bounded: a consumer that stops polling holds the producer back
/// (or, for core requests, lets them time out) instead of growing memory. Dropping it stops the
/// work behind it.
pub struct Feed<T> {
    inner: BoxStream<'static, T>,
    _guard: Option<DropGuard>,
    /// Asks the source to stop sending, letting through what is on its way ([`Feed::drain`]).
    drain: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Ordered messages of a [`Bus::replay`].
pub type Subscription = Feed<Result<StoredMessage, BusError>>;
/// Batches of a [`Bus::read_range`].
pub type Batches = Feed<Result<Vec<StoredMessage>, BusError>>;
/// Messages of a durable consumer ([`Bus::consume`]).
pub type Deliveries = Feed<Result<AckMessage, BusError>>;
/// Requests of a [`Bus::serve`].
pub type Requests = Feed<Request>;
/// Events of a [`Kv::watch`].
pub type KvWatch = Feed<KvEvent>;

impl<T: Send + 'static> Feed<T> {
    pub(crate) fn from_stream(
        stream: impl Stream<Item = T> + Send + 'static,
        guard: Option<DropGuard>,
    ) -> Self {
        Self {
            inner: Box::pin(stream),
            _guard: guard,
            drain: None,
        }
    }

    pub(crate) fn with_drain(mut self, drain: tokio::sync::oneshot::Sender<()>) -> Self {
        self.drain = Some(drain);
        self
    }

    /// Leaves the subscription, letting through what is on its way: no new delivery is routed
    /// here (a queue group's other members get them), and the feed ends once what was
    /// delivered before the leave has been read. Read it to the end: those requests are yours
    /// to answer. Dropping a feed instead discards them. Best effort on NATS: async-nats 0.51
    /// ends a drained subscription once its UNSUB is flushed, not when the server has processed
    /// it, so a request routed in that instant can still be dropped (its requester times out).
    /// Only [`Bus::serve`]'s feeds drain; on the others this does nothing.
    pub fn drain(&mut self) {
        if let Some(drain) = self.drain.take() {
            let _ = drain.send(());
        }
    }

    pub(crate) fn from_receiver(receiver: mpsc::Receiver<T>, guard: Option<DropGuard>) -> Self {
        let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        Self::from_stream(stream, guard)
    }
}

impl<T> Stream for Feed<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl<T> std::fmt::Debug for Feed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed").finish_non_exhaustive()
    }
}

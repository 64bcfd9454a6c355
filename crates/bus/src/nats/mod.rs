//! The `nats` adapter: the [`Bus`] port on async-nats JetStream (streams, ordered and durable
//! pull consumers, KV) and core NATS (request/reply with queue groups).
//!
//! Everything the server sees is namespaced by the prefix (see `names`); everything handed back
//! is logical. Reconnects are automatic and unbounded; a publish that times out or loses its
//! connection is retried with the same `Nats-Msg-Id` (stream dedup makes that safe) with
//! exponential backoff until [`NatsOptions::publish_deadline`]; replays re-establish themselves
//! from the next sequence they owe. Only the composition root and tests name this type.

mod kv;
mod names;
mod tasks;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode, consumer, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::kv::NatsKv;
use self::names::Names;
use crate::definitions::{BucketDef, ConsumerDef, Definitions, Storage, StreamDef};
use crate::error::{BusError, PublishError, RequestError};
use crate::port::{
    Batches, Bus, Deliveries, Feed, Publish, Published, Replier, Request, Requests, StoredMessage,
    StreamState, Subscription,
};
use crate::subject::{check_filter, check_name, check_subject, matches};

/// Messages a replay or durable-consumer task may hold for a reader that is busy. Enough for a
/// burst of round and wallet events; beyond it the task simply stops pulling until the reader
/// catches up (the server keeps the rest).
pub(crate) const FEED_CAPACITY: usize = 256;
/// Messages a durable consumer asks the server for in one pull: small, because every one of them
/// is in flight (and its `ack_wait` running) until the reader gets to it.
const CONSUME_BATCH: usize = 64;
/// Requests the client buffers per `serve` subscription before the server counts it as a slow
/// consumer and drops requests (their senders then time out and retry).
const SUBSCRIPTION_CAPACITY: usize = 1024;
/// Pull-request expiry of ordered and durable consumers, and the idle heartbeat within it: short,
/// so that a consumer lost with a server is noticed in seconds. The client gives up on a
/// consumer after two missed heartbeats: at 10 s / 5 s that was 20 s, and a gateway's player
/// feed whose consumer lived on a killed node of a cluster (the gateway's own connection
/// elsewhere, so no reconnect to hint at it) stayed silent past 30 s. An idle consumer costs one
/// pull request per expiry.
const PULL_EXPIRES: Duration = Duration::from_secs(2);
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);
/// The request timeout of ordered consumers' JetStream calls, which the client also uses when
/// it recreates one by itself (after missed heartbeats): during a leader election those
/// requests go unanswered, and each recreation attempt (a delete, then a create) waited the
/// connection's 5 s twice. A first creation that times out is tried again ([`ORDERED_TRIES`]).
const ORDERED_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const ORDERED_TRIES: usize = 3;
/// Messages one pull of a [`Bus::read_range`] asks for. The client asks for the next pull when
/// half of one is left, so up to one and a half pulls are in flight: that must stay within
/// [`SUBSCRIPTION_CAPACITY`], or the client drops what overflows (a slow consumer) and the
/// range read stalls until it is re-established. A bare read of a whole stream is faster in
/// larger pulls, but the audit's whole replay, given a larger capacity and pulls of 5,000,
/// spent more CPU and no less time (ADR 0018, session 12).
pub(crate) const RANGE_BATCH: usize = 640;
/// Batches in flight between a range's reading task and its reader.
const RANGE_BATCHES_IN_FLIGHT: usize = 4;
/// How long the server keeps a range's consumer after its reader went away.
const RANGE_INACTIVE: Duration = Duration::from_secs(10);

/// Tuning of the nats adapter; the defaults suit production and tests alike.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Shown by the server in its connection list.
    pub connection_name: Option<String>,
    /// How long one JetStream API call or publish acknowledgement may take.
    pub request_timeout: Duration,
    /// How long a publish keeps retrying (same msg id) before [`PublishError::Timeout`].
    pub publish_deadline: Duration,
    /// First pause between publish retries; it doubles up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// Longest pause between two reconnect attempts.
    pub reconnect_delay_max: Duration,
    /// How often the client pings a quiet server. Three unanswered pings (two to three
    /// intervals after the server went silent) drop the connection and move to another server
    /// of the list: a frozen node is left in seconds, not after async-nats' default minute.
    pub ping_interval: Duration,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            connection_name: None,
            request_timeout: Duration::from_secs(5),
            publish_deadline: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(2),
            reconnect_delay_max: Duration::from_secs(2),
            ping_interval: Duration::from_secs(1),
        }
    }
}

/// The bus on a NATS server (or cluster). Cheap to clone: clones share one connection.
#[derive(Debug, Clone)]
pub struct NatsBus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    /// `js` with [`ORDERED_REQUEST_TIMEOUT`]: what ordered consumers are made with.
    ordered_js: jetstream::Context,
    names: Names,
    options: NatsOptions,
    /// Durable consumers declared by `setup`, by (logical stream, logical name).
    consumers: RwLock<HashMap<(String, String), ConsumerDef>>,
    /// Streams declared by `setup`, by logical name: which stream captures a subject.
    streams: RwLock<HashMap<String, StreamDef>>,
    /// Counts (re)connections: replays and watches re-establish their ephemeral consumers at
    /// once when it moves, instead of waiting for missed heartbeats.
    connections: Arc<watch::Sender<u64>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// Why one step of `setup` failed: worth another try (the cluster has no settled leader, the
/// request timed out) or not (the server refused the definition).
#[derive(Debug)]
enum SetupFailure {
    Transient(String),
    Refused(String),
}

impl std::fmt::Display for SetupFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transient(e) | Self::Refused(e) => f.write_str(e),
        }
    }
}

impl SetupFailure {
    fn from_code(code: ErrorCode, error: impl std::fmt::Display) -> Self {
        if is_cluster_unsettled(code) {
            Self::Transient(error.to_string())
        } else {
            Self::Refused(error.to_string())
        }
    }

    fn create(error: jetstream::context::CreateStreamError) -> Self {
        use jetstream::context::CreateStreamErrorKind as K;
        match error.kind() {
            K::TimedOut | K::JetStreamUnavailable | K::Response => {
                Self::Transient(error.to_string())
            }
            K::JetStream(js) => Self::from_code(js.error_code(), error),
            _ => Self::Refused(error.to_string()),
        }
    }
}

/// Runs `attempt` until it succeeds, fails for a reason that is not transient, or `deadline`
/// passes (then its last error), pausing 100 ms doubling to 1 s in between. An attempt left
/// unanswered is given up after 1 s, doubling to 5 s while none is answered: a cluster drops,
/// rather than answers, a request to create a stream or bucket whose creation by another
/// process is still being agreed, and several services start at once and create the same
/// definitions. With the connection's 5 s request timeout each such race cost 5 s: three
/// services starting on a fresh three-node cluster each waited 5 s (now 1 s), and in CI a GMS
/// was still retrying its setup 15 s after GS and the gateway were serving.
async fn retry_transient<F, Fut>(
    deadline: tokio::time::Instant,
    mut attempt: F,
) -> Result<(), SetupFailure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), SetupFailure>>,
{
    let mut pause = Duration::from_millis(100);
    let mut limit = tasks::ATTEMPT_TIMEOUT_FIRST;
    loop {
        let outcome = match tokio::time::timeout(limit, attempt()).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let unanswered = SetupFailure::Transient(format!("no answer within {limit:?}"));
                limit = (limit * 2).min(tasks::ATTEMPT_TIMEOUT_LAST);
                Err(unanswered)
            }
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(SetupFailure::Transient(error))
                if tokio::time::Instant::now() + pause < deadline =>
            {
                tracing::warn!(%error, "JetStream not ready; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(error) => return Err(error),
        }
    }
}

/// Whether a stream's settings are the ones Croupier sets (the server fills in the rest).
fn same_stream_settings(current: &stream::Config, wanted: &stream::Config) -> bool {
    let mut subjects = current.subjects.clone();
    let mut wanted_subjects = wanted.subjects.clone();
    subjects.sort();
    wanted_subjects.sort();
    subjects == wanted_subjects
        && current.retention == wanted.retention
        && current.discard == wanted.discard
        && current.storage == wanted.storage
        && current.max_age == wanted.max_age
        && current.max_messages == wanted.max_messages
        && current.max_bytes == wanted.max_bytes
        && current.duplicate_window == wanted.duplicate_window
        && current.num_replicas == wanted.num_replicas.max(1)
}

/// JetStream errors that say a cluster has no settled leadership yet (not a refusal).
fn is_cluster_unsettled(code: ErrorCode) -> bool {
    [
        ErrorCode::CLUSTER_NOT_AVAILABLE,
        ErrorCode::CLUSTER_NO_PEERS,
        ErrorCode::CLUSTER_NOT_ACTIVE,
        ErrorCode::CLUSTER_NOT_LEADER,
        ErrorCode::CLUSTER_INCOMPLETE,
    ]
    .contains(&code)
}

/// The servers of a NATS URL: one address, or a comma-separated list (`nats://a:4222,b:4222`;
/// the scheme may be left out), as `NATS_URL` names a cluster.
pub fn server_list(url: &str) -> Result<Vec<async_nats::ServerAddr>, BusError> {
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|server| {
            server
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| BusError::Connect(format!("bad NATS server address {server:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err(BusError::Connect("no NATS server given".into()));
    }
    Ok(servers)
}

impl NatsBus {
    /// Connects to `url` (a comma-separated list for a cluster) with `prefix` as the namespace
    /// (`CROUPIER_NATS_PREFIX`, may be empty). Fails at once when no server answers; once
    /// connected, reconnects forever.
    pub async fn connect(url: &str, prefix: &str, options: NatsOptions) -> Result<Self, BusError> {
        let names = Names::new(prefix)?;
        let event_prefix = names.prefix().to_string();
        let connections = Arc::new(watch::channel(0u64).0);
        let on_event = connections.clone();
        let delay_max = options.reconnect_delay_max;
        let servers = server_list(url)?;
        let mut connect = async_nats::ConnectOptions::new()
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .ping_interval(options.ping_interval)
            .max_reconnects(None::<usize>)
            .request_timeout(Some(options.request_timeout))
            .reconnect_delay_callback(move |attempts| reconnect_delay(attempts, delay_max))
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Connected) {
                    on_event.send_modify(|count| *count += 1);
                }
                let prefix = event_prefix.clone();
                async move { log_connection_event(&prefix, &event) }
            });
        if let Some(name) = &options.connection_name {
            connect = connect.name(name);
        }
        let client = connect
            .connect(servers)
            .await
            .map_err(|e| BusError::Connect(e.to_string()))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(options.request_timeout);
        let mut ordered_js = js.clone();
        ordered_js.set_timeout(ORDERED_REQUEST_TIMEOUT.min(options.request_timeout));
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                js,
                ordered_js,
                names,
                options,
                consumers: RwLock::new(HashMap::new()),
                streams: RwLock::new(HashMap::new()),
                connections,
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            }),
        })
    }

    /// The namespace prefix (`CROUPIER_NATS_PREFIX`).
    pub fn prefix(&self) -> &str {
        self.inner.names.prefix()
    }

    /// The underlying connection, for health checks and tools at the edge.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Stops every replay and consumer task of this bus (and its clones), waits for them, and
    /// flushes what was published.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        let _ = self.inner.client.flush().await;
    }

    /// Wakes up at every (re)connection from now on.
    pub(crate) fn connections(&self) -> watch::Receiver<u64> {
        self.inner.connections.subscribe()
    }

    fn stream_config(&self, def: &StreamDef) -> stream::Config {
        let names = &self.inner.names;
        stream::Config {
            name: names.name(&def.name),
            subjects: def.subjects.iter().map(|s| names.subject(s)).collect(),
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            storage: storage_type(def.storage),
            max_age: def.max_age,
            max_messages: def.max_msgs,
            max_bytes: def.max_bytes,
            duplicate_window: def.duplicate_window,
            num_replicas: def.replicas,
            ..Default::default()
        }
    }

    /// Creates the stream, or updates it where its settings differ from `config`; a stream
    /// already as defined is left alone (an update is a replicated proposal: several processes
    /// starting at once against a cluster would queue them for nothing).
    async fn ensure_stream(&self, config: stream::Config) -> Result<(), SetupFailure> {
        let js = &self.inner.js;
        match js.get_stream(&config.name).await {
            Ok(handle) => {
                if same_stream_settings(&handle.cached_info().config, &config) {
                    return Ok(());
                }
                js.update_stream(&config)
                    .await
                    .map(drop)
                    .map_err(SetupFailure::create)
            }
            Err(e) => match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(found)
                    if found.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    // Identical concurrent creations succeed; one with other settings is
                    // refused as "name in use" and is updated on the next try.
                    js.create_stream(config).await.map(drop).map_err(
                        |e| match SetupFailure::create(e) {
                            SetupFailure::Refused(e) if e.contains("already in use") => {
                                SetupFailure::Transient(e)
                            }
                            other => other,
                        },
                    )
                }
                jetstream::context::GetStreamErrorKind::JetStream(js) => {
                    Err(SetupFailure::from_code(js.error_code(), e))
                }
                _ => Err(SetupFailure::Transient(e.to_string())),
            },
        }
    }

    /// Like [`Self::ensure_stream`] for a key-value bucket (its stream is `KV_<bucket>`).
    async fn ensure_bucket(&self, config: jetstream::kv::Config) -> Result<(), SetupFailure> {
        let js = &self.inner.js;
        if let Ok(handle) = js.get_stream(format!("KV_{}", config.bucket)).await {
            let current = &handle.cached_info().config;
            if current.max_messages_per_subject == config.history
                && current.max_age == config.max_age
                && current.storage == config.storage
                && current.num_replicas == config.num_replicas.max(1)
            {
                return Ok(());
            }
        }
        js.create_or_update_key_value(config)
            .await
            .map(drop)
            .map_err(|e| match e.kind() {
                jetstream::context::CreateKeyValueErrorKind::TimedOut
                | jetstream::context::CreateKeyValueErrorKind::JetStream => {
                    SetupFailure::Transient(e.to_string())
                }
                _ => SetupFailure::Refused(e.to_string()),
            })
    }

    fn bucket_config(&self, def: &BucketDef) -> jetstream::kv::Config {
        jetstream::kv::Config {
            bucket: self.inner.names.name(&def.name),
            history: def.history,
            max_age: def.max_age,
            storage: storage_type(def.storage),
            num_replicas: def.replicas,
            ..Default::default()
        }
    }

    fn consumer_config(&self, def: &ConsumerDef, filter_subject: &str) -> consumer::pull::Config {
        let name = self.inner.names.name(&def.name);
        consumer::pull::Config {
            durable_name: Some(name.clone()),
            name: Some(name),
            // An empty filter means the whole stream: it must stay empty, not become "p.".
            filter_subject: if filter_subject.is_empty() {
                String::new()
            } else {
                self.inner.names.subject(filter_subject)
            },
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: def.ack_wait,
            max_deliver: def.max_deliver,
            max_ack_pending: def.max_ack_pending,
            ..Default::default()
        }
    }

    async fn get_stream(&self, stream: &str) -> Result<jetstream::stream::Stream, BusError> {
        check_name("stream name", stream)?;
        self.inner
            .js
            .get_stream(self.inner.names.name(stream))
            .await
            .map_err(|e| match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    BusError::StreamNotFound(stream.to_string())
                }
                _ => other("read stream", e),
            })
    }

    /// Creates an ordered consumer delivering `filter` from `from_seq` on.
    async fn ordered(
        &self,
        stream: &str,
        filter: &str,
        from_seq: u64,
    ) -> Result<consumer::pull::Ordered, BusError> {
        check_name("stream name", stream)?;
        let config = consumer::pull::OrderedConfig {
            filter_subject: self.inner.names.subject(filter),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from_seq.max(1),
            },
            max_expires: PULL_EXPIRES,
            ..Default::default()
        };
        let name = self.inner.names.name(stream);
        let mut tries = 0;
        let consumer = loop {
            tries += 1;
            let created = self
                .inner
                .ordered_js
                .create_consumer_on_stream(config.clone(), name.as_str())
                .await
                .map_err(|e| consumer_error(stream, e));
            match created {
                Err(BusError::Timeout) if tries < ORDERED_TRIES => continue,
                other => break other?,
            }
        };
        consumer
            .messages()
            .await
            .map_err(|e| other("start ordered consumer", e))
    }

    /// Starts the pull of an ephemeral consumer for a range read: no acknowledgements, held in
    /// memory, gone shortly after its reader.
    async fn range_consumer(
        &self,
        stream: &str,
        filter: &str,
        from_seq: u64,
    ) -> Result<consumer::pull::Stream, BusError> {
        let handle = self.get_stream(stream).await?;
        let consumer = handle
            .create_consumer(consumer::pull::Config {
                filter_subject: self.inner.names.subject(filter),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: from_seq.max(1),
                },
                ack_policy: consumer::AckPolicy::None,
                memory_storage: true,
                inactive_threshold: RANGE_INACTIVE,
                ..Default::default()
            })
            .await
            .map_err(|e| consumer_error(stream, e))?;
        pull(&consumer, RANGE_BATCH, "start range consumer").await
    }

    /// Starts the pull of a durable consumer.
    async fn durable(
        &self,
        stream: &str,
        durable: &str,
        filter: &str,
    ) -> Result<consumer::pull::Stream, BusError> {
        let def = self
            .inner
            .consumers
            .read()
            .map_err(|_| BusError::Other("consumer registry poisoned".into()))?
            .get(&(stream.to_string(), durable.to_string()))
            .cloned()
            .unwrap_or_else(|| ConsumerDef::new(stream, durable));
        let handle = self.get_stream(stream).await?;
        let consumer = handle
            .create_consumer(self.consumer_config(&def, filter))
            .await
            .map_err(|e| consumer_error(stream, e))?;
        pull(&consumer, CONSUME_BATCH, "start durable consumer").await
    }

    /// The stream sequence of the last message matching `filter` (wildcards allowed), if any:
    /// what a replay of `filter` should have delivered up to. Through `ordered_js`: the stall
    /// watch asking must not wait the connection's full timeout.
    async fn last_seq_matching(&self, stream: &str, filter: &str) -> Result<Option<u64>, BusError> {
        let last = self
            .last_raw(&self.inner.ordered_js, stream, filter)
            .await?;
        Ok(last.map(|message| message.sequence))
    }

    /// The last stored message on `subject` (wildcards allowed) of `stream`, through `js`.
    async fn last_raw(
        &self,
        js: &jetstream::Context,
        stream: &str,
        subject: &str,
    ) -> Result<Option<jetstream::message::StreamMessage>, BusError> {
        let handle = js
            .get_stream_no_info(self.inner.names.name(stream))
            .await
            .map_err(|e| other("read stream", e))?;
        match handle
            .get_last_raw_message_by_subject(&self.inner.names.subject(subject))
            .await
        {
            Ok(message) => Ok(Some(message)),
            Err(e) => match e.kind() {
                jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
                jetstream::stream::LastRawMessageErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Err(BusError::StreamNotFound(stream.to_string()))
                }
                _ => Err(other("read last message", e)),
            },
        }
    }

    fn stored(&self, message: &async_nats::Message, seq: u64) -> StoredMessage {
        StoredMessage {
            subject: self.inner.names.logical_subject(message.subject.as_str()),
            seq,
            payload: message.payload.clone(),
            msg_id: message
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str().to_string()),
        }
    }

    /// One publish attempt: the acknowledgement, or what went wrong.
    async fn publish_once(
        &self,
        subject: &str,
        publish: &Publish,
        msg_id: &str,
    ) -> Result<jetstream::publish::PublishAck, jetstream::context::PublishError> {
        let mut message = PublishMessage::build()
            .payload(publish.payload.clone())
            .message_id(msg_id);
        if let Some(seq) = publish.expected_last_subject_seq {
            message = message.expected_last_subject_sequence(seq);
        }
        self.inner
            .js
            .send_publish(subject.to_string(), message)
            .await?
            .await
    }
}

impl Bus for NatsBus {
    type Kv = NatsKv;

    async fn setup(&self, definitions: &Definitions) -> Result<(), BusError> {
        definitions.validate()?;
        // A cluster may be electing a leader (just started, or a node just died): what fails for
        // that is retried until the publish deadline; a refusal of the definition is not.
        let deadline = tokio::time::Instant::now() + self.inner.options.publish_deadline;
        for def in &definitions.streams {
            retry_transient(deadline, || self.ensure_stream(self.stream_config(def)))
                .await
                .map_err(|e| {
                    BusError::Other(format!("create or update stream {}: {e}", def.name))
                })?;
            self.inner
                .streams
                .write()
                .map_err(|_| BusError::Other("stream registry poisoned".into()))?
                .insert(def.name.clone(), def.clone());
        }
        for def in &definitions.buckets {
            retry_transient(deadline, || self.ensure_bucket(self.bucket_config(def)))
                .await
                .map_err(|e| {
                    BusError::Other(format!("create or update bucket {}: {e}", def.name))
                })?;
        }
        for def in &definitions.consumers {
            let handle = self.get_stream(&def.stream).await?;
            handle
                .create_consumer(self.consumer_config(def, &def.filter_subject))
                .await
                .map_err(|e| consumer_error(&def.stream, e))?;
            self.inner
                .consumers
                .write()
                .map_err(|_| BusError::Other("consumer registry poisoned".into()))?
                .insert((def.stream.clone(), def.name.clone()), def.clone());
        }
        Ok(())
    }

    async fn publish(&self, publish: Publish) -> Result<Published, PublishError> {
        let outcome = self.publish_with_retries(&publish).await;
        metrics::counter!("bus_publish_total", "outcome" => outcome_label(&outcome)).increment(1);
        outcome
    }

    async fn last_message(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<Option<StoredMessage>, BusError> {
        check_name("stream name", stream)?;
        check_subject(subject)?;
        let last = self.last_raw(&self.inner.js, stream, subject).await?;
        Ok(last.map(|message| StoredMessage {
            subject: self.inner.names.logical_subject(message.subject.as_str()),
            seq: message.sequence,
            payload: message.payload,
            msg_id: message
                .headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str().to_string()),
        }))
    }

    async fn stream_state(&self, stream: &str) -> Result<StreamState, BusError> {
        let handle = self.get_stream(stream).await?;
        let info = handle.cached_info();
        Ok(StreamState {
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
            epoch: info.created.unix_timestamp_nanos().to_string(),
            retention_limited: !info.config.max_age.is_zero()
                || info.config.max_messages > 0
                || info.config.max_bytes > 0
                || info.config.max_messages_per_subject > 0,
        })
    }

    async fn replay(
        &self,
        stream: &str,
        filter_subject: &str,
        from_seq: u64,
    ) -> Result<Subscription, BusError> {
        check_filter(filter_subject)?;
        let from_seq = from_seq.max(1);
        let ordered = self.ordered(stream, filter_subject, from_seq).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(FEED_CAPACITY);
        let cancel = self.inner.shutdown.child_token();
        let guard = cancel.clone().drop_guard();
        self.inner.tasks.spawn(tasks::replay(
            self.clone(),
            tasks::ReplaySpec {
                stream: stream.to_string(),
                filter: filter_subject.to_string(),
                next_seq: from_seq,
            },
            ordered,
            sender,
            cancel,
        ));
        Ok(Feed::from_receiver(receiver, Some(guard)))
    }

    async fn read_range(
        &self,
        stream: &str,
        filter_subject: &str,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<Batches, BusError> {
        check_filter(filter_subject)?;
        check_name("stream name", stream)?;
        let from_seq = from_seq.max(1);
        let (sender, receiver) = tokio::sync::mpsc::channel(RANGE_BATCHES_IN_FLIGHT);
        if from_seq > to_seq {
            return Ok(Feed::from_receiver(receiver, None));
        }
        let pull = self
            .range_consumer(stream, filter_subject, from_seq)
            .await?;
        let cancel = self.inner.shutdown.child_token();
        let guard = cancel.clone().drop_guard();
        self.inner.tasks.spawn(tasks::read_range(
            self.clone(),
            tasks::RangeSpec {
                stream: stream.to_string(),
                filter: filter_subject.to_string(),
                next_seq: from_seq,
                to_seq,
            },
            pull,
            sender,
            cancel,
        ));
        Ok(Feed::from_receiver(receiver, Some(guard)))
    }

    async fn consume(
        &self,
        stream: &str,
        durable: &str,
        filter_subject: &str,
    ) -> Result<Deliveries, BusError> {
        check_name("consumer name", durable)?;
        check_filter(filter_subject)?;
        let pull = self.durable(stream, durable, filter_subject).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(FEED_CAPACITY);
        let cancel = self.inner.shutdown.child_token();
        let guard = cancel.clone().drop_guard();
        self.inner.tasks.spawn(tasks::consume(
            self.clone(),
            tasks::ConsumeSpec {
                stream: stream.to_string(),
                durable: durable.to_string(),
                filter: filter_subject.to_string(),
            },
            pull,
            sender,
            cancel,
        ));
        Ok(Feed::from_receiver(receiver, Some(guard)))
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RequestError> {
        check_subject(subject).map_err(|e| RequestError::Other(e.to_string()))?;
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        match self
            .inner
            .client
            .send_request(self.inner.names.subject(subject), request)
            .await
        {
            Ok(message) => Ok(message.payload),
            Err(e) => Err(match e.kind() {
                async_nats::RequestErrorKind::TimedOut => RequestError::Timeout,
                async_nats::RequestErrorKind::NoResponders => RequestError::NoResponders,
                _ => RequestError::Other(e.to_string()),
            }),
        }
    }

    async fn serve(&self, subject: &str, queue_group: &str) -> Result<Requests, BusError> {
        check_filter(subject)?;
        let real = self.inner.names.subject(subject);
        let client = &self.inner.client;
        let subscriber = if queue_group.is_empty() {
            client.subscribe(real).await
        } else {
            check_name("queue group", queue_group)?;
            client.queue_subscribe(real, queue_group.to_string()).await
        }
        .map_err(|e| other("subscribe", e))?;
        // The subscription is registered on the server once the flush returns, so a request
        // sent after `serve` returns finds this member.
        client.flush().await.map_err(|e| other("flush", e))?;
        let bus = self.clone();
        let (drain, drained) = tokio::sync::oneshot::channel();
        // `Subscriber::drain` unsubscribes and pings: the subscription ends when the pong
        // comes back, so every message the server routed here before the unsubscribe is read.
        let messages = futures_util::stream::unfold(
            (subscriber, Some(drained)),
            |(mut subscriber, mut drained)| async move {
                loop {
                    let Some(asked) = drained.as_mut() else {
                        let message = subscriber.next().await?;
                        return Some((message, (subscriber, None)));
                    };
                    tokio::select! {
                        biased;
                        asked = asked => {
                            drained = None;
                            if asked.is_ok() {
                                if let Err(error) = subscriber.drain().await {
                                    tracing::warn!(%error, "bus: could not drain a subscription");
                                    return None;
                                }
                            }
                        }
                        message = subscriber.next() => {
                            let message = message?;
                            return Some((message, (subscriber, drained)));
                        }
                    }
                }
            },
        );
        let requests = messages.map(move |message| Request {
            subject: bus.inner.names.logical_subject(message.subject.as_str()),
            payload: message.payload,
            replier: Replier::Nats {
                client: bus.inner.client.clone(),
                reply: message.reply,
            },
        });
        Ok(Feed::from_stream(requests, None).with_drain(drain))
    }

    async fn kv(&self, bucket: &str) -> Result<NatsKv, BusError> {
        check_name("bucket name", bucket)?;
        let store = self
            .inner
            .js
            .get_key_value(self.inner.names.name(bucket))
            .await
            .map_err(|e| {
                if is_stream_not_found(&e) {
                    BusError::BucketNotFound(bucket.to_string())
                } else {
                    other("open bucket", e)
                }
            })?;
        Ok(NatsKv::new(
            store,
            self.inner.tasks.clone(),
            &self.inner.shutdown,
            self.inner.connections.clone(),
        ))
    }

    fn is_connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }
}

impl NatsBus {
    async fn publish_with_retries(&self, publish: &Publish) -> Result<Published, PublishError> {
        check_subject(&publish.subject).map_err(|e| PublishError::Other(e.to_string()))?;
        let subject = self.inner.names.subject(&publish.subject);
        // Without a msg id a retry could store the message twice; with one, dedup makes every
        // retry safe.
        let msg_id = publish
            .msg_id
            .clone()
            .unwrap_or_else(|| format!("bus-{}", crate::unique_id()));
        let options = &self.inner.options;
        let deadline = Instant::now() + options.publish_deadline;
        let mut backoff = options.retry_backoff;
        // A server that just came back may answer "no stream" until JetStream has recovered,
        // and a cluster answers it while the stream elects a new leader (a node died): after a
        // transient failure, or for a stream this bus set up, that answer is retried too.
        let mut interrupted = self.declared_capturing(&publish.subject);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let attempt =
                tokio::time::timeout(remaining, self.publish_once(&subject, publish, &msg_id))
                    .await;
            let reason = match attempt {
                Ok(Ok(ack)) => {
                    return Ok(Published {
                        stream: self.inner.names.logical_name(&ack.stream),
                        seq: ack.sequence,
                        duplicate: ack.duplicate,
                    });
                }
                Err(_elapsed) => return Err(PublishError::Timeout),
                Ok(Err(e)) => match e.kind() {
                    PublishErrorKind::WrongLastSequence => {
                        // The server checks the expected sequence before dedup: the retry of
                        // a publish that was stored (its ack lost) lands here. If the subject's
                        // last message is this very msg id, the publish has succeeded.
                        if let Some(published) = self.stored_as_last(publish, &msg_id).await {
                            return Ok(published);
                        }
                        return Err(PublishError::WrongLastSequence {
                            expected: publish.expected_last_subject_seq.unwrap_or_default(),
                            subject: publish.subject.clone(),
                        });
                    }
                    PublishErrorKind::StreamNotFound if !interrupted => {
                        return Err(PublishError::NoStream);
                    }
                    PublishErrorKind::TimedOut
                    | PublishErrorKind::BrokenPipe
                    | PublishErrorKind::MaxAckPending
                    | PublishErrorKind::StreamNotFound => {
                        interrupted = true;
                        e.to_string()
                    }
                    // "Duplicate message id is in process" (10158): the stream is still
                    // storing an earlier try of this very publish (its leader was slow or just
                    // changed); async-nats has no kind for it. Asking again later gets that
                    // try's acknowledgement or a duplicate, never a second copy.
                    _ if e.to_string().contains("10158") => {
                        interrupted = true;
                        e.to_string()
                    }
                    _ => return Err(PublishError::Other(e.to_string())),
                },
            };
            if Instant::now() + backoff >= deadline {
                return Err(PublishError::Timeout);
            }
            metrics::counter!("bus_publish_retries_total").increment(1);
            tracing::debug!(subject = %publish.subject, %msg_id, %reason, ?backoff, "publish retried");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(options.retry_backoff_max);
        }
    }
}

impl NatsBus {
    /// The publish, if the last message on its subject carries its msg id.
    async fn stored_as_last(&self, publish: &Publish, msg_id: &str) -> Option<Published> {
        let stream = self.stream_capturing(&publish.subject).await?;
        let last = self.last_message(&stream, &publish.subject).await.ok()??;
        (last.msg_id.as_deref() == Some(msg_id)).then_some(Published {
            stream,
            seq: last.seq,
            duplicate: true,
        })
    }

    /// Whether a stream this bus set up captures `subject`.
    fn declared_capturing(&self, subject: &str) -> bool {
        self.inner.streams.read().is_ok_and(|streams| {
            streams
                .values()
                .any(|def| def.subjects.iter().any(|pattern| matches(pattern, subject)))
        })
    }

    /// The logical name of the stream capturing `subject`: from the definitions set up, else
    /// asked of the server.
    async fn stream_capturing(&self, subject: &str) -> Option<String> {
        let declared = self.inner.streams.read().ok().and_then(|streams| {
            streams
                .values()
                .find(|def| def.subjects.iter().any(|pattern| matches(pattern, subject)))
                .map(|def| def.name.clone())
        });
        if declared.is_some() {
            return declared;
        }
        self.inner
            .js
            .stream_by_subject(self.inner.names.subject(subject))
            .await
            .ok()
            .map(|real| self.inner.names.logical_name(&real))
    }
}

fn outcome_label(outcome: &Result<Published, PublishError>) -> &'static str {
    match outcome {
        Ok(published) if published.duplicate => "duplicate",
        Ok(_) => "stored",
        Err(PublishError::WrongLastSequence { .. }) => "wrong_last_sequence",
        Err(PublishError::Timeout) => "timeout",
        Err(PublishError::NoStream) => "no_stream",
        Err(PublishError::Other(_)) => "error",
    }
}

fn storage_type(storage: Storage) -> StorageType {
    match storage {
        Storage::File => StorageType::File,
        Storage::Memory => StorageType::Memory,
    }
}

fn reconnect_delay(attempts: usize, max: Duration) -> Duration {
    let exponent = u32::try_from(attempts.min(8)).unwrap_or(8);
    (Duration::from_millis(50) * 2u32.pow(exponent)).min(max)
}

fn log_connection_event(prefix: &str, event: &async_nats::Event) {
    let span = tracing::info_span!("nats_connection", prefix);
    let _entered = span.enter();
    match event {
        async_nats::Event::Connected => tracing::info!("connected to NATS"),
        async_nats::Event::Disconnected => {
            metrics::counter!("bus_disconnects_total").increment(1);
            tracing::warn!("disconnected from NATS; reconnecting");
        }
        async_nats::Event::SlowConsumer(sid) => {
            tracing::warn!(
                sid,
                "slow consumer: the server dropped messages for a subscription"
            );
        }
        // Every failed reconnect attempt is one: the disconnect above already told the story.
        async_nats::Event::ClientError(error) => tracing::debug!(%error, "NATS client error"),
        other => tracing::info!(event = %other, "NATS connection event"),
    }
}

/// Starts pulling `batch` messages at a time from `consumer`, with the expiry and heartbeat
/// that notice a lost consumer in seconds ([`PULL_EXPIRES`]).
async fn pull(
    consumer: &consumer::PullConsumer,
    batch: usize,
    what: &str,
) -> Result<consumer::pull::Stream, BusError> {
    consumer
        .stream()
        .max_messages_per_batch(batch)
        .expires(PULL_EXPIRES)
        .heartbeat(PULL_HEARTBEAT)
        .messages()
        .await
        .map_err(|e| other(what, e))
}

fn consumer_error(stream: &str, e: jetstream::stream::ConsumerError) -> BusError {
    match e.kind() {
        jetstream::stream::ConsumerErrorKind::JetStream(js)
            if js.error_code() == ErrorCode::STREAM_NOT_FOUND =>
        {
            BusError::StreamNotFound(stream.to_string())
        }
        jetstream::stream::ConsumerErrorKind::TimedOut => BusError::Timeout,
        _ => other("create consumer", e),
    }
}

/// Whether a JetStream error (or one of its causes) says "stream not found" (10059).
fn is_stream_not_found(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(js) = error.downcast_ref::<jetstream::Error>() {
            if js.error_code() == ErrorCode::STREAM_NOT_FOUND {
                return true;
            }
        }
        if let Some(get) = error.downcast_ref::<jetstream::context::GetStreamError>() {
            if let jetstream::context::GetStreamErrorKind::JetStream(js) = get.kind() {
                if js.error_code() == ErrorCode::STREAM_NOT_FOUND {
                    return true;
                }
            }
        }
        current = error.source();
    }
    false
}

fn other(context: &str, error: impl std::fmt::Display) -> BusError {
    BusError::Other(format!("{context}: {error}"))
}

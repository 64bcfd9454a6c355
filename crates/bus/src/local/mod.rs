//! The `local` adapter: the [`Bus`] port in one process, with the semantics of the nats adapter
//! (sequences, dedup, expected sequences, filtered replay, durable consumers, queue groups, KV
//! revisions, compare-and-set and expiry). It backs `croupier run all --bus local` and tests that
//! need no server. Nothing survives the process; the namespace prefix does not apply.

mod kv;
mod rpc;
mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::kv::LocalBucket;
pub use self::kv::LocalKv;
pub(crate) use self::stream::LocalAck;
use self::stream::{LocalConsumer, LocalStream};
use crate::definitions::{ConsumerDef, Definitions};
use crate::error::{BusError, PublishError, RequestError};
use crate::port::{
    Batches, Bus, Deliveries, Feed, Publish, Published, Requests, StoredMessage, StreamState,
    Subscription,
};
use crate::subject::{check_filter, check_name, check_subject, overlaps};

/// Messages a replay or consumer task holds for a busy reader (as in the nats adapter).
const FEED_CAPACITY: usize = crate::nats::FEED_CAPACITY;

/// The in-process bus. Cheap to clone: clones share the same streams and buckets.
#[derive(Debug, Clone, Default)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    streams: Mutex<HashMap<String, Arc<LocalStream>>>,
    consumer_defs: Mutex<HashMap<(String, String), ConsumerDef>>,
    consumers: Mutex<HashMap<(String, String), Arc<LocalConsumer>>>,
    buckets: Mutex<HashMap<String, Arc<LocalBucket>>>,
    servers: rpc::Servers,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// here completes its writes before anything that could panic).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LocalBus {
    /// An empty bus: call [`Bus::setup`] to declare streams and buckets.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops every replay, consumer and watch task and waits for them.
    pub async fn close(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn publish_here(&self, publish: Publish) -> Result<Published, PublishError> {
        check_subject(&publish.subject).map_err(|e| PublishError::Other(e.to_string()))?;
        let stream = lock(&self.inner.streams)
            .values()
            .find(|stream| stream.captures(&publish.subject))
            .cloned()
            .ok_or(PublishError::NoStream)?;
        stream.publish(
            &publish.subject,
            publish.payload,
            publish.msg_id.as_deref(),
            publish.expected_last_subject_seq,
        )
    }

    fn stream(&self, name: &str) -> Result<Arc<LocalStream>, BusError> {
        lock(&self.inner.streams)
            .get(name)
            .cloned()
            .ok_or_else(|| BusError::StreamNotFound(name.to_string()))
    }
}

impl Bus for LocalBus {
    type Kv = LocalKv;

    async fn setup(&self, definitions: &Definitions) -> Result<(), BusError> {
        definitions.validate()?;
        {
            let mut streams = lock(&self.inner.streams);
            for def in &definitions.streams {
                for (name, other) in streams.iter() {
                    if *name == def.name {
                        continue;
                    }
                    let clash = other
                        .subjects()
                        .iter()
                        .any(|theirs| def.subjects.iter().any(|ours| overlaps(ours, theirs)));
                    if clash {
                        return Err(BusError::invalid(
                            "stream definition",
                            format!("subjects of {} overlap those of {name}", def.name),
                        ));
                    }
                }
                match streams.get(&def.name) {
                    Some(existing) => existing.update(def.clone()),
                    None => {
                        streams.insert(def.name.clone(), Arc::new(LocalStream::new(def.clone())));
                    }
                }
            }
        }
        for def in &definitions.consumers {
            self.stream(&def.stream)?;
            let key = (def.stream.clone(), def.name.clone());
            if let Some(consumer) = lock(&self.inner.consumers).get(&key) {
                consumer.reconfigure(def, &def.filter_subject);
            }
            lock(&self.inner.consumer_defs).insert(key, def.clone());
        }
        let mut buckets = lock(&self.inner.buckets);
        for def in &definitions.buckets {
            match buckets.get(&def.name) {
                Some(existing) => existing.update(def),
                None => {
                    buckets.insert(def.name.clone(), Arc::new(LocalBucket::new(def)));
                }
            }
        }
        Ok(())
    }

    async fn publish(&self, publish: Publish) -> Result<Published, PublishError> {
        let outcome = self.publish_here(publish);
        let label = match &outcome {
            Ok(published) if published.duplicate => "duplicate",
            Ok(_) => "stored",
            Err(PublishError::WrongLastSequence { .. }) => "wrong_last_sequence",
            Err(PublishError::Timeout) => "timeout",
            Err(PublishError::NoStream) => "no_stream",
            Err(PublishError::Other(_)) => "error",
        };
        metrics::counter!("bus_publish_total", "outcome" => label).increment(1);
        outcome
    }

    async fn last_message(
        &self,
        stream: &str,
        subject: &str,
    ) -> Result<Option<StoredMessage>, BusError> {
        check_subject(subject)?;
        Ok(self.stream(stream)?.last_message(subject))
    }

    async fn stream_state(&self, stream: &str) -> Result<StreamState, BusError> {
        Ok(self.stream(stream)?.state())
    }

    async fn replay(
        &self,
        stream: &str,
        filter_subject: &str,
        from_seq: u64,
    ) -> Result<Subscription, BusError> {
        check_filter(filter_subject)?;
        let stream = self.stream(stream)?;
        let (sender, receiver) = mpsc::channel(FEED_CAPACITY);
        let cancel = self.inner.shutdown.child_token();
        let guard = cancel.clone().drop_guard();
        self.inner.tasks.spawn(stream::replay(
            stream,
            filter_subject.to_string(),
            from_seq.max(1),
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
        let stream = self.stream(stream)?;
        let filter = filter_subject.to_string();
        // Everything is in memory: the batches are collected as the reader asks for them.
        let batches = futures_util::stream::unfold(from_seq.max(1), move |mut next| {
            let batch = stream.collect(&filter, &mut next, to_seq, stream::RANGE_BATCH);
            std::future::ready((!batch.is_empty()).then(|| (Ok(batch), next)))
        });
        Ok(Feed::from_stream(batches, None))
    }

    async fn consume(
        &self,
        stream: &str,
        durable: &str,
        filter_subject: &str,
    ) -> Result<Deliveries, BusError> {
        check_name("consumer name", durable)?;
        check_filter(filter_subject)?;
        let handle = self.stream(stream)?;
        let key = (stream.to_string(), durable.to_string());
        let def = lock(&self.inner.consumer_defs)
            .get(&key)
            .cloned()
            .unwrap_or_else(|| ConsumerDef::new(stream, durable));
        let consumer = {
            let mut consumers = lock(&self.inner.consumers);
            match consumers.get(&key) {
                Some(consumer) => {
                    consumer.reconfigure(&def, filter_subject);
                    consumer.clone()
                }
                None => {
                    let consumer = Arc::new(LocalConsumer::new(handle, &def, filter_subject));
                    consumers.insert(key, consumer.clone());
                    consumer
                }
            }
        };
        let (sender, receiver) = mpsc::channel(FEED_CAPACITY);
        let cancel = self.inner.shutdown.child_token();
        let guard = cancel.clone().drop_guard();
        self.inner
            .tasks
            .spawn(stream::consume(consumer, sender, cancel));
        Ok(Feed::from_receiver(receiver, Some(guard)))
    }

    async fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RequestError> {
        check_subject(subject).map_err(|e| RequestError::Other(e.to_string()))?;
        self.inner.servers.request(subject, payload, timeout).await
    }

    async fn serve(&self, subject: &str, queue_group: &str) -> Result<Requests, BusError> {
        check_filter(subject)?;
        if !queue_group.is_empty() {
            check_name("queue group", queue_group)?;
        }
        Ok(self.inner.servers.serve(subject, queue_group))
    }

    async fn kv(&self, bucket: &str) -> Result<LocalKv, BusError> {
        let handle = lock(&self.inner.buckets)
            .get(bucket)
            .cloned()
            .ok_or_else(|| BusError::BucketNotFound(bucket.to_string()))?;
        Ok(LocalKv::new(
            handle,
            self.inner.tasks.clone(),
            &self.inner.shutdown,
        ))
    }

    fn is_connected(&self) -> bool {
        true
    }
}

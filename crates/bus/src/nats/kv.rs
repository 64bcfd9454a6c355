//! Key-value buckets on JetStream KV: revisions are stream sequences, compare-and-set is
//! `Nats-Expected-Last-Subject-Sequence`, expiry is the bucket's `max_age`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::{
    CreateErrorKind, EntryErrorKind, Operation, PutErrorKind, Store, UpdateErrorKind,
};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::KvError;
use crate::port::{Feed, Kv, KvEntry, KvEvent, KvWatch};
use crate::subject::{valid_key, valid_key_pattern};

/// Events a watch task holds for a busy reader. Buckets hold a handful of keys (one lease per
/// table, one status), so this is many rounds of changes.
const WATCH_CAPACITY: usize = 64;

/// A bucket of a [`super::NatsBus`].
#[derive(Debug, Clone)]
pub struct NatsKv {
    store: Store,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    connections: Arc<watch::Sender<u64>>,
}

impl NatsKv {
    pub(super) fn new(
        store: Store,
        tasks: TaskTracker,
        shutdown: &CancellationToken,
        connections: Arc<watch::Sender<u64>>,
    ) -> Self {
        Self {
            store,
            tasks,
            shutdown: shutdown.clone(),
            connections,
        }
    }
}

fn check_key(key: &str) -> Result<(), KvError> {
    if valid_key(key) {
        Ok(())
    } else {
        Err(KvError::InvalidKey(key.to_string()))
    }
}

/// Whether a failure was a timeout somewhere down its chain of causes.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(publish) = error.downcast_ref::<async_nats::jetstream::context::PublishError>()
        {
            if publish.kind() == async_nats::jetstream::context::PublishErrorKind::TimedOut {
                return true;
            }
        }
        current = error.source();
    }
    false
}

fn write_error(error: &(dyn std::error::Error + 'static)) -> KvError {
    if timed_out(error) {
        KvError::Timeout
    } else {
        KvError::Other(error.to_string())
    }
}

impl Kv for NatsKv {
    async fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        check_key(key)?;
        match self.store.entry(key).await {
            Ok(Some(entry)) if entry.operation == Operation::Put => Ok(Some(KvEntry {
                value: entry.value,
                revision: entry.revision,
            })),
            Ok(_) => Ok(None),
            Err(e) => Err(match e.kind() {
                EntryErrorKind::InvalidKey => KvError::InvalidKey(key.to_string()),
                EntryErrorKind::TimedOut => KvError::Timeout,
                EntryErrorKind::Other => KvError::Other(e.to_string()),
            }),
        }
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        check_key(key)?;
        self.store
            .put(key, value)
            .await
            .map_err(|e| match e.kind() {
                PutErrorKind::InvalidKey => KvError::InvalidKey(key.to_string()),
                PutErrorKind::Publish | PutErrorKind::Ack => write_error(&e),
            })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        check_key(key)?;
        self.store
            .create(key, value)
            .await
            .map_err(|e| match e.kind() {
                CreateErrorKind::AlreadyExists => KvError::AlreadyExists,
                CreateErrorKind::InvalidKey => KvError::InvalidKey(key.to_string()),
                _ => write_error(&e),
            })
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_revision: u64,
    ) -> Result<u64, KvError> {
        check_key(key)?;
        self.store
            .update(key, value, expected_revision)
            .await
            .map_err(|e| match e.kind() {
                UpdateErrorKind::WrongLastRevision => KvError::WrongRevision,
                UpdateErrorKind::InvalidKey => KvError::InvalidKey(key.to_string()),
                UpdateErrorKind::TimedOut => KvError::Timeout,
                UpdateErrorKind::Other => write_error(&e),
            })
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        check_key(key)?;
        self.store
            .delete(key)
            .await
            .map_err(|e| KvError::Other(e.to_string()))
    }

    async fn watch(&self, key_or_pattern: &str) -> Result<KvWatch, KvError> {
        if !valid_key_pattern(key_or_pattern) {
            return Err(KvError::InvalidKey(key_or_pattern.to_string()));
        }
        let watch = self
            .store
            .watch_with_history(key_or_pattern)
            .await
            .map_err(|e| KvError::Other(e.to_string()))?;
        let (sender, receiver) = mpsc::channel(WATCH_CAPACITY);
        let cancel = self.shutdown.child_token();
        let guard = cancel.clone().drop_guard();
        let span = tracing::info_span!("bus_kv_watch", bucket = %self.store.name, pattern = key_or_pattern);
        self.tasks.spawn(
            forward_watch(
                self.store.clone(),
                key_or_pattern.to_string(),
                watch,
                self.connections.subscribe(),
                sender,
                cancel,
            )
            .instrument(span),
        );
        Ok(Feed::from_receiver(receiver, Some(guard)))
    }
}

/// Forwards a JetStream KV watch, re-establishing it when the server loses it; revisions already
/// handed over are skipped so the reader sees each change once, in order.
async fn forward_watch(
    store: Store,
    pattern: String,
    mut watch: async_nats::jetstream::kv::Watch,
    mut connections: watch::Receiver<u64>,
    sender: mpsc::Sender<KvEvent>,
    cancel: CancellationToken,
) {
    let mut last_revision = 0;
    let mut watch_connections = true;
    loop {
        loop {
            let item = tokio::select! {
                () = cancel.cancelled() => return,
                changed = connections.changed(), if watch_connections => {
                    if changed.is_err() {
                        watch_connections = false;
                        continue;
                    }
                    // The server may have lost the watch's ephemeral consumer.
                    break;
                }
                item = watch.next() => item,
            };
            let entry = match item {
                Some(Ok(entry)) => entry,
                Some(Err(error)) => {
                    tracing::warn!(%error, "watch interrupted");
                    break;
                }
                None => break,
            };
            if entry.revision <= last_revision {
                continue;
            }
            last_revision = entry.revision;
            let event = KvEvent {
                key: entry.key,
                value: (entry.operation == Operation::Put).then_some(entry.value),
                revision: entry.revision,
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                sent = sender.send(event) => if sent.is_err() { return },
            }
        }
        let opened = super::tasks::reestablish(
            "watch",
            &cancel,
            Duration::ZERO,
            || store.watch_with_history(&pattern),
            |_| false,
        )
        .await;
        watch = match opened {
            Some(Ok(watch)) => watch,
            _ => return,
        };
    }
}

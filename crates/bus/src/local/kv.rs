//! In-process key-value buckets with JetStream KV's semantics: one revision counter per bucket,
//! create-if-absent, compare-and-set on the last revision, deletes as tombstones, and expiry of
//! entries older than the bucket's `max_age` (checked lazily, on the tokio clock).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::lock;
use crate::definitions::BucketDef;
use crate::error::KvError;
use crate::port::{Feed, Kv, KvEntry, KvEvent, KvWatch};
use crate::subject::{matches, valid_key, valid_key_pattern};

/// Events a watch task holds for a busy reader (see the nats adapter's `WATCH_CAPACITY`).
const WATCH_CAPACITY: usize = 64;

pub(crate) struct LocalBucket {
    data: std::sync::Mutex<BucketData>,
    /// The last revision written: watchers wait on it.
    revision: watch::Sender<u64>,
}

struct BucketData {
    max_age: Duration,
    revision: u64,
    slots: BTreeMap<String, Slot>,
}

/// The last write of a key: a value, or a tombstone (`None`) after a delete.
struct Slot {
    value: Option<Bytes>,
    revision: u64,
    at: Instant,
}

impl LocalBucket {
    pub(super) fn new(def: &BucketDef) -> Self {
        Self {
            data: std::sync::Mutex::new(BucketData {
                max_age: def.max_age,
                revision: 0,
                slots: BTreeMap::new(),
            }),
            revision: watch::channel(0).0,
        }
    }

    pub(super) fn update(&self, def: &BucketDef) {
        lock(&self.data).max_age = def.max_age;
    }

    /// The data with expired entries removed as of now.
    fn data(&self) -> std::sync::MutexGuard<'_, BucketData> {
        let mut data = lock(&self.data);
        let max_age = data.max_age;
        if !max_age.is_zero() {
            let now = Instant::now();
            data.slots
                .retain(|_, slot| now.duration_since(slot.at) < max_age);
        }
        data
    }

    fn write(&self, data: &mut BucketData, key: &str, value: Option<Bytes>) -> u64 {
        data.revision += 1;
        let revision = data.revision;
        data.slots.insert(
            key.to_string(),
            Slot {
                value,
                revision,
                at: Instant::now(),
            },
        );
        self.revision.send_replace(revision);
        revision
    }

    /// The live slots matching `pattern` written after `after`, in revision order.
    fn changes(&self, pattern: &str, after: u64) -> Vec<KvEvent> {
        let data = self.data();
        let mut events: Vec<KvEvent> = data
            .slots
            .iter()
            .filter(|(key, slot)| slot.revision > after && matches(pattern, key))
            .map(|(key, slot)| KvEvent {
                key: key.clone(),
                value: slot.value.clone(),
                revision: slot.revision,
            })
            .collect();
        events.sort_by_key(|event| event.revision);
        events
    }
}

impl std::fmt::Debug for LocalBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBucket").finish_non_exhaustive()
    }
}

/// A bucket of a [`super::LocalBus`].
#[derive(Debug, Clone)]
pub struct LocalKv {
    bucket: Arc<LocalBucket>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl LocalKv {
    pub(super) fn new(
        bucket: Arc<LocalBucket>,
        tasks: TaskTracker,
        shutdown: &CancellationToken,
    ) -> Self {
        Self {
            bucket,
            tasks,
            shutdown: shutdown.clone(),
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

impl Kv for LocalKv {
    async fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        check_key(key)?;
        let data = self.bucket.data();
        Ok(data.slots.get(key).and_then(|slot| {
            slot.value.as_ref().map(|value| KvEntry {
                value: value.clone(),
                revision: slot.revision,
            })
        }))
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        check_key(key)?;
        let mut data = self.bucket.data();
        Ok(self.bucket.write(&mut data, key, Some(value)))
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        check_key(key)?;
        let mut data = self.bucket.data();
        if data.slots.get(key).is_some_and(|slot| slot.value.is_some()) {
            return Err(KvError::AlreadyExists);
        }
        Ok(self.bucket.write(&mut data, key, Some(value)))
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_revision: u64,
    ) -> Result<u64, KvError> {
        check_key(key)?;
        let mut data = self.bucket.data();
        let current = data.slots.get(key).map_or(0, |slot| slot.revision);
        if current != expected_revision {
            return Err(KvError::WrongRevision);
        }
        Ok(self.bucket.write(&mut data, key, Some(value)))
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        check_key(key)?;
        let mut data = self.bucket.data();
        self.bucket.write(&mut data, key, None);
        Ok(())
    }

    async fn watch(&self, key_or_pattern: &str) -> Result<KvWatch, KvError> {
        if !valid_key_pattern(key_or_pattern) {
            return Err(KvError::InvalidKey(key_or_pattern.to_string()));
        }
        let (sender, receiver) = mpsc::channel(WATCH_CAPACITY);
        let cancel = self.shutdown.child_token();
        let guard = cancel.clone().drop_guard();
        self.tasks.spawn(watch_bucket(
            self.bucket.clone(),
            key_or_pattern.to_string(),
            sender,
            cancel,
        ));
        Ok(Feed::from_receiver(receiver, Some(guard)))
    }
}

/// Feeds a watch: the current slots, then every later write, until cancelled or dropped.
async fn watch_bucket(
    bucket: Arc<LocalBucket>,
    pattern: String,
    sender: mpsc::Sender<KvEvent>,
    cancel: CancellationToken,
) {
    let mut written = bucket.revision.subscribe();
    let mut seen = 0;
    loop {
        written.borrow_and_update();
        let events = bucket.changes(&pattern, seen);
        if events.is_empty() {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = written.changed() => if changed.is_err() { return },
            }
            continue;
        }
        for event in events {
            seen = event.revision;
            tokio::select! {
                () = cancel.cancelled() => return,
                sent = sender.send(event) => if sent.is_err() { return },
            }
        }
    }
}

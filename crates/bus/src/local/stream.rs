//! In-process streams with JetStream's semantics: per-stream sequences, msg-id dedup within a
//! window, expected-last-subject-sequence checks, `max_msgs`/`max_age` limits, filtered ordered
//! replay, and durable consumers with explicit acks and redelivery after `ack_wait`.
//!
//! Readers never block writers: every reader is a task that reads the log at its own pace and
//! waits on a `watch` of the last sequence, so a slow reader only delays itself.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::lock;
use crate::definitions::{ConsumerDef, StreamDef};
use crate::error::{BusError, PublishError};
use crate::port::{AckMessage, Acker, Published, StoredMessage, StreamState};
use crate::subject::matches;

/// Messages a replay task collects per pass over the log before handing them over; bounds the
/// time the stream's lock is held by one reader.
const REPLAY_BATCH: usize = 64;
/// Messages per batch of a range read.
pub(super) const RANGE_BATCH: usize = 1024;

pub(crate) struct LocalStream {
    pub(super) name: String,
    epoch: String,
    data: std::sync::Mutex<StreamData>,
    /// The last sequence stored: readers wait on it.
    last_seq: watch::Sender<u64>,
}

struct StreamData {
    config: StreamDef,
    /// Stored messages in order; `log[i].msg.seq == first_seq + i`.
    log: VecDeque<Entry>,
    first_seq: u64,
    last_seq: u64,
    last_by_subject: HashMap<String, u64>,
    dedup: HashMap<String, u64>,
    /// Msg ids in the order they were stored, to forget them when the window passes.
    dedup_order: VecDeque<(Instant, String)>,
}

struct Entry {
    msg: StoredMessage,
    at: Instant,
}

impl std::fmt::Debug for LocalStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStream")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl LocalStream {
    pub(super) fn new(config: StreamDef) -> Self {
        Self {
            name: config.name.clone(),
            epoch: format!("local-{}", crate::unique_id()),
            data: std::sync::Mutex::new(StreamData {
                config,
                log: VecDeque::new(),
                first_seq: 0,
                last_seq: 0,
                last_by_subject: HashMap::new(),
                dedup: HashMap::new(),
                dedup_order: VecDeque::new(),
            }),
            last_seq: watch::channel(0).0,
        }
    }

    pub(super) fn subjects(&self) -> Vec<String> {
        lock(&self.data).config.subjects.clone()
    }

    pub(super) fn captures(&self, subject: &str) -> bool {
        lock(&self.data)
            .config
            .subjects
            .iter()
            .any(|pattern| matches(pattern, subject))
    }

    pub(super) fn update(&self, config: StreamDef) {
        lock(&self.data).config = config;
    }

    /// The data with limits applied as of now.
    fn data(&self) -> std::sync::MutexGuard<'_, StreamData> {
        let mut data = lock(&self.data);
        data.apply_limits(Instant::now());
        data
    }

    pub(super) fn publish(
        &self,
        subject: &str,
        payload: bytes::Bytes,
        msg_id: Option<&str>,
        expected_last_subject_seq: Option<u64>,
    ) -> Result<Published, PublishError> {
        let now = Instant::now();
        let mut data = self.data();
        data.forget_old_msg_ids(now);
        let duplicate = |seq: u64| Published {
            stream: self.name.clone(),
            seq,
            duplicate: true,
        };
        // Like JetStream: the expected sequence is checked before dedup; like the nats
        // adapter: a conflict with our own msg id as the subject's last message is a retry.
        if let Some(expected) = expected_last_subject_seq {
            let last = data.last_by_subject.get(subject).copied().unwrap_or(0);
            if last != expected {
                let ours =
                    msg_id.is_some() && data.get(last).and_then(|m| m.msg_id.as_deref()) == msg_id;
                if ours {
                    return Ok(duplicate(last));
                }
                return Err(PublishError::WrongLastSequence {
                    expected,
                    subject: subject.to_string(),
                });
            }
        }
        if let Some(seq) = msg_id.and_then(|id| data.dedup.get(id)) {
            return Ok(duplicate(*seq));
        }
        let seq = data.last_seq + 1;
        data.last_seq = seq;
        if data.log.is_empty() {
            data.first_seq = seq;
        }
        data.log.push_back(Entry {
            msg: StoredMessage {
                subject: subject.to_string(),
                seq,
                payload,
                msg_id: msg_id.map(str::to_string),
            },
            at: now,
        });
        data.last_by_subject.insert(subject.to_string(), seq);
        if let Some(id) = msg_id {
            data.dedup.insert(id.to_string(), seq);
            data.dedup_order.push_back((now, id.to_string()));
        }
        data.apply_limits(now);
        drop(data);
        self.last_seq.send_replace(seq);
        Ok(Published {
            stream: self.name.clone(),
            seq,
            duplicate: false,
        })
    }

    pub(super) fn last_message(&self, subject: &str) -> Option<StoredMessage> {
        let data = self.data();
        let seq = *data.last_by_subject.get(subject)?;
        data.get(seq).cloned()
    }

    pub(super) fn state(&self) -> StreamState {
        let data = self.data();
        let first_seq = match data.log.front() {
            Some(entry) => entry.msg.seq,
            None if data.last_seq == 0 => 0,
            None => data.last_seq + 1,
        };
        StreamState {
            first_seq,
            last_seq: data.last_seq,
            epoch: self.epoch.clone(),
            retention_limited: !data.config.max_age.is_zero()
                || data.config.max_msgs > 0
                || data.config.max_bytes > 0,
        }
    }

    fn message(&self, seq: u64) -> Option<StoredMessage> {
        self.data().get(seq).cloned()
    }

    /// Up to `limit` messages matching `filter` from `*next` on; advances `*next` past every
    /// message looked at.
    /// Up to `limit` messages matching `filter` from `*next` up to `last`, moving `*next` past
    /// what was looked at.
    pub(super) fn collect(
        &self,
        filter: &str,
        next: &mut u64,
        last: u64,
        limit: usize,
    ) -> Vec<StoredMessage> {
        let data = self.data();
        let mut found = Vec::new();
        let start = (*next).max(data.first_seq);
        let Ok(offset) = usize::try_from(start.saturating_sub(data.first_seq)) else {
            return found;
        };
        for entry in data.log.iter().skip(offset) {
            if entry.msg.seq > last {
                break;
            }
            *next = entry.msg.seq + 1;
            if matches(filter, &entry.msg.subject) {
                found.push(entry.msg.clone());
                if found.len() == limit {
                    break;
                }
            }
        }
        found
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.last_seq.subscribe()
    }
}

impl StreamData {
    fn get(&self, seq: u64) -> Option<&StoredMessage> {
        let offset = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.log.get(offset).map(|entry| &entry.msg)
    }

    fn forget_old_msg_ids(&mut self, now: Instant) {
        let window = self.config.duplicate_window;
        while let Some((at, _)) = self.dedup_order.front() {
            if now.duration_since(*at) < window {
                break;
            }
            if let Some((_, id)) = self.dedup_order.pop_front() {
                self.dedup.remove(&id);
            }
        }
    }

    fn apply_limits(&mut self, now: Instant) {
        let max_msgs = usize::try_from(self.config.max_msgs).ok();
        let max_age = self.config.max_age;
        while let Some(front) = self.log.front() {
            let too_many = max_msgs.is_some_and(|max| self.log.len() > max);
            let too_old = !max_age.is_zero() && now.duration_since(front.at) >= max_age;
            if !(too_many || too_old) {
                break;
            }
            if let Some(entry) = self.log.pop_front() {
                if self.last_by_subject.get(&entry.msg.subject) == Some(&entry.msg.seq) {
                    self.last_by_subject.remove(&entry.msg.subject);
                }
                self.first_seq = entry.msg.seq + 1;
            }
        }
    }
}

/// Feeds a replay of `stream` filtered on `filter` from `next` on, until cancelled or dropped.
pub(super) async fn replay(
    stream: Arc<LocalStream>,
    filter: String,
    mut next: u64,
    sender: mpsc::Sender<Result<StoredMessage, BusError>>,
    cancel: CancellationToken,
) {
    let mut stored = stream.subscribe();
    loop {
        stored.borrow_and_update();
        let batch = stream.collect(&filter, &mut next, u64::MAX, REPLAY_BATCH);
        if batch.is_empty() {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = stored.changed() => if changed.is_err() { return },
            }
            continue;
        }
        for message in batch {
            tokio::select! {
                () = cancel.cancelled() => return,
                sent = sender.send(Ok(message)) => if sent.is_err() { return },
            }
        }
    }
}

/// A durable consumer: where it stands survives the `consume` calls that read through it.
pub(crate) struct LocalConsumer {
    stream: Arc<LocalStream>,
    state: std::sync::Mutex<ConsumerState>,
    /// Bumped on every ack: wakes workers held back by `max_ack_pending`.
    acks: watch::Sender<u64>,
}

struct ConsumerState {
    filter: String,
    ack_wait: Duration,
    max_deliver: i64,
    max_ack_pending: i64,
    /// The next sequence never delivered.
    next_seq: u64,
    /// Delivered and not acked yet, by sequence.
    pending: BTreeMap<u64, Pending>,
}

struct Pending {
    delivered: u64,
    redeliver_at: Instant,
}

enum Next {
    Deliver(StoredMessage, u64),
    /// Nothing to deliver before this instant (a redelivery), or before the stream or an ack
    /// changes.
    Wait(Option<Instant>),
}

impl std::fmt::Debug for LocalConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalConsumer")
            .field("stream", &self.stream.name)
            .finish_non_exhaustive()
    }
}

impl LocalConsumer {
    pub(super) fn new(stream: Arc<LocalStream>, def: &ConsumerDef, filter: &str) -> Self {
        Self {
            stream,
            state: std::sync::Mutex::new(ConsumerState {
                filter: filter.to_string(),
                ack_wait: def.ack_wait,
                max_deliver: def.max_deliver,
                max_ack_pending: def.max_ack_pending,
                next_seq: 1,
                pending: BTreeMap::new(),
            }),
            acks: watch::channel(0).0,
        }
    }

    pub(super) fn reconfigure(&self, def: &ConsumerDef, filter: &str) {
        let mut state = lock(&self.state);
        state.filter = filter.to_string();
        state.ack_wait = def.ack_wait;
        state.max_deliver = def.max_deliver;
        state.max_ack_pending = def.max_ack_pending;
    }

    fn next(&self, now: Instant) -> Next {
        let mut state = lock(&self.state);
        let ack_wait = state.ack_wait;
        while let Some(seq) = state
            .pending
            .iter()
            .find(|(_, pending)| pending.redeliver_at <= now)
            .map(|(seq, _)| *seq)
        {
            let max_deliver = state.max_deliver;
            let message = self.stream.message(seq);
            let Some(pending) = state.pending.get_mut(&seq) else {
                break;
            };
            let exhausted = u64::try_from(max_deliver).is_ok_and(|max| pending.delivered >= max);
            match message {
                Some(message) if !exhausted => {
                    pending.delivered += 1;
                    pending.redeliver_at = now + ack_wait;
                    return Next::Deliver(message, pending.delivered);
                }
                // Removed by the stream's limits, or delivered as often as allowed.
                _ => {
                    state.pending.remove(&seq);
                }
            }
        }
        let room = usize::try_from(state.max_ack_pending)
            .map_or(true, |max| max == 0 || state.pending.len() < max);
        if room {
            let filter = state.filter.clone();
            let mut next_seq = state.next_seq;
            let found = self
                .stream
                .collect(&filter, &mut next_seq, u64::MAX, 1)
                .pop();
            state.next_seq = next_seq;
            if let Some(message) = found {
                state.pending.insert(
                    message.seq,
                    Pending {
                        delivered: 1,
                        redeliver_at: now + ack_wait,
                    },
                );
                return Next::Deliver(message, 1);
            }
        }
        Next::Wait(state.pending.values().map(|p| p.redeliver_at).min())
    }

    fn ack(&self, seq: u64) {
        lock(&self.state).pending.remove(&seq);
        self.acks
            .send_modify(|count| *count = count.wrapping_add(1));
    }
}

/// Acknowledges one delivery of a local durable consumer.
pub(crate) struct LocalAck {
    consumer: Arc<LocalConsumer>,
    seq: u64,
}

impl std::fmt::Debug for LocalAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalAck").field("seq", &self.seq).finish()
    }
}

impl LocalAck {
    pub(crate) fn ack(&self) {
        self.consumer.ack(self.seq);
    }
}

/// Feeds one reader of a durable consumer until cancelled or dropped. A delivery is taken only
/// once the channel has room for it, so nothing is marked delivered that the reader cannot get.
pub(super) async fn consume(
    consumer: Arc<LocalConsumer>,
    sender: mpsc::Sender<Result<AckMessage, BusError>>,
    cancel: CancellationToken,
) {
    let mut stored = consumer.stream.subscribe();
    let mut acks = consumer.acks.subscribe();
    loop {
        let permit = tokio::select! {
            () = cancel.cancelled() => return,
            permit = sender.reserve() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (message, delivered) = loop {
            stored.borrow_and_update();
            acks.borrow_and_update();
            match consumer.next(Instant::now()) {
                Next::Deliver(message, delivered) => break (message, delivered),
                Next::Wait(until) => {
                    let redelivery = async {
                        match until {
                            Some(until) => tokio::time::sleep_until(until).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        changed = stored.changed() => if changed.is_err() { return },
                        changed = acks.changed() => if changed.is_err() { return },
                        () = redelivery => {}
                    }
                }
            }
        };
        let seq = message.seq;
        permit.send(Ok(AckMessage {
            msg: message,
            delivered,
            acker: Acker::Local(LocalAck {
                consumer: consumer.clone(),
                seq,
            }),
        }));
    }
}

//! Fan-out: one bus subscription per channel per node, shared by every connection subscribed
//! to it. Each event is decoded once, encoded once per encoding, and the same bytes are handed
//! to every subscriber through a bounded broadcast ring; a subscriber that falls a whole ring
//! behind is a slow consumer and gets closed (4008) instead of slowing anyone else.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use bus::Bus;
use bytes::Bytes;
use futures_util::StreamExt;
use protocol::{Channel, ChannelState, Encoding, encode_event_message, subject};
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::Standing;

/// Events a subscriber may fall behind before it is cut off as a slow consumer. Rounds emit a
/// handful of events per second per table, so 1024 is minutes of slack for a live client while
/// bounding the node's memory per channel.
pub(crate) const CHANNEL_RING: usize = 1024;

/// How far back (in stream sequences) a new table feed looks for recent outcomes: a round is
/// about five messages of `TABLES` per table, so this is dozens of rounds for one table and
/// fewer when tables interleave; it bounds the messages read when a feed starts.
const RECENT_SCAN: u64 = 200;
/// How long that look back may take before the feed starts without it.
const RECENT_SCAN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// One event of a channel, encoded once per encoding.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub seq: u64,
    pub json: Bytes,
    pub msgpack: Bytes,
    /// Where the feed stood once this event was sent: what a subscriber that has taken it
    /// has consumed (see [`Totals`]).
    pub mark: Totals,
}

impl Outgoing {
    pub fn bytes(&self, encoding: Encoding) -> &Bytes {
        match encoding {
            Encoding::Json => &self.json,
            Encoding::MsgPack => &self.msgpack,
        }
    }
}

/// Running totals of what a feed has sent: events, and bytes per encoding. A subscriber's
/// backlog is the feed's totals minus the totals of the last event it took, so each
/// connection's outbound queue is bounded in messages and bytes (ADR 0012) without a queue
/// or a counter of its own beyond one [`Totals`] per channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub messages: u64,
    pub json_bytes: u64,
    pub msgpack_bytes: u64,
}

impl Totals {
    pub fn bytes(&self, encoding: Encoding) -> u64 {
        match encoding {
            Encoding::Json => self.json_bytes,
            Encoding::MsgPack => self.msgpack_bytes,
        }
    }
}

/// A live channel: its broadcast ring and where it stands. Dropping the last handle stops its
/// bus subscription.
#[derive(Debug)]
pub(crate) struct Feed {
    sender: broadcast::Sender<Arc<Outgoing>>,
    position: Arc<std::sync::Mutex<Position>>,
    /// What the feed has sent so far.
    sent: Arc<std::sync::Mutex<Totals>>,
    epoch: String,
    stop: CancellationToken,
}

/// The last relayed sequence and the channel's state as of it, kept together so that
/// `subscribed.seq` and `subscribed.state` always agree.
#[derive(Debug)]
struct Position {
    seq: u64,
    standing: Standing,
}

impl Feed {
    fn position(&self) -> std::sync::MutexGuard<'_, Position> {
        self.position.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The life of the channel's stream (`subscribed.epoch`).
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// What the feed has sent so far.
    pub fn sent(&self) -> Totals {
        *self.sent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The channel's state as of the subscription's `seq`.
    pub fn state(&self) -> ChannelState {
        self.position().standing.to_state()
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A connection's view of a channel: the events after `seq`, in order.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub feed: Arc<Feed>,
    pub receiver: broadcast::Receiver<Arc<Outgoing>>,
    /// The last sequence on the channel when the subscription started; only later events
    /// follow.
    pub seq: u64,
    /// The feed's totals just before the receiver joined: its backlog is measured from here.
    pub start: Totals,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HubError {
    #[error("the bus is unavailable: {0}")]
    Bus(String),
}

/// The subjects a channel's events are published on (DESIGN §5).
pub(crate) fn channel_subjects(channel: &Channel) -> Vec<String> {
    match channel {
        Channel::Table(table) => vec![
            subject::table_round_subject(table),
            subject::table_result_subject(table),
        ],
        Channel::Player(player) => vec![subject::player_wallet_subject(player)],
    }
}

/// The node's channels.
#[derive(Debug)]
pub(crate) struct Hub<B> {
    bus: B,
    feeds: Mutex<HashMap<Channel, Weak<Feed>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl<B: Bus> Hub<B> {
    pub fn new(bus: B, tasks: TaskTracker, shutdown: CancellationToken) -> Self {
        Self {
            bus,
            feeds: Mutex::new(HashMap::new()),
            tasks,
            shutdown,
        }
    }

    /// Subscribes to `channel`, starting its bus subscription if this node has none yet.
    pub async fn subscribe(&self, channel: &Channel) -> Result<Subscription, HubError> {
        let mut feeds = self.feeds.lock().await;
        let feed = match feeds.get(channel).and_then(Weak::upgrade) {
            Some(feed) => feed,
            None => {
                let feed = Arc::new(self.start_feed(channel).await?);
                feeds.insert(channel.clone(), Arc::downgrade(&feed));
                feeds.retain(|_, weak| weak.strong_count() > 0);
                feed
            }
        };
        drop(feeds);
        // Subscribe first, then read where the feed stands: an event stored before the read is
        // also in the receiver, and the session skips events at or below `seq`, so nothing is
        // lost and nothing is doubled.
        // Totals read before joining: an event sent in between counts as waiting until the
        // receiver takes the next one (an overestimate for an instant, never an underestimate).
        let start = feed.sent();
        let receiver = feed.sender.subscribe();
        let seq = feed.position().seq;
        Ok(Subscription {
            feed,
            receiver,
            seq,
            start,
        })
    }

    /// Best effort: folds the round events on `subject` in the [`RECENT_SCAN`] stream sequences
    /// before `before` into `standing`, so that on a feed that just started a late joiner's
    /// `state.recent` has history and the current round its commitment and deadline. Bounded in messages and time; on any failure the feed
    /// simply starts with fewer recent outcomes.
    async fn recent_outcomes(
        &self,
        stream: &str,
        subject: &str,
        before: u64,
        standing: &mut Standing,
    ) {
        let from = before.saturating_sub(RECENT_SCAN).max(1);
        if from >= before {
            return;
        }
        let scan = async {
            let Ok(mut messages) = self.bus.replay(stream, subject, from).await else {
                return;
            };
            while let Some(Ok(message)) = messages.next().await {
                if message.seq >= before {
                    break;
                }
                if let Ok(event) = protocol::decode_event(&message.payload) {
                    standing.apply(&event);
                }
            }
        };
        let _ = tokio::time::timeout(RECENT_SCAN_DEADLINE, scan).await;
    }

    async fn start_feed(&self, channel: &Channel) -> Result<Feed, HubError> {
        let stream = channel.stream();
        let bus_error = |e: bus::BusError| HubError::Bus(e.to_string());
        let mut standing = match channel {
            Channel::Table(_) => Standing::new_table(),
            Channel::Player(_) => Standing::Player(None),
        };
        // Where the channel stands: the last message on each of its subjects. The live feed
        // starts right after the newest of them, so `subscribed.seq` is always the sequence of
        // a message of the channel (or 0): a client resuming from an older one replays up to
        // exactly there (see `session::replay`).
        let mut last_seq = 0;
        for subject in channel_subjects(channel) {
            let Some(last) = self
                .bus
                .last_message(stream, &subject)
                .await
                .map_err(bus_error)?
            else {
                continue;
            };
            last_seq = last_seq.max(last.seq);
            if matches!(channel, Channel::Table(_)) && subject.ends_with(".round") {
                self.recent_outcomes(stream, &subject, last.seq, &mut standing)
                    .await;
            }
            // The last event on each subject seeds the state a late joiner sees (the round's
            // transition first, then its result, which only counts for the same round).
            match protocol::decode_event(&last.payload) {
                Ok(event) => standing.apply(&event),
                Err(error) => tracing::warn!(%channel, %error, "undecodable last event"),
            }
        }
        let state = self.bus.stream_state(stream).await.map_err(bus_error)?;
        let filter = channel.subject_filter();
        let mut messages = self
            .bus
            .replay(stream, &filter, last_seq + 1)
            .await
            .map_err(bus_error)?;
        let (sender, _) = broadcast::channel(CHANNEL_RING);
        let position = Arc::new(std::sync::Mutex::new(Position {
            seq: last_seq,
            standing,
        }));
        let stop = self.shutdown.child_token();
        let sent = Arc::new(std::sync::Mutex::new(Totals::default()));
        let feed = Feed {
            sender: sender.clone(),
            position: position.clone(),
            sent: sent.clone(),
            epoch: state.epoch,
            stop: stop.clone(),
        };
        let channel = channel.clone();
        self.tasks.spawn(async move {
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => break,
                    message = messages.next() => message,
                };
                let message = match message {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        tracing::warn!(%channel, %error, "channel subscription error");
                        continue;
                    }
                    None => break,
                };
                let event = match protocol::decode_event(&message.payload) {
                    Ok(event) => event,
                    Err(error) => {
                        // A foreign or corrupt payload is skipped, never relayed.
                        tracing::warn!(%channel, seq = message.seq, %error, "undecodable event skipped");
                        metrics::counter!("gateway_events_undecodable_total").increment(1);
                        continue;
                    }
                };
                let encoded = (
                    encode_event_message(Encoding::Json, &channel, message.seq, &event),
                    encode_event_message(Encoding::MsgPack, &channel, message.seq, &event),
                );
                let (Ok(json), Ok(msgpack)) = encoded else {
                    tracing::warn!(%channel, seq = message.seq, "event could not be encoded");
                    continue;
                };
                {
                    let mut position = position.lock().unwrap_or_else(|e| e.into_inner());
                    position.seq = message.seq;
                    position.standing.apply(&event);
                }
                metrics::counter!("gateway_events_relayed_total").increment(1);
                // Totals move under the lock and the send happens while it is held, so a
                // subscriber reading them never sees an event counted that it cannot receive
                // next (see `Hub::subscribe`).
                let mut totals = sent.lock().unwrap_or_else(|e| e.into_inner());
                totals.messages += 1;
                totals.json_bytes += json.len() as u64;
                totals.msgpack_bytes += msgpack.len() as u64;
                // No receiver is fine: the feed stops when the last handle goes.
                let _ = sender.send(Arc::new(Outgoing {
                    seq: message.seq,
                    json,
                    msgpack,
                    mark: *totals,
                }));
                drop(totals);
            }
        });
        Ok(feed)
    }
}

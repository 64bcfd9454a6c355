//! Fan-out: one bus subscription per table channel per node, shared by every connection
//! subscribed to it, and one for all player channels together (ADR 0025): a node follows
//! `player.*.wallet` once and hands each event to its player's connections, instead of a
//! JetStream consumer per connected player (thousands of them cost nats-server most of its
//! CPU under betting load: `just bench-bets`). Each event is decoded once and built once per
//! encoding into a whole WebSocket frame; a few writer tasks (one per runtime worker) write those
//! same bytes to every subscriber's socket without waking its session (ADR 0015), sharing a
//! large channel's fan-out chunk by chunk so that whichever has the CPU does the work, in the
//! channel's order (ADR 0035). A
//! connection whose socket would block gets the event on its own bounded queue instead
//! (`outbox`), and one over its bounds is closed (4008) instead of slowing anyone else.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use bus::{Bus, StoredMessage};
use bytes::Bytes;
use futures_util::StreamExt;
use protocol::{Channel, ChannelState, Encoding, event_message_from_bus, subject};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::frame;
use crate::outbox::{Conn, FeedId};
use crate::state::Standing;

/// Events waiting for one fan-out writer, across all channels. A writer falls behind only when
/// the node's CPU does (it never waits for a client), and then a feed waits for room while its
/// bus subscription buffers: 1024 is minutes of a busy table's events, and bounds what the
/// node holds for its writers to a few hundred KiB.
const WRITER_QUEUE: usize = 1024;

/// The connections of one chunk of a fan-out: what a writer claims at a time, and writes
/// before it lets its worker run other tasks (a few milliseconds of socket writes, so that
/// sessions, the bus client and the listener are not held up for the whole of a 10k-subscriber
/// fan-out). A channel with more connections is written by every writer that is free, chunk by
/// chunk; one with fewer by one writer.
const CHUNK: usize = 256;

/// How far back (in stream sequences) a new table feed looks for recent outcomes: a round is
/// about five messages of `TABLES` per table, so this is dozens of rounds for one table and
/// fewer when tables interleave; it bounds the messages read when a feed starts.
const RECENT_SCAN: u64 = 200;
/// How long that look back may take before the feed starts without it.
const RECENT_SCAN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// What the node's one player subscription follows: every player channel's events.
const PLAYER_FEED_FILTER: &str = "player.*.wallet";

/// The player feeds of a node, by player id, each with its channel: where the player
/// subscription finds who receives an event.
type PlayerFeeds = std::sync::Mutex<HashMap<String, (Channel, Weak<Feed>)>>;

/// One event of a channel as a whole WebSocket frame, built once per encoding.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub seq: u64,
    json: Bytes,
    msgpack: Bytes,
}

impl Outgoing {
    pub fn frame(&self, encoding: Encoding) -> &Bytes {
        match encoding {
            Encoding::Json => &self.json,
            Encoding::MsgPack => &self.msgpack,
        }
    }
}

/// The connections receiving a channel, in a few shares (one per writer) so that a join or
/// leave copies only a share. A fan-out iterates a snapshot (the `Arc`s) without holding the
/// locks, so a connection joining or leaving never waits for a fan-out in progress; it copies
/// the share instead when a fan-out holds it.
#[derive(Debug)]
pub(crate) struct Members {
    id: FeedId,
    shards: Box<[Share]>,
    /// How the channel's last fan-out is getting on: the next one waits for it to be written
    /// unless both are one chunk (then one writer, the channel's own, writes them in order).
    /// Not the fan-out itself, whose snapshot of the lists would make every later join copy
    /// its share.
    last: std::sync::Mutex<Option<Arc<Progress>>>,
}

/// One share of a channel's connections.
type Share = std::sync::Mutex<Arc<Vec<Arc<Conn>>>>;

impl Members {
    fn new(shards: usize) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            shards: (0..shards).map(|_| Default::default()).collect(),
            last: std::sync::Mutex::new(None),
        }
    }

    fn list(&self, shard: usize) -> std::sync::MutexGuard<'_, Arc<Vec<Arc<Conn>>>> {
        self.shards[shard % self.shards.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn join(&self, conn: &Arc<Conn>) {
        Arc::make_mut(&mut self.list(conn.shard())).push(conn.clone());
    }

    fn leave(&self, conn: &Arc<Conn>) {
        let mut list = self.list(conn.shard());
        if let Some(index) = list.iter().position(|c| Arc::ptr_eq(c, conn)) {
            Arc::make_mut(&mut list).swap_remove(index);
        }
    }
}

/// A live channel: who receives it and where it stands. Dropping the last handle stops its
/// bus subscription.
#[derive(Debug)]
pub(crate) struct Feed {
    members: Arc<Members>,
    position: Arc<std::sync::Mutex<Position>>,
    epoch: String,
    stop: CancellationToken,
    /// A player feed's entry in the node's [`PlayerFeeds`], removed when the feed goes.
    registered: Option<(Arc<PlayerFeeds>, String)>,
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

    pub fn id(&self) -> FeedId {
        self.members.id
    }

    /// Takes `conn` off the channel.
    pub fn leave(&self, conn: &Arc<Conn>) {
        self.members.leave(conn);
        conn.release(self.id());
    }

    /// The channel's state as of the subscription's `seq`.
    pub fn state(&self) -> ChannelState {
        self.position().standing.to_state()
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some((players, player)) = self.registered.take() {
            let mut players = players.lock().unwrap_or_else(|e| e.into_inner());
            // Only this feed's own entry: a new feed for the player may have replaced it.
            let own = players
                .get(&player)
                .is_some_and(|(_, weak)| std::ptr::eq(weak.as_ptr(), self));
            if own {
                players.remove(&player);
            }
        }
    }
}

/// A connection's view of a channel: the events after `seq`, in order, held on the connection
/// (`Conn::hold`) until its session lets them follow its answer (`Conn::go_live`).
#[derive(Debug)]
pub(crate) struct Subscription {
    pub feed: Arc<Feed>,
    /// The last sequence on the channel when the subscription started; only later events
    /// follow.
    pub seq: u64,
}

/// One event of a channel for its connections, as they were when the channel's position moved
/// past it: cut into chunks of [`CHUNK`] connections that any writer holding the fan-out may
/// claim, so that the writers whose threads have the CPU do the work, however the OS shares
/// it out among them.
struct FanOut {
    feed: FeedId,
    event: Arc<Outgoing>,
    /// The channel's members, one list per share (see [`Members`]).
    lists: Box<[Arc<Vec<Arc<Conn>>>]>,
    /// The next chunk to claim.
    next: AtomicUsize,
    progress: Arc<Progress>,
    /// When the feed made it, and `table` or `player` (`gateway_fanout_seconds`).
    started: std::time::Instant,
    kind: &'static str,
}

/// How far a fan-out is: its chunks, those not yet written, and a wake-up for its channel's
/// feed when none is left.
#[derive(Debug)]
struct Progress {
    chunks: usize,
    left: AtomicUsize,
    done: tokio::sync::Notify,
}

impl Progress {
    fn is_done(&self) -> bool {
        self.left.load(Ordering::Acquire) == 0
    }

    /// Returns once every chunk has been written.
    async fn written(&self) {
        let done = self.done.notified();
        if !self.is_done() {
            done.await;
        }
    }
}

impl FanOut {
    fn new(members: &Members, event: Arc<Outgoing>, channel: &Channel) -> Self {
        let lists: Box<[_]> = (0..members.shards.len())
            .map(|shard| members.list(shard).clone())
            .collect();
        let chunks = lists.iter().map(|list| list.len().div_ceil(CHUNK)).sum();
        Self {
            feed: members.id,
            event,
            lists,
            next: AtomicUsize::new(0),
            progress: Arc::new(Progress {
                chunks,
                left: AtomicUsize::new(chunks),
                done: tokio::sync::Notify::new(),
            }),
            started: std::time::Instant::now(),
            kind: match channel {
                Channel::Table(_) => "table",
                Channel::Player(_) => "player",
            },
        }
    }

    /// The connections of the next unclaimed chunk, if any is left.
    fn claim(&self) -> Option<&[Arc<Conn>]> {
        let mut chunk = self.next.fetch_add(1, Ordering::Relaxed);
        for list in &self.lists {
            let here = list.len().div_ceil(CHUNK);
            if chunk < here {
                let start = chunk * CHUNK;
                return Some(&list[start..(start + CHUNK).min(list.len())]);
            }
            chunk -= here;
        }
        None
    }

    /// A claimed chunk has been written; the last one counts the fan-out (once per event, not
    /// per chunk) and wakes whoever waits for it.
    fn written(&self) {
        if self.progress.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let connections: usize = self.lists.iter().map(|list| list.len()).sum();
            metrics::counter!("gateway_events_delivered_total").increment(connections as u64);
            metrics::histogram!("gateway_fanout_seconds", "channel" => self.kind)
                .record(self.started.elapsed());
            self.progress.done.notify_one();
        }
    }

    fn chunks(&self) -> usize {
        self.progress.chunks
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum HubError {
    #[error("the bus is unavailable: {0}")]
    Bus(String),
}

/// The subjects a channel's events are published on (`docs/contract/bus.md`).
pub(crate) fn channel_subjects(channel: &Channel) -> Vec<String> {
    match channel {
        Channel::Table(table) => vec![
            subject::table_round_subject(table),
            subject::table_result_subject(table),
        ],
        Channel::Player(player) => vec![subject::player_wallet_subject(player)],
    }
}

/// The node's channels and its fan-out writers.
#[derive(Debug)]
pub(crate) struct Hub<B> {
    bus: B,
    feeds: Mutex<HashMap<Channel, Weak<Feed>>>,
    writers: Vec<mpsc::Sender<Arc<FanOut>>>,
    /// Connections handed out so far, which spreads them over the member shares.
    connections: AtomicUsize,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// The player feeds the node's one player subscription serves.
    players: Arc<PlayerFeeds>,
    /// That subscription, once started (the next player subscribe starts it again if it
    /// ended).
    player_subscription: std::sync::Mutex<Option<PlayerSubscription>>,
}

/// The node's one subscription to the player channels.
#[derive(Debug)]
struct PlayerSubscription {
    /// The life of the `PLAYERS` stream it reads.
    epoch: String,
    /// Cancelled when its task ends.
    ended: CancellationToken,
    /// The last stream sequence it read: a restart in the same epoch goes on from there, so
    /// the player feeds it serves miss nothing in between.
    seen: Arc<AtomicU64>,
}

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOut")
            .field("seq", &self.event.seq)
            .field("chunks", &self.chunks())
            .finish_non_exhaustive()
    }
}

impl<B: Bus> Hub<B> {
    /// Starts one fan-out writer per runtime worker. Must run inside the runtime.
    pub fn new(bus: B, tasks: TaskTracker, shutdown: CancellationToken) -> Self {
        let count = tokio::runtime::Handle::current()
            .metrics()
            .num_workers()
            .max(1);
        let writers = (0..count)
            .map(|_| {
                let (sender, receiver) = mpsc::channel(WRITER_QUEUE);
                tasks.spawn(write_events(receiver, shutdown.clone()));
                sender
            })
            .collect();
        Self {
            bus,
            feeds: Mutex::new(HashMap::new()),
            writers,
            connections: AtomicUsize::new(0),
            tasks,
            shutdown,
            players: Arc::new(std::sync::Mutex::new(HashMap::new())),
            player_subscription: std::sync::Mutex::new(None),
        }
    }

    /// The share of every channel's members a new connection is listed in (spread evenly, so
    /// that a join or leave copies a share, not the whole list).
    pub fn next_shard(&self) -> usize {
        self.connections.fetch_add(1, Ordering::Relaxed) % self.writers.len()
    }

    /// Subscribes `conn` to `channel`, starting its bus subscription if this node has none yet.
    /// The channel's live events are held on `conn` from here until its session calls
    /// `Conn::go_live`.
    pub async fn subscribe(
        &self,
        channel: &Channel,
        conn: &Arc<Conn>,
    ) -> Result<Subscription, HubError> {
        let mut feeds = self.feeds.lock().await;
        let feed = match feeds.get(channel).and_then(Weak::upgrade) {
            Some(feed) => feed,
            None => {
                let feed = match channel {
                    Channel::Table(_) => Arc::new(self.start_feed(channel).await?),
                    Channel::Player(player) => self.start_player_feed(channel, player).await?,
                };
                feeds.insert(channel.clone(), Arc::downgrade(&feed));
                feeds.retain(|_, weak| weak.strong_count() > 0);
                feed
            }
        };
        drop(feeds);
        // Join first, then read where the feed stands: the feed moves its position before it
        // hands an event to the writers, so an event not counted in `seq` reaches the held
        // connection, and one counted is dropped by the connection's sequence filter; nothing
        // is lost and nothing is doubled.
        if conn.hold(feed.id()) {
            feed.members.join(conn);
        }
        let seq = feed.position().seq;
        Ok(Subscription { feed, seq })
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
        let members = Arc::new(Members::new(self.writers.len()));
        let writers = self.writers.clone();
        let position = Arc::new(std::sync::Mutex::new(Position {
            seq: last_seq,
            standing,
        }));
        let stop = self.shutdown.child_token();
        let feed = Feed {
            members: members.clone(),
            position: position.clone(),
            epoch: state.epoch,
            stop: stop.clone(),
            registered: None,
        };
        let channel = channel.clone();
        self.tasks.spawn(async move {
            while let Some(message) = next_message(&mut messages, &stop, &channel).await {
                if !relay(&channel, &message, &position, &members, &writers, &stop).await {
                    break;
                }
            }
        });
        Ok(feed)
    }

    /// A player channel's feed: registered with the node's player subscription (started if
    /// need be) *before* it reads where the channel stands, so that every event the
    /// subscription has not handed out yet reaches it, and every event it already handed out
    /// is at or before the channel's last message read next. Events at or before the feed's
    /// position are not relayed twice.
    async fn start_player_feed(
        &self,
        channel: &Channel,
        player: &domain::PlayerId,
    ) -> Result<Arc<Feed>, HubError> {
        let epoch = self.player_subscription().await?;
        let feed = Arc::new(Feed {
            members: Arc::new(Members::new(self.writers.len())),
            position: Arc::new(std::sync::Mutex::new(Position {
                seq: 0,
                standing: Standing::Player(None),
            })),
            epoch,
            stop: self.shutdown.child_token(),
            registered: Some((self.players.clone(), player.as_str().to_string())),
        });
        self.players
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                player.as_str().to_string(),
                (channel.clone(), Arc::downgrade(&feed)),
            );
        let last = self
            .bus
            .last_message(channel.stream(), &subject::player_wallet_subject(player))
            .await
            .map_err(|e| HubError::Bus(e.to_string()))?;
        if let Some(last) = last {
            let mut position = feed.position();
            if last.seq > position.seq {
                match protocol::decode_event(&last.payload) {
                    Ok(event) => {
                        position.seq = last.seq;
                        position.standing = Standing::Player(None);
                        position.standing.apply(&event);
                    }
                    Err(error) => {
                        tracing::warn!(%channel, %error, "undecodable last event");
                        position.seq = last.seq;
                    }
                }
            }
        }
        Ok(feed)
    }

    /// The node's one subscription to every player channel's events, started from the
    /// stream's end on first use (and again if it ended); returns the stream's epoch.
    async fn player_subscription(&self) -> Result<String, HubError> {
        // Only `subscribe` calls this, under its lock: one start at a time.
        let resume_after = {
            let running = self
                .player_subscription
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match running.as_ref() {
                Some(running) if !running.ended.is_cancelled() => {
                    return Ok(running.epoch.clone());
                }
                Some(ended) => Some((ended.epoch.clone(), ended.seen.load(Ordering::Relaxed))),
                None => None,
            }
        };
        let bus_error = |e: bus::BusError| HubError::Bus(e.to_string());
        let stream = protocol::subject::PLAYERS_STREAM;
        let state = self.bus.stream_state(stream).await.map_err(bus_error)?;
        // From the stream's end the first time; after a subscription that ended, from where it
        // stood (the stream's end if the stream was recreated meanwhile).
        let after = match resume_after {
            Some((epoch, seen)) if epoch == state.epoch => seen,
            _ => state.last_seq,
        };
        let mut messages = self
            .bus
            .replay(stream, PLAYER_FEED_FILTER, after + 1)
            .await
            .map_err(bus_error)?;
        let ended = CancellationToken::new();
        let seen = Arc::new(AtomicU64::new(after));
        *self
            .player_subscription
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(PlayerSubscription {
            epoch: state.epoch.clone(),
            ended: ended.clone(),
            seen: seen.clone(),
        });
        let players = self.players.clone();
        let writers = self.writers.clone();
        let stop = self.shutdown.clone();
        self.tasks.spawn(async move {
            let _ended = ended.drop_guard();
            while let Some(message) = next_message(&mut messages, &stop, &"player channels").await {
                seen.store(message.seq, Ordering::Relaxed);
                // `player.<id>.wallet`: only an event of a player this node serves is decoded.
                let Some(player) = message.subject.split('.').nth(1) else {
                    continue;
                };
                let found = players
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(player)
                    .and_then(|(channel, weak)| Some((channel.clone(), weak.upgrade()?)));
                let Some((channel, feed)) = found else {
                    continue;
                };
                let relayed = relay(
                    &channel,
                    &message,
                    &feed.position,
                    &feed.members,
                    &writers,
                    &stop,
                )
                .await;
                if !relayed {
                    break;
                }
            }
        });
        Ok(state.epoch)
    }
}

/// The next message of a feed's bus subscription: `None` once `stop` fires or the
/// subscription ends; errors are logged (naming `what` the subscription is for) and skipped.
async fn next_message(
    messages: &mut bus::Subscription,
    stop: &CancellationToken,
    what: &(dyn std::fmt::Display + Sync),
) -> Option<StoredMessage> {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return None,
            message = messages.next() => message,
        };
        match message? {
            Ok(message) => return Some(message),
            Err(error) => tracing::warn!(channel = %what, %error, "channel subscription error"),
        }
    }
}

/// Relays one stored message of `channel` to its connections: decoded once, built once per
/// encoding, the channel's position moved, then handed to each writer that has some of the
/// connections. A message at or before the position was relayed already (or is part of the
/// state a player feed started from) and is skipped. Returns `false` once `stop` fires or the
/// writers are gone.
async fn relay(
    channel: &Channel,
    message: &StoredMessage,
    position: &std::sync::Mutex<Position>,
    members: &Arc<Members>,
    writers: &[mpsc::Sender<Arc<FanOut>>],
    stop: &CancellationToken,
) -> bool {
    let current = position.lock().unwrap_or_else(|e| e.into_inner()).seq;
    if message.seq <= current {
        return true;
    }
    let decoded = match protocol::decode_event(&message.payload) {
        Ok(decoded) => decoded,
        Err(error) => {
            // A foreign or corrupt payload is skipped, never relayed.
            tracing::warn!(%channel, seq = message.seq, %error, "undecodable event skipped");
            metrics::counter!("gateway_events_undecodable_total").increment(1);
            return true;
        }
    };
    let encoded = |encoding| {
        event_message_from_bus(encoding, channel, message.seq, &decoded, &message.payload)
    };
    let (Ok(json), Ok(msgpack)) = (encoded(Encoding::Json), encoded(Encoding::MsgPack)) else {
        tracing::warn!(%channel, seq = message.seq, "event could not be encoded");
        return true;
    };
    let event = Arc::new(Outgoing {
        seq: message.seq,
        json: frame::message(Encoding::Json, &json),
        msgpack: frame::message(Encoding::MsgPack, &msgpack),
    });
    {
        let mut position = position.lock().unwrap_or_else(|e| e.into_inner());
        if message.seq <= position.seq {
            return true;
        }
        position.seq = message.seq;
        position.standing.apply(&decoded);
    }
    metrics::counter!("gateway_events_relayed_total").increment(1);
    // After the position moved (see `Hub::subscribe`): a connection that joins after this
    // snapshot was counted in the position already.
    let fan_out = Arc::new(FanOut::new(members, event, channel));
    if fan_out.chunks() == 0 {
        return true;
    }
    // A connection's events of a channel must reach it in order. One-chunk fan-outs of the
    // channel all go to its own writer, whose queue keeps them in order; a larger one is
    // shared by the writers, so it starts only after the channel's previous fan-out was
    // written, and the next one waits for it.
    let previous = members
        .last
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(fan_out.progress.clone());
    if let Some(previous) = previous
        && (previous.chunks > 1 || fan_out.chunks() > 1)
    {
        tokio::select! {
            () = stop.cancelled() => return false,
            () = previous.written() => {}
        }
    }
    let home = members.id as usize % writers.len();
    for writer in writers
        .iter()
        .cycle()
        .skip(home)
        .take(fan_out.chunks().min(writers.len()))
    {
        let sent = tokio::select! {
            () = stop.cancelled() => return false,
            sent = writer.send(fan_out.clone()) => sent,
        };
        if sent.is_err() {
            return false;
        }
    }
    true
}

/// One fan-out writer: for each fan-out handed to it, claims chunks until none is left and
/// writes the frame of each connection's encoding to each connection of the chunk
/// (`Conn::deliver`: a non-blocking write, or the connection's queue).
async fn write_events(mut fan_outs: mpsc::Receiver<Arc<FanOut>>, stop: CancellationToken) {
    loop {
        let fan_out = tokio::select! {
            () = stop.cancelled() => return,
            fan_out = fan_outs.recv() => match fan_out {
                Some(fan_out) => fan_out,
                None => return,
            },
        };
        let (feed, event) = (fan_out.feed, &fan_out.event);
        while let Some(conns) = fan_out.claim() {
            for conn in conns {
                conn.deliver(feed, event.seq, event.frame(conn.encoding()));
            }
            fan_out.written();
            if fan_out.next.load(Ordering::Relaxed) < fan_out.chunks() {
                tokio::task::yield_now().await;
            }
        }
    }
}

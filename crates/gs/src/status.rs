//! Who owns the betting status (ADR 0020): every GS process, together.
//!
//! Each GS decides for itself whether it *serves* bets: its store is healthy
//! ([`crate::health`]) and it has caught up with the round transitions it missed. It says so
//! every [`HEARTBEAT`] in the `gs_health` bucket under its own process key; the bucket's
//! `max_age` removes the key of a process that died. A GS that does not serve leaves the bet
//! queue group ([`crate::intake`]), so bets go to the others.
//!
//! An operator's switch (`croupier betting off`, key `operator` of the `status` bucket) comes
//! first: while it says disabled, the status is disabled with reason `operator`. An operator's
//! switch of one table (`croupier betting off --table T`, key `operator.<T>`, ADR 0022) leaves
//! the status alone: this task watches those keys and hands the set of tables switched off to
//! the intake ([`SwitchedOff`]), which refuses their bets `BETTING_UNAVAILABLE`. A table is
//! switched on again by the same key saying enabled (`croupier betting on --table T`).
//!
//! From the heartbeats it sees (its own, and the others' still fresh), every GS works out the
//! same betting status and writes it to `status.betting` when the stored one differs:
//! enabled while any GS serves; otherwise disabled with the reason the GS processes give
//! (`store_slow` if one says so, else `store_unavailable` if one says so, else
//! `gs_unavailable`: none is ready yet). The last GS to stop gracefully
//! writes `gs_unavailable`; gateways also show `gs_unavailable` by themselves when no
//! heartbeat has come for [`STALE`], so a status cannot outlive every GS that could correct it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use bus::{Bus, Kv};
use domain::TableId;
use futures_util::StreamExt;
use protocol::status::reason;
use protocol::subject::{GS_HEALTH_BUCKET, STATUS_BETTING_KEY, STATUS_BUCKET, STATUS_OPERATOR_KEY};
use protocol::{Betting, BettingStatus, Encoding, GsHeartbeat};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::now;
use crate::health::{Health, StoreHealth};

/// How often a GS writes its heartbeat (and checks the betting status).
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A heartbeat not renewed for this long is a dead GS's.
pub const STALE: Duration = Duration::from_secs(3);
/// The longest one bucket call (open, heartbeat, status) may hold up the beat: a call that a
/// leader election leaves unanswered is given up and made again at the next beat, with a
/// fresh heartbeat, rather than waited on for the connection's 5 s request timeout.
const CALL_LIMIT: Duration = HEARTBEAT;

/// `call` within [`CALL_LIMIT`]: its error, or that none came in time, as text.
async fn bounded<T, E: std::fmt::Display>(
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(CALL_LIMIT, call).await {
        Ok(done) => done.map_err(|e| e.to_string()),
        Err(_) => Err("no answer in time".to_string()),
    }
}

/// Whether this GS serves bets, as the intake follows it.
pub(crate) type Serving = watch::Receiver<bool>;

/// The tables an operator has switched off one by one (keys `operator.<t>` of the `status`
/// bucket saying disabled), as the intake follows them.
pub(crate) type SwitchedOff = watch::Receiver<BTreeSet<TableId>>;

/// The operators' switches of single tables, from the `operator.<t>` keys.
#[derive(Debug, Default)]
struct TableSwitches(BTreeMap<TableId, Betting>);

impl TableSwitches {
    /// Takes in one change of an `operator.<t>` key (`None`: deleted). An undecodable value
    /// switches nothing off.
    fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        let Some(table) = protocol::subject::table_of_operator_key(key) else {
            return;
        };
        match value.map(|v| Encoding::MsgPack.decode::<BettingStatus>(v)) {
            Some(Ok(status)) => {
                self.0.insert(table, status.betting);
            }
            Some(Err(error)) => {
                tracing::warn!(key, %error, "undecodable operator switch ignored");
                self.0.remove(&table);
            }
            None => {
                self.0.remove(&table);
            }
        }
    }

    fn off(&self) -> BTreeSet<TableId> {
        self.0
            .iter()
            .filter(|(_, betting)| **betting == Betting::Disabled)
            .map(|(table, _)| table.clone())
            .collect()
    }
}

/// Tells the intake which tables are switched off, when that changed.
fn hand_over(switches: &TableSwitches, switched_off: &watch::Sender<BTreeSet<TableId>>) {
    let off = switches.off();
    switched_off.send_if_modified(|now| {
        if *now == off {
            return false;
        }
        let names: Vec<&str> = off.iter().map(TableId::as_str).collect();
        tracing::info!(tables = ?names, "tables switched off by an operator changed");
        *now = off;
        true
    });
}

/// What this GS knows of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Own {
    store: StoreHealth,
    caught_up: bool,
    /// Whether it served until now.
    was_serving: bool,
}

impl Own {
    /// A GS starts serving once its store is healthy and it has caught up; it stops when its
    /// store turns unhealthy. A hiccup of the follower alone (it resumes from its cursor)
    /// does not stop it: what made it fail shows in the store's health within the detection
    /// time, with the right reason.
    fn serving(self) -> bool {
        self.store == StoreHealth::Healthy && (self.caught_up || self.was_serving)
    }
}

/// The betting status that follows from the heartbeats: `(betting, reason)`.
pub(crate) fn aggregate<'a>(
    heartbeats: impl IntoIterator<Item = &'a GsHeartbeat>,
) -> (Betting, &'static str) {
    let mut slow = false;
    let mut unavailable = false;
    for heartbeat in heartbeats {
        if heartbeat.serving {
            return (Betting::Enabled, "");
        }
        slow |= heartbeat.store == reason::STORE_SLOW;
        unavailable |= heartbeat.store == reason::STORE_UNAVAILABLE;
    }
    let why = if slow {
        reason::STORE_SLOW
    } else if unavailable {
        reason::STORE_UNAVAILABLE
    } else {
        // None alive, or alive with a healthy store but not serving yet (starting up).
        reason::GS_UNAVAILABLE
    };
    (Betting::Disabled, why)
}

/// What this GS has read of the `status` bucket, from one watch of every key: the betting
/// status as stored, the operator's switch of every table, and the switches of single tables.
#[derive(Debug, Default)]
struct StatusBucket {
    /// Key `betting` (`None` while missing or undecodable).
    stored: Option<(Betting, String)>,
    /// Key `operator` says disabled.
    operator_off: bool,
    tables: TableSwitches,
}

impl StatusBucket {
    fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        let decoded = || value.and_then(|v| Encoding::MsgPack.decode::<BettingStatus>(v).ok());
        match key {
            STATUS_BETTING_KEY => self.stored = decoded().map(|s| (s.betting, s.reason)),
            STATUS_OPERATOR_KEY => {
                self.operator_off = decoded().is_some_and(|s| s.betting == Betting::Disabled);
            }
            _ => self.tables.apply(key, value),
        }
    }

    /// The status to say: an operator's switch of every table first, else the heartbeats'.
    fn status<'a>(
        &self,
        heartbeats: impl IntoIterator<Item = &'a GsHeartbeat>,
    ) -> (Betting, &'static str) {
        if self.operator_off {
            (Betting::Disabled, reason::OPERATOR)
        } else {
            aggregate(heartbeats)
        }
    }

    fn stored_is(&self, (betting, why): (Betting, &'static str)) -> bool {
        self.stored
            .as_ref()
            .is_some_and(|(b, r)| *b == betting && r == why)
    }
}

/// A bucket handle, opened once and opened again after it failed (each opening is a round
/// trip to the server).
struct Bucket<B: Bus> {
    name: &'static str,
    kv: Option<B::Kv>,
}

impl<B: Bus> Bucket<B> {
    fn new(name: &'static str) -> Self {
        Self { name, kv: None }
    }

    async fn get(&mut self, bus: &B) -> Option<B::Kv> {
        if self.kv.is_none() {
            match bounded(bus.kv(self.name)).await {
                Ok(kv) => self.kv = Some(kv),
                Err(error) => tracing::warn!(bucket = self.name, %error, "cannot open a bucket"),
            }
        }
        self.kv.clone()
    }

    /// Forgets the handle after a watch on it failed. (A failed write keeps it: a write fails
    /// while the bucket's stream elects a leader, and opening the bucket again then would wait
    /// for the cluster too, holding up the next heartbeat.)
    fn failed(&mut self) {
        self.kv = None;
    }
}

/// Keeps this GS's heartbeat and the betting status until shutdown; `serving` tells the intake.
pub(crate) async fn run<B: Bus>(
    bus: B,
    instance: String,
    health: Health,
    mut caught_up: watch::Receiver<bool>,
    serving: watch::Sender<bool>,
    switched_off: watch::Sender<BTreeSet<TableId>>,
    shutdown: CancellationToken,
) {
    let key = format!(
        "{}-{}",
        instance,
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut store = health.subscribe();
    let mut health_bucket = Bucket::<B>::new(GS_HEALTH_BUCKET);
    let mut status_bucket = Bucket::<B>::new(STATUS_BUCKET);
    let mut others: HashMap<String, (Instant, GsHeartbeat)> = HashMap::new();
    let mut heartbeats: Option<bus::KvWatch> = None;
    // A watch (re)established replays every key's current value, so a key written while it
    // was down is caught up; only a key deleted meanwhile would be missed (`betting on` never
    // deletes: it writes enabled).
    let mut bucket = StatusBucket::default();
    let mut watching_status: Option<bus::KvWatch> = None;
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_bad: Option<StoreHealth> = None;
    // A GS that has just started knows no other GS's heartbeat until its watch delivers them:
    // it must not write "disabled" over a status other GS keep enabled (a false alarm at every
    // restart, seen in the chaos run's gs-kill). It writes only "enabled" until it has watched
    // for two heartbeats; gateways judge GS that went silent themselves (ADR 0020).
    let started = Instant::now();
    loop {
        if heartbeats.is_none() {
            heartbeats = watch_all(&mut health_bucket, &bus).await;
        }
        if watching_status.is_none() {
            // Until the watch says otherwise, nothing is known of what is stored.
            bucket.stored = None;
            watching_status = watch_all(&mut status_bucket, &bus).await;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            Ok(()) = store.changed() => {}
            Ok(()) = caught_up.changed() => {}
            change = next_change(&mut heartbeats) => {
                match change {
                    Some(change) if change.key != key => {
                        match change.value.as_deref().map(|v| Encoding::MsgPack.decode::<GsHeartbeat>(v)) {
                            Some(Ok(heartbeat)) => {
                                others.insert(change.key, (Instant::now(), heartbeat));
                            }
                            Some(Err(error)) => tracing::warn!(key = %change.key, %error, "undecodable GS heartbeat ignored"),
                            None => {
                                others.remove(&change.key);
                            }
                        }
                    }
                    Some(_) => {}
                    None => heartbeats = None,
                }
                continue;
            }
            change = next_change(&mut watching_status) => {
                match change {
                    Some(change) => {
                        bucket.apply(&change.key, change.value.as_deref());
                        hand_over(&bucket.tables, &switched_off);
                    }
                    None => watching_status = None,
                }
                continue;
            }
        }
        let own = Own {
            store: *store.borrow(),
            caught_up: *caught_up.borrow(),
            was_serving: *serving.borrow(),
        };
        // Until it serves again, a GS recovering from an outage still gives the outage as its
        // reason: clients see one switch off and one on, not a change of reason in between.
        if own.store != StoreHealth::Healthy {
            last_bad = Some(own.store);
        } else if own.serving() {
            last_bad = None;
        }
        serving.send_if_modified(|now| {
            let next = own.serving();
            if *now == next {
                return false;
            }
            tracing::info!(
                serving = next,
                store = own.store.code(),
                caught_up = own.caught_up,
                "gs serving bets changed"
            );
            *now = next;
            true
        });
        let heartbeat = GsHeartbeat {
            instance: instance.clone(),
            serving: own.serving(),
            store: last_bad.unwrap_or(own.store).code().to_string(),
            at: now(),
        };
        put_heartbeat(&mut health_bucket, &bus, &key, &heartbeat).await;
        let now = Instant::now();
        others.retain(|_, (seen, _)| now - *seen < STALE);
        let status =
            bucket.status(std::iter::once(&heartbeat).chain(others.values().map(|(_, h)| h)));
        // Written only when the stored one (as watched) says otherwise; unknown: written.
        let knows_others = started.elapsed() >= HEARTBEAT * 2;
        if !bucket.stored_is(status) && (status.0 == Betting::Enabled || knows_others) {
            write_status(&mut status_bucket, &bus, status, &mut bucket).await;
        }
    }
    // A graceful stop: withdraw the heartbeat, and say so if no other GS is left.
    serving.send_replace(false);
    if let Some(kv) = health_bucket.get(&bus).await {
        if let Err(error) = kv.delete(&key).await {
            tracing::warn!(%error, "GS heartbeat not withdrawn");
        }
    }
    let now = Instant::now();
    others.retain(|_, (seen, _)| now - *seen < STALE);
    let status = bucket.status(others.values().map(|(_, h)| h));
    write_status(&mut status_bucket, &bus, status, &mut bucket).await;
}

async fn next_change(watching: &mut Option<bus::KvWatch>) -> Option<bus::KvEvent> {
    match watching {
        Some(feed) => feed.next().await,
        None => std::future::pending().await,
    }
}

/// Watches every key of the bucket (its current values first).
async fn watch_all<B: Bus>(bucket: &mut Bucket<B>, bus: &B) -> Option<bus::KvWatch> {
    let kv = bucket.get(bus).await?;
    match kv.watch(">").await {
        Ok(feed) => Some(feed),
        Err(error) => {
            tracing::warn!(bucket = bucket.name, %error, "cannot watch a bucket; retrying");
            bucket.failed();
            None
        }
    }
}

async fn put_heartbeat<B: Bus>(
    bucket: &mut Bucket<B>,
    bus: &B,
    key: &str,
    heartbeat: &GsHeartbeat,
) {
    let payload = match Encoding::MsgPack.encode(heartbeat) {
        Ok(payload) => payload,
        Err(error) => {
            tracing::error!(%error, "GS heartbeat could not be encoded");
            return;
        }
    };
    let Some(kv) = bucket.get(bus).await else {
        return;
    };
    if let Err(error) = bounded(kv.put(key, payload)).await {
        tracing::warn!(%error, "GS heartbeat not written");
    }
}

/// Writes the betting status, and takes it as the stored one.
async fn write_status<B: Bus>(
    status_bucket: &mut Bucket<B>,
    bus: &B,
    (betting, why): (Betting, &'static str),
    bucket: &mut StatusBucket,
) {
    let status = BettingStatus {
        betting,
        reason: why.to_string(),
        at: now(),
    };
    let payload = match Encoding::MsgPack.encode(&status) {
        Ok(payload) => payload,
        Err(error) => {
            tracing::error!(%error, "betting status could not be encoded");
            return;
        }
    };
    let Some(kv) = status_bucket.get(bus).await else {
        return;
    };
    let written = bounded(kv.put(STATUS_BETTING_KEY, payload)).await;
    match written {
        Ok(_) => {
            tracing::info!(
                betting = betting.as_str(),
                reason = why,
                "betting status written"
            );
            metrics::counter!("gs_betting_status_writes_total", "betting" => betting.as_str())
                .increment(1);
            bucket.stored = Some((betting, why.to_string()));
        }
        Err(error) => tracing::warn!(%error, "betting status not written"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(serving: bool, store: &str) -> GsHeartbeat {
        GsHeartbeat {
            instance: "gs".into(),
            serving,
            store: store.into(),
            at: domain::Timestamp::UNIX_EPOCH,
        }
    }

    fn switch(betting: Betting) -> Vec<u8> {
        Encoding::MsgPack
            .encode(&BettingStatus {
                betting,
                reason: "dana: drill".into(),
                at: domain::Timestamp::UNIX_EPOCH,
            })
            .expect("encode")
            .to_vec()
    }

    #[test]
    fn a_table_is_switched_off_by_its_own_key_until_that_key_says_enabled() {
        let t1 = TableId::parse("t1").expect("table");
        let t2 = TableId::parse("t2").expect("table");
        let mut switches = TableSwitches::default();
        switches.apply("operator.t1", Some(&switch(Betting::Disabled)));
        switches.apply("operator.t2", Some(&switch(Betting::Disabled)));
        // Not a table's switch: the switch of every table, and the status, are elsewhere.
        switches.apply("operator", Some(&switch(Betting::Disabled)));
        switches.apply("betting", Some(&switch(Betting::Disabled)));
        assert_eq!(switches.off(), BTreeSet::from([t1.clone(), t2.clone()]));
        switches.apply("operator.t1", Some(&switch(Betting::Enabled)));
        assert_eq!(switches.off(), BTreeSet::from([t2.clone()]));
        switches.apply("operator.t2", None);
        assert_eq!(switches.off(), BTreeSet::new());
        switches.apply("operator.t1", Some(&switch(Betting::Disabled)));
        switches.apply("operator.t1", Some(b"not msgpack"));
        assert_eq!(
            switches.off(),
            BTreeSet::new(),
            "undecodable switches nothing off"
        );

        let (sender, receiver) = watch::channel(BTreeSet::new());
        switches.apply("operator.t2", Some(&switch(Betting::Disabled)));
        hand_over(&switches, &sender);
        assert_eq!(*receiver.borrow(), BTreeSet::from([t2]));
    }

    #[test]
    fn one_watch_of_the_status_bucket_tells_what_is_stored_and_what_operators_switched() {
        let mut bucket = StatusBucket::default();
        let well = beat(true, GsHeartbeat::HEALTHY);
        assert!(
            !bucket.stored_is((Betting::Enabled, "")),
            "nothing known yet"
        );
        bucket.apply(STATUS_BETTING_KEY, Some(&switch(Betting::Enabled)));
        assert_eq!(
            bucket.stored,
            Some((Betting::Enabled, "dana: drill".into()))
        );
        bucket.apply(STATUS_OPERATOR_KEY, Some(&switch(Betting::Disabled)));
        assert_eq!(
            bucket.status([&well]),
            (Betting::Disabled, reason::OPERATOR),
            "the operator's switch of every table comes first"
        );
        bucket.apply("operator.t1", Some(&switch(Betting::Disabled)));
        assert_eq!(
            bucket.tables.off(),
            BTreeSet::from([TableId::parse("t1").expect("table")])
        );
        bucket.apply(STATUS_OPERATOR_KEY, Some(&switch(Betting::Enabled)));
        assert_eq!(bucket.status([&well]), (Betting::Enabled, ""));
        bucket.apply(STATUS_BETTING_KEY, None);
        assert_eq!(bucket.stored, None, "deleted: unknown, so written again");
    }

    #[test]
    fn one_serving_gs_keeps_betting_on_and_none_left_is_gs_unavailable() {
        let sick = beat(false, reason::STORE_UNAVAILABLE);
        let well = beat(true, GsHeartbeat::HEALTHY);
        let slow = beat(false, reason::STORE_SLOW);
        let catching_up = beat(false, GsHeartbeat::HEALTHY);
        assert_eq!(aggregate([&sick, &well]), (Betting::Enabled, ""));
        assert_eq!(
            aggregate([&sick, &catching_up]),
            (Betting::Disabled, reason::STORE_UNAVAILABLE)
        );
        assert_eq!(
            aggregate([&catching_up]),
            (Betting::Disabled, reason::GS_UNAVAILABLE),
            "starting up"
        );
        assert_eq!(
            aggregate([&sick, &slow]),
            (Betting::Disabled, reason::STORE_SLOW)
        );
        assert_eq!(
            aggregate(std::iter::empty()),
            (Betting::Disabled, reason::GS_UNAVAILABLE)
        );
    }
}

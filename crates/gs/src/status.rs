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
use protocol::subject::{
    GS_HEALTH_BUCKET, STATUS_BETTING_KEY, STATUS_BUCKET, STATUS_OPERATOR_KEY,
    STATUS_OPERATOR_TABLE_KEYS,
};
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
    let mut others: HashMap<String, (Instant, GsHeartbeat)> = HashMap::new();
    let mut watching: Option<bus::KvWatch> = None;
    // A watch (re)established replays every key's current value, so a key written while it
    // was down is caught up; only a key deleted meanwhile would be missed (`betting on` never
    // deletes: it writes enabled).
    let mut switches = TableSwitches::default();
    let mut watching_switches: Option<bus::KvWatch> = None;
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_written: Option<(Betting, &'static str)> = None;
    let mut last_bad: Option<StoreHealth> = None;
    loop {
        if watching.is_none() {
            watching = watch_heartbeats(&bus).await;
        }
        if watching_switches.is_none() {
            watching_switches = watch_table_switches(&bus).await;
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            Ok(()) = store.changed() => {}
            Ok(()) = caught_up.changed() => {}
            change = next_change(&mut watching) => {
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
                    None => watching = None,
                }
                continue;
            }
            change = next_change(&mut watching_switches) => {
                match change {
                    Some(change) => {
                        switches.apply(&change.key, change.value.as_deref());
                        hand_over(&switches, &switched_off);
                    }
                    None => watching_switches = None,
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
        put_heartbeat(&bus, &key, &heartbeat).await;
        hand_over(&switches, &switched_off);
        let now = Instant::now();
        others.retain(|_, (seen, _)| now - *seen < STALE);
        let status = if operator_switched_off(&bus).await {
            (Betting::Disabled, reason::OPERATOR)
        } else {
            aggregate(std::iter::once(&heartbeat).chain(others.values().map(|(_, h)| h)))
        };
        write_status(&bus, status, &mut last_written).await;
    }
    // A graceful stop: withdraw the heartbeat, and say so if no other GS is left.
    serving.send_replace(false);
    delete_heartbeat(&bus, &key).await;
    let now = Instant::now();
    others.retain(|_, (seen, _)| now - *seen < STALE);
    let status = if operator_switched_off(&bus).await {
        (Betting::Disabled, reason::OPERATOR)
    } else {
        aggregate(others.values().map(|(_, h)| h))
    };
    last_written = None;
    write_status(&bus, status, &mut last_written).await;
}

/// Whether an operator has switched betting off: key `operator` of the `status` bucket
/// (`croupier betting off`). Unreadable counts as not.
async fn operator_switched_off<B: Bus>(bus: &B) -> bool {
    let Ok(kv) = bus.kv(STATUS_BUCKET).await else {
        return false;
    };
    match kv.get(STATUS_OPERATOR_KEY).await {
        Ok(Some(entry)) => Encoding::MsgPack
            .decode::<BettingStatus>(&entry.value)
            .is_ok_and(|s| s.betting == Betting::Disabled),
        _ => false,
    }
}

async fn next_change(watching: &mut Option<bus::KvWatch>) -> Option<bus::KvEvent> {
    match watching {
        Some(feed) => feed.next().await,
        None => std::future::pending().await,
    }
}

async fn watch_table_switches<B: Bus>(bus: &B) -> Option<bus::KvWatch> {
    let kv = bus.kv(STATUS_BUCKET).await.ok()?;
    match kv.watch(STATUS_OPERATOR_TABLE_KEYS).await {
        Ok(feed) => Some(feed),
        Err(error) => {
            tracing::warn!(%error, "cannot watch the operators' switches of tables; retrying");
            None
        }
    }
}

async fn watch_heartbeats<B: Bus>(bus: &B) -> Option<bus::KvWatch> {
    let kv = bus.kv(GS_HEALTH_BUCKET).await.ok()?;
    match kv.watch(">").await {
        Ok(feed) => Some(feed),
        Err(error) => {
            tracing::warn!(%error, "cannot watch the GS heartbeats; retrying");
            None
        }
    }
}

async fn put_heartbeat<B: Bus>(bus: &B, key: &str, heartbeat: &GsHeartbeat) {
    let result = async {
        let payload = Encoding::MsgPack
            .encode(heartbeat)
            .map_err(|e| e.to_string())?;
        let kv = bus.kv(GS_HEALTH_BUCKET).await.map_err(|e| e.to_string())?;
        kv.put(key, payload).await.map_err(|e| e.to_string())
    }
    .await;
    if let Err(error) = result {
        tracing::warn!(%error, "GS heartbeat not written");
    }
}

async fn delete_heartbeat<B: Bus>(bus: &B, key: &str) {
    if let Ok(kv) = bus.kv(GS_HEALTH_BUCKET).await {
        if let Err(error) = kv.delete(key).await {
            tracing::warn!(%error, "GS heartbeat not withdrawn");
        }
    }
}

/// Writes the betting status when the stored one says otherwise.
async fn write_status<B: Bus>(
    bus: &B,
    (betting, why): (Betting, &'static str),
    last_written: &mut Option<(Betting, &'static str)>,
) {
    let result = async {
        let kv = bus.kv(STATUS_BUCKET).await.map_err(|e| e.to_string())?;
        let stored = kv
            .get(STATUS_BETTING_KEY)
            .await
            .map_err(|e| e.to_string())?
            .and_then(|entry| Encoding::MsgPack.decode::<BettingStatus>(&entry.value).ok());
        let same = stored
            .as_ref()
            .is_some_and(|s| s.betting == betting && s.reason == why);
        if same {
            return Ok(false);
        }
        let status = BettingStatus {
            betting,
            reason: why.to_string(),
            at: now(),
        };
        let payload = Encoding::MsgPack
            .encode(&status)
            .map_err(|e| e.to_string())?;
        kv.put(STATUS_BETTING_KEY, payload)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(true)
    }
    .await;
    match result {
        Ok(true) => {
            if *last_written != Some((betting, why)) {
                tracing::info!(
                    betting = betting.as_str(),
                    reason = why,
                    "betting status written"
                );
            }
            metrics::counter!("gs_betting_status_writes_total", "betting" => betting.as_str())
                .increment(1);
            *last_written = Some((betting, why));
        }
        Ok(false) => *last_written = Some((betting, why)),
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

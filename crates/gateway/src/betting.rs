//! Whether bets are taken (`docs/contract/bus.md`, `docs/contract/websocket.md`, ADR 0020):
//! GS processes keep [`BettingStatus`] in key `betting` of the `status` bucket and a heartbeat
//! each in the `gs_health` bucket. The gateway reads both before it serves, then watches them
//! and tells every session, which broadcasts `status` to its client and answers bets at once
//! with `BETTING_UNAVAILABLE` while betting is off.
//!
//! What the gateway says, in order:
//! - it has lost the bus: disabled, `bus_unavailable` (it cannot forward a bet);
//! - no GS heartbeat has come for [`STALE`], or the key is missing: disabled,
//!   `gs_unavailable` (a status nobody alive keeps is not believed);
//! - otherwise the key's status.
//!
//! A value that does not decode is logged and ignored (the last good one stands).

use std::collections::HashMap;
use std::time::Duration;

use bus::{Bus, Kv, KvEvent, KvWatch};
use futures_util::StreamExt;
use protocol::status::reason;
use protocol::subject::{GS_HEALTH_BUCKET, STATUS_BETTING_KEY, STATUS_BUCKET};
use protocol::{Betting, BettingStatus, Encoding, StatusMessage};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long start-up waits for the first read of the buckets before it serves with what it
/// has (the watch corrects it as soon as the bus answers).
const INITIAL_READ: Duration = Duration::from_secs(3);
/// Pause before watching again after a watch failed or ended (bus reconnecting).
const REWATCH_PAUSE: Duration = Duration::from_secs(1);
/// A GS heartbeat not renewed for this long is a dead GS's (GS writes one every second).
pub const STALE: Duration = Duration::from_secs(3);
/// How often liveness and the bus connection are looked at.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// The betting status as the gateway knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Current {
    pub betting: Betting,
    pub reason: String,
}

impl Current {
    fn disabled(why: &str) -> Self {
        Self {
            betting: Betting::Disabled,
            reason: why.to_string(),
        }
    }

    pub fn to_message(&self) -> StatusMessage {
        StatusMessage {
            betting: self.betting,
            reason: self.reason.clone(),
        }
    }
}

/// What the gateway has heard, from which it says [`Current`]: read once before it serves
/// ([`initial`]), then kept up to date by [`watch`].
#[derive(Debug)]
pub(crate) struct Heard {
    /// The `betting` key: `None` while missing.
    status: Option<Current>,
    /// GS heartbeats by key, when last heard.
    heartbeats: HashMap<String, Instant>,
    bus_connected: bool,
}

impl Heard {
    fn new() -> Self {
        Self {
            status: None,
            heartbeats: HashMap::new(),
            bus_connected: true,
        }
    }

    fn current(&mut self, now: Instant) -> Current {
        self.heartbeats.retain(|_, seen| now - *seen < STALE);
        if !self.bus_connected {
            return Current::disabled(reason::BUS_UNAVAILABLE);
        }
        match &self.status {
            Some(status) if !self.heartbeats.is_empty() => status.clone(),
            _ => Current::disabled(reason::GS_UNAVAILABLE),
        }
    }

    fn status_changed(&mut self, value: Option<&[u8]>) {
        let Some(bytes) = value else {
            self.status = None;
            return;
        };
        match Encoding::MsgPack.decode::<BettingStatus>(bytes) {
            Ok(status) => {
                self.status = Some(Current {
                    betting: status.betting,
                    reason: status.reason,
                });
            }
            Err(error) => tracing::warn!(%error, "undecodable betting status ignored"),
        }
    }

    fn heartbeat(&mut self, change: KvEvent, now: Instant) {
        if change.value.is_some() {
            self.heartbeats.insert(change.key, now);
        } else {
            self.heartbeats.remove(&change.key);
        }
    }
}

/// What the buckets say at start-up: the status key and the heartbeats alive. With nothing
/// read in time, it says `gs_unavailable` until [`watch`] hears otherwise.
pub(crate) async fn initial<B: Bus>(bus: &B) -> Heard {
    let mut heard = Heard::new();
    let read = async {
        let status = bus.kv(STATUS_BUCKET).await.ok()?;
        let entry = status.get(STATUS_BETTING_KEY).await.ok()?;
        heard.status_changed(entry.as_ref().map(|e| e.value.as_ref()));
        let health = bus.kv(GS_HEALTH_BUCKET).await.ok()?;
        let mut beats = health.watch(">").await.ok()?;
        // The watch hands over every live key first; a short pause ends that part.
        while let Ok(Some(change)) =
            tokio::time::timeout(Duration::from_millis(500), beats.next()).await
        {
            heard.heartbeat(change, Instant::now());
        }
        Some(())
    };
    let _ = tokio::time::timeout(INITIAL_READ, read).await;
    heard
}

impl Heard {
    /// What to tell clients now.
    pub(crate) fn now(&mut self) -> Current {
        self.current(Instant::now())
    }
}

/// Watches the status and the heartbeats until shutdown, publishing each change to the sessions.
pub(crate) async fn watch<B: Bus>(
    bus: B,
    mut heard: Heard,
    current: watch::Sender<Current>,
    shutdown: CancellationToken,
) {
    let mut status: Option<KvWatch> = None;
    let mut beats: Option<KvWatch> = None;
    let mut retry_at = Instant::now();
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if (status.is_none() || beats.is_none()) && Instant::now() >= retry_at {
            let watching = tokio::select! {
                () = shutdown.cancelled() => return,
                watching = open_watches(&bus) => watching,
            };
            match watching {
                Ok((s, b)) => {
                    // What was heard stands until the watches replay the current values.
                    status = Some(s);
                    beats = Some(b);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot watch the betting status; retrying");
                    retry_at = Instant::now() + REWATCH_PAUSE;
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = check.tick() => {
                heard.bus_connected = bus.is_connected();
            }
            change = next(&mut status) => match change {
                Some(change) => heard.status_changed(change.value.as_deref()),
                None => {
                    status = None;
                    retry_at = Instant::now() + REWATCH_PAUSE;
                }
            },
            change = next(&mut beats) => match change {
                Some(change) => heard.heartbeat(change, Instant::now()),
                None => {
                    beats = None;
                    retry_at = Instant::now() + REWATCH_PAUSE;
                }
            },
        }
        let next = heard.current(Instant::now());
        current.send_if_modified(|now| {
            if *now == next {
                false
            } else {
                tracing::info!(betting = next.betting.as_str(), reason = %next.reason, "betting status changed");
                *now = next;
                true
            }
        });
    }
}

async fn open_watches<B: Bus>(bus: &B) -> Result<(KvWatch, KvWatch), String> {
    let status = bus.kv(STATUS_BUCKET).await.map_err(|e| e.to_string())?;
    let status = status
        .watch(STATUS_BETTING_KEY)
        .await
        .map_err(|e| e.to_string())?;
    let beats = bus.kv(GS_HEALTH_BUCKET).await.map_err(|e| e.to_string())?;
    let beats = beats.watch(">").await.map_err(|e| e.to_string())?;
    Ok((status, beats))
}

async fn next(watching: &mut Option<KvWatch>) -> Option<KvEvent> {
    match watching {
        Some(feed) => feed.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(key: &str) -> KvEvent {
        KvEvent {
            key: key.into(),
            value: Some(bytes::Bytes::from_static(b"x")),
            revision: 1,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_nobody_alive_keeps_is_not_believed() {
        let mut heard = Heard::new();
        let enabled = Encoding::MsgPack
            .encode(&BettingStatus {
                betting: Betting::Enabled,
                reason: String::new(),
                at: domain::Timestamp::UNIX_EPOCH,
            })
            .expect("encode");
        heard.status_changed(Some(&enabled));
        assert_eq!(
            heard.current(Instant::now()),
            Current::disabled(reason::GS_UNAVAILABLE),
            "no heartbeat: no GS"
        );
        heard.heartbeat(beat("gs-a"), Instant::now());
        assert_eq!(heard.current(Instant::now()).betting, Betting::Enabled);
        tokio::time::advance(STALE).await;
        assert_eq!(
            heard.current(Instant::now()),
            Current::disabled(reason::GS_UNAVAILABLE),
            "a heartbeat that stopped coming"
        );
        heard.heartbeat(beat("gs-b"), Instant::now());
        heard.bus_connected = false;
        assert_eq!(
            heard.current(Instant::now()),
            Current::disabled(reason::BUS_UNAVAILABLE)
        );
        heard.bus_connected = true;
        heard.status_changed(None);
        assert_eq!(
            heard.current(Instant::now()),
            Current::disabled(reason::GS_UNAVAILABLE),
            "a missing key is not a yes"
        );
    }
}

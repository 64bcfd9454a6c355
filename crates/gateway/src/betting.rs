//! Whether bets are taken (`docs/contract/bus.md`, `docs/contract/websocket.md`): GS writes
//! [`BettingStatus`] to key `betting` of the `status` bucket; the gateway reads it before it
//! serves, then watches it and tells every session, which broadcasts `status` to its client and
//! answers bets at once with `BETTING_UNAVAILABLE` while betting is off.
//!
//! A missing or deleted key means no GS has said otherwise: betting is on. A value that does not
//! decode is logged and ignored (the last good status stands).

use std::time::Duration;

use bus::{Bus, Kv};
use futures_util::StreamExt;
use protocol::subject::{STATUS_BETTING_KEY, STATUS_BUCKET};
use protocol::{Betting, BettingStatus, Encoding, StatusMessage};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long start-up waits for the first read of the bucket before assuming betting is on
/// (the watch corrects it as soon as the bus answers).
const INITIAL_READ: Duration = Duration::from_secs(3);
/// Pause before watching again after the watch failed or ended (bus reconnecting).
const REWATCH_PAUSE: Duration = Duration::from_secs(1);

/// The betting status as the gateway knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Current {
    pub betting: Betting,
    pub reason: String,
}

impl Default for Current {
    fn default() -> Self {
        Self {
            betting: Betting::Enabled,
            reason: String::new(),
        }
    }
}

impl Current {
    pub fn to_message(&self) -> StatusMessage {
        StatusMessage {
            betting: self.betting,
            reason: self.reason.clone(),
        }
    }

    fn from_value(value: Option<&[u8]>) -> Option<Self> {
        let Some(bytes) = value else {
            return Some(Self::default());
        };
        match Encoding::MsgPack.decode::<BettingStatus>(bytes) {
            Ok(status) => Some(Self {
                betting: status.betting,
                reason: status.reason,
            }),
            Err(error) => {
                tracing::warn!(%error, "undecodable betting status ignored");
                None
            }
        }
    }
}

/// The status at start-up: the bucket's value, or "enabled" when there is none or the bus does
/// not answer in time.
pub(crate) async fn initial<B: Bus>(bus: &B) -> Current {
    let read = async {
        let kv = bus.kv(STATUS_BUCKET).await.ok()?;
        let entry = kv.get(STATUS_BETTING_KEY).await.ok()?;
        Current::from_value(entry.as_ref().map(|e| e.value.as_ref()))
    };
    tokio::time::timeout(INITIAL_READ, read)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Watches the key until shutdown, publishing each change to the sessions.
pub(crate) async fn watch<B: Bus>(
    bus: B,
    current: watch::Sender<Current>,
    shutdown: CancellationToken,
) {
    loop {
        let watched = async {
            let kv = bus.kv(STATUS_BUCKET).await.map_err(|e| e.to_string())?;
            kv.watch(STATUS_BETTING_KEY)
                .await
                .map_err(|e| e.to_string())
        };
        let watching = tokio::select! {
            () = shutdown.cancelled() => return,
            watching = watched => watching,
        };
        match watching {
            Ok(mut changes) => loop {
                let change = tokio::select! {
                    () = shutdown.cancelled() => return,
                    change = changes.next() => change,
                };
                let Some(change) = change else { break };
                if let Some(next) = Current::from_value(change.value.as_deref()) {
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
            },
            Err(error) => tracing::warn!(%error, "cannot watch the betting status; retrying"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(REWATCH_PAUSE) => {}
        }
    }
}

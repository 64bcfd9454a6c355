//! GS, the game service: accepts bets (debiting wallets), records round transitions, settles
//! each round exactly once, and publishes results through an outbox. Stateless: any number of
//! instances may run; the database decides who settles.
//!
//! Depends on `domain`, `protocol`, the `bus` port and the `store`; never on another service.
//! A service is a library: [`Gs::build`] then [`Gs::run`] until the shutdown token fires.

mod clock;
mod intake;
pub mod ledger;
mod outbox;
pub mod projections;
mod transitions;

use std::time::Duration;

use bus::Bus;
use domain::TableLimits;
use store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// GS settings.
#[derive(Debug, Clone)]
pub struct GsConfig {
    /// Names this instance's cursor on the `TABLES` stream (`gs_cursor.consumer`).
    pub instance: String,
    pub limits: TableLimits,
    /// How long a bet on a round GS has not seen yet waits for the stream to catch up before it
    /// is answered `BETTING_CLOSED`.
    pub catch_up_wait: Duration,
    /// Bets written in one transaction at most (`CROUPIER_BET_BATCH`).
    pub batch_size: usize,
    /// How long the first bet of a batch waits for more before the batch is written
    /// (`CROUPIER_BET_LINGER_MS`).
    pub linger: Duration,
}

impl GsConfig {
    /// Default batching: 256 bets or 2 ms.
    pub const DEFAULT_BATCH_SIZE: usize = 256;
    pub const DEFAULT_LINGER: Duration = Duration::from_millis(2);

    /// Defaults for everything but the instance name.
    pub fn new(instance: impl Into<String>) -> Self {
        Self {
            instance: instance.into(),
            limits: TableLimits::DEFAULT,
            catch_up_wait: Duration::from_secs(1),
            batch_size: Self::DEFAULT_BATCH_SIZE,
            linger: Self::DEFAULT_LINGER,
        }
    }
}

/// A configured GS.
#[derive(Debug)]
pub struct Gs<B> {
    bus: B,
    store: Store,
    config: GsConfig,
}

impl<B: Bus> Gs<B> {
    pub fn build(config: GsConfig, bus: B, store: Store) -> Self {
        Self { bus, store, config }
    }

    /// Serves bets, records transitions, settles and publishes until `shutdown` fires.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), bus::BusError> {
        let requests = self
            .bus
            .serve(
                &protocol::subject::bets_place_wildcard(),
                protocol::subject::GS_QUEUE_GROUP,
            )
            .await?;
        let tasks = TaskTracker::new();
        tasks.spawn(transitions::run(
            self.bus.clone(),
            self.store.clone(),
            self.config.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(outbox::run(
            self.bus.clone(),
            self.store.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(intake::run(
            requests,
            self.store.clone(),
            self.config.clone(),
            shutdown.clone(),
        ));
        announce_betting(&self.bus).await;
        tracing::info!(instance = %self.config.instance, "gs serving bets");
        tasks.close();
        tasks.wait().await;
        tracing::info!("gs stopped");
        Ok(())
    }
}

/// Tells gateways (now and later ones) that bets are taken: `status` bucket, key `betting`.
/// A failure is logged, not fatal: bets are served either way.
async fn announce_betting<B: Bus>(bus: &B) {
    use bus::Kv;
    let status = protocol::BettingStatus {
        betting: protocol::Betting::Enabled,
        reason: String::new(),
        at: clock::now(),
    };
    let result = async {
        let payload = protocol::Encoding::MsgPack
            .encode(&status)
            .map_err(|e| e.to_string())?;
        let kv = bus
            .kv(protocol::subject::STATUS_BUCKET)
            .await
            .map_err(|e| e.to_string())?;
        kv.put(protocol::subject::STATUS_BETTING_KEY, payload)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    if let Err(error) = result {
        tracing::warn!(%error, "betting status not written to the status bucket");
    }
}

//! GS, the game service: accepts bets (debiting wallets), records round transitions, settles
//! each round exactly once, and publishes results through an outbox. Stateless: any number of
//! instances may run; the database decides who settles.
//!
//! Depends on `domain`, `protocol`, the `bus` port and the `store`; never on another service.
//! A service is a library: [`Gs::build`] then [`Gs::run`] until the shutdown token fires.

mod clock;
pub mod health;
mod intake;
pub mod ledger;
mod outbox;
pub mod projections;
mod status;
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
    /// How long the first bet of a batch waits for more before the batch is written, while
    /// another batch is in flight; with none in flight a batch is written at once
    /// (`CROUPIER_BET_LINGER_MS`, ADR 0034).
    pub linger: Duration,
    /// How the store's health is judged (degraded mode, ADR 0020).
    pub health: health::HealthConfig,
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
            health: health::HealthConfig::default(),
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
    ///
    /// Betting is served only while the store is healthy and the transitions have caught up
    /// ([`status`], ADR 0020): the intake joins the bet queue group then, and leaves it when
    /// the store turns unhealthy.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), bus::BusError> {
        let health = health::Health::new(self.config.health);
        let (caught_up, caught_up_rx) = tokio::sync::watch::channel(false);
        let (serving, serving_rx) = tokio::sync::watch::channel(false);
        let (switched_off, switched_off_rx) =
            tokio::sync::watch::channel(std::collections::BTreeSet::new());
        let tasks = TaskTracker::new();
        tasks.spawn(health::run(
            health.clone(),
            self.store.pg_config().clone(),
            shutdown.clone(),
        ));
        tasks.spawn(transitions::run(
            self.bus.clone(),
            self.store.clone(),
            self.config.clone(),
            transitions::Progress {
                health: health.clone(),
                caught_up,
            },
            shutdown.clone(),
        ));
        tasks.spawn(outbox::run(
            self.bus.clone(),
            self.store.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(intake::run(
            self.bus.clone(),
            self.store.clone(),
            self.config.clone(),
            health.clone(),
            serving_rx,
            switched_off_rx,
            shutdown.clone(),
        ));
        tasks.spawn(status::run(
            self.bus.clone(),
            self.config.instance.clone(),
            health,
            caught_up_rx,
            serving,
            switched_off,
            shutdown.clone(),
        ));
        tracing::info!(instance = %self.config.instance, "gs started");
        tasks.close();
        tasks.wait().await;
        tracing::info!("gs stopped");
        Ok(())
    }
}

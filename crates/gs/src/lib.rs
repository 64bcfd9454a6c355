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
            .serve("bets.place.*", protocol::subject::GS_QUEUE_GROUP)
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
        tracing::info!(instance = %self.config.instance, "gs serving bets");
        tasks.close();
        tasks.wait().await;
        tracing::info!("gs stopped");
        Ok(())
    }
}

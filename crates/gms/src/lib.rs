//! GMS, the game management service: runs each table's round state machine on a timer and
//! publishes every transition to the bus (`table.<t>.round` on stream `TABLES`, DESIGN §4–§5).
//! It knows nothing of bets or clients: it only emits.
//!
//! Depends on `domain`, `protocol` and the `bus` port; never on another service or an adapter.
//! A service is a library: [`Gms::build`] validates, [`Gms::run`] drives every configured table
//! until the shutdown token fires.

mod seeds;
mod table;

use std::sync::Arc;
use std::time::Duration;

use bus::Bus;
use domain::TableId;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use seeds::{SeedSecret, SeedSecretError};

/// GMS settings.
#[derive(Debug, Clone)]
pub struct GmsConfig {
    pub tables: Vec<TableId>,
    /// How long a round takes bets.
    pub betting: Duration,
    /// Between the close of betting and the outcome.
    pub result: Duration,
    /// Between the outcome and the next round's opening.
    pub pause: Duration,
    pub seed_secret: SeedSecret,
}

/// A configured GMS, ready to run.
#[derive(Debug)]
pub struct Gms<B> {
    bus: B,
    config: Arc<GmsConfig>,
}

impl<B: Bus> Gms<B> {
    pub fn build(config: GmsConfig, bus: B) -> Self {
        if !config.seed_secret.is_persistent() {
            tracing::warn!(
                "no CROUPIER_SEED_SECRET: seeds of rounds in progress cannot be recovered after a \
                 crash, so such rounds will be voided"
            );
        }
        Self {
            bus,
            config: Arc::new(config),
        }
    }

    /// Drives every table until `shutdown` fires. A table whose bus calls fail retries after a
    /// short pause; the others go on.
    pub async fn run(self, shutdown: CancellationToken) {
        let tasks = TaskTracker::new();
        for table in &self.config.tables {
            tasks.spawn(table::run(
                self.bus.clone(),
                self.config.clone(),
                table.clone(),
                shutdown.clone(),
            ));
        }
        tasks.close();
        tasks.wait().await;
        tracing::info!("gms stopped");
    }
}

//! GMS, the game management service: runs each table's round state machine on a timer and
//! publishes every transition to the bus (`table.<t>.round` on stream `TABLES`,
//! `docs/contract/events.md`, `docs/contract/bus.md`).
//! It knows nothing of bets or clients: it only emits.
//!
//! Depends on `domain`, `protocol` and the `bus` port; never on another service or an adapter.
//! A service is a library: [`Gms::build`] validates, [`Gms::run`] drives every configured table
//! until the shutdown token fires.
//!
//! Any number of GMS may run: each table is driven by the one holding its lease in
//! `gms_leases` (`lease`), the others stand by and take over when it lapses or is released
//! (ADR 0009). A driver (`table`) resumes from the table's last stored transition, so a
//! takeover continues with the next phase; its publishes under the expected sequence keep a
//! stale leader from forking the table whatever the leases say.
//!
//! Metrics, here: `gms_leading{table}` (1 while this process leads the table, 0 while it stands
//! by; a table no process reports 1 for has no leader) and `gms_leader_changes_total{table}`
//! (leases this process took). The rounds and their timing are in `table`'s.

mod lease;
mod seeds;
mod table;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bus::{Bus, BusError};
use domain::TableId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use lease::{LeaseConfig, LeaseRecord};
pub use seeds::{SeedSecret, SeedSecretError};

/// Pause before asking again for the leases bucket when the bus cannot open it.
const BUCKET_RETRY: Duration = Duration::from_secs(1);

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
    /// Leadership of each table (ADR 0009).
    pub lease: LeaseConfig,
}

/// A configured GMS, ready to run.
#[derive(Debug)]
pub struct Gms<B> {
    bus: B,
    config: Arc<GmsConfig>,
    leading: watch::Sender<BTreeSet<TableId>>,
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
            leading: watch::channel(BTreeSet::new()).0,
        }
    }

    /// The tables this GMS leads right now; changes as leases are taken and lost.
    pub fn leading(&self) -> watch::Receiver<BTreeSet<TableId>> {
        self.leading.subscribe()
    }

    /// Stands by for every table's lease and drives the tables it leads, until `shutdown`
    /// fires; then stops driving and releases its leases so that a standby takes over at once.
    pub async fn run(self, shutdown: CancellationToken) {
        // Exported from the start, at 0, so that a rise is seen as one (and a dashboard finds
        // the series before the first conflict).
        metrics::counter!("gms_publish_conflicts_total").increment(0);
        metrics::counter!("gms_publish_retries_total").increment(0);
        for table in &self.config.tables {
            metrics::gauge!("gms_leading", "table" => table.to_string()).set(0.0);
            metrics::counter!("gms_leader_changes_total", "table" => table.to_string())
                .increment(0);
        }
        let Some(kv) = self.leases(&shutdown).await else {
            return;
        };
        let tasks = TaskTracker::new();
        for table in &self.config.tables {
            tasks.spawn(lead(
                self.bus.clone(),
                kv.clone(),
                self.config.clone(),
                table.clone(),
                self.leading.clone(),
                shutdown.clone(),
            ));
        }
        tasks.close();
        tasks.wait().await;
        tracing::info!("gms stopped");
    }

    async fn leases(&self, shutdown: &CancellationToken) -> Option<B::Kv> {
        loop {
            match self.bus.kv(protocol::subject::GMS_LEASES_BUCKET).await {
                Ok(kv) => return Some(kv),
                Err(error) => {
                    let error: BusError = error;
                    tracing::warn!(%error, "cannot open the leases bucket; retrying");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(BUCKET_RETRY) => {}
            }
        }
    }
}

/// One table: stand by until its lease is ours, drive it while the lease holds, and go back to
/// standing by when the lease is lost or another writer advances the table.
async fn lead<B: Bus>(
    bus: B,
    kv: B::Kv,
    config: Arc<GmsConfig>,
    table: TableId,
    leading: watch::Sender<BTreeSet<TableId>>,
    shutdown: CancellationToken,
) {
    let mut lease = lease::Lease::new(kv, &table, config.lease.clone());
    let gauge = metrics::gauge!("gms_leading", "table" => table.to_string());
    loop {
        let Some((mut revision, sent)) = lease.acquire(&shutdown).await else {
            return;
        };
        let since = table::now();
        tracing::info!(%table, instance = %config.lease.instance, "leading the table");
        metrics::counter!("gms_leader_changes_total", "table" => table.to_string()).increment(1);
        gauge.set(1.0);
        leading.send_modify(|tables| {
            tables.insert(table.clone());
        });
        let mut sent = sent;
        let released = loop {
            // Dropping the driver when the lease is lost stops it at once, even mid-publish:
            // a publish it had sent is safe under the expected sequence.
            let ended = tokio::select! {
                ended = table::run(bus.clone(), config.clone(), table.clone(), shutdown.clone()) => Ok(ended),
                ended = lease.hold(&mut revision, sent, since, &shutdown) => Err(ended),
            };
            match ended {
                Ok(table::Ended::Stopped) | Err(lease::Ended::Stopped) => break true,
                Err(lease::Ended::Lost(reason)) => {
                    tracing::warn!(%table, reason, "lease lost; standing by");
                    break false;
                }
                Ok(table::Ended::Superseded) => {
                    // Someone else advanced the table: go on only if the lease is still ours
                    // (then it was a late write of a former leader), reading the table afresh.
                    let check = tokio::time::Instant::now();
                    if lease.confirm(&mut revision, since).await {
                        sent = check;
                        continue;
                    }
                    tracing::warn!(%table, "superseded and the lease is gone; standing by");
                    break false;
                }
            }
        };
        gauge.set(0.0);
        leading.send_modify(|tables| {
            tables.remove(&table);
        });
        if released {
            lease.release(revision, since).await;
            return;
        }
    }
}

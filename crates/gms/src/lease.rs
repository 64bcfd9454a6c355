//! Leadership of one table through the `gms_leases` bucket (ADR 0009): one key per table, taken
//! and renewed with compare-and-set on the revision, released on graceful shutdown.
//!
//! Leases give liveness (one GMS drives a table, a standby takes over within a TTL); safety
//! does not rest on them: every transition is published under the expected last sequence of the
//! table's subject, so a leader that believes in a lease it lost cannot fork the table.
//!
//! A lease is live while its revision keeps changing. A standby takes it when it is absent
//! (never taken, or expired by the bucket's `max_age`), released, or unchanged for the TTL the
//! holder wrote into it, measured on the standby's own monotonic clock from when it first saw
//! that revision. The holder stops driving the table when it has not renewed within that TTL,
//! measured from before its last successful renewal was sent, so the two never overlap.

use std::time::Duration;

use bus::{Kv, KvError};
use domain::{TableId, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a lease key holds: who leads the table, for how long without a renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The GMS instance leading the table; `None` once it released the lease.
    pub owner: Option<String>,
    /// The leader's process id, for operators.
    pub pid: u32,
    /// When this leader took the table.
    pub since: Timestamp,
    /// How long the lease lasts without a renewal.
    pub ttl_ms: u64,
}

impl LeaseRecord {
    /// Reads a lease value (JSON, so that `nats kv get` shows it).
    pub fn decode(value: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(value)
    }

    fn encode(&self) -> bytes::Bytes {
        // A struct of strings and integers always serializes.
        serde_json::to_vec(self).map_or_else(|_| bytes::Bytes::new(), bytes::Bytes::from)
    }
}

/// Lease settings of one GMS.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// This process's identity in lease records (unique per process).
    pub instance: String,
    /// How long a lease lasts without renewal. At most the bucket's `max_age` (which expires a
    /// lease nobody watches); shorter makes takeovers faster.
    pub ttl: Duration,
    /// How often the leader renews (well inside the TTL: TTL/3 by default).
    pub renew: Duration,
    /// How often a standby looks at a lease it does not hold.
    pub poll: Duration,
}

impl LeaseConfig {
    /// Renew at TTL/3 and poll at TTL/6, for a unique instance id.
    pub fn with_ttl(ttl: Duration) -> Self {
        Self {
            instance: format!("gms-{}", uuid::Uuid::new_v4().simple()),
            ttl,
            renew: ttl / 3,
            poll: ttl / 6,
        }
    }

    /// The default TTL: the `max_age` of the `gms_leases` bucket in `ops/nats/definitions`.
    pub fn default_ttl() -> Duration {
        bus::Definitions::croupier()
            .buckets
            .into_iter()
            .find(|b| b.name == protocol::subject::GMS_LEASES_BUCKET)
            .map(|b| b.max_age)
            .filter(|ttl| !ttl.is_zero())
            .unwrap_or(Duration::from_secs(6))
    }

    /// The holder gives up this much before its TTL runs out: a margin for clocks that run at
    /// slightly different rates and for the time a cancelled publish takes to stop.
    fn holder_margin(&self) -> Duration {
        self.ttl / 10
    }
}

/// What ended a lease held by this GMS.
#[derive(Debug)]
pub(crate) enum Ended {
    /// Shutdown: the lease is still ours (unless a renewal was cut short).
    Stopped,
    /// Someone else holds it now, or it could not be renewed in time.
    Lost(&'static str),
}

/// One table's lease as seen by one GMS.
pub(crate) struct Lease<K> {
    kv: K,
    key: String,
    config: LeaseConfig,
    /// A revision held by someone else and when this GMS first saw it.
    observed: Option<(u64, Instant)>,
}

impl<K: Kv> Lease<K> {
    pub(crate) fn new(kv: K, table: &TableId, config: LeaseConfig) -> Self {
        Self {
            kv,
            key: table.to_string(),
            config,
            observed: None,
        }
    }

    fn record(&self, owner: bool, since: Timestamp) -> LeaseRecord {
        LeaseRecord {
            owner: owner.then(|| self.config.instance.clone()),
            pid: std::process::id(),
            since,
            ttl_ms: u64::try_from(self.config.ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Waits until this GMS holds the lease; `None` when `shutdown` fires first. Returns the
    /// revision written and when the write was sent (the start of its TTL).
    pub(crate) async fn acquire(&mut self, shutdown: &CancellationToken) -> Option<(u64, Instant)> {
        loop {
            if let Some(acquired) = self.try_acquire().await {
                self.observed = None;
                return Some(acquired);
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(self.config.poll) => {}
            }
        }
    }

    async fn try_acquire(&mut self) -> Option<(u64, Instant)> {
        let since = crate::table::now();
        let sent = Instant::now();
        let entry = match self.kv.get(&self.key).await {
            Ok(entry) => entry,
            Err(error) => {
                tracing::debug!(key = %self.key, %error, "lease not readable");
                return None;
            }
        };
        let mine = self.record(true, since).encode();
        let written = match entry {
            None => self.kv.create(&self.key, mine).await,
            Some(entry) => {
                if !self.takeable(&entry) {
                    return None;
                }
                self.kv.update(&self.key, mine, entry.revision).await
            }
        };
        match written {
            Ok(revision) => Some((revision, sent)),
            Err(KvError::AlreadyExists | KvError::WrongRevision) => None,
            Err(error) => {
                tracing::debug!(key = %self.key, %error, "lease not taken");
                None
            }
        }
    }

    /// Whether a present lease value may be taken over.
    fn takeable(&mut self, entry: &bus::KvEntry) -> bool {
        let ttl = match LeaseRecord::decode(&entry.value) {
            Ok(record) => match record.owner {
                None => return true,
                // Ours from before a lost renewal: nobody took it since, so going on is safe.
                Some(owner) if owner == self.config.instance => return true,
                Some(_) => Duration::from_millis(record.ttl_ms),
            },
            // Unreadable: honour it for our own TTL, then take it.
            Err(_) => self.config.ttl,
        };
        match self.observed {
            Some((revision, first_seen)) if revision == entry.revision => {
                first_seen.elapsed() >= ttl
            }
            _ => {
                self.observed = Some((entry.revision, Instant::now()));
                false
            }
        }
    }

    /// Renews the lease every `renew` until shutdown, or until it is lost (taken, or not renewed
    /// within the TTL). `revision` follows every renewal.
    pub(crate) async fn hold(
        &self,
        revision: &mut u64,
        sent: Instant,
        since: Timestamp,
        shutdown: &CancellationToken,
    ) -> Ended {
        let lifetime = self.config.ttl.saturating_sub(self.config.holder_margin());
        let mut valid_until = sent + lifetime;
        let mine = self.record(true, since).encode();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ended::Stopped,
                () = tokio::time::sleep(self.config.renew) => {}
            }
            loop {
                let sent = Instant::now();
                let Some(remaining) = valid_until.checked_duration_since(sent) else {
                    return Ended::Lost("not renewed within its TTL");
                };
                let renewed = tokio::select! {
                    () = shutdown.cancelled() => return Ended::Stopped,
                    renewed = tokio::time::timeout(
                        remaining,
                        self.kv.update(&self.key, mine.clone(), *revision),
                    ) => renewed,
                };
                match renewed {
                    Ok(Ok(new_revision)) => {
                        *revision = new_revision;
                        valid_until = sent + lifetime;
                        break;
                    }
                    Ok(Err(KvError::WrongRevision | KvError::AlreadyExists)) => {
                        return Ended::Lost("taken by another GMS");
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(key = %self.key, %error, "lease renewal failed; retrying");
                        let pause = (self.config.renew / 4).min(remaining);
                        tokio::select! {
                            () = shutdown.cancelled() => return Ended::Stopped,
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                    Err(_elapsed) => return Ended::Lost("not renewed within its TTL"),
                }
            }
        }
    }

    /// Renews once, at once: whether this GMS still holds the lease.
    pub(crate) async fn confirm(&self, revision: &mut u64, since: Timestamp) -> bool {
        let mine = self.record(true, since).encode();
        let attempt = tokio::time::timeout(
            self.config.renew,
            self.kv.update(&self.key, mine, *revision),
        )
        .await;
        match attempt {
            Ok(Ok(new_revision)) => {
                *revision = new_revision;
                true
            }
            _ => false,
        }
    }

    /// Hands the lease over on shutdown: a standby takes a released lease at its next look
    /// instead of waiting out the TTL. Compare-and-set, so a lease already lost is left alone.
    pub(crate) async fn release(&self, revision: u64, since: Timestamp) {
        let released = self.record(false, since).encode();
        let attempt = tokio::time::timeout(
            RELEASE_DEADLINE,
            self.kv.update(&self.key, released, revision),
        )
        .await;
        match attempt {
            Ok(Ok(_)) => tracing::info!(key = %self.key, "lease released"),
            Ok(Err(error)) => tracing::info!(key = %self.key, %error, "lease not released"),
            Err(_) => tracing::info!(key = %self.key, "lease release timed out; it will expire"),
        }
    }
}

/// How long shutdown waits to release a lease before leaving it to expire.
const RELEASE_DEADLINE: Duration = Duration::from_secs(1);

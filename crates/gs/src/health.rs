//! Is the event store healthy? (ADR 0020.) Three kinds of evidence, judged every
//! [`TICK`] with hysteresis:
//!
//! - **a probe on a timer**, on a connection of its own, with a deadline: it takes the head
//!   row's lock the way an append does, under a short `lock_timeout`, so it notices a database
//!   that still answers `SELECT 1` while its event store is blocked. Refused or hung
//!   (no answer within the deadline) is `Unavailable`; the lock not had in time is `Slow`;
//! - **real work in flight**: an append (pool wait included) or a settlement still running past
//!   its threshold counts as `Slow` at once, without waiting for it to finish;
//! - **real work that failed** on the database counts until a probe started after it succeeds:
//!   as `Slow` when the server cancelled a statement or a lock wait (it answers), as
//!   `Unavailable` when the connection was refused, broke or did not answer.
//!
//! The store turns unhealthy after the evidence has been bad for `off_after` without a break,
//! and healthy again after it has been good for `on_after`: no flapping on one slow answer.
//! While one of this GS's settlements is in flight and within its own threshold, a lock wait
//! (the probe's or an append's) is put down to it: a 100k-bet settlement holds the head row
//! for a while on a healthy database.
//!
//! Metrics: `gs_store_healthy` (1/0), `gs_store_health_switches_total{to}`,
//! `gs_store_probe_seconds`, `gs_store_probe_failures_total{kind}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the evidence is judged.
pub const TICK: Duration = Duration::from_millis(100);

/// Detection settings (`CROUPIER_DB_*`, `croupier run --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// Pause between two probes.
    pub probe_every: Duration,
    /// A probe not answered within this is a hung database. Its `lock_timeout` on the head
    /// row is half of it, so a lock wait is told from a hung server even on a busy machine.
    pub probe_timeout: Duration,
    /// An append (pool wait included) still in flight past this counts as slow.
    pub slow_after: Duration,
    /// A settlement still in flight past this counts as slow.
    pub settle_slow_after: Duration,
    /// Bad evidence without a break for this long turns the store unhealthy.
    pub off_after: Duration,
    /// Good evidence without a break for this long turns it healthy again.
    pub on_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            probe_every: Duration::from_millis(250),
            probe_timeout: Duration::from_millis(1000),
            slow_after: Duration::from_millis(1000),
            settle_slow_after: Duration::from_secs(15),
            off_after: Duration::from_millis(500),
            on_after: Duration::from_millis(2000),
        }
    }
}

/// The store's health after hysteresis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreHealth {
    Healthy,
    Slow,
    Unavailable,
}

impl StoreHealth {
    /// `"healthy"`, or the betting-status reason it stands for.
    pub const fn code(self) -> &'static str {
        match self {
            StoreHealth::Healthy => protocol::GsHeartbeat::HEALTHY,
            StoreHealth::Slow => protocol::status::reason::STORE_SLOW,
            StoreHealth::Unavailable => protocol::status::reason::STORE_UNAVAILABLE,
        }
    }

    /// The worse of two bad verdicts: unreachable outranks slow.
    fn worst(self, other: StoreHealth) -> StoreHealth {
        if self == StoreHealth::Unavailable || other == StoreHealth::Unavailable {
            StoreHealth::Unavailable
        } else if self == StoreHealth::Slow || other == StoreHealth::Slow {
            StoreHealth::Slow
        } else {
            StoreHealth::Healthy
        }
    }
}

/// What real work is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// A batch of bets (or another short write), from the wait for a pooled connection on.
    Append,
    /// A round's settlement or refund.
    Settle,
}

/// The health of this GS's store: cheap to clone, shared by the tasks that write.
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: HealthConfig,
    evidence: Mutex<Evidence>,
    verdict: watch::Sender<StoreHealth>,
}

#[derive(Debug, Default)]
struct Evidence {
    next_op: u64,
    ops: HashMap<u64, (Instant, OpKind)>,
    /// When real work last failed on the database, and what that says of it.
    failed: Option<(Instant, StoreHealth)>,
    /// The probe running now, since when.
    probing_since: Option<Instant>,
    /// The last probe that finished: when it started, and what it found.
    last_probe: Option<(Instant, Result<(), StoreHealth>)>,
}

/// Unregisters a piece of work when dropped.
#[derive(Debug)]
pub struct OpGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for OpGuard {
    fn drop(&mut self) {
        lock(&self.inner.evidence).ops.remove(&self.id);
    }
}

fn lock(evidence: &Mutex<Evidence>) -> std::sync::MutexGuard<'_, Evidence> {
    evidence.lock().unwrap_or_else(|e| e.into_inner())
}

impl Health {
    /// A store presumed healthy until the evidence says otherwise.
    pub fn new(config: HealthConfig) -> Self {
        let (verdict, _) = watch::channel(StoreHealth::Healthy);
        metrics::gauge!("gs_store_healthy").set(1.0);
        Self {
            inner: Arc::new(Inner {
                config,
                evidence: Mutex::new(Evidence::default()),
                verdict,
            }),
        }
    }

    pub fn config(&self) -> &HealthConfig {
        &self.inner.config
    }

    /// Registers work that has started; it counts as in flight until the guard is dropped.
    pub fn begin(&self, kind: OpKind) -> OpGuard {
        let mut evidence = lock(&self.inner.evidence);
        let id = evidence.next_op;
        evidence.next_op += 1;
        evidence.ops.insert(id, (Instant::now(), kind));
        OpGuard {
            inner: self.inner.clone(),
            id,
        }
    }

    /// Real work found the database unavailable.
    pub fn report_unavailable(&self) {
        self.report_found(StoreHealth::Unavailable);
    }

    /// Real work failed with `error`: the server cancelling a statement or a lock wait is a
    /// slow store (it answers); anything else that makes the store unavailable (refused,
    /// broken, no answer) is an unavailable one. Other errors say nothing of the store.
    pub fn report(&self, error: &store::StoreError) {
        use tokio_postgres::error::SqlState;
        if !error.is_unavailable() {
            return;
        }
        let slow = error.sql_state().is_some_and(|code| {
            *code == SqlState::QUERY_CANCELED || *code == SqlState::LOCK_NOT_AVAILABLE
        });
        self.report_found(if slow {
            StoreHealth::Slow
        } else {
            StoreHealth::Unavailable
        });
    }

    fn report_found(&self, found: StoreHealth) {
        let mut evidence = lock(&self.inner.evidence);
        let now = Instant::now();
        evidence.failed = Some(match evidence.failed {
            // Within one failure spell, the worst finding stands.
            Some((_, before)) => (now, before.worst(found)),
            None => (now, found),
        });
    }

    /// The verdict now.
    pub fn current(&self) -> StoreHealth {
        *self.inner.verdict.borrow()
    }

    /// The verdict, as it changes.
    pub fn subscribe(&self) -> watch::Receiver<StoreHealth> {
        self.inner.verdict.subscribe()
    }

    /// Resolves once the verdict is anything but healthy (at once if it is already).
    pub async fn unhealthy(&self) {
        let mut verdict = self.subscribe();
        let _ = verdict.wait_for(|v| *v != StoreHealth::Healthy).await;
    }

    /// What the evidence says at `now`, before hysteresis: `None` when it is good; else the
    /// verdict and, for an unreachable store, since when it has been shown unreachable (the
    /// start of the probe that was refused or hung, the failed work's time): that evidence
    /// covers the time it took to get, so it does not wait out `off_after` again.
    fn signal(&self, now: Instant) -> Option<(StoreHealth, Option<Instant>)> {
        let config = &self.inner.config;
        let evidence = lock(&self.inner.evidence);
        let settling = evidence
            .ops
            .values()
            .any(|(at, kind)| *kind == OpKind::Settle && now - *at < config.settle_slow_after);
        let mut bad = StoreHealth::Healthy;
        let mut unreachable_since: Option<Instant> = None;
        let mut unreachable = |since: Instant| {
            unreachable_since = Some(unreachable_since.map_or(since, |s: Instant| s.min(since)));
        };
        if let Some(since) = evidence
            .probing_since
            .filter(|since| now - *since >= config.probe_timeout)
        {
            bad = bad.worst(StoreHealth::Unavailable);
            unreachable(since);
        }
        if let Some((started, Err(found))) = evidence.last_probe {
            if !(found == StoreHealth::Slow && settling) {
                bad = bad.worst(found);
                if found == StoreHealth::Unavailable {
                    unreachable(started);
                }
            }
        }
        if let Some((failed, found)) = evidence.failed {
            let probed_since =
                matches!(evidence.last_probe, Some((started, Ok(()))) if started > failed);
            if !probed_since {
                bad = bad.worst(found);
                if found == StoreHealth::Unavailable {
                    unreachable(failed);
                }
            }
        }
        for (at, kind) in evidence.ops.values() {
            let late = match kind {
                OpKind::Append => !settling && now - *at >= config.slow_after,
                OpKind::Settle => now - *at >= config.settle_slow_after,
            };
            if late {
                bad = bad.worst(StoreHealth::Slow);
            }
        }
        (bad != StoreHealth::Healthy).then_some((bad, unreachable_since))
    }

    fn probe_started(&self, at: Instant) {
        lock(&self.inner.evidence).probing_since = Some(at);
    }

    fn probe_finished(&self, started: Instant, result: Result<(), StoreHealth>) {
        let mut evidence = lock(&self.inner.evidence);
        evidence.probing_since = None;
        // A probe that started after a failure and succeeded clears it for good (a later
        // failed probe must not bring it back).
        if result.is_ok() && evidence.failed.is_some_and(|(at, _)| at < started) {
            evidence.failed = None;
        }
        evidence.last_probe = Some((started, result));
    }

    fn set(&self, verdict: StoreHealth) {
        self.inner.verdict.send_replace(verdict);
    }
}

/// Hysteresis over the raw signal.
#[derive(Debug)]
struct Judge {
    state: StoreHealth,
    bad_since: Option<Instant>,
    good_since: Option<Instant>,
}

impl Judge {
    /// The new verdict when it changes.
    fn step(
        &mut self,
        config: &HealthConfig,
        now: Instant,
        signal: Option<(StoreHealth, Option<Instant>)>,
    ) -> Option<StoreHealth> {
        match signal {
            Some((bad, unreachable_since)) => {
                self.good_since = None;
                let mut since = *self.bad_since.get_or_insert(now);
                if let Some(earlier) = unreachable_since.filter(|e| *e < since) {
                    since = earlier;
                    self.bad_since = Some(earlier);
                }
                let switch = if self.state == StoreHealth::Healthy {
                    now - since >= config.off_after
                } else {
                    // Only a worse reason is said while unhealthy: no churn between the two.
                    self.state != bad && bad.worst(self.state) == bad
                };
                if switch {
                    self.state = bad;
                    return Some(bad);
                }
            }
            None => {
                self.bad_since = None;
                let since = *self.good_since.get_or_insert(now);
                if self.state != StoreHealth::Healthy && now - since >= config.on_after {
                    self.state = StoreHealth::Healthy;
                    return Some(StoreHealth::Healthy);
                }
            }
        }
        None
    }
}

/// Probes the database and judges the evidence until shutdown.
pub(crate) async fn run(health: Health, pg: tokio_postgres::Config, shutdown: CancellationToken) {
    let prober = probe_loop(health.clone(), pg, shutdown.clone());
    let judge = judge_loop(health, shutdown);
    tokio::join!(prober, judge);
}

async fn judge_loop(health: Health, shutdown: CancellationToken) {
    let mut judge = Judge {
        state: StoreHealth::Healthy,
        bad_since: None,
        good_since: None,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let signal = health.signal(now);
        if let Some(verdict) = judge.step(health.config(), now, signal) {
            match verdict {
                StoreHealth::Healthy => tracing::info!("the event store is healthy again"),
                bad => tracing::warn!(reason = bad.code(), "the event store is unhealthy"),
            }
            metrics::counter!("gs_store_health_switches_total", "to" => verdict.code())
                .increment(1);
            metrics::gauge!("gs_store_healthy")
                .set(f64::from(u8::from(verdict == StoreHealth::Healthy)));
            health.set(verdict);
        }
    }
}

async fn probe_loop(health: Health, pg: tokio_postgres::Config, shutdown: CancellationToken) {
    let config = *health.config();
    let lock_timeout_ms = (config.probe_timeout.as_millis() / 2).max(1);
    let query = format!(
        "SET LOCAL lock_timeout = '{lock_timeout_ms}ms'; \
         SELECT position FROM public.event_head WHERE id FOR UPDATE"
    );
    let mut client: Option<ProbeConnection> = None;
    loop {
        let started = Instant::now();
        health.probe_started(started);
        let probe = probe_once(&mut client, &pg, &query);
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = tokio::time::timeout(config.probe_timeout, probe) => result,
        };
        let result = match result {
            Ok(result) => result,
            Err(_) => {
                // Hung: drop the connection; the next probe connects afresh.
                client = None;
                Err(StoreHealth::Unavailable)
            }
        };
        metrics::histogram!("gs_store_probe_seconds").record(started.elapsed());
        if let Err(found) = result {
            metrics::counter!("gs_store_probe_failures_total", "kind" => found.code()).increment(1);
        }
        health.probe_finished(started, result);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(config.probe_every) => {}
        }
    }
}

/// The probe's own connection: the client, and the task driving it, aborted with it (as the
/// store's tailer does), so a connection dropped because it hung ends at once.
struct ProbeConnection {
    client: tokio_postgres::Client,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for ProbeConnection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// One probe on the probe's own connection (made when missing).
async fn probe_once(
    connection: &mut Option<ProbeConnection>,
    pg: &tokio_postgres::Config,
    query: &str,
) -> Result<(), StoreHealth> {
    if connection.as_ref().is_none_or(|c| c.client.is_closed()) {
        let (client, driver) = pg.connect(tokio_postgres::NoTls).await.map_err(|error| {
            tracing::debug!(%error, "store probe: cannot connect");
            StoreHealth::Unavailable
        })?;
        let driver = tokio::spawn(async move {
            let _ = driver.await;
        });
        *connection = Some(ProbeConnection { client, driver });
    }
    let Some(connected) = connection.as_ref() else {
        return Err(StoreHealth::Unavailable);
    };
    match connected.client.simple_query(query).await {
        Ok(_) => Ok(()),
        Err(error) => {
            let slow = error
                .code()
                .is_some_and(|c| *c == tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE);
            tracing::debug!(%error, code = ?error.code(), "store probe failed");
            if slow {
                Err(StoreHealth::Slow)
            } else {
                *connection = None;
                Err(StoreHealth::Unavailable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> HealthConfig {
        HealthConfig {
            off_after: Duration::from_millis(500),
            on_after: Duration::from_millis(2000),
            ..HealthConfig::default()
        }
    }

    #[test]
    fn one_bad_moment_does_not_switch_and_sustained_bad_does() {
        let config = config();
        let t0 = Instant::now();
        let mut judge = Judge {
            state: StoreHealth::Healthy,
            bad_since: None,
            good_since: None,
        };
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(
            judge.step(&config, ms(0), Some((StoreHealth::Slow, None))),
            None
        );
        assert_eq!(
            judge.step(&config, ms(400), Some((StoreHealth::Slow, None))),
            None
        );
        assert_eq!(judge.step(&config, ms(450), None), None, "a break resets");
        assert_eq!(
            judge.step(&config, ms(500), Some((StoreHealth::Slow, None))),
            None
        );
        assert_eq!(
            judge.step(&config, ms(1000), Some((StoreHealth::Slow, None))),
            Some(StoreHealth::Slow)
        );
        assert_eq!(
            judge.step(&config, ms(1100), Some((StoreHealth::Unavailable, None))),
            Some(StoreHealth::Unavailable),
            "a worse reason is said at once"
        );
        assert_eq!(judge.step(&config, ms(1200), None), None);
        assert_eq!(judge.step(&config, ms(3000), None), None);
        assert_eq!(
            judge.step(&config, ms(3100), Some((StoreHealth::Slow, None))),
            None
        );
        assert_eq!(
            judge.step(&config, ms(3200), None),
            None,
            "good again from 3200"
        );
        assert_eq!(
            judge.step(&config, ms(5200), None),
            Some(StoreHealth::Healthy)
        );
    }

    #[test]
    fn unreachable_evidence_counts_from_when_it_began() {
        let config = config();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut judge = Judge {
            state: StoreHealth::Healthy,
            bad_since: None,
            good_since: None,
        };
        // A probe that started at 0 is found hung at 1000: the store has not answered for a
        // second already, more than off_after.
        assert_eq!(
            judge.step(
                &config,
                ms(1000),
                Some((StoreHealth::Unavailable, Some(ms(0))))
            ),
            Some(StoreHealth::Unavailable)
        );
        // Slowness is not back-dated: it needs off_after of its own.
        let mut judge = Judge {
            state: StoreHealth::Healthy,
            bad_since: None,
            good_since: None,
        };
        assert_eq!(
            judge.step(&config, ms(1000), Some((StoreHealth::Slow, None))),
            None
        );
        assert_eq!(
            judge.step(&config, ms(1500), Some((StoreHealth::Slow, None))),
            Some(StoreHealth::Slow)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn work_in_flight_past_its_threshold_is_slow_and_a_settlement_excuses_lock_waits() {
        let health = Health::new(config());
        let append = health.begin(OpKind::Append);
        assert_eq!(health.signal(Instant::now()).map(|(v, _)| v), None);
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(
            health.signal(Instant::now()).map(|(v, _)| v),
            Some(StoreHealth::Slow)
        );
        let settle = health.begin(OpKind::Settle);
        assert_eq!(
            health.signal(Instant::now()).map(|(v, _)| v),
            None,
            "an append waiting behind our own settlement is not slowness"
        );
        health.probe_finished(Instant::now(), Err(StoreHealth::Slow));
        assert_eq!(health.signal(Instant::now()).map(|(v, _)| v), None);
        tokio::time::advance(Duration::from_secs(15)).await;
        assert_eq!(
            health.signal(Instant::now()).map(|(v, _)| v),
            Some(StoreHealth::Slow)
        );
        drop(settle);
        drop(append);
        health.probe_finished(Instant::now(), Ok(()));
        assert_eq!(health.signal(Instant::now()).map(|(v, _)| v), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_counts_until_a_later_probe_succeeds_and_a_hung_probe_is_unavailable() {
        let health = Health::new(config());
        let before = Instant::now();
        tokio::time::advance(Duration::from_millis(10)).await;
        health.report_unavailable();
        health.probe_finished(before, Ok(()));
        assert_eq!(
            health.signal(Instant::now()).map(|(v, _)| v),
            Some(StoreHealth::Unavailable),
            "a probe that started before the failure proves nothing"
        );
        tokio::time::advance(Duration::from_millis(10)).await;
        health.probe_finished(Instant::now(), Ok(()));
        assert_eq!(health.signal(Instant::now()).map(|(v, _)| v), None);
        health.probe_finished(Instant::now(), Err(StoreHealth::Slow));
        assert_eq!(
            health.signal(Instant::now()).map(|(v, _)| v),
            Some(StoreHealth::Slow),
            "a failure cleared by a good probe stays cleared"
        );
        health.probe_finished(Instant::now(), Ok(()));
        health.probe_started(Instant::now());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(health.signal(Instant::now()).map(|(v, _)| v), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            health.signal(Instant::now()).map(|(v, _)| v),
            Some(StoreHealth::Unavailable)
        );
    }
}

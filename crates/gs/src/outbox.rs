//! The outbox (`docs/contract/bus.md`): results are published from the store, not from memory. A
//! tailer reads committed events after the last published position and publishes the ones clients
//! follow — wallet events to `player.<p>.wallet`, `round_settled` to `table.<t>.result` — with
//! `Nats-Msg-Id` = `event_id`, so a crash after commit delays results but never loses them, and
//! several GS instances publishing the same event store it once.
//!
//! Metrics: `gs_outbox_published_total`, `gs_outbox_publish_failures_total`,
//! `gs_outbox_publish_seconds` (one publish, sent to acknowledged), `gs_outbox_lag_seconds`
//! (the event's `recorded_at` to its publish acknowledged: how far behind the commits the bus
//! is) and `gs_outbox_position` (the last published position, as saved). Sampled every [`SAMPLE_EVERY`] by the same task: `gs_store_head_position` (the last
//! committed position: `gs_store_head_position - gs_outbox_position` is how far the outbox is
//! behind), and the Postgres pool's use: `gs_db_pool_connections{state="in_use"|"idle"}`,
//! `gs_db_pool_max_connections` (`CROUPIER_DB_POOL_SIZE`) and `gs_db_pool_waiting` (callers
//! waiting for a connection).

use std::time::{Duration, Instant};

use bus::{Bus, Publish};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesOrdered;
use store::{Store, TailOptions};
use tokio_util::sync::CancellationToken;

const CURSOR: &str = "gs";
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Publishes awaiting their acknowledgement at once, all to one stream. They are sent in
/// position order on one connection, so the stream stores them in that order; waiting for each
/// ack before the next publish held the outbox to one round trip per event (about 1,800
/// events/s with the cursor write below, against about 55,000 now: `just bench-outbox`, ADR
/// 0019). 256 is a few hundred KB of payloads, far from a stream's limits.
///
/// Publishes to the other stream wait until these are acknowledged: a round's `bet_settled`
/// events (`PLAYERS`) are stored before its `round_settled` (`TABLES`), as clients expect and
/// as they were when every publish waited for the one before.
pub const OUTBOX_IN_FLIGHT: usize = 256;

/// The cursor is written at most this often, and when the outbox goes idle. Before, every
/// event paid a committed (fsynced) UPDATE. After a crash the events since the last write are
/// published again with the same Msg-Id, which the stream's duplicate window drops (a restart
/// comes within seconds, the window is two minutes). A store that went away does not cost that:
/// the process resumes from what it knows was acknowledged, however long the outage.
pub const CURSOR_EVERY: Duration = Duration::from_millis(100);

/// How often the store's head and the pool's use are sampled: often enough for a dashboard
/// and an alert, rare enough that the head's read (one row, one pooled connection for a
/// moment) costs nothing.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

pub(crate) async fn run<B: Bus>(bus: B, store: Store, shutdown: CancellationToken) {
    // The sampler shares this task (no task of its own): both end with the shutdown.
    tokio::join!(publish(bus, &store, &shutdown), sample(&store, &shutdown));
}

/// Samples the store's head position and the pool's use until `shutdown`.
async fn sample(store: &Store, shutdown: &CancellationToken) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        record_pool_metrics(store);
        // Within the store's own timeouts; a store that does not answer leaves the last value.
        let head = tokio::select! {
            () = shutdown.cancelled() => return,
            head = store.last_position() => head,
        };
        if let Ok(head) = head {
            metrics::gauge!("gs_store_head_position").set(head as f64);
        }
    }
}

/// The Postgres pool's use now, as gauges.
fn record_pool_metrics(store: &Store) {
    let status = store.pool().status();
    let idle = status.available;
    let in_use = status.size.saturating_sub(idle);
    metrics::gauge!("gs_db_pool_connections", "state" => "in_use").set(in_use as f64);
    metrics::gauge!("gs_db_pool_connections", "state" => "idle").set(idle as f64);
    metrics::gauge!("gs_db_pool_max_connections").set(status.max_size as f64);
    metrics::gauge!("gs_db_pool_waiting").set(status.waiting as f64);
}

async fn publish<B: Bus>(bus: B, store: &Store, shutdown: &CancellationToken) {
    // The last position this process knows to be on the bus. The cursor in the store trails it
    // by up to `CURSOR_EVERY`; resuming from the stored cursor alone would publish that stretch
    // again, and after an outage longer than the streams' duplicate window (a Postgres stopped
    // for minutes) the stream would store it twice.
    let mut published = 0;
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = publish_from_cursor(&bus, store, &mut published) => result,
        };
        if let Err(error) = result {
            tracing::warn!(%error, "outbox interrupted; resuming");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY_PAUSE) => {}
        }
    }
}

async fn save_cursor(store: &Store, position: i64) -> Result<(), String> {
    let client = store.client().await.map_err(|e| e.to_string())?;
    client
        .execute(
            "INSERT INTO outbox_cursor (name, position) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET position = GREATEST(outbox_cursor.position, EXCLUDED.position), updated_at = now()",
            &[&CURSOR, &position],
        )
        .await
        .map_err(|e| e.to_string())?;
    metrics::gauge!("gs_outbox_position").set(position as f64);
    Ok(())
}

/// Publishes what follows the furthest of the stored cursor and `published` (the position
/// this process last had acknowledged), moving `published` as acknowledgements come.
async fn publish_from_cursor<B: Bus>(
    bus: &B,
    store: &Store,
    published: &mut i64,
) -> Result<(), String> {
    let stored_cursor = {
        let client = store.client().await.map_err(|e| e.to_string())?;
        client
            .query_opt(
                "SELECT position FROM outbox_cursor WHERE name = $1",
                &[&CURSOR],
            )
            .await
            .map_err(|e| e.to_string())?
            .map(|row| row.get::<_, i64>(0))
            .unwrap_or(0)
    };
    let from = stored_cursor.max(*published);
    *published = from;
    metrics::gauge!("gs_outbox_position").set(stored_cursor as f64);
    let options = TailOptions {
        call_timeout: store.call_timeout(),
        ..TailOptions::default()
    };
    let mut events = std::pin::pin!(store::tail(store.pg_config().clone(), from + 1, options));
    // Each entry resolves to its event's position once published (or at once for an event
    // that is not published); in position order, so `published` only moves forward over
    // events that are all on the bus.
    let mut in_flight: FuturesOrdered<BoxFuture<'static, Result<i64, String>>> =
        FuturesOrdered::new();
    // The stream the publishes in flight go to (`player.` or `table.` subjects).
    let mut in_flight_to: Option<bool> = None;
    let mut saved = stored_cursor;
    let mut saved_at = Instant::now();
    loop {
        let save_due = *published > saved && saved_at.elapsed() >= CURSOR_EVERY;
        if save_due || (*published > saved && in_flight.is_empty()) {
            save_cursor(store, *published).await?;
            saved = *published;
            saved_at = Instant::now();
        }
        tokio::select! {
            biased;
            done = in_flight.next(), if !in_flight.is_empty() => {
                if let Some(position) = done {
                    *published = position?;
                }
            }
            stored = events.next(), if in_flight.len() < OUTBOX_IN_FLIGHT => {
                let Some(stored) = stored else { break };
                let stored = stored.map_err(|e| e.to_string())?;
                let position = stored.position;
                // From the row's columns, not by decoding the event (ADR 0019): round
                // transitions came from the bus (GMS), and an operator's switch is stored only
                // (ADR 0022): only GS's own events go out.
                let subject = match crate::ledger::outbox_subject(&stored.kind, &stored.stream) {
                    Ok(subject) => subject,
                    Err(error) => {
                        tracing::warn!(position, %error, "event not published");
                        None
                    }
                };
                let Some(subject) = subject else {
                    in_flight.push_back(Box::pin(std::future::ready(Ok(position))));
                    continue;
                };
                let to_players = subject.starts_with("player.");
                if in_flight_to.is_some_and(|current| current != to_players) {
                    while let Some(done) = in_flight.next().await {
                        *published = done?;
                    }
                }
                in_flight_to = Some(to_players);
                let publish =
                    Publish::new(subject, stored.data.clone()).msg_id(stored.event_id.to_string());
                let bus = bus.clone();
                let recorded_at = stored.recorded_at;
                in_flight.push_back(Box::pin(async move {
                    let started = Instant::now();
                    match bus.publish(publish).await {
                        Ok(_) => {
                            metrics::histogram!("gs_outbox_publish_seconds").record(started.elapsed());
                            // The database's clock at append to ours at acknowledgement: one
                            // machine's clock on a single host, near enough elsewhere.
                            let lag = (time::OffsetDateTime::now_utc() - recorded_at)
                                .as_seconds_f64()
                                .max(0.0);
                            metrics::histogram!("gs_outbox_lag_seconds").record(lag);
                            metrics::counter!("gs_outbox_published_total").increment(1);
                            Ok(position)
                        }
                        Err(error) => {
                            metrics::counter!("gs_outbox_publish_failures_total").increment(1);
                            Err(error.to_string())
                        }
                    }
                }));
            }
            // Idle with a cursor to write: come round again when it is due.
            () = tokio::time::sleep(CURSOR_EVERY), if *published > saved => {}
        }
    }
    Err("the event tail ended".into())
}

//! The outbox (`docs/contract/bus.md`): results are published from the store, not from memory. A
//! tailer reads committed events after the last published position and publishes the ones clients
//! follow — wallet events to `player.<p>.wallet`, `round_settled` to `table.<t>.result` — with
//! `Nats-Msg-Id` = `event_id`, so a crash after commit delays results but never loses them, and
//! several GS instances publishing the same event store it once.
//!
//! Metrics: `gs_outbox_published_total`, `gs_outbox_publish_failures_total`,
//! `gs_outbox_publish_seconds` and `gs_outbox_position` (the last published position).

use std::time::Duration;

use bus::{Bus, Publish};
use futures_util::StreamExt;
use protocol::Producer;
use store::{Store, TailOptions};
use tokio_util::sync::CancellationToken;

const CURSOR: &str = "gs";
const RETRY_PAUSE: Duration = Duration::from_secs(1);

pub(crate) async fn run<B: Bus>(bus: B, store: Store, shutdown: CancellationToken) {
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = publish_from_cursor(&bus, &store) => result,
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

async fn publish_from_cursor<B: Bus>(bus: &B, store: &Store) -> Result<(), String> {
    let from = {
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
    let options = TailOptions {
        call_timeout: store.call_timeout(),
        ..TailOptions::default()
    };
    let mut events = std::pin::pin!(store::tail(store.pg_config().clone(), from + 1, options));
    while let Some(stored) = events.next().await {
        let stored = stored.map_err(|e| e.to_string())?;
        let subject = match protocol::decode_event(&stored.data) {
            // Round transitions came from the bus (GMS); only GS's own events go out.
            Ok(event) => (event.event_kind().producer() == Producer::Gs)
                .then(|| protocol::subject_for(&event)),
            Err(error) => {
                tracing::warn!(position = stored.position, %error, "undecodable event not published");
                None
            }
        };
        if let Some(subject) = subject {
            let publish =
                Publish::new(subject, stored.data.clone()).msg_id(stored.event_id.to_string());
            let started = std::time::Instant::now();
            if let Err(error) = bus.publish(publish).await {
                metrics::counter!("gs_outbox_publish_failures_total").increment(1);
                return Err(error.to_string());
            }
            metrics::histogram!("gs_outbox_publish_seconds").record(started.elapsed());
            metrics::counter!("gs_outbox_published_total").increment(1);
        }
        let client = store.client().await.map_err(|e| e.to_string())?;
        client
            .execute(
                "INSERT INTO outbox_cursor (name, position) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET position = GREATEST(outbox_cursor.position, EXCLUDED.position), updated_at = now()",
                &[&CURSOR, &stored.position],
            )
            .await
            .map_err(|e| e.to_string())?;
        metrics::gauge!("gs_outbox_position").set(stored.position as f64);
    }
    Err("the event tail ended".into())
}

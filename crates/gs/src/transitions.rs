//! Round transitions: this GS instance reads `TABLES` (`table.*.round`) in order from the last
//! sequence it stored, records each transition in the store (idempotently: several GS
//! instances record the same events) and settles a round when its outcome arrives.

use std::time::Duration;

use bus::Bus;
use futures_util::StreamExt;
use protocol::EventBody;
use store::Store;
use tokio_util::sync::CancellationToken;

use crate::GsConfig;
use crate::ledger;

const RETRY_PAUSE: Duration = Duration::from_secs(1);

pub(crate) async fn run<B: Bus>(
    bus: B,
    store: Store,
    config: GsConfig,
    shutdown: CancellationToken,
) {
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = follow(&bus, &store, &config) => result,
        };
        if let Err(error) = result {
            tracing::warn!(%error, "round transitions interrupted; resuming");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY_PAUSE) => {}
        }
    }
}

async fn follow<B: Bus>(bus: &B, store: &Store, config: &GsConfig) -> Result<(), String> {
    let cursor = load_cursor(store, &config.instance)
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = bus
        .replay(
            protocol::subject::TABLES_STREAM,
            "table.*.round",
            cursor + 1,
        )
        .await
        .map_err(|e| e.to_string())?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| e.to_string())?;
        match protocol::decode_event(&message.payload) {
            Ok(event) => {
                ledger::record_transition(store, &event, message.seq)
                    .await
                    .map_err(|e| e.to_string())?;
                match &event.body {
                    EventBody::OutcomeDeclared(declared) => {
                        let settled = ledger::settle_round(store, &declared.table, declared.round)
                            .await
                            .map_err(|e| e.to_string())?;
                        if let Some(settled) = settled {
                            tracing::info!(table = %declared.table, round = declared.round.get(), bets = settled.bets, "round settled");
                        }
                    }
                    EventBody::RoundVoided(voided) => {
                        let refunded = ledger::refund_round(store, &voided.table, voided.round)
                            .await
                            .map_err(|e| e.to_string())?;
                        if let Some(refund) = refunded {
                            tracing::info!(table = %voided.table, round = voided.round.get(), bets = refund.bets, "voided round refunded");
                        }
                    }
                    _ => {}
                }
            }
            Err(error) => {
                // Not ours to judge: skip it rather than stall every table.
                tracing::warn!(seq = message.seq, %error, "undecodable transition skipped");
            }
        }
        save_cursor(store, &config.instance, message.seq)
            .await
            .map_err(|e| e.to_string())?;
    }
    Err("the TABLES subscription ended".into())
}

async fn load_cursor(store: &Store, instance: &str) -> Result<u64, store::StoreError> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            "SELECT stream_seq FROM gs_cursor WHERE consumer = $1",
            &[&instance],
        )
        .await?;
    Ok(row.map(|r| r.get::<_, i64>(0)).unwrap_or(0).max(0) as u64)
}

async fn save_cursor(store: &Store, instance: &str, seq: u64) -> Result<(), store::StoreError> {
    let client = store.client().await?;
    client
        .execute(
            "INSERT INTO gs_cursor (consumer, stream_seq) VALUES ($1, $2)
             ON CONFLICT (consumer) DO UPDATE SET stream_seq = GREATEST(gs_cursor.stream_seq, EXCLUDED.stream_seq), updated_at = now()",
            &[&instance, &i64::try_from(seq).unwrap_or(i64::MAX)],
        )
        .await?;
    Ok(())
}

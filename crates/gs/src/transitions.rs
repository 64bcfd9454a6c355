//! Round transitions: this GS instance reads `TABLES` (`table.*.round`) in order from the last
//! sequence it stored, records each transition in the store (idempotently: several GS
//! instances record the same events) and settles a round when its outcome arrives.

use std::time::Duration;

use bus::Bus;
use futures_util::StreamExt;
use protocol::EventBody;
use store::Store;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::GsConfig;
use crate::health::{Health, OpKind, StoreHealth};
use crate::ledger;

const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// The follower counts as caught up once it has handled every message it was given and then
/// waited this long with nothing more: a backlog arrives back to back.
const QUIET: Duration = Duration::from_millis(250);

/// What the transitions task tells the others: whether it has caught up.
pub(crate) struct Progress {
    pub health: Health,
    pub caught_up: watch::Sender<bool>,
}

impl Progress {
    fn set(&self, caught_up: bool) {
        self.caught_up.send_if_modified(|now| {
            let changed = *now != caught_up;
            *now = caught_up;
            changed
        });
    }

    /// Guards a store call: in flight while it runs; an unavailable database is reported.
    async fn watched<T>(
        &self,
        kind: OpKind,
        call: impl std::future::Future<Output = Result<T, ledger::LedgerError>>,
    ) -> Result<T, String> {
        let _in_flight = self.health.begin(kind);
        call.await.map_err(|error| {
            match &error {
                ledger::LedgerError::Store(store) | ledger::LedgerError::CommitUnknown(store) => {
                    self.health.report(store);
                }
                _ => {}
            }
            error.to_string()
        })
    }
}

pub(crate) async fn run<B: Bus>(
    bus: B,
    store: Store,
    config: GsConfig,
    progress: Progress,
    shutdown: CancellationToken,
) {
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = follow(&bus, &store, &config, &progress) => result,
        };
        progress.set(false);
        if let Err(error) = result {
            tracing::warn!(%error, "round transitions interrupted; resuming");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RETRY_PAUSE) => {}
        }
    }
}

async fn follow<B: Bus>(
    bus: &B,
    store: &Store,
    config: &GsConfig,
    progress: &Progress,
) -> Result<(), String> {
    let cursor = progress
        .watched(OpKind::Append, async {
            Ok(load_cursor(store, &config.instance).await?)
        })
        .await?;
    let mut messages = bus
        .replay(
            protocol::subject::TABLES_STREAM,
            "table.*.round",
            cursor + 1,
        )
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let message = match tokio::time::timeout(QUIET, messages.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(_) => {
                // Nothing more for a while: caught up, unless the store is not healthy (then
                // what arrives next may not be recordable, and recovery waits for it).
                progress.set(progress.health.current() == StoreHealth::Healthy);
                continue;
            }
        };
        let message = message.map_err(|e| e.to_string())?;
        match protocol::decode_event(&message.payload) {
            Ok(event) => {
                progress
                    .watched(
                        OpKind::Append,
                        ledger::record_transition(store, &event, message.seq),
                    )
                    .await?;
                match &event.body {
                    EventBody::OutcomeDeclared(declared) => {
                        let settled = progress
                            .watched(
                                OpKind::Settle,
                                ledger::settle_round(store, &declared.table, declared.round),
                            )
                            .await?;
                        if let Some(settled) = settled {
                            tracing::info!(table = %declared.table, round = declared.round.get(), bets = settled.bets, "round settled");
                        }
                    }
                    EventBody::RoundVoided(voided) => {
                        let refunded = progress
                            .watched(
                                OpKind::Settle,
                                ledger::refund_round(store, &voided.table, voided.round),
                            )
                            .await?;
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
        progress
            .watched(OpKind::Append, async {
                Ok(save_cursor(store, &config.instance, message.seq).await?)
            })
            .await?;
    }
    Err("the TABLES subscription ended".into())
}

/// Where this instance resumes: the furthest any GS has reached. Each instance saves its
/// cursor only after it has recorded (and settled) everything up to it, so everything before
/// the furthest cursor is in the store, whoever wrote it; a new instance (the default name is
/// one per process) starts there instead of replaying the whole stream. Its row is created at
/// once, so the replay and an operator see every running instance; rows no instance has
/// touched for a week are dropped (a returning instance starts from the furthest anyway).
async fn load_cursor(store: &Store, instance: &str) -> Result<u64, store::StoreError> {
    let client = store.client().await?;
    client
        .execute(
            "DELETE FROM gs_cursor WHERE consumer <> $1 AND updated_at < now() - interval '7 days'",
            &[&instance],
        )
        .await?;
    let row = client
        .query_one(
            "INSERT INTO gs_cursor (consumer, stream_seq)
             SELECT $1, coalesce(max(stream_seq), 0) FROM gs_cursor
             ON CONFLICT (consumer) DO UPDATE SET stream_seq = GREATEST(gs_cursor.stream_seq, EXCLUDED.stream_seq), updated_at = now()
             RETURNING stream_seq",
            &[&instance],
        )
        .await?;
    let cursor = row.get::<_, i64>(0).max(0) as u64;
    tracing::info!(
        instance,
        cursor,
        "round transitions resume after the furthest cursor"
    );
    Ok(cursor)
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

//! One table's rounds: resume from the table's last published transition, then open, close,
//! declare and pause on the configured timer, publishing each transition exactly once.
//!
//! Every publish carries `Nats-Msg-Id` = `<table>:<round>:<kind>` (a retry is deduplicated)
//! and the expected last sequence of `table.<t>.round`, so a second GMS advancing the same
//! table is refused instead of forking it.

use std::sync::Arc;
use std::time::Duration;

use bus::{Bus, Publish, PublishError};
use domain::{Phase, RoundCommand, RoundEvent, RoundId, RoundState, TableId, Timestamp};
use protocol::{Event, EventBody};
use tokio_util::sync::CancellationToken;

use crate::GmsConfig;

/// Pause before retrying after a bus failure.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum TableError {
    #[error("bus: {0}")]
    Bus(String),
    #[error("another GMS advanced the table (expected last sequence {0})")]
    Superseded(u64),
    #[error("the table's last event is unreadable: {0}")]
    Corrupt(String),
    #[error("round rejected the command: {0}")]
    Rejected(#[from] domain::Rejection),
}

pub(crate) async fn run<B: Bus>(
    bus: B,
    config: Arc<GmsConfig>,
    table: TableId,
    shutdown: CancellationToken,
) {
    let mut driver = Driver {
        bus,
        config,
        subject: format!("table.{table}.round"),
        table,
        shutdown,
    };
    loop {
        match driver.drive().await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(table = %driver.table, %error, "table interrupted; resuming");
                if driver.sleep(RETRY_PAUSE).await.is_err() {
                    return;
                }
            }
        }
    }
}

struct Driver<B> {
    bus: B,
    config: Arc<GmsConfig>,
    table: TableId,
    subject: String,
    shutdown: CancellationToken,
}

/// The shutdown token fired.
struct Stopped;

impl<B: Bus> Driver<B> {
    /// Runs rounds until shutdown (`Ok`) or an error (the caller resumes from the bus).
    async fn drive(&mut self) -> Result<(), TableError> {
        let (mut state, mut last_seq) = self.resume().await?;
        loop {
            let (current, command) = match state.as_ref().and_then(|s| s.phase().map(|p| (s, p))) {
                // A table that never ran opens round 1 at once.
                None => {
                    let fresh = RoundState::new(self.table.clone(), RoundId::FIRST);
                    let open = self.open_command(&fresh);
                    (fresh, open)
                }
                Some((ended, Phase::Resulted | Phase::Settled | Phase::Voided)) => {
                    let next = ended
                        .round()
                        .next()
                        .ok_or_else(|| TableError::Corrupt("round counter exhausted".into()))?;
                    if self.sleep(self.config.pause).await.is_err() {
                        return Ok(());
                    }
                    let fresh = RoundState::new(self.table.clone(), next);
                    let open = self.open_command(&fresh);
                    (fresh, open)
                }
                Some((open, Phase::Open)) => {
                    let closes_at = open.closes_at().unwrap_or_else(now);
                    if self.sleep(until(closes_at)).await.is_err() {
                        return Ok(());
                    }
                    (open.clone(), RoundCommand::CloseBetting)
                }
                Some((closed, Phase::Closed)) => {
                    if self.sleep(self.config.result).await.is_err() {
                        return Ok(());
                    }
                    let server_seed = self.config.seed_secret.seed(&self.table, closed.round());
                    (closed.clone(), RoundCommand::DeclareOutcome { server_seed })
                }
            };
            let events = match domain::decide(&current, command, now()) {
                Ok(events) => events,
                Err(domain::Rejection::SeedMismatch { .. }) => {
                    // The seed behind this round's commitment is gone (no persistent secret, or
                    // a changed one): the round cannot be completed honestly.
                    vec![RoundEvent::RoundVoided {
                        reason: "server seed unrecoverable after a restart".into(),
                    }]
                }
                Err(rejection) => return Err(rejection.into()),
            };
            let mut next = current;
            for event in events {
                last_seq = self.publish(next.round(), &event, last_seq).await?;
                domain::apply(&mut next, &event);
            }
            state = Some(next);
        }
    }

    /// Where the table stands: its last transition (and the stream sequence of it), or `None`
    /// for a table that never ran.
    async fn resume(&self) -> Result<(Option<RoundState>, u64), TableError> {
        let last = self
            .bus
            .last_message(protocol::subject::TABLES_STREAM, &self.subject)
            .await
            .map_err(|e| TableError::Bus(e.to_string()))?;
        let Some(last) = last else {
            return Ok((None, 0));
        };
        let event = protocol::decode_event(&last.payload)
            .map_err(|e| TableError::Corrupt(e.to_string()))?;
        let round = event
            .round()
            .ok_or_else(|| TableError::Corrupt("event without a round".into()))?;
        let round_event = event.body.to_round_event().ok_or_else(|| {
            TableError::Corrupt(format!("unexpected {} on {}", event.kind(), self.subject))
        })?;
        // Only the last transition is read back; the earlier ones of the round are implied.
        // The commitment is recomputed from the secret: if the secret is not the one the round
        // was opened with, declaring fails the commitment check and the round is voided.
        let seed_hash = self.config.seed_secret.seed(&self.table, round).hash();
        let mut state = RoundState::new(self.table.clone(), round);
        let implied: Vec<RoundEvent> = match &round_event {
            RoundEvent::RoundOpened { .. } => vec![],
            RoundEvent::BettingClosed => vec![RoundEvent::RoundOpened {
                closes_at: now(),
                seed_hash,
            }],
            _ => vec![
                RoundEvent::RoundOpened {
                    closes_at: now(),
                    seed_hash,
                },
                RoundEvent::BettingClosed,
            ],
        };
        for event in implied.iter().chain(std::iter::once(&round_event)) {
            domain::apply(&mut state, event);
        }
        tracing::info!(table = %self.table, round = round.get(), kind = event.kind(), seq = last.seq, "resuming table");
        Ok((Some(state), last.seq))
    }

    fn open_command(&self, state: &RoundState) -> RoundCommand {
        let closes_at = now().checked_add(self.config.betting).unwrap_or_else(now);
        RoundCommand::Open {
            closes_at,
            seed_hash: self
                .config
                .seed_secret
                .seed(&self.table, state.round())
                .hash(),
        }
    }

    /// Publishes one transition; returns its stream sequence.
    async fn publish(
        &self,
        round: RoundId,
        event: &RoundEvent,
        last_seq: u64,
    ) -> Result<u64, TableError> {
        let body = EventBody::from_round_event(self.table.clone(), round, event.clone());
        let event = Event::new(uuid::Uuid::new_v4(), now(), body);
        let payload =
            protocol::encode_event(&event).map_err(|e| TableError::Corrupt(e.to_string()))?;
        let msg_id =
            protocol::gms_msg_id(&event).ok_or_else(|| TableError::Corrupt("no msg id".into()))?;
        let publish = Publish::new(self.subject.clone(), payload)
            .msg_id(msg_id.clone())
            .expected_last_subject_seq(last_seq);
        match self.bus.publish(publish).await {
            Ok(published) => {
                metrics::counter!("gms_transitions_published_total", "kind" => event.kind())
                    .increment(1);
                tracing::info!(table = %self.table, round = round.get(), kind = event.kind(), seq = published.seq, "published");
                Ok(published.seq)
            }
            Err(PublishError::WrongLastSequence { .. }) => {
                // Our own earlier attempt may have landed: then this is not a conflict.
                let last = self
                    .bus
                    .last_message(protocol::subject::TABLES_STREAM, &self.subject)
                    .await
                    .map_err(|e| TableError::Bus(e.to_string()))?;
                match last {
                    Some(last) if last.msg_id.as_deref() == Some(msg_id.as_str()) => Ok(last.seq),
                    _ => Err(TableError::Superseded(last_seq)),
                }
            }
            Err(error) => Err(TableError::Bus(error.to_string())),
        }
    }

    async fn sleep(&self, duration: Duration) -> Result<(), Stopped> {
        tokio::select! {
            () = self.shutdown.cancelled() => Err(Stopped),
            () = tokio::time::sleep(duration) => Ok(()),
        }
    }
}

/// The wall clock, as the domain's timestamp (microsecond precision).
fn now() -> Timestamp {
    let micros = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
    i64::try_from(micros)
        .ok()
        .and_then(|m| Timestamp::from_unix_micros(m).ok())
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// How long until `at` (zero when it has passed).
fn until(at: Timestamp) -> Duration {
    at.duration_since(now()).unwrap_or(Duration::ZERO)
}

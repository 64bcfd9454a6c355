//! One table's rounds: resume from the table's last published transition, then open, close,
//! declare and pause on the configured timer, publishing each transition exactly once.
//!
//! Every publish carries `Nats-Msg-Id` = `<table>:<round>:<kind>` (a retry is deduplicated)
//! and the expected last sequence of `table.<t>.round`, so a second GMS advancing the same
//! table is refused instead of forking it. A round in progress is completed only with the seed
//! that matches the commitment read back from its `round_opened`; otherwise it is voided.
//!
//! Metrics (per table, label `table`): `gms_transitions_published_total{table,kind}` (rounds
//! are its `kind="round_opened"`), `gms_transition_lag_seconds{table,kind}` (published −
//! scheduled), `gms_round{table}` (the round of the last transition this process published);
//! `gms_publish_conflicts_total` (superseded publishes) and `gms_publish_retries_total` (the
//! table resumed after a failed publish or read).

use std::sync::Arc;
use std::time::Duration;

use bus::{Bus, Publish, PublishError};
use domain::{Phase, RoundCommand, RoundEvent, RoundId, RoundState, TableId, Timestamp};
use futures_util::StreamExt;
use protocol::{Event, EventBody};
use tokio_util::sync::CancellationToken;

use crate::GmsConfig;

/// Pause before retrying after a bus failure.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// How long the first read of where a table stands may wait for an answer, doubling to
/// [`READ_LIMIT_LAST`] while reads go unanswered. Right after a NATS node dies, a read sent
/// before `TABLES` has a new leader gets no answer at all: waited out with the connection's
/// 5 s request timeout, one such read delayed a standby's first round by 5 s more than the
/// election (measured in the chaos run: lease lost at +2.3 s, leader back at +4.7 s, the table
/// resumed at +10.6 s). Healthy, the read takes milliseconds.
const READ_LIMIT_FIRST: Duration = Duration::from_secs(1);
const READ_LIMIT_LAST: Duration = Duration::from_secs(5);
/// Pause before rereading a table after a publish answered as a duplicate.
const RESYNC_PAUSE: Duration = Duration::from_millis(50);
/// How many stream sequences before a `betting_closed` the search for its `round_opened`
/// reads first; other tables' transitions and results lie in between.
const FIND_OPENED_WINDOW: u64 = 64;
/// How long a replay may stay silent while searching for a `round_opened`.
const FIND_OPENED_WAIT: Duration = Duration::from_secs(10);
/// Why a round whose seed this GMS cannot reveal is voided.
const SEED_UNRECOVERABLE: &str = "server seed unrecoverable after a restart";

#[derive(Debug, thiserror::Error)]
enum TableError {
    #[error("bus: {0}")]
    Bus(String),
    #[error("bus: no answer within {0:?} reading where the table stands")]
    Unanswered(Duration),
    #[error("another GMS advanced the table (expected last sequence {0})")]
    Superseded(u64),
    #[error("the transition was already stored (msg id {0}); rereading the table")]
    Resync(String),
    #[error("the table's last event is unreadable: {0}")]
    Corrupt(String),
    #[error("round rejected the command: {0}")]
    Rejected(#[from] domain::Rejection),
}

/// Why a table's driver returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The shutdown token fired.
    Stopped,
    /// Another writer advanced the table: this GMS must check its lease before going on.
    Superseded,
}

/// Drives `table` until shutdown or until another writer advances it. Bus failures are retried
/// after a pause, resuming from the table's last stored transition.
pub(crate) async fn run<B: Bus>(
    bus: B,
    config: Arc<GmsConfig>,
    table: TableId,
    shutdown: CancellationToken,
) -> Ended {
    let mut driver = Driver {
        bus,
        config,
        subject: protocol::subject::table_round_subject(&table),
        table,
        shutdown,
        read_limit: READ_LIMIT_FIRST,
    };
    loop {
        match driver.drive().await {
            Ok(()) => return Ended::Stopped,
            Err(TableError::Superseded(expected)) => {
                metrics::counter!("gms_publish_conflicts_total").increment(1);
                tracing::warn!(table = %driver.table, expected, "another GMS advanced the table");
                return Ended::Superseded;
            }
            Err(TableError::Resync(msg_id)) => {
                tracing::info!(table = %driver.table, %msg_id, "transition already stored; rereading the table");
                // Normally once; the pause keeps a table whose stream disagrees with its own
                // msg ids (a purged or rewritten subject) from spinning.
                if driver.sleep(RESYNC_PAUSE).await.is_err() {
                    return Ended::Stopped;
                }
            }
            Err(error @ TableError::Unanswered(_)) => {
                // The wait was the pause: read again at once, waiting longer.
                metrics::counter!("gms_publish_retries_total").increment(1);
                tracing::warn!(table = %driver.table, %error, "table interrupted; resuming");
                if driver.sleep(RESYNC_PAUSE).await.is_err() {
                    return Ended::Stopped;
                }
            }
            Err(error) => {
                metrics::counter!("gms_publish_retries_total").increment(1);
                tracing::warn!(table = %driver.table, %error, "table interrupted; resuming");
                if driver.sleep(RETRY_PAUSE).await.is_err() {
                    return Ended::Stopped;
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
    /// How long the next read of where the table stands may wait ([`READ_LIMIT_FIRST`]).
    read_limit: Duration,
}

/// The shutdown token fired.
struct Stopped;

/// Where a table stands, as read back from its stream.
struct Position {
    /// `None` for a table that never ran.
    state: Option<RoundState>,
    /// Stream sequence of the table's last transition (0: none).
    last_seq: u64,
    /// When the last transition was made (its `at`): the next one is scheduled from it.
    last_at: Timestamp,
}

/// The next thing to do to a round.
enum Step {
    Open,
    Close,
    Declare,
    Void(&'static str),
}

impl<B: Bus> Driver<B> {
    /// Runs rounds until shutdown (`Ok`) or an error (the caller resumes from the bus).
    async fn drive(&mut self) -> Result<(), TableError> {
        let Position {
            mut state,
            mut last_seq,
            mut last_at,
        } = self.resume().await?;
        loop {
            let (current, step, scheduled) =
                match state.as_ref().and_then(|s| s.phase().map(|p| (s, p))) {
                    // A table that never ran opens round 1 at once.
                    None => (
                        RoundState::new(self.table.clone(), RoundId::FIRST),
                        Step::Open,
                        now(),
                    ),
                    Some((ended, Phase::Resulted | Phase::Settled | Phase::Voided)) => {
                        let next = ended
                            .round()
                            .next()
                            .ok_or_else(|| TableError::Corrupt("round counter exhausted".into()))?;
                        (
                            RoundState::new(self.table.clone(), next),
                            Step::Open,
                            after(last_at, self.config.pause),
                        )
                    }
                    Some((open, Phase::Open)) => match self.unhonourable(open) {
                        Some(reason) => (open.clone(), Step::Void(reason), now()),
                        None => (
                            open.clone(),
                            Step::Close,
                            open.closes_at().unwrap_or_else(now),
                        ),
                    },
                    Some((closed, Phase::Closed)) => match self.unhonourable(closed) {
                        Some(reason) => (closed.clone(), Step::Void(reason), now()),
                        None => (
                            closed.clone(),
                            Step::Declare,
                            after(last_at, self.config.result),
                        ),
                    },
                };
            if self.sleep(until(scheduled)).await.is_err() {
                return Ok(());
            }
            let command = match step {
                Step::Open => self.open_command(&current),
                Step::Close => RoundCommand::CloseBetting,
                Step::Declare => RoundCommand::DeclareOutcome {
                    server_seed: self.config.seed_secret.seed(&self.table, current.round()),
                },
                Step::Void(reason) => RoundCommand::Void {
                    reason: reason.into(),
                },
            };
            let events = match domain::decide(&current, command, now()) {
                Ok(events) => events,
                Err(domain::Rejection::SeedMismatch { .. }) => vec![RoundEvent::RoundVoided {
                    reason: SEED_UNRECOVERABLE.into(),
                }],
                Err(rejection) => return Err(rejection.into()),
            };
            let mut next = current;
            for event in events {
                let (seq, at) = self
                    .publish(next.round(), &event, last_seq, scheduled)
                    .await?;
                last_seq = seq;
                last_at = at;
                domain::apply(&mut next, &event);
            }
            state = Some(next);
        }
    }

    /// Why this GMS cannot complete a round in progress honestly: the seed it would reveal is
    /// not the one the round committed to (another or a random master secret), or the
    /// commitment itself could not be read back.
    fn unhonourable(&self, round: &RoundState) -> Option<&'static str> {
        match round.seed_hash() {
            None => Some("the round's commitment could not be read back"),
            Some(committed) => {
                let ours = self
                    .config
                    .seed_secret
                    .seed(&self.table, round.round())
                    .hash();
                (*committed != ours).then_some(SEED_UNRECOVERABLE)
            }
        }
    }

    /// Where the table stands: its last transition (and the stream sequence of it). For a
    /// round still in progress the commitment is read back from the round's `round_opened`.
    async fn resume(&mut self) -> Result<Position, TableError> {
        let read = self
            .bus
            .last_message(protocol::subject::TABLES_STREAM, &self.subject);
        let last = match tokio::time::timeout(self.read_limit, read).await {
            Ok(last) => {
                self.read_limit = READ_LIMIT_FIRST;
                last.map_err(|e| TableError::Bus(e.to_string()))?
            }
            Err(_) => {
                let waited = self.read_limit;
                self.read_limit = (waited * 2).min(READ_LIMIT_LAST);
                return Err(TableError::Unanswered(waited));
            }
        };
        let Some(last) = last else {
            return Ok(Position {
                state: None,
                last_seq: 0,
                last_at: now(),
            });
        };
        let (event, round, round_event) = self.decode(&last.payload)?;
        let mut state = RoundState::new(self.table.clone(), round);
        let mut implied = Vec::new();
        match &round_event {
            RoundEvent::RoundOpened { .. } => {}
            RoundEvent::BettingClosed => {
                if let Some(opened) = self.find_opened(round, last.seq).await? {
                    implied.push(opened);
                }
            }
            // Final for GMS: the next round opens after the pause; earlier events do not matter.
            _ => {}
        }
        for event in implied.iter().chain(std::iter::once(&round_event)) {
            domain::apply(&mut state, event);
        }
        tracing::info!(table = %self.table, round = round.get(), kind = event.kind(), seq = last.seq, "resuming table");
        Ok(Position {
            state: Some(state),
            last_seq: last.seq,
            last_at: event.at,
        })
    }

    fn decode(&self, payload: &[u8]) -> Result<(Event, RoundId, RoundEvent), TableError> {
        let event =
            protocol::decode_event(payload).map_err(|e| TableError::Corrupt(e.to_string()))?;
        let round = event
            .round()
            .ok_or_else(|| TableError::Corrupt("event without a round".into()))?;
        let round_event = event.body.to_round_event().ok_or_else(|| {
            TableError::Corrupt(format!("unexpected {} on {}", event.kind(), self.subject))
        })?;
        Ok((event, round, round_event))
    }

    /// The `round_opened` of `round`, which is the message just before `before_seq` on the
    /// table's subject (each transition is published expecting the previous one). Read forward
    /// over windows growing backwards from `before_seq`, so the usual case reads a few messages.
    async fn find_opened(
        &self,
        round: RoundId,
        before_seq: u64,
    ) -> Result<Option<RoundEvent>, TableError> {
        let bus_error = |e: bus::BusError| TableError::Bus(e.to_string());
        let first_seq = self
            .bus
            .stream_state(protocol::subject::TABLES_STREAM)
            .await
            .map_err(bus_error)?
            .first_seq
            .max(1);
        let mut window = FIND_OPENED_WINDOW;
        loop {
            let from = before_seq.saturating_sub(window).max(first_seq);
            let mut replay = self
                .bus
                .replay(protocol::subject::TABLES_STREAM, &self.subject, from)
                .await
                .map_err(bus_error)?;
            let mut previous = None;
            loop {
                let message = tokio::time::timeout(FIND_OPENED_WAIT, replay.next())
                    .await
                    .map_err(|_| TableError::Bus("replay stalled".into()))?
                    .ok_or_else(|| TableError::Bus("replay ended".into()))?
                    .map_err(bus_error)?;
                if message.seq >= before_seq {
                    break;
                }
                previous = Some(message);
            }
            if let Some(message) = previous {
                let (_, found_round, event) = self.decode(&message.payload)?;
                let opened =
                    matches!(event, RoundEvent::RoundOpened { .. }) && found_round == round;
                return Ok(opened.then_some(event));
            }
            if from <= first_seq {
                return Ok(None);
            }
            window = window.saturating_mul(4);
        }
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

    /// Publishes one transition scheduled for `scheduled`; returns its stream sequence and
    /// its `at`.
    async fn publish(
        &self,
        round: RoundId,
        event: &RoundEvent,
        last_seq: u64,
        scheduled: Timestamp,
    ) -> Result<(u64, Timestamp), TableError> {
        let body = EventBody::from_round_event(self.table.clone(), round, event.clone());
        let at = now();
        let event = Event::new(uuid::Uuid::new_v4(), at, body);
        let payload =
            protocol::encode_event(&event).map_err(|e| TableError::Corrupt(e.to_string()))?;
        let msg_id =
            protocol::gms_msg_id(&event).ok_or_else(|| TableError::Corrupt("no msg id".into()))?;
        let publish = Publish::new(self.subject.clone(), payload)
            .msg_id(msg_id.clone())
            .expected_last_subject_seq(last_seq);
        match self.bus.publish(publish).await {
            // Stored before, by an earlier attempt of ours or by another GMS with other
            // content (another `closes_at`): what counts is what the stream holds.
            Ok(published) if published.duplicate => Err(TableError::Resync(msg_id)),
            Ok(published) => {
                let lag = now()
                    .duration_since(scheduled)
                    .unwrap_or(Duration::ZERO)
                    .as_secs_f64();
                let table = self.table.to_string();
                metrics::counter!("gms_transitions_published_total", "table" => table.clone(), "kind" => event.kind())
                    .increment(1);
                metrics::histogram!("gms_transition_lag_seconds", "table" => table.clone(), "kind" => event.kind())
                    .record(lag);
                metrics::gauge!("gms_round", "table" => table).set(round.get() as f64);
                tracing::info!(table = %self.table, round = round.get(), kind = event.kind(), seq = published.seq, lag, "published");
                Ok((published.seq, at))
            }
            Err(PublishError::WrongLastSequence { .. }) => {
                // The bus already checked whether our own earlier attempt landed (ADR 0008);
                // this is the safety net `docs/contract/bus.md` describes.
                let last = self
                    .bus
                    .last_message(protocol::subject::TABLES_STREAM, &self.subject)
                    .await
                    .map_err(|e| TableError::Bus(e.to_string()))?;
                match last {
                    Some(last) if last.msg_id.as_deref() == Some(msg_id.as_str()) => {
                        Err(TableError::Resync(msg_id))
                    }
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
pub(crate) fn now() -> Timestamp {
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

/// `duration` after `at` (or `at` if that overflows).
fn after(at: Timestamp, duration: Duration) -> Timestamp {
    at.checked_add(duration).unwrap_or(at)
}

//! `croupier replay`: reads the Postgres log in one snapshot, verifies the chain and the
//! published checkpoints on one task while another rebuilds every round, bet, settlement and
//! wallet and checks them against the published rules (`crate::rules`), then compares the
//! wallets with the `accounts` read model of the same snapshot.
//!
//! With a bus, the `TABLES` and `PLAYERS` streams are read too, each on its own task, and
//! merged with the Postgres rows by the events' time (`crate::crosscheck`).
//!
//! `--table`, `--from-round` and `--to-round` narrow what is rebuilt and reported; the chain and
//! the checkpoints always cover the whole log (from `--from-checkpoint` when given), and
//! wallets are checked only on an unscoped run from position 1.

use std::collections::HashMap;

use bus::Bus;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::crosscheck::{self, BUS_BATCHES_IN_FLIGHT, BusMessage, Matcher, STREAMS, StreamReport};
use crate::model::{Auditor, Limits, Row, Scope};
use crate::recall::Collector;
use crate::report::{self, Check, Head, Report, RunStats, Violation};
use crate::source::{self, BATCHES_IN_FLIGHT, Checkpoint, End, Piece, Snapshot, SourceError};
use crate::wire::{self, Time};

/// Events at which a replay is long enough to deserve a progress bar.
pub const PROGRESS_BAR_FROM: i64 = 10_000;

/// What to replay and by which rules.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub scope: Scope,
    pub limits: Limits,
    /// Published checkpoints that must still hold (`--expect-head`, `--checkpoints`).
    pub checkpoints: Vec<Checkpoint>,
    /// Start from this published checkpoint instead of position 1.
    pub from_checkpoint: Option<Checkpoint>,
    /// Last-game recall of this table's round.
    pub recall: Option<(String, u64)>,
}

/// Why a replay could not run (as opposed to what it found).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot connect to the event store: {0}")]
    Connect(tokio_postgres::Error),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("reading the bus: {0}")]
    Bus(bus::BusError),
    #[error("the reading task failed: {0}")]
    Task(String),
}

/// Progress of a replay: events rebuilt so far, of about `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub events: u64,
    pub total: i64,
}

/// The Postgres log as the merge reads it: rows with their events' times, in position order.
struct PgSide {
    rx: mpsc::Receiver<Piece>,
    /// Rows in position order; each carries its event's `at` (`Time::ZERO` when it does not
    /// decode, or when there is no bus to merge with: taken at once). The batch as it came
    /// (a row is 200-odd bytes: moved out once, not copied into another queue first).
    buf: std::vec::IntoIter<Row>,
    snapshot: Option<Snapshot>,
    end: Option<End>,
    done: bool,
    events: u64,
}

impl PgSide {
    /// Fills the buffer with the next rows (or learns that there are none).
    async fn refill(
        &mut self,
        auditor: &mut Auditor,
        progress: &mut impl FnMut(Progress),
        total: i64,
    ) {
        while self.buf.as_slice().is_empty() && !self.done {
            match self.rx.recv().await {
                Some(Piece::Snapshot(snapshot)) => self.snapshot = Some(snapshot),
                Some(Piece::Rows(rows, found)) => {
                    for violation in found {
                        auditor.violation(violation);
                    }
                    self.events += rows.len() as u64;
                    self.buf = rows.into_iter();
                    progress(Progress {
                        events: self.events,
                        total,
                    });
                }
                Some(Piece::End(end)) => self.end = Some(end),
                None => self.done = true,
            }
        }
    }

    fn head_at(&self) -> Option<Time> {
        self.buf.as_slice().first().map(|row| row.at)
    }
}

/// One JetStream stream as the merge reads it.
struct BusSide {
    name: &'static str,
    rx: mpsc::Receiver<Vec<BusMessage>>,
    /// The batch as it came (see [`PgSide::buf`]).
    buf: std::vec::IntoIter<BusMessage>,
    done: bool,
    messages: u64,
    /// The `at` of the first message read (the oldest a retention-limited stream holds).
    first_at: Option<Time>,
}

impl BusSide {
    async fn refill(&mut self) {
        while self.buf.as_slice().is_empty() && !self.done {
            match self.rx.recv().await {
                Some(batch) => {
                    self.messages += batch.len() as u64;
                    if self.first_at.is_none() {
                        self.first_at = batch.iter().find_map(BusMessage::at);
                    }
                    self.buf = batch.into_iter();
                }
                None => self.done = true,
            }
        }
    }

    fn head_at(&self) -> Option<Time> {
        self.buf
            .as_slice()
            .first()
            .map(|m| m.at().unwrap_or(Time::ZERO))
    }
}

/// Replays the log at `config` (the store's connection settings, which should carry no
/// statement timeout: the audit reads the whole log in one `COPY`) and, with `bus`, compares
/// it with the `TABLES` and `PLAYERS` streams.
pub async fn replay<B: Bus>(
    config: &tokio_postgres::Config,
    bus: Option<&B>,
    options: &ReplayOptions,
    mut progress: impl FnMut(Progress),
) -> Result<Report, ReplayError> {
    let started = std::time::Instant::now();
    let (client, connection) = config.connect(NoTls).await.map_err(ReplayError::Connect)?;
    let connection = tokio::spawn(connection);
    let (reader_client, reader_connection) =
        config.connect(NoTls).await.map_err(ReplayError::Connect)?;
    let reader_connection = tokio::spawn(reader_connection);
    // `accounts` is compared with the wallets only where they are rebuilt
    // (`Auditor::checks_wallets`: no scope, from position 1); elsewhere it is not read.
    let mut accounts_connection = None;
    let accounts_client = if options.scope.is_everything() && options.from_checkpoint.is_none() {
        let (accounts_client, connection) =
            config.connect(NoTls).await.map_err(ReplayError::Connect)?;
        accounts_connection = Some(tokio::spawn(connection));
        Some(accounts_client)
    } else {
        None
    };
    let readers = source::Clients {
        events: reader_client,
        accounts: accounts_client,
    };
    let result = replay_on(&client, readers, bus, options, &mut progress).await;
    connection.abort();
    reader_connection.abort();
    if let Some(connection) = accounts_connection {
        connection.abort();
    }
    result.map(|mut report| {
        let seconds = started.elapsed().as_secs_f64();
        report.run.seconds = seconds;
        report.run.events_per_second = report.events as f64 / seconds.max(1e-9);
        report
    })
}

async fn replay_on<B: Bus>(
    client: &tokio_postgres::Client,
    reader_clients: source::Clients,
    bus: Option<&B>,
    options: &ReplayOptions,
    progress: &mut impl FnMut(Progress),
) -> Result<Report, ReplayError> {
    let (start, start_violation) = source::start_at(client, options.from_checkpoint).await?;
    let partial = start.from > 1;
    let mut auditor = Auditor::new(options.limits, options.scope.clone(), partial);
    auditor.check_stream_versions(!partial);
    if let Some(violation) = start_violation {
        auditor.violation(violation);
    }

    // The reading tasks (Postgres and each stream): aborted if this returns early, since
    // dropping the set aborts what it holds.
    let mut readers: JoinSet<Result<(), ReplayError>> = JoinSet::new();
    let (tx, rx) = mpsc::channel(BATCHES_IN_FLIGHT);
    let checkpoints = options.checkpoints.clone();
    // The rows' times are needed only to merge them with the bus.
    let times = bus.is_some();
    readers.spawn(async move {
        source::read(reader_clients, start, &checkpoints, times, tx)
            .await
            .map_err(ReplayError::from)
    });
    let mut pg = PgSide {
        rx,
        buf: Vec::new().into_iter(),
        snapshot: None,
        end: None,
        done: false,
        events: 0,
    };
    // The snapshot comes first: the bus is read up to where it stands once Postgres's
    // snapshot is taken, so every event published before the snapshot is on the bus.
    while pg.snapshot.is_none() && !pg.done {
        match pg.rx.recv().await {
            Some(Piece::Snapshot(snapshot)) => pg.snapshot = Some(snapshot),
            Some(_) => return Err(ReplayError::Task("rows before the snapshot".into())),
            None => pg.done = true,
        }
    }
    let Some(snapshot) = pg.snapshot else {
        // The reader stopped before its snapshot: its error says why.
        join_all(&mut readers).await?;
        return Err(ReplayError::Task(
            "the log ended before its snapshot".into(),
        ));
    };
    let total = snapshot.head - start.from + 1;

    let mut matcher = bus.map(|_| Matcher::tracking(options.recall.clone()));
    let mut collector = options
        .recall
        .as_ref()
        .map(|(table, round)| Collector::new(table, *round));
    let mut sides = Vec::new();
    if let (Some(bus), Some(matcher)) = (bus, matcher.as_mut()) {
        for (name, filter) in STREAMS {
            let state = bus.stream_state(name).await.map_err(ReplayError::Bus)?;
            if state.first_seq > 1 && !state.retention_limited {
                auditor.violation(Violation::new(
                    Check::Bus,
                    format!("{name} from sequence 1 (it keeps every message)"),
                    format!(
                        "first sequence {}: messages 1..={} were removed",
                        state.first_seq,
                        state.first_seq - 1
                    ),
                ));
            }
            matcher.report.streams.push(StreamReport {
                name: name.to_string(),
                first_seq: state.first_seq,
                last_seq: state.last_seq,
                retention_limited: state.retention_limited,
                messages: 0,
            });
            let (tx, rx) = mpsc::channel(BUS_BATCHES_IN_FLIGHT);
            let bus = bus.clone();
            readers.spawn(async move {
                crosscheck::read_stream(
                    bus,
                    name,
                    filter,
                    state.first_seq.max(1),
                    state.last_seq,
                    tx,
                )
                .await
                .map_err(ReplayError::Bus)
            });
            sides.push(BusSide {
                name,
                rx,
                buf: Vec::new().into_iter(),
                done: false,
                messages: 0,
                first_at: None,
            });
        }
    }

    // The merge: always the side whose next event is oldest, so that each event meets its
    // counterpart soon and little waits in between.
    let mut checkpoint_at: Option<Time> = None;
    loop {
        pg.refill(&mut auditor, progress, total).await;
        for side in &mut sides {
            side.refill().await;
        }
        if partial && checkpoint_at.is_none() {
            checkpoint_at = pg.head_at();
        }
        let bus_next = sides
            .iter()
            .enumerate()
            .filter_map(|(i, side)| side.head_at().map(|at| (at, i)))
            .min();
        let take_bus = match (pg.head_at(), bus_next) {
            (None, None) => break,
            (Some(pg_at), Some((bus_at, _))) => bus_at < pg_at,
            (None, Some(_)) => true,
            (Some(_), None) => false,
        };
        if take_bus {
            let Some((_, i)) = bus_next else { break };
            let Some(message) = sides[i].buf.next() else {
                continue;
            };
            if let Some(matcher) = matcher.as_mut() {
                // A replay from a checkpoint compares the bus from the checkpoint's time on.
                if checkpoint_at.is_some_and(|c| message.at().is_some_and(|at| at < c)) {
                    matcher.report.outside_snapshot += 1;
                } else {
                    matcher.published(message);
                }
            }
        } else if let Some(row) = pg.buf.next() {
            let event = wire::decode(&row.data);
            auditor.apply(&row, event.as_ref().map_err(String::as_str));
            if let Ok(event) = &event {
                if let Some(collector) = collector.as_mut()
                    && collector.wants(event)
                {
                    collector.add(&row);
                }
                if let Some(matcher) = matcher.as_mut() {
                    matcher.recorded(row.position, row.data.clone(), event);
                }
            }
        }
    }
    join_all(&mut readers).await?;
    let Some(end) = pg.end else {
        return Err(ReplayError::Task("the log ended without its end".into()));
    };
    for violation in end.violations {
        auditor.violation(violation);
    }

    let places = matcher
        .as_mut()
        .map(|m| std::mem::take(&mut m.places))
        .unwrap_or_default();
    let bus_report = match matcher {
        None => None,
        Some(mut matcher) => {
            let mut retained_from = HashMap::new();
            for (side, stream) in sides.iter().zip(matcher.report.streams.iter_mut()) {
                stream.messages = side.messages;
                if stream.retention_limited
                    && stream.first_seq > 1
                    && let Some(at) = side.first_at
                {
                    retained_from.insert(side.name, at);
                }
            }
            let unmatched = matcher.leftovers(snapshot.outbox, &retained_from);
            let found = recorded_outside(client, &unmatched, start.from, snapshot.head).await?;
            matcher.unrecorded(&found, snapshot.gs_cursor);
            for violation in std::mem::take(&mut matcher.violations) {
                auditor.violation(violation);
            }
            Some(matcher.report)
        }
    };

    let finish = auditor.finish(end.accounts.as_deref());
    let mut tables = finish.tables;
    for violation in finish.violations.listed() {
        if let Some(table) = violation.table.as_ref().and_then(|t| tables.get_mut(t)) {
            table.violations += 1;
        }
    }
    let total = finish.violations.total();
    let head = Head {
        position: end.head.0,
        hash: hex::encode(end.head.1),
    };
    let recall = collector.map(|c| {
        c.finish(
            finish.violations.listed(),
            &places,
            head.clone(),
            options.limits,
            bus.is_some(),
        )
    });
    Ok(Report {
        ok: total == 0,
        events: end.events,
        from_position: start.from,
        head,
        scope: report::Scope {
            table: options.scope.table.clone(),
            from_round: options.scope.from_round,
            to_round: options.scope.to_round,
        },
        tables,
        money: finish.money,
        operator_actions: finish.operator_actions,
        operator_actions_total: finish.operator_actions_total,
        bus: bus_report,
        checkpoints_verified: end.checkpoints_verified,
        violations_total: total,
        violations: finish.violations.into_listed(),
        run: RunStats {
            bus_messages: sides.iter().map(|s| s.messages).sum(),
            ..RunStats::default()
        },
        recall,
    })
}

/// Ids per lookup of events recorded outside the snapshot.
const LOOKUP_CHUNK: usize = 10_000;

/// Of `ids`, those the store has outside `from..=head` (recorded after the snapshot, or
/// before the checkpoint the replay began at), with their positions.
async fn recorded_outside(
    client: &tokio_postgres::Client,
    ids: &[Uuid],
    from: i64,
    head: i64,
) -> Result<HashMap<Uuid, i64>, ReplayError> {
    let mut found = HashMap::new();
    for chunk in ids.chunks(LOOKUP_CHUNK) {
        let rows = client
            .query(
                "SELECT event_id, position FROM public.events WHERE event_id = ANY($1) \
                 AND (position < $2 OR position > $3)",
                &[&chunk, &from, &head],
            )
            .await
            .map_err(SourceError::from)?;
        for row in rows {
            found.insert(
                row.try_get(0).map_err(SourceError::from)?,
                row.try_get(1).map_err(SourceError::from)?,
            );
        }
    }
    Ok(found)
}

/// Waits for every reading task; the first failure, if any.
async fn join_all(readers: &mut JoinSet<Result<(), ReplayError>>) -> Result<(), ReplayError> {
    while let Some(joined) = readers.join_next().await {
        joined.map_err(|e| ReplayError::Task(e.to_string()))??;
    }
    Ok(())
}

/// [`replay`] with a progress bar on stderr for long logs, when stderr is a terminal and
/// `quiet` is false.
pub async fn replay_with_progress<B: Bus>(
    config: &tokio_postgres::Config,
    bus: Option<&B>,
    options: &ReplayOptions,
    quiet: bool,
) -> Result<Report, ReplayError> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} replaying {pos}/{len} events {wide_bar} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut shown = false;
    let result = replay(config, bus, options, |p| {
        if !shown && !quiet && p.total >= PROGRESS_BAR_FROM {
            bar.set_length(p.total.max(0) as u64);
            shown = true;
        }
        if shown {
            bar.set_position(p.events);
        }
    })
    .await;
    if shown {
        bar.finish_and_clear();
    }
    result
}

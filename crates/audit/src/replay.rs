//! `croupier replay`: reads the Postgres log in one snapshot, verifies the chain and the
//! published checkpoints on one task while another rebuilds every round, bet, settlement and
//! wallet and checks them against the published rules (`crate::rules`), then compares the
//! wallets with the `accounts` read model of the same snapshot.
//!
//! `--table`, `--from-round` and `--to-round` narrow what is rebuilt and reported; the chain and
//! the checkpoints always cover the whole log (from `--from-checkpoint` when given), and
//! wallets are checked only on an unscoped run from position 1.

use tokio::sync::mpsc;
use tokio_postgres::NoTls;

use crate::model::{Auditor, Limits, Scope};
use crate::report::{self, Head, Report};
use crate::source::{self, BATCHES_IN_FLIGHT, Checkpoint, Piece, SourceError};

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
}

/// Why a replay could not run (as opposed to what it found).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot connect to the event store: {0}")]
    Connect(tokio_postgres::Error),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the reading task failed: {0}")]
    Task(String),
}

impl ReplayError {
    /// The failure as `--json` prints it.
    pub fn to_json(&self) -> String {
        serde_json::json!({ "ok": false, "error": self.to_string() }).to_string()
    }
}

/// Progress of a replay: events rebuilt so far, of about `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub events: u64,
    pub total: i64,
}

/// Replays the log at `config` (the store's connection settings; the audit lifts the
/// statement timeout for its one long `COPY`).
pub async fn replay(
    config: &tokio_postgres::Config,
    options: &ReplayOptions,
    mut progress: impl FnMut(Progress),
) -> Result<Report, ReplayError> {
    let mut config = config.clone();
    config.options("-c statement_timeout=0 -c idle_in_transaction_session_timeout=0");
    let (client, connection) = config.connect(NoTls).await.map_err(ReplayError::Connect)?;
    let connection = tokio::spawn(connection);

    let (start, start_violation) = source::start_at(&client, options.from_checkpoint).await?;
    let total: i64 = client
        .query_one("SELECT position FROM public.event_head", &[])
        .await
        .map_err(SourceError::from)?
        .try_get::<_, i64>(0)
        .map_err(SourceError::from)?
        - start.from
        + 1;
    let partial = start.from > 1;
    let mut auditor = Auditor::new(options.limits, options.scope.clone(), partial);
    if let Some(violation) = start_violation {
        auditor.violation(violation);
    }

    let (tx, mut rx) = mpsc::channel(BATCHES_IN_FLIGHT);
    let checkpoints = options.checkpoints.clone();
    let reader = tokio::spawn(async move { source::read(client, start, &checkpoints, tx).await });

    let mut events = 0u64;
    let mut end = None;
    while let Some(piece) = rx.recv().await {
        match piece {
            Piece::Rows(rows, found) => {
                for violation in found {
                    auditor.violation(violation);
                }
                for row in &rows {
                    auditor.apply(row);
                }
                events += rows.len() as u64;
                progress(Progress { events, total });
            }
            Piece::End(last) => end = Some(last),
        }
    }
    drop(rx);
    reader
        .await
        .map_err(|e| ReplayError::Task(e.to_string()))??;
    connection.abort();
    let Some(end) = end else {
        return Err(ReplayError::Task("the log ended without its end".into()));
    };
    for violation in end.violations {
        auditor.violation(violation);
    }
    let finish = auditor.finish(Some(&end.accounts));
    let mut tables = finish.tables;
    for violation in finish.violations.listed() {
        if let Some(table) = violation.table.as_ref().and_then(|t| tables.get_mut(t)) {
            table.violations += 1;
        }
    }
    let total = finish.violations.total();
    Ok(Report {
        ok: total == 0,
        events: end.events,
        from_position: start.from,
        head: Head {
            position: end.head.0,
            hash: hex::encode(end.head.1),
        },
        scope: report::Scope {
            table: options.scope.table.clone(),
            from_round: options.scope.from_round,
            to_round: options.scope.to_round,
        },
        tables,
        money: finish.money,
        checkpoints_verified: end.checkpoints_verified,
        violations_total: total,
        violations: finish.violations.into_listed(),
    })
}

/// [`replay`] with a progress bar on stderr for long logs, when stderr is a terminal and
/// `quiet` is false.
pub async fn replay_with_progress(
    config: &tokio_postgres::Config,
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
    let result = replay(config, options, |p| {
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

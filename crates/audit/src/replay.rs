//! `croupier replay`, first form: the whole chain is verified from position 1 to the head
//! (gapless positions, every hash recomputed, the head agreeing with the last event) with
//! [`store::verify_chain`]; `--table`, `--from-round` and `--to-round` choose which rounds the
//! report counts (the chain itself is one, so it is always verified end to end).

use std::collections::BTreeSet;

use domain::TableId;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use store::{ChainError, ChainProgress, Store, StoreError, VerifyError};

/// Events at which a replay is long enough to deserve a progress bar.
pub const PROGRESS_BAR_FROM: i64 = 10_000;

/// Which rounds the report covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayOptions {
    pub table: Option<TableId>,
    pub from_round: Option<u64>,
    pub to_round: Option<u64>,
}

impl ReplayOptions {
    fn covers(&self, table: &str, round: u64) -> bool {
        self.table.as_ref().is_none_or(|t| t.as_str() == table)
            && self.from_round.is_none_or(|from| round >= from)
            && self.to_round.is_none_or(|to| round <= to)
    }
}

/// A replay that found everything in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    pub ok: bool,
    /// Events verified (the whole chain).
    pub events: u64,
    pub last_position: i64,
    /// Lowercase hex of the hash at `last_position`.
    pub head_hash: String,
    /// Rounds in the chosen scope that the store holds.
    pub rounds: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The chain is broken: `position` is the first bad one.
    #[error(transparent)]
    Broken(#[from] ChainError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ReplayError {
    /// The first bad position, when the chain is broken.
    pub fn position(&self) -> Option<i64> {
        match self {
            ReplayError::Broken(broken) => Some(broken.position),
            ReplayError::Store(_) => None,
        }
    }

    /// The failure as the `--json` output prints it.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Failure<'a> {
            ok: bool,
            position: Option<i64>,
            error: &'a str,
        }
        let error = self.to_string();
        serde_json::to_string(&Failure {
            ok: false,
            position: self.position(),
            error: &error,
        })
        .unwrap_or_else(|_| "{\"ok\":false}".into())
    }
}

impl ReplayReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{\"ok\":true}".into())
    }
}

/// Verifies the store; `progress` is told after every page.
pub async fn replay(
    store: &Store,
    options: &ReplayOptions,
    progress: impl FnMut(ChainProgress),
) -> Result<ReplayReport, ReplayError> {
    let report = match store.verify_chain(1, progress).await {
        Ok(report) => report,
        Err(VerifyError::Broken(broken)) => return Err(broken.into()),
        Err(VerifyError::Store(error)) => return Err(error.into()),
    };
    let client = store.client().await?;
    let rows = client
        .query(
            "SELECT DISTINCT stream FROM events WHERE stream LIKE 'round-%' AND position <= $1",
            &[&report.last_position],
        )
        .await
        .map_err(StoreError::from)?;
    let mut rounds = BTreeSet::new();
    for row in rows {
        let stream: &str = row.get(0);
        let Some((table, round)) = stream
            .strip_prefix("round-")
            .and_then(|rest| rest.rsplit_once('-'))
        else {
            continue;
        };
        if let Ok(round) = round.parse::<u64>()
            && options.covers(table, round)
        {
            rounds.insert((table.to_string(), round));
        }
    }
    Ok(ReplayReport {
        ok: true,
        events: report.events,
        last_position: report.last_position,
        head_hash: hex::encode(report.last_hash),
        rounds: rounds.len() as u64,
    })
}

/// [`replay`] with a progress bar on stderr for long stores (hidden when stderr is not a
/// terminal, and with `quiet`).
pub async fn replay_with_progress(
    store: &Store,
    options: &ReplayOptions,
    quiet: bool,
) -> Result<ReplayReport, ReplayError> {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{spinner} verifying {pos}/{len} events {wide_bar} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut shown = false;
    let result = replay(store, options, |p| {
        if !shown && !quiet && p.end >= PROGRESS_BAR_FROM {
            bar.set_length(p.end.max(0) as u64);
            shown = true;
        }
        if shown {
            bar.set_position(p.position.max(0) as u64);
        }
    })
    .await;
    if shown {
        bar.finish_and_clear();
    }
    result
}

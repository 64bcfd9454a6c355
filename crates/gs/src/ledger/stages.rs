//! Where the time of a ledger transaction goes, stage by stage: each stage is recorded in
//! `gs_ledger_stage_seconds{op, stage}` and the whole breakdown is logged at debug level
//! (target `gs::stages`), so a slow batch can be explained from the metrics alone and
//! `just bench-store` can print the breakdown it measured.

use std::time::{Duration, Instant};

pub(crate) struct Stages {
    op: &'static str,
    last: Instant,
    spent: Vec<(&'static str, Duration)>,
}

impl Stages {
    pub(crate) fn start(op: &'static str) -> Self {
        Stages {
            op,
            last: Instant::now(),
            spent: Vec::with_capacity(12),
        }
    }

    /// Ends the stage called `stage` (it began at the previous mark, or at the start).
    pub(crate) fn mark(&mut self, stage: &'static str) {
        let now = Instant::now();
        let spent = now - self.last;
        self.last = now;
        metrics::histogram!("gs_ledger_stage_seconds", "op" => self.op, "stage" => stage)
            .record(spent);
        self.spent.push((stage, spent));
    }

    /// Logs the breakdown (at debug level) for a transaction that committed `rows` rows.
    pub(crate) fn finish(self, rows: usize) {
        if tracing::enabled!(target: "gs::stages", tracing::Level::DEBUG) {
            let breakdown = self
                .spent
                .iter()
                .map(|(stage, spent)| format!("{stage}={:.1}ms", spent.as_secs_f64() * 1e3))
                .collect::<Vec<_>>()
                .join(" ");
            tracing::debug!(target: "gs::stages", op = self.op, rows, "{breakdown}");
        }
    }
}

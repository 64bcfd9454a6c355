//! Process limits. A gateway node holds one socket per client and `croupier loadgen` one per
//! simulated client, so the open-file limit is raised to the hard limit at start, and the log
//! says so (the hard limit itself is the operator's to raise).

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; logs the outcome.
pub fn raise_open_files() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-file limit raised to the hard limit"),
        Err(error) => tracing::warn!(%error, "open-file limit could not be raised"),
    }
}

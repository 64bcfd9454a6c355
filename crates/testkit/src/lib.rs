//! Test harness: real NATS JetStream and Postgres servers for every test, never mocks.
//!
//! - [`nats`] gives a test the server named by `NATS_URL` when it is adequate (≥ 2.10 with
//!   JetStream, read from the server's INFO), otherwise one ephemeral `nats-server -js` per test
//!   process, started from the pinned binary that `just deps` installs in `.tools/venv`.
//! - [`postgres`] gives a test a fresh database, created from a template that is prepared once
//!   per server (e.g. migrated); the server is the one named by `DATABASE_URL`, otherwise one
//!   ephemeral cluster per test process (run as the `postgres` user when we are root).
//! - Tests that stop, restart or pause a server take a private one: [`NatsServer::start`],
//!   [`PgServer::start`].
//! - [`WsClient`]: a WebSocket client that is not our server's code, speaking raw JSON.
//! - [`proc_stat`]: a process's `/proc/<pid>/stat` fields, for the benchmarks' CPU figures.
//!
//! Every server runs under a tiny supervisor shell that kills it when our end of its stdin pipe
//! closes, so servers go away when their owner is dropped and also when the test process dies,
//! without `unsafe` and without relying on destructors of statics.
//!
//! A dev-dependency only: nothing in the product links it. It depends on no crate of ours.

mod error;
mod nats;
mod postgres;
mod process;
mod proxy;
pub mod ws;

pub use error::HarnessError;
pub use nats::{
    NatsCluster, NatsInfo, NatsServer, TestNats, check_nats_adequate, nats, nats_server_binary,
};
pub use postgres::{PgServer, PgServerOptions, TestDb, connect as pg_connect, postgres};
pub use proxy::{Armed, CutAt, PgProxy};
pub use ws::{WsClient, WsEnd};

use std::path::PathBuf;

/// The fields of `/proc/<pid>/stat` after the command (`pid` may be `self`), so that field 0 is
/// the state, 1 the parent's pid and 11..=14 `utime`, `stime`, `cutime`, `cstime` in clock
/// ticks (`man 5 proc` numbers them from 3). `None` when the process is gone. The command may
/// hold spaces and parentheses: the fields start after the last `)`.
pub fn proc_stat(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The workspace root (where `Cargo.toml`, `.tools/` and `migrations/` live).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(|crates| crates.parent())
        .map(PathBuf::from)
        .unwrap_or(manifest)
}

/// A unique, subject-safe namespace for one test: `CROUPIER_NATS_PREFIX` for its streams,
/// subjects, consumers and buckets, so tests share one server without seeing each other.
pub fn unique_prefix() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Turns on log output for a test when `TEST_LOG` is set (its value is an `EnvFilter`, e.g.
/// `TEST_LOG=debug` or `TEST_LOG=gs=trace`); silent otherwise. Safe to call from every test.
pub fn init_logging() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Reserves a free TCP port on loopback by binding port 0 and releasing it. A server started on
/// it right away almost always gets it; callers retry on the rare race.
pub(crate) fn free_port() -> Result<u16, HarnessError> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(HarnessError::io("bind a free port"))?;
    let port = listener
        .local_addr()
        .map_err(HarnessError::io("read a free port"))?
        .port();
    Ok(port)
}

#[cfg(test)]
mod proc_stat_tests {
    #[test]
    fn this_process_stat_names_its_parent_and_counts_its_cpu() {
        let fields = super::proc_stat("self").expect("/proc/self/stat");
        assert_eq!(
            fields[1].parse::<u32>().expect("a parent pid"),
            std::os::unix::process::parent_id()
        );
        for ticks in &fields[11..15] {
            ticks.parse::<u64>().expect("clock ticks");
        }
        assert_eq!(super::proc_stat("0"), None);
    }
}

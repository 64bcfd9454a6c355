//! The pool against a private Postgres that stalls: a call returns `Unavailable` within its
//! timeout instead of hanging, and the pool recovers.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::TestResult;
use store::{PoolConfig, Store, StoreError};
use testkit::{PgServer, PgServerOptions};

/// Generous: the configured timeouts are 1 s; this only tells "returned" from "hung".
const HANG: Duration = Duration::from_secs(10);

fn impatient(url: &str, max_size: usize) -> PoolConfig {
    let mut config = PoolConfig::new(url);
    config.max_size = max_size;
    config.wait_timeout = Duration::from_secs(1);
    config.connect_timeout = Duration::from_secs(1);
    config.call_timeout = Duration::from_secs(1);
    config.statement_timeout = Duration::from_secs(1);
    config
}

async fn migrated_server() -> Result<PgServer, Box<dyn std::error::Error + Send + Sync>> {
    testkit::init_logging();
    let server = PgServer::start(PgServerOptions { durable: false })?;
    store::migrate_url(&server.url()).await?;
    Ok(server)
}

#[tokio::test]
async fn a_call_to_a_paused_server_returns_unavailable_instead_of_hanging() -> TestResult {
    let server = migrated_server().await?;
    let store = Store::new(&impatient(&server.url(), 2))?;

    server.pause()?;
    let started = Instant::now();
    let result = tokio::time::timeout(HANG, store.last_position()).await;
    let elapsed = started.elapsed();
    server.resume()?;

    match result {
        Ok(Err(StoreError::Unavailable(_))) => {}
        Ok(other) => panic!("expected Unavailable, got {other:?}"),
        Err(_) => panic!("the call hung for {HANG:?}"),
    }
    assert!(elapsed < HANG, "returned after {elapsed:?}");

    // Once the server answers again, so does the pool.
    assert_eq!(store.last_position().await?, 0);
    Ok(())
}

/// Freezes one backend process (SIGSTOP) until dropped, so a test that fails midway still
/// lets the server shut down.
struct Frozen(i32);

impl Frozen {
    fn new(pid: i32) -> Self {
        signal("STOP", pid);
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal("CONT", self.0);
    }
}

fn signal(name: &str, pid: i32) {
    let status = Command::new("kill")
        .args(["-s", name, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -s {name} {pid}");
}

async fn backend_pid(client: &tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .try_get(0)
}

#[tokio::test]
async fn a_stalled_connection_is_discarded_and_the_next_call_gets_a_fresh_one() -> TestResult {
    let server = migrated_server().await?;
    // One connection only: if the stalled one went back to the pool, every later call would
    // get it again and hang behind it.
    let store = Store::new(&impatient(&server.url(), 1))?;
    let first_pid = backend_pid(&*store.client().await?).await?;

    let frozen = Frozen::new(first_pid);
    let started = Instant::now();
    let result = tokio::time::timeout(HANG, store.last_position()).await;
    assert!(
        matches!(result, Ok(Err(StoreError::Unavailable(_)))),
        "expected Unavailable, got {result:?}"
    );
    assert!(started.elapsed() < HANG);

    // While that backend is still frozen, the pool hands out a new connection that works.
    let client = store.client().await?;
    let second_pid = tokio::time::timeout(HANG, backend_pid(&client))
        .await
        .map_err(|_| "the pool handed out the stalled connection again")??;
    assert_ne!(second_pid, first_pid);
    drop(client);
    assert_eq!(store.last_position().await?, 0);
    drop(frozen);
    Ok(())
}

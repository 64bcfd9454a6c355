//! `just bench-outbox`: how fast GS's outbox publishes committed events to the bus.
//!
//! A durable private Postgres and a private nats-server (the test harness's), 20,000
//! `funds_deposited` events appended to the store in batches, then `croupier run gs` started
//! against them: the figure is events/s from the outbox's first cursor write to the cursor
//! reaching the head (GS's start-up is not counted). Median of 3 runs, each on a fresh
//! database and stream namespace.
//!
//! `BENCH_CROUPIER=/path/to/croupier` measures another build (to compare versions: build the
//! base in a `git worktree` and run this with each binary in turn); `BENCH_EVENTS` changes the
//! number of events.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::{DepositId, Event, FundsDeposited};
use tokio_postgres::NoTls;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const DEFAULT_EVENTS: usize = 20_000;
const APPEND_BATCH: usize = 1_000;
const RUNS: usize = 3;

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn run() -> Result<()> {
    let croupier = std::env::var("BENCH_CROUPIER").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release/croupier").to_string()
    });
    let events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_EVENTS);
    let pg = testkit::PgServer::start(testkit::PgServerOptions { durable: true })?;
    let nats = testkit::NatsServer::start()?;
    let databases = pg.databases();
    let mut rates = Vec::new();
    for run in 1..=RUNS {
        let db = databases.empty_database().await?;
        store::migrate_url(&db.url).await?;
        append_deposits(&db.url, events).await?;
        let prefix = format!("outbox{run}");
        let gs = Killed(
            Command::new(&croupier)
                .args(["run", "gs"])
                .env("DATABASE_URL", &db.url)
                .env("NATS_URL", nats.url())
                .env("CROUPIER_NATS_PREFIX", &prefix)
                .env("CROUPIER_ENDPOINTS_FILE", "/nonexistent")
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .spawn()?,
        );
        let (client, connection) = tokio_postgres::connect(&db.url, NoTls).await?;
        tokio::spawn(connection);
        let head = events as i64;
        let mut first: Option<(Instant, i64)> = None;
        let deadline = Instant::now() + Duration::from_secs(600);
        let rate = loop {
            let cursor: i64 = client
                .query_opt("SELECT position FROM outbox_cursor WHERE name = 'gs'", &[])
                .await?
                .map_or(0, |row| row.get(0));
            let now = Instant::now();
            if cursor > 0 && first.is_none() {
                first = Some((now, cursor));
            }
            if let Some((since, from)) = first
                && cursor >= head
            {
                break (head - from) as f64 / now.duration_since(since).as_secs_f64().max(1e-6);
            }
            if now > deadline {
                return Err(
                    format!("the outbox stood at {cursor} of {head} after 10 minutes").into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        drop(gs);
        eprintln!("run {run}: {rate:.0} events/s");
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "outbox: {:.0} events/s published (median of {RUNS}: {}; {events} events, durable Postgres; {croupier})",
        rates[RUNS / 2],
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// `count` deposits, one per player, appended in batches straight to the store (what GS's
/// ledger would write, minus the read models the outbox does not read).
async fn append_deposits(url: &str, count: usize) -> Result<()> {
    let mut pool = store::PoolConfig::new(url.to_string());
    pool.max_size = 1;
    pool.statement_timeout = Duration::from_secs(60);
    let store = store::Store::new(&pool)?;
    let mut client = store.client().await?;
    let at = domain::Timestamp::from_unix_micros(1_700_000_000_000_000)?;
    let mut i = 0;
    while i < count {
        let batch: Vec<store::NewEvent> = (i..(i + APPEND_BATCH).min(count))
            .map(|n| {
                let player = domain::PlayerId::parse(&format!("p{n}"))?;
                let event = Event::new(
                    uuid::Uuid::new_v4(),
                    at,
                    FundsDeposited {
                        table: None,
                        player: player.clone(),
                        deposit_id: DepositId::parse(&format!("d{n}"))?,
                        amount: domain::Money::new(1_000)?,
                        balance: domain::Money::new(1_000)?,
                    },
                );
                Ok(store::NewEvent {
                    event_id: event.id,
                    stream: format!("player-{player}"),
                    version: 1,
                    kind: event.kind().to_string(),
                    data: protocol::encode_event(&event)?,
                    metadata: Bytes::new(),
                })
            })
            .collect::<Result<_>>()?;
        let tx = client.transaction().await?;
        store::append(&tx, &batch).await?;
        tx.commit().await?;
        i += APPEND_BATCH;
    }
    Ok(())
}

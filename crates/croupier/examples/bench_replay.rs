//! `just bench-replay`: how fast `croupier replay` proves a large history, against the two
//! physical anchors of what it reads. Not a test: it prints figures and the targets of the
//! audit issue.
//!
//! The history (at least 1,000,000 events, at least 90 % of them bet events, 10 tables,
//! 100,000 players) is made through the product's own write paths: deposits by GS's ledger,
//! rounds by a `croupier run gms` process publishing to JetStream, bets sent as the gateway
//! sends them (NATS request/reply to `bets.place.<t>`) to a `croupier run gs` process that
//! appends them in batches and settles every round, and GS's outbox publishing. Building it is
//! not what is timed.
//!
//! Then, interleaved three times, medians printed:
//! - `croupier replay --json` (the whole audit: Postgres and the bus) and
//!   `croupier replay --no-bus --json` (the Postgres half: read, chain, rebuild), as processes;
//! - the JetStream half in this process: both streams read and decoded by the audit's own
//!   readers and fed to its matcher;
//! - the anchors, untuned: `COPY events TO STDOUT (FORMAT binary)` of the same rows, and a
//!   plain ordered-consumer read of the same streams;
//! - the floor: both logs read at once, nothing decoded or checked (the COPY, and a bare
//!   async-nats client pulling both streams in batches of [`FLOOR_PULL`]), which is the least
//!   any audit of both logs could take on this machine.
//!
//! With `DATABASE_URL` and `NATS_URL` set (e.g. `just up`'s, from `.data/endpoints.env`) the
//! history lives in database `croupier_bench_replay` and under NATS prefix `bench_replay` and
//! is kept between runs; otherwise private servers are started and the history is built anew.
//! `BENCH_REPLAY_BETS` changes the number of bets (default 500,000).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bus::{Bus, NatsBus, NatsOptions};
use futures_util::StreamExt;
use protocol::{Encoding, EventBody, PlaceBetReply, PlaceBetRequest};
use tokio::sync::Semaphore;
use tokio_postgres::NoTls;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const PREFIX: &str = "bench_replay";
const DATABASE: &str = "croupier_bench_replay";
const TABLES: usize = 10;
const PLAYERS: usize = 100_000;
const DEPOSIT: i64 = 10_000_000;
const DEFAULT_BETS: u64 = 500_000;
/// Requests in flight from the bettors at once (the gateway's bets in flight, summed).
const BETS_IN_FLIGHT: usize = 512;
/// Deposits in flight at once.
const DEPOSITS_IN_FLIGHT: usize = 32;
const RUNS: usize = 3;
/// Messages per pull of the floor's bare client: the best of 640 and 5,000 measured alone
/// (ADR 0018, session 12).
const FLOOR_PULL: usize = 5_000;

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

struct Servers {
    nats_url: String,
    database_url: String,
    kept: bool,
    _nats: Option<testkit::NatsServer>,
    _pg: Option<testkit::PgServer>,
}

async fn servers() -> Result<Servers> {
    match (std::env::var("DATABASE_URL"), std::env::var("NATS_URL")) {
        (Ok(database_url), Ok(nats_url)) if !database_url.is_empty() && !nats_url.is_empty() => {
            let admin = connect(&database_url).await?;
            let exists = admin
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&DATABASE])
                .await?
                .is_some();
            if !exists {
                admin
                    .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
                    .await?;
            }
            let database_url = with_database(&database_url, DATABASE);
            Ok(Servers {
                nats_url,
                database_url,
                kept: true,
                _nats: None,
                _pg: None,
            })
        }
        _ => {
            let pg = testkit::PgServer::start(testkit::PgServerOptions { durable: true })?;
            let nats = testkit::NatsServer::start()?;
            let admin = connect(&pg.url()).await?;
            admin
                .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
                .await?;
            Ok(Servers {
                nats_url: nats.url(),
                database_url: with_database(&pg.url(), DATABASE),
                kept: false,
                _nats: Some(nats),
                _pg: Some(pg),
            })
        }
    }
}

/// `url` (`postgres://user@host:port/db?params`) naming another database.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority..].find('/') {
        Some(i) => &base[..authority + i],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn croupier_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release/croupier")
}

fn tables() -> Vec<String> {
    (1..=TABLES).map(|t| format!("bench-{t}")).collect()
}

/// A small deterministic generator: the bets differ, and a run is repeatable.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

async fn run() -> Result<()> {
    let servers = servers().await?;
    let bets_target: u64 = std::env::var("BENCH_REPLAY_BETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_BETS);
    store::migrate_url(&servers.database_url).await?;
    let db = connect(&servers.database_url).await?;
    let bus = NatsBus::connect(&servers.nats_url, PREFIX, NatsOptions::default()).await?;
    bus.setup(&bus::Definitions::croupier()).await?;

    let events: i64 = db
        .query_one("SELECT position FROM event_head", &[])
        .await?
        .get(0);
    if events < 1_000_000 {
        if events > 0 {
            return Err(format!(
                "database {DATABASE} holds {events} events, fewer than a full history: drop it \
                 (and NATS prefix {PREFIX}'s streams) and run again"
            )
            .into());
        }
        let started = Instant::now();
        build_history(&servers, &bus, bets_target).await?;
        eprintln!("history built in {:.0} s", started.elapsed().as_secs_f64());
    } else {
        eprintln!("history kept from an earlier run");
    }
    let history = describe(&db).await?;
    println!(
        "history: {} events ({:.1} % bet events), {} tables, {} players, {} rounds settled; {}",
        history.events,
        history.bet_share * 100.0,
        history.tables,
        history.players,
        history.rounds,
        if servers.kept {
            "kept between runs"
        } else {
            "private servers, built this run"
        }
    );

    let mut whole = Vec::new();
    let mut pg_half = Vec::new();
    let mut js_half = Vec::new();
    let mut copy_anchor = Vec::new();
    let mut ordered_anchor = Vec::new();
    let mut floor = Vec::new();
    let mut rss_whole = Vec::new();
    let mut rss_pg = Vec::new();
    let mut bus_messages = 0;
    for run in 1..=RUNS {
        let report = replay(&servers, &[])?;
        whole.push(report.seconds);
        rss_whole.push(report.peak_rss_kib);
        let report = replay(&servers, &["--no-bus"])?;
        pg_half.push(report.seconds);
        rss_pg.push(report.peak_rss_kib);
        let (seconds, messages) = jetstream_half(&bus).await?;
        js_half.push(seconds);
        bus_messages = messages;
        copy_anchor.push(copy_all(&db).await?);
        ordered_anchor.push(ordered_read(&bus).await?);
        floor.push(both_logs_floor(&servers, &db).await?);
        eprintln!(
            "run {run}: whole {:.2} s, Postgres half {:.2} s, JetStream half {:.2} s, COPY {:.2} s, ordered read {:.2} s, floor {:.2} s",
            whole[run - 1],
            pg_half[run - 1],
            js_half[run - 1],
            copy_anchor[run - 1],
            ordered_anchor[run - 1],
            floor[run - 1]
        );
    }
    let n = history.events as f64;
    let m = bus_messages as f64;
    let rows = [
        ("croupier replay (Postgres + bus)", median(&whole), n),
        ("Postgres half: replay --no-bus", median(&pg_half), n),
        ("JetStream half: read + decode + match", median(&js_half), m),
        (
            "anchor: COPY events TO STDOUT (binary)",
            median(&copy_anchor),
            n,
        ),
        (
            "anchor: ordered-consumer read of both streams",
            median(&ordered_anchor),
            m,
        ),
        (
            "floor: both logs read at once, nothing checked",
            median(&floor),
            n,
        ),
    ];
    println!();
    println!("| what | median s (of {RUNS}) | events/s |");
    println!("|---|---:|---:|");
    for (what, seconds, count) in rows {
        println!("| {what} | {seconds:.2} | {:.0} |", count / seconds);
    }
    let pg_ratio = median(&copy_anchor) / median(&pg_half);
    let js_ratio = median(&ordered_anchor) / median(&js_half);
    let rss = |values: &[u64]| values.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
    println!();
    println!(
        "Postgres half: {:.2}× the COPY anchor's events/s ({:.0} vs {:.0})",
        pg_ratio,
        n / median(&pg_half),
        n / median(&copy_anchor)
    );
    println!(
        "JetStream half: {:.2}× the ordered read's messages/s ({:.0} vs {:.0})",
        js_ratio,
        m / median(&js_half),
        m / median(&ordered_anchor)
    );
    println!(
        "whole replay: {:.2}× the floor's time ({:.2} s vs {:.2} s: reading both logs at once, nothing decoded or checked)",
        median(&whole) / median(&floor),
        median(&whole),
        median(&floor)
    );
    println!(
        "peak RSS of croupier replay: {:.1} MiB whole, {:.1} MiB --no-bus (largest of {RUNS} runs)",
        rss(&rss_whole),
        rss(&rss_pg)
    );
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!();
    println!(
        "targets: whole replay of {:.2}M events ≤ 5 s: {} ({:.2} s; the floor alone {:.2} s); Postgres half ≥ 0.5× COPY: {} ({:.2}×); peak RSS ≤ 256 MiB: {} ({:.1} MiB)",
        n / 1e6,
        verdict(median(&whole) <= 5.0),
        median(&whole),
        median(&floor),
        verdict(pg_ratio >= 0.5),
        pg_ratio,
        verdict(rss(&rss_whole) <= 256.0),
        rss(&rss_whole)
    );
    Ok(())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}

struct History {
    events: i64,
    bet_share: f64,
    tables: i64,
    players: i64,
    rounds: i64,
}

async fn describe(db: &tokio_postgres::Client) -> Result<History> {
    let row = db
        .query_one(
            "SELECT count(*), \
                    count(*) FILTER (WHERE type IN ('bet_placed', 'bet_settled', 'bet_refunded')), \
                    (SELECT count(DISTINCT table_id) FROM rounds), \
                    (SELECT count(*) FROM accounts), \
                    count(*) FILTER (WHERE type = 'round_settled') \
             FROM events",
            &[],
        )
        .await?;
    let events: i64 = row.get(0);
    let bets: i64 = row.get(1);
    Ok(History {
        events,
        bet_share: bets as f64 / events.max(1) as f64,
        tables: row.get(2),
        players: row.get(3),
        rounds: row.get(4),
    })
}

struct ReplayRun {
    seconds: f64,
    peak_rss_kib: u64,
}

fn replay(servers: &Servers, args: &[&str]) -> Result<ReplayRun> {
    let output = Command::new(croupier_bin())
        .args(["replay", "--json"])
        .args(args)
        .env("DATABASE_URL", &servers.database_url)
        .env("NATS_URL", &servers.nats_url)
        .env("CROUPIER_NATS_PREFIX", PREFIX)
        .env("CROUPIER_ENDPOINTS_FILE", "/nonexistent")
        .stdin(Stdio::null())
        .output()?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "replay printed no report ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    if report["ok"] != true {
        eprintln!(
            "warning: replay {args:?} found {} violations, e.g. {}",
            report["violations_total"], report["violations"][0]
        );
    }
    Ok(ReplayRun {
        seconds: report["run"]["seconds"].as_f64().unwrap_or(f64::NAN),
        peak_rss_kib: report["run"]["peak_rss_kib"].as_u64().unwrap_or(0),
    })
}

/// The JetStream half on its own: both streams read and decoded by the audit's readers and
/// every message handed to its matcher (with no Postgres side, every one waits in it).
async fn jetstream_half(bus: &NatsBus) -> Result<(f64, u64)> {
    let started = Instant::now();
    let mut matcher = audit::crosscheck::Matcher::default();
    // Both readers send into one channel: the matcher takes batches as they come.
    let (tx, mut rx) = tokio::sync::mpsc::channel(2 * audit::crosscheck::BUS_BATCHES_IN_FLIGHT);
    let mut tasks = Vec::new();
    for (name, filter) in audit::crosscheck::STREAMS {
        let state = bus.stream_state(name).await?;
        tasks.push(tokio::spawn(audit::crosscheck::read_stream(
            bus.clone(),
            name,
            filter,
            state.first_seq.max(1),
            state.last_seq,
            tx.clone(),
        )));
    }
    drop(tx);
    let mut messages = 0u64;
    while let Some(batch) = rx.recv().await {
        messages += batch.len() as u64;
        for message in batch {
            matcher.published(message);
        }
    }
    for task in tasks {
        task.await??;
    }
    Ok((started.elapsed().as_secs_f64(), messages))
}

/// Anchor: the bytes of every event, as Postgres sends them with no query work.
async fn copy_all(db: &tokio_postgres::Client) -> Result<f64> {
    let started = Instant::now();
    let stream = db.copy_out("COPY events TO STDOUT (FORMAT binary)").await?;
    let mut stream = std::pin::pin!(stream);
    let mut bytes = 0usize;
    while let Some(chunk) = stream.next().await {
        bytes += chunk?.len();
    }
    std::hint::black_box(bytes);
    Ok(started.elapsed().as_secs_f64())
}

/// The floor: the COPY anchor and a bare async-nats client pulling both streams (no
/// acknowledgements, batches of [`FLOOR_PULL`], nothing decoded), all at once; the time until
/// the last of them is done.
async fn both_logs_floor(servers: &Servers, db: &tokio_postgres::Client) -> Result<f64> {
    use async_nats::jetstream::{self, consumer};
    let js = jetstream::new(async_nats::connect(&servers.nats_url).await?);
    let started = Instant::now();
    // Each stream on a task of its own, so the readers may use both cores as the replay's do
    // (aborted if the COPY fails first).
    let readers = audit::crosscheck::STREAMS.map(|(name, _)| {
        let js = js.clone();
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let mut stream = js.get_stream(format!("{PREFIX}_{name}")).await?;
            let last = stream.info().await?.state.last_sequence;
            if last == 0 {
                return Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(0);
            }
            let consumer = stream
                .create_consumer(consumer::pull::Config {
                    ack_policy: consumer::AckPolicy::None,
                    deliver_policy: consumer::DeliverPolicy::All,
                    memory_storage: true,
                    inactive_threshold: Duration::from_secs(30),
                    ..Default::default()
                })
                .await?;
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(FLOOR_PULL)
                .messages()
                .await?;
            let mut count = 0u64;
            while let Some(message) = messages.next().await {
                count += 1;
                if message?.info()?.stream_sequence >= last {
                    break;
                }
            }
            Ok(count)
        }))
    });
    copy_all(db).await?;
    for reader in readers {
        std::hint::black_box(reader.await??);
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Anchor: every message of both streams through an ordered consumer, nothing decoded.
async fn ordered_read(bus: &NatsBus) -> Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (name, filter) in audit::crosscheck::STREAMS {
        let state = bus.stream_state(name).await?;
        let bus = bus.clone();
        tasks.push(tokio::spawn(async move {
            if state.last_seq == 0 {
                return Ok::<u64, bus::BusError>(0);
            }
            let mut messages = bus.replay(name, filter, state.first_seq.max(1)).await?;
            let mut count = 0u64;
            while let Some(message) = messages.next().await {
                let message = message?;
                count += 1;
                if message.seq >= state.last_seq {
                    break;
                }
            }
            Ok(count)
        }));
    }
    for task in tasks {
        std::hint::black_box(task.await??);
    }
    Ok(started.elapsed().as_secs_f64())
}

/// A `croupier` process of the bench's own, killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_role(servers: &Servers, role: &str) -> Result<Process> {
    let child = Command::new(croupier_bin())
        .args(["run", role])
        .env("DATABASE_URL", &servers.database_url)
        .env("NATS_URL", &servers.nats_url)
        .env("CROUPIER_NATS_PREFIX", PREFIX)
        .env("CROUPIER_ENDPOINTS_FILE", "/nonexistent")
        .env("CROUPIER_TABLES", tables().join(","))
        .env("CROUPIER_BETTING_MS", "3000")
        .env("CROUPIER_RESULT_MS", "200")
        .env("CROUPIER_PAUSE_MS", "200")
        .env(
            "CROUPIER_SEED_SECRET",
            "bench-replay-seed-secret-of-32-bytes!",
        )
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()?;
    Ok(Process(child))
}

async fn build_history(servers: &Servers, bus: &NatsBus, bets_target: u64) -> Result<()> {
    let mut pool = store::PoolConfig::new(servers.database_url.clone());
    pool.max_size = DEPOSITS_IN_FLIGHT;
    let store = store::Store::new(&pool)?;

    // Deposits, by GS's ledger, one transaction each.
    let bar = indicatif::ProgressBar::new(PLAYERS as u64).with_message("deposits");
    let permits = Arc::new(Semaphore::new(DEPOSITS_IN_FLIGHT));
    let mut deposits = tokio::task::JoinSet::new();
    for i in 0..PLAYERS {
        let permit = permits.clone().acquire_owned().await?;
        let store = store.clone();
        let bar = bar.clone();
        deposits.spawn(async move {
            let _permit = permit;
            let player = domain::PlayerId::parse(&format!("p{i}")).map_err(|e| e.to_string())?;
            let deposit_id =
                protocol::DepositId::parse(&format!("bench-{i}")).map_err(|e| e.to_string())?;
            let amount = domain::Money::new(DEPOSIT).map_err(|e| e.to_string())?;
            gs::ledger::deposit(&store, &player, amount, &deposit_id)
                .await
                .map_err(|e| e.to_string())?;
            bar.inc(1);
            Ok::<(), String>(())
        });
        while let Some(done) = deposits.try_join_next() {
            done??;
        }
    }
    while let Some(done) = deposits.join_next().await {
        done??;
    }
    bar.finish_and_clear();

    // GS, then GMS: rounds on every table, bets on every open round.
    let gs = spawn_role(servers, "gs")?;
    wait_for_gs(bus).await?;
    let gms = spawn_role(servers, "gms")?;
    let last = bus.stream_state("TABLES").await?.last_seq;
    let mut rounds = bus.replay("TABLES", "table.*.round", last + 1).await?;
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(std::sync::Mutex::new(HashMap::<String, u64>::new()));
    let enough = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(Semaphore::new(BETS_IN_FLIGHT));
    let bar = indicatif::ProgressBar::new(bets_target).with_message("bets");
    let mut bettors = tokio::task::JoinSet::new();
    let mut seed = 1u64;
    while !enough.load(Ordering::Relaxed) {
        let Some(message) = rounds.next().await else {
            break;
        };
        let message = message?;
        let Ok(event) = protocol::decode_event(&message.payload) else {
            continue;
        };
        let EventBody::RoundOpened(opened) = event.body else {
            continue;
        };
        seed += 1;
        let round = RoundBets {
            bus: bus.clone(),
            table: opened.table,
            round: opened.round,
            closes_at: opened.closes_at,
            accepted: accepted.clone(),
            refused: refused.clone(),
            enough: enough.clone(),
            in_flight: in_flight.clone(),
            bar: bar.clone(),
            target: bets_target,
            rng: Lcg(seed),
        };
        bettors.spawn(round.run());
        while bettors.try_join_next().is_some() {}
    }
    while bettors.join_next().await.is_some() {}
    bar.finish_and_clear();
    eprintln!(
        "bets: {} accepted, refused {:?}",
        accepted.load(Ordering::Relaxed),
        refused.lock().map(|r| r.clone()).unwrap_or_default()
    );

    // Let the last rounds settle, stop GMS, then wait for GS to record and publish everything.
    tokio::time::sleep(Duration::from_secs(8)).await;
    drop(gms);
    let db = connect(&servers.database_url).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        // The last transition GMS published (GS's cursor follows the round subjects only).
        let mut last_transition = 0;
        for table in tables() {
            let subject = format!("table.{table}.round");
            if let Some(message) = bus.last_message("TABLES", &subject).await? {
                last_transition = last_transition.max(message.seq);
            }
        }
        let row = db
            .query_one(
                "SELECT (SELECT coalesce(max(stream_seq), 0) FROM gs_cursor), \
                        (SELECT coalesce(max(position), 0) FROM outbox_cursor), \
                        (SELECT position FROM event_head)",
                &[],
            )
            .await?;
        let (cursor, outbox, head): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        if cursor as u64 >= last_transition && outbox >= head {
            break;
        }
        if Instant::now() > deadline {
            return Err("GS did not catch up within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(gs);
    Ok(())
}

/// Waits until a GS answers bets (any answer: a bet on a round not open is refused).
async fn wait_for_gs(bus: &NatsBus) -> Result<()> {
    let table = domain::TableId::parse(&tables()[0]).map_err(|e| e.to_string())?;
    // A round far in the future: GS answers that betting is closed, which is all we wait for.
    let round = domain::RoundId::new(u64::MAX / 2).map_err(|e| e.to_string())?;
    let payload = Encoding::MsgPack.encode(&bet_request(&mut Lcg(0), &table, round))?;
    let subject = protocol::subject::bets_place_subject(&table);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match bus
            .request(&subject, payload.clone(), Duration::from_secs(5))
            .await
        {
            Err(bus::RequestError::NoResponders) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(bus::RequestError::NoResponders) => return Err("GS never answered".into()),
            _ => return Ok(()),
        }
    }
}

/// Bets on one open round until it closes (or the history has enough).
struct RoundBets {
    bus: NatsBus,
    table: domain::TableId,
    round: domain::RoundId,
    closes_at: domain::Timestamp,
    accepted: Arc<AtomicU64>,
    refused: Arc<std::sync::Mutex<HashMap<String, u64>>>,
    enough: Arc<AtomicBool>,
    in_flight: Arc<Semaphore>,
    bar: indicatif::ProgressBar,
    target: u64,
    rng: Lcg,
}

impl RoundBets {
    async fn run(mut self) {
        let mut requests = tokio::task::JoinSet::new();
        let subject = protocol::subject::bets_place_subject(&self.table);
        loop {
            let now = time::OffsetDateTime::now_utc();
            // Stop 200 ms before the close: a bet in flight then would be refused as late.
            if now + Duration::from_millis(200) >= self.closes_at.as_offset_datetime()
                || self.enough.load(Ordering::Relaxed)
            {
                break;
            }
            let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
                break;
            };
            let request = bet_request(&mut self.rng, &self.table, self.round);
            let Ok(payload) = Encoding::MsgPack.encode(&request) else {
                continue;
            };
            let bus = self.bus.clone();
            let subject = subject.clone();
            let accepted = self.accepted.clone();
            let refused = self.refused.clone();
            let enough = self.enough.clone();
            let bar = self.bar.clone();
            let target = self.target;
            requests.spawn(async move {
                let _permit = permit;
                let answer = bus
                    .request(&subject, payload, Duration::from_secs(10))
                    .await;
                let code = match answer.map_err(|e| e.to_string()).and_then(|a| {
                    Encoding::MsgPack
                        .decode::<PlaceBetReply>(&a)
                        .map_err(|e| e.to_string())
                }) {
                    Ok(PlaceBetReply::Accepted(_)) => {
                        bar.inc(1);
                        if accepted.fetch_add(1, Ordering::Relaxed) + 1 >= target {
                            enough.store(true, Ordering::Relaxed);
                        }
                        return;
                    }
                    Ok(PlaceBetReply::Rejected(rejected)) => format!("{:?}", rejected.code),
                    Err(error) => error,
                };
                if let Ok(mut refused) = refused.lock() {
                    *refused.entry(code).or_default() += 1;
                }
            });
            while requests.try_join_next().is_some() {}
        }
        while requests.join_next().await.is_some() {}
    }
}

/// A bet of the mix the history is made of: red, black, a straight or a dozen, 10..=100, by a
/// player among the deposited ones.
fn bet_request(rng: &mut Lcg, table: &domain::TableId, round: domain::RoundId) -> PlaceBetRequest {
    let n = rng.next();
    let player = domain::PlayerId::parse(&format!("p{}", n % PLAYERS as u64))
        .unwrap_or_else(|_| unreachable!("a valid player id"));
    let raw = match n % 4 {
        0 => domain::RawSelection::Red,
        1 => domain::RawSelection::Straight {
            numbers: vec![(n % 37) as u8],
        },
        2 => domain::RawSelection::Dozen {
            index: (n % 3 + 1) as u8,
        },
        _ => domain::RawSelection::Black,
    };
    PlaceBetRequest {
        request_id: format!("bench-{n}"),
        bet_id: domain::BetId::from_uuid(uuid::Uuid::new_v4()),
        player,
        table: table.clone(),
        round,
        selection: domain::Selection::parse(raw)
            .unwrap_or_else(|_| unreachable!("a valid selection")),
        amount: domain::Money::new(10 + (n % 91) as i64)
            .unwrap_or_else(|_| unreachable!("a valid stake")),
    }
}

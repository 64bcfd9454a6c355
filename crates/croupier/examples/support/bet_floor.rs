//! The capacity floor of a bet (issue 18): the work a bet costs the bus and the store, done by
//! bare clients on the stack's own servers at the step's rate, with none of croupier's logic.
//! What nats-server and Postgres spend per bet here is the least they can spend per bet in the
//! real path, so their CPU beside the step's says how much of the machine is left for the
//! services.
//!
//! Per bet, as the real path does it:
//! - a core NATS request and its reply (gateway → GS → gateway), answered after the commit;
//! - two rows (its `bet_placed` and `bet_settled`) in a copy of `events` with the same indexes
//!   and checks, by binary COPY, and one `UPDATE` of a copy of `accounts`, in one transaction
//!   per batch of requests that arrived within `LINGER`, committed with fsync, up to
//!   `IN_FLIGHT` batches at once (GS's linger, batch size and batches in flight);
//! - two JetStream publishes of a 230-byte event with a `Nats-Msg-Id` (the outbox's), at most
//!   `WINDOW` unacknowledged, and each delivered once to an ordered consumer (the gateway's
//!   one player subscription).
//!
//! Left out, so this stays a floor: the WebSocket (the client's side is loadgen's CPU, reported
//! beside), `bets`, `round_stakes` and `rounds`, the hash chain's head row, settlement as a
//! separate batch, and every check croupier makes. Its own client's CPU is printed but is not
//! part of the floor's total: croupier's adapters are the thing compared with it.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;
use tokio_postgres::binary_copy::BinaryCopyInWriter;

/// GS's default linger (ADR 0010): a batch is what arrived within it after the first.
const LINGER: Duration = Duration::from_millis(2);
/// GS's default batch size: the most requests one batch takes.
const MAX_BATCH: usize = 256;
/// GS's batches in flight at once (`gs::intake::MAX_BATCHES_IN_FLIGHT`).
const IN_FLIGHT: usize = 4;
/// The outbox's window of unacknowledged publishes (ADR 0019).
const WINDOW: usize = 256;
/// Players whose wallets the batches update, as many as bench-bets funds.
const PLAYERS: usize = 2_000;
/// A `bet_placed` is about this long in MessagePack.
const EVENT_BYTES: usize = 230;

/// What the floor measured.
pub struct BetFloor {
    pub rate: u32,
    pub answered_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU per answered bet, µs.
    pub nats_us: f64,
    pub postgres_us: f64,
    pub client_us: f64,
    pub batch_median: usize,
}

impl BetFloor {
    /// nats-server and Postgres per bet: the floor's total, µs.
    pub fn servers_us(&self) -> f64 {
        self.nats_us + self.postgres_us
    }
}

fn own_cpu() -> f64 {
    testkit::proc_stat("self")
        .and_then(|f| {
            let ticks: u64 = f
                .get(11..13)?
                .iter()
                .filter_map(|v| v.parse::<u64>().ok())
                .sum();
            Some(ticks as f64 / super::TICKS_PER_S)
        })
        .unwrap_or(0.0)
}

/// Runs the floor at `rate` bets/s for `seconds`. `server_cpu` gives (nats-server, Postgres)
/// CPU seconds so far, every process of each.
pub async fn run(
    nats_url: &str,
    database_url: &str,
    rate: u32,
    seconds: u64,
    server_cpu: impl Fn() -> (f64, f64),
) -> Result<BetFloor> {
    let (db, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    db.batch_execute(
        "DROP TABLE IF EXISTS bench_floor_events, bench_floor_accounts;
         CREATE TABLE bench_floor_events (LIKE public.events INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
         CREATE TABLE bench_floor_accounts (LIKE public.accounts INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);",
    )
    .await
    .context("floor tables")?;
    db.execute(
        "INSERT INTO bench_floor_accounts (player, balance, version)
         SELECT 'floor-' || i, 1000000000, 0 FROM generate_series(0, $1::int - 1) i",
        &[&(PLAYERS as i32)],
    )
    .await?;
    drop(db);
    driver.abort();

    let client = async_nats::connect(nats_url).await?;
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream("BENCH_FLOOR").await;
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "BENCH_FLOOR".into(),
            subjects: vec!["bench.floor.ev.>".into()],
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .context("floor stream")?;
    let mut delivered = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: "bench.floor.ev.>".into(),
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    let delivered_count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = tokio::spawn({
        let count = delivered_count.clone();
        async move {
            while let Some(Ok(_)) = delivered.next().await {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });

    let requests = client.subscribe("bench.floor.bet").await?;
    let (events, to_publish) = tokio::sync::mpsc::channel(65_536);
    let publisher = tokio::spawn(publish(js.clone(), to_publish));
    let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let responder = tokio::spawn(respond(
        database_url.to_string(),
        client.clone(),
        requests,
        events,
        sizes.clone(),
    ));

    let (nats_before, pg_before) = server_cpu();
    let own_before = own_cpu();
    let started = Instant::now();
    let total = u64::from(rate) * seconds;
    let payload = bytes::Bytes::from(vec![b'b'; 160]);
    let mut in_flight = FuturesUnordered::new();
    let mut spent = Vec::with_capacity(total as usize);
    let mut next = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while next < total || !in_flight.is_empty() {
        tokio::select! {
            _ = tick.tick(), if next < total => {
                let due_now = ((started.elapsed().as_secs_f64() * f64::from(rate)) as u64).min(total);
                while next < due_now {
                    let due = started + Duration::from_secs_f64(next as f64 / f64::from(rate));
                    let client = client.clone();
                    let payload = payload.clone();
                    in_flight.push(async move {
                        let answer = client.request("bench.floor.bet", payload).await;
                        answer.map(|_| due.elapsed().as_secs_f64() * 1e3)
                    });
                    next += 1;
                }
            }
            Some(answered) = in_flight.next() => {
                if let Ok(ms) = answered {
                    spent.push(ms);
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Every event delivered to the consumer (or 10 s), so that the servers' CPU includes it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let expected = 2 * spent.len() as u64;
    while delivered_count.load(std::sync::atomic::Ordering::Relaxed) < expected
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (nats_after, pg_after) = server_cpu();
    let own_after = own_cpu();
    responder.abort();
    publisher.abort();
    reader.abort();
    let batch_median = {
        let mut sizes = sizes.lock().map(|s| s.clone()).unwrap_or_default();
        sizes.sort_unstable();
        sizes.get(sizes.len() / 2).copied().unwrap_or(0)
    };

    let _ = js.delete_stream("BENCH_FLOOR").await;
    let (db, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    db.batch_execute("DROP TABLE IF EXISTS bench_floor_events, bench_floor_accounts")
        .await?;
    driver.abort();

    let answered = spent.len() as f64;
    spent.sort_by(f64::total_cmp);
    let per_bet = |seconds: f64| seconds / answered.max(1.0) * 1e6;
    Ok(BetFloor {
        rate,
        answered_per_s: answered / elapsed,
        p50_ms: super::percentile(&spent, 0.5),
        p99_ms: super::percentile(&spent, 0.99),
        nats_us: per_bet(nats_after - nats_before),
        postgres_us: per_bet(pg_after - pg_before),
        client_us: per_bet(own_after - own_before),
        batch_median,
    })
}

/// The responder: batches of what arrived within `LINGER` of the first (at most `MAX_BATCH`),
/// each one transaction on one of `IN_FLIGHT` connections, the replies after its commit; each
/// bet's two events then go to the publisher, as GS's outbox follows the store. A batch waits
/// for a free connection, and reading stops meanwhile, as GS's intake does (ADR 0010).
async fn respond(
    database_url: String,
    client: async_nats::Client,
    mut requests: async_nats::Subscriber,
    events: tokio::sync::mpsc::Sender<String>,
    sizes: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
) {
    let (batches, queue) = tokio::sync::mpsc::channel::<Vec<async_nats::Message>>(1);
    let queue = std::sync::Arc::new(tokio::sync::Mutex::new(queue));
    let position = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        workers.spawn(write_batches(
            database_url.clone(),
            client.clone(),
            queue.clone(),
            events.clone(),
            position.clone(),
        ));
    }
    while let Some(first) = requests.next().await {
        let mut batch = vec![first];
        let until = Instant::now() + LINGER;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(until, requests.next()).await {
                Ok(Some(more)) => batch.push(more),
                _ => break,
            }
        }
        if let Ok(mut sizes) = sizes.lock() {
            sizes.push(batch.len());
        }
        if batches.send(batch).await.is_err() {
            break;
        }
    }
    workers.abort_all();
}

/// One connection's share of the batches: COPY two rows per bet, one set-based UPDATE of the
/// wallets, commit, then the replies.
async fn write_batches(
    database_url: String,
    client: async_nats::Client,
    queue: std::sync::Arc<
        tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Vec<async_nats::Message>>>,
    >,
    events: tokio::sync::mpsc::Sender<String>,
    position: std::sync::Arc<std::sync::atomic::AtomicI64>,
) {
    let Ok((mut db, connection)) =
        tokio_postgres::connect(&database_url, tokio_postgres::NoTls).await
    else {
        return;
    };
    let driver = tokio::spawn(connection);
    let (event, metadata, hash) = (vec![b'e'; EVENT_BYTES], vec![b'm'; 40], vec![7u8; 32]);
    loop {
        let batch = {
            let mut queue = queue.lock().await;
            match queue.recv().await {
                Some(batch) => batch,
                None => break,
            }
        };
        let first =
            position.fetch_add(2 * batch.len() as i64, std::sync::atomic::Ordering::Relaxed);
        let mut players = Vec::with_capacity(batch.len());
        let amounts = vec![10i64; batch.len()];
        let written: Result<(), tokio_postgres::Error> = async {
            let tx = db.transaction().await?;
            let sink = tx
                .copy_in(&format!(
                    "COPY bench_floor_events ({}) FROM STDIN (FORMAT binary)",
                    store::EVENT_COLUMNS
                ))
                .await?;
            let writer = BinaryCopyInWriter::new(sink, &store::EVENT_COLUMN_TYPES);
            futures_util::pin_mut!(writer);
            let now = std::time::SystemTime::now();
            let mut at = first;
            for _ in &batch {
                let player = format!("floor-{}", (at / 2) % PLAYERS as i64);
                let stream = format!("player-{player}");
                for kind in ["bet_placed", "bet_settled"] {
                    at += 1;
                    let id = uuid::Uuid::from_u128(at as u128);
                    let version = i32::try_from(at).unwrap_or(i32::MAX);
                    writer
                        .as_mut()
                        .write(&[
                            &at, &id, &stream, &version, &kind, &event, &metadata, &now, &hash,
                        ])
                        .await?;
                }
                players.push(player);
            }
            writer.finish().await?;
            tx.execute(
                "UPDATE bench_floor_accounts a SET balance = a.balance - u.amount, \
                 version = a.version + 1, updated_at = now() \
                 FROM unnest($1::text[], $2::int8[]) AS u(player, amount) \
                 WHERE a.player = u.player",
                &[&players, &amounts],
            )
            .await?;
            tx.commit().await
        }
        .await;
        if written.is_err() {
            break;
        }
        for (request, player) in batch.iter().zip(players) {
            if let Some(reply) = &request.reply {
                let _ = client
                    .publish(reply.clone(), bytes::Bytes::from_static(b"ok"))
                    .await;
            }
            if events.send(player).await.is_err() {
                break;
            }
        }
    }
    driver.abort();
}

/// The outbox's part: two publishes per bet, at most `WINDOW` unacknowledged.
async fn publish(js: jetstream::Context, mut players: tokio::sync::mpsc::Receiver<String>) {
    let event = bytes::Bytes::from(vec![b'e'; EVENT_BYTES]);
    let mut acks = VecDeque::with_capacity(WINDOW);
    let mut n = 0u64;
    while let Some(player) = players.recv().await {
        for kind in ["placed", "settled"] {
            if acks.len() >= WINDOW
                && let Some(ack) = acks.pop_front()
            {
                let _ = ack.await;
            }
            n += 1;
            let message = jetstream::message::PublishMessage::build()
                .payload(event.clone())
                .message_id(format!("floor-{n}"));
            match js
                .send_publish(format!("bench.floor.ev.{player}.{kind}"), message)
                .await
            {
                Ok(ack) => acks.push_back(ack),
                Err(_) => return,
            }
        }
    }
}

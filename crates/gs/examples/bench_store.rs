//! `just bench-store`: the store's write path against the physical anchors, on one durable
//! Postgres (fsync on). Not a test: it prints figures and whether the targets of issue 7 hold.
//!
//! - our batched append (`gs::ledger::place_bets`: idempotency, chain, read models and wallet
//!   debits included), batches of 10k bets;
//! - a binary COPY of the same rows into a table with the same indexes as `events`;
//! - a bare binary COPY with no indexes;
//! - placement's writes alone: the same events, debits and stake totals written by bare
//!   statements into copies of those tables, with no reads, locks or judging (a ceiling
//!   on what the batched append can reach);
//! - a row-at-a-time INSERT baseline (one prepared statement per row);
//! - settlement of 10k and of 100k bets (events, payouts, balances).
//!
//! The five write paths run interleaved batch by batch (15 batches; the row-at-a-time one in
//! the first 5 only, it is slow). The table shows each path's median batch; the verdicts use
//! the median over batches of ours against the anchor batch that ran right after it, so a
//! slow drift of a shared machine falls on both sides of each ratio.
//!
//! `BENCH_STAGES=1` prints where each batch's and settlement's time went. `BENCH_SHORT=1` is the
//! short pass `just bench-bets` runs as a floor: 5 batches, no row-at-a-time baseline, the 10k
//! settlement only. `BENCH_SETTLE_10K=n` settles n rounds of 10k bets instead of one and prints
//! their median (a single settlement varies by a third from run to run here).
//!
//! Uses `DATABASE_URL` when set (a fresh database is made there), else a private durable
//! server from the test harness.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use domain::{
    BetId, Money, PlayerId, RawSelection, RoundId, Selection, TableId, TableLimits, Timestamp,
};
use futures_util::pin_mut;
use gs::ledger::{self, BetOutcome, BetRequest};
use protocol::{Event, EventBody, OutcomeDeclared, RoundOpened};
use store::{PoolConfig, Store};
use tokio_postgres::NoTls;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

const BATCH: usize = 10_000;
const APPEND_BATCHES: usize = 15;
const ROW_AT_A_TIME_BATCHES: usize = 5;
const PLAYERS: usize = 2_000;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn now() -> Timestamp {
    Timestamp::from_offset_datetime(time::OffsetDateTime::now_utc())
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

fn player(i: usize) -> PlayerId {
    PlayerId::parse(&format!("bench-{i}")).unwrap_or_else(|_| unreachable!())
}

fn selection(i: usize) -> Selection {
    let raw = match i % 4 {
        0 => RawSelection::Red,
        1 => RawSelection::Straight {
            numbers: vec![(i % 37) as u8],
        },
        2 => RawSelection::Dozen {
            index: (i % 3 + 1) as u8,
        },
        _ => RawSelection::Even,
    };
    Selection::parse(raw).unwrap_or_else(|_| unreachable!())
}

fn bets(table: &TableId, round: u64, n: usize, offset: usize) -> Vec<BetRequest> {
    (0..n)
        .map(|i| BetRequest {
            bet_id: BetId::from_uuid(Uuid::new_v4()),
            player: player((i + offset) % PLAYERS),
            table: table.clone(),
            round: RoundId::new(round).unwrap_or_else(|_| unreachable!()),
            selection: selection(i),
            amount: Money::stake(10 + (i % 90) as i64).unwrap_or_else(|_| unreachable!()),
        })
        .collect()
}

async fn transition(store: &Store, body: EventBody, seq: u64) -> Result<()> {
    ledger::record_transition(store, &Event::new(Uuid::new_v4(), now(), body), seq).await?;
    Ok(())
}

async fn open(store: &Store, table: &TableId, round: u64, seq: u64) -> Result<()> {
    let seed = domain::ServerSeed::from_bytes([round as u8; 32]);
    transition(
        store,
        EventBody::RoundOpened(RoundOpened {
            table: table.clone(),
            round: RoundId::new(round)?,
            closes_at: now()
                .checked_add(Duration::from_secs(3600))
                .ok_or("closes_at")?,
            seed_hash: seed.hash(),
        }),
        seq,
    )
    .await
}

async fn declare(store: &Store, table: &TableId, round: u64, seq: u64) -> Result<()> {
    let seed = domain::ServerSeed::from_bytes([round as u8; 32]);
    let round_id = RoundId::new(round)?;
    transition(
        store,
        EventBody::OutcomeDeclared(OutcomeDeclared {
            table: table.clone(),
            round: round_id,
            outcome: domain::fairness::outcome(&seed, table, round_id),
            server_seed: seed,
        }),
        seq,
    )
    .await
}

async fn place_all(store: &Store, bets: &[BetRequest], limits: &TableLimits) -> Result<Duration> {
    let mut spent = Duration::ZERO;
    for chunk in bets.chunks(BATCH) {
        let started = Instant::now();
        let outcomes = ledger::place_bets(store, chunk, limits, now()).await?;
        spent += started.elapsed();
        let refused = outcomes
            .iter()
            .filter(|o| matches!(o, BetOutcome::Rejected { .. }))
            .count();
        if refused > 0 {
            return Err(format!(
                "{refused} bets refused: {:?}",
                outcomes
                    .iter()
                    .find(|o| matches!(o, BetOutcome::Rejected { .. }))
            )
            .into());
        }
    }
    Ok(spent)
}

/// Bet-shaped rows for the COPY anchors: what `events` gets for a bet.
struct Row {
    position: i64,
    event_id: Uuid,
    stream: String,
    version: i32,
    kind: &'static str,
    data: Vec<u8>,
    metadata: Vec<u8>,
    recorded_at: time::OffsetDateTime,
    hash: Vec<u8>,
}

impl Row {
    /// The row's values in the order of `store::EVENT_COLUMNS`.
    fn values(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.position,
            &self.event_id,
            &self.stream,
            &self.version,
            &self.kind,
            &self.data,
            &self.metadata,
            &self.recorded_at,
            &self.hash,
        ]
    }
}

fn rows(n: usize, table: &TableId) -> Result<Vec<Row>> {
    let mut prev = store::GENESIS_HASH;
    let mut out = Vec::with_capacity(n);
    for (i, bet) in bets(table, 1, n, 0).into_iter().enumerate() {
        let event = Event::new(
            ledger::bet_placed_id(&bet.bet_id),
            now(),
            EventBody::BetPlaced(bet.placed(Money::new(1_000_000)?)),
        );
        let data = protocol::encode_event(&event)?.to_vec();
        let stream = format!("player-{}", bet.player);
        let position = i as i64 + 1;
        let hash = store::chain_hash(&prev, position, event.id, &stream, "bet_placed", &data, &[]);
        prev = hash;
        out.push(Row {
            position,
            event_id: event.id,
            stream,
            version: (i / PLAYERS) as i32 + 1,
            kind: "bet_placed",
            data,
            metadata: Vec::new(),
            recorded_at: time::OffsetDateTime::now_utc(),
            hash: hash.to_vec(),
        });
    }
    Ok(out)
}

/// One binary COPY of event rows into `target`, inside the caller's transaction.
async fn copy_rows(tx: &tokio_postgres::Transaction<'_>, target: &str, rows: &[Row]) -> Result<()> {
    let sink = tx
        .copy_in(&format!(
            "COPY {target} ({}) FROM STDIN BINARY",
            store::EVENT_COLUMNS
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &store::EVENT_COLUMN_TYPES);
    pin_mut!(writer);
    for row in rows {
        writer.as_mut().write(&row.values()).await?;
    }
    writer.finish().await?;
    Ok(())
}

async fn copy_into(
    client: &mut tokio_postgres::Client,
    target: &str,
    rows: &[Row],
) -> Result<Duration> {
    let mut spent = Duration::ZERO;
    for chunk in rows.chunks(BATCH) {
        let started = Instant::now();
        let tx = client.transaction().await?;
        copy_rows(&tx, target, chunk).await?;
        tx.commit().await?;
        spent += started.elapsed();
    }
    Ok(spent)
}

/// Wallet balance and version per player, and the stake keys already stored, as the bare
/// writes keep them.
#[derive(Default)]
struct Ledger {
    wallets: HashMap<String, (i64, i32)>,
    staked: HashSet<String>,
}

/// The writes a placement batch makes, by bare statements on the anchors' connection, into
/// copies of `events`, `accounts` and `round_stakes` (same columns, indexes, checks and fill
/// factors): the debits and the stake totals with each player's stream versions (one
/// set-based statement each, pipelined), the events by binary COPY, one commit with fsync. No reads, no
/// locks, no judging, no chain. `place_bets` writes exactly this and does more, so its rate is
/// a ceiling on ours.
async fn writes_into(
    client: &mut tokio_postgres::Client,
    rows: &[Row],
    bets: &[BetRequest],
    ledger: &mut Ledger,
) -> Result<Duration> {
    let mut spent = Duration::ZERO;
    for (rows, bets) in rows.chunks(BATCH).zip(bets.chunks(BATCH)) {
        // Per player: what the batch debits and how many bets it adds (computed before the
        // clock starts, as the anchors' rows are).
        let mut per_player: BTreeMap<&str, (i64, i32)> = BTreeMap::new();
        for bet in bets {
            let entry = per_player.entry(bet.player.as_str()).or_default();
            entry.0 += bet.amount.get();
            entry.1 += 1;
        }
        let (mut players, mut balances, mut versions) = (vec![], vec![], vec![]);
        let (mut old, mut new) = (StakeColumns::default(), StakeColumns::default());
        for (player, (amount, count)) in &per_player {
            let wallet = ledger
                .wallets
                .entry(player.to_string())
                .or_insert((1_000_000_000, 1));
            wallet.0 -= amount;
            wallet.1 += count;
            players.push(*player);
            balances.push(wallet.0);
            versions.push(wallet.1);
            let to = if ledger.staked.insert(player.to_string()) {
                &mut new
            } else {
                &mut old
            };
            to.players.push(*player);
            to.stakes.push(*amount);
            to.counts.push(*count);
            to.firsts.push(wallet.1 - count + 1);
            to.lasts.push(wallet.1);
        }
        let table = bets.first().map_or("bench", |b| b.table.as_str());
        let round = bets.first().map_or(1, |b| b.round.get() as i64);
        let (old_tables, new_tables) = (
            vec![table; old.players.len()],
            vec![table; new.players.len()],
        );
        let (old_rounds, new_rounds) = (
            vec![round; old.players.len()],
            vec![round; new.players.len()],
        );
        let now = time::OffsetDateTime::now_utc();

        let started = Instant::now();
        let tx = client.transaction().await?;
        let debit_params: [&(dyn ToSql + Sync); 4] = [&players, &balances, &versions, &now];
        let stake_params: [&(dyn ToSql + Sync); 13] = [
            &old_tables,
            &old_rounds,
            &old.players,
            &old.stakes,
            &old.counts,
            &old.lasts,
            &new_tables,
            &new_rounds,
            &new.players,
            &new.stakes,
            &new.counts,
            &new.firsts,
            &new.lasts,
        ];
        let debits = tx.execute(
            "UPDATE bench_w_accounts SET balance = u.b, version = u.v, updated_at = $4 \
             FROM unnest($1::text[], $2::int8[], $3::int4[]) AS u(p, b, v) \
             WHERE bench_w_accounts.player = u.p",
            &debit_params,
        );
        let stakes = tx.execute(
            "WITH updated AS ( \
                 UPDATE bench_w_stakes s \
                 SET staked = s.staked + u.a, bets = s.bets + u.c, last_version = u.l \
                 FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::int4[], \
                             $6::int4[]) AS u(t, n, p, a, c, l) \
                 WHERE s.table_id = u.t AND s.round = u.n AND s.player = u.p \
             ) \
             INSERT INTO bench_w_stakes (table_id, round, player, staked, bets, first_version, \
                                         last_version) \
             SELECT * FROM unnest($7::text[], $8::int8[], $9::text[], $10::int8[], \
                                  $11::int4[], $12::int4[], $13::int4[])",
            &stake_params,
        );
        let (debited, staked) = futures_util::join!(debits, stakes);
        debited?;
        staked?;
        copy_rows(&tx, "bench_w_events", rows).await?;
        tx.commit().await?;
        spent += started.elapsed();
    }
    Ok(spent)
}

/// `round_stakes` changes as statement parameters (the table and round are the batch's own).
#[derive(Default)]
struct StakeColumns<'a> {
    players: Vec<&'a str>,
    stakes: Vec<i64>,
    counts: Vec<i32>,
    firsts: Vec<i32>,
    lasts: Vec<i32>,
}

async fn row_at_a_time(client: &mut tokio_postgres::Client, rows: &[Row]) -> Result<Duration> {
    let mut spent = Duration::ZERO;
    for chunk in rows.chunks(BATCH) {
        let started = Instant::now();
        let tx = client.transaction().await?;
        let insert = tx
            .prepare_typed(
                &format!(
                    "INSERT INTO bench_rows ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    store::EVENT_COLUMNS
                ),
                &store::EVENT_COLUMN_TYPES,
            )
            .await?;
        for row in chunk {
            tx.execute(&insert, &row.values()).await?;
        }
        tx.commit().await?;
        spent += started.elapsed();
    }
    Ok(spent)
}

fn median(spent: &mut [Duration]) -> Duration {
    spent.sort();
    spent.get(spent.len() / 2).copied().unwrap_or(Duration::MAX)
}

fn rate(rows: usize, spent: Duration) -> f64 {
    rows as f64 / spent.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // `BENCH_STAGES=1`: every ledger transaction's stage breakdown, and each batch's times, on
    // stderr.
    let stages = std::env::var_os("BENCH_STAGES").is_some();
    let short = std::env::var_os("BENCH_SHORT").is_some();
    // `BENCH_SETTLE_10K=n`: settle n rounds of 10k bets instead of one (their median is printed).
    let settle_10k: u64 = std::env::var("BENCH_SETTLE_10K")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut settle_sizes: Vec<(u64, usize)> = (0..settle_10k).map(|i| (2 + i, 10_000)).collect();
    let (append_batches, row_batches) = if short {
        (5, 0)
    } else {
        settle_sizes.push((2 + settle_10k, 100_000));
        (APPEND_BATCHES, ROW_AT_A_TIME_BATCHES)
    };
    if stages {
        tracing_subscriber::fmt()
            .with_env_filter("gs::stages=debug")
            .with_writer(std::io::stderr)
            .init();
    }
    let _server;
    let url = match std::env::var("DATABASE_URL") {
        Ok(_) => {
            let databases = testkit::postgres()?;
            let db = databases
                .database(
                    &format!("bench-{}", store::migrations_fingerprint()),
                    |url| async move { store::migrate_url(&url).await.map(|_| ()) },
                )
                .await?;
            let url = db.url.clone();
            _server = (None, Some(db));
            url
        }
        Err(_) => {
            let server = testkit::PgServer::start(testkit::PgServerOptions { durable: true })?;
            let db = server
                .databases()
                .database(
                    &format!("bench-{}", store::migrations_fingerprint()),
                    |url| async move { store::migrate_url(&url).await.map(|_| ()) },
                )
                .await?;
            let url = db.url.clone();
            _server = (Some(server), Some(db));
            url
        }
    };
    let mut pool = PoolConfig::new(url.clone());
    pool.max_size = 4;
    pool.statement_timeout = Duration::from_secs(120);
    pool.idle_in_transaction_timeout = Duration::from_secs(120);
    pool.call_timeout = Duration::from_secs(120);
    let store = Store::new(&pool)?;
    let (mut client, connection) = tokio_postgres::connect(&url, NoTls).await?;
    tokio::spawn(connection);
    let limits = TableLimits::new(Money::new(1)?, Money::new(100_000)?, Money::MAX)?;
    let table = TableId::parse("bench")?;

    eprintln!("setting up {PLAYERS} wallets …");
    for i in 0..PLAYERS {
        let id = protocol::DepositId::parse(&format!("bench-deposit-{i}"))?;
        ledger::deposit(&store, &player(i), Money::new(1_000_000_000)?, &id).await?;
    }
    let mut seq = 0;
    let mut next_seq = || {
        seq += 1;
        seq
    };

    // 1–4, interleaved batch by batch, so that whatever else the machine is doing falls on
    // all four alike; each is reported as the median batch.
    open(&store, &table, 1, next_seq()).await?;
    let appended = append_batches * BATCH;
    client
        .batch_execute(
            "CREATE TABLE bench_indexed (LIKE events INCLUDING ALL);
             CREATE TABLE bench_bare (LIKE events);
             CREATE TABLE bench_rows (LIKE events INCLUDING ALL);
             CREATE TABLE bench_w_events (LIKE events INCLUDING ALL);
             CREATE TABLE bench_w_accounts (LIKE accounts INCLUDING ALL) WITH (fillfactor = 50);
             CREATE TABLE bench_w_stakes (LIKE round_stakes INCLUDING ALL) WITH (fillfactor = 50);",
        )
        .await?;
    client
        .execute(
            "INSERT INTO bench_w_accounts (player, balance, version) \
             SELECT player, balance, version FROM accounts",
            &[],
        )
        .await?;
    let mut bare_ledger = Ledger::default();
    let our_bets = bets(&table, 1, appended, 0);
    let anchor_rows = rows(appended, &table)?;
    let (mut ours, mut indexed, mut bare, mut single) = (vec![], vec![], vec![], vec![]);
    let mut writes = vec![];
    for batch in 0..append_batches {
        eprintln!("batch {} of {append_batches} …", batch + 1);
        let range = batch * BATCH..(batch + 1) * BATCH;
        ours.push(place_all(&store, &our_bets[range.clone()], &limits).await?);
        indexed.push(copy_into(&mut client, "bench_indexed", &anchor_rows[range.clone()]).await?);
        bare.push(copy_into(&mut client, "bench_bare", &anchor_rows[range.clone()]).await?);
        writes.push(
            writes_into(
                &mut client,
                &anchor_rows[range.clone()],
                &our_bets[range.clone()],
                &mut bare_ledger,
            )
            .await?,
        );
        if batch < row_batches {
            single.push(row_at_a_time(&mut client, &anchor_rows[range]).await?);
        }
        if stages {
            eprintln!(
                "batch {}: ours {:.1} ms, indexed COPY {:.1} ms, bare COPY {:.1} ms",
                batch + 1,
                ours[batch].as_secs_f64() * 1e3,
                indexed[batch].as_secs_f64() * 1e3,
                bare[batch].as_secs_f64() * 1e3
            );
        }
    }

    // 5. Settlement of 10k and 100k bets.
    let mut settlements = Vec::new();
    for &(round, n) in &settle_sizes {
        open(&store, &table, round, next_seq()).await?;
        eprintln!("placing {n} bets for settlement …");
        place_all(&store, &bets(&table, round, n, round as usize), &limits).await?;
        declare(&store, &table, round, next_seq()).await?;
        let started = Instant::now();
        let settled = ledger::settle_round(&store, &table, RoundId::new(round)?)
            .await?
            .ok_or("nothing to settle")?;
        let spent = started.elapsed();
        assert_eq!(settled.bets as usize, n);
        settlements.push((n, spent));
    }
    store.verify_chain(1, |_| {}).await?;

    // The verdicts compare each batch of ours with the anchor batch that ran right after it
    // (median of those ratios), so a slow drift of the shared machine cancels out.
    let paired = |anchor: &[Duration], ours: &[Duration]| {
        let mut ratios: Vec<f64> = anchor
            .iter()
            .zip(ours)
            .map(|(a, o)| a.as_secs_f64() / o.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios.get(ratios.len() / 2).copied().unwrap_or(0.0)
    };
    let vs_copy = paired(&indexed, &ours);
    let writes_vs_copy = paired(&indexed, &writes);
    let vs_single = paired(&single, &ours);
    let ours_rate = rate(BATCH, median(&mut ours));
    let indexed_rate = rate(BATCH, median(&mut indexed));
    let bare_rate = rate(BATCH, median(&mut bare));
    let writes_rate = rate(BATCH, median(&mut writes));
    let single_rate = rate(BATCH, median(&mut single));
    println!();
    println!(
        "bench-store: durable Postgres (fsync on), bet-shaped rows, batches of {BATCH}, \
         rows/s of the median batch"
    );
    println!(
        "| what                                           |       rows |   rows/s | vs indexed COPY |"
    );
    println!(
        "|------------------------------------------------|-----------:|---------:|----------------:|"
    );
    for (what, n, r) in [
        (
            "batched append (GS place_bets, all included)",
            appended,
            ours_rate,
        ),
        ("binary COPY, events' indexes", appended, indexed_rate),
        ("binary COPY, no indexes", appended, bare_rate),
        (
            "placement's writes alone, bare statements",
            appended,
            writes_rate,
        ),
        (
            "row-at-a-time INSERT (prepared)",
            row_batches * BATCH,
            single_rate,
        ),
    ] {
        if n == 0 {
            continue;
        }
        println!(
            "| {what:<46} | {n:>10} | {r:>8.0} | {:>14.2}× |",
            r / indexed_rate
        );
    }
    println!();
    println!("| settlement (claim, bet_settled × n, round_settled, payouts, balances) | seconds |");
    println!("|----------------------------------------------------------------------|--------:|");
    for (n, spent) in &settlements {
        println!("| {n:>7} bets {:<57} | {:>7.3} |", "", spent.as_secs_f64());
    }
    println!();
    println!(
        "(the ratios below: median over batches of ours against the anchor batch run right \
         after it)"
    );
    let big = settlements
        .last()
        .map(|(_, s)| s.as_secs_f64())
        .unwrap_or(f64::MAX);
    let mut ten_k: Vec<Duration> = settlements
        .iter()
        .filter(|(n, _)| *n == 10_000)
        .map(|(_, s)| *s)
        .collect();
    let ten_k_rounds = ten_k.len();
    let ten_k = median(&mut ten_k).as_secs_f64();
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "append / indexed COPY = {vs_copy:.2} (target ≥ 0.5): {}",
        verdict(vs_copy >= 0.5)
    );
    println!(
        "placement's writes alone / indexed COPY = {writes_vs_copy:.2} (a ceiling on the \
         batched append's ratio: place_bets writes these and does more)"
    );
    if short || ten_k_rounds > 1 {
        println!("10k settlement = {ten_k:.3} s (median of {ten_k_rounds})");
    }
    if short {
        return Ok(());
    }
    println!(
        "append / row-at-a-time = {vs_single:.1} (target ≥ 10): {}",
        verdict(vs_single >= 10.0)
    );
    println!(
        "100k settlement = {big:.2} s (target ≤ 2 s): {}",
        verdict(big <= 2.0)
    );
    Ok(())
}

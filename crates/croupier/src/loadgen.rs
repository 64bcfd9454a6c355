//! `croupier loadgen`: many WebSocket clients on one table, some of them betting, with a
//! latency report (`docs/contract/cli.md`). A benchmark tool, not a test: it measures, it asserts
//! nothing.
//!
//! - publish→client latency: from each event's `at` (stamped by its publisher) to its arrival;
//! - bet→answer latency, for the `--bettors` clients;
//! - messages delivered per second, unexpected drops, and closes with 4008 (slow consumer);
//! - with `--server-pid`, the server's own RSS per connection (read from `/proc`).
//!
//! `--target nats` speaks the NATS protocol over WebSocket instead (nats-server's own
//! `websocket` listener), subscribing to the same subject, so both servers can be measured
//! side by side on the same events. `--publish-rate` makes loadgen itself publish synthetic
//! `round_opened` events to `table.<table>.round` on JetStream at that rate, for both.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bus::Bus;
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

use crate::config::Resolved;

mod bets;
mod clients;

pub use bets::{BetReport, RoundReport};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Croupier's gateway, protocol v1 (JSON).
    Croupier,
    /// nats-server's WebSocket listener, NATS protocol.
    Nats,
}

#[derive(Debug, Clone, Args)]
pub struct LoadgenArgs {
    /// WebSocket URL, e.g. ws://127.0.0.1:8080/ws (or nats-server's ws://127.0.0.1:9222).
    #[arg(long)]
    pub url: String,
    #[arg(long, value_enum, default_value = "croupier")]
    pub target: Target,
    /// Concurrent clients.
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// How many of the clients also bet (Croupier only; each gets a token for player lg-<i>).
    #[arg(long, default_value_t = 0)]
    pub bettors: usize,
    /// How long to measure once every client is connected, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// The tables to follow, comma-separated: client `i` follows the `i mod n`-th.
    #[arg(long, default_value = "roulette-1")]
    pub table: String,
    /// Bet at this total rate (bets/s, all tables together) while rounds are open,
    /// open-loop: a bet is due every `1/rate` whatever the answers do, and its latency is timed
    /// from when it was due. Bets go round-robin over each table's bettors, four in five
    /// even-money and one in five straight up; a `TIMEOUT` is retried with the same `bet_id`.
    /// Bettors also follow their player channel (for `bet_settled`). Without it, each bettor
    /// bets once per round.
    #[arg(long)]
    pub bet_rate: Option<f64>,
    /// Bettor `i` bets as player `<players>-<i>` (fund them first: `croupier wallet deposit`).
    #[arg(long, default_value = "lg")]
    pub players: String,
    /// With `--bet-rate`: stop betting on a round this long before its `closes_at`.
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub close_margin: Duration,
    /// With `--bet-rate`: write every bet's final answer to this file, one line per bet,
    /// tab-separated: bet id, player, table, round, answer (`accepted`, the error code, or
    /// `none` when no definite answer came). `croupier audit-bets FILE` checks it.
    #[arg(long)]
    pub bets_out: Option<std::path::PathBuf>,
    /// With `--bet-rate`: after the run, wait up to this long for every round that took the
    /// run's bets to be settled, so that the report times each settlement (and the clients'
    /// `bet_settled`).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub wait_settled: Duration,
    /// Spread clients over this many source addresses 127.0.0.1.. (when ports run short).
    #[arg(long, default_value_t = 1)]
    pub source_addrs: u8,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 1000)]
    pub connect_rate: u32,
    /// Publish synthetic events to `table.<table>.round` on JetStream at this rate (per second).
    #[arg(long)]
    pub publish_rate: Option<f64>,
    /// Sample this process's RSS before and after connecting (the server under test).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// No progress bar (for scripts).
    #[arg(long)]
    pub quiet: bool,
    /// Threads reading the clients' sockets (each polls its share of them). One by default:
    /// loadgen shares the machine with the server it measures, and a second thread mostly adds
    /// wakeups and context switches on two cores.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Before a reader thread waits for its sockets, it first sleeps this long, so that it
    /// wakes to many readable sockets at once instead of once per message (each wakeup is paid
    /// by the sender too). Adds at most this much to every latency measured, never less:
    /// `0s` turns it off.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub read_batching: Duration,
}

/// The runtime loadgen runs on: one thread for connecting, publishing and the report; the
/// connected clients are read by [`LoadgenArgs::threads`] threads of their own.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// What one run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub target: String,
    pub clients: usize,
    pub connected: u64,
    pub connect_failures: u64,
    pub duration_s: f64,
    pub delivered: u64,
    pub delivered_per_s: f64,
    pub latency_ms: Percentiles,
    pub bets_answered: u64,
    pub bets_accepted: u64,
    pub bet_latency_ms: Percentiles,
    pub drops: u64,
    pub slow_consumer_closes: u64,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    pub server_rss_per_connection_kib: Option<f64>,
    /// `--bet-rate` only.
    pub bets: Option<BetReport>,
}

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        // Recorded in microseconds; reported in milliseconds.
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            samples: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// Counters shared by the reader threads and the report.
struct Shared {
    delivered: AtomicU64,
    connected: AtomicU64,
    connect_failures: AtomicU64,
    drops: AtomicU64,
    slow_closes: AtomicU64,
    bets_answered: AtomicU64,
    bets_accepted: AtomicU64,
    /// Set while measuring: deliveries during the ramp-up are not counted.
    measuring: AtomicBool,
    /// `--bet-rate`: set while bets are to be made.
    betting: AtomicBool,
    /// `--bet-rate`: bets sent without a final answer yet.
    bets_outstanding: AtomicU64,
    /// `--bet-rate`: rounds with accepted bets whose `round_settled` has not arrived (summed
    /// over the reader threads, each counting the rounds it bet on).
    rounds_unsettled: std::sync::atomic::AtomicI64,
}

impl Shared {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            delivered: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            slow_closes: AtomicU64::new(0),
            bets_answered: AtomicU64::new(0),
            bets_accepted: AtomicU64::new(0),
            measuring: AtomicBool::new(false),
            betting: AtomicBool::new(false),
            bets_outstanding: AtomicU64::new(0),
            rounds_unsettled: std::sync::atomic::AtomicI64::new(0),
        })
    }

    fn is_measuring(&self) -> bool {
        self.measuring.load(Ordering::Relaxed)
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 µs to 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).context("create a histogram")
}

pub async fn run(args: LoadgenArgs, settings: Resolved) -> anyhow::Result<()> {
    if args.clients == 0 {
        anyhow::bail!("--clients must be at least 1");
    }
    if args.bettors > args.clients {
        anyhow::bail!(
            "--bettors ({}) cannot exceed --clients ({})",
            args.bettors,
            args.clients
        );
    }
    if args.bettors > 0 && args.target == Target::Nats {
        anyhow::bail!("--bettors works only with --target croupier");
    }
    let tables: Vec<String> = args
        .table
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect();
    for table in &tables {
        domain::TableId::parse(table).map_err(|e| anyhow::anyhow!("--table {table}: {e}"))?;
    }
    if tables.is_empty() {
        anyhow::bail!("--table names no table");
    }
    let threads = args.threads.max(1);
    let bet_every = match args.bet_rate {
        Some(rate) if rate.is_finite() && rate > 0.0 => {
            if args.bettors == 0 {
                anyhow::bail!("--bet-rate needs --bettors");
            }
            let per_table = rate / (threads * tables.len()) as f64;
            Some(Duration::from_secs_f64(1.0 / per_table))
        }
        Some(rate) => anyhow::bail!("--bet-rate must be a positive number of bets/s, not {rate}"),
        None => {
            if args.bets_out.is_some() {
                anyhow::bail!("--bets-out needs --bet-rate");
            }
            None
        }
    };
    let bets_out = match &args.bets_out {
        Some(path) => Some(
            bets::BetsOut::create(path).with_context(|| format!("create {}", path.display()))?,
        ),
        None => None,
    };
    let secret = gateway::JwtSecret::new(&settings.jwt_secret).context("CROUPIER_JWT_SECRET")?;
    let shared = Arc::new(Shared::new()?);
    let stop = CancellationToken::new();
    let rss_before = args.server_pid.and_then(rss_kib);

    let publisher = match args.publish_rate {
        Some(rate) if rate > 0.0 => {
            let bus = bus::NatsBus::connect(
                &settings.nats_url,
                &settings.nats_prefix,
                bus::NatsOptions::default(),
            )
            .await
            .with_context(|| format!("connect to NATS at {} to publish", settings.nats_url))?;
            bus.setup(&settings.definitions())
                .await
                .context("streams")?;
            Some(tokio::spawn(publish(
                bus,
                tables[0].clone(),
                rate,
                stop.clone(),
            )))
        }
        _ => None,
    };

    let reader_config = Arc::new(clients::ReaderConfig {
        target: args.target,
        tables: tables.clone(),
        read_batching: args.read_batching,
        bet_every,
        close_margin_us: args.close_margin.as_micros() as i64,
        players: args.players.clone(),
        bets_out: bets_out.clone(),
    });
    let mut readers = Vec::new();
    for _ in 0..threads {
        readers.push(clients::spawn_reader(
            reader_config.clone(),
            shared.clone(),
            stop.clone(),
        )?);
    }
    let url = Arc::new(args.url.clone());
    let first = |table: &str, player: Option<&str>| -> Vec<String> {
        match args.target {
            Target::Croupier => {
                let mut first = vec![
                    serde_json::json!({"type": "subscribe", "channel": format!("table.{table}")})
                        .to_string(),
                ];
                if let Some(player) = player.filter(|_| bet_every.is_some()) {
                    first.push(
                        serde_json::json!({"type": "subscribe", "channel": format!("player.{player}")})
                            .to_string(),
                    );
                }
                first
            }
            Target::Nats => vec![format!(
                "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"headers\":false}}\r\nSUB table.{table}.round 1\r\n"
            )],
        }
    };

    let progress = progress_bar(&args, args.clients as u64, "connecting");
    let mut connecting = tokio::task::JoinSet::new();
    let gap = Duration::from_secs_f64(1.0 / f64::from(args.connect_rate.max(1)));
    for i in 0..args.clients {
        let player_name = format!("{}-{i}", args.players);
        let table = i % tables.len();
        let token = (i < args.bettors).then(|| {
            let player = domain::PlayerId::parse(&player_name).map_err(|e| anyhow::anyhow!("{e}"));
            player.map(|p| {
                gateway::auth::mint(
                    &secret,
                    &p,
                    Duration::from_secs(3600),
                    gateway::auth::now_unix(),
                )
            })
        });
        let token = token.transpose()?;
        let client = Client {
            index: i,
            url: url.clone(),
            target: args.target,
            first: first(
                &tables[table],
                (i < args.bettors).then_some(player_name.as_str()),
            ),
            table,
            token,
            source: source_addr(i, args.source_addrs),
        };
        let reader = readers[i % readers.len()].0.clone();
        let counters = shared.clone();
        connecting.spawn(async move {
            match client.connect().await {
                Ok(connected) => {
                    counters.connected.fetch_add(1, Ordering::Relaxed);
                    reader.hand_over(connected).await;
                }
                Err(error) => {
                    tracing::debug!(client = client.index, %error, "connect failed");
                    counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        while connecting.try_join_next().is_some() {}
        progress.set_position(shared.connected.load(Ordering::Relaxed));
        tokio::time::sleep(gap).await;
    }
    // Wait (bounded) for the ramp-up to settle.
    let ramp_deadline = Instant::now() + Duration::from_secs(60);
    while shared.connected.load(Ordering::Relaxed) + shared.connect_failures.load(Ordering::Relaxed)
        < args.clients as u64
        && Instant::now() < ramp_deadline
    {
        progress.set_position(shared.connected.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress.finish_and_clear();
    // Let the server settle before its memory is read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = args.server_pid.and_then(rss_kib);

    shared.measuring.store(true, Ordering::Relaxed);
    shared.betting.store(bet_every.is_some(), Ordering::Relaxed);
    let measure_start = Instant::now();
    let delivered_before = shared.delivered.load(Ordering::Relaxed);
    let bar = progress_bar(&args, args.duration.as_secs().max(1), "measuring (s)");
    while measure_start.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        bar.set_position(measure_start.elapsed().as_secs());
        bar.set_message(format!(
            "{} delivered, {} dropped",
            shared.delivered.load(Ordering::Relaxed) - delivered_before,
            shared.drops.load(Ordering::Relaxed)
        ));
    }
    bar.finish_and_clear();
    shared.measuring.store(false, Ordering::Relaxed);
    let elapsed = measure_start.elapsed().as_secs_f64();
    if bet_every.is_some() {
        // No new bets; the ones sent get a while to be answered (a bet waits at most the
        // gateway's bet timeout, then a few retries of a `TIMEOUT`).
        shared.betting.store(false, Ordering::Relaxed);
        for (handle, _) in &readers {
            handle.wake();
        }
        let drain_until = Instant::now() + Duration::from_secs(30);
        while shared.bets_outstanding.load(Ordering::Relaxed) > 0 && Instant::now() < drain_until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // `--wait-settled`: the rounds bet on are settled before the report, so that it
        // times every settlement of the run.
        let settle_until = Instant::now() + args.wait_settled;
        while shared.rounds_unsettled.load(Ordering::Relaxed) > 0 && Instant::now() < settle_until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.cancel();
    connecting.abort_all();
    while connecting.join_next().await.is_some() {}
    // Each reader thread kept its own histograms; the report is their sum.
    let (mut latency, mut bet_latency, mut settled_latency) =
        (histogram()?, histogram()?, histogram()?);
    let mut bet_tally = bets::BetTally::default();
    for (handle, thread) in readers {
        handle.wake();
        let tally = tokio::task::spawn_blocking(move || thread.join())
            .await
            .context("join a reader thread")?
            .map_err(|_| anyhow::anyhow!("a reader thread panicked"))??;
        latency
            .add(&tally.latency)
            .and_then(|()| bet_latency.add(&tally.bet_latency))
            .and_then(|()| settled_latency.add(&tally.settled_latency))
            .map_err(|e| anyhow::anyhow!("merge latency histograms: {e:?}"))?;
        bet_tally.merge(tally.bets);
    }
    if let Some(out) = &bets_out {
        out.flush().context("write --bets-out")?;
    }
    // `bet_every` is set exactly when `--bet-rate` is (a rate that is not positive is refused).
    let bet_report = args.bet_rate.map(|rate| {
        let open_s = if bet_tally.windows.is_empty() {
            0.0
        } else {
            bet_tally
                .windows
                .iter()
                .map(Duration::as_secs_f64)
                .sum::<f64>()
                / bet_tally.windows.len() as f64
        };
        let per_s = |n: u64| n as f64 / open_s.max(f64::EPSILON);
        let mut rounds: Vec<RoundReport> = bet_tally
            .rounds
            .iter()
            .filter_map(|(&(table, round), times)| {
                let settle = times.settled_at? - times.outcome_at?;
                Some(RoundReport {
                    table: tables[table].clone(),
                    round,
                    bets: times.bets.unwrap_or_default(),
                    settle_start_ms: settle as f64 / 1000.0,
                })
            })
            .collect();
        rounds.sort_by(|a, b| (&a.table, a.round).cmp(&(&b.table, b.round)));
        BetReport {
            rate,
            bettors: args.bettors,
            tables: tables.len(),
            sent: bet_tally.sent,
            open_s,
            offered_per_s: per_s(bet_tally.sent),
            accepted: bet_tally.accepted,
            accepted_per_s: per_s(bet_tally.accepted),
            refusals: bet_tally.refusals.clone(),
            timeouts_retried: bet_tally.timeouts_retried,
            unanswered: bet_tally.unanswered,
            latency_ms: Percentiles::of(&bet_latency),
            settled_at_client_ms: Percentiles::of(&settled_latency),
            rounds,
        }
    });
    if let Some(publisher) = publisher {
        let _ = publisher.await;
    }

    let delivered = shared.delivered.load(Ordering::Relaxed) - delivered_before;
    let connected = shared.connected.load(Ordering::Relaxed);
    let report = Report {
        target: format!("{:?}", args.target).to_lowercase(),
        clients: args.clients,
        connected,
        connect_failures: shared.connect_failures.load(Ordering::Relaxed),
        duration_s: elapsed,
        delivered,
        delivered_per_s: delivered as f64 / elapsed.max(f64::EPSILON),
        latency_ms: Percentiles::of(&latency),
        bets_answered: shared.bets_answered.load(Ordering::Relaxed),
        bets_accepted: shared.bets_accepted.load(Ordering::Relaxed),
        bet_latency_ms: Percentiles::of(&bet_latency),
        drops: shared.drops.load(Ordering::Relaxed),
        slow_consumer_closes: shared.slow_closes.load(Ordering::Relaxed),
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        server_rss_per_connection_kib: match (rss_before, rss_after) {
            (Some(before), Some(after)) if connected > 0 => {
                Some((after as f64 - before as f64) / connected as f64)
            }
            _ => None,
        },
        bets: bet_report,
    };
    print_report(&report);
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("encode the report")?;
        std::fs::write(path, json).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

fn progress_bar(args: &LoadgenArgs, len: u64, what: &str) -> indicatif::ProgressBar {
    if args.quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{prefix} [{bar:40}] {pos}/{len} {msg}")
    {
        bar.set_style(style);
    }
    bar.set_prefix(what.to_string());
    bar
}

fn print_report(r: &Report) {
    println!("target                 {}", r.target);
    println!(
        "clients                {} ({} connected, {} failed)",
        r.clients, r.connected, r.connect_failures
    );
    println!("measured               {:.1} s", r.duration_s);
    println!(
        "delivered              {} ({:.0}/s)",
        r.delivered, r.delivered_per_s
    );
    println!(
        "publish->client ms     p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}  ({} samples)",
        r.latency_ms.p50,
        r.latency_ms.p99,
        r.latency_ms.p999,
        r.latency_ms.max,
        r.latency_ms.samples
    );
    if r.bets_answered > 0 {
        println!(
            "bet->answer ms         p50 {:.2}  p99 {:.2}  p999 {:.2}  ({} answered, {} accepted)",
            r.bet_latency_ms.p50,
            r.bet_latency_ms.p99,
            r.bet_latency_ms.p999,
            r.bets_answered,
            r.bets_accepted
        );
    }
    if let Some(b) = &r.bets {
        println!(
            "bets offered           {} in {:.1} s open ({:.0}/s of {:.0}/s asked), {} accepted ({:.0}/s)",
            b.sent, b.open_s, b.offered_per_s, b.rate, b.accepted, b.accepted_per_s
        );
        let refusals: Vec<String> = b.refusals.iter().map(|(c, n)| format!("{n} {c}")).collect();
        println!(
            "bets refused           {} ({} TIMEOUT retried, {} without a definite answer)",
            if refusals.is_empty() {
                "0".to_string()
            } else {
                refusals.join(", ")
            },
            b.timeouts_retried,
            b.unanswered
        );
        println!(
            "bet due->answer ms     p50 {:.2}  p99 {:.2}  p999 {:.2}  max {:.2}",
            b.latency_ms.p50, b.latency_ms.p99, b.latency_ms.p999, b.latency_ms.max
        );
        println!(
            "outcome->bet_settled   p50 {:.2}  p99 {:.2} ms at the bettors ({} samples)",
            b.settled_at_client_ms.p50, b.settled_at_client_ms.p99, b.settled_at_client_ms.samples
        );
        for round in &b.rounds {
            println!(
                "round settled          {} #{}: {} bets, settlement began {:.1} ms after the outcome",
                round.table, round.round, round.bets, round.settle_start_ms
            );
        }
    }
    println!(
        "drops                  {} ({} closed as slow consumers)",
        r.drops, r.slow_consumer_closes
    );
    if let (Some(before), Some(after)) = (r.server_rss_before_kib, r.server_rss_after_kib) {
        println!(
            "server RSS             {before} KiB -> {after} KiB ({:.2} KiB per connection)",
            r.server_rss_per_connection_kib.unwrap_or_default()
        );
    }
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

fn source_addr(index: usize, spread: u8) -> Option<IpAddr> {
    (spread > 1).then(|| {
        IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            1 + (index % usize::from(spread)) as u8,
        ))
    })
}

/// Publishes a synthetic `round_opened` per tick, each stamped with its publish time.
async fn publish(bus: bus::NatsBus, table: String, rate: f64, stop: CancellationToken) {
    let Ok(table_id) = domain::TableId::parse(&table) else {
        tracing::error!(%table, "invalid table id");
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        n += 1;
        let Ok(round) = domain::RoundId::new(n) else {
            return;
        };
        let now = domain::Timestamp::from_offset_datetime(time::OffsetDateTime::now_utc())
            .unwrap_or(domain::Timestamp::UNIX_EPOCH);
        let closes_at = now.checked_add(Duration::from_secs(15)).unwrap_or(now);
        let body = protocol::EventBody::RoundOpened(protocol::RoundOpened {
            table: table_id.clone(),
            round,
            closes_at,
            seed_hash: domain::ServerSeed::from_bytes([0; 32]).hash(),
        });
        let event = protocol::Event::new(uuid::Uuid::new_v4(), now, body);
        let Ok(payload) = protocol::encode_event(&event) else {
            continue;
        };
        let publish = bus::Publish::new(protocol::subject::table_round_subject(&table_id), payload)
            .msg_id(format!("loadgen:{run}:{n}"));
        if let Err(error) = bus.publish(publish).await {
            tracing::warn!(%error, "loadgen publish failed");
        }
    }
}

/// The parts of a server message loadgen reads.
#[derive(serde::Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    event: Option<IncomingEvent<'a>>,
    #[serde(borrow, default)]
    request_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    code: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct IncomingEvent<'a> {
    #[serde(borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    at: std::borrow::Cow<'a, str>,
    #[serde(default)]
    round: Option<u64>,
    #[serde(borrow, default)]
    table: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    closes_at: Option<std::borrow::Cow<'a, str>>,
    /// `round_settled`'s count of bets.
    #[serde(default)]
    bets: Option<u64>,
}

/// The one field of an event (on the bus, MessagePack) that latency needs; the others are
/// skipped, not decoded.
#[derive(serde::Deserialize)]
struct EventTime {
    at: domain::Timestamp,
}

struct Client {
    index: usize,
    url: Arc<String>,
    target: Target,
    /// The first text frames: Croupier's `subscribe`s, or NATS's `CONNECT` and `SUB`.
    first: Vec<String>,
    table: usize,
    token: Option<String>,
    source: Option<IpAddr>,
}

impl Client {
    async fn connect(&self) -> anyhow::Result<clients::Connected> {
        let url = match &self.token {
            Some(token) => format!("{}?token={token}", self.url),
            None => self.url.to_string(),
        };
        let mut request = url.as_str().into_client_request()?;
        let protocol = (self.target == Target::Croupier).then_some("croupier.v1.json");
        if let Some(protocol) = protocol {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(protocol));
        }
        let uri = request.uri();
        let host = uri.host().unwrap_or("127.0.0.1").to_string();
        let port = uri.port_u16().unwrap_or(80);
        let remote: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .context("the URL's host resolves to nothing")?;
        let socket = TcpSocket::new_v4()?;
        if let Some(source) = self.source {
            socket.bind(SocketAddr::new(source, 0))?;
        }
        let stream = socket.connect(remote).await?;
        stream.set_nodelay(true)?;
        let (stream, leftover) = clients::handshake(stream, request, protocol, &self.first).await?;
        Ok(clients::Connected {
            index: self.index,
            stream,
            leftover,
            bettor: self.token.is_some(),
            table: self.table,
        })
    }
}

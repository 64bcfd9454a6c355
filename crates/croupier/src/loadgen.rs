//! `croupier loadgen`: many WebSocket clients on one table, some of them betting, with a
//! latency report (`docs/contract/cli.md`). A benchmark tool, not a test: it measures, it asserts
//! nothing.
//!
//! - publish→client latency: from each event's `at` (stamped by its publisher) to its arrival;
//! - bet→answer latency, for the `--bettors` clients;
//! - messages delivered per second, unexpected drops, and closes with 4008 (slow consumer);
//! - with `--server-pid`, the server's own RSS per connection and its CPU time per event (read
//!   from `/proc`), and the kernel's TCP memory beside it; `--bus-pid` the same for
//!   nats-server; `--burst` also after a burst of events that a share of the clients does not
//!   read;
//! - over several gateways (`--url a,b`): client `i` connects to the `i mod n`-th, and a client
//!   whose connection ends while the run goes on connects to the next one and resumes each
//!   channel after the last `seq` it received; with `--check-delivery`, every message a client
//!   missed or got twice, judged against the JetStream streams after the run ([`delivery`]).
//!
//! `--target nats` speaks the NATS protocol over WebSocket instead (nats-server's own
//! `websocket` listener), subscribing to the same subject, so both servers can be measured
//! side by side on the same events. `--publish-rate` makes loadgen itself publish synthetic
//! `round_opened` events to `table.<table>.round` on JetStream at that rate on every table, for
//! both.

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
mod delivery;
mod probe;

pub use bets::{BetReport, RoundReport};
pub use probe::MemorySample;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Croupier's gateway, protocol v1 (JSON).
    Croupier,
    /// nats-server's WebSocket listener, NATS protocol.
    Nats,
}

#[derive(Debug, Clone, Args)]
pub struct LoadgenArgs {
    /// WebSocket URL, e.g. ws://127.0.0.1:8080/ws (or nats-server's ws://127.0.0.1:9222); with
    /// Croupier, a comma-separated list of gateways: client `i` connects to the `i mod n`-th,
    /// and a client whose connection ends during the run connects to the next one in turn and
    /// resumes its channels (`since` = the last `seq` received).
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
    /// Publish synthetic events to `table.<table>.round` on JetStream at this rate (per second
    /// and table), on every table followed.
    #[arg(long)]
    pub publish_rate: Option<f64>,
    /// Every client also follows its own player channel, `player.<players>-<i>` (Croupier
    /// only; each gets a token), without betting unless it is one of `--bettors`.
    #[arg(long)]
    pub player_channels: bool,
    /// The server under test: its RSS before and after connecting, after the measurement and
    /// around `--burst`, and its CPU time during the measurement (from `/proc`).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// The bus (nats-server) behind the server: its RSS and CPU time, sampled as the server's.
    #[arg(long)]
    pub bus_pid: Option<u32>,
    /// After the measurement: a share of the clients (`--slow-share`) stops reading, this many
    /// events are published on each table as fast as they are acknowledged, and the memory is
    /// sampled with those clients backed up, then again once they read and caught up.
    #[arg(long, default_value_t = 0)]
    pub burst: u32,
    /// With `--burst`: the share of clients that stop reading (read by a thread of their own).
    #[arg(long, default_value_t = 0.1)]
    pub slow_share: f64,
    /// Count every message a client missed or received twice on the channels it followed
    /// (Croupier only): after the run, each client's received sequences are checked against
    /// the JetStream streams (read with NATS_URL / CROUPIER_NATS_PREFIX), from its first
    /// `subscribed.seq` to where the channel stood when the run stopped.
    #[arg(long)]
    pub check_delivery: bool,
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
    /// Clients connected to each `--url` by the ramp-up.
    pub gateways: Vec<GatewayReport>,
    /// Connections made again after one ended during the run.
    pub reconnects: u64,
    /// Clients that could not connect again (every URL tried, in turn, with backoff).
    pub reconnect_failures: u64,
    /// Answers to a resuming `subscribe`: replayed without a gap, or `recovered: false` (a gap
    /// in that client's channel, counted in `missed`).
    pub resumes_recovered: u64,
    pub resumes_not_recovered: u64,
    /// `--check-delivery` only: messages of a followed channel a client never received between
    /// subscribing and leaving (summed over clients and channels).
    pub missed: Option<u64>,
    /// `--check-delivery` only: messages a client received twice on one channel.
    pub doubled: Option<u64>,
    /// `--check-delivery` only: the messages the clients were answerable for, summed (what
    /// `missed` is out of), and the client-channel pairs checked.
    pub delivery_expected: Option<u64>,
    pub delivery_followed: Option<u64>,
    /// CPU time of the server and the bus during the measurement.
    pub cpu: CpuReport,
    /// Memory at each stage of the run (see [`MemorySample::at`]).
    pub memory: Vec<MemorySample>,
    /// `--burst` only.
    pub burst: Option<BurstReport>,
}

/// CPU time during the measurement, in ms, in all and per event (per `clients` deliveries:
/// one event to every client when all follow one table).
#[derive(Debug, Default, Serialize)]
pub struct CpuReport {
    pub server_ms: Option<u64>,
    pub server_ms_per_event: Option<f64>,
    pub bus_ms: Option<u64>,
    pub bus_ms_per_event: Option<f64>,
    /// loadgen's own: it shares the machine with the server, so its cost is in the latency too.
    pub loadgen_ms: Option<u64>,
    pub loadgen_ms_per_event: Option<f64>,
}

/// What `--burst` did: the clients that stopped reading, the events published to them, and
/// how many connections the server closed meanwhile (4008: a backlog past its bounds).
#[derive(Debug, Default, Serialize)]
pub struct BurstReport {
    pub slow_clients: u64,
    pub events_per_table: u32,
    pub publish_ms: f64,
    pub drops: u64,
    pub slow_consumer_closes: u64,
    /// From resuming the slow clients until every client had all the burst's events.
    pub catch_up_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct GatewayReport {
    pub url: String,
    pub connected: u64,
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
    /// Events received at any time, measuring or not (`--burst` waits on it).
    received: AtomicU64,
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
    reconnects: AtomicU64,
    reconnect_failures: AtomicU64,
    resumes_recovered: AtomicU64,
    resumes_not_recovered: AtomicU64,
    /// `--check-delivery`.
    doubled: AtomicU64,
    /// Clients connected by the ramp-up, per `--url`.
    per_url: Vec<AtomicU64>,
    /// `--check-delivery`: where each channel stood when the run was to stop (channel name to
    /// `seq`); the reader threads go on until their clients are there.
    drain_targets: std::sync::OnceLock<std::collections::HashMap<String, u64>>,
    /// Reader threads whose clients all reached [`Shared::drain_targets`].
    caught_up: std::sync::atomic::AtomicUsize,
}

impl Shared {
    fn new(urls: usize) -> anyhow::Result<Self> {
        Ok(Self {
            delivered: AtomicU64::new(0),
            received: AtomicU64::new(0),
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
            reconnects: AtomicU64::new(0),
            reconnect_failures: AtomicU64::new(0),
            resumes_recovered: AtomicU64::new(0),
            resumes_not_recovered: AtomicU64::new(0),
            doubled: AtomicU64::new(0),
            per_url: (0..urls).map(|_| AtomicU64::new(0)).collect(),
            drain_targets: std::sync::OnceLock::new(),
            caught_up: std::sync::atomic::AtomicUsize::new(0),
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
    if args.check_delivery && args.target == Target::Nats {
        anyhow::bail!("--check-delivery works only with --target croupier");
    }
    if args.player_channels && args.target == Target::Nats {
        anyhow::bail!("--player-channels works only with --target croupier");
    }
    if args.burst > 0 && !(args.slow_share > 0.0 && args.slow_share < 1.0) {
        anyhow::bail!(
            "--slow-share must be between 0 and 1 (exclusive), not {}",
            args.slow_share
        );
    }
    let urls: Vec<String> = args
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect();
    if urls.is_empty() {
        anyhow::bail!("--url names no URL");
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
    let shared = Arc::new(Shared::new(urls.len())?);
    let stop = CancellationToken::new();
    let mut memory = vec![MemorySample::take("before", args.server_pid, args.bus_pid)];
    let rss_before = memory[0].server_rss_kib;
    let delivery_bus = if args.check_delivery {
        let bus = bus::NatsBus::connect(
            &settings.nats_url,
            &settings.nats_prefix,
            bus::NatsOptions::default(),
        )
        .await
        .with_context(|| format!("connect to NATS at {} to check delivery", settings.nats_url))?;
        Some(bus)
    } else {
        None
    };

    let rate = args.publish_rate.filter(|rate| *rate > 0.0);
    let publish_bus = if rate.is_some() || args.burst > 0 {
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
        Some(bus)
    } else {
        None
    };
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut publishers = tokio::task::JoinSet::new();
    if let (Some(rate), Some(bus)) = (rate, &publish_bus) {
        for table in &tables {
            publishers.spawn(publish(
                bus.clone(),
                Synthetic::new(table, &run_id)?,
                rate,
                stop.clone(),
            ));
        }
    }

    let (reconnect_tx, reconnect_rx) = tokio::sync::mpsc::channel(clients::RECONNECT_QUEUE);
    let reader_config = Arc::new(clients::ReaderConfig {
        target: args.target,
        tables: tables.clone(),
        read_batching: args.read_batching,
        bet_every,
        close_margin_us: args.close_margin.as_micros() as i64,
        players: args.players.clone(),
        bets_out: bets_out.clone(),
        // NATS's protocol has no resume: there a connection that ends stays a drop.
        reconnects: (args.target == Target::Croupier).then_some(reconnect_tx),
        check_delivery: args.check_delivery,
    });
    let mut readers = Vec::new();
    for _ in 0..threads {
        readers.push(clients::spawn_reader(
            reader_config.clone(),
            shared.clone(),
            stop.clone(),
            None,
        )?);
    }
    // `--burst`: the slow share of the clients is read by a thread of its own, paused for it.
    let slow = (args.burst > 0).then(|| Arc::new(AtomicBool::new(false)));
    if let Some(paused) = &slow {
        readers.push(clients::spawn_reader(
            reader_config.clone(),
            shared.clone(),
            stop.clone(),
            Some(paused.clone()),
        )?);
    }
    let assign = ReaderAssignment {
        readers: threads,
        slow_every: slow
            .as_ref()
            .map(|_| ((1.0 / args.slow_share).round() as usize).max(2)),
    };
    let first = |table: &str, player: Option<&str>| -> Vec<String> {
        match args.target {
            Target::Croupier => {
                let mut first = vec![
                    serde_json::json!({"type": "subscribe", "channel": format!("table.{table}")})
                        .to_string(),
                ];
                if let Some(player) = player {
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

    let mut clients = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let player_name = format!("{}-{i}", args.players);
        let table = i % tables.len();
        let bettor = i < args.bettors;
        // A client's player channel: a bettor's with `--bet-rate` (for `bet_settled`), or
        // every client's with `--player-channels`.
        let follows_player = args.player_channels || (bettor && bet_every.is_some());
        let token = (bettor || args.player_channels).then(|| {
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
        clients.push(Client {
            index: i,
            url: i % urls.len(),
            target: args.target,
            first: first(
                &tables[table],
                follows_player.then_some(player_name.as_str()),
            ),
            table,
            token,
            bettor,
            player_channel: follows_player,
            source: source_addr(i, args.source_addrs),
        });
    }
    let clients = Arc::new(clients);
    let urls = Arc::new(urls);
    let reconnector = tokio::spawn(reconnector(
        reconnect_rx,
        clients.clone(),
        urls.clone(),
        readers.iter().map(|(handle, _)| handle.clone()).collect(),
        assign,
        shared.clone(),
        stop.clone(),
    ));

    let progress = progress_bar(&args, args.clients as u64, "connecting");
    let mut connecting = tokio::task::JoinSet::new();
    let gap = Duration::from_secs_f64(1.0 / f64::from(args.connect_rate.max(1)));
    for i in 0..args.clients {
        let reader = readers[assign.of(i)].0.clone();
        let counters = shared.clone();
        let (clients, urls) = (clients.clone(), urls.clone());
        connecting.spawn(async move {
            let client = &clients[i];
            match client.connect(&urls, client.url, &client.first, None).await {
                Ok(connected) => {
                    counters.connected.fetch_add(1, Ordering::Relaxed);
                    counters.per_url[client.url].fetch_add(1, Ordering::Relaxed);
                    reader
                        .hand_over(clients::Handover::Connected(connected))
                        .await;
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
    memory.push(MemorySample::take(
        "connected",
        args.server_pid,
        args.bus_pid,
    ));
    let rss_after = memory[1].server_rss_kib;

    shared.measuring.store(true, Ordering::Relaxed);
    shared.betting.store(bet_every.is_some(), Ordering::Relaxed);
    let measure_start = Instant::now();
    let delivered_before = shared.delivered.load(Ordering::Relaxed);
    let own = std::process::id();
    let cpu_before = (
        args.server_pid.and_then(probe::cpu_ms),
        args.bus_pid.and_then(probe::cpu_ms),
        probe::cpu_ms(own),
    );
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
    let delivered = shared.delivered.load(Ordering::Relaxed) - delivered_before;
    let cpu_after = (
        args.server_pid.and_then(probe::cpu_ms),
        args.bus_pid.and_then(probe::cpu_ms),
        probe::cpu_ms(own),
    );
    // CPU per event: per `clients` deliveries, which is one event to every client when they
    // all follow one table, and the same work spread over tables when they do not.
    let fan_outs = delivered as f64 / args.clients as f64;
    let per_event = |before: Option<u64>, after: Option<u64>| match (before, after) {
        (Some(b), Some(a)) if fan_outs > 0.0 => Some(a.saturating_sub(b) as f64 / fan_outs),
        _ => None,
    };
    let cpu = CpuReport {
        server_ms: cpu_before
            .0
            .zip(cpu_after.0)
            .map(|(b, a)| a.saturating_sub(b)),
        server_ms_per_event: per_event(cpu_before.0, cpu_after.0),
        bus_ms: cpu_before
            .1
            .zip(cpu_after.1)
            .map(|(b, a)| a.saturating_sub(b)),
        bus_ms_per_event: per_event(cpu_before.1, cpu_after.1),
        loadgen_ms: cpu_before
            .2
            .zip(cpu_after.2)
            .map(|(b, a)| a.saturating_sub(b)),
        loadgen_ms_per_event: per_event(cpu_before.2, cpu_after.2),
    };
    memory.push(MemorySample::take(
        "measured",
        args.server_pid,
        args.bus_pid,
    ));
    let (drops, slow_closes) = (
        shared.drops.load(Ordering::Relaxed),
        shared.slow_closes.load(Ordering::Relaxed),
    );
    let burst = match (&slow, &publish_bus, readers.last()) {
        (Some(paused), Some(bus), Some((slow_reader, _))) => {
            let slow_clients = (0..args.clients).filter(|&i| assign.is_slow(i)).count();
            let burst = Burst {
                bus,
                tables: &tables,
                run: &run_id,
                events: args.burst,
                paused,
                slow_reader,
                slow_clients: slow_clients as u64,
                shared: &shared,
                pids: (args.server_pid, args.bus_pid),
            };
            Some(burst.run(&mut memory).await?)
        }
        _ => None,
    };
    if bet_every.is_some() {
        // No new bets; the ones sent get a while to be answered (a bet waits at most the
        // gateway's bet timeout, then retries of a `TIMEOUT`, paced over about half a minute).
        shared.betting.store(false, Ordering::Relaxed);
        for (handle, _) in &readers {
            handle.wake();
        }
        let drain_until = Instant::now() + Duration::from_secs(60);
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
    if let Some(bus) = &delivery_bus {
        // Each client answers for its channels up to where they stand now; the clients get a
        // while to get there (a reconnecting one has to connect and resume first).
        let following_players = if args.player_channels {
            args.clients
        } else if bet_every.is_some() {
            args.bettors
        } else {
            0
        };
        let players: Vec<String> = (0..following_players)
            .map(|i| format!("{}-{i}", args.players))
            .collect();
        let lasts = delivery::channel_lasts(bus, &tables, &players)
            .await
            .context("read where the channels stand")?;
        let _ = shared.drain_targets.set(lasts);
        for (handle, _) in &readers {
            handle.wake();
        }
        let until = Instant::now() + CATCH_UP_DEADLINE;
        while shared.caught_up.load(Ordering::Relaxed) < readers.len() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.cancel();
    connecting.abort_all();
    while connecting.join_next().await.is_some() {}
    let _ = reconnector.await;
    // Each reader thread kept its own histograms; the report is their sum.
    let (mut latency, mut bet_latency, mut settled_latency) =
        (histogram()?, histogram()?, histogram()?);
    let mut bet_tally = bets::BetTally::default();
    let mut records = Vec::new();
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
        records.extend(tally.delivery);
    }
    let verdict = match (&delivery_bus, shared.drain_targets.get()) {
        (Some(bus), Some(stops)) => Some(
            delivery::judge(bus, &records, stops)
                .await
                .context("check delivery against the streams")?,
        ),
        _ => None,
    };
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
            resent_after_reconnect: bet_tally.resent,
            unanswered: bet_tally.unanswered,
            latency_ms: Percentiles::of(&bet_latency),
            settled_at_client_ms: Percentiles::of(&settled_latency),
            rounds,
        }
    });
    while publishers.join_next().await.is_some() {}

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
        drops,
        slow_consumer_closes: slow_closes,
        server_rss_before_kib: rss_before,
        server_rss_after_kib: rss_after,
        server_rss_per_connection_kib: match (rss_before, rss_after) {
            (Some(before), Some(after)) if connected > 0 => {
                Some((after as f64 - before as f64) / connected as f64)
            }
            _ => None,
        },
        bets: bet_report,
        gateways: urls
            .iter()
            .zip(&shared.per_url)
            .map(|(url, n)| GatewayReport {
                url: url.clone(),
                connected: n.load(Ordering::Relaxed),
            })
            .collect(),
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        reconnect_failures: shared.reconnect_failures.load(Ordering::Relaxed),
        resumes_recovered: shared.resumes_recovered.load(Ordering::Relaxed),
        resumes_not_recovered: shared.resumes_not_recovered.load(Ordering::Relaxed),
        missed: verdict.as_ref().map(|v| v.missed),
        doubled: verdict
            .as_ref()
            .map(|_| shared.doubled.load(Ordering::Relaxed)),
        delivery_expected: verdict.as_ref().map(|v| v.expected),
        delivery_followed: verdict.as_ref().map(|v| v.followed),
        cpu,
        memory,
        burst,
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
    if r.gateways.len() > 1 {
        for gateway in &r.gateways {
            println!(
                "gateway                {} ({} connected at start)",
                gateway.url, gateway.connected
            );
        }
    }
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
            "bets refused           {} ({} TIMEOUT retried, {} sent again after a reconnect, {} without a definite answer)",
            if refusals.is_empty() {
                "0".to_string()
            } else {
                refusals.join(", ")
            },
            b.timeouts_retried,
            b.resent_after_reconnect,
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
    if r.drops > 0 || r.reconnects > 0 {
        println!(
            "reconnects             {} ({} gave up); resumes {} recovered, {} not recovered",
            r.reconnects, r.reconnect_failures, r.resumes_recovered, r.resumes_not_recovered
        );
    }
    if let (Some(missed), Some(doubled)) = (r.missed, r.doubled) {
        println!(
            "delivery               {missed} missed, {doubled} doubled (of {} messages over {} client channels)",
            r.delivery_expected.unwrap_or_default(),
            r.delivery_followed.unwrap_or_default()
        );
    }
    if let (Some(before), Some(after)) = (r.server_rss_before_kib, r.server_rss_after_kib) {
        println!(
            "server RSS             {before} KiB -> {after} KiB ({:.2} KiB per connection)",
            r.server_rss_per_connection_kib.unwrap_or_default()
        );
    }
    for (what, total, per_event) in [
        ("server CPU", r.cpu.server_ms, r.cpu.server_ms_per_event),
        ("bus CPU", r.cpu.bus_ms, r.cpu.bus_ms_per_event),
        ("loadgen CPU", r.cpu.loadgen_ms, r.cpu.loadgen_ms_per_event),
    ] {
        if let (Some(total), Some(per_event)) = (total, per_event) {
            println!("{what:<22} {total} ms while measuring ({per_event:.2} ms per event)");
        }
    }
    if let Some(b) = &r.burst {
        println!(
            "burst                  {} events per table, {} clients not reading: published in {:.0} ms, all caught up {:.0} ms after they read again; {} drops ({} slow-consumer closes)",
            b.events_per_table,
            b.slow_clients,
            b.publish_ms,
            b.catch_up_ms,
            b.drops,
            b.slow_consumer_closes
        );
    }
    if r.memory.iter().any(|m| m.server_rss_kib.is_some()) {
        let kib = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| format!("{v} KiB"));
        for m in &r.memory {
            println!(
                "memory {:<15} server {}, bus {}, kernel TCP {}",
                m.at,
                kib(m.server_rss_kib),
                kib(m.bus_rss_kib),
                kib(m.kernel_tcp_kib)
            );
        }
    }
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

/// Synthetic `round_opened` events for one table, each stamped with the time it is made
/// (its latency's start) and with a message id of its own.
struct Synthetic {
    table: domain::TableId,
    /// The message ids' prefix: the run, the table, and what publishes them.
    ids: String,
    n: u64,
}

impl Synthetic {
    fn new(table: &str, run: &str) -> anyhow::Result<Self> {
        Self::named(table, run, "rate")
    }

    fn named(table: &str, run: &str, what: &str) -> anyhow::Result<Self> {
        let table = domain::TableId::parse(table).map_err(|e| anyhow::anyhow!("{table}: {e}"))?;
        let ids = format!("loadgen:{run}:{table}:{what}");
        Ok(Self { table, ids, n: 0 })
    }

    fn next(&mut self) -> Option<bus::Publish> {
        self.n += 1;
        let round = domain::RoundId::new(self.n).ok()?;
        let now = domain::Timestamp::from_offset_datetime(time::OffsetDateTime::now_utc())
            .unwrap_or(domain::Timestamp::UNIX_EPOCH);
        let closes_at = now.checked_add(Duration::from_secs(15)).unwrap_or(now);
        let body = protocol::EventBody::RoundOpened(protocol::RoundOpened {
            table: self.table.clone(),
            round,
            closes_at,
            seed_hash: domain::ServerSeed::from_bytes([0; 32]).hash(),
        });
        let event = protocol::Event::new(uuid::Uuid::new_v4(), now, body);
        let payload = protocol::encode_event(&event).ok()?;
        Some(
            bus::Publish::new(protocol::subject::table_round_subject(&self.table), payload)
                .msg_id(format!("{}:{}", self.ids, self.n)),
        )
    }
}

/// Publishes one synthetic event per tick until `stop`.
async fn publish(bus: bus::NatsBus, mut events: Synthetic, rate: f64, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(publish) = events.next() else {
            return;
        };
        if let Err(error) = bus.publish(publish).await {
            tracing::warn!(%error, "loadgen publish failed");
        }
    }
}

/// Which reader thread reads client `i`: with `--burst`, every `slow_every`-th client goes to
/// the slow thread (the last), the others round-robin over the `readers` others.
#[derive(Debug, Clone, Copy)]
struct ReaderAssignment {
    readers: usize,
    slow_every: Option<usize>,
}

impl ReaderAssignment {
    fn is_slow(self, i: usize) -> bool {
        self.slow_every.is_some_and(|every| i % every == every - 1)
    }

    fn of(self, i: usize) -> usize {
        if self.is_slow(i) {
            self.readers
        } else {
            i % self.readers
        }
    }
}

/// `--burst`: what it works with.
struct Burst<'a> {
    bus: &'a bus::NatsBus,
    tables: &'a [String],
    run: &'a str,
    events: u32,
    paused: &'a AtomicBool,
    slow_reader: &'a clients::Handle,
    slow_clients: u64,
    shared: &'a Shared,
    pids: (Option<u32>, Option<u32>),
}

impl Burst<'_> {
    /// Stops the slow clients' reading, publishes the burst on every table, samples memory
    /// with them backed up, lets them read again, and samples once every client has the
    /// burst.
    async fn run(self, memory: &mut Vec<MemorySample>) -> anyhow::Result<BurstReport> {
        self.paused.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (drops, slow_closes) = (
            self.shared.drops.load(Ordering::Relaxed),
            self.shared.slow_closes.load(Ordering::Relaxed),
        );
        let received = self.shared.received.load(Ordering::Relaxed);
        let started = Instant::now();
        let mut publishing = tokio::task::JoinSet::new();
        for table in self.tables {
            let (bus, events) = (self.bus.clone(), self.events);
            let mut synthetic = Synthetic::named(table, self.run, "burst")?;
            publishing.spawn(async move {
                for _ in 0..events {
                    let publish = synthetic.next().context("a burst event")?;
                    bus.publish(publish)
                        .await
                        .context("publish a burst event")?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = publishing.join_next().await {
            done.context("a burst publisher")??;
        }
        let publish_ms = started.elapsed().as_secs_f64() * 1e3;
        tokio::time::sleep(BURST_BACKED_UP).await;
        memory.push(MemorySample::take("burst", self.pids.0, self.pids.1));

        self.paused.store(false, Ordering::Relaxed);
        self.slow_reader.wake();
        let resumed = Instant::now();
        // Every client follows one table, which had `events` more: all of them are in once
        // the count grew by that many per client (events at the publish rate come on top).
        let wanted =
            received + u64::from(self.events) * self.shared.connected.load(Ordering::Relaxed);
        while self.shared.received.load(Ordering::Relaxed) < wanted
            && resumed.elapsed() < BURST_CATCH_UP_DEADLINE
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let catch_up_ms = resumed.elapsed().as_secs_f64() * 1e3;
        tokio::time::sleep(Duration::from_secs(1)).await;
        memory.push(MemorySample::take("after_burst", self.pids.0, self.pids.1));
        Ok(BurstReport {
            slow_clients: self.slow_clients,
            events_per_table: self.events,
            publish_ms,
            drops: self.shared.drops.load(Ordering::Relaxed) - drops,
            slow_consumer_closes: self.shared.slow_closes.load(Ordering::Relaxed) - slow_closes,
            catch_up_ms,
        })
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
    /// `event` and `subscribed`: the channel, and the stream sequence of its message.
    #[serde(borrow, default)]
    channel: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    /// `subscribed` only.
    #[serde(borrow, default)]
    epoch: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    recovered: Option<bool>,
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
    /// The URL it connects to first: an index into the `--url` list.
    url: usize,
    target: Target,
    /// The first text frames: Croupier's `subscribe`s, or NATS's `CONNECT` and `SUB`.
    first: Vec<String>,
    table: usize,
    token: Option<String>,
    /// Bets (`--bettors`); a client may hold a token only to follow its player channel.
    bettor: bool,
    player_channel: bool,
    source: Option<IpAddr>,
}

impl Client {
    /// Connects to `urls[url]` and sends `first`; `slot` is the client's place in its reader
    /// thread when it connects again.
    async fn connect(
        &self,
        urls: &[String],
        url: usize,
        first: &[String],
        slot: Option<usize>,
    ) -> anyhow::Result<clients::Connected> {
        let base = urls.get(url).context("no such URL")?;
        let full = match &self.token {
            Some(token) => format!("{base}?token={token}"),
            None => base.clone(),
        };
        let connecting = self.connect_to(&full, first);
        let (stream, leftover) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .with_context(|| format!("connecting took over {CONNECT_TIMEOUT:?}"))??;
        Ok(clients::Connected {
            index: self.index,
            stream,
            leftover,
            bettor: self.bettor,
            player_channel: self.player_channel,
            table: self.table,
            url,
            slot,
        })
    }

    async fn connect_to(
        &self,
        url: &str,
        first: &[String],
    ) -> anyhow::Result<(std::net::TcpStream, Vec<u8>)> {
        let mut request = url.into_client_request()?;
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
        clients::handshake(stream, request, protocol, first).await
    }
}

/// One connection attempt: a gateway that is up answers the upgrade well within this; one
/// that is not may leave a TCP connect hanging.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait before a reconnection's first attempt; it doubles with each attempt up to
/// [`RECONNECT_MAX_WAIT`].
const RECONNECT_FIRST_WAIT: Duration = Duration::from_millis(100);
const RECONNECT_MAX_WAIT: Duration = Duration::from_secs(1);
/// Attempts, each at the next URL, before a client is given up: about 6 s of waits, long
/// enough for a gateway restart or for another one to take the load.
const RECONNECT_ATTEMPTS: u32 = 8;
/// `--check-delivery`: how long the clients get to reach where their channels stood at the
/// end before those still behind are judged as they are.
const CATCH_UP_DEADLINE: Duration = Duration::from_secs(10);

/// The wait before attempt `attempt` of client `index`: spread over the upper half of the
/// backoff by client and attempt, so that the clients of a gateway that died do not all knock
/// on the next one in the same millisecond.
fn reconnect_wait(index: usize, attempt: u32) -> Duration {
    let ceiling = RECONNECT_FIRST_WAIT
        .saturating_mul(1 << attempt.min(16))
        .min(RECONNECT_MAX_WAIT);
    let mixed = (index as u64 ^ (u64::from(attempt) << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let fraction = (mixed >> 11) as f64 / (1u64 << 53) as f64;
    ceiling.mul_f64(0.5 + 0.5 * fraction)
}

/// Takes the reader threads' reconnections: one task per client reconnecting (never per
/// message), cancelled when the run stops.
async fn reconnector(
    mut requests: tokio::sync::mpsc::Receiver<clients::Reconnect>,
    clients: Arc<Vec<Client>>,
    urls: Arc<Vec<String>>,
    readers: Vec<clients::Handle>,
    assign: ReaderAssignment,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            request = requests.recv() => {
                let Some(request) = request else { break };
                let reader = readers[assign.of(request.index)].clone();
                let (clients, urls, shared) = (clients.clone(), urls.clone(), shared.clone());
                tasks.spawn(async move {
                    reconnect(request, &clients, &urls, &reader, &shared).await;
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// Connects a client again, trying the URLs after the one it lost in turn, with backoff;
/// hands the connection (or word that it gave up) to its reader thread.
async fn reconnect(
    request: clients::Reconnect,
    clients: &[Client],
    urls: &[String],
    reader: &clients::Handle,
    shared: &Shared,
) {
    let Some(client) = clients.get(request.index) else {
        return;
    };
    for attempt in 0..RECONNECT_ATTEMPTS {
        tokio::time::sleep(reconnect_wait(request.index, attempt)).await;
        let url = (request.url + 1 + attempt as usize) % urls.len();
        match client
            .connect(urls, url, &request.first, Some(request.slot))
            .await
        {
            Ok(connected) => {
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                reader
                    .hand_over(clients::Handover::Connected(connected))
                    .await;
                return;
            }
            Err(error) => {
                tracing::debug!(client = request.index, url = %urls[url], %error, "reconnect failed");
            }
        }
    }
    shared.reconnect_failures.fetch_add(1, Ordering::Relaxed);
    reader
        .hand_over(clients::Handover::GaveUp {
            slot: request.slot,
            index: request.index,
        })
        .await;
}
/// `--burst`: how long after the burst was published the memory is read with the slow clients
/// backed up (the server has written what their sockets take by then).
const BURST_BACKED_UP: Duration = Duration::from_secs(2);
/// `--burst`: how long the slow clients get to catch up after they read again.
const BURST_CATCH_UP_DEADLINE: Duration = Duration::from_secs(30);

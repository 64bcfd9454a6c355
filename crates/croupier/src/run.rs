//! `croupier run <role>`: builds the chosen roles with the chosen bus adapter and runs them
//! until SIGINT or SIGTERM, then drains within a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bus::Bus;
use clap::{Args, ValueEnum};
use domain::{Money, TableId, TableLimits};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{DEFAULT_HTTP_ADDR, Resolved};
use crate::telemetry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Gms,
    Gs,
    Gateway,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BusKind {
    /// NATS JetStream (`NATS_URL`): roles may run in separate processes.
    Nats,
    /// In-process: only with `run all`.
    Local,
}

/// Where the runtime's worker threads may run (`CROUPIER_WORKER_AFFINITY`, ADR 0035).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum WorkerAffinity {
    /// Wherever the OS puts them.
    #[default]
    Off,
    /// Worker `k` on the `k`-th CPU this process may use (round robin): for a node that has
    /// its CPUs to itself. Without it, two workers can share one CPU for a whole fan-out while
    /// another sits nearly idle; with other busy processes on the node, a pinned worker cannot
    /// move away from them.
    Spread,
}

/// The CPUs the calling thread may run on (at start, those of the whole process).
fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    let allowed = rustix::thread::sched_getaffinity(None)?;
    Ok((0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&cpu| allowed.is_set(cpu))
        .collect())
}

/// The runtime `croupier run` serves on: tokio's multi-threaded runtime, one worker per CPU
/// this process may use (tokio's default), placed as `affinity` says.
pub fn runtime(affinity: WorkerAffinity) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if affinity == WorkerAffinity::Spread {
        let cpus = allowed_cpus()?;
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        // The runtime names its threads as it creates them, in order, and creates its workers
        // first (when it is built, before any blocking task can be spawned): the name carries
        // the creation index, and a thread that starts with an index below `workers` is one.
        let created = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        builder
            .worker_threads(workers)
            .thread_name_fn(move || {
                let index = created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                format!("croupier-rt-{index}")
            })
            .on_thread_start(move || {
                let index = std::thread::current()
                    .name()
                    .and_then(|name| name.strip_prefix("croupier-rt-"))
                    .and_then(|index| index.parse::<usize>().ok());
                let Some(index) = index.filter(|&index| index < workers) else {
                    return;
                };
                let Some(&cpu) = cpus.get(index % cpus.len().max(1)) else {
                    return; // no CPU at all: nothing to pin to
                };
                let mut only = rustix::thread::CpuSet::new();
                only.set(cpu);
                if let Err(error) = rustix::thread::sched_setaffinity(None, &only) {
                    tracing::warn!(worker = index, cpu, %error, "worker thread not pinned");
                }
            });
    }
    builder.build()
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Which role to run; `all` runs every role in this process.
    pub role: Role,
    /// The bus adapter.
    #[arg(long, value_enum, default_value = "nats")]
    pub bus: BusKind,
    /// Gateway listen address.
    #[arg(long, env = "CROUPIER_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Also serve `GET /metrics` (Prometheus text) on this address, whatever the role. The
    /// gateway (roles `gateway` and `all`) serves the same text on its HTTP address as well; GMS
    /// and GS alone have no other.
    #[arg(long, env = "CROUPIER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Tables GMS runs, comma-separated.
    #[arg(
        long,
        env = "CROUPIER_TABLES",
        default_value = "roulette-1",
        value_delimiter = ','
    )]
    pub tables: Vec<String>,
    /// How long each round takes bets, in milliseconds.
    #[arg(long, env = "CROUPIER_BETTING_MS", default_value_t = 15_000)]
    pub betting_ms: u64,
    /// From the close of betting to the outcome, in milliseconds.
    #[arg(long, env = "CROUPIER_RESULT_MS", default_value_t = 3_000)]
    pub result_ms: u64,
    /// From the outcome to the next round, in milliseconds.
    #[arg(long, env = "CROUPIER_PAUSE_MS", default_value_t = 4_000)]
    pub pause_ms: u64,
    /// Master secret round seeds derive from (at least 32 bytes; see ADR 0007). Without it a
    /// random one is drawn and rounds cut short by a crash are voided.
    #[arg(long, env = "CROUPIER_SEED_SECRET", hide_env_values = true)]
    pub seed_secret: Option<String>,
    /// GMS: how long a table's lease lasts without renewal, in milliseconds (ADR 0009). At
    /// most the `gms_leases` bucket's `max_age` (the default); shorter means faster takeovers.
    #[arg(long, env = "CROUPIER_LEASE_TTL_MS", value_parser = clap::value_parser!(u64).range(300..))]
    pub lease_ttl_ms: Option<u64>,
    /// GMS: how often the leader renews its leases, in milliseconds (default: a third of the TTL).
    #[arg(long, env = "CROUPIER_LEASE_RENEW_MS", value_parser = clap::value_parser!(u64).range(50..))]
    pub lease_renew_ms: Option<u64>,
    #[command(flatten)]
    pub limits: crate::config::TableLimitsArgs,
    /// How long the gateway waits for GS to answer a bet, in milliseconds.
    #[arg(long, env = "CROUPIER_BET_TIMEOUT_MS", default_value_t = 5_000)]
    pub bet_timeout_ms: u64,
    /// Postgres connections per GS.
    #[arg(long, env = "CROUPIER_DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: usize,
    /// Names this GS: its cursor on the TABLES stream (`gs_cursor`), its logs and heartbeat.
    /// Default: `gs-<hostname>-<pid>`, unique per process, so two GS on one host are two
    /// instances. A new name resumes from the furthest cursor any GS has saved (everything
    /// before it is recorded), so a restart under a new name replays nothing.
    #[arg(long, env = "CROUPIER_GS_INSTANCE")]
    pub gs_instance: Option<String>,
    /// GS: most bets written in one transaction.
    #[arg(long, env = "CROUPIER_BET_BATCH", default_value_t = gs::GsConfig::DEFAULT_BATCH_SIZE)]
    pub bet_batch: usize,
    /// GS: how long the first bet of a batch waits for more while another batch is being
    /// written, in milliseconds (with none in flight, a batch is written at once).
    #[arg(long, env = "CROUPIER_BET_LINGER_MS", default_value_t = 2)]
    pub bet_linger_ms: u64,
    /// GS degraded mode (ADR 0020): pause between two probes of the event store, in
    /// milliseconds.
    #[arg(long, env = "CROUPIER_DB_PROBE_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..))]
    pub db_probe_ms: u64,
    /// GS: a probe not answered within this is a hung database, in milliseconds; the probe
    /// waits at most half of it for the head row's lock (else: slow).
    #[arg(long, env = "CROUPIER_DB_PROBE_TIMEOUT_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub db_probe_timeout_ms: u64,
    /// GS: a batch of bets (pool wait included) still in flight after this counts as a slow
    /// store, in milliseconds.
    #[arg(long, env = "CROUPIER_DB_SLOW_MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub db_slow_ms: u64,
    /// GS: a settlement still in flight after this counts as a slow store, in milliseconds.
    #[arg(long, env = "CROUPIER_DB_SETTLE_SLOW_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub db_settle_slow_ms: u64,
    /// GS: how long the store must look unhealthy without a break before betting goes off,
    /// in milliseconds.
    #[arg(long, env = "CROUPIER_DB_OFF_AFTER_MS", default_value_t = 500)]
    pub db_off_after_ms: u64,
    /// GS: how long the store must look healthy without a break before betting comes back
    /// (after catching up), in milliseconds.
    #[arg(long, env = "CROUPIER_DB_ON_AFTER_MS", default_value_t = 2_000)]
    pub db_on_after_ms: u64,
    /// How long shutdown waits for work in progress.
    #[arg(long, env = "CROUPIER_DRAIN_MS", default_value_t = 5_000)]
    pub drain_ms: u64,
    /// Gateway: ping a WebSocket client silent this long, drop it when still silent as long
    /// again, in milliseconds.
    #[arg(long, env = "CROUPIER_WS_IDLE_MS", default_value_t = 30_000)]
    pub ws_idle_ms: u64,
    /// Where the runtime's worker threads run: `off` (the OS decides) or `spread` (worker `k`
    /// on the `k`-th CPU this process may use; for a node with its CPUs to itself).
    #[arg(
        long,
        value_enum,
        env = "CROUPIER_WORKER_AFFINITY",
        default_value = "off"
    )]
    pub worker_affinity: WorkerAffinity,
    /// Gateway: serve `GET /dev/token?player=P` (development only, ADR 0011).
    #[arg(
        long,
        env = "CROUPIER_DEV_TOKENS",
        default_value = "false",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::Set
    )]
    pub dev_tokens: bool,
    /// Gateway: open WebSocket connections per node; beyond it an upgrade gets HTTP 503
    /// (default 50000; ADR 0012).
    #[arg(long, env = "CROUPIER_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Gateway: WebSocket handshakes accepted per second per node; beyond it HTTP 503 with
    /// `Retry-After: 1` (default 1000).
    #[arg(long, env = "CROUPIER_HANDSHAKES_PER_S", value_parser = clap::value_parser!(u32).range(1..))]
    pub handshakes_per_s: Option<u32>,
    /// Gateway: handshakes accepted at once before the rate applies (default: the rate).
    #[arg(long, env = "CROUPIER_HANDSHAKE_BURST", value_parser = clap::value_parser!(u32).range(1..))]
    pub handshake_burst: Option<u32>,
    /// Gateway: messages per second one client may send; beyond it `RATE_LIMITED` (default 10).
    #[arg(long, env = "CROUPIER_CLIENT_MSGS_PER_S", value_parser = clap::value_parser!(u32).range(1..))]
    pub client_msgs_per_s: Option<u32>,
    /// Gateway: messages one client may send at once before the rate applies (default 20).
    #[arg(long, env = "CROUPIER_CLIENT_BURST", value_parser = clap::value_parser!(u32).range(1..))]
    pub client_burst: Option<u32>,
    /// Gateway: bets waiting on GS across the node; beyond it `OVERLOADED` (default 10000).
    #[arg(long, env = "CROUPIER_MAX_BETS_IN_FLIGHT", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_bets_in_flight: Option<u32>,
    /// Gateway: bytes of events one connection may have waiting before it is closed with 4008
    /// (default 1048576).
    #[arg(long, env = "CROUPIER_OUTBOUND_MAX_BYTES", value_parser = clap::value_parser!(u32).range(1..))]
    pub outbound_max_bytes: Option<u32>,
    /// Gateway: events one connection may have waiting before it is closed with 4008
    /// (default 1024).
    #[arg(long, env = "CROUPIER_OUTBOUND_MAX_MESSAGES", value_parser = clap::value_parser!(u32).range(1..))]
    pub outbound_max_messages: Option<u32>,
    /// Gateway: how long a client's socket may take nothing while frames wait for it before it
    /// is closed with 4008, in milliseconds (default 10000).
    #[arg(long, env = "CROUPIER_WRITE_TIMEOUT_MS", value_parser = clap::value_parser!(u32).range(1..))]
    pub write_timeout_ms: Option<u32>,
    /// Gateway: `SO_SNDBUF` of client sockets in bytes (default: the kernel's autotuning).
    #[arg(long, env = "CROUPIER_WS_SEND_BUFFER", value_parser = clap::value_parser!(u32).range(1024..))]
    pub ws_send_buffer: Option<u32>,
}

/// Everything `run` needs, validated together before anything starts.
struct Plan {
    tables: Vec<TableId>,
    limits: TableLimits,
    http_addr: SocketAddr,
    jwt_secret: gateway::JwtSecret,
    seed_secret: gms::SeedSecret,
}

fn plan(args: &RunArgs, settings: &Resolved) -> anyhow::Result<Plan> {
    let mut problems = Vec::new();
    let tables: Vec<TableId> = args
        .tables
        .iter()
        .filter_map(|t| {
            TableId::parse(t.trim())
                .map_err(|e| problems.push(format!("CROUPIER_TABLES: {t:?}: {e}")))
                .ok()
        })
        .collect();
    if tables.is_empty() {
        problems.push("CROUPIER_TABLES names no table".into());
    }
    let money = |name: &str, value: i64, problems: &mut Vec<String>| {
        Money::stake(value)
            .map_err(|e| problems.push(format!("{name}: {e}")))
            .ok()
    };
    let (min, max, round) = (
        money("CROUPIER_MIN_BET", args.limits.min_bet, &mut problems),
        money("CROUPIER_MAX_BET", args.limits.max_bet, &mut problems),
        money(
            "CROUPIER_MAX_ROUND_STAKE",
            args.limits.max_round_stake,
            &mut problems,
        ),
    );
    let limits = match (min, max, round) {
        (Some(min), Some(max), Some(round)) => TableLimits::new(min, max, round)
            .map_err(|e| problems.push(format!("table limits: {e}")))
            .ok(),
        _ => None,
    };
    let http_addr = args
        .http_addr
        .clone()
        .or_else(|| settings.http_addr_from_file.clone())
        .unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_string());
    let http_addr = http_addr
        .parse::<SocketAddr>()
        .map_err(|e| problems.push(format!("CROUPIER_HTTP_ADDR {http_addr:?}: {e}")))
        .ok();
    let jwt_secret = gateway::JwtSecret::new(&settings.jwt_secret)
        .map_err(|e| problems.push(e.to_string()))
        .ok();
    let seed_secret = match &args.seed_secret {
        Some(secret) => gms::SeedSecret::new(secret)
            .map_err(|e| problems.push(e.to_string()))
            .ok(),
        None => gms::SeedSecret::random()
            .map_err(|e| problems.push(e.to_string()))
            .ok(),
    };
    let with_gateway = matches!(args.role, Role::Gateway | Role::All);
    if let (Some(metrics), Some(http)) = (args.metrics_addr, http_addr)
        && with_gateway
        && metrics == http
    {
        problems.push(format!(
            "CROUPIER_METRICS_ADDR {metrics} is the gateway's CROUPIER_HTTP_ADDR: the gateway \
             serves /metrics there already; unset it or give another address"
        ));
    }
    if args.bus == BusKind::Local && args.role != Role::All {
        problems
            .push("--bus local works only with `run all` (the bus lives in one process)".into());
    }
    match (limits, http_addr, jwt_secret, seed_secret) {
        (Some(limits), Some(http_addr), Some(jwt_secret), Some(seed_secret))
            if problems.is_empty() =>
        {
            Ok(Plan {
                tables,
                limits,
                http_addr,
                jwt_secret,
                seed_secret,
            })
        }
        _ => anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - ")),
    }
}

pub async fn run(args: RunArgs, settings: Resolved) -> anyhow::Result<()> {
    let plan = plan(&args, &settings)?;
    crate::limits::raise_open_files();
    let metrics = telemetry::init_metrics()?;
    if settings.jwt_secret_is_default && matches!(args.role, Role::Gateway | Role::All) {
        tracing::warn!(
            "no CROUPIER_JWT_SECRET: using the development secret; never do this in production"
        );
    }
    match args.bus {
        BusKind::Nats => {
            let options = bus::NatsOptions {
                connection_name: Some(format!("croupier-{:?}", args.role).to_lowercase()),
                ..bus::NatsOptions::default()
            };
            let bus = bus::NatsBus::connect(&settings.nats_url, &settings.nats_prefix, options)
                .await
                .with_context(|| format!("connect to NATS at {}", settings.nats_url))?;
            // Under `run all`, GMS gets a connection of its own, made on its own runtime
            // (`run_gms_apart`), so its timers and publishes never wait behind the bet path.
            let gms_apart = (args.role == Role::All).then(|| NatsEndpoint {
                url: settings.nats_url.clone(),
                prefix: settings.nats_prefix.clone(),
            });
            run_roles(bus, gms_apart, args, settings, plan, metrics).await
        }
        BusKind::Local => {
            run_roles(bus::LocalBus::new(), None, args, settings, plan, metrics).await
        }
    }
}

/// Where GMS's own NATS connection goes under `run all` (the process's own settings).
struct NatsEndpoint {
    url: String,
    prefix: String,
}

/// Runs GMS on a thread and a current-thread runtime of its own, with a NATS connection opened
/// there: its round timers and its publishes (and their acknowledgements) are then served by
/// the OS scheduler as a thread that mostly sleeps, instead of waiting in the shared runtime's
/// queue behind the bet path. Returns once GMS is connected (an error if it cannot be, as the
/// process's own connection is), with what resolves when GMS has stopped after `shutdown`.
async fn run_gms_apart(
    config: gms::GmsConfig,
    nats: NatsEndpoint,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    let (connected, is_connected) = tokio::sync::oneshot::channel();
    let (done, finished) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("gms")
        .build()
        .context("build GMS's runtime")?;
    std::thread::Builder::new()
        .name("gms".into())
        .spawn(move || {
            runtime.block_on(async move {
                let options = bus::NatsOptions {
                    connection_name: Some("croupier-all-gms".into()),
                    ..bus::NatsOptions::default()
                };
                match bus::NatsBus::connect(&nats.url, &nats.prefix, options).await {
                    Ok(bus) => {
                        let _ = connected.send(Ok(()));
                        gms::Gms::build(config, bus).run(shutdown).await;
                    }
                    Err(error) => {
                        let _ = connected.send(Err(anyhow::Error::new(error)
                            .context(format!("connect GMS to NATS at {}", nats.url))));
                    }
                }
            });
            let _ = done.send(());
        })
        .context("start GMS's thread")?;
    is_connected
        .await
        .context("GMS's thread ended before connecting")??;
    Ok(finished)
}

async fn run_roles<B: Bus>(
    bus: B,
    gms_apart: Option<NatsEndpoint>,
    args: RunArgs,
    settings: Resolved,
    plan: Plan,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<()> {
    let metrics_listener = match args.metrics_addr {
        Some(addr) => Some(telemetry::bind_metrics(addr).await?),
        None => None,
    };
    bus.setup(&settings.definitions())
        .await
        .context("create the streams and buckets")?;
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(telemetry::upkeep(metrics.clone(), shutdown.clone()));
    let with = |role: Role| args.role == role || args.role == Role::All;

    if with(Role::Gs) {
        let mut pool = store::PoolConfig::new(settings.database_url.clone());
        pool.max_size = args.db_pool_size;
        let instance = args.gs_instance.clone().unwrap_or_else(default_gs_instance);
        // The instance's name in `pg_stat_activity`, so an operator (or a chaos run) can tell
        // which GS holds a transaction open.
        pool.application_name = instance.clone();
        let store = store::Store::new(&pool).context("configure the Postgres pool")?;
        let report = store.migrate().await.context("apply migrations")?;
        tracing::info!(?report, "migrations checked");
        let config = gs::GsConfig {
            limits: plan.limits,
            batch_size: args.bet_batch.max(1),
            linger: Duration::from_millis(args.bet_linger_ms),
            health: gs::health::HealthConfig {
                probe_every: Duration::from_millis(args.db_probe_ms),
                probe_timeout: Duration::from_millis(args.db_probe_timeout_ms),
                slow_after: Duration::from_millis(args.db_slow_ms),
                settle_slow_after: Duration::from_millis(args.db_settle_slow_ms),
                off_after: Duration::from_millis(args.db_off_after_ms),
                on_after: Duration::from_millis(args.db_on_after_ms),
            },
            ..gs::GsConfig::new(instance)
        };
        let gs = gs::Gs::build(config, bus.clone(), store);
        let token = shutdown.clone();
        tasks.spawn(async move {
            if let Err(error) = gs.run(token).await {
                tracing::error!(%error, "gs stopped with an error");
            }
        });
    }
    if with(Role::Gms) {
        let config = gms::GmsConfig {
            tables: plan.tables.clone(),
            betting: Duration::from_millis(args.betting_ms),
            result: Duration::from_millis(args.result_ms),
            pause: Duration::from_millis(args.pause_ms),
            seed_secret: plan.seed_secret.clone(),
            lease: gms_lease(&args)?,
        };
        match gms_apart {
            Some(nats) => {
                let finished = run_gms_apart(config, nats, shutdown.clone()).await?;
                tasks.spawn(async move {
                    let _ = finished.await;
                });
            }
            None => {
                let gms = gms::Gms::build(config, bus.clone());
                tasks.spawn(gms.run(shutdown.clone()));
            }
        }
    }
    if with(Role::Gateway) {
        let renderer: gateway::MetricsRenderer = {
            let metrics = metrics.clone();
            Arc::new(move || metrics.render())
        };
        let config = gateway::GatewayConfig {
            http_addr: plan.http_addr,
            jwt_secret: plan.jwt_secret.clone(),
            bet_timeout: Duration::from_millis(args.bet_timeout_ms),
            drain_timeout: Duration::from_millis(args.drain_ms),
            idle_timeout: Duration::from_millis(args.ws_idle_ms.max(1)),
            dev_tokens: args.dev_tokens,
            limits: gateway_limits(&args),
            metrics: Some(renderer),
        };
        if args.dev_tokens {
            tracing::warn!("CROUPIER_DEV_TOKENS is on: /dev/token mints tokens for anyone");
        }
        let gateway = gateway::Gateway::build(config, bus.clone(), shutdown.clone())
            .await
            .with_context(|| format!("bind the gateway on {}", plan.http_addr))?;
        tasks.spawn(gateway.run());
    }
    // One recorder, so the same text as the gateway's `/metrics` (under `run all`, every role's).
    if let Some(listener) = metrics_listener {
        let token = shutdown.clone();
        tasks.spawn(async move {
            if let Err(error) = telemetry::serve_metrics(listener, metrics, token).await {
                tracing::error!(%error, "metrics server stopped");
            }
        });
    }
    tasks.close();
    tracing::info!(role = ?args.role, "running");

    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    let drain = Duration::from_millis(args.drain_ms) + Duration::from_secs(1);
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        tracing::warn!("some work did not finish within the drain deadline");
    }
    Ok(())
}

/// The gateway's throttling and back-pressure bounds from their flags (ADR 0012); clap has
/// already refused zeros.
fn gateway_limits(args: &RunArgs) -> gateway::GatewayLimits {
    let defaults = gateway::GatewayLimits::default();
    let size = |value: Option<u32>, default: usize| {
        value.map_or(default, |v| usize::try_from(v).unwrap_or(usize::MAX))
    };
    let handshakes_per_s = args.handshakes_per_s.unwrap_or(defaults.handshakes_per_s);
    gateway::GatewayLimits {
        max_connections: size(args.max_connections, defaults.max_connections),
        handshakes_per_s,
        handshake_burst: args.handshake_burst.unwrap_or(handshakes_per_s),
        client_msgs_per_s: args.client_msgs_per_s.unwrap_or(defaults.client_msgs_per_s),
        client_burst: args.client_burst.unwrap_or(defaults.client_burst),
        max_bets_in_flight: size(args.max_bets_in_flight, defaults.max_bets_in_flight),
        outbound_max_bytes: size(args.outbound_max_bytes, defaults.outbound_max_bytes),
        outbound_max_messages: size(args.outbound_max_messages, defaults.outbound_max_messages),
        write_timeout: args.write_timeout_ms.map_or(defaults.write_timeout, |ms| {
            Duration::from_millis(ms.into())
        }),
        send_buffer: args.ws_send_buffer,
    }
}

/// GMS lease settings from `CROUPIER_LEASE_TTL_MS` / `CROUPIER_LEASE_RENEW_MS` (ADR 0009).
fn gms_lease(args: &RunArgs) -> anyhow::Result<gms::LeaseConfig> {
    let bucket_ttl = gms::LeaseConfig::default_ttl();
    let ttl = args
        .lease_ttl_ms
        .map_or(bucket_ttl, Duration::from_millis)
        .min(bucket_ttl);
    let mut lease = gms::LeaseConfig::with_ttl(ttl);
    if let Some(renew) = args.lease_renew_ms {
        lease.renew = Duration::from_millis(renew);
    }
    if lease.renew >= ttl / 2 {
        anyhow::bail!(
            "CROUPIER_LEASE_RENEW_MS ({} ms) must be under half the lease TTL ({} ms)",
            lease.renew.as_millis(),
            ttl.as_millis()
        );
    }
    Ok(lease)
}

async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

/// `gs-<hostname>-<pid>`: unique per process on a host, and readable beside `ps`. It need not
/// survive a restart: a GS under a new name resumes from the furthest cursor (ADR 0027).
fn default_gs_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let pid = std::process::id();
    if host.is_empty() {
        format!("gs-{pid}")
    } else {
        format!("gs-{host}-{pid}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus_allowed() -> usize {
        allowed_cpus().expect("affinity").len()
    }

    /// `spread` pins each worker to one CPU, a different one per worker as far as there are
    /// CPUs, and leaves blocking threads where the process may run.
    #[test]
    fn spread_pins_each_worker_to_its_own_cpu_and_leaves_blocking_threads_free() {
        let allowed = cpus_allowed();
        let runtime = runtime(WorkerAffinity::Spread).expect("runtime");
        let workers = runtime.metrics().num_workers();
        let placed = runtime.block_on(async {
            // Enough tasks, each holding its worker briefly, that every worker takes some.
            let mut seen = std::collections::HashMap::new();
            for _ in 0..50 {
                let tasks: Vec<_> = (0..workers * 4)
                    .map(|_| {
                        tokio::spawn(async {
                            std::thread::sleep(Duration::from_millis(2));
                            let cpus = allowed_cpus().expect("affinity");
                            (std::thread::current().name().map(String::from), cpus)
                        })
                    })
                    .collect();
                for task in tasks {
                    let (name, cpus) = task.await.expect("task");
                    seen.insert(name, cpus);
                }
                if seen.len() == workers {
                    break;
                }
            }
            seen
        });
        assert_eq!(placed.len(), workers, "{placed:?}");
        let mut pinned: Vec<usize> = placed
            .values()
            .map(|cpus| {
                assert_eq!(cpus.len(), 1, "a worker on more than one CPU: {placed:?}");
                cpus[0]
            })
            .collect();
        pinned.sort_unstable();
        pinned.dedup();
        assert_eq!(pinned.len(), workers.min(allowed), "{placed:?}");

        let blocking = runtime
            .block_on(runtime.spawn_blocking(cpus_allowed))
            .expect("blocking task");
        assert_eq!(blocking, allowed);
    }

    #[test]
    fn off_leaves_workers_where_the_process_may_run() {
        let allowed = cpus_allowed();
        let runtime = runtime(WorkerAffinity::Off).expect("runtime");
        let on_worker = runtime
            .block_on(runtime.spawn(async { cpus_allowed() }))
            .expect("task");
        assert_eq!(on_worker, allowed);
    }
}

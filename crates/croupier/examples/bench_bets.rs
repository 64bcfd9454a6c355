//! `just bench-bets`: the whole path a bet takes — client → gateway → NATS request → GS batch →
//! Postgres commit → answer — under a steady, open-loop load, with settlement and the outbox
//! running behind it as in production (issue 18).
//!
//! - The stack: `ops/scripts/stack.sh up` in a temporary data directory, as `just up` runs it
//!   (its own NATS with the shipped definitions, its own Postgres with fsync and
//!   `synchronous_commit` on, `croupier run all` from the release build), default round
//!   timings, two tables.
//! - Load: per step, one `croupier loadgen` run: `PLAYERS` funded players, every one a bettor
//!   (half on each table, each also on its player channel), `--bet-rate` bets/s in total while
//!   rounds are open, four in five even-money and one in five straight up; latency from each
//!   bet's due time; every answer written out and checked by `croupier audit-bets` at the end.
//! - Steps: 500, 1k, 2k, 5k, 10k bets/s offered (`BENCH_RATES=500,1000`), each
//!   `BENCH_STEP_S` (60) seconds: two or three rounds per table, the rounds it filled settled
//!   before the step ends (`--wait-settled`). Stepping stops when p99 passes 100 ms or the
//!   answers fall behind (bets left without an answer, or fewer sent than asked).
//! - Per step: offered and accepted bets/s, refusals by code, due→answer p50/p99/p999, GS batch
//!   size (median), GMS transition lag p99, settlement time of the step's rounds (first and
//!   last), the outbox's lag (commit → publish p99, first half and second half of the step),
//!   outcome → `bet_settled` at the client p99, CPU per accepted bet of each process (Postgres:
//!   all of its processes), and whether betting switched off (it must not: issue 16).
//!   Histograms from the services' metrics are Prometheus buckets: their quantiles are
//!   interpolated within a bucket (as `histogram_quantile` does).
//! - Floors, in the same run, on the same servers: NATS request/reply with one in flight,
//!   a one-row Postgres commit with fsync, a short `bench-store` pass, and the capacity floor
//!   (`support/bet_floor.rs`): a bet's bus and store work by bare clients at 5,000 bets/s
//!   (`BENCH_FLOOR_RATE`), with nats-server's and Postgres's CPU per bet beside the steps'.
//! - A lag floor beside every step (`support/lag_probe.rs`): a thread that only sleeps until a
//!   deadline and publishes to JetStream, as GMS does for a transition, every 50 ms while the
//!   step runs; its acknowledgement − deadline is the least lag GMS could show under that load.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bus::Bus;
use futures_util::StreamExt;
use tokio::time::Instant;

const TABLES: &str = "roulette-1,roulette-2";
const PLAYERS: usize = 2_000;
const PLAYER_PREFIX: &str = "bb";
const DEFAULT_RATES: [u32; 5] = [500, 1_000, 2_000, 5_000, 10_000];
/// The stages of a settlement (`gs_ledger_stage_seconds{op="settle"}`), in order.
const SETTLE_STAGES: [&str; 5] = ["claim", "reads", "credits", "append", "results"];

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}

#[path = "support/up.rs"]
mod up;

#[path = "support/bet_floor.rs"]
mod bet_floor;

#[path = "support/lag_probe.rs"]
mod lag_probe;

use up::{Up, bin, root};

async fn wait_betting_on(url: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut client = testkit::WsClient::connect(url, Some("croupier.v1.json")).await?;
        let welcome = client
            .recv(Duration::from_secs(10))
            .await
            .map_err(|e| anyhow::anyhow!("no welcome: {e:?}"))?;
        client.close().await;
        if welcome["betting"] == "enabled" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("betting never came on: {welcome}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---- CPU ------------------------------------------------------------------------------------

const TICKS_PER_S: f64 = 100.0;

/// `(pid, ppid, utime + stime + cutime + cstime)` of every process, in clock ticks.
fn processes() -> Vec<(u32, u32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let fields = testkit::proc_stat(&pid.to_string())?;
        let ppid = fields.get(1)?.parse().ok()?;
        let ticks: u64 = fields
            .get(11..15)?
            .iter()
            .map(|f| f.parse::<u64>().unwrap_or(0))
            .sum();
        Some((pid, ppid, ticks))
    })
    .collect()
}

/// CPU seconds of `root` and every process below it (children that already ended count in
/// their parent's `cutime`/`cstime` once reaped).
fn tree_cpu(all: &[(u32, u32, u64)], root: u32) -> f64 {
    let mut total = 0;
    let mut frontier = vec![root];
    while let Some(pid) = frontier.pop() {
        for &(p, parent, ticks) in all {
            if p == pid {
                total += ticks;
            }
            if parent == pid {
                frontier.push(p);
            }
        }
    }
    total as f64 / TICKS_PER_S
}

/// CPU seconds of this process's reaped children (loadgen, once waited for).
fn children_cpu() -> f64 {
    let Some(fields) = testkit::proc_stat("self") else {
        return 0.0;
    };
    let ticks: u64 = fields
        .get(13..15)
        .map(|f| f.iter().map(|v| v.parse::<u64>().unwrap_or(0)).sum())
        .unwrap_or(0);
    ticks as f64 / TICKS_PER_S
}

#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    croupier: f64,
    postgres: f64,
    nats: f64,
    loadgen: f64,
}

fn cpu(up: &Up) -> Cpu {
    let all = processes();
    let of = |name: &str| up.pid(name).map_or(0.0, |pid| tree_cpu(&all, pid));
    Cpu {
        croupier: of("croupier"),
        postgres: of("postgres"),
        nats: of("nats"),
        loadgen: children_cpu(),
    }
}

// ---- metrics --------------------------------------------------------------------------------

/// One scrape of `/metrics`: histogram buckets (summed over labels) and plain values (summed
/// over labels).
#[derive(Debug, Default, Clone)]
struct Scrape {
    buckets: HashMap<String, BTreeMap<OrderedLe, f64>>,
    values: HashMap<String, f64>,
}

/// A bucket bound that sorts (`+Inf` last).
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrderedLe(f64);
impl Eq for OrderedLe {}
impl PartialOrd for OrderedLe {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for OrderedLe {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

fn parse_metrics(text: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.trim_end_matches('}')),
            None => (series, ""),
        };
        if let Some(base) = name.strip_suffix("_bucket") {
            let le = labels
                .split(',')
                .find_map(|l| l.strip_prefix("le=\""))
                .map(|l| l.trim_end_matches('"'))
                .and_then(|l| {
                    if l == "+Inf" {
                        Some(f64::INFINITY)
                    } else {
                        l.parse().ok()
                    }
                });
            if let Some(le) = le {
                *scrape
                    .buckets
                    .entry(base.to_string())
                    .or_default()
                    .entry(OrderedLe(le))
                    .or_default() += value;
            }
        } else {
            *scrape.values.entry(name.to_string()).or_default() += value;
            // The ledger's stages also by operation and stage: `gs_ledger_stage_seconds_sum:settle:append`.
            if name.starts_with("gs_ledger_stage_seconds_") {
                let label = |key: &str| {
                    labels.split(',').find_map(|l| {
                        l.strip_prefix(key)
                            .and_then(|v| v.strip_prefix("=\""))
                            .map(|v| v.trim_end_matches('"'))
                    })
                };
                if let (Some(op), Some(stage)) = (label("op"), label("stage")) {
                    *scrape
                        .values
                        .entry(format!("{name}:{op}:{stage}"))
                        .or_default() += value;
                }
            }
        }
    }
    scrape
}

async fn scrape(http_addr: &str) -> Scrape {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut stream = tokio::net::TcpStream::connect(http_addr).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).to_string())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    parse_metrics(body)
}

impl Scrape {
    fn value(&self, name: &str) -> f64 {
        self.values.get(name).copied().unwrap_or(0.0)
    }

    /// `name`'s cumulative bucket counts between `before` and `self`: (bound, samples ≤ it).
    fn buckets_since(&self, before: &Scrape, name: &str) -> Option<Vec<(f64, f64)>> {
        let now = self.buckets.get(name)?;
        let then = before.buckets.get(name);
        Some(
            now.iter()
                .map(|(le, n)| {
                    let was = then.and_then(|t| t.get(le)).copied().unwrap_or(0.0);
                    (le.0, n - was)
                })
                .collect(),
        )
    }

    /// The `q` quantile of `name`'s samples between `before` and `self`, interpolated within
    /// its bucket; `None` without samples.
    fn quantile_since(&self, before: &Scrape, name: &str, q: f64) -> Option<f64> {
        let delta = self.buckets_since(before, name)?;
        let total = delta.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = 0.0;
        let mut below = 0.0;
        for &(le, cumulative) in &delta {
            if cumulative >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let inside = cumulative - below;
                let fraction = if inside > 0.0 {
                    (rank - below) / inside
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * fraction);
            }
            lower = le;
            below = cumulative;
        }
        Some(lower)
    }

    /// The smallest bucket bound that holds every sample of `name` between `before` and
    /// `self` (the histogram's word for "the slowest was at most this"); `None` without samples.
    fn ceiling_since(&self, before: &Scrape, name: &str) -> Option<f64> {
        let delta = self.buckets_since(before, name)?;
        let total = delta.last()?.1;
        (total > 0.0)
            .then(|| delta.iter().find(|(_, n)| *n >= total).map(|(le, _)| *le))
            .flatten()
    }
}

// ---- floors ---------------------------------------------------------------------------------

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// NATS request/reply, one in flight, on the stack's server: p50 and p99 in ms.
async fn nats_floor(nats_url: &str) -> Result<(f64, f64)> {
    let bus = bus::NatsBus::connect(nats_url, "bench-floor", bus::NatsOptions::default()).await?;
    let mut requests = bus.serve("floor.echo", "floor").await?;
    let responder = tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let payload = request.payload.clone();
            let _ = request.respond(payload).await;
        }
    });
    let payload = bytes::Bytes::from(vec![b'x'; 200]);
    let mut spent = Vec::new();
    for i in 0..2_200 {
        let started = std::time::Instant::now();
        bus.request("floor.echo", payload.clone(), Duration::from_secs(2))
            .await
            .context("a floor request")?;
        if i >= 200 {
            spent.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    responder.abort();
    spent.sort_by(f64::total_cmp);
    Ok((percentile(&spent, 0.5), percentile(&spent, 0.99)))
}

/// A one-row INSERT committed on its own (fsync, `synchronous_commit` on), one at a time, on
/// the stack's Postgres: p50 and p99 in ms.
async fn postgres_floor(database_url: &str) -> Result<(f64, f64)> {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS bench_commit_floor (id bigserial PRIMARY KEY, at timestamptz)",
        )
        .await?;
    let insert = client
        .prepare("INSERT INTO bench_commit_floor (at) VALUES (now())")
        .await?;
    let mut spent = Vec::new();
    for i in 0..1_100 {
        let started = std::time::Instant::now();
        client.execute(&insert, &[]).await?;
        if i >= 100 {
            spent.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    client
        .batch_execute("DROP TABLE bench_commit_floor")
        .await?;
    driver.abort();
    spent.sort_by(f64::total_cmp);
    Ok((percentile(&spent, 0.5), percentile(&spent, 0.99)))
}

/// `BENCH_SHORT=1 bench_store` on the stack's Postgres (its own database there): the lines
/// that give the batched append's rate, its ratio to the indexed COPY and the 10k settlement.
fn bench_store_floor(database_url: &str) -> Result<Vec<String>> {
    let example = root().join("target/release/examples/bench_store");
    if !example.exists() {
        bail!("build first: cargo build --release -p gs --example bench_store");
    }
    let output = Command::new(example)
        .env("BENCH_SHORT", "1")
        .env("DATABASE_URL", database_url)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()?;
    if !output.status.success() {
        bail!("bench_store failed");
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| {
            l.contains("batched append")
                || l.contains("events' indexes")
                || l.contains("append / indexed COPY")
                || l.contains("10k settlement")
        })
        .map(|l| l.trim().to_string())
        .collect())
}

// ---- steps ----------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Step {
    rate: u32,
    sent: u64,
    offered_per_s: f64,
    accepted: u64,
    accepted_per_s: f64,
    refusals: BTreeMap<String, u64>,
    timeouts_retried: u64,
    unanswered: u64,
    p50: f64,
    p99: f64,
    p999: f64,
    batch_median: Option<f64>,
    gms_lag_p99: Option<f64>,
    /// Where the step's settlements spent their time: (stage, mean ms per settlement).
    settle_stages: Vec<(&'static str, f64)>,
    /// How many transitions GMS published in the step, and the bucket bound of the slowest.
    gms_transitions: f64,
    gms_lag_ceiling: Option<f64>,
    /// The lag floor measured beside the step (`support/lag_probe.rs`).
    probe: lag_probe::Lags,
    /// GS's settlements in the step (`gs_settlement_seconds`, `gs_settlement_bets`): how
    /// many, their bets, their mean time, and their p99 (bucket-interpolated).
    settlements: f64,
    settled_bets: f64,
    settle_mean_ms: Option<f64>,
    settle_p99: Option<f64>,
    outbox_lag_p99_first: Option<f64>,
    outbox_lag_p99_second: Option<f64>,
    /// Events committed and not yet published (`gs_store_head_position - gs_outbox_position`),
    /// sampled every 2 s while bets flow: median of the first and of the second half.
    backlog_first: f64,
    backlog_second: f64,
    /// Settlement time per 1,000 bets (ms) in the step's first and second half.
    settle_per_k_first: Option<f64>,
    settle_per_k_last: Option<f64>,
    /// The same over the whole step.
    settle_per_k: Option<f64>,
    settled_at_client_p99: f64,
    cpu_us_per_bet: Cpu,
    switches: f64,
    bets_file: PathBuf,
    audit: String,
    audit_clean: bool,
}

impl Step {
    fn refused(&self) -> u64 {
        self.refusals.values().sum()
    }

    /// The outbox's backlog grows: twice as many events waiting in the second half, and a
    /// thousand more.
    fn backlog_grows(&self) -> bool {
        self.backlog_second > 2.0 * self.backlog_first
            && self.backlog_second - self.backlog_first > 1_000.0
    }

    /// Settlement slows down: the second half's settlements take twice as long per bet as the
    /// first half's, and 20 ms more per thousand bets.
    fn settlement_grows(&self) -> bool {
        match (self.settle_per_k_first, self.settle_per_k_last) {
            (Some(a), Some(b)) => b > 2.0 * a && b - a > 20.0,
            _ => false,
        }
    }

    fn passes(&self) -> bool {
        let refused_share = self.refused() as f64 / (self.sent.max(1)) as f64;
        refused_share <= 0.001
            && self.timeouts_retried == 0
            && self.unanswered == 0
            && self.audit_clean
            && !self.backlog_grows()
            && !self.settlement_grows()
            && self.switches == 0.0
    }

    fn falls_behind(&self) -> bool {
        self.unanswered > 0 || self.offered_per_s < 0.9 * f64::from(self.rate) || self.p99 > 100.0
    }
}

async fn step(up: &Up, ws: &str, nats: &str, rate: u32, seconds: u64, dir: &Path) -> Result<Step> {
    let bets_file = dir.join(format!("bets-{rate}.tsv"));
    let report_file = dir.join(format!("report-{rate}.json"));
    let probe = lag_probe::LagProbe::start(nats)?;
    let before = scrape(&up.http_addr).await;
    let cpu_before = cpu(up);
    let mut loadgen = up
        .croupier()
        .args([
            "loadgen",
            "--quiet",
            "--url",
            ws,
            "--table",
            TABLES,
            "--clients",
            &PLAYERS.to_string(),
            "--bettors",
            &PLAYERS.to_string(),
            "--players",
            PLAYER_PREFIX,
            "--bet-rate",
            &rate.to_string(),
            "--duration",
            &format!("{seconds}s"),
            "--wait-settled",
            "40s",
            "--bets-out",
            &bets_file.to_string_lossy(),
            "--json",
            &report_file.to_string_lossy(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start loadgen")?;
    // A scrape at half time splits the outbox's lag into the step's two halves; one every
    // 2 s while bets flow samples its backlog.
    let started = Instant::now();
    // loadgen connects its clients (about 3 s) before it bets.
    let ramp = Duration::from_secs(3);
    let half = ramp + Duration::from_secs(seconds / 2);
    let betting_ends = ramp + Duration::from_secs(seconds);
    let mut middle = None;
    let mut backlog: Vec<(Duration, f64)> = Vec::new();
    let mut next_sample = ramp;
    let status = loop {
        if let Some(status) = loadgen.try_wait()? {
            break status;
        }
        let now = started.elapsed();
        if middle.is_none() && now >= half {
            middle = Some(scrape(&up.http_addr).await);
        }
        if now >= next_sample && now < betting_ends {
            let sample = scrape(&up.http_addr).await;
            backlog.push((
                now,
                (sample.value("gs_store_head_position") - sample.value("gs_outbox_position"))
                    .max(0.0),
            ));
            next_sample += Duration::from_secs(2);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let median_of = |values: Vec<f64>| {
        let mut values = values;
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    let backlog_first = median_of(
        backlog
            .iter()
            .filter(|(at, _)| *at < half)
            .map(|(_, b)| *b)
            .collect(),
    );
    let backlog_second = median_of(
        backlog
            .iter()
            .filter(|(at, _)| *at >= half)
            .map(|(_, b)| *b)
            .collect(),
    );
    let after = scrape(&up.http_addr).await;
    let probe = probe.finish()?;
    if !status.success() {
        bail!("loadgen failed at {rate} bets/s");
    }
    let cpu_after = cpu(up);
    let middle = middle.unwrap_or_else(|| before.clone());
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report_file)?)?;
    let bets = &report["bets"];
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
    let accepted = n(&bets["accepted"]);
    // Settlement: seconds per bet settled between two scrapes, as ms per 1,000 bets.
    let per_k = |to: &Scrape, from: &Scrape| {
        let seconds =
            to.value("gs_settlement_seconds_sum") - from.value("gs_settlement_seconds_sum");
        let bets = to.value("gs_settlement_bets_sum") - from.value("gs_settlement_bets_sum");
        (bets >= 100.0).then(|| seconds * 1e6 / bets)
    };
    let settlements =
        after.value("gs_settlement_seconds_count") - before.value("gs_settlement_seconds_count");
    let settled_bets =
        after.value("gs_settlement_bets_sum") - before.value("gs_settlement_bets_sum");
    let settle_seconds =
        after.value("gs_settlement_seconds_sum") - before.value("gs_settlement_seconds_sum");
    let per_bet = |a: f64, b: f64| (b - a) * 1e6 / accepted.max(1) as f64;
    Ok(Step {
        rate,
        sent: n(&bets["sent"]),
        offered_per_s: f(&bets["offered_per_s"]),
        accepted,
        accepted_per_s: f(&bets["accepted_per_s"]),
        refusals: bets["refusals"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), n(v))).collect())
            .unwrap_or_default(),
        timeouts_retried: n(&bets["timeouts_retried"]),
        unanswered: n(&bets["unanswered"]),
        p50: f(&bets["latency_ms"]["p50"]),
        p99: f(&bets["latency_ms"]["p99"]),
        p999: f(&bets["latency_ms"]["p999"]),
        batch_median: after.quantile_since(&before, "gs_bet_batch_size", 0.5),
        gms_lag_p99: after.quantile_since(&before, "gms_transition_lag_seconds", 0.99),
        settle_stages: SETTLE_STAGES
            .iter()
            .map(|&stage| {
                let of = |s: &Scrape, what: &str| {
                    s.value(&format!("gs_ledger_stage_seconds_{what}:settle:{stage}"))
                };
                let count = of(&after, "count") - of(&before, "count");
                let sum = of(&after, "sum") - of(&before, "sum");
                (stage, if count > 0.0 { sum * 1e3 / count } else { 0.0 })
            })
            .collect(),
        gms_transitions: after.value("gms_transition_lag_seconds_count")
            - before.value("gms_transition_lag_seconds_count"),
        gms_lag_ceiling: after.ceiling_since(&before, "gms_transition_lag_seconds"),
        probe,
        settlements,
        settled_bets,
        settle_mean_ms: (settlements > 0.0).then(|| settle_seconds * 1e3 / settlements),
        settle_p99: after.quantile_since(&before, "gs_settlement_seconds", 0.99),
        outbox_lag_p99_first: middle.quantile_since(&before, "gs_outbox_lag_seconds", 0.99),
        outbox_lag_p99_second: after.quantile_since(&middle, "gs_outbox_lag_seconds", 0.99),
        backlog_first,
        backlog_second,
        settle_per_k_first: per_k(&middle, &before),
        settle_per_k_last: per_k(&after, &middle),
        settle_per_k: per_k(&after, &before),
        settled_at_client_p99: f(&bets["settled_at_client_ms"]["p99"]),
        cpu_us_per_bet: Cpu {
            croupier: per_bet(cpu_before.croupier, cpu_after.croupier),
            postgres: per_bet(cpu_before.postgres, cpu_after.postgres),
            nats: per_bet(cpu_before.nats, cpu_after.nats),
            loadgen: per_bet(cpu_before.loadgen, cpu_after.loadgen),
        },
        switches: after.value("gs_store_health_switches_total")
            - before.value("gs_store_health_switches_total")
            + after.value("gateway_betting_status_changes_total")
            - before.value("gateway_betting_status_changes_total"),
        bets_file,
        audit: String::new(),
        audit_clean: false,
    })
}

fn audit(up: &Up, step: &mut Step) -> Result<()> {
    let output = up
        .croupier()
        .args(["audit-bets", "--json"])
        .arg(&step.bets_file)
        .output()?;
    let verdict: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    step.audit_clean = output.status.success() && verdict["pending"] == 0;
    step.audit = if output.status.code() == Some(2) {
        format!(
            "could not check: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
    } else if step.audit_clean {
        "clean".into()
    } else {
        let v = &verdict;
        format!(
            "lost {} + {} unanswered, refused yet recorded {}, debited twice {}, unsettled {}, settled twice {}, pending {}",
            v["lost_accepted"],
            v["lost_unanswered"],
            v["refused_yet_recorded"],
            v["debited_twice"],
            v["unsettled"],
            v["settled_twice"],
            v["pending"]
        )
    };
    Ok(())
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |s| format!("{:.1}", s * 1e3))
}

fn one(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0}"))
}

async fn run() -> Result<()> {
    if !bin().exists() {
        bail!("build first: cargo build --release -p croupier");
    }
    let rates: Vec<u32> = match std::env::var("BENCH_RATES") {
        Ok(list) => list
            .split(',')
            .map(|r| r.trim().parse().context("BENCH_RATES"))
            .collect::<Result<_>>()?,
        Err(_) => DEFAULT_RATES.to_vec(),
    };
    let seconds: u64 = std::env::var("BENCH_STEP_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    eprintln!("bench-bets: starting `just up`'s stack (release build, tables {TABLES})…");
    let up = Up::start("croupier-bench-bets-", &[("CROUPIER_TABLES", TABLES)]).await?;
    let endpoints = up.endpoints();
    let ws = format!("ws://{}/ws", up.http_addr);

    eprintln!("bench-bets: funding {PLAYERS} players…");
    let mut pool = store::PoolConfig::new(endpoints["DATABASE_URL"].clone());
    pool.max_size = 2;
    let store = store::Store::new(&pool)?;
    for i in 0..PLAYERS {
        let player = domain::PlayerId::parse(&format!("{PLAYER_PREFIX}-{i}"))?;
        let id = protocol::DepositId::parse(&format!("bench-bets-{i}"))?;
        gs::ledger::deposit(&store, &player, domain::Money::new(100_000_000)?, &id).await?;
    }
    wait_betting_on(&ws).await?;

    let dir = tempfile::Builder::new()
        .prefix("croupier-bench-bets-out-")
        .tempdir()?;
    let mut steps = Vec::new();
    for &rate in &rates {
        eprintln!("bench-bets: {rate} bets/s for {seconds} s…");
        let step = step(&up, &ws, &endpoints["NATS_URL"], rate, seconds, dir.path()).await?;
        let stop = step.falls_behind();
        eprintln!(
            "bench-bets: {rate}: accepted {:.0}/s, p99 {:.2} ms",
            step.accepted_per_s, step.p99
        );
        steps.push(step);
        if stop {
            eprintln!("bench-bets: stepping stops (p99 over 100 ms or answers behind)");
            break;
        }
    }
    eprintln!("bench-bets: audit-bets on every step's answers…");
    for step in &mut steps {
        audit(&up, step)?;
    }
    // The floors last, so that the write-heavy bench-store pass (and the autovacuum after it)
    // does not fall on a step.
    eprintln!("bench-bets: floors…");
    let (nats_p50, nats_p99) = nats_floor(&endpoints["NATS_URL"]).await?;
    let (pg_p50, pg_p99) = postgres_floor(&endpoints["DATABASE_URL"]).await?;
    let store_lines = {
        let url = endpoints["DATABASE_URL"].clone();
        tokio::task::spawn_blocking(move || bench_store_floor(&url)).await??
    };
    let floor_rate: u32 = std::env::var("BENCH_FLOOR_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5_000);
    let floor_s = seconds.min(30);
    eprintln!("bench-bets: capacity floor, {floor_rate} bets/s for {floor_s} s…");
    let capacity = bet_floor::run(
        &endpoints["NATS_URL"],
        &endpoints["DATABASE_URL"],
        floor_rate,
        floor_s,
        || {
            let now = cpu(&up);
            (now.nats, now.postgres)
        },
    )
    .await?;

    println!("\n## just bench-bets");
    println!(
        "stack: `just up` (release build, fsync and synchronous_commit on), tables {TABLES}, default round timings (15 s betting); {PLAYERS} funded players, all betting, open-loop; {seconds} s per step\n"
    );
    println!(
        "| offered/s (asked) | accepted/s | refused | TIMEOUT | due→answer p50 / p99 / p999 ms | GS batch median | GMS lag p99 ms (lag floor p99) | settlements: n, bets, mean / p99 ms, ms per 1k bets (1st / 2nd half) | outbox lag p99 ms (1st / 2nd half) | outbox backlog, events (1st / 2nd half) | outcome→bet_settled p99 ms | CPU µs/bet croupier / postgres / nats / loadgen | betting switches | audit-bets | passes |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &steps {
        let refusals: Vec<String> = s.refusals.iter().map(|(c, n)| format!("{n} {c}")).collect();
        println!(
            "| {:.0} ({}) | {:.0} ({} bets) | {} | {} | {:.2} / {:.2} / {:.2} | {} | {} ({:.1}) | {:.0}, {:.0}, {} / {}, {} / {} | {} / {} | {:.0} / {:.0} | {:.1} | {:.0} / {:.0} / {:.0} / {:.0} | {} | {} | {} |",
            s.offered_per_s,
            s.rate,
            s.accepted_per_s,
            s.accepted,
            if refusals.is_empty() {
                "0".into()
            } else {
                refusals.join(", ")
            },
            s.timeouts_retried + s.unanswered,
            s.p50,
            s.p99,
            s.p999,
            opt(s.batch_median),
            ms(s.gms_lag_p99),
            s.probe.quantile_ms(0.99),
            s.settlements,
            s.settled_bets,
            opt(s.settle_mean_ms),
            ms(s.settle_p99),
            one(s.settle_per_k_first),
            one(s.settle_per_k_last),
            ms(s.outbox_lag_p99_first),
            ms(s.outbox_lag_p99_second),
            s.backlog_first,
            s.backlog_second,
            s.settled_at_client_p99,
            s.cpu_us_per_bet.croupier,
            s.cpu_us_per_bet.postgres,
            s.cpu_us_per_bet.nats,
            s.cpu_us_per_bet.loadgen,
            s.switches,
            s.audit,
            if s.passes() { "yes" } else { "no" },
        );
    }
    let best = |limit: f64| {
        steps
            .iter()
            .filter(|s| s.passes() && s.p99 <= limit)
            .map(|s| s.accepted_per_s)
            .reduce(f64::max)
    };
    println!();
    println!(
        "highest accepted rate sustained with p99 ≤ 10 ms: {}; with p99 ≤ 50 ms: {}",
        best(10.0).map_or("none".into(), |r| format!("{r:.0} bets/s")),
        best(50.0).map_or("none".into(), |r| format!("{r:.0} bets/s")),
    );
    println!();
    println!("floors (same servers, same run):");
    println!("- NATS request/reply, one in flight: p50 {nats_p50:.3} ms, p99 {nats_p99:.3} ms");
    println!("- Postgres one-row commit (fsync): p50 {pg_p50:.3} ms, p99 {pg_p99:.3} ms");
    println!(
        "- floor of one bet (request/reply + commit): p99 {:.3} ms",
        nats_p99 + pg_p99
    );
    for line in &store_lines {
        println!("- bench-store (short): {line}");
    }
    for s in &steps {
        println!(
            "- at {} bets/s: due→answer p99 / (request/reply p99 + commit p99) = {:.2}",
            s.rate,
            s.p99 / (nats_p99 + pg_p99)
        );
    }
    println!(
        "- capacity floor (the bus and store work of a bet by bare clients, no croupier logic; \
         `support/bet_floor.rs`) at {} bets/s: answered {:.0}/s, request→answer p50 {:.2} ms, \
         p99 {:.2} ms, batch median {}; CPU µs/bet nats {:.0} + postgres {:.0} = {:.0} \
         (its bare client {:.0}, not counted)",
        capacity.rate,
        capacity.answered_per_s,
        capacity.p50_ms,
        capacity.p99_ms,
        capacity.batch_median,
        capacity.nats_us,
        capacity.postgres_us,
        capacity.servers_us(),
        capacity.client_us,
    );
    let cores = |us: f64, rate: f64| us * rate / 1e6;
    println!(
        "- at {} bets/s the floor's servers need {:.2} of this machine's 2 cores",
        capacity.rate,
        cores(capacity.servers_us(), f64::from(capacity.rate)),
    );
    // Per-bet CPU includes what runs whatever the rate (rounds, heartbeats, idle
    // connections), so only a step at the floor's own rate is compared with it.
    for s in &steps {
        let c = s.cpu_us_per_bet;
        let compared = if s.rate == capacity.rate {
            format!(
                "{:.2}× the floor's",
                (c.postgres + c.nats) / capacity.servers_us()
            )
        } else {
            "not compared (the floor ran at another rate)".to_string()
        };
        println!(
            "- at {} bets/s: postgres + nats {:.0} µs/bet, {compared}; croupier {:.0} + loadgen {:.0} µs/bet on top; all four {:.2} cores",
            s.rate,
            c.postgres + c.nats,
            c.croupier,
            c.loadgen,
            cores(
                c.croupier + c.postgres + c.nats + c.loadgen,
                s.accepted_per_s
            ),
        );
    }
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let five_k = steps
        .iter()
        .any(|s| s.passes() && s.accepted_per_s >= 4_900.0 && s.p99 <= 10.0);
    println!();
    println!(
        "target 5,000 accepted bets/s with p99 ≤ 10 ms: {}",
        verdict(five_k)
    );
    // bench-store's own line judges its own, older target (ADR 0014); issue 18 asks for more.
    let append_ratio = store_lines
        .iter()
        .find_map(|l| l.strip_prefix("append / indexed COPY = "))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<f64>().ok());
    println!(
        "target bench-store batched append ≥ 0.7× the indexed COPY: {} ({})",
        verdict(append_ratio.is_some_and(|r| r >= 0.7)),
        append_ratio.map_or("not measured".into(), |r| format!("{r:.2}×, short pass")),
    );
    let at_5k = steps.iter().find(|s| s.rate == 5_000);
    if let Some(s) = at_5k {
        println!(
            "target GMS transition lag p99 ≤ 5 ms at 5k: {} ({} ms over {:.0} transitions, the \
             slowest ≤ {} ms; the lag floor beside it, `support/lag_probe.rs`: p50 {:.2}, \
             p99 {:.2}, max {:.2} ms over {} publishes{})",
            verdict(s.gms_lag_p99.is_some_and(|l| l <= 0.005)),
            ms(s.gms_lag_p99),
            s.gms_transitions,
            ms(s.gms_lag_ceiling),
            s.probe.quantile_ms(0.5),
            s.probe.quantile_ms(0.99),
            s.probe.max_ms(),
            s.probe.samples(),
            if s.probe.quantile_ms(0.99) > 5.0 {
                ": the floor itself is over 5 ms under this load"
            } else {
                ""
            },
        );
        println!(
            "target outbox keeps up at 5k (backlog not growing): {} ({:.0} then {:.0} events waiting)",
            verdict(!s.backlog_grows()),
            s.backlog_first,
            s.backlog_second
        );
        let per_10k = s.settle_per_k.map(|v| v * 10.0);
        let stages: Vec<String> = s
            .settle_stages
            .iter()
            .map(|(stage, ms)| format!("{stage} {ms:.1}"))
            .collect();
        println!(
            "settlements at 5k, mean ms per settlement by stage (commit not included): {}",
            stages.join(", ")
        );
        println!(
            "target settlement of 10k bets ≤ 200 ms at 5k: {} ({} ms per 10k bets; {:.0} settlements of {:.0} bets on average, {} ms each)",
            verdict(per_10k.is_some_and(|v| v <= 200.0)),
            opt(per_10k),
            s.settlements,
            s.settled_bets / s.settlements.max(1.0),
            opt(s.settle_mean_ms)
        );
    }
    Ok(())
}

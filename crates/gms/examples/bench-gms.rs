//! GMS figures for the issue-6 note (`just bench-gms`); timings belong here, not in tests.
//!
//! 1. Transition lag: one GMS in process on a real nats-server with millisecond rounds; the
//!    lag of every transition (published − scheduled, `gms_transition_lag_seconds`) over at
//!    least `--transitions` transitions, as p50/p99/max.
//! 2. Failover: two `croupier run gms` processes on one table; the leader (read from its
//!    lease) is killed with SIGKILL `--kills` times, each time a fresh standby is started; the
//!    time from the kill to the next transition stored by the other, as the median.
//!
//! `cargo run -p gms --example bench-gms -- --croupier target/debug/croupier [--transitions
//! 150] [--kills 5] [--lease-ttl-ms 6000]`. The NATS server is the harness's (`NATS_URL` or an
//! ephemeral one), each run in its own prefix.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bus::{Bus, Definitions, Kv, NatsBus, NatsOptions};
use futures_util::StreamExt;
use gms::{Gms, GmsConfig, LeaseConfig, LeaseRecord, SeedSecret};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tokio_util::sync::CancellationToken;

const TABLE: &str = "roulette-1";
const SECRET: &str = "bench-gms-seed-secret-of-32-bytes!!";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let lags = Arc::new(Mutex::new(Vec::new()));
    metrics::set_global_recorder(LagRecorder(lags.clone())).expect("install the recorder");
    let nats = testkit::nats().expect("a NATS server");

    lag(&nats, &args, &lags).await;
    failover(&nats, &args).await;
}

struct Args {
    croupier: String,
    transitions: usize,
    kills: usize,
    lease_ttl_ms: Option<u64>,
}

impl Args {
    fn parse() -> Self {
        let mut args = Args {
            croupier: "target/debug/croupier".into(),
            transitions: 150,
            kills: 5,
            lease_ttl_ms: None,
        };
        let raw: Vec<String> = std::env::args().skip(1).collect();
        for pair in raw.chunks(2) {
            let value = pair.get(1).cloned().unwrap_or_default();
            match pair[0].as_str() {
                "--croupier" => args.croupier = value,
                "--transitions" => args.transitions = value.parse().expect("--transitions N"),
                "--kills" => args.kills = value.parse().expect("--kills N"),
                "--lease-ttl-ms" => args.lease_ttl_ms = Some(value.parse().expect("ms")),
                other => panic!("unknown argument {other}"),
            }
        }
        args
    }
}

async fn connect(nats: &testkit::TestNats, prefix: &str) -> NatsBus {
    let bus = NatsBus::connect(&nats.url, prefix, NatsOptions::default())
        .await
        .expect("connect");
    bus.setup(&Definitions::croupier()).await.expect("setup");
    bus
}

async fn lag(nats: &testkit::TestNats, args: &Args, lags: &Arc<Mutex<Vec<f64>>>) {
    let bus = connect(nats, &testkit::unique_prefix()).await;
    let config = GmsConfig {
        tables: vec![domain::TableId::parse(TABLE).expect("table")],
        betting: Duration::from_millis(100),
        result: Duration::from_millis(30),
        pause: Duration::from_millis(30),
        seed_secret: SeedSecret::new(SECRET).expect("secret"),
        lease: LeaseConfig::with_ttl(LeaseConfig::default_ttl()),
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(Gms::build(config, bus.clone()).run(shutdown.clone()));
    while lags.lock().expect("lags").len() < args.transitions {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    running.await.expect("gms");
    let mut lags = lags.lock().expect("lags").clone();
    lags.sort_by(f64::total_cmp);
    println!(
        "transition lag over {} transitions (betting 100 ms, result 30 ms, pause 30 ms): \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lags.len(),
        quantile(&lags, 0.50) * 1e3,
        quantile(&lags, 0.99) * 1e3,
        lags.last().copied().unwrap_or_default() * 1e3,
    );
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &Args, nats: &testkit::TestNats, prefix: &str) -> Process {
    let mut command = Command::new(&args.croupier);
    command
        .args(["run", "gms"])
        .env("NATS_URL", &nats.url)
        .env("CROUPIER_NATS_PREFIX", prefix)
        .env("CROUPIER_SEED_SECRET", SECRET)
        .env("CROUPIER_BETTING_MS", "1000")
        .env("CROUPIER_RESULT_MS", "200")
        .env("CROUPIER_PAUSE_MS", "300")
        .env("CROUPIER_ENDPOINTS_FILE", "/nonexistent")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    if let Some(ttl) = args.lease_ttl_ms {
        command.env("CROUPIER_LEASE_TTL_MS", ttl.to_string());
    }
    Process(command.spawn().expect("start croupier run gms"))
}

async fn leader_pid(kv: &impl Kv) -> u32 {
    loop {
        if let Ok(Some(entry)) = kv.get(TABLE).await {
            if let Ok(LeaseRecord {
                owner: Some(_),
                pid,
                ..
            }) = LeaseRecord::decode(&entry.value)
            {
                return pid;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn failover(nats: &testkit::TestNats, args: &Args) {
    let prefix = testkit::unique_prefix();
    let bus = connect(nats, &prefix).await;
    let kv = bus
        .kv(protocol::subject::GMS_LEASES_BUCKET)
        .await
        .expect("leases");
    let mut processes = vec![start(args, nats, &prefix), start(args, nats, &prefix)];
    let subject = format!("table.{TABLE}.round");
    let mut replay = bus
        .replay(protocol::subject::TABLES_STREAM, &subject, 1)
        .await
        .expect("replay");
    // The first round shows both are up and one leads.
    let mut last_seq = 0;
    while last_seq < 3 {
        last_seq = replay.next().await.expect("replay").expect("message").seq;
    }
    let mut times = Vec::new();
    for kill in 1..=args.kills {
        let pid = leader_pid(&kv).await;
        let index = processes
            .iter()
            .position(|p| p.0.id() == pid)
            .expect("the leader is one of ours");
        // Drain what is already stored, so that the next message is after the kill.
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(10), replay.next()).await
        {
            last_seq = message.expect("message").seq;
        }
        let killed_at = Instant::now();
        let mut leader = processes.swap_remove(index);
        leader.0.kill().expect("SIGKILL");
        let _ = leader.0.wait();
        drop(leader);
        // A message the leader had in flight may land just after the kill: only one stored by
        // the other process counts (its lease shows its pid first).
        let message = loop {
            let message = replay.next().await.expect("replay").expect("message");
            if message.seq > last_seq && leader_pid(&kv).await != pid {
                break message;
            }
        };
        let took = killed_at.elapsed();
        let event = protocol::decode_event(&message.payload).expect("event");
        println!(
            "kill {kill}: leader pid {pid} killed; {} of round {} stored by the standby after {} ms",
            event.kind(),
            event.round().map_or(0, |r| r.get()),
            took.as_millis()
        );
        times.push(took);
        last_seq = message.seq;
        processes.push(start(args, nats, &prefix));
        // Let the new standby connect and start watching the lease.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    times.sort();
    let median = times.get(times.len() / 2).copied().unwrap_or_default();
    println!(
        "failover (kill -9 of the leader → next transition by the standby), lease TTL {} ms: \
         median {} ms over {} kills (min {} ms, max {} ms)",
        args.lease_ttl_ms
            .unwrap_or(LeaseConfig::default_ttl().as_millis() as u64),
        median.as_millis(),
        times.len(),
        times.first().copied().unwrap_or_default().as_millis(),
        times.last().copied().unwrap_or_default().as_millis(),
    );
}

/// Keeps every value of `gms_transition_lag_seconds`; every other metric is dropped.
struct LagRecorder(Arc<Mutex<Vec<f64>>>);

struct LagSink(Arc<Mutex<Vec<f64>>>);

impl metrics::HistogramFn for LagSink {
    fn record(&self, value: f64) {
        if let Ok(mut values) = self.0.lock() {
            values.push(value);
        }
    }
}

impl Recorder for LagRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        if key.name() == "gms_transition_lag_seconds" {
            Histogram::from_arc(Arc::new(LagSink(self.0.clone())))
        } else {
            Histogram::noop()
        }
    }
}

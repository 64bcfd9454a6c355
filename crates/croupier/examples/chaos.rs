//! `just chaos`: every scenario of issue 17 §3 on `just up-cluster`'s stack (release build,
//! default round timings, two tables) under load from `croupier loadgen`: 2,000 clients over
//! both gateways, 500 bets/s. Prints the report as a table and writes it as JSON.
//!
//! Settings (environment): `CHAOS_SCENARIOS` (comma-separated, default all: gs-kill,
//! gms-leader-kill, gateway-kill, nats-kill, nats-freeze, pg-stop, pg-freeze, pg-stop-long),
//! `CHAOS_CLIENTS` (2000), `CHAOS_BETTORS` (1000), `CHAOS_BET_RATE` (500), `CHAOS_FAULT_S`
//! (20), `CHAOS_JSON` (artifacts/chaos.json). Exit 0 when every scenario passes (nothing lost,
//! settled twice, missed or doubled; the audits agree; betting back), 1 otherwise.

use std::time::Duration;

use anyhow::{Context, Result};

#[path = "support/up.rs"]
mod up;

#[path = "support/chaos.rs"]
mod chaos;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let code = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())?;
    std::process::exit(code)
}

async fn run() -> Result<i32> {
    if !up::bin().exists() {
        anyhow::bail!("build first: cargo build --release -p croupier");
    }
    let scenarios = chaos::Scenario::from_env(&chaos::Scenario::ALL)?;
    let options = chaos::Options {
        profile: "release",
        scenarios,
        clients: env_or("CHAOS_CLIENTS", 2_000),
        bettors: env_or("CHAOS_BETTORS", 1_000),
        bet_rate: env_or("CHAOS_BET_RATE", 500),
        before: Duration::from_secs(10),
        fault_for: Duration::from_secs(env_or("CHAOS_FAULT_S", 20)),
        // Longer than the streams' two-minute duplicate window.
        long_fault_for: Duration::from_secs(150),
        after: Duration::from_secs(30),
        betting_ms: 15_000,
        result_ms: 3_000,
        pause_ms: 4_000,
        lease_ttl_ms: 6_000,
    };
    let outcomes = chaos::run(&options).await?;
    let table = chaos::table(&outcomes);
    println!(
        "stack: `just up-cluster` (release; NATS cluster of 3, streams R3; gms, gs, gateway ×2), tables {}; {} clients over both gateways, {} bettors at {} bets/s; faults of {} s\n",
        chaos::TABLES,
        options.clients,
        options.bettors,
        options.bet_rate,
        options.fault_for.as_secs()
    );
    println!("{table}");
    let path = std::env::var("CHAOS_JSON").unwrap_or_else(|_| "artifacts/chaos.json".into());
    let path = up::root().join(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&chaos::json(&options, &outcomes))?,
    )
    .with_context(|| format!("write {}", path.display()))?;
    println!("JSON: {}", path.display());
    Ok(if outcomes.iter().all(|o| o.passed) {
        0
    } else {
        1
    })
}

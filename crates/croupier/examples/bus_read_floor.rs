//! The bus half's floor (ADR 0018, session 12): a bare async-nats client reading
//! `just bench-replay`'s kept streams, by an ordered consumer or by pulls of a given size,
//! with its own CPU and nats-server's for each stream. Nothing decoded, nothing checked.
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4223 NATS_PID=$(pgrep -f 'nats-server -c') \
//!   cargo run --release -p croupier --example bus_read_floor -- ordered
//! … -- pull 640
//! ```
use std::time::Instant;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// User + system CPU seconds of process `pid` so far.
fn cpu_of(pid: u32) -> Result<f64> {
    let fields = testkit::proc_stat(&pid.to_string()).ok_or("no /proc/PID/stat")?;
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i)
            .ok_or("a short /proc/PID/stat")?
            .parse::<f64>()?)
    };
    // Clock ticks of 1/100 s (USER_HZ on Linux).
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let url = std::env::var("NATS_URL")?;
    let server: u32 = std::env::var("NATS_PID")?.parse()?;
    let me = std::process::id();
    let mode = std::env::args().nth(1).unwrap_or_else(|| "ordered".into());
    let batch: usize = match std::env::args().nth(2) {
        Some(batch) => batch.parse()?,
        None => 500,
    };
    let client = async_nats::connect(&url).await?;
    let js = jetstream::new(client);
    // `just bench-replay`'s namespace (its `CROUPIER_NATS_PREFIX`).
    for name in ["bench_replay_TABLES", "bench_replay_PLAYERS"] {
        let mut stream = js.get_stream(name).await?;
        let last = stream.info().await?.state.last_sequence;
        let (client_cpu, server_cpu, started) = (cpu_of(me)?, cpu_of(server)?, Instant::now());
        let (mut count, mut bytes) = (0u64, 0usize);
        let mut messages = match mode.as_str() {
            "ordered" => stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await?
                .messages()
                .await?
                .map(|m| m.map_err(|e| e.to_string()))
                .boxed(),
            "pull" => stream
                .create_consumer(consumer::pull::Config {
                    ack_policy: consumer::AckPolicy::None,
                    deliver_policy: consumer::DeliverPolicy::All,
                    memory_storage: true,
                    inactive_threshold: std::time::Duration::from_secs(30),
                    ..Default::default()
                })
                .await?
                .stream()
                .max_messages_per_batch(batch)
                .messages()
                .await?
                .map(|m| m.map_err(|e| e.to_string()))
                .boxed(),
            other => return Err(format!("{other}: ordered or pull [batch]").into()),
        };
        while let Some(message) = messages.next().await {
            let message = message?;
            count += 1;
            bytes += message.payload.len();
            if message.info()?.stream_sequence >= last {
                break;
            }
        }
        println!(
            "{mode} {batch} {name}: {count} msgs {bytes} B in {:.2} s, client CPU {:.2} s, server CPU {:.2} s",
            started.elapsed().as_secs_f64(),
            cpu_of(me)? - client_cpu,
            cpu_of(server)? - server_cpu
        );
    }
    Ok(())
}

//! A floor for GMS's transition lag (issue 18), run beside a bench step: a thread that does
//! only what GMS does to publish a transition, and nothing else.
//!
//! GMS (under `croupier run all`, ADR 0023) runs on a thread with a current-thread runtime of
//! its own; for each transition it sleeps until the scheduled time, publishes one small message
//! to a file-stored JetStream stream with a message id and an expected last subject sequence,
//! waits for the acknowledgement, and records acknowledgement − scheduled time
//! (`gms_transition_lag_seconds`). The probe does the same on the same nats-server, with no
//! round state, no encoding and no logging, every [`EVERY`] instead of a few times a round, so
//! its distribution has hundreds of samples where GMS's has a few dozen.
//!
//! If the probe's own p99 is above a lag target while the step's load runs, the target is
//! beyond the machine under that load: the least GMS could do is that late.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use tokio::time::Instant;

/// How often the probe publishes.
pub const EVERY: Duration = Duration::from_millis(50);
const STREAM: &str = "BENCH_PROBE";
const SUBJECT: &str = "bench.probe.lag";
const PAYLOAD_BYTES: usize = 200;
/// A publish not acknowledged within this ends the probe with an error (the bench says so)
/// instead of leaving it waiting.
const ACK_WITHIN: Duration = Duration::from_secs(10);

/// The probe's lags, acknowledgement − deadline.
#[derive(Debug, Clone, Default)]
pub struct Lags {
    sorted: Vec<Duration>,
}

impl Lags {
    pub fn samples(&self) -> usize {
        self.sorted.len()
    }

    /// The `q` quantile in milliseconds (nearest rank), NaN with no samples.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * self.sorted.len() as f64).ceil() as usize).clamp(1, self.sorted.len());
        self.sorted[rank - 1].as_secs_f64() * 1e3
    }

    pub fn max_ms(&self) -> f64 {
        self.quantile_ms(1.0)
    }
}

/// A running probe; [`LagProbe::finish`] stops it and returns what it measured. Dropped
/// without it (a step that failed), it is told to stop all the same.
pub struct LagProbe {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Vec<Duration>>>>,
}

impl Drop for LagProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl LagProbe {
    /// Starts publishing every [`EVERY`] on a thread of its own (after its stream is made).
    pub fn start(nats_url: &str) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("lag-probe".into())
            .spawn({
                let stop = stop.clone();
                let url = nats_url.to_string();
                move || {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?
                        .block_on(probe(&url, stop, ready_tx))
                }
            })?;
        let probe = LagProbe {
            stop,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(()) => Ok(probe),
            // The thread ended before it was ready: its own error says why.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => probe
                .finish()
                .and_then(|_| Err(anyhow::anyhow!("the lag probe ended before it started")))
                .context("start the lag probe"),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(anyhow::anyhow!("the lag probe did not start within 10 s"))
            }
        }
    }

    /// Stops the probe and waits for its thread (at most one period and one publish).
    pub fn finish(mut self) -> Result<Lags> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self
            .thread
            .take()
            .context("the lag probe was finished already")?;
        let mut sorted = thread
            .join()
            .map_err(|_| anyhow::anyhow!("the lag probe panicked"))??;
        sorted.sort();
        Ok(Lags { sorted })
    }
}

async fn probe(
    url: &str,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::SyncSender<()>,
) -> Result<Vec<Duration>> {
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream(STREAM).await;
    js.create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec![SUBJECT.into()],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .context("probe stream")?;
    let _ = ready.send(());
    let payload = bytes::Bytes::from(vec![b'p'; PAYLOAD_BYTES]);
    let mut lags = Vec::with_capacity(4096);
    let mut last_seq = 0u64;
    let mut deadline = Instant::now() + EVERY;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep_until(deadline).await;
        n += 1;
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.clone())
            .message_id(format!("probe-{n}"))
            .expected_last_subject_sequence(last_seq);
        let publish = async { js.send_publish(SUBJECT.to_string(), message).await?.await };
        let ack = tokio::time::timeout(ACK_WITHIN, publish)
            .await
            .context("probe publish: no acknowledgement")?
            .context("probe publish")?;
        lags.push(Instant::now().saturating_duration_since(deadline));
        last_seq = ack.sequence;
        deadline += EVERY;
        // A publish slower than the period: the next deadline is the next one still ahead, as
        // GMS's next transition would be scheduled from its round, not from the late one.
        let now = Instant::now();
        while deadline <= now {
            deadline += EVERY;
        }
    }
    let _ = js.delete_stream(STREAM).await;
    drop(client);
    Ok(lags)
}

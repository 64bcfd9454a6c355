//! The background tasks behind the nats adapter's replays and durable consumers. Each one feeds
//! a bounded channel, re-establishes its consumer when the server loses it (restart, failover),
//! and ends when its feed is dropped or the bus is closed.

use std::time::Duration;

use async_nats::jetstream::consumer;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::NatsBus;
use crate::error::BusError;
use crate::port::{AckMessage, Acker, StoredMessage};

/// Pauses between attempts to re-establish a consumer while the server is away.
const RESUBSCRIBE_BACKOFF_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// How long one attempt to re-establish a consumer or a watch may take, doubling from the
/// first to the last while attempts go unanswered. While a stream or the cluster's metadata elects a
/// leader (seconds after a node dies), a consumer request is not answered at all: with the
/// connection's 5 s request timeout, an attempt that just missed the election held the feed
/// back up to 5 s more (two such were measured as a gateway's feeds returning 10 s after a
/// node kill, the leaders back after 5). Healthy, the request takes milliseconds.
pub(super) const ATTEMPT_TIMEOUT_FIRST: Duration = Duration::from_secs(1);
pub(super) const ATTEMPT_TIMEOUT_LAST: Duration = Duration::from_secs(5);

/// A replay that has delivered nothing for this long asks whether the stream holds anything
/// past what it delivered; it re-establishes itself when the answer is yes twice,
/// [`STALL_RECHECK`] apart. The client's ordered consumer recreates itself after missed
/// heartbeats, but it did not always come back: a gateway's feed of every player channel,
/// whose consumer lived on a node killed in a cluster while the gateway's own connection was
/// elsewhere, delivered nothing for more than 30 s with no error (ADR 0028). A quiet feed
/// costs one read of the stream's last matching message every few seconds.
const STALL_QUIET: Duration = Duration::from_secs(3);
const STALL_RECHECK: Duration = Duration::from_secs(1);

/// Re-establishes what a server lost (a consumer, a watch): calls `open` until it succeeds,
/// pausing `first_pause` before the first attempt and twice as long after each refusal (up to
/// [`RESUBSCRIBE_BACKOFF_MAX`]); an attempt left unanswered is given [`ATTEMPT_TIMEOUT_FIRST`],
/// doubling to [`ATTEMPT_TIMEOUT_LAST`], and is followed at once by the next. `None` once
/// `cancel` fires; `Some(Err)` for an error `is_final` says no retry mends.
pub(super) async fn reestablish<T, E, Fut>(
    what: &'static str,
    cancel: &CancellationToken,
    first_pause: Duration,
    mut open: impl FnMut() -> Fut,
    is_final: impl Fn(&E) -> bool,
) -> Option<Result<T, E>>
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = first_pause;
    let mut limit = ATTEMPT_TIMEOUT_FIRST;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        match tokio::time::timeout(limit, open()).await {
            Ok(Ok(opened)) => return Some(Ok(opened)),
            Ok(Err(error)) if is_final(&error) => return Some(Err(error)),
            Ok(Err(error)) => {
                tracing::debug!(%error, "{what} not re-established yet");
                delay = (delay * 2).clamp(RESUBSCRIBE_BACKOFF_MIN, RESUBSCRIBE_BACKOFF_MAX);
            }
            Err(_) => {
                tracing::debug!(?limit, "{what} not re-established yet: no answer");
                limit = (limit * 2).min(ATTEMPT_TIMEOUT_LAST);
                delay = delay.clamp(RESUBSCRIBE_BACKOFF_MIN, RESUBSCRIBE_BACKOFF_MAX);
            }
        }
    }
}

/// [`reestablish`] of a replay's or range read's consumer from `next_seq`: the consumer, or
/// `None` when the task is to stop (cancelled, or the stream is gone, which is told to the
/// reader: resuming in a new stream would mix epochs).
async fn reopen<T, S, Fut>(
    what: &'static str,
    next_seq: u64,
    cancel: &CancellationToken,
    sender: &mpsc::Sender<Result<S, BusError>>,
    open: impl FnMut() -> Fut,
) -> Option<T>
where
    Fut: std::future::Future<Output = Result<T, BusError>>,
{
    match reestablish(what, cancel, Duration::ZERO, open, |error| {
        matches!(error, BusError::StreamNotFound(_))
    })
    .await?
    {
        Ok(opened) => {
            tracing::info!(next_seq, "{what} re-established");
            Some(opened)
        }
        Err(error) => {
            let _ = sender.send(Err(error)).await;
            None
        }
    }
}

/// Hands `item` to the reader unless `cancel` fires first; false when the task is to stop
/// (cancelled, or the reader is gone). A reader that stopped reading cannot hold the task, nor
/// the bus's `close`, which waits for it.
async fn hand_over<T>(sender: &mpsc::Sender<T>, cancel: &CancellationToken, item: T) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        sent = sender.send(item) => sent.is_ok(),
    }
}

/// Why a replay or range read does not hand over its consumer's next item.
enum Passed {
    /// A message handed over already (a re-established consumer starts a little early).
    Skip,
    /// The consumer ended, failed, sent a message without metadata or lost a delivery:
    /// re-establish it.
    Reopen,
}

/// Sorts the consumer's next `item` against `next_seq` (the first sequence not yet handed
/// over): the message to hand over with its sequence, or why not. So a re-established consumer
/// causes no duplicate and no gap.
///
/// `delivered`, for a consumer that acknowledges nothing and so never redelivers (a range
/// read): the consumer's own sequence of the last delivery read. A delivery that is not the
/// one after it means the server sent some this read never got (lost with a connection cut
/// mid-batch): the consumer has moved past them, so it is re-established from `next_seq`, or
/// the range would have a gap.
fn in_order<E: std::fmt::Display>(
    item: Option<Result<async_nats::jetstream::Message, E>>,
    next_seq: u64,
    what: &str,
    delivered: Option<&mut u64>,
) -> Result<(async_nats::jetstream::Message, u64), Passed> {
    let message = match item {
        Some(Ok(message)) => message,
        Some(Err(error)) => {
            tracing::warn!(%error, next_seq, "{what} interrupted");
            return Err(Passed::Reopen);
        }
        None => return Err(Passed::Reopen),
    };
    let (seq, delivery) = match message.info() {
        Ok(info) => (info.stream_sequence, info.consumer_sequence),
        Err(error) => {
            tracing::warn!(%error, "message without JetStream metadata");
            return Err(Passed::Reopen);
        }
    };
    if let Some(delivered) = delivered {
        if delivery != *delivered + 1 {
            tracing::warn!(
                next_seq,
                expected = *delivered + 1,
                got = delivery,
                "{what} lost deliveries; re-establishing"
            );
            return Err(Passed::Reopen);
        }
        *delivered = delivery;
    }
    if seq < next_seq {
        Err(Passed::Skip)
    } else {
        Ok((message, seq))
    }
}

/// The stall watch's answer.
enum Last {
    /// The stream's last sequence matching the filter (`None`: no such message).
    Seq(Option<u64>),
    /// The server did not answer within [`ATTEMPT_TIMEOUT_FIRST`], or refused.
    NoAnswer,
    /// The task is to stop.
    Cancelled,
}

/// The stall watch's question: the stream's last sequence matching the filter, given
/// [`ATTEMPT_TIMEOUT_FIRST`] (a server that does not answer is no answer, not a wait for the
/// connection's request timeout) and yielding to `cancel`, so a bus closing meanwhile is not
/// held.
async fn last_matching(
    bus: &NatsBus,
    stream: &str,
    filter: &str,
    cancel: &CancellationToken,
) -> Last {
    let ask = tokio::time::timeout(ATTEMPT_TIMEOUT_FIRST, bus.last_seq_matching(stream, filter));
    tokio::select! {
        () = cancel.cancelled() => Last::Cancelled,
        last = ask => match last {
            Ok(Ok(last)) => Last::Seq(last),
            _ => Last::NoAnswer,
        },
    }
}

/// Messages a range read hands over at a time.
const RANGE_HANDOVER: usize = 1024;
/// A range read that has read nothing for this long hands over what it holds and asks the
/// stream whether the range holds more.
const RANGE_QUIET: Duration = Duration::from_millis(500);

pub(super) struct ReplaySpec {
    pub stream: String,
    pub filter: String,
    /// The first sequence not yet handed to the reader: the replay resumes from here and skips
    /// anything below it, so a re-established consumer causes no duplicate and no gap.
    pub next_seq: u64,
}

pub(super) struct RangeSpec {
    pub stream: String,
    pub filter: String,
    /// The first sequence not yet handed over (see [`ReplaySpec::next_seq`]).
    pub next_seq: u64,
    /// The last sequence of the range.
    pub to_seq: u64,
}

pub(super) struct ConsumeSpec {
    pub stream: String,
    pub durable: String,
    pub filter: String,
}

/// Feeds an ordered replay. The ordered consumer already recreates itself on sequence gaps and
/// missed heartbeats; this loop covers what it gives up on.
pub(super) async fn replay(
    bus: NatsBus,
    mut spec: ReplaySpec,
    mut ordered: consumer::pull::Ordered,
    sender: mpsc::Sender<Result<StoredMessage, BusError>>,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("bus_replay", stream = %spec.stream, filter = %spec.filter);
    let mut connections = bus.connections();
    let mut watch_connections = true;
    async move {
        loop {
            // Stall watch: when nothing has come for `STALL_QUIET`, ask the stream for its last
            // message matching the filter; one past what was delivered, seen twice in a row,
            // means the consumer is gone without a word (see `STALL_QUIET`).
            let mut quiet_since = tokio::time::Instant::now();
            let mut suspect = false;
            loop {
                let check_at = quiet_since + if suspect { STALL_RECHECK } else { STALL_QUIET };
                let item = tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = connections.changed(), if watch_connections => {
                        if changed.is_err() {
                            watch_connections = false;
                            continue;
                        }
                        // The server may have lost our ephemeral consumer: re-establish it now
                        // rather than after missed heartbeats.
                        tracing::info!(next_seq = spec.next_seq, "reconnected; re-establishing the replay");
                        break;
                    }
                    () = tokio::time::sleep_until(check_at) => {
                        quiet_since = tokio::time::Instant::now();
                        match last_matching(&bus, &spec.stream, &spec.filter, &cancel).await {
                            Last::Cancelled => return,
                            Last::Seq(Some(last)) if last >= spec.next_seq => {
                                if suspect {
                                    tracing::warn!(next_seq = spec.next_seq, last, "replay stalled: the stream holds messages it does not deliver; re-establishing");
                                    break;
                                }
                                suspect = true;
                            }
                            _ => suspect = false,
                        }
                        continue;
                    }
                    item = ordered.next() => item,
                };
                let (message, seq) = match in_order(item, spec.next_seq, "replay", None) {
                    Ok(next) => next,
                    Err(Passed::Skip) => continue,
                    Err(Passed::Reopen) => break,
                };
                let stored = bus.stored(&message.message, seq);
                spec.next_seq = seq + 1;
                if !hand_over(&sender, &cancel, Ok(stored)).await {
                    return;
                }
                quiet_since = tokio::time::Instant::now();
                suspect = false;
            }
            let next_seq = spec.next_seq;
            let open = || bus.ordered(&spec.stream, &spec.filter, next_seq);
            match reopen("replay", next_seq, &cancel, &sender, open).await {
                Some(reopened) => ordered = reopened,
                None => return,
            }
        }
    }
    .instrument(span)
    .await
}

/// Feeds a range read in batches until its last sequence, or until the stream holds no
/// further message matching the filter within the range. A consumer lost or interrupted
/// (reconnect, missed heartbeats, a pull that ends, one that delivers nothing for two of
/// [`RANGE_QUIET`] while the stream holds more, or a delivery missing from its own sequence)
/// is re-established from the first sequence not yet handed over.
pub(super) async fn read_range(
    bus: NatsBus,
    mut spec: RangeSpec,
    mut pull: consumer::pull::Stream,
    sender: mpsc::Sender<Result<Vec<StoredMessage>, BusError>>,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("bus_read_range", stream = %spec.stream, filter = %spec.filter);
    async move {
        let mut batch = Vec::with_capacity(RANGE_HANDOVER);
        // One timer for the whole read, not one per message: each tick compares where the
        // read stands with the tick before.
        let mut quiet =
            tokio::time::interval_at(tokio::time::Instant::now() + RANGE_QUIET, RANGE_QUIET);
        quiet.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut seen_at_tick = spec.next_seq;
            let mut suspect = false;
            // The consumer's own sequence of the last delivery read (see `in_order`).
            let mut delivered: u64 = 0;
            loop {
                let item = tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = quiet.tick() => {
                        if spec.next_seq != seen_at_tick {
                            seen_at_tick = spec.next_seq;
                            suspect = false;
                            continue;
                        }
                        // Nothing came for a while: hand over what there is, and ask the
                        // stream whether anything is left to come (a message past the range
                        // would have ended it).
                        if !batch.is_empty() && !hand_over(&sender, &cancel, Ok(std::mem::take(&mut batch))).await {
                            return;
                        }
                        match last_matching(&bus, &spec.stream, &spec.filter, &cancel).await {
                            Last::Cancelled => return,
                            Last::Seq(last) if last.unwrap_or(0) < spec.next_seq => return,
                            Last::Seq(_) if suspect => {
                                tracing::warn!(next_seq = spec.next_seq, "range read stalled; re-establishing");
                                break;
                            }
                            _ => suspect = true,
                        }
                        continue;
                    }
                    item = pull.next() => item,
                };
                let next = in_order(item, spec.next_seq, "range read", Some(&mut delivered));
                let (message, seq) = match next {
                    Ok(next) => next,
                    Err(Passed::Skip) => continue,
                    Err(Passed::Reopen) => break,
                };
                spec.next_seq = seq + 1;
                let done = seq >= spec.to_seq;
                if seq <= spec.to_seq {
                    batch.push(bus.stored(&message.message, seq));
                }
                if (done && !batch.is_empty()) || batch.len() >= RANGE_HANDOVER {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(RANGE_HANDOVER));
                    if !hand_over(&sender, &cancel, Ok(full)).await {
                        return;
                    }
                }
                if done {
                    return;
                }
            }
            if !batch.is_empty() && !hand_over(&sender, &cancel, Ok(std::mem::take(&mut batch))).await {
                return;
            }
            let next_seq = spec.next_seq;
            let open = || bus.range_consumer(&spec.stream, &spec.filter, next_seq);
            match reopen("range read", next_seq, &cancel, &sender, open).await {
                Some(reopened) => pull = reopened,
                None => return,
            }
        }
    }
    .instrument(span)
    .await
}

/// Feeds a durable consumer's deliveries. Messages pulled but lost with a connection are simply
/// redelivered by the server after `ack_wait`.
pub(super) async fn consume(
    bus: NatsBus,
    spec: ConsumeSpec,
    mut pull: consumer::pull::Stream,
    sender: mpsc::Sender<Result<AckMessage, BusError>>,
    cancel: CancellationToken,
) {
    let span = tracing::info_span!("bus_consume", stream = %spec.stream, durable = %spec.durable);
    async move {
        loop {
            loop {
                let item = tokio::select! {
                    () = cancel.cancelled() => return,
                    item = pull.next() => item,
                };
                let message = match item {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => {
                        tracing::warn!(%error, "durable consumer interrupted");
                        break;
                    }
                    None => break,
                };
                let (seq, delivered) = match message.info() {
                    Ok(info) => (
                        info.stream_sequence,
                        u64::try_from(info.delivered).unwrap_or(1),
                    ),
                    Err(error) => {
                        tracing::warn!(%error, "message without JetStream metadata");
                        continue;
                    }
                };
                let delivery = AckMessage {
                    msg: bus.stored(&message.message, seq),
                    delivered,
                    acker: Acker::Nats(Box::new(message)),
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    sent = sender.send(Ok(delivery)) => if sent.is_err() { return },
                }
            }
            let opened = reestablish(
                "durable consumer",
                &cancel,
                RESUBSCRIBE_BACKOFF_MIN,
                || bus.durable(&spec.stream, &spec.durable, &spec.filter),
                |error| matches!(error, BusError::StreamNotFound(_)),
            )
            .await;
            pull = match opened {
                None => return,
                Some(Ok(pull)) => {
                    tracing::info!("durable consumer re-established");
                    pull
                }
                Some(Err(error)) => {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
            };
        }
    }
    .instrument(span)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Bus, Definitions, NatsOptions, Publish};

    /// The stall watch reads the last message matching a replay's filter, wildcards and all: a
    /// server that refused wildcards would leave the watch blind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_stall_watch_finds_the_last_message_matching_a_wildcard_filter() {
        let server = testkit::NatsServer::start().expect("a NATS server");
        let bus = NatsBus::connect(
            &server.url(),
            &testkit::unique_prefix(),
            NatsOptions::default(),
        )
        .await
        .expect("connect");
        bus.setup(&Definitions::croupier()).await.expect("setup");
        for (subject, id) in [("table.a.round", "a1"), ("table.b.round", "b1")] {
            bus.publish(Publish::new(subject, id).msg_id(id))
                .await
                .expect("publish");
        }
        let last = |filter: &'static str| {
            let bus = bus.clone();
            async move {
                bus.last_seq_matching("TABLES", filter)
                    .await
                    .expect("read the last message")
            }
        };
        assert_eq!(last("table.a.>").await, Some(1));
        assert_eq!(last("table.b.>").await, Some(2));
        assert_eq!(last("table.*.round").await, Some(2));
        assert_eq!(last("table.c.>").await, None);
    }
}

//! Bet intake on `bets.place.<table>` (queue group `gs`): every request gets exactly one answer,
//! accepted with the new balance or rejected with a code — a malformed request included.
//!
//! Micro-batching: this one task collects decoded requests into a pending batch and flushes it
//! when it holds [`crate::GsConfig::batch_size`] bets or when the oldest has waited
//! [`crate::GsConfig::linger`]; each flush is one transaction ([`ledger::place_bets`]). Up to
//! [`MAX_BATCHES_IN_FLIGHT`] flushes run at once inside this task (no task per request). The
//! queue is bounded: at most `batch_size` pending plus `MAX_BATCHES_IN_FLIGHT × batch_size`
//! in flight; beyond that the task stops reading the bus subscription (itself bounded), and
//! late requests time out at the requester, who retries with the same `bet_id`.
//!
//! Degraded mode (ADR 0020): the task is in the queue group only while this GS serves
//! ([`crate::status`]); when it stops serving it leaves the group, so bets go to the other GS
//! processes, and answers what it holds: bets not written yet `BETTING_UNAVAILABLE`; a batch
//! stuck on the database is given up at once, `BETTING_UNAVAILABLE` if its `COMMIT` was never
//! sent (the connection is dropped, so nothing of it can commit), `TIMEOUT` if it was (it may
//! stand: the client retries with the same `bet_id` and gets the first answer, or a fresh one).

use std::time::Duration;

use bus::{Bus, Request, Requests};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use protocol::{Encoding, ErrorCode, PlaceBetReply, PlaceBetRequest};
use store::Store;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::GsConfig;
use crate::clock::now;
use crate::health::{Health, OpKind, StoreHealth};
use crate::ledger::{self, BetOutcome, BetRequest, LedgerError};
use crate::status::Serving;

/// Batches being written at once per GS instance. Each holds one pooled connection; four keep
/// the head row busy (one commits while the next ones validate) and leave connections for the
/// transitions, settlement and outbox tasks.
pub const MAX_BATCHES_IN_FLIGHT: usize = 4;

/// Pause before subscribing to bets again after a failed attempt.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_secs(1);

/// How often a bet on a round not seen yet looks again while it waits for the stream.
const CATCH_UP_POLL: Duration = Duration::from_millis(20);

type Pending = Vec<(Request, BetRequest)>;

pub(crate) async fn run<B: Bus>(
    bus: B,
    store: Store,
    config: GsConfig,
    health: Health,
    mut serving: Serving,
    shutdown: CancellationToken,
) {
    let batch_size = config.batch_size.max(1);
    let mut pending: Pending = Vec::with_capacity(batch_size);
    let mut linger_until: Option<Instant> = None;
    let mut in_flight = FuturesUnordered::new();
    let mut requests: Option<Requests> = None;
    let mut subscribe_after = Instant::now();
    let mut open = true;
    loop {
        let serve = open && *serving.borrow();
        if serve && requests.is_none() && Instant::now() >= subscribe_after {
            match bus
                .serve(
                    &protocol::subject::bets_place_wildcard(),
                    protocol::subject::GS_QUEUE_GROUP,
                )
                .await
            {
                Ok(subscription) => {
                    tracing::info!("gs joined the bet queue group");
                    requests = Some(subscription);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot subscribe to bets; retrying");
                    subscribe_after = Instant::now() + RESUBSCRIBE_PAUSE;
                }
            }
        }
        if !serve && requests.take().is_some() && open {
            tracing::warn!("gs left the bet queue group: it cannot record bets now");
        }
        if !serve && open && !pending.is_empty() {
            // Not written, and now never will be by this GS: say so at once.
            linger_until = None;
            refuse(std::mem::take(&mut pending)).await;
        }
        let full = pending.len() >= batch_size;
        let lingered = linger_until.is_some_and(|t| t <= Instant::now());
        if (full || lingered || (!open && !pending.is_empty()))
            && in_flight.len() < MAX_BATCHES_IN_FLIGHT
        {
            let batch = std::mem::replace(&mut pending, Vec::with_capacity(batch_size));
            linger_until = None;
            in_flight.push(flush(store.clone(), config.clone(), health.clone(), batch));
            continue;
        }
        if !open && pending.is_empty() && in_flight.is_empty() {
            return;
        }
        let can_read = requests.is_some() && !full;
        let resubscribe = serve && requests.is_none();
        tokio::select! {
            () = shutdown.cancelled(), if open => {
                open = false;
                requests = None;
            }
            Ok(()) = serving.changed(), if open => {}
            request = next_request(&mut requests), if can_read => match request {
                Some(request) => {
                    if let Some(bet) = decode(request).await {
                        if pending.is_empty() {
                            linger_until = Some(Instant::now() + config.linger);
                        }
                        pending.push(bet);
                    }
                }
                None => {
                    tracing::warn!("the bet subscription ended; subscribing again");
                    requests = None;
                    subscribe_after = Instant::now() + RESUBSCRIBE_PAUSE;
                }
            },
            () = tokio::time::sleep_until(subscribe_after), if resubscribe => {}
            // Only while a flush could start: otherwise an expired linger would spin.
            () = sleep_until(linger_until),
                if linger_until.is_some() && !full && in_flight.len() < MAX_BATCHES_IN_FLIGHT => {}
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            else => tokio::task::yield_now().await,
        }
    }
}

async fn next_request(requests: &mut Option<Requests>) -> Option<Request> {
    match requests {
        Some(requests) => requests.next().await,
        None => std::future::pending().await,
    }
}

/// Answers bets this GS will not write: nothing of them was recorded.
async fn refuse(batch: Pending) {
    metrics::counter!("gs_bets_rejected_total", "code" => ErrorCode::BettingUnavailable.as_str())
        .increment(batch.len() as u64);
    for (request, _) in batch {
        respond(
            request,
            PlaceBetReply::rejected(
                ErrorCode::BettingUnavailable,
                "betting is paused: the bet was not recorded; retry later with the same bet_id",
            ),
        )
        .await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Decodes a request; a malformed one is answered `BAD_MESSAGE` at once and goes no further.
async fn decode(request: Request) -> Option<(Request, BetRequest)> {
    match Encoding::MsgPack.decode::<PlaceBetRequest>(&request.payload) {
        Ok(bet) => {
            let bet = BetRequest {
                bet_id: bet.bet_id,
                player: bet.player,
                table: bet.table,
                round: bet.round,
                selection: bet.selection,
                amount: bet.amount,
            };
            Some((request, bet))
        }
        Err(error) => {
            metrics::counter!("gs_bets_rejected_total", "code" => ErrorCode::BadMessage.as_str())
                .increment(1);
            respond(
                request,
                PlaceBetReply::rejected(ErrorCode::BadMessage, error.to_string()),
            )
            .await;
            None
        }
    }
}

/// Writes one batch and answers each of its requests. Bets on rounds this GS has not seen yet
/// wait (bounded) for the stream to catch up, in a second transaction, so they never hold up
/// the others.
async fn flush(store: Store, config: GsConfig, health: Health, batch: Pending) {
    metrics::histogram!("gs_bet_batch_size").record(batch.len() as f64);
    // When the rounds cannot be read, the batch goes ahead: its transaction will say.
    let known = ledger::known_rounds(&store, batch.iter().map(|(_, b)| b)).await;
    let (ready, waiting): (Pending, Pending) = batch.into_iter().partition(|(_, bet)| {
        known.as_ref().map_or(true, |known| {
            known.contains(&(bet.table.to_string(), bet.round.get()))
        })
    });
    place_and_answer(&store, &config, &health, ready).await;
    if waiting.is_empty() {
        return;
    }
    let deadline = Instant::now() + config.catch_up_wait;
    loop {
        let known = ledger::known_rounds(&store, waiting.iter().map(|(_, b)| b))
            .await
            .unwrap_or_default();
        let all_seen = waiting
            .iter()
            .all(|(_, bet)| known.contains(&(bet.table.to_string(), bet.round.get())));
        if all_seen || Instant::now() >= deadline || health.current() != StoreHealth::Healthy {
            break;
        }
        tokio::time::sleep(CATCH_UP_POLL).await;
    }
    place_and_answer(&store, &config, &health, waiting).await;
}

async fn place_and_answer(store: &Store, config: &GsConfig, health: &Health, batch: Pending) {
    if batch.is_empty() {
        return;
    }
    if health.current() != StoreHealth::Healthy {
        refuse(batch).await;
        return;
    }
    let bets: Vec<BetRequest> = batch.iter().map(|(_, bet)| bet.clone()).collect();
    let outcomes = {
        let _in_flight = health.begin(OpKind::Append);
        ledger::place_bets_watched(store, &bets, &config.limits, now(), Some(health)).await
    };
    let (code, message) = match outcomes {
        Ok(outcomes) => {
            for ((request, bet), outcome) in batch.into_iter().zip(outcomes) {
                let reply = match outcome {
                    BetOutcome::Accepted { balance } => {
                        PlaceBetReply::accepted(bet.bet_id, balance)
                    }
                    BetOutcome::Rejected { code, message } => {
                        PlaceBetReply::rejected(code, message)
                    }
                };
                respond(request, reply).await;
            }
            return;
        }
        Err(LedgerError::CommitUnknown(error)) => {
            health.report_unavailable();
            tracing::warn!(%error, bets = batch.len(), "the database failed while a batch was committing: outcome unknown");
            // It may stand: never say it was not recorded. A retry with the same bet_id gets
            // the first answer if it was, and is judged afresh if it was not.
            (
                ErrorCode::Timeout,
                "the outcome is unknown (the database failed during the commit); retry with the same bet_id",
            )
        }
        Err(error) => {
            if error.is_unavailable() {
                health.report_unavailable();
                tracing::warn!(%error, bets = batch.len(), "database unavailable: bets refused");
            } else {
                tracing::error!(%error, bets = batch.len(), "a batch of bets could not be recorded");
            }
            // Rolled back (COMMIT was never sent): nothing was recorded.
            (
                ErrorCode::BettingUnavailable,
                "the bet could not be recorded; retry with the same bet_id",
            )
        }
    };
    metrics::counter!("gs_bets_rejected_total", "code" => code.as_str())
        .increment(batch.len() as u64);
    for (request, _) in batch {
        respond(request, PlaceBetReply::rejected(code, message)).await;
    }
}

async fn respond(request: Request, reply: PlaceBetReply) {
    let payload = match Encoding::MsgPack.encode(&reply) {
        Ok(payload) => payload,
        Err(error) => {
            tracing::error!(%error, "bet reply could not be encoded");
            return;
        }
    };
    if let Err(error) = request.respond(payload).await {
        tracing::warn!(%error, "bet reply not delivered");
    }
}

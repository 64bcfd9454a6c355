//! Bet intake on `bets.place.<table>` (queue group `gs`): every request gets exactly one answer,
//! accepted with the new balance or rejected with a code — a malformed request included.
//!
//! Micro-batching: this one task collects decoded requests into a pending batch and flushes it
//! when it holds [`crate::GsConfig::batch_size`] bets, when the oldest has waited
//! [`crate::GsConfig::linger`], or at once when no batch is in flight (ADR 0034: the linger
//! only gathers bets behind a batch being written); each flush is one transaction
//! ([`ledger::place_bets`]). Up to
//! [`MAX_BATCHES_IN_FLIGHT`] flushes run at once inside this task (no task per request). The
//! queue is bounded: at most `batch_size` pending plus `MAX_BATCHES_IN_FLIGHT × batch_size`
//! in flight; beyond that the task stops reading the bus subscription (itself bounded), and
//! late requests time out at the requester, who retries with the same `bet_id`. On leaving
//! the queue group, the subscription is drained ([`bus::Feed::drain`]): every request the
//! server routed here before the leave joins the pending ones, and their hand-off takes one
//! more place in flight (below).
//!
//! Tables switched off by an operator (`croupier betting off --table T`, ADR 0022): a bet on
//! one is answered `BETTING_UNAVAILABLE` as soon as it is read, before any batching, naming
//! the table; [`crate::status`] keeps the set from the `status` bucket.
//!
//! Degraded mode (ADR 0020): the task is in the queue group only while this GS serves
//! ([`crate::status`]); when it stops serving it leaves the group, so bets go to the other GS
//! processes. A batch stuck on the database is given up at once when the store turns
//! unhealthy: if its `COMMIT` was never sent, the connection is dropped, so nothing of it can
//! commit; if it was, it may stand.
//!
//! Hand-off: the bets this GS could not write — held when it stopped serving (those delivered
//! but not read yet included: they are read before the subscription goes), refused because
//! its store is unhealthy, or whose batch failed with the database unavailable (`COMMIT` never
//! sent, or sent with its fate unknown) — are not answered here at once. Each is forwarded
//! once on the bus (same subject, the original payload, a [`HAND_OFF_DEADLINE`]) *after* this
//! GS has left the queue group, so the request reaches another GS, and that answer is relayed
//! verbatim: a client behind a healthy GS sees no failure because this one lost its database.
//! The leave is awaited at most [`hand_off_wait`] (a failure that does not last, such as one
//! connection cut, never makes this GS leave). Forwarding a bet whose `COMMIT` may have
//! committed is safe: its `bet_placed` event id is derived from its bet id and unique, so the
//! other GS records it at most once, and a bet stored already gets its first answer (the other
//! GS waits on the wallet locks the uncommitted batch holds, then finds it). Without another GS
//! (no responders, or not left in time) the answer is the honest one: `BETTING_UNAVAILABLE`
//! when nothing could have been recorded, `TIMEOUT` when it may have been (the client retries
//! with the same `bet_id` and gets the first answer, or a fresh one); `TIMEOUT` too when the
//! forward itself got no answer in time (the other GS may have recorded it). A relayed
//! `BETTING_UNAVAILABLE` for a bet whose own `COMMIT` may stand becomes `TIMEOUT`: never say
//! "not recorded" of a bet that may be. Hand-offs run inside this task like the flushes: one
//! future per batch in the same `FuturesUnordered`, its forwards polled together within it.

use std::time::Duration;

use bus::{Bus, Request, RequestError, Requests};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use protocol::{Encoding, ErrorCode, PlaceBetReply, PlaceBetRequest};
use store::Store;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::GsConfig;
use crate::clock::now;
use crate::health::{self, Health, HealthConfig, OpKind, StoreHealth};
use crate::ledger::{self, BetOutcome, BetRequest, LedgerError};
use crate::status::{Serving, SwitchedOff};

/// Batches being written at once per GS instance. Each holds one pooled connection; four keep
/// the head row busy (one commits while the next ones validate) and leave connections for the
/// transitions, settlement and outbox tasks.
pub const MAX_BATCHES_IN_FLIGHT: usize = 4;

/// Pause before subscribing to bets again after a failed attempt.
const RESUBSCRIBE_PAUSE: Duration = Duration::from_secs(1);

/// How often a bet on a round not seen yet looks again while it waits for the stream.
const CATCH_UP_POLL: Duration = Duration::from_millis(20);

/// Deadline of the one forward of a bet this GS could not write to another GS: with
/// [`MAX_HAND_OFF_WAIT`] it stays within a gateway's default bet deadline (5 s).
pub const HAND_OFF_DEADLINE: Duration = Duration::from_secs(2);

/// The longest leaving the queue group waits for the requests already routed here.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// The longest a bet this GS could not write waits for it to leave the queue group before it
/// is answered here.
pub const MAX_HAND_OFF_WAIT: Duration = Duration::from_millis(2500);

/// How long a bet this GS could not write waits for it to leave the queue group: long enough
/// for the store to be judged unhealthy after the failure (bad evidence for `off_after`, a
/// hung probe's deadline, the judge's ticks), at most [`MAX_HAND_OFF_WAIT`].
pub fn hand_off_wait(config: &HealthConfig) -> Duration {
    (config.off_after + config.probe_timeout + 2 * health::TICK).min(MAX_HAND_OFF_WAIT)
}

type Pending = Vec<(Request, BetRequest)>;

/// What a bet this GS could not write may have come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Nothing of it can be recorded (its transaction never sent `COMMIT`, or never began).
    NotRecorded,
    /// Its `COMMIT` was sent and no answer came: it may stand.
    Unknown,
}

impl Fate {
    fn reply(self) -> PlaceBetReply {
        match self {
            Fate::NotRecorded => PlaceBetReply::rejected(
                ErrorCode::BettingUnavailable,
                "the bet could not be recorded; retry later with the same bet_id",
            ),
            Fate::Unknown => unknown(),
        }
    }
}

fn unknown() -> PlaceBetReply {
    PlaceBetReply::rejected(
        ErrorCode::Timeout,
        "the outcome is unknown (the database failed during the commit); retry with the same bet_id",
    )
}

/// What the intake's batches share.
#[derive(Debug, Clone)]
struct Ctx<B> {
    bus: B,
    store: Store,
    config: GsConfig,
    health: Health,
    /// Whether this task is in the bet queue group now (a request sent while it is not cannot
    /// come back to it).
    in_group: watch::Receiver<bool>,
}

/// Work on one batch, run inside the intake task.
#[derive(Debug)]
enum Job {
    Flush(Pending),
    /// Bets held when this GS stopped serving: never written here.
    HandOff(Pending),
}

async fn run_job<B: Bus>(ctx: Ctx<B>, job: Job) {
    match job {
        Job::Flush(batch) => flush(&ctx, batch).await,
        Job::HandOff(batch) => hand_off(&ctx, batch, Fate::NotRecorded).await,
    }
}

pub(crate) async fn run<B: Bus>(
    bus: B,
    store: Store,
    config: GsConfig,
    health: Health,
    mut serving: Serving,
    switched_off: SwitchedOff,
    shutdown: CancellationToken,
) {
    let batch_size = config.batch_size.max(1);
    let linger = config.linger;
    let (in_group, in_group_rx) = watch::channel(false);
    let ctx = Ctx {
        bus: bus.clone(),
        store,
        config,
        health,
        in_group: in_group_rx,
    };
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
        if !serve {
            if let Some(mut subscription) = requests.take() {
                // Leave without losing a request: the drain lets through every request the
                // server routed here before it processed the leave (one round trip), and they
                // join the pending ones (written on shutdown, handed off otherwise). A bus too
                // sick to finish the drain in time loses what it still holds: those requesters
                // time out and retry with the same bet_id.
                subscription.drain();
                let drained = async {
                    while let Some(request) = subscription.next().await {
                        if let Some(bet) = decode(request).await {
                            pending.push(bet);
                        }
                    }
                };
                if tokio::time::timeout(DRAIN_WAIT, drained).await.is_err() {
                    tracing::warn!("the bet subscription did not drain in time");
                }
                drop(subscription);
                if open {
                    tracing::warn!("gs left the bet queue group: it cannot record bets now");
                }
            }
        }
        // After the subscription is dropped (its unsubscribe goes out first): a hand-off sent
        // from now on reaches another GS.
        in_group.send_if_modified(|now| {
            let changed = *now != requests.is_some();
            *now = requests.is_some();
            changed
        });
        if !serve && open && !pending.is_empty() {
            // Not written, and now never will be by this GS: to another one, or refused.
            linger_until = None;
            in_flight.push(run_job(
                ctx.clone(),
                Job::HandOff(std::mem::take(&mut pending)),
            ));
        }
        let full = pending.len() >= batch_size;
        let lingered = linger_until.is_some_and(|t| t <= Instant::now());
        // With no batch in flight the database has nothing of ours to finish, so waiting for
        // more bets would only add the linger to these (ADR 0034); bets that arrive while one
        // is written gather behind it.
        let flush = !pending.is_empty() && (full || lingered || in_flight.is_empty() || !open);
        if flush && in_flight.len() < MAX_BATCHES_IN_FLIGHT {
            let batch = std::mem::replace(&mut pending, Vec::with_capacity(batch_size));
            linger_until = None;
            in_flight.push(run_job(ctx.clone(), Job::Flush(batch)));
            continue;
        }
        if !open && pending.is_empty() && in_flight.is_empty() {
            return;
        }
        let can_read = requests.is_some() && !full;
        let resubscribe = serve && requests.is_none();
        tokio::select! {
            // The subscription is dropped at the top of the loop, its unread requests kept.
            () = shutdown.cancelled(), if open => open = false,
            Ok(()) = serving.changed(), if open => {}
            request = next_request(&mut requests), if can_read => match request {
                Some(request) => {
                    let bet = match decode(request).await {
                        Some(bet) => refuse_if_switched_off(bet, &switched_off).await,
                        None => None,
                    };
                    if let Some(bet) = bet {
                        if pending.is_empty() {
                            linger_until = Some(Instant::now() + linger);
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

/// Passes bets this GS could not write to another GS once it has left the queue group, and
/// relays the answers; answers them here when it does not leave in time or no other GS takes
/// them (module doc).
async fn hand_off<B: Bus>(ctx: &Ctx<B>, batch: Pending, fate: Fate) {
    if batch.is_empty() {
        return;
    }
    let mut in_group = ctx.in_group.clone();
    let wait = hand_off_wait(ctx.health.config());
    let left = tokio::time::timeout(wait, in_group.wait_for(|in_group| !*in_group))
        .await
        .is_ok_and(|left| left.is_ok());
    if !left {
        metrics::counter!("gs_bets_handed_off_total", "result" => "still_in_group")
            .increment(batch.len() as u64);
        answer_here(batch.into_iter().map(|(request, _)| request), fate).await;
        return;
    }
    let forwards: FuturesUnordered<_> = batch
        .into_iter()
        .map(|(request, _)| forward(&ctx.bus, request, fate))
        .collect();
    forwards.collect::<Vec<()>>().await;
}

/// One bet to another GS, and its answer back to the requester.
async fn forward<B: Bus>(bus: &B, request: Request, fate: Fate) {
    let answer = bus
        .request(&request.subject, request.payload.clone(), HAND_OFF_DEADLINE)
        .await;
    match answer {
        Ok(answer) => {
            let said_not_recorded = matches!(
                Encoding::MsgPack.decode::<PlaceBetReply>(&answer),
                Ok(PlaceBetReply::Rejected(rejected))
                    if rejected.code == ErrorCode::BettingUnavailable
            );
            if fate == Fate::Unknown && said_not_recorded {
                // The other GS recorded nothing, but this one's COMMIT may stand.
                metrics::counter!("gs_bets_handed_off_total", "result" => "unknown").increment(1);
                respond(request, unknown()).await;
                return;
            }
            metrics::counter!("gs_bets_handed_off_total", "result" => "relayed").increment(1);
            if let Err(error) = request.respond(answer).await {
                tracing::warn!(%error, "relayed bet reply not delivered");
            }
        }
        Err(RequestError::NoResponders) => {
            metrics::counter!("gs_bets_handed_off_total", "result" => "no_other_gs").increment(1);
            answer_here(std::iter::once(request), fate).await;
        }
        Err(error) => {
            // The other GS may have recorded it: never say it was not.
            tracing::warn!(%error, "a bet handed off to another GS got no answer");
            metrics::counter!("gs_bets_handed_off_total", "result" => "unanswered").increment(1);
            answer_here(std::iter::once(request), Fate::Unknown).await;
        }
    }
}

/// Answers bets this GS could not write and nobody else took.
async fn answer_here(requests: impl ExactSizeIterator<Item = Request>, fate: Fate) {
    let reply = fate.reply();
    if let PlaceBetReply::Rejected(rejected) = &reply {
        metrics::counter!("gs_bets_rejected_total", "code" => rejected.code.as_str())
            .increment(requests.len() as u64);
    }
    for request in requests {
        respond(request, reply.clone()).await;
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

/// Answers a bet on a table an operator switched off at once (`BETTING_UNAVAILABLE`, naming
/// the table); hands back any other.
async fn refuse_if_switched_off(
    bet: (Request, BetRequest),
    switched_off: &SwitchedOff,
) -> Option<(Request, BetRequest)> {
    let off = switched_off.borrow().contains(&bet.1.table);
    if !off {
        return Some(bet);
    }
    let (request, bet) = bet;
    metrics::counter!("gs_bets_rejected_total", "code" => ErrorCode::BettingUnavailable.as_str())
        .increment(1);
    respond(request, switched_off_reply(&bet.table)).await;
    None
}

fn switched_off_reply(table: &domain::TableId) -> PlaceBetReply {
    PlaceBetReply::rejected(
        ErrorCode::BettingUnavailable,
        format!(
            "betting on table {table} is switched off by an operator; retry later with the same bet_id"
        ),
    )
}

/// Writes one batch and answers each of its requests. Bets on rounds this GS has not seen yet
/// wait (bounded) for the stream to catch up, in a second transaction, so they never hold up
/// the others.
async fn flush<B: Bus>(ctx: &Ctx<B>, batch: Pending) {
    let (store, config, health) = (&ctx.store, &ctx.config, &ctx.health);
    metrics::histogram!("gs_bet_batch_size").record(batch.len() as f64);
    // When the rounds cannot be read, the batch goes ahead: its transaction will say.
    let known = ledger::known_rounds(store, batch.iter().map(|(_, b)| b)).await;
    let (ready, waiting): (Pending, Pending) = batch.into_iter().partition(|(_, bet)| {
        known.as_ref().map_or(true, |known| {
            known.contains(&(bet.table.to_string(), bet.round.get()))
        })
    });
    place_and_answer(ctx, ready).await;
    if waiting.is_empty() {
        return;
    }
    let deadline = Instant::now() + config.catch_up_wait;
    loop {
        let known = ledger::known_rounds(store, waiting.iter().map(|(_, b)| b))
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
    place_and_answer(ctx, waiting).await;
}

async fn place_and_answer<B: Bus>(ctx: &Ctx<B>, batch: Pending) {
    let (store, config, health) = (&ctx.store, &ctx.config, &ctx.health);
    if batch.is_empty() {
        return;
    }
    if health.current() != StoreHealth::Healthy {
        hand_off(ctx, batch, Fate::NotRecorded).await;
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
            // While the store is judged unhealthy already, a batch given up because of it
            // says nothing new (and its client-side timeout must not turn "slow" into
            // "unavailable").
            if health.current() == StoreHealth::Healthy {
                health.report(&error);
            }
            tracing::warn!(%error, bets = batch.len(), "the database failed while a batch was committing: outcome unknown");
            // It may stand: never say it was not recorded. Another GS finds it if it stands
            // (its event id is unique) and records it if not; a client's retry likewise.
            hand_off(ctx, batch, Fate::Unknown).await;
            return;
        }
        Err(error) if error.is_unavailable() => {
            if let (LedgerError::Store(store), StoreHealth::Healthy) = (&error, health.current()) {
                health.report(store);
            }
            tracing::warn!(%error, bets = batch.len(), "database unavailable: bets handed off");
            // Rolled back (COMMIT was never sent): nothing was recorded.
            hand_off(ctx, batch, Fate::NotRecorded).await;
            return;
        }
        Err(error) => {
            tracing::error!(%error, bets = batch.len(), "a batch of bets could not be recorded");
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

#[cfg(test)]
mod tests {
    use super::*;
    use bus::LocalBus;

    const SUBJECT: &str = "bets.place.roulette-1";

    fn decode_reply(bytes: &[u8]) -> PlaceBetReply {
        Encoding::MsgPack.decode(bytes).expect("a bet reply")
    }

    /// A request as this GS holds it when it has left the queue group, with the requester's
    /// answer to come; `other` (when given) plays another GS and answers with it.
    async fn hand_off_one(
        fate: Fate,
        other: Option<PlaceBetReply>,
    ) -> Result<PlaceBetReply, RequestError> {
        let bus = LocalBus::new();
        let mut mine = bus
            .serve("bets.place.*", protocol::subject::GS_QUEUE_GROUP)
            .await
            .expect("serve");
        let asking = {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.request(
                    SUBJECT,
                    bytes::Bytes::from_static(b"bet"),
                    Duration::from_secs(10),
                )
                .await
            })
        };
        let request = mine.next().await.expect("the request");
        drop(mine);
        let _other = match other {
            Some(reply) => {
                let mut theirs = bus
                    .serve("bets.place.*", protocol::subject::GS_QUEUE_GROUP)
                    .await
                    .expect("serve");
                Some(tokio::spawn(async move {
                    let forwarded = theirs.next().await.expect("the forwarded request");
                    assert_eq!(&forwarded.payload[..], b"bet", "the original payload");
                    respond(forwarded, reply).await;
                }))
            }
            None => None,
        };
        forward(&bus, request, fate).await;
        asking
            .await
            .expect("the requester")
            .map(|answer| decode_reply(&answer))
    }

    fn code(reply: &PlaceBetReply) -> Option<ErrorCode> {
        match reply {
            PlaceBetReply::Rejected(rejected) => Some(rejected.code),
            PlaceBetReply::Accepted(_) => None,
        }
    }

    #[tokio::test]
    async fn another_gs_answer_is_relayed_as_it_is() {
        let bet_id = domain::BetId::from_uuid(uuid::Uuid::new_v4());
        let balance = domain::Money::new(900).expect("money");
        for fate in [Fate::NotRecorded, Fate::Unknown] {
            let accepted = PlaceBetReply::accepted(bet_id, balance);
            let answer = hand_off_one(fate, Some(accepted.clone())).await;
            assert_eq!(answer.expect("answered"), accepted, "{fate:?}");
            let closed = PlaceBetReply::rejected(ErrorCode::BettingClosed, "closed");
            let answer = hand_off_one(fate, Some(closed.clone())).await;
            assert_eq!(answer.expect("answered"), closed, "{fate:?}");
        }
    }

    #[tokio::test]
    async fn without_another_gs_the_answer_is_the_honest_one() {
        let answer = hand_off_one(Fate::NotRecorded, None)
            .await
            .expect("answered");
        assert_eq!(code(&answer), Some(ErrorCode::BettingUnavailable));
        let answer = hand_off_one(Fate::Unknown, None).await.expect("answered");
        assert_eq!(code(&answer), Some(ErrorCode::Timeout));
    }

    #[tokio::test]
    async fn a_bet_that_may_stand_is_never_relayed_as_not_recorded() {
        let unavailable = PlaceBetReply::rejected(ErrorCode::BettingUnavailable, "not here either");
        let answer = hand_off_one(Fate::Unknown, Some(unavailable.clone()))
            .await
            .expect("answered");
        assert_eq!(code(&answer), Some(ErrorCode::Timeout));
        let answer = hand_off_one(Fate::NotRecorded, Some(unavailable.clone()))
            .await
            .expect("answered");
        assert_eq!(answer, unavailable);
    }

    #[tokio::test]
    async fn a_bet_on_a_table_switched_off_is_refused_naming_the_table_and_others_pass() {
        let table = |t: &str| domain::TableId::parse(t).expect("table");
        let (_switch, switched_off) =
            watch::channel(std::collections::BTreeSet::from([table("roulette-1")]));
        let bus = LocalBus::new();
        let mut mine = bus
            .serve("bets.place.*", protocol::subject::GS_QUEUE_GROUP)
            .await
            .expect("serve");
        for (on, refused) in [("roulette-1", true), ("roulette-2", false)] {
            let asking = {
                let bus = bus.clone();
                let subject = format!("bets.place.{on}");
                tokio::spawn(async move {
                    bus.request(
                        &subject,
                        bytes::Bytes::from_static(b"bet"),
                        Duration::from_secs(10),
                    )
                    .await
                })
            };
            let request = mine.next().await.expect("the request");
            let bet = BetRequest {
                bet_id: domain::BetId::from_uuid(uuid::Uuid::new_v4()),
                player: domain::PlayerId::parse("alice").expect("player"),
                table: table(on),
                round: domain::RoundId::new(1).expect("round"),
                selection: domain::Selection::parse(domain::RawSelection::Red).expect("red"),
                amount: domain::Money::new(100).expect("money"),
            };
            let passed = refuse_if_switched_off((request, bet), &switched_off).await;
            assert_eq!(passed.is_none(), refused, "{on}");
            if let Some((request, _)) = passed {
                respond(request, unknown()).await;
            }
            let answer = decode_reply(&asking.await.expect("requester").expect("answered"));
            if refused {
                let PlaceBetReply::Rejected(rejected) = answer else {
                    panic!("refused: {answer:?}");
                };
                assert_eq!(rejected.code, ErrorCode::BettingUnavailable);
                assert!(
                    rejected.message.contains("roulette-1")
                        && rejected.message.contains("operator"),
                    "{}",
                    rejected.message
                );
            } else {
                assert_eq!(
                    code(&answer),
                    Some(ErrorCode::Timeout),
                    "answered by the batch"
                );
            }
        }
    }

    #[test]
    fn the_wait_for_leaving_covers_detection_and_is_bounded() {
        let default = HealthConfig::default();
        assert_eq!(
            hand_off_wait(&default),
            default.off_after + default.probe_timeout + 2 * health::TICK
        );
        assert!(hand_off_wait(&default) + HAND_OFF_DEADLINE < Duration::from_secs(5));
        let slow = HealthConfig {
            off_after: Duration::from_secs(10),
            ..default
        };
        assert_eq!(hand_off_wait(&slow), MAX_HAND_OFF_WAIT);
    }
}

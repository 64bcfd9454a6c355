//! Batched bet placement (`docs/contract/events.md`, `docs/contract/event-store.md`): one
//! transaction accepts a whole batch of bets.
//!
//! ```text
//! BEGIN
//!   SELECT … FROM rounds … FOR SHARE            -- the rounds, in (table, round) order;
//!   SELECT … FROM accounts … ORDER BY player FOR UPDATE   -- wallets, in player order;
//!   SELECT … FROM round_stakes …                -- each player's stake on each round so far
//!                                               -- (these three pipelined: one round trip)
//!   -- judge every bet in Rust, in arrival order, against running balances and stakes;
//!   -- look up the refused ones (a retry of an accepted bet gets its first answer)
//!   UPDATE accounts … ; UPDATE/INSERT round_stakes …   -- pipelined, set-based
//!   SELECT … FROM event_head … FOR UPDATE       -- the head row, locked last
//!   INSERT INTO events …; UPDATE event_head …   -- pipelined: one round trip (a batch of more
//!                                               -- than 256: a binary COPY, ADR 0032)
//! COMMIT
//! ```
//!
//! A bet is written once, as its `bet_placed` event (ADR 0033). `round_stakes`, one row per
//! (table, round, player), keeps the first and last version of the player's stream that holds
//! a bet on the round: settlement reads the round's bets from the events through it.
//!
//! The round rows are share-locked so that a settlement (which claims its round with an
//! `UPDATE`) waits for a batch that saw the round open, and then sees its bets; a batch that
//! comes after the claim sees the round settled and refuses its bets.
//!
//! Retries (ADR 0014, 0016): a `bet_placed` event's id is derived from its bet id, so the
//! events' unique `event_id` is the bets' idempotency key. The first attempt does not look
//! every bet up. A bet judged accepted whose id is stored already — a client's retry, or
//! another player's bet reusing the id that committed first — makes the events' COPY fail on
//! that key; the transaction is rolled back (positions, debits and all) and the batch is
//! judged again with every id looked up first, under the wallet locks: every bet of a player
//! passes that player's lock, so nothing of these players can be stored between that look and
//! the write.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use domain::{BettingWindow, Money, Phase, TableLimits, Timestamp};
use protocol::{BetPlaced, ErrorCode, Event, EventBody};
use store::PooledTransaction as Transaction;
use store::prepared::{self, TypedParams};
use store::{Store, StoreError};
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use super::stages::Stages;
use super::{BetRequest, LedgerError, new_event, pipelined, player_stream, write_wallets};

fn conflict() -> BetOutcome {
    metrics::counter!("gs_bets_rejected_total", "code" => ErrorCode::BetIdConflict.as_str())
        .increment(1);
    BetOutcome::rejected(
        ErrorCode::BetIdConflict,
        "this bet_id was used for a different bet",
    )
}

/// How often a batch is tried again after a concurrent transaction got in its way.
const ATTEMPTS: usize = 4;

/// The answer to one bet of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BetOutcome {
    /// Recorded (now, or by an earlier request with the same `bet_id`); the balance after it.
    Accepted { balance: Money },
    /// Not recorded: a retry is judged afresh.
    Rejected { code: ErrorCode, message: String },
}

impl BetOutcome {
    fn rejected(code: ErrorCode, message: impl Into<String>) -> Self {
        BetOutcome::Rejected {
            code,
            message: message.into(),
        }
    }
}

/// Places `bets` in one transaction and answers each (in the same order). `now` is GS's clock
/// for `closes_at`. Errors are infrastructure failures: nothing of the batch was recorded.
///
/// The first attempt is optimistic: it does not look every bet up before judging it (a
/// retried bet is rare, and the append checks every id anyway: a `bet_placed` event's id is
/// derived from its bet id). A bet judged accepted whose id is stored already makes that
/// append fail; the transaction is rolled back (positions, debits and all) and the batch is
/// judged again, this time looking every bet up first, so the retry gets its first answer.
/// Bets judged rejected are looked up in the same transaction either way (a retry of an
/// accepted bet must not be told `BETTING_CLOSED`).
pub async fn place_bets(
    store: &Store,
    bets: &[BetRequest],
    limits: &TableLimits,
    now: Timestamp,
) -> Result<Vec<BetOutcome>, LedgerError> {
    place_bets_watched(store, bets, limits, now, None).await
}

/// [`place_bets`], given up as soon as `health` turns unhealthy (ADR 0020): a batch stuck on a
/// frozen or blocked database is answered at once instead of when its timeout fires. Giving up
/// before `COMMIT` was sent drops the connection, so nothing of the batch can commit; giving up
/// after is [`LedgerError::CommitUnknown`].
pub async fn place_bets_watched(
    store: &Store,
    bets: &[BetRequest],
    limits: &TableLimits,
    now: Timestamp,
    health: Option<&crate::health::Health>,
) -> Result<Vec<BetOutcome>, LedgerError> {
    if bets.is_empty() {
        return Ok(Vec::new());
    }
    let mut attempt = 1;
    loop {
        let started = std::time::Instant::now();
        let lookup = if attempt == 1 {
            Lookup::Rejected
        } else {
            Lookup::Every
        };
        let result = place_once(store, bets, limits, now, lookup, health).await;
        match result {
            Err(LedgerError::Store(StoreError::Conflict(_)) | LedgerError::Raced)
                if attempt < ATTEMPTS =>
            {
                metrics::counter!("gs_bet_batch_retries_total").increment(1);
                attempt += 1;
            }
            Err(LedgerError::Raced) => {
                return Err(LedgerError::Store(StoreError::Conflict(
                    store::Conflict::Serialization,
                )));
            }
            other => {
                if other.is_ok() {
                    metrics::histogram!("gs_bet_batch_seconds").record(started.elapsed());
                }
                return other;
            }
        }
    }
}

/// Which bets of a batch are looked up among the stored ones before the batch is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// Only those judged rejected (the optimistic first attempt).
    Rejected,
    /// Every bet, before judging (after the optimistic attempt found a stored one).
    Every,
}

async fn place_once(
    store: &Store,
    bets: &[BetRequest],
    limits: &TableLimits,
    now: Timestamp,
    lookup: Lookup,
    health: Option<&crate::health::Health>,
) -> Result<Vec<BetOutcome>, LedgerError> {
    let waited = std::time::Instant::now();
    let mut client = store.client().await?;
    metrics::histogram!("gs_pool_wait_seconds").record(waited.elapsed());
    let commit_sent = AtomicBool::new(false);
    let timed_out = |what| {
        Err(LedgerError::Store(
            store::Unavailable::TimedOut {
                what,
                after: store.call_timeout(),
            }
            .into(),
        ))
    };
    let result = {
        let work = tokio::time::timeout(
            store.call_timeout(),
            transact(&mut client, bets, limits, now, lookup, &commit_sent),
        );
        let given_up = async {
            match health {
                Some(health) => health.unhealthy().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = work => result.unwrap_or_else(|_| timed_out("placing a batch of bets")),
            () = given_up => timed_out("placing a batch of bets (given up: the store turned unhealthy)"),
        }
    };
    match result {
        Err(LedgerError::Store(error)) if error.is_unavailable() => {
            Store::discard(client);
            if commit_sent.load(Ordering::Acquire) {
                Err(LedgerError::CommitUnknown(error))
            } else {
                Err(LedgerError::Store(error))
            }
        }
        other => other,
    }
}

/// The stored `bet_placed` of bets recorded already, by bet id.
type Stored = HashMap<Uuid, BetPlaced>;

/// Looks bets up among the stored ones: by their `bet_placed` event's derived id, and — only
/// in a database with bets from before migration 0005 — by bet id through `legacy_bets`.
async fn stored_bets(
    tx: &Transaction<'_>,
    ids: &[Uuid],
    random_ids: RandomIds,
) -> Result<Stored, LedgerError> {
    if ids.is_empty() {
        return Ok(Stored::new());
    }
    let event_ids: Vec<Uuid> = ids
        .iter()
        .map(|id| super::bet_placed_id(&domain::BetId::from_uuid(*id)))
        .collect();
    let rows = match random_ids {
        RandomIds::None => {
            store::prepared::query(
                tx,
                "SELECT e.data FROM events e WHERE e.event_id = ANY($1::uuid[])",
                &[(&event_ids, Type::UUID_ARRAY)],
            )
            .await?
        }
        RandomIds::Some => {
            store::prepared::query(
                tx,
                "SELECT e.data FROM events e WHERE e.event_id = ANY($1::uuid[]) \
                 UNION ALL \
                 SELECT e.data FROM legacy_bets l JOIN events e ON e.position = l.placed_position \
                 WHERE l.bet_id = ANY($2::uuid[])",
                &[(&event_ids, Type::UUID_ARRAY), (&ids, Type::UUID_ARRAY)],
            )
            .await?
        }
    };
    let mut stored = Stored::with_capacity(rows.len());
    for row in rows {
        let data: &[u8] = row.try_get(0)?;
        let first =
            protocol::decode_event(data).map_err(|e| LedgerError::Encoding(e.to_string()))?;
        let EventBody::BetPlaced(placed) = first.body else {
            return Err(LedgerError::Encoding(
                "a bet's id leads to a non-bet event".into(),
            ));
        };
        stored.insert(*placed.bet_id.as_uuid(), placed);
    }
    Ok(stored)
}

/// Whether the database holds bets whose `bet_placed` event id is random (placed before
/// migration 0005): only then can a bet id be stored under an event id other than the
/// derived one, so the optimistic first attempt must look every bet up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RandomIds {
    None,
    Some,
}

/// The first answer to a bet stored already, or a conflict when the content differs.
fn first_answer(stored: &BetPlaced, retry: &BetRequest) -> BetOutcome {
    if retry.is_placed_as(stored) {
        metrics::counter!("gs_bets_retried_total").increment(1);
        BetOutcome::Accepted {
            balance: stored.balance,
        }
    } else {
        conflict()
    }
}

/// The batch's rounds, share-locked in a fixed order.
const READ_ROUNDS: &str = "SELECT r.table_id, r.round, r.phase, r.closes_at FROM rounds r \
     JOIN unnest($1::text[], $2::int8[]) AS u(t, n) ON r.table_id = u.t AND r.round = u.n \
     ORDER BY r.table_id, r.round FOR SHARE OF r";
/// Whether any bet id is stored under a random event id (see [`RandomIds`]).
const READ_LEGACY: &str = "SELECT EXISTS (SELECT 1 FROM legacy_bets)";
/// The batch's wallets, locked in player order (as every writer locks them).
const LOCK_WALLETS: &str = "SELECT player, balance, version FROM accounts WHERE player = ANY($1) \
     ORDER BY player FOR UPDATE";
/// What each player of the batch has staked on each of its rounds so far.
const READ_STAKES: &str = "SELECT s.table_id, s.round, s.player, s.staked FROM round_stakes s \
     JOIN unnest($1::text[], $2::int8[], $3::text[]) AS u(t, n, p) \
       ON s.table_id = u.t AND s.round = u.n AND s.player = u.p";

async fn transact(
    client: &mut store::PooledClient,
    bets: &[BetRequest],
    limits: &TableLimits,
    now: Timestamp,
    lookup: Lookup,
    commit_sent: &AtomicBool,
) -> Result<Vec<BetOutcome>, LedgerError> {
    let mut stages = Stages::start("place");
    let tx = client.transaction().await?;
    let mut outcomes: Vec<Option<BetOutcome>> = vec![None; bets.len()];

    // The same bet_id twice in one batch: the later ones are answered like retries.
    let mut first_of: HashMap<Uuid, usize> = HashMap::with_capacity(bets.len());
    let mut distinct: Vec<usize> = Vec::with_capacity(bets.len());
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    for (index, bet) in bets.iter().enumerate() {
        let id = *bet.bet_id.as_uuid();
        match first_of.get(&id) {
            Some(&first) => repeats.push((index, first)),
            None => {
                first_of.insert(id, index);
                distinct.push(index);
            }
        }
    }

    stages.mark("begin");

    // The batch's rounds, players and (round, player) stake keys, each in a fixed order.
    let rounds: BTreeSet<(&str, i64)> = bets
        .iter()
        .map(|b| (b.table.as_str(), b.round.get() as i64))
        .collect();
    let (round_tables, round_numbers): (Vec<&str>, Vec<i64>) = rounds.iter().copied().unzip();
    let round_index: HashMap<(&str, i64), usize> =
        rounds.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let players: BTreeSet<&str> = bets.iter().map(|b| b.player.as_str()).collect();
    let players: Vec<&str> = players.into_iter().collect();
    let keys: BTreeSet<(&str, i64, &str)> = bets
        .iter()
        .map(|b| (b.table.as_str(), b.round.get() as i64, b.player.as_str()))
        .collect();
    let keys: Vec<(&str, i64, &str)> = keys.into_iter().collect();
    let key_index: HashMap<(&str, i64, &str), usize> =
        keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let (kt, kr, kp): (Vec<&str>, Vec<i64>, Vec<&str>) = (
        keys.iter().map(|k| k.0).collect(),
        keys.iter().map(|k| k.1).collect(),
        keys.iter().map(|k| k.2).collect(),
    );

    // Four reads in one round trip; the server runs them in this order:
    // 1. the rounds, share-locked in a fixed order;
    // 2. whether any bet id is stored under a random event id (a database with bets from
    //    before migration 0005; `legacy_bets` is empty otherwise);
    // 3. the wallets, locked in player order (as every writer locks them);
    // 4. what each player has staked on each round so far (read after 3 took the wallet
    //    locks, which cover these rows too: every writer of a player's stakes holds it).
    let round_params: [(&(dyn ToSql + Sync), Type); 2] = [
        (&round_tables, Type::TEXT_ARRAY),
        (&round_numbers, Type::INT8_ARRAY),
    ];
    let wallet_params: [(&(dyn ToSql + Sync), Type); 1] = [(&players, Type::TEXT_ARRAY)];
    let stake_params: [(&(dyn ToSql + Sync), Type); 3] = [
        (&kt, Type::TEXT_ARRAY),
        (&kr, Type::INT8_ARRAY),
        (&kp, Type::TEXT_ARRAY),
    ];
    // The order matters (the stakes are read after the wallet locks), so every statement is
    // prepared before the four are sent: one still to be prepared would fall behind the
    // others (`store::prepared`).
    let reads: [(&str, &TypedParams<'_>); 4] = [
        (READ_ROUNDS, &round_params),
        (READ_LEGACY, &[]),
        (LOCK_WALLETS, &wallet_params),
        (READ_STAKES, &stake_params),
    ];
    let statements = prepared::prepare_all(&tx, &reads).await?;
    let run = |i: usize| prepared::query_prepared(&tx, &statements[i], reads[i].1);
    let (round_rows, random_ids, wallet_rows, stake_rows) =
        tokio::join!(run(0), run(1), run(2), run(3));
    let (round_rows, (random_ids, (wallet_rows, stake_rows))) = pipelined(
        round_rows,
        pipelined(random_ids, pipelined(wallet_rows, stake_rows)),
    )?;
    let random_ids = if random_ids
        .first()
        .map(|row| row.try_get::<_, bool>(0))
        .transpose()?
        .unwrap_or(false)
    {
        RandomIds::Some
    } else {
        RandomIds::None
    };
    // A bet id stored under a random event id does not trip the events' key: look it up.
    let lookup = match random_ids {
        RandomIds::Some => Lookup::Every,
        RandomIds::None => lookup,
    };
    let mut windows: Vec<Option<BettingWindow>> = vec![None; rounds.len()];
    for row in round_rows {
        let phase = match row.try_get::<_, &str>(2)? {
            "open" => Phase::Open,
            "closed" => Phase::Closed,
            "resulted" => Phase::Resulted,
            "settled" => Phase::Settled,
            _ => Phase::Voided,
        };
        let closes_at: Option<time::OffsetDateTime> = row.try_get(3)?;
        let closes_at = closes_at
            .and_then(|t| Timestamp::from_offset_datetime(t).ok())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        if let Some(&i) = round_index.get(&(row.try_get::<_, &str>(0)?, row.try_get(1)?)) {
            windows[i] = Some(BettingWindow { phase, closes_at });
        }
    }
    // player → (balance, version, changed)
    let mut wallets: HashMap<String, (Money, i32, bool)> =
        HashMap::with_capacity(wallet_rows.len());
    for row in wallet_rows {
        let balance = Money::new(row.try_get(1)?).map_err(|e| StoreError::Corrupt {
            position: None,
            reason: e.to_string(),
        })?;
        wallets.insert(row.try_get(0)?, (balance, row.try_get(2)?, false));
    }
    // Per key: (staked so far, whether a row exists, stake and bets this batch adds).
    let mut stakes: Vec<StakeTotal> = vec![StakeTotal::default(); keys.len()];
    for row in stake_rows {
        let key = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if let Some(&i) = key_index.get(&key) {
            stakes[i].staked = Money::new(row.try_get(3)?).unwrap_or(Money::MAX);
            stakes[i].stored = true;
        }
    }
    stages.mark("reads");

    // Bets stored already: retries (answered with the first answer) or conflicts. Under the
    // wallet locks, so no bet of these players can be stored between this look and the write.
    let stored = match lookup {
        Lookup::Every => {
            let ids: Vec<Uuid> = distinct
                .iter()
                .map(|&i| *bets[i].bet_id.as_uuid())
                .collect();
            stored_bets(&tx, &ids, random_ids).await?
        }
        Lookup::Rejected => Stored::new(),
    };
    stages.mark("lookup");

    // Judge each distinct bet in arrival order against running balances and stakes.
    // (bet index, balance after it, the player stream's version of its event); the events
    // themselves are built and encoded later, while the database runs the debits.
    let mut accepted: Vec<(usize, Money, i32)> = Vec::with_capacity(distinct.len());
    let mut refused: Vec<usize> = Vec::new();
    for &index in &distinct {
        let bet = &bets[index];
        let id = *bet.bet_id.as_uuid();
        if let Some(first) = stored.get(&id) {
            outcomes[index] = Some(first_answer(first, bet));
            continue;
        }
        let round = bet.round.get() as i64;
        let window = round_index
            .get(&(bet.table.as_str(), round))
            .and_then(|&i| windows[i]);
        let stake = key_index
            .get(&(bet.table.as_str(), round, bet.player.as_str()))
            .map(|&i| &mut stakes[i]);
        let wallet = wallets.get_mut(bet.player.as_str());
        let (balance, already) = (
            wallet.as_ref().map_or(Money::ZERO, |w| w.0),
            stake.as_ref().map_or(Money::ZERO, |s| s.staked),
        );
        let verdict = domain::validate_bet(window, now, bet.amount, limits, already, balance);
        match (verdict, wallet, stake) {
            (Ok(new_balance), Some(wallet), Some(stake)) => {
                *wallet = (new_balance, wallet.1 + 1, true);
                stake.staked = already.checked_add(bet.amount).unwrap_or(Money::MAX);
                stake.added = stake.added.checked_add(bet.amount).unwrap_or(Money::MAX);
                stake.bets += 1;
                if stake.first_version == 0 {
                    stake.first_version = wallet.1;
                }
                stake.last_version = wallet.1;
                outcomes[index] = Some(BetOutcome::Accepted {
                    balance: new_balance,
                });
                accepted.push((index, new_balance, wallet.1));
            }
            (Ok(_), _, _) => {
                // Covered with no wallet row: cannot happen (a missing wallet has nothing).
                return Err(LedgerError::Store(StoreError::Corrupt {
                    position: None,
                    reason: format!("bet {id} judged covered without a wallet"),
                }));
            }
            (Err(rejection), _, _) => {
                outcomes[index] = Some(BetOutcome::rejected(
                    super::placement_code(&rejection),
                    rejection.to_string(),
                ));
                refused.push(index);
            }
        }
    }
    stages.mark("judge");

    // A refused bet may be the retry of an accepted one: that one gets its first answer.
    if lookup == Lookup::Rejected && !refused.is_empty() {
        let ids: Vec<Uuid> = refused.iter().map(|&i| *bets[i].bet_id.as_uuid()).collect();
        let found = stored_bets(&tx, &ids, random_ids).await?;
        for &index in &refused {
            if let Some(first) = found.get(bets[index].bet_id.as_uuid()) {
                outcomes[index] = Some(first_answer(first, &bets[index]));
            }
        }
    }
    for &index in &refused {
        if let Some(Some(BetOutcome::Rejected { code, .. })) = outcomes.get(index) {
            if *code != ErrorCode::BetIdConflict {
                metrics::counter!("gs_bets_rejected_total", "code" => code.as_str()).increment(1);
            }
        }
    }
    stages.mark("refused");

    if !accepted.is_empty() {
        // Debits and stake totals, set-based, before the head row is locked. The two
        // statements are pipelined, and the events are encoded while the database works (not
        // while the head row is held).
        let encode = async {
            super::let_statements_go().await;
            let mut events = Vec::with_capacity(accepted.len());
            for &(index, balance, version) in &accepted {
                let bet = &bets[index];
                let event = Event::new(
                    super::bet_placed_id(&bet.bet_id),
                    now,
                    EventBody::BetPlaced(bet.placed(balance)),
                );
                events.push(new_event(player_stream(&bet.player), version, &event)?);
            }
            Ok::<_, LedgerError>(events)
        };
        let (debited, staked, events) = tokio::join!(
            write_wallets(
                &tx,
                wallets
                    .iter()
                    .filter(|(_, (_, _, changed))| *changed)
                    .map(|(p, (b, v, _))| (p.as_str(), *b, *v)),
                now,
            ),
            add_stakes(&tx, &keys, &stakes),
            encode,
        );
        pipelined(debited, staked)?;
        let events = events?;
        stages.mark("writes");
        let appended_at = std::time::Instant::now();
        // Every player stream's version came from its `accounts` row, locked above. A bet id
        // stored already (a retry judged as new by the optimistic attempt, or another player's
        // bet reusing the id that committed first) has its derived event id stored already:
        // the append fails on `events_event_id_key`, the whole transaction goes, and the batch
        // is judged again.
        store::append_with_locked_versions(&tx, &events)
            .await
            .map_err(raced_on_event_id)?;
        stages.mark("append");
        commit_sent.store(true, Ordering::Release);
        tx.commit().await?;
        stages.mark("commit");
        stages.finish(accepted.len());
        metrics::histogram!("gs_append_seconds").record(appended_at.elapsed());
        metrics::counter!("gs_bets_accepted_total").increment(accepted.len() as u64);
    } else {
        commit_sent.store(true, Ordering::Release);
        tx.commit().await?;
    }

    for (index, first) in repeats {
        outcomes[index] = if bets[index].is_same_bet_as(&bets[first]) {
            outcomes[first].clone()
        } else {
            Some(conflict())
        };
    }
    Ok(outcomes
        .into_iter()
        .map(|o| {
            o.unwrap_or_else(|| BetOutcome::rejected(ErrorCode::BettingUnavailable, "unanswered"))
        })
        .collect())
}

/// An event id or version stored already: a concurrent writer got there first; the batch is
/// judged again.
fn raced_on_event_id(error: StoreError) -> LedgerError {
    match error {
        StoreError::Conflict(
            store::Conflict::DuplicateEvent | store::Conflict::VersionConflict { .. },
        ) => LedgerError::Raced,
        other => LedgerError::Store(other),
    }
}

/// One (table, round, player)'s stake total while a batch is judged.
#[derive(Debug, Clone, Copy, Default)]
struct StakeTotal {
    /// Staked so far, this batch's accepted bets included.
    staked: Money,
    /// Whether `round_stakes` has a row for it already.
    stored: bool,
    /// What this batch adds: stake and bets, and the first and last version of the player's
    /// stream among them (0 while none).
    added: Money,
    bets: i32,
    first_version: i32,
    last_version: i32,
}

/// Adds this batch's stakes to each (table, round, player)'s total and moves its last stream
/// version to this batch's last bet: rows that exist are updated, new ones inserted (with the
/// batch's first version as theirs), in one statement.
async fn add_stakes(
    tx: &Transaction<'_>,
    keys: &[(&str, i64, &str)],
    stakes: &[StakeTotal],
) -> Result<(), LedgerError> {
    let (mut old, mut new) = (Columns::default(), Columns::default());
    for (key, stake) in keys.iter().zip(stakes).filter(|(_, s)| s.bets > 0) {
        let to = if stake.stored { &mut old } else { &mut new };
        to.tables.push(key.0);
        to.rounds.push(key.1);
        to.players.push(key.2);
        to.stakes.push(stake.added.get());
        to.counts.push(stake.bets);
        to.firsts.push(stake.first_version);
        to.lasts.push(stake.last_version);
    }
    store::prepared::execute(
        tx,
        "WITH updated AS ( \
             UPDATE round_stakes s \
             SET staked = s.staked + u.a, bets = s.bets + u.c, last_version = u.l \
             FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::int4[], \
                         $6::int4[]) AS u(t, n, p, a, c, l) \
             WHERE s.table_id = u.t AND s.round = u.n AND s.player = u.p \
         ) \
         INSERT INTO round_stakes (table_id, round, player, staked, bets, first_version, \
                                   last_version) \
         SELECT * FROM unnest($7::text[], $8::int8[], $9::text[], $10::int8[], $11::int4[], \
                              $12::int4[], $13::int4[])",
        &[
            (&old.tables, Type::TEXT_ARRAY),
            (&old.rounds, Type::INT8_ARRAY),
            (&old.players, Type::TEXT_ARRAY),
            (&old.stakes, Type::INT8_ARRAY),
            (&old.counts, Type::INT4_ARRAY),
            (&old.lasts, Type::INT4_ARRAY),
            (&new.tables, Type::TEXT_ARRAY),
            (&new.rounds, Type::INT8_ARRAY),
            (&new.players, Type::TEXT_ARRAY),
            (&new.stakes, Type::INT8_ARRAY),
            (&new.counts, Type::INT4_ARRAY),
            (&new.firsts, Type::INT4_ARRAY),
            (&new.lasts, Type::INT4_ARRAY),
        ],
    )
    .await?;
    Ok(())
}

/// The columns of a set of `round_stakes` changes, as statement parameters.
#[derive(Default)]
struct Columns<'a> {
    tables: Vec<&'a str>,
    rounds: Vec<i64>,
    players: Vec<&'a str>,
    stakes: Vec<i64>,
    counts: Vec<i32>,
    firsts: Vec<i32>,
    lasts: Vec<i32>,
}

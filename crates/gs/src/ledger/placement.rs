//! Batched bet placement (DESIGN §4, §6): one transaction accepts a whole batch of bets.
//!
//! ```text
//! BEGIN
//!   SELECT … FROM rounds … FOR SHARE            -- the rounds, in (table, round) order
//!   SELECT … FROM accounts … ORDER BY player FOR UPDATE   -- wallets, in player order
//!   SELECT … FROM bets WHERE bet_id = ANY(…)    -- retries: answered with the first answer
//!   -- validate every bet in Rust, in arrival order, against running balances and stakes
//!   UPDATE accounts … FROM unnest(…)            -- debits, set-based
//!   store::append(bet_placed × n)               -- head row locked last
//!   INSERT INTO bets (…, placed_position) … ON CONFLICT (bet_id) DO NOTHING RETURNING bet_id
//! COMMIT
//! ```
//!
//! The round rows are share-locked so that a settlement (which claims its round with an
//! `UPDATE`) waits for a batch that saw the round open, and then sees its bets; a batch that
//! comes after the claim sees the round settled and refuses its bets.
//!
//! Accounts are locked before any bet is looked up, and every bet of a player passes through
//! that lock, so a retry of a bet can only race with a bet of *another* player reusing its id:
//! then `ON CONFLICT … RETURNING` comes back short, the transaction is rolled back (positions,
//! debits and all) and the batch is judged again, and the retry finds the committed row.
//!
//! The bets are inserted after the append, with their positions, rather than before it and
//! then updated with them: one statement instead of two on every bet (ADR 0010). The outcome
//! is the same — events and debits survive only for the bets this transaction inserted.

use std::collections::{BTreeSet, HashMap};

use domain::{BettingWindow, Money, Phase, TableLimits, Timestamp};
use protocol::{BetPlaced, ErrorCode, Event, EventBody};
use store::{Store, StoreError};
use tokio_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, Type};
use uuid::Uuid;

use super::stages::Stages;
use super::{BetRequest, LedgerError, new_event, player_stream, write_wallets};

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
/// retried bet is rare, and the insert into `bets` checks every id anyway). A bet judged
/// accepted whose id is stored already makes that insert fail; the transaction is rolled back
/// (positions, debits and all) and the batch is judged again, this time looking every bet up
/// first, so the retry gets its first answer. Bets judged rejected are looked up in the same
/// transaction either way (a retry of an accepted bet must not be told `BETTING_CLOSED`).
pub async fn place_bets(
    store: &Store,
    bets: &[BetRequest],
    limits: &TableLimits,
    now: Timestamp,
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
        let result = place_once(store, bets, limits, now, lookup).await;
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
) -> Result<Vec<BetOutcome>, LedgerError> {
    let waited = std::time::Instant::now();
    let mut client = store.client().await?;
    metrics::histogram!("gs_pool_wait_seconds").record(waited.elapsed());
    let result = match tokio::time::timeout(
        store.call_timeout(),
        transact(&mut client, bets, limits, now, lookup),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(LedgerError::Store(
            store::Unavailable::TimedOut {
                what: "placing a batch of bets",
                after: store.call_timeout(),
            }
            .into(),
        )),
    };
    if matches!(&result, Err(LedgerError::Store(e)) if e.is_unavailable()) {
        Store::discard(client);
    }
    result
}

/// What is known about one distinct bet of the batch while it is judged.
struct Judged {
    index: usize,
    fingerprint: [u8; 32],
}

/// A stored bet's request fingerprint and the balance its first answer gave.
type Stored = HashMap<Uuid, (Option<Vec<u8>>, Money)>;

/// Looks `ids` up among the stored bets.
async fn stored_bets(tx: &Transaction<'_>, ids: &[Uuid]) -> Result<Stored, LedgerError> {
    if ids.is_empty() {
        return Ok(Stored::new());
    }
    let rows = tx
        .query_typed(
            "SELECT b.bet_id, b.request_fingerprint, e.data \
             FROM unnest($1::uuid[]) AS u(id) JOIN bets b ON b.bet_id = u.id \
             JOIN events e ON e.position = b.placed_position",
            &[(&ids, Type::UUID_ARRAY)],
        )
        .await?;
    let mut stored = Stored::with_capacity(rows.len());
    for row in rows {
        let id: Uuid = row.try_get(0)?;
        let fingerprint: Option<Vec<u8>> = row.try_get(1)?;
        let data: &[u8] = row.try_get(2)?;
        let first =
            protocol::decode_event(data).map_err(|e| LedgerError::Encoding(e.to_string()))?;
        let EventBody::BetPlaced(placed) = first.body else {
            return Err(LedgerError::Encoding(
                "a bet row points at a non-bet event".into(),
            ));
        };
        stored.insert(id, (fingerprint, placed.balance));
    }
    Ok(stored)
}

/// The first answer to a bet stored already, or a conflict when the content differs.
fn first_answer(stored: &(Option<Vec<u8>>, Money), fingerprint: &[u8; 32]) -> BetOutcome {
    if stored.0.as_deref() == Some(fingerprint.as_slice()) {
        metrics::counter!("gs_bets_retried_total").increment(1);
        BetOutcome::Accepted { balance: stored.1 }
    } else {
        conflict()
    }
}

/// The columns of the `COPY` into `bets`, in the order the statement names them.
const BET_COLUMNS: [Type; 9] = [
    Type::UUID,
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::JSONB,
    Type::INT8,
    Type::BYTEA,
    Type::TIMESTAMPTZ,
    Type::INT8,
];

async fn transact(
    client: &mut tokio_postgres::Client,
    bets: &[BetRequest],
    limits: &TableLimits,
    now: Timestamp,
    lookup: Lookup,
) -> Result<Vec<BetOutcome>, LedgerError> {
    let mut stages = Stages::start("place");
    let tx = client.transaction().await?;
    let mut outcomes: Vec<Option<BetOutcome>> = vec![None; bets.len()];

    // The same bet_id twice in one batch: the later ones are answered like retries.
    let mut first_of: HashMap<Uuid, usize> = HashMap::with_capacity(bets.len());
    let mut distinct: Vec<Judged> = Vec::with_capacity(bets.len());
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    for (index, bet) in bets.iter().enumerate() {
        let id = *bet.bet_id.as_uuid();
        match first_of.get(&id) {
            Some(&first) => repeats.push((index, first)),
            None => {
                first_of.insert(id, index);
                distinct.push(Judged {
                    index,
                    fingerprint: bet.fingerprint(),
                });
            }
        }
    }

    stages.mark("begin");

    // Rounds, share-locked in a fixed order.
    let rounds: BTreeSet<(&str, i64)> = bets
        .iter()
        .map(|b| (b.table.as_str(), b.round.get() as i64))
        .collect();
    let (round_tables, round_numbers): (Vec<&str>, Vec<i64>) = rounds.iter().copied().unzip();
    let rows = tx
        .query_typed(
            "SELECT r.table_id, r.round, r.phase, r.closes_at FROM rounds r \
             JOIN unnest($1::text[], $2::int8[]) AS u(t, n) ON r.table_id = u.t AND r.round = u.n \
             ORDER BY r.table_id, r.round FOR SHARE OF r",
            &[
                (&round_tables, Type::TEXT_ARRAY),
                (&round_numbers, Type::INT8_ARRAY),
            ],
        )
        .await?;
    let mut windows: HashMap<(String, i64), BettingWindow> = HashMap::new();
    for row in rows {
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
        windows.insert(
            (row.try_get(0)?, row.try_get(1)?),
            BettingWindow { phase, closes_at },
        );
    }

    stages.mark("rounds");

    // Wallets, locked in player order (as every writer locks them).
    let players: BTreeSet<&str> = bets.iter().map(|b| b.player.as_str()).collect();
    let players: Vec<&str> = players.into_iter().collect();
    let rows = tx
        .query_typed(
            "SELECT player, balance, version FROM accounts WHERE player = ANY($1) \
             ORDER BY player FOR UPDATE",
            &[(&players, Type::TEXT_ARRAY)],
        )
        .await?;
    // player → (balance, version, changed)
    let mut wallets: HashMap<String, (Money, i32, bool)> = HashMap::with_capacity(rows.len());
    for row in rows {
        let balance = Money::new(row.try_get(1)?).map_err(|e| StoreError::Corrupt {
            position: None,
            reason: e.to_string(),
        })?;
        wallets.insert(row.try_get(0)?, (balance, row.try_get(2)?, false));
    }

    stages.mark("wallets");

    // Bets stored already: retries (answered with the first answer) or conflicts. Under the
    // wallet locks, so no bet of these players can be stored between this look and the write.
    let stored = match lookup {
        Lookup::Every => {
            let ids: Vec<Uuid> = distinct
                .iter()
                .map(|j| *bets[j.index].bet_id.as_uuid())
                .collect();
            stored_bets(&tx, &ids).await?
        }
        Lookup::Rejected => Stored::new(),
    };

    stages.mark("lookup");

    // What each player has staked on each round of the batch so far (the wallet lock covers
    // these rows too: every writer of a player's stakes holds it).
    let mut keys: BTreeSet<(&str, i64, &str)> = BTreeSet::new();
    for bet in bets {
        keys.insert((
            bet.table.as_str(),
            bet.round.get() as i64,
            bet.player.as_str(),
        ));
    }
    let (mut kt, mut kr, mut kp) = (Vec::new(), Vec::new(), Vec::new());
    for (t, r, p) in &keys {
        kt.push(*t);
        kr.push(*r);
        kp.push(*p);
    }
    let rows = tx
        .query_typed(
            "SELECT s.table_id, s.round, s.player, s.staked FROM round_stakes s \
             JOIN unnest($1::text[], $2::int8[], $3::text[]) AS u(t, n, p) \
               ON s.table_id = u.t AND s.round = u.n AND s.player = u.p",
            &[
                (&kt, Type::TEXT_ARRAY),
                (&kr, Type::INT8_ARRAY),
                (&kp, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    let mut staked: HashMap<(String, i64, String), Money> = HashMap::with_capacity(keys.len());
    for row in rows {
        let amount = Money::new(row.try_get(3)?).unwrap_or(Money::MAX);
        staked.insert((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?), amount);
    }
    // (table, round, player) → (stake, bets) this batch adds.
    let mut added: HashMap<(String, i64, String), (Money, i32)> = HashMap::new();

    stages.mark("stakes");

    // Judge each distinct bet in arrival order against running balances and stakes.
    let mut accepted: Vec<(usize, Event, i32, &[u8; 32])> = Vec::new();
    let mut refused: Vec<usize> = Vec::new();
    for (position, judged) in distinct.iter().enumerate() {
        let bet = &bets[judged.index];
        let id = *bet.bet_id.as_uuid();
        if let Some(first) = stored.get(&id) {
            outcomes[judged.index] = Some(first_answer(first, &judged.fingerprint));
            continue;
        }
        let key = (bet.table.to_string(), bet.round.get() as i64);
        let window = windows.get(&key).copied();
        let (balance, version) = wallets
            .get(bet.player.as_str())
            .map(|(b, v, _)| (*b, *v))
            .unwrap_or((Money::ZERO, 0));
        let stake_key = (key.0, key.1, bet.player.to_string());
        let already = staked.get(&stake_key).copied().unwrap_or(Money::ZERO);
        match domain::validate_bet(window, now, bet.amount, limits, already, balance) {
            Err(rejection) => {
                outcomes[judged.index] = Some(BetOutcome::rejected(
                    super::placement_code(&rejection),
                    rejection.to_string(),
                ));
                refused.push(position);
            }
            Ok(new_balance) => {
                let version = version + 1;
                wallets.insert(bet.player.to_string(), (new_balance, version, true));
                staked.insert(
                    stake_key.clone(),
                    already.checked_add(bet.amount).unwrap_or(Money::MAX),
                );
                let sum = added.entry(stake_key).or_insert((Money::ZERO, 0));
                *sum = (
                    sum.0.checked_add(bet.amount).unwrap_or(Money::MAX),
                    sum.1 + 1,
                );
                let event = Event::new(
                    Uuid::new_v4(),
                    now,
                    EventBody::BetPlaced(BetPlaced {
                        table: bet.table.clone(),
                        round: bet.round,
                        bet_id: bet.bet_id,
                        player: bet.player.clone(),
                        selection: bet.selection,
                        amount: bet.amount,
                        balance: new_balance,
                    }),
                );
                outcomes[judged.index] = Some(BetOutcome::Accepted {
                    balance: new_balance,
                });
                accepted.push((judged.index, event, version, &judged.fingerprint));
            }
        }
    }

    stages.mark("judge");

    // A refused bet may be the retry of an accepted one: that one gets its first answer.
    if lookup == Lookup::Rejected && !refused.is_empty() {
        let ids: Vec<Uuid> = refused
            .iter()
            .map(|&p| *bets[distinct[p].index].bet_id.as_uuid())
            .collect();
        let found = stored_bets(&tx, &ids).await?;
        for &p in &refused {
            let judged = &distinct[p];
            if let Some(first) = found.get(bets[judged.index].bet_id.as_uuid()) {
                outcomes[judged.index] = Some(first_answer(first, &judged.fingerprint));
            }
        }
    }
    for &p in &refused {
        if let Some(Some(BetOutcome::Rejected { code, .. })) = outcomes.get(distinct[p].index) {
            if *code != ErrorCode::BetIdConflict {
                metrics::counter!("gs_bets_rejected_total", "code" => code.as_str()).increment(1);
            }
        }
    }

    stages.mark("refused");

    if !accepted.is_empty() {
        // Debits and stake totals, set-based, before the head row is locked.
        write_wallets(
            &tx,
            wallets
                .iter()
                .filter(|(_, (_, _, changed))| *changed)
                .map(|(p, (b, v, _))| (p.as_str(), *b, *v)),
            now,
        )
        .await?;
        stages.mark("debits");
        add_stakes(&tx, &added).await?;
        stages.mark("stake_totals");

        let mut events = Vec::with_capacity(accepted.len());
        for (index, event, version, _) in &accepted {
            events.push(new_event(
                player_stream(&bets[*index].player),
                *version,
                event,
            )?);
        }
        stages.mark("encode");
        let appended_at = std::time::Instant::now();
        let appended = store::append(&tx, &events).await?;
        stages.mark("append");

        // The bets, with their positions. An id stored already (a retry judged as new by the
        // optimistic attempt, or another player's bet reusing the id that committed first)
        // fails the COPY: the whole transaction goes, and the batch is judged again.
        let at = now.as_offset_datetime();
        let sink = tx
            .copy_in(
                "COPY bets (bet_id, table_id, round, player, selection, amount, \
                            request_fingerprint, placed_at, placed_position) \
                 FROM STDIN (FORMAT binary)",
            )
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &BET_COLUMNS);
        futures_util::pin_mut!(writer);
        for ((index, _, _, fingerprint), appended) in accepted.iter().zip(&appended) {
            let bet = &bets[*index];
            let round = bet.round.get() as i64;
            let fingerprint: &[u8] = fingerprint.as_slice();
            let written = writer
                .as_mut()
                .write(&[
                    bet.bet_id.as_uuid(),
                    &bet.table.as_str(),
                    &round,
                    &bet.player.as_str(),
                    &Json(&bet.selection),
                    &bet.amount.get(),
                    &fingerprint,
                    &at,
                    &appended.position,
                ])
                .await;
            written.map_err(raced_on_bet_id)?;
        }
        writer.finish().await.map_err(raced_on_bet_id)?;
        stages.mark("bets");
        tx.commit().await?;
        stages.mark("commit");
        stages.finish(accepted.len());
        metrics::histogram!("gs_append_seconds").record(appended_at.elapsed());
        metrics::counter!("gs_bets_accepted_total").increment(accepted.len() as u64);
    } else {
        tx.commit().await?;
    }

    for (index, first) in repeats {
        outcomes[index] = if bets[index].fingerprint() == bets[first].fingerprint() {
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

/// A bet id stored already is a race (or a retry judged as new): the batch is judged again.
fn raced_on_bet_id(error: tokio_postgres::Error) -> LedgerError {
    match StoreError::from(error) {
        StoreError::Conflict(store::Conflict::Unique { constraint })
            if constraint == "bets_pkey" =>
        {
            LedgerError::Raced
        }
        other => LedgerError::Store(other),
    }
}

/// Adds this batch's stakes to each (table, round, player)'s total.
async fn add_stakes(
    tx: &Transaction<'_>,
    added: &HashMap<(String, i64, String), (Money, i32)>,
) -> Result<(), LedgerError> {
    let (mut tables, mut rounds, mut players, mut stakes, mut counts) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((table, round, player), (stake, count)) in added {
        tables.push(table.as_str());
        rounds.push(*round);
        players.push(player.as_str());
        stakes.push(stake.get());
        counts.push(*count);
    }
    tx.execute_typed(
        "INSERT INTO round_stakes (table_id, round, player, staked, bets) \
         SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], $5::int4[]) \
         ON CONFLICT (table_id, round, player) DO UPDATE \
         SET staked = round_stakes.staked + excluded.staked, \
             bets = round_stakes.bets + excluded.bets",
        &[
            (&tables, Type::TEXT_ARRAY),
            (&rounds, Type::INT8_ARRAY),
            (&players, Type::TEXT_ARRAY),
            (&stakes, Type::INT8_ARRAY),
            (&counts, Type::INT4_ARRAY),
        ],
    )
    .await?;
    Ok(())
}

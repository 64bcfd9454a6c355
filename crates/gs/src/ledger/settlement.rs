//! Settlement and refunds, each one set-based transaction per round
//! (`docs/contract/event-store.md`).
//!
//! ```text
//! BEGIN
//!   UPDATE rounds SET phase = 'settled' … AND phase = 'resulted' RETURNING outcome  -- the claim
//!   SELECT … FROM bets WHERE table_id = … AND round = …
//!   SELECT … FROM accounts … ORDER BY player FOR UPDATE     -- wallets in player order
//!   UPDATE accounts … FROM unnest(…)                        -- payouts, set-based
//!   store::append(bet_settled × n, round_settled)           -- head row locked last
//!   COPY bet_results … FROM STDIN (FORMAT binary)           -- one row per bet
//! COMMIT
//! ```
//!
//! The claim is the first statement: a second GS racing on the same round blocks on the row,
//! and when the first commits it finds no `resulted` row and stops. A crash before the commit
//! leaves the round `resulted`, so whichever GS reads the outcome next settles it; a crash
//! after leaves it `settled`. Either way it is settled exactly once.
//!
//! A voided round is claimed by locking its `voided` row; the refunded bets get their row in
//! `bet_results`, so a racer that waited on the row finds nothing left to refund. Either way
//! the primary key of `bet_results` refuses a second result for a bet.
//!
//! Results are inserted, not written over the `bets` rows: an UPDATE of every bet of a round
//! cost more than appending the round's events (ADR 0014).
//!
//! Metrics (label `table`), recorded for a round this GS claimed: `gs_settlement_seconds` (the
//! whole transaction, commit included), `gs_settlement_bets` (bets it settled) and
//! `gs_refund_seconds` (a voided round's refunds). Each transaction's stages are in
//! `gs_ledger_stage_seconds{op="settle"}` (`stages`).

use std::collections::{BTreeSet, HashMap};

use domain::{Money, Outcome, PlayerId, RoundId, Selection, TableId};
use protocol::{BetRefunded, BetSettled, Event, EventBody, RoundSettled};
use store::PooledTransaction as Transaction;
use store::{Store, StoreError};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::stages::Stages;
use super::{LedgerError, new_event, player_stream, round_stream, write_wallets};
use crate::clock::now;

/// A round this GS settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    pub bets: u64,
    pub staked: Money,
    pub paid: Money,
}

/// A voided round whose stakes this GS refunded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refund {
    pub bets: u64,
    pub refunded: Money,
}

fn corrupt(reason: impl Into<String>) -> LedgerError {
    LedgerError::Store(StoreError::Corrupt {
        position: None,
        reason: reason.into(),
    })
}

/// One accepted bet of the round being settled or refunded.
struct OpenBet {
    bet_id: Uuid,
    player: PlayerId,
    selection: Selection,
    amount: Money,
}

/// The bets of a round without a result yet, in player order. `claimed`: the round was just
/// claimed for settlement, so none of its bets can have a result (one claim per round), and
/// the anti-join is skipped.
async fn open_bets(
    tx: &Transaction<'_>,
    table: &TableId,
    round: i64,
    claimed: bool,
) -> Result<Vec<OpenBet>, LedgerError> {
    let query = if claimed {
        "SELECT bet_id, player, selection, amount FROM bets b \
         WHERE table_id = $1 AND round = $2 ORDER BY player, bet_id"
    } else {
        "SELECT bet_id, player, selection, amount FROM bets b \
         WHERE table_id = $1 AND round = $2 \
           AND NOT EXISTS (SELECT 1 FROM bet_results r WHERE r.bet_id = b.bet_id) \
         ORDER BY player, bet_id"
    };
    let rows = store::prepared::query(
        tx,
        query,
        &[(&table.as_str(), Type::TEXT), (&round, Type::INT8)],
    )
    .await?;
    let mut bets = Vec::with_capacity(rows.len());
    for row in &rows {
        bets.push(OpenBet {
            bet_id: row.try_get(0)?,
            player: PlayerId::parse(row.try_get::<_, &str>(1)?)
                .map_err(|e| corrupt(e.to_string()))?,
            selection: serde_json::from_str(row.try_get::<_, &str>(2)?)
                .map_err(|e| corrupt(format!("bet selection: {e}")))?,
            amount: Money::new(row.try_get(3)?).map_err(|e| corrupt(e.to_string()))?,
        });
    }
    Ok(bets)
}

/// Locks the wallets of `bets`' players in player order; player → (balance, version).
async fn lock_wallets(
    tx: &Transaction<'_>,
    bets: &[OpenBet],
) -> Result<HashMap<String, (Money, i32)>, LedgerError> {
    let players: BTreeSet<&str> = bets.iter().map(|b| b.player.as_str()).collect();
    let players: Vec<&str> = players.into_iter().collect();
    let rows = store::prepared::query(
        tx,
        "SELECT player, balance, version FROM accounts WHERE player = ANY($1) \
             ORDER BY player FOR UPDATE",
        &[(&players, Type::TEXT_ARRAY)],
    )
    .await?;
    let mut wallets = HashMap::with_capacity(rows.len());
    for row in rows {
        let balance = Money::new(row.try_get(1)?).map_err(|e| corrupt(e.to_string()))?;
        wallets.insert(row.try_get::<_, String>(0)?, (balance, row.try_get(2)?));
    }
    if wallets.len() != players.len() {
        return Err(corrupt("a bet's player has no account"));
    }
    Ok(wallets)
}

/// Runs `work` in a transaction on a pooled connection under the store's call timeout
/// (scaled: a round of many bets is one long transaction).
async fn in_transaction<T>(
    store: &Store,
    what: &'static str,
    work: impl AsyncFnOnce(&Transaction<'_>) -> Result<Option<T>, LedgerError>,
) -> Result<Option<T>, LedgerError> {
    let mut client = store.client().await?;
    let after = store.call_timeout() * 3;
    let result = tokio::time::timeout(after, async {
        let tx = client.transaction().await?;
        let result = work(&tx).await?;
        if result.is_some() {
            tx.commit().await?;
        }
        Ok(result)
    })
    .await
    .unwrap_or_else(|_| {
        Err(LedgerError::Store(
            store::Unavailable::TimedOut { what, after }.into(),
        ))
    });
    if matches!(&result, Err(LedgerError::Store(e)) if e.is_unavailable()) {
        Store::discard(client);
    }
    result
}

/// Settles a resulted round exactly once: claims it, pays every bet set-based, appends
/// `bet_settled` per bet and `round_settled`. `None` when there was nothing to claim (settled
/// already, by this GS or another, or not resulted).
pub async fn settle_round(
    store: &Store,
    table: &TableId,
    round: RoundId,
) -> Result<Option<Settlement>, LedgerError> {
    let started = std::time::Instant::now();
    let result = in_transaction(store, "settling a round", async |tx| {
        settle_in(tx, table, round).await
    })
    .await;
    if let Ok(Some(settlement)) = &result {
        let table = table.to_string();
        metrics::histogram!("gs_settlement_seconds", "table" => table.clone())
            .record(started.elapsed());
        metrics::histogram!("gs_settlement_bets", "table" => table).record(settlement.bets as f64);
    }
    result
}

async fn settle_in(
    tx: &Transaction<'_>,
    table: &TableId,
    round: RoundId,
) -> Result<Option<Settlement>, LedgerError> {
    let mut stages = Stages::start("settle");
    let at = now();
    let round_no = round.get() as i64;
    let Some(claimed) = store::prepared::query_opt(
        tx,
        "UPDATE rounds SET phase = 'settled', updated_at = $3 \
             WHERE table_id = $1 AND round = $2 AND phase = 'resulted' RETURNING outcome",
        &[
            (&table.as_str(), Type::TEXT),
            (&round_no, Type::INT8),
            (&at.as_offset_datetime(), Type::TIMESTAMPTZ),
        ],
    )
    .await?
    else {
        return Ok(None);
    };
    let outcome: Option<i16> = claimed.try_get(0)?;
    let outcome = outcome
        .and_then(|o| u8::try_from(o).ok())
        .and_then(|o| Outcome::new(o).ok())
        .ok_or_else(|| corrupt("a resulted round without an outcome"))?;
    stages.mark("claim");
    let bets = open_bets(tx, table, round_no, true).await?;
    stages.mark("read_bets");
    let mut wallets = lock_wallets(tx, &bets).await?;
    stages.mark("wallets");

    let mut events = Vec::with_capacity(bets.len() + 1);
    let mut ids = Vec::with_capacity(bets.len());
    let mut payouts = Vec::with_capacity(bets.len());
    let mut staked = Money::ZERO;
    let mut paid = Money::ZERO;
    for bet in &bets {
        let payout = bet
            .selection
            .payout(bet.amount, outcome)
            .map_err(|e| corrupt(e.to_string()))?;
        let Some((balance, version)) = wallets.get_mut(bet.player.as_str()) else {
            return Err(corrupt("a bet's player has no account"));
        };
        *balance = domain::credit(*balance, payout).map_err(|e| corrupt(e.to_string()))?;
        *version += 1;
        staked = staked.checked_add(bet.amount).unwrap_or(Money::MAX);
        paid = paid.checked_add(payout).unwrap_or(Money::MAX);
        ids.push(bet.bet_id);
        payouts.push(payout.get());
        let event = Event::new(
            Uuid::new_v4(),
            at,
            EventBody::BetSettled(BetSettled {
                table: table.clone(),
                round,
                bet_id: domain::BetId::from_uuid(bet.bet_id),
                player: bet.player.clone(),
                payout,
                balance: *balance,
            }),
        );
        events.push(new_event(player_stream(&bet.player), *version, &event)?);
    }
    stages.mark("encode");
    write_wallets(
        tx,
        wallets.iter().map(|(p, (b, v))| (p.as_str(), *b, *v)),
        at,
    )
    .await?;
    stages.mark("credits");
    let stream = round_stream(table, round);
    let version = store::next_version(&**tx, &stream).await?;
    let settlement = Settlement {
        bets: bets.len() as u64,
        staked,
        paid,
    };
    let summary = Event::new(
        Uuid::new_v4(),
        at,
        EventBody::RoundSettled(RoundSettled {
            table: table.clone(),
            round,
            bets: settlement.bets,
            staked,
            paid,
        }),
    );
    events.push(new_event(stream, version, &summary)?);
    stages.mark("summary");
    let appended = store::append(tx, &events).await?;
    stages.mark("append");
    record_results(
        tx,
        ids.iter()
            .zip(&payouts)
            .zip(&appended)
            .map(|((id, payout), appended)| (id, Some(*payout), appended.position)),
    )
    .await?;
    stages.mark("results");
    stages.finish(ids.len());
    Ok(Some(settlement))
}

/// Refunds every stake of a voided round once (`bet_refunded` per bet). `None` when the round
/// is not voided or its bets were refunded already.
pub async fn refund_round(
    store: &Store,
    table: &TableId,
    round: RoundId,
) -> Result<Option<Refund>, LedgerError> {
    let started = std::time::Instant::now();
    let result = in_transaction(store, "refunding a round", async |tx| {
        refund_in(tx, table, round).await
    })
    .await;
    if let Ok(Some(_)) = &result {
        metrics::histogram!("gs_refund_seconds", "table" => table.to_string())
            .record(started.elapsed());
    }
    result
}

async fn refund_in(
    tx: &Transaction<'_>,
    table: &TableId,
    round: RoundId,
) -> Result<Option<Refund>, LedgerError> {
    let at = now();
    let round_no = round.get() as i64;
    if store::prepared::query_opt(
        tx,
        "SELECT 1 FROM rounds WHERE table_id = $1 AND round = $2 AND phase = 'voided' \
             FOR UPDATE",
        &[(&table.as_str(), Type::TEXT), (&round_no, Type::INT8)],
    )
    .await?
    .is_none()
    {
        return Ok(None);
    }
    let bets = open_bets(tx, table, round_no, false).await?;
    if bets.is_empty() {
        return Ok(None);
    }
    let mut wallets = lock_wallets(tx, &bets).await?;
    let mut events = Vec::with_capacity(bets.len());
    let mut ids = Vec::with_capacity(bets.len());
    let mut refunded = Money::ZERO;
    for bet in &bets {
        let Some((balance, version)) = wallets.get_mut(bet.player.as_str()) else {
            return Err(corrupt("a bet's player has no account"));
        };
        *balance = domain::credit(*balance, bet.amount).map_err(|e| corrupt(e.to_string()))?;
        *version += 1;
        refunded = refunded.checked_add(bet.amount).unwrap_or(Money::MAX);
        ids.push(bet.bet_id);
        let event = Event::new(
            Uuid::new_v4(),
            at,
            EventBody::BetRefunded(BetRefunded {
                table: table.clone(),
                round,
                bet_id: domain::BetId::from_uuid(bet.bet_id),
                player: bet.player.clone(),
                amount: bet.amount,
                balance: *balance,
            }),
        );
        events.push(new_event(player_stream(&bet.player), *version, &event)?);
    }
    write_wallets(
        tx,
        wallets.iter().map(|(p, (b, v))| (p.as_str(), *b, *v)),
        at,
    )
    .await?;
    let appended = store::append(tx, &events).await?;
    record_results(
        tx,
        ids.iter()
            .zip(&appended)
            .map(|(id, appended)| (id, None, appended.position)),
    )
    .await?;
    Ok(Some(Refund {
        bets: bets.len() as u64,
        refunded,
    }))
}

/// The columns of the `COPY` into `bet_results`, in the order the statement names them.
const RESULT_COLUMNS: [Type; 4] = [Type::UUID, Type::TEXT, Type::INT8, Type::INT8];

/// Records each bet's result: (bet id, payout, position of its event); a payout means
/// settled, none refunded.
async fn record_results<'a>(
    tx: &Transaction<'_>,
    results: impl Iterator<Item = (&'a Uuid, Option<i64>, i64)>,
) -> Result<(), LedgerError> {
    let sink = tx
        .copy_in("COPY bet_results (bet_id, status, payout, position) FROM STDIN (FORMAT binary)")
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &RESULT_COLUMNS);
    futures_util::pin_mut!(writer);
    for (bet_id, payout, position) in results {
        let status = if payout.is_some() {
            "settled"
        } else {
            "refunded"
        };
        writer
            .as_mut()
            .write(&[bet_id, &status, &payout, &position])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

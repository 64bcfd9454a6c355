//! Settlement and refunds, each one set-based transaction per round
//! (`docs/contract/event-store.md`).
//!
//! ```text
//! BEGIN
//!   UPDATE rounds SET phase = 'settled' … AND phase = 'resulted' RETURNING outcome  -- the claim
//!   SELECT … FROM round_stakes, LATERAL (… events …)  -- the round's bets, ADR 0033 ┐ one
//!   SELECT … FROM round_stakes JOIN accounts … ORDER BY player FOR UPDATE OF a    │ round
//!                                                          -- wallets in player order  │ trip
//!   SELECT max(version) … round stream                     -- settlement only        ┘
//!   UPDATE accounts … FROM unnest(…)                        -- payouts, set-based, while the
//!                                                           -- events are encoded
//!   store::append_with_locked_versions(bet_settled × n, round_settled)  -- head row last
//!   COPY bet_results … FROM STDIN (FORMAT binary)           -- one row per bet
//! COMMIT
//! ```
//!
//! Every stream version the append takes was read under a lock its other writers take too:
//! a player's from the `accounts` row locked here (ADR 0014, 7), the round's with the round
//! claimed; `UNIQUE (stream, version)` refuses a version taken twice all the same.
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
//! The round's bets are read from their `bet_placed` events, found through `round_stakes`
//! (ADR 0033). Results are inserted into `bet_results`, keyed by bet id: an UPDATE of every
//! bet of a round cost more than appending the round's events (ADR 0014).
//!
//! Metrics (label `table`), recorded for a round this GS claimed: `gs_settlement_seconds` (the
//! whole transaction, commit included), `gs_settlement_bets` (bets it settled) and
//! `gs_refund_seconds` (a voided round's refunds). Each transaction's stages are in
//! `gs_ledger_stage_seconds{op="settle"}` (`stages`).

use std::collections::HashMap;

use domain::{Money, Outcome, PlayerId, RoundId, Selection, TableId};
use futures_util::TryStreamExt;
use protocol::{BetRefunded, BetSettled, Event, EventBody, RoundSettled};
use store::PooledTransaction as Transaction;
use store::{Store, StoreError};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use super::stages::Stages;
use super::{LedgerError, new_event, pipelined, player_stream, round_stream, write_wallets};
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

/// A locked wallet: its balance and stream version, and whether this transaction credited it
/// (only those are written back).
struct Wallet {
    balance: Money,
    version: i32,
    credited: bool,
}

/// Every player with a bet on the round → their wallet, locked.
type Wallets = HashMap<String, Wallet>;

/// What a settlement or refund reads before it writes.
struct RoundBets {
    /// The round's bets without a result yet, in the order they were placed.
    bets: Vec<OpenBet>,
    wallets: Wallets,
}

/// A round's `bet_placed` events (position, data), found through `round_stakes` (ADR 0033):
/// each of the round's players' stream (`player-<id>`, as [`player_stream`] names it) from the
/// first to the last version that holds a bet on the round, by the events' key on (stream,
/// version). Bets on other rounds in between are read too, and skipped by the caller.
///
/// The lateral subquery's `OFFSET 0` keeps it a subquery run once per player, by that key.
/// Flattened into a join, the planner misjudges the version range (it expects most of a
/// stream) and chose a merge join over a sequential scan of the whole `events` table, sorted
/// (147 ms for a round of 10k bets among 400k events, against 27 ms by the key), a cost that
/// grows with the log. `a_rounds_bets_are_read_by_the_events_key` checks the plan.
pub const ROUND_BETS: &str = "SELECT e.position, e.data FROM round_stakes s \
     CROSS JOIN LATERAL ( \
         SELECT position, data FROM events \
         WHERE stream = 'player-' || s.player \
           AND version BETWEEN s.first_version AND s.last_version AND type = 'bet_placed' \
         OFFSET 0 \
     ) e \
     WHERE s.table_id = $1 AND s.round = $2";

/// The bet a `bet_placed` event found by [`ROUND_BETS`] records, if it is on `table`'s `round`
/// (the player's stream between the versions may hold bets on other rounds too).
fn round_bet(
    position: i64,
    data: &[u8],
    table: &TableId,
    round: RoundId,
) -> Result<Option<OpenBet>, LedgerError> {
    let event = protocol::decode_event(data).map_err(|e| {
        LedgerError::Store(StoreError::Corrupt {
            position: Some(position),
            reason: format!("undecodable bet_placed event: {e}"),
        })
    })?;
    let EventBody::BetPlaced(placed) = event.body else {
        return Err(LedgerError::Store(StoreError::Corrupt {
            position: Some(position),
            reason: "stored as a bet_placed and is not one".into(),
        }));
    };
    if placed.table != *table || placed.round != round {
        return Ok(None);
    }
    Ok(Some(OpenBet {
        bet_id: *placed.bet_id.as_uuid(),
        player: placed.player,
        selection: placed.selection,
        amount: placed.amount,
    }))
}

/// Reads a round's open bets and locks its players' wallets in player order, in one round
/// trip (the server runs the statements in this order; a settlement pipelines its read of the
/// round stream's version behind them; a refund then drops the bets that have a result).
/// The players are found in `round_stakes`, one row per player of the round in player order
/// (written with the bets, rebuilt with them), which also counts each player's bets: the bets
/// found must be as many.
/// `claimed`: the round was just claimed for settlement, so none of its bets can have a
/// result (one claim per round), and `bet_results` is not read.
///
/// No bet can join the round meanwhile: placement share-locks the round's row, which the
/// caller holds (the claim's UPDATE, or a refund's `FOR UPDATE`), so every placement that
/// saw the round open has committed before it, and every later one finds it closed.
async fn read_round(
    tx: &Transaction<'_>,
    table: &TableId,
    round: RoundId,
    claimed: bool,
) -> Result<RoundBets, LedgerError> {
    let round_no = round.get() as i64;
    let params: [(&(dyn ToSql + Sync), Type); 2] =
        [(&table.as_str(), Type::TEXT), (&round_no, Type::INT8)];
    // The bets are decoded as their rows arrive (the query streams: no `ORDER BY`), then put
    // in position order here.
    let read_bets = async {
        let rows = store::prepared::query_stream(tx, ROUND_BETS, &params).await?;
        let mut rows = std::pin::pin!(rows);
        let mut found: Vec<(i64, OpenBet)> = Vec::new();
        while let Some(row) = rows.try_next().await? {
            let position: i64 = row.try_get(0)?;
            if let Some(bet) = round_bet(position, row.try_get(1)?, table, round)? {
                found.push((position, bet));
            }
        }
        found.sort_unstable_by_key(|(position, _)| *position);
        Ok::<_, LedgerError>(found.into_iter().map(|(_, bet)| bet).collect::<Vec<_>>())
    };
    let (bets, wallet_rows) = tokio::join!(
        read_bets,
        store::prepared::query(
            tx,
            "SELECT a.player, a.balance, a.version, s.bets FROM round_stakes s \
             JOIN accounts a ON a.player = s.player \
             WHERE s.table_id = $1 AND s.round = $2 \
             ORDER BY a.player FOR UPDATE OF a",
            &params,
        ),
    );
    let (mut bets, wallet_rows) = pipelined(bets, wallet_rows)?;
    // Each player's bets found must be as many as `round_stakes` counted when it wrote the
    // versions: a row that disagrees with the events (a read model edited by hand, say) stops
    // the settlement here, before anything is paid, instead of leaving bets out of it; the
    // round stays as it was, and `croupier projections rebuild` recreates the rows.
    let mut wallets = HashMap::with_capacity(wallet_rows.len());
    let mut counted: HashMap<&str, i32> = HashMap::with_capacity(wallet_rows.len());
    for bet in &bets {
        *counted.entry(bet.player.as_str()).or_default() += 1;
    }
    for row in wallet_rows {
        let player: String = row.try_get(0)?;
        let expected: i32 = row.try_get(3)?;
        let found = counted.get(player.as_str()).copied().unwrap_or(0);
        if found != expected {
            return Err(corrupt(format!(
                "round_stakes counts {expected} bets of {player} on {table} round {round}, \
                 the events between its versions hold {found}"
            )));
        }
        let wallet = Wallet {
            balance: Money::new(row.try_get(1)?).map_err(|e| corrupt(e.to_string()))?,
            version: row.try_get(2)?,
            credited: false,
        };
        wallets.insert(player, wallet);
    }
    if !claimed && !bets.is_empty() {
        let ids: Vec<Uuid> = bets.iter().map(|b| b.bet_id).collect();
        let with_result: std::collections::HashSet<Uuid> = store::prepared::query(
            tx,
            "SELECT bet_id FROM bet_results WHERE bet_id = ANY($1)",
            &[(&ids, Type::UUID_ARRAY)],
        )
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
        bets.retain(|b| !with_result.contains(&b.bet_id));
    }
    Ok(RoundBets { bets, wallets })
}

/// The wallets this transaction credited, as `write_wallets` takes them.
fn credited(wallets: &Wallets) -> impl Iterator<Item = (&str, Money, i32)> {
    wallets
        .iter()
        .filter(|(_, w)| w.credited)
        .map(|(p, w)| (p.as_str(), w.balance, w.version))
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
    let stream = round_stream(table, round);
    let (read, round_version) = tokio::join!(
        read_round(tx, table, round, true),
        store::next_version(&**tx, &stream),
    );
    let (RoundBets { bets, mut wallets }, round_version) = pipelined(read, round_version)?;
    stages.mark("reads");

    // Each bet's payout and the balance and version it leaves its player's wallet at.
    let mut payouts = Vec::with_capacity(bets.len());
    let mut staked = Money::ZERO;
    let mut paid = Money::ZERO;
    for bet in &bets {
        let payout = bet
            .selection
            .payout(bet.amount, outcome)
            .map_err(|e| corrupt(e.to_string()))?;
        let (balance, version) = credit(&mut wallets, bet, payout)?;
        staked = staked.checked_add(bet.amount).unwrap_or(Money::MAX);
        paid = paid.checked_add(payout).unwrap_or(Money::MAX);
        payouts.push((payout, balance, version));
    }
    let settlement = Settlement {
        bets: bets.len() as u64,
        staked,
        paid,
    };
    // The events are encoded while the database writes the balances.
    let encode = async {
        super::let_statements_go().await;
        let mut events = Vec::with_capacity(bets.len() + 1);
        for (bet, &(payout, balance, version)) in bets.iter().zip(&payouts) {
            let event = Event::new(
                Uuid::new_v4(),
                at,
                EventBody::BetSettled(BetSettled {
                    table: table.clone(),
                    round,
                    bet_id: domain::BetId::from_uuid(bet.bet_id),
                    player: bet.player.clone(),
                    payout,
                    balance,
                }),
            );
            events.push(new_event(player_stream(&bet.player), version, &event)?);
        }
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
        events.push(new_event(stream, round_version, &summary)?);
        Ok::<_, LedgerError>(events)
    };
    let (credits, events) = tokio::join!(write_wallets(tx, credited(&wallets), at), encode);
    credits?;
    let events = events?;
    stages.mark("credits");
    let appended = store::append_with_locked_versions(tx, &events).await?;
    stages.mark("append");
    record_results(
        tx,
        bets.iter()
            .zip(&payouts)
            .zip(&appended)
            .map(|((bet, (payout, _, _)), appended)| {
                (&bet.bet_id, Some(payout.get()), appended.position)
            }),
    )
    .await?;
    stages.mark("results");
    stages.finish(bets.len());
    Ok(Some(settlement))
}

/// Credits `amount` to `bet`'s player in `wallets`; the wallet's balance and version after it.
fn credit(
    wallets: &mut Wallets,
    bet: &OpenBet,
    amount: Money,
) -> Result<(Money, i32), LedgerError> {
    let Some(wallet) = wallets.get_mut(bet.player.as_str()) else {
        return Err(corrupt("a bet's player has no account"));
    };
    wallet.balance = domain::credit(wallet.balance, amount).map_err(|e| corrupt(e.to_string()))?;
    wallet.version += 1;
    wallet.credited = true;
    Ok((wallet.balance, wallet.version))
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
    let RoundBets { bets, mut wallets } = read_round(tx, table, round, false).await?;
    if bets.is_empty() {
        return Ok(None);
    }
    let mut events = Vec::with_capacity(bets.len());
    let mut refunded = Money::ZERO;
    for bet in &bets {
        let (balance, version) = credit(&mut wallets, bet, bet.amount)?;
        refunded = refunded.checked_add(bet.amount).unwrap_or(Money::MAX);
        let event = Event::new(
            Uuid::new_v4(),
            at,
            EventBody::BetRefunded(BetRefunded {
                table: table.clone(),
                round,
                bet_id: domain::BetId::from_uuid(bet.bet_id),
                player: bet.player.clone(),
                amount: bet.amount,
                balance,
            }),
        );
        events.push(new_event(player_stream(&bet.player), version, &event)?);
    }
    write_wallets(tx, credited(&wallets), at).await?;
    let appended = store::append_with_locked_versions(tx, &events).await?;
    record_results(
        tx,
        bets.iter()
            .zip(&appended)
            .map(|(bet, appended)| (&bet.bet_id, None, appended.position)),
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

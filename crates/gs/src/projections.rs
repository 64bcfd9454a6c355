//! Rebuilding the read models (`rounds`, `legacy_bets`, `bet_results`,
//! `round_stakes`, `accounts`, `deposits`) from the events alone (`docs/contract/event-store.md`):
//! `croupier projections rebuild`.
//!
//! GS writes every column of those tables from what its events carry (timestamps are the
//! events' `at`, a round's `bus_seq` is in its transitions' metadata), so a rebuild gives
//! exactly the rows GS wrote. The cursors (`gs_cursor`, `outbox_cursor`) are positions of
//! readers, not projections, and are left alone.
//!
//! One transaction: the four tables are locked (writers wait, readers keep reading the old
//! rows until commit), emptied and refilled. The projection is built in memory — one entry per
//! round, bet, player and deposit — which is fine for the store sizes this serves; a store too
//! large for that would rebuild table by table in pages.

use std::collections::{BTreeMap, HashMap};

use domain::Timestamp;
use futures_util::StreamExt;
use protocol::EventBody;
use store::{Store, StoreError};
use time::OffsetDateTime;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::ledger::{LedgerError, TransitionMetadata};

/// Rows written per statement when the read models are refilled.
const PAGE: i64 = 5_000;

/// What a rebuild wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub events: u64,
    pub rounds: u64,
    /// Bets placed (`bet_placed` events, one per bet id); their stakes are in `round_stakes`.
    pub bets: u64,
    /// Of them, placed before migration 0005 (`legacy_bets`).
    pub legacy_bets: u64,
    pub bet_results: u64,
    pub round_stakes: u64,
    pub accounts: u64,
    pub deposits: u64,
}

#[derive(Debug)]
struct RoundRow {
    phase: &'static str,
    seed_hash: Option<Vec<u8>>,
    closes_at: Option<OffsetDateTime>,
    outcome: Option<i16>,
    server_seed: Option<Vec<u8>>,
    bus_seq: Option<i64>,
    opened_at: Option<OffsetDateTime>,
    updated_at: OffsetDateTime,
}

/// A bet's result: status, payout (none for a refund), position of its event.
type BetResult = (&'static str, Option<i64>, i64);

/// A placed bet: the position of its `bet_placed` event, and whether that event's id is not
/// derived from the bet id (placed before migration 0005: `legacy_bets`).
struct BetRow {
    placed_position: i64,
    legacy: bool,
}

/// A (table, round, player)'s `round_stakes` row: staked, bets, and the first and last version
/// of the player's stream that holds one of those bets.
#[derive(Clone, Copy)]
struct StakeRow {
    staked: i64,
    bets: i32,
    first_version: i32,
    last_version: i32,
}

fn at(t: Timestamp) -> OffsetDateTime {
    t.as_offset_datetime()
}

/// Recreates the read models from the events. Stop GS first (or expect its writes to wait).
pub async fn rebuild(store: &Store) -> Result<RebuildReport, LedgerError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    tx.batch_execute(
        "SET LOCAL statement_timeout = 0; \
         LOCK TABLE rounds, legacy_bets, bet_results, round_stakes, accounts, deposits \
         IN EXCLUSIVE MODE",
    )
    .await?;

    let mut rounds: BTreeMap<(String, i64), RoundRow> = BTreeMap::new();
    let mut bets: HashMap<Uuid, BetRow> = HashMap::new();
    let mut results: HashMap<Uuid, BetResult> = HashMap::new();
    let mut stakes: BTreeMap<(String, i64, String), StakeRow> = BTreeMap::new();
    let mut accounts: BTreeMap<String, (i64, i32, OffsetDateTime)> = BTreeMap::new();
    let mut deposits: Vec<(String, String, i64, i64, OffsetDateTime)> = Vec::new();
    let mut report = RebuildReport::default();

    // Every event up to the head, in one streamed COPY (as the auditor reads them).
    let head = store::last_position(&*tx).await?;
    let events = store::stream_events(&*tx, 1, head).await?;
    let mut events = std::pin::pin!(events);
    {
        while let Some(stored) = events.next().await {
            let stored = &stored?;
            report.events += 1;
            let event = protocol::decode_event(&stored.data).map_err(|e| {
                LedgerError::Store(StoreError::Corrupt {
                    position: Some(stored.position),
                    reason: format!("undecodable event: {e}"),
                })
            })?;
            let bus_seq = TransitionMetadata::decode(&stored.metadata)
                .map(|m| i64::try_from(m.bus_seq).unwrap_or(i64::MAX));
            let when = at(event.at);
            match &event.body {
                EventBody::RoundOpened(e) => {
                    rounds
                        .entry((e.table.to_string(), e.round.get() as i64))
                        .or_insert(RoundRow {
                            phase: "open",
                            seed_hash: Some(e.seed_hash.as_bytes().to_vec()),
                            closes_at: Some(at(e.closes_at)),
                            outcome: None,
                            server_seed: None,
                            bus_seq,
                            opened_at: Some(when),
                            updated_at: when,
                        });
                }
                EventBody::BettingClosed(e) => {
                    if let Some(row) = rounds.get_mut(&(e.table.to_string(), e.round.get() as i64))
                        && row.phase == "open"
                    {
                        row.phase = "closed";
                        row.bus_seq = bus_seq;
                        row.updated_at = when;
                    }
                }
                EventBody::OutcomeDeclared(e) => {
                    if let Some(row) = rounds.get_mut(&(e.table.to_string(), e.round.get() as i64))
                        && matches!(row.phase, "open" | "closed")
                    {
                        row.phase = "resulted";
                        row.outcome = Some(i16::from(e.outcome.get()));
                        row.server_seed = Some(e.server_seed.as_bytes().to_vec());
                        row.bus_seq = bus_seq;
                        row.updated_at = when;
                    }
                }
                EventBody::RoundVoided(e) => {
                    if let Some(row) = rounds.get_mut(&(e.table.to_string(), e.round.get() as i64))
                        && matches!(row.phase, "open" | "closed")
                    {
                        row.phase = "voided";
                        row.bus_seq = bus_seq;
                        row.updated_at = when;
                    }
                }
                EventBody::RoundSettled(e) => {
                    if let Some(row) = rounds.get_mut(&(e.table.to_string(), e.round.get() as i64))
                    {
                        row.phase = "settled";
                        row.updated_at = when;
                    }
                }
                EventBody::FundsDeposited(e) => {
                    accounts.insert(
                        e.player.to_string(),
                        (e.balance.get(), stored.version, when),
                    );
                    deposits.push((
                        e.deposit_id.as_str().to_string(),
                        e.player.to_string(),
                        e.amount.get(),
                        stored.position,
                        when,
                    ));
                }
                EventBody::BetPlaced(e) => {
                    let stake = stakes
                        .entry((
                            e.table.to_string(),
                            e.round.get() as i64,
                            e.player.to_string(),
                        ))
                        .or_insert(StakeRow {
                            staked: 0,
                            bets: 0,
                            first_version: stored.version,
                            last_version: stored.version,
                        });
                    stake.staked = stake.staked.saturating_add(e.amount.get());
                    stake.bets += 1;
                    stake.last_version = stored.version;
                    accounts.insert(
                        e.player.to_string(),
                        (e.balance.get(), stored.version, when),
                    );
                    bets.insert(
                        *e.bet_id.as_uuid(),
                        BetRow {
                            placed_position: stored.position,
                            // Placed before migration 0005 (ADR 0016).
                            legacy: stored.event_id != crate::ledger::bet_placed_id(&e.bet_id),
                        },
                    );
                }
                EventBody::BetSettled(e) => {
                    accounts.insert(
                        e.player.to_string(),
                        (e.balance.get(), stored.version, when),
                    );
                    results.insert(
                        *e.bet_id.as_uuid(),
                        ("settled", Some(e.payout.get()), stored.position),
                    );
                }
                EventBody::BetRefunded(e) => {
                    accounts.insert(
                        e.player.to_string(),
                        (e.balance.get(), stored.version, when),
                    );
                    results.insert(*e.bet_id.as_uuid(), ("refunded", None, stored.position));
                }
                // An operator's switch (ADR 0022) is in no read model: the switch itself is
                // the `status` bucket's.
                EventBody::BettingSwitched(_) => {}
            }
        }
    }

    tx.batch_execute(
        "DELETE FROM bet_results; DELETE FROM legacy_bets; \
         DELETE FROM round_stakes; DELETE FROM deposits; DELETE FROM accounts; DELETE FROM rounds",
    )
    .await?;

    // rounds
    {
        let mut c = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut d = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((table, round), row) in &rounds {
            c.0.push(table.as_str());
            c.1.push(*round);
            c.2.push(row.phase);
            c.3.push(row.seed_hash.as_deref());
            c.4.push(row.closes_at);
            d.0.push(row.outcome);
            d.1.push(row.server_seed.as_deref());
            d.2.push(row.bus_seq);
            d.3.push(row.opened_at);
            d.4.push(row.updated_at);
        }
        report.rounds = tx
            .execute_typed(
                "INSERT INTO rounds (table_id, round, phase, seed_hash, closes_at, outcome, \
                                     server_seed, bus_seq, opened_at, updated_at) \
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::bytea[], \
                                      $5::timestamptz[], $6::int2[], $7::bytea[], $8::int8[], \
                                      $9::timestamptz[], $10::timestamptz[])",
                &[
                    (&c.0, Type::TEXT_ARRAY),
                    (&c.1, Type::INT8_ARRAY),
                    (&c.2, Type::TEXT_ARRAY),
                    (&c.3, Type::BYTEA_ARRAY),
                    (&c.4, Type::TIMESTAMPTZ_ARRAY),
                    (&d.0, Type::INT2_ARRAY),
                    (&d.1, Type::BYTEA_ARRAY),
                    (&d.2, Type::INT8_ARRAY),
                    (&d.3, Type::TIMESTAMPTZ_ARRAY),
                    (&d.4, Type::TIMESTAMPTZ_ARRAY),
                ],
            )
            .await?;
    }
    // round_stakes
    for chunk in stakes.iter().collect::<Vec<_>>().chunks(PAGE as usize) {
        let tables: Vec<&str> = chunk.iter().map(|((t, _, _), _)| t.as_str()).collect();
        let rounds: Vec<i64> = chunk.iter().map(|((_, n, _), _)| *n).collect();
        let players: Vec<&str> = chunk.iter().map(|((_, _, p), _)| p.as_str()).collect();
        let staked: Vec<i64> = chunk.iter().map(|(_, s)| s.staked).collect();
        let counts: Vec<i32> = chunk.iter().map(|(_, s)| s.bets).collect();
        let firsts: Vec<i32> = chunk.iter().map(|(_, s)| s.first_version).collect();
        let lasts: Vec<i32> = chunk.iter().map(|(_, s)| s.last_version).collect();
        report.round_stakes += tx
            .execute_typed(
                "INSERT INTO round_stakes (table_id, round, player, staked, bets, \
                                           first_version, last_version) \
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::int8[], \
                                      $5::int4[], $6::int4[], $7::int4[])",
                &[
                    (&tables, Type::TEXT_ARRAY),
                    (&rounds, Type::INT8_ARRAY),
                    (&players, Type::TEXT_ARRAY),
                    (&staked, Type::INT8_ARRAY),
                    (&counts, Type::INT4_ARRAY),
                    (&firsts, Type::INT4_ARRAY),
                    (&lasts, Type::INT4_ARRAY),
                ],
            )
            .await?;
    }
    // accounts
    {
        let players: Vec<&str> = accounts.keys().map(String::as_str).collect();
        let balances: Vec<i64> = accounts.values().map(|a| a.0).collect();
        let versions: Vec<i32> = accounts.values().map(|a| a.1).collect();
        let updated: Vec<OffsetDateTime> = accounts.values().map(|a| a.2).collect();
        report.accounts = tx
            .execute_typed(
                "INSERT INTO accounts (player, balance, version, updated_at) \
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::int4[], $4::timestamptz[])",
                &[
                    (&players, Type::TEXT_ARRAY),
                    (&balances, Type::INT8_ARRAY),
                    (&versions, Type::INT4_ARRAY),
                    (&updated, Type::TIMESTAMPTZ_ARRAY),
                ],
            )
            .await?;
    }
    // deposits
    {
        let ids: Vec<&str> = deposits.iter().map(|d| d.0.as_str()).collect();
        let players: Vec<&str> = deposits.iter().map(|d| d.1.as_str()).collect();
        let amounts: Vec<i64> = deposits.iter().map(|d| d.2).collect();
        let positions: Vec<i64> = deposits.iter().map(|d| d.3).collect();
        let recorded: Vec<OffsetDateTime> = deposits.iter().map(|d| d.4).collect();
        report.deposits = tx
            .execute_typed(
                "INSERT INTO deposits (deposit_id, player, amount, position, recorded_at) \
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], \
                                      $5::timestamptz[])",
                &[
                    (&ids, Type::TEXT_ARRAY),
                    (&players, Type::TEXT_ARRAY),
                    (&amounts, Type::INT8_ARRAY),
                    (&positions, Type::INT8_ARRAY),
                    (&recorded, Type::TIMESTAMPTZ_ARRAY),
                ],
            )
            .await?;
    }
    report.bets = bets.len() as u64;
    // bets placed before migration 0005, by bet id (ADR 0016)
    let (legacy_ids, legacy_positions): (Vec<Uuid>, Vec<i64>) = bets
        .iter()
        .filter(|(_, b)| b.legacy)
        .map(|(id, b)| (*id, b.placed_position))
        .unzip();
    for (ids, positions) in legacy_ids
        .chunks(PAGE as usize)
        .zip(legacy_positions.chunks(PAGE as usize))
    {
        report.legacy_bets += tx
            .execute_typed(
                "INSERT INTO legacy_bets (bet_id, placed_position) \
                 SELECT * FROM unnest($1::uuid[], $2::int8[])",
                &[(&ids, Type::UUID_ARRAY), (&positions, Type::INT8_ARRAY)],
            )
            .await?;
    }
    let all: Vec<(&Uuid, &BetResult)> = results.iter().collect();
    for chunk in all.chunks(PAGE as usize) {
        let ids: Vec<Uuid> = chunk.iter().map(|(id, _)| **id).collect();
        let statuses: Vec<&str> = chunk.iter().map(|(_, r)| r.0).collect();
        let payouts: Vec<Option<i64>> = chunk.iter().map(|(_, r)| r.1).collect();
        let positions: Vec<i64> = chunk.iter().map(|(_, r)| r.2).collect();
        report.bet_results += tx
            .execute_typed(
                "INSERT INTO bet_results (bet_id, status, payout, position) \
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::int8[])",
                &[
                    (&ids, Type::UUID_ARRAY),
                    (&statuses, Type::TEXT_ARRAY),
                    (&payouts, Type::INT8_ARRAY),
                    (&positions, Type::INT8_ARRAY),
                ],
            )
            .await?;
    }
    tx.commit().await?;
    Ok(report)
}

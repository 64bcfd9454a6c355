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
use tokio_postgres::types::Type;
use uuid::Uuid;

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
const ATTEMPTS: usize = 3;

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
        let result = place_once(store, bets, limits, now).await;
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

async fn place_once(
    store: &Store,
    bets: &[BetRequest],
    limits: &TableLimits,
    now: Timestamp,
) -> Result<Vec<BetOutcome>, LedgerError> {
    let waited = std::time::Instant::now();
    let mut client = store.client().await?;
    metrics::histogram!("gs_pool_wait_seconds").record(waited.elapsed());
    let result = match tokio::time::timeout(
        store.call_timeout(),
        transact(&mut client, bets, limits, now),
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
    fingerprint: Vec<u8>,
}

async fn transact(
    client: &mut tokio_postgres::Client,
    bets: &[BetRequest],
    limits: &TableLimits,
    now: Timestamp,
) -> Result<Vec<BetOutcome>, LedgerError> {
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

    // Bets stored already: retries (answered with the first answer) or conflicts.
    let ids: Vec<Uuid> = distinct
        .iter()
        .map(|j| *bets[j.index].bet_id.as_uuid())
        .collect();
    let rows = tx
        .query_typed(
            "SELECT b.bet_id, b.request_fingerprint, e.data \
             FROM unnest($1::uuid[]) AS u(id) JOIN bets b ON b.bet_id = u.id \
             JOIN events e ON e.position = b.placed_position",
            &[(&ids, Type::UUID_ARRAY)],
        )
        .await?;
    let mut stored: HashMap<Uuid, (Option<Vec<u8>>, Money)> = HashMap::with_capacity(rows.len());
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

    // Stakes already on each (table, round, player) of the batch.
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
            "SELECT b.table_id, b.round, b.player, sum(b.amount)::int8 FROM bets b \
             JOIN unnest($1::text[], $2::int8[], $3::text[]) AS u(t, n, p) \
               ON b.table_id = u.t AND b.round = u.n AND b.player = u.p \
             GROUP BY 1, 2, 3",
            &[
                (&kt, Type::TEXT_ARRAY),
                (&kr, Type::INT8_ARRAY),
                (&kp, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    let mut staked: HashMap<(String, i64, String), Money> = HashMap::with_capacity(rows.len());
    for row in rows {
        let amount = Money::new(row.try_get(3)?).unwrap_or(Money::MAX);
        staked.insert((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?), amount);
    }

    // Judge each distinct bet in arrival order against running balances and stakes.
    let mut accepted: Vec<(usize, Event, i32, &Vec<u8>)> = Vec::new();
    for judged in &distinct {
        let bet = &bets[judged.index];
        let id = *bet.bet_id.as_uuid();
        if let Some((fingerprint, balance)) = stored.get(&id) {
            outcomes[judged.index] = Some(if fingerprint.as_deref() == Some(&judged.fingerprint) {
                metrics::counter!("gs_bets_retried_total").increment(1);
                BetOutcome::Accepted { balance: *balance }
            } else {
                conflict()
            });
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
                metrics::counter!("gs_bets_rejected_total", "code" => rejection.code())
                    .increment(1);
                outcomes[judged.index] = Some(BetOutcome::rejected(
                    super::placement_code(&rejection),
                    rejection.to_string(),
                ));
            }
            Ok(new_balance) => {
                let version = version + 1;
                wallets.insert(bet.player.to_string(), (new_balance, version, true));
                staked.insert(
                    stake_key,
                    already.checked_add(bet.amount).unwrap_or(Money::MAX),
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

    if !accepted.is_empty() {
        // The bets first: only those inserted here get events and debits.
        let mut b_ids = Vec::with_capacity(accepted.len());
        let mut b_tables = Vec::with_capacity(accepted.len());
        let mut b_rounds = Vec::with_capacity(accepted.len());
        let mut b_players = Vec::with_capacity(accepted.len());
        let mut b_selections = Vec::with_capacity(accepted.len());
        let mut b_amounts = Vec::with_capacity(accepted.len());
        let mut b_fingerprints: Vec<&[u8]> = Vec::with_capacity(accepted.len());
        for (index, _, _, fingerprint) in &accepted {
            let bet = &bets[*index];
            b_ids.push(*bet.bet_id.as_uuid());
            b_tables.push(bet.table.as_str());
            b_rounds.push(bet.round.get() as i64);
            b_players.push(bet.player.as_str());
            b_selections.push(
                serde_json::to_string(&bet.selection)
                    .map_err(|e| LedgerError::Encoding(e.to_string()))?,
            );
            b_amounts.push(bet.amount.get());
            b_fingerprints.push(fingerprint.as_slice());
        }
        let at = now.as_offset_datetime();

        // Debits, set-based, before the head row is locked.
        write_wallets(
            &tx,
            wallets
                .iter()
                .filter(|(_, (_, _, changed))| *changed)
                .map(|(p, (b, v, _))| (p.as_str(), *b, *v)),
            now,
        )
        .await?;

        let mut events = Vec::with_capacity(accepted.len());
        for (index, event, version, _) in &accepted {
            events.push(new_event(
                player_stream(&bets[*index].player),
                *version,
                event,
            )?);
        }
        let appended_at = std::time::Instant::now();
        let appended = store::append(&tx, &events).await?;
        let positions: Vec<i64> = appended.iter().map(|a| a.position).collect();

        // The bets, with their positions; only those inserted here may keep their events.
        let inserted = tx
            .query_typed(
                "INSERT INTO bets (bet_id, table_id, round, player, selection, amount, \
                                   request_fingerprint, placed_at, placed_position) \
                 SELECT i, t, n, p, s::jsonb, a, f, $8, pos \
                 FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::text[], $5::text[], \
                             $6::int8[], $7::bytea[], $9::int8[]) AS u(i, t, n, p, s, a, f, pos) \
                 ON CONFLICT (bet_id) DO NOTHING RETURNING bet_id",
                &[
                    (&b_ids, Type::UUID_ARRAY),
                    (&b_tables, Type::TEXT_ARRAY),
                    (&b_rounds, Type::INT8_ARRAY),
                    (&b_players, Type::TEXT_ARRAY),
                    (&b_selections, Type::TEXT_ARRAY),
                    (&b_amounts, Type::INT8_ARRAY),
                    (&b_fingerprints, Type::BYTEA_ARRAY),
                    (&at, Type::TIMESTAMPTZ),
                    (&positions, Type::INT8_ARRAY),
                ],
            )
            .await?;
        if inserted.len() != accepted.len() {
            // A concurrent batch (of another player reusing one of these ids) committed it
            // first: roll back — the positions go back too — and judge the batch afresh.
            return Err(LedgerError::Raced);
        }
        tx.commit().await?;
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

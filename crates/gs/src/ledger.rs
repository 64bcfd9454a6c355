//! GS's writes to the event store: each one transaction that appends events and updates the
//! read models they change (DESIGN §6). Money moves only here.
//!
//! Streams: `round-<table>-<round>` (the round's transitions and `round_settled`),
//! `player-<id>` (deposits and the player's bet events; its version is `accounts.version`).

use bytes::Bytes;
use domain::{
    BettingWindow, Money, Phase, PlayerId, RoundId, Selection, TableId, TableLimits, Timestamp,
};
use protocol::{BetPlaced, BetSettled, DepositId, Event, EventBody, FundsDeposited, RoundSettled};
use sha2::{Digest, Sha256};
use store::{NewEvent, Store, StoreError};
use tokio_postgres::Transaction;
use uuid::Uuid;

use crate::clock::now;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A business rule said no; the client gets the code.
    #[error("{message}")]
    Rejected {
        code: protocol::ErrorCode,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("encoding: {0}")]
    Encoding(String),
}

impl From<tokio_postgres::Error> for LedgerError {
    fn from(error: tokio_postgres::Error) -> Self {
        LedgerError::Store(StoreError::from(error))
    }
}

fn rejected(code: protocol::ErrorCode, message: impl Into<String>) -> LedgerError {
    LedgerError::Rejected {
        code,
        message: message.into(),
    }
}

pub(crate) fn round_stream(table: &TableId, round: RoundId) -> String {
    format!("round-{table}-{}", round.get())
}

pub(crate) fn player_stream(player: &PlayerId) -> String {
    format!("player-{player}")
}

fn new_event(stream: String, version: i32, event: &Event) -> Result<NewEvent, LedgerError> {
    let data = protocol::encode_event(event).map_err(|e| LedgerError::Encoding(e.to_string()))?;
    Ok(NewEvent {
        event_id: event.id,
        stream,
        version,
        kind: event.kind().to_string(),
        data,
        metadata: Bytes::new(),
    })
}

/// Locks a player's account row (creating it at zero) and returns its balance and version.
async fn lock_account(
    tx: &Transaction<'_>,
    player: &PlayerId,
) -> Result<(Money, i32), LedgerError> {
    tx.execute(
        "INSERT INTO accounts (player, balance, version) VALUES ($1, 0, 0) ON CONFLICT DO NOTHING",
        &[&player.as_str()],
    )
    .await?;
    let row = tx
        .query_one(
            "SELECT balance, version FROM accounts WHERE player = $1 FOR UPDATE",
            &[&player.as_str()],
        )
        .await?;
    let balance = Money::new(row.get(0)).map_err(|e| StoreError::Corrupt {
        position: None,
        reason: e.to_string(),
    })?;
    Ok((balance, row.get(1)))
}

async fn set_account(
    tx: &Transaction<'_>,
    player: &PlayerId,
    balance: Money,
    version: i32,
) -> Result<(), LedgerError> {
    tx.execute(
        "UPDATE accounts SET balance = $2, version = $3, updated_at = now() WHERE player = $1",
        &[&player.as_str(), &balance.get(), &version],
    )
    .await?;
    Ok(())
}

/// Records a deposit once per `deposit_id`; returns the balance after it (the first answer's,
/// for a repeated id).
pub async fn deposit(
    store: &Store,
    player: &PlayerId,
    amount: Money,
    deposit_id: &DepositId,
) -> Result<Money, LedgerError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    if let Some(row) = tx
        .query_opt(
            "SELECT player, amount FROM deposits WHERE deposit_id = $1",
            &[&deposit_id.as_str()],
        )
        .await?
    {
        let (same_player, same_amount): (String, i64) = (row.get(0), row.get(1));
        if same_player != player.as_str() || same_amount != amount.get() {
            return Err(rejected(
                protocol::ErrorCode::BetIdConflict,
                "deposit_id already used for another deposit",
            ));
        }
        let (balance, _) = lock_account(&tx, player).await?;
        tx.commit().await?;
        return Ok(balance);
    }
    let (balance, version) = lock_account(&tx, player).await?;
    let new_balance = domain::credit(balance, amount)
        .map_err(|e| rejected(protocol::ErrorCode::LimitExceeded, e.to_string()))?;
    let event = Event::new(
        Uuid::new_v4(),
        now(),
        EventBody::FundsDeposited(FundsDeposited {
            table: None,
            player: player.clone(),
            deposit_id: deposit_id.clone(),
            amount,
            balance: new_balance,
        }),
    );
    let appended = store::append(
        &tx,
        &[new_event(player_stream(player), version + 1, &event)?],
    )
    .await?;
    let position = appended.first().map(|a| a.position).unwrap_or_default();
    set_account(&tx, player, new_balance, version + 1).await?;
    tx.execute(
        "INSERT INTO deposits (deposit_id, player, amount, position) VALUES ($1, $2, $3, $4)",
        &[
            &deposit_id.as_str(),
            &player.as_str(),
            &amount.get(),
            &position,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(new_balance)
}

/// Records a round transition seen on the bus (idempotent by event id) and updates `rounds`.
/// Returns true when the event was new.
pub async fn record_transition(
    store: &Store,
    event: &Event,
    bus_seq: u64,
) -> Result<bool, LedgerError> {
    let (Some(table), Some(round)) = (event.table(), event.round()) else {
        return Ok(false);
    };
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    if tx
        .query_opt("SELECT 1 FROM events WHERE event_id = $1", &[&event.id])
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let stream = round_stream(table, round);
    let version: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) + 1 FROM events WHERE stream = $1",
            &[&stream],
        )
        .await?
        .get(0);
    let seq = i64::try_from(bus_seq).unwrap_or(i64::MAX);
    let round_no = round.get() as i64;
    match &event.body {
        EventBody::RoundOpened(opened) => {
            tx.execute(
                "INSERT INTO rounds (table_id, round, phase, seed_hash, closes_at, bus_seq, opened_at)
                 VALUES ($1, $2, 'open', $3, $4, $5, now())
                 ON CONFLICT (table_id, round) DO NOTHING",
                &[&table.as_str(), &round_no, &opened.seed_hash.as_bytes().as_slice(), &opened.closes_at.as_offset_datetime(), &seq],
            )
            .await?;
        }
        EventBody::BettingClosed(_) => {
            tx.execute(
                "UPDATE rounds SET phase = 'closed', bus_seq = $3, updated_at = now()
                 WHERE table_id = $1 AND round = $2 AND phase = 'open'",
                &[&table.as_str(), &round_no, &seq],
            )
            .await?;
        }
        EventBody::OutcomeDeclared(declared) => {
            tx.execute(
                "UPDATE rounds SET phase = 'resulted', outcome = $3, server_seed = $4, bus_seq = $5, updated_at = now()
                 WHERE table_id = $1 AND round = $2 AND phase IN ('open', 'closed')",
                &[&table.as_str(), &round_no, &i16::from(declared.outcome.get()), &declared.server_seed.as_bytes().as_slice(), &seq],
            )
            .await?;
        }
        EventBody::RoundVoided(_) => {
            tx.execute(
                "UPDATE rounds SET phase = 'voided', bus_seq = $3, updated_at = now()
                 WHERE table_id = $1 AND round = $2 AND phase IN ('open', 'closed')",
                &[&table.as_str(), &round_no, &seq],
            )
            .await?;
        }
        _ => return Ok(false),
    }
    match store::append(&tx, &[new_event(stream, version, event)?]).await {
        Ok(_) => {}
        // Another GS recorded it first.
        Err(StoreError::Conflict(_)) => return Ok(false),
        Err(error) => return Err(error.into()),
    }
    tx.commit().await?;
    Ok(true)
}

/// A bet as GS received it.
#[derive(Debug, Clone)]
pub struct BetRequest {
    pub bet_id: domain::BetId,
    pub player: PlayerId,
    pub table: TableId,
    pub round: RoundId,
    pub selection: Selection,
    pub amount: Money,
}

impl BetRequest {
    fn fingerprint(&self) -> Vec<u8> {
        let selection = serde_json::to_string(&self.selection).unwrap_or_default();
        let text = format!(
            "{}|{}|{}|{}|{}",
            self.player,
            self.table,
            self.round.get(),
            selection,
            self.amount.get()
        );
        Sha256::digest(text.as_bytes()).to_vec()
    }
}

/// Where a round stands for betting, if GS has seen it.
pub async fn betting_window(
    store: &Store,
    table: &TableId,
    round: RoundId,
) -> Result<Option<(Phase, BettingWindow)>, LedgerError> {
    let client = store.client().await?;
    let row = client
        .query_opt(
            "SELECT phase, closes_at FROM rounds WHERE table_id = $1 AND round = $2",
            &[&table.as_str(), &(round.get() as i64)],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let phase: String = row.get(0);
    let closes_at: Option<time::OffsetDateTime> = row.get(1);
    let phase = match phase.as_str() {
        "open" => Phase::Open,
        "closed" => Phase::Closed,
        "resulted" => Phase::Resulted,
        "settled" => Phase::Settled,
        _ => Phase::Voided,
    };
    let closes_at = closes_at
        .and_then(|t| Timestamp::from_offset_datetime(t).ok())
        .unwrap_or(Timestamp::UNIX_EPOCH);
    Ok(Some((phase, BettingWindow { phase, closes_at })))
}

/// Accepts a bet: checks the round, limits and funds, debits the stake and appends
/// `bet_placed`, in one transaction. A retried `bet_id` gets the first answer's balance.
pub async fn place_bet(
    store: &Store,
    bet: &BetRequest,
    limits: &TableLimits,
) -> Result<Money, LedgerError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let fingerprint = bet.fingerprint();
    let bet_uuid = *bet.bet_id.as_uuid();
    if let Some(row) = tx
        .query_opt(
            "SELECT b.request_fingerprint, e.data FROM bets b JOIN events e ON e.position = b.placed_position WHERE b.bet_id = $1",
            &[&bet_uuid],
        )
        .await?
    {
        let (first_fingerprint, data): (Option<Vec<u8>>, Vec<u8>) = (row.get(0), row.get(1));
        if first_fingerprint.as_deref() != Some(fingerprint.as_slice()) {
            return Err(rejected(protocol::ErrorCode::BetIdConflict, "this bet_id was used for a different bet"));
        }
        let first = protocol::decode_event(&data).map_err(|e| LedgerError::Encoding(e.to_string()))?;
        return match first.body {
            EventBody::BetPlaced(placed) => Ok(placed.balance),
            _ => Err(LedgerError::Encoding("bet row points at a non-bet event".into())),
        };
    }
    let row = tx
        .query_opt(
            "SELECT phase, closes_at FROM rounds WHERE table_id = $1 AND round = $2",
            &[&bet.table.as_str(), &(bet.round.get() as i64)],
        )
        .await?;
    let window = match row {
        Some(row) if row.get::<_, String>(0) == "open" => {
            let closes_at: Option<time::OffsetDateTime> = row.get(1);
            closes_at
                .and_then(|t| Timestamp::from_offset_datetime(t).ok())
                .map(|closes_at| BettingWindow {
                    phase: Phase::Open,
                    closes_at,
                })
        }
        _ => None,
    };
    let (balance, version) = lock_account(&tx, &bet.player).await?;
    let staked: i64 = tx
        .query_one(
            "SELECT coalesce(sum(amount), 0)::bigint FROM bets WHERE table_id = $1 AND round = $2 AND player = $3",
            &[&bet.table.as_str(), &(bet.round.get() as i64), &bet.player.as_str()],
        )
        .await?
        .get(0);
    let staked = Money::new(staked).unwrap_or(Money::MAX);
    let new_balance = domain::validate_bet(window, now(), bet.amount, limits, staked, balance)
        .map_err(|rejection| rejected(rejection_code(&rejection), rejection.to_string()))?;
    let event = Event::new(
        Uuid::new_v4(),
        now(),
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
    let appended = store::append(
        &tx,
        &[new_event(player_stream(&bet.player), version + 1, &event)?],
    )
    .await?;
    let position = appended.first().map(|a| a.position).unwrap_or_default();
    set_account(&tx, &bet.player, new_balance, version + 1).await?;
    let selection =
        serde_json::to_string(&bet.selection).map_err(|e| LedgerError::Encoding(e.to_string()))?;
    tx.execute(
        "INSERT INTO bets (bet_id, table_id, round, player, selection, amount, placed_position, request_fingerprint)
         VALUES ($1, $2, $3, $4, $5::text::jsonb, $6, $7, $8)",
        &[&bet_uuid, &bet.table.as_str(), &(bet.round.get() as i64), &bet.player.as_str(), &selection, &bet.amount.get(), &position, &fingerprint],
    )
    .await?;
    tx.commit().await?;
    Ok(new_balance)
}

fn rejection_code(rejection: &domain::BetRejection) -> protocol::ErrorCode {
    match rejection.code() {
        "BETTING_CLOSED" => protocol::ErrorCode::BettingClosed,
        "INSUFFICIENT_FUNDS" => protocol::ErrorCode::InsufficientFunds,
        _ => protocol::ErrorCode::LimitExceeded,
    }
}

/// Settles a resulted round exactly once: claims it (a racer blocks on the row, then finds
/// nothing to claim), pays every bet, appends `bet_settled` per bet and `round_settled`.
/// Returns false when there was nothing to claim (settled already, or not resulted).
pub async fn settle_round(
    store: &Store,
    table: &TableId,
    round: RoundId,
) -> Result<bool, LedgerError> {
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let round_no = round.get() as i64;
    let Some(claimed) = tx
        .query_opt(
            "UPDATE rounds SET phase = 'settled', updated_at = now()
             WHERE table_id = $1 AND round = $2 AND phase = 'resulted' RETURNING outcome",
            &[&table.as_str(), &round_no],
        )
        .await?
    else {
        return Ok(false);
    };
    let outcome: Option<i16> = claimed.get(0);
    let outcome = outcome
        .and_then(|o| u8::try_from(o).ok())
        .and_then(|o| domain::Outcome::new(o).ok())
        .ok_or_else(|| StoreError::Corrupt {
            position: None,
            reason: "resulted round without an outcome".into(),
        })?;
    let rows = tx
        .query(
            "SELECT bet_id, player, selection::text, amount FROM bets
             WHERE table_id = $1 AND round = $2 AND status = 'accepted' ORDER BY player, bet_id",
            &[&table.as_str(), &round_no],
        )
        .await?;
    let mut events = Vec::with_capacity(rows.len() + 1);
    let mut staked = Money::ZERO;
    let mut paid = Money::ZERO;
    let mut current: Option<(PlayerId, Money, i32)> = None;
    let mut settled_bets: Vec<(Uuid, i64)> = Vec::with_capacity(rows.len());
    for row in &rows {
        let bet_uuid: Uuid = row.get(0);
        let player = PlayerId::parse(row.get::<_, &str>(1)).map_err(|e| StoreError::Corrupt {
            position: None,
            reason: e.to_string(),
        })?;
        let selection: Selection = serde_json::from_str(row.get::<_, &str>(2))
            .map_err(|e| LedgerError::Encoding(e.to_string()))?;
        let amount = Money::new(row.get(3)).map_err(|e| StoreError::Corrupt {
            position: None,
            reason: e.to_string(),
        })?;
        let payout = selection
            .payout(amount, outcome)
            .map_err(|e| LedgerError::Encoding(e.to_string()))?;
        // Accounts are locked in player order (rows are sorted by player), as every writer does.
        if current.as_ref().map(|(p, _, _)| p) != Some(&player) {
            if let Some((done, balance, version)) = current.take() {
                set_account(&tx, &done, balance, version).await?;
            }
            let (balance, version) = lock_account(&tx, &player).await?;
            current = Some((player.clone(), balance, version));
        }
        let Some((_, balance, version)) = current.as_mut() else {
            continue;
        };
        *balance =
            domain::credit(*balance, payout).map_err(|e| LedgerError::Encoding(e.to_string()))?;
        *version += 1;
        staked = staked.checked_add(amount).unwrap_or(Money::MAX);
        paid = paid.checked_add(payout).unwrap_or(Money::MAX);
        settled_bets.push((bet_uuid, payout.get()));
        let event = Event::new(
            Uuid::new_v4(),
            now(),
            EventBody::BetSettled(BetSettled {
                table: table.clone(),
                round,
                bet_id: domain::BetId::from_uuid(bet_uuid),
                player: player.clone(),
                payout,
                balance: *balance,
            }),
        );
        events.push(new_event(player_stream(&player), *version, &event)?);
    }
    if let Some((done, balance, version)) = current.take() {
        set_account(&tx, &done, balance, version).await?;
    }
    let stream = round_stream(table, round);
    let version: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) + 1 FROM events WHERE stream = $1",
            &[&stream],
        )
        .await?
        .get(0);
    let summary = Event::new(
        Uuid::new_v4(),
        now(),
        EventBody::RoundSettled(RoundSettled {
            table: table.clone(),
            round,
            bets: rows.len() as u64,
            staked,
            paid,
        }),
    );
    events.push(new_event(stream, version, &summary)?);
    store::append(&tx, &events).await?;
    let (ids, payouts): (Vec<Uuid>, Vec<i64>) = settled_bets.into_iter().unzip();
    tx.execute(
        "UPDATE bets SET status = 'settled', payout = u.payout FROM unnest($1::uuid[], $2::bigint[]) AS u(bet_id, payout)
         WHERE bets.bet_id = u.bet_id",
        &[&ids, &payouts],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

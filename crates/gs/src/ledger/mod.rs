//! GS's writes to the event store: each one transaction that appends events and updates the
//! read models they change (`docs/contract/event-store.md`). Money moves only here.
//!
//! Streams: `round-<table>-<round>` (the round's transitions and `round_settled`),
//! `player-<id>` (deposits and the player's bet events; its version is `accounts.version`).

use bytes::Bytes;
use domain::{BettingWindow, Money, Phase, PlayerId, RoundId, Selection, TableId, Timestamp};
use protocol::{DepositId, Event, EventBody, FundsDeposited};
use store::PooledTransaction as Transaction;
use store::{NewEvent, Store, StoreError};
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::clock::now;

mod placement;
mod settlement;
mod stages;

pub use placement::{BetOutcome, place_bets, place_bets_watched};
pub use settlement::{ROUND_BETS, Refund, Settlement, refund_round, settle_round};

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
    /// The connection failed or did not answer after `COMMIT` was sent: the batch may stand or
    /// not. Its bets are answered `TIMEOUT` (retry with the same `bet_id`), never "not recorded".
    #[error("the outcome of the commit is unknown: {0}")]
    CommitUnknown(StoreError),
    /// A concurrent transaction inserted one of the batch's bets first; the batch is retried.
    #[error("a concurrent batch recorded one of these bets first")]
    Raced,
}

impl LedgerError {
    /// Whether the database is down or too slow (the client is told `BETTING_UNAVAILABLE`).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, LedgerError::Store(e) if e.is_unavailable())
    }

    fn is_follow_on(&self) -> bool {
        matches!(self, LedgerError::Store(e) if e.is_follow_on())
    }
}

/// Two statements pipelined in one transaction, taken together. When one fails, the other
/// (if it ran after it) is answered "current transaction is aborted" (`25P02`); the error
/// returned is the cause, whichever of the two it was, so that a conflict is retried as a
/// conflict and an outage handled as an outage. Nest it for more than two.
pub(crate) fn pipelined<A, B>(
    a: Result<A, impl Into<LedgerError>>,
    b: Result<B, impl Into<LedgerError>>,
) -> Result<(A, B), LedgerError> {
    match (a.map_err(Into::into), b.map_err(Into::into)) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(a), Err(b)) if a.is_follow_on() && !b.is_follow_on() => Err(b),
        (Err(a), _) => Err(a),
        (_, Err(b)) => Err(b),
    }
}

pub(crate) fn placement_code(rejection: &domain::BetRejection) -> protocol::ErrorCode {
    match rejection.code() {
        "BETTING_CLOSED" => protocol::ErrorCode::BettingClosed,
        "INSUFFICIENT_FUNDS" => protocol::ErrorCode::InsufficientFunds,
        _ => protocol::ErrorCode::LimitExceeded,
    }
}

impl From<tokio_postgres::Error> for LedgerError {
    fn from(error: tokio_postgres::Error) -> Self {
        LedgerError::Store(StoreError::from(error))
    }
}

pub(crate) fn rejected(code: protocol::ErrorCode, message: impl Into<String>) -> LedgerError {
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

/// The subject the outbox publishes a stored GS event on — `protocol::subject_for` of the
/// event — from its row's `type` and `stream` columns alone, the inverse of [`player_stream`]
/// and [`round_stream`], so that the outbox does not decode every event it publishes: wallet
/// events on `player-<p>` go to `player.<p>.wallet`, `round_settled` on `round-<t>-<n>` to
/// `table.<t>.result`.
///
/// `Ok(None)` for a kind GS does not publish (GMS's transitions are on the bus already, an
/// operator's switch is stored only); `Err` for a GS kind on a stream that does not fit it,
/// which GS never writes.
pub fn outbox_subject(kind: &str, stream: &str) -> Result<Option<String>, String> {
    use protocol::EventKind;
    let kind: EventKind = kind
        .parse()
        .map_err(|_| format!("unknown event type {kind:?}"))?;
    let misfit = || format!("a {kind} event on stream {stream:?}");
    let subject = match kind {
        EventKind::BetPlaced
        | EventKind::BetSettled
        | EventKind::BetRefunded
        | EventKind::FundsDeposited => {
            let player = stream
                .strip_prefix("player-")
                .and_then(|p| PlayerId::parse(p).ok())
                .ok_or_else(misfit)?;
            protocol::subject::player_wallet_subject(&player)
        }
        EventKind::RoundSettled => {
            let table = stream
                .strip_prefix("round-")
                .and_then(|rest| rest.rsplit_once('-'))
                .filter(|(_, round)| round.parse::<u64>().is_ok_and(|r| r >= 1))
                .and_then(|(table, _)| TableId::parse(table).ok())
                .ok_or_else(misfit)?;
            protocol::subject::table_result_subject(&table)
        }
        EventKind::RoundOpened
        | EventKind::BettingClosed
        | EventKind::OutcomeDeclared
        | EventKind::RoundVoided
        | EventKind::BettingSwitched => return Ok(None),
    };
    Ok(Some(subject))
}

/// Yields once, so that the connection's task sends the statements this task has just issued
/// before the task goes on to CPU work (encoding) meant to overlap with them. Woken from this
/// worker, the connection's task sits in the worker's LIFO slot, which other workers do not
/// steal, until this task yields: without it the statements are not even sent until the
/// encoding ends (ADR 0014, amendment of session 15).
pub(crate) async fn let_statements_go() {
    tokio::task::yield_now().await;
}

/// The namespace of [`bet_placed_id`] (a fixed, random UUID: ADR 0016).
const BET_PLACED_NAMESPACE: Uuid = Uuid::from_u128(0x6c1f_27d4_93b8_4c0e_a5f2_0d8e_61b7_c349);

/// The id of the `bet_placed` event that records bet `bet_id`: a UUIDv5 of the bet id in GS's
/// namespace, so one bet id can be placed once by the events' own unique `event_id`
/// (`docs/contract/event-store.md`: "an idempotency key with no time window"), and a retry finds
/// its first answer by that id (ADR 0016).
pub fn bet_placed_id(bet_id: &domain::BetId) -> Uuid {
    Uuid::new_v5(&BET_PLACED_NAMESPACE, bet_id.as_uuid().as_bytes())
}

pub(crate) fn new_event(
    stream: String,
    version: i32,
    event: &Event,
) -> Result<NewEvent, LedgerError> {
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
pub(crate) async fn lock_account(
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

/// Writes new balances and stream versions of many accounts in one set-based statement (the
/// rows are already locked by the caller, in player order).
pub(crate) async fn write_wallets<'a>(
    tx: &Transaction<'_>,
    wallets: impl Iterator<Item = (&'a str, Money, i32)>,
    at: Timestamp,
) -> Result<(), LedgerError> {
    let (mut players, mut balances, mut versions) = (Vec::new(), Vec::new(), Vec::new());
    for (player, balance, version) in wallets {
        players.push(player);
        balances.push(balance.get());
        versions.push(version);
    }
    store::prepared::execute(
        tx,
        "UPDATE accounts SET balance = u.b, version = u.v, updated_at = $4 \
         FROM unnest($1::text[], $2::int8[], $3::int4[]) AS u(p, b, v) \
         WHERE accounts.player = u.p",
        &[
            (&players, Type::TEXT_ARRAY),
            (&balances, Type::INT8_ARRAY),
            (&versions, Type::INT4_ARRAY),
            (&at.as_offset_datetime(), Type::TIMESTAMPTZ),
        ],
    )
    .await?;
    Ok(())
}

async fn set_account(
    tx: &Transaction<'_>,
    player: &PlayerId,
    balance: Money,
    version: i32,
    at: Timestamp,
) -> Result<(), LedgerError> {
    tx.execute(
        "UPDATE accounts SET balance = $2, version = $3, updated_at = $4 WHERE player = $1",
        &[
            &player.as_str(),
            &balance.get(),
            &version,
            &at.as_offset_datetime(),
        ],
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
    set_account(&tx, player, new_balance, version + 1, event.at).await?;
    tx.execute(
        "INSERT INTO deposits (deposit_id, player, amount, position, recorded_at) VALUES ($1, $2, $3, $4, $5)",
        &[
            &deposit_id.as_str(),
            &player.as_str(),
            &amount.get(),
            &position,
            &event.at.as_offset_datetime(),
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
    let version = store::next_version(&*tx, &stream).await?;
    let seq = i64::try_from(bus_seq).unwrap_or(i64::MAX);
    let round_no = round.get() as i64;
    let at = event.at.as_offset_datetime();
    match &event.body {
        EventBody::RoundOpened(opened) => {
            tx.execute(
                "INSERT INTO rounds (table_id, round, phase, seed_hash, closes_at, bus_seq, opened_at, updated_at)
                 VALUES ($1, $2, 'open', $3, $4, $5, $6, $6)
                 ON CONFLICT (table_id, round) DO NOTHING",
                &[&table.as_str(), &round_no, &opened.seed_hash.as_bytes().as_slice(), &opened.closes_at.as_offset_datetime(), &seq, &at],
            )
            .await?;
        }
        EventBody::BettingClosed(_) => {
            tx.execute(
                "UPDATE rounds SET phase = 'closed', bus_seq = $3, updated_at = $4
                 WHERE table_id = $1 AND round = $2 AND phase = 'open'",
                &[&table.as_str(), &round_no, &seq, &at],
            )
            .await?;
        }
        EventBody::OutcomeDeclared(declared) => {
            tx.execute(
                "UPDATE rounds SET phase = 'resulted', outcome = $3, server_seed = $4, bus_seq = $5, updated_at = $6
                 WHERE table_id = $1 AND round = $2 AND phase IN ('open', 'closed')",
                &[&table.as_str(), &round_no, &i16::from(declared.outcome.get()), &declared.server_seed.as_bytes().as_slice(), &seq, &at],
            )
            .await?;
        }
        EventBody::RoundVoided(_) => {
            tx.execute(
                "UPDATE rounds SET phase = 'voided', bus_seq = $3, updated_at = $4
                 WHERE table_id = $1 AND round = $2 AND phase IN ('open', 'closed')",
                &[&table.as_str(), &round_no, &seq, &at],
            )
            .await?;
        }
        _ => return Ok(false),
    }
    let mut recorded = new_event(stream, version, event)?;
    recorded.metadata = TransitionMetadata { bus_seq }.encode();
    match store::append(&tx, &[recorded]).await {
        Ok(_) => {}
        // Another GS recorded it first.
        Err(StoreError::Conflict(_)) => return Ok(false),
        Err(error) => return Err(error.into()),
    }
    tx.commit().await?;
    Ok(true)
}

/// The `metadata` of a transition GS recorded: where it was on the `TABLES` stream, so the
/// `rounds` read model (its `bus_seq`) can be rebuilt from the events alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransitionMetadata {
    pub bus_seq: u64,
}

impl TransitionMetadata {
    fn encode(self) -> Bytes {
        rmp_serde::to_vec_named(&self)
            .map(Bytes::from)
            .unwrap_or_default()
    }

    /// Reads the metadata of a recorded transition (`None` for empty or foreign metadata).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        rmp_serde::from_slice(bytes).ok()
    }
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
    /// What makes two requests with one `bet_id` the same bet (a retry) rather than a
    /// conflict: player, table, round, selection and amount.
    fn content(&self) -> BetContent<'_> {
        (
            &self.player,
            &self.table,
            self.round,
            &self.selection,
            self.amount,
        )
    }

    /// The `bet_placed` fields recording this bet, with the balance after it.
    pub fn placed(&self, balance: Money) -> protocol::BetPlaced {
        protocol::BetPlaced {
            table: self.table.clone(),
            round: self.round,
            bet_id: self.bet_id,
            player: self.player.clone(),
            selection: self.selection,
            amount: self.amount,
            balance,
        }
    }

    /// Whether `other` asks for the same bet (a retry), not just with the same id.
    pub(crate) fn is_same_bet_as(&self, other: &BetRequest) -> bool {
        self.content() == other.content()
    }

    /// Whether `placed` recorded this very bet (so this request is a retry of it).
    pub(crate) fn is_placed_as(&self, placed: &protocol::BetPlaced) -> bool {
        let recorded = (
            &placed.player,
            &placed.table,
            placed.round,
            &placed.selection,
            placed.amount,
        );
        self.bet_id == placed.bet_id && self.content() == recorded
    }
}

/// See [`BetRequest::content`].
type BetContent<'a> = (&'a PlayerId, &'a TableId, RoundId, &'a Selection, Money);

/// Which of the rounds `bets` name GS has seen (recorded as opened, in any phase since).
pub async fn known_rounds<'a>(
    store: &Store,
    bets: impl Iterator<Item = &'a BetRequest>,
) -> Result<std::collections::HashSet<(String, u64)>, LedgerError> {
    let wanted: std::collections::BTreeSet<(&str, i64)> = bets
        .map(|b| (b.table.as_str(), b.round.get() as i64))
        .collect();
    let (tables, rounds): (Vec<&str>, Vec<i64>) = wanted.into_iter().unzip();
    let client = store.client().await?;
    let rows = store
        .timed(
            "read rounds",
            async {
                Ok(client
                    .query(
                        "SELECT r.table_id, r.round FROM rounds r \
                         JOIN unnest($1::text[], $2::int8[]) AS u(t, n) ON r.table_id = u.t AND r.round = u.n",
                        &[&tables, &rounds],
                    )
                    .await?)
            },
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1).max(0) as u64))
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{EventKind, Producer};

    /// The published example of an event of `kind` (`schemas/examples`).
    fn example(kind: EventKind) -> Event {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/examples");
        let path = format!("{dir}/event.{}.json", kind.as_str());
        let text = std::fs::read_to_string(&path).expect(&path);
        serde_json::from_str(&text).expect(&path)
    }

    /// The stream GS stores an event of this kind on (as `place_bets`, the settlement, the
    /// refunds and deposits do).
    fn stream_of(event: &Event) -> String {
        match event.player() {
            Some(player) => player_stream(player),
            None => round_stream(
                event.table().expect("a round event"),
                event.round().expect("a round event"),
            ),
        }
    }

    #[test]
    fn the_outbox_subject_from_the_columns_is_the_events_own() {
        for kind in EventKind::ALL {
            if kind == EventKind::BettingSwitched {
                assert_eq!(outbox_subject(kind.as_str(), "operator"), Ok(None));
                continue;
            }
            let event = example(kind);
            let expected = (kind.producer() == Producer::Gs)
                .then(|| protocol::subject_for(&event))
                .flatten();
            assert_eq!(
                outbox_subject(kind.as_str(), &stream_of(&event)),
                Ok(expected.clone()),
                "{kind}"
            );
            assert_eq!(
                expected.is_some(),
                kind.producer() == Producer::Gs,
                "{kind}"
            );
        }
        // Table ids hold dashes: the round is what follows the last one.
        assert_eq!(
            outbox_subject("round_settled", "round-vip-roulette-2-17"),
            Ok(Some("table.vip-roulette-2.result".into()))
        );
    }

    #[test]
    fn a_gs_event_on_a_stream_that_does_not_fit_it_is_refused() {
        for (kind, stream) in [
            ("bet_placed", "round-roulette-1-3"),
            ("bet_settled", "player-"),
            ("funds_deposited", "player-a.b"),
            ("bet_refunded", "operator"),
            ("round_settled", "player-alice"),
            ("round_settled", "round-roulette"),
            ("round_settled", "round-roulette-1-0"),
            ("round_settled", "round-roulette-1-x"),
            ("round_settled", "round--3"),
        ] {
            assert!(outbox_subject(kind, stream).is_err(), "{kind} on {stream}");
        }
        assert!(outbox_subject("bet_voided", "player-alice").is_err());
    }
}

//! Reading the Postgres log for the audit: one read-only, repeatable-read transaction, so the
//! events, the head row and the `accounts` read model are one consistent snapshot; the events
//! streamed by a binary `COPY … TO STDOUT` (one statement, not a query per page or per event),
//! and the chain verified on the reading task while the rebuild decodes on another.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;

use crate::model::Row;
use crate::report::{Check, Violation};
use crate::rules::GENESIS;
use crate::wire::Time;

/// Rows per batch handed from the reading task to the rebuild: large enough that the hand-over
/// costs nothing per row, small enough that the two tasks overlap.
pub const BATCH_ROWS: usize = 2048;

/// Batches in flight between the reading task and the rebuild. With [`BATCH_ROWS`] rows of a
/// few hundred bytes, at most a few MB wait: the reader stops when the rebuild falls behind.
pub const BATCHES_IN_FLIGHT: usize = 4;

/// A published `POSITION:HASH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub position: i64,
    pub hash: [u8; 32],
}

impl std::str::FromStr for Checkpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (position, hash) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not POSITION:HASH"))?;
        let position: i64 = position
            .parse()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| format!("{position:?} is not a position (1 or more)"))?;
        let hash = hex::decode(hash)
            .ok()
            .and_then(|h| <[u8; 32]>::try_from(h).ok())
            .ok_or_else(|| format!("{hash:?} is not 64 hex digits"))?;
        Ok(Checkpoint { position, hash })
    }
}

impl std::fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.position, hex::encode(self.hash))
    }
}

/// What the reading task sends: first the snapshot, then rows, then the end.
#[derive(Debug)]
pub enum Piece {
    /// Where the writers stood in the snapshot.
    Snapshot(Snapshot),
    /// Rows in position order, and what the chain check found among them.
    Rows(Vec<Row>, Vec<Violation>),
    /// The end of the log (as of the snapshot) and what was read after it.
    End(End),
}

#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// The head row's position.
    pub head: i64,
    /// The last position the outbox had published.
    pub outbox: i64,
    /// The last `TABLES` sequence any GS had recorded.
    pub gs_cursor: u64,
}

#[derive(Debug)]
pub struct End {
    /// Events read.
    pub events: u64,
    /// The last position verified and its hash.
    pub head: (i64, [u8; 32]),
    pub checkpoints_verified: u64,
    /// The `accounts` read model in the same snapshot (player, balance), when it was read
    /// (only where wallets are rebuilt: an unscoped replay from position 1).
    pub accounts: Option<Vec<(String, i64)>>,
    /// Chain findings at the end (head row, checkpoints beyond the head).
    pub violations: Vec<Violation>,
}

/// Why the log could not be read (as opposed to what it says).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading the event store: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("reading the event store: {0}")]
    Store(#[from] store::StoreError),
    #[error("reading the event store's COPY output: {0}")]
    Copy(String),
    #[error("reading the accounts: {0}")]
    Accounts(String),
}

/// Where the reading starts.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// The first position read (1, or the one after `--from-checkpoint`).
    pub from: i64,
    /// The hash the first row chains to.
    pub prev: [u8; 32],
}

/// The chain check: gapless positions, every hash recomputed, and the published checkpoints.
/// (Every stream's versions being consecutive is checked by the rebuild, `Auditor`, which
/// holds each player's entry anyway.)
struct Chain {
    prev: [u8; 32],
    expected: i64,
    checkpoints: BTreeMap<i64, [u8; 32]>,
    checkpoints_verified: u64,
}

impl Chain {
    fn check(&mut self, row: &Row, found: &mut Vec<Violation>) {
        if row.position != self.expected {
            found.push(
                Violation::new(
                    Check::Chain,
                    format!("position {}", self.expected),
                    format!(
                        "position {} next (positions {}..={} missing)",
                        row.position,
                        self.expected,
                        row.position - 1
                    ),
                )
                .at(self.expected),
            );
        } else if let Some(violation) = row.hash_violation() {
            found.push(violation);
        }
        // Go on from what is stored, so one altered row is one violation, not one per row after.
        self.prev = row.hash;
        self.expected = row.position + 1;
        if let Some(published) = self.checkpoints.remove(&row.position) {
            if published == row.hash {
                self.checkpoints_verified += 1;
            } else {
                found.push(
                    Violation::new(
                        Check::Checkpoint,
                        format!("the published hash {}", hex::encode(published)),
                        format!("hash {}", hex::encode(row.hash)),
                    )
                    .at(row.position),
                );
            }
        }
    }
}

/// The reader's connections: one streams the events; the other, when the wallets are to be
/// compared with it, reads the `accounts` read model in the same snapshot meanwhile (an
/// exported snapshot), so that 100,000 balances are not read after a million events but while
/// they stream.
#[derive(Debug)]
pub struct Clients {
    pub events: tokio_postgres::Client,
    pub accounts: Option<tokio_postgres::Client>,
}

/// Reads the `accounts` read model (player, balance) in the snapshot `snapshot` exported by
/// another transaction, which must stay open until this has begun.
async fn read_accounts(
    client: tokio_postgres::Client,
    snapshot: String,
) -> Result<Vec<(String, i64)>, SourceError> {
    // An exported snapshot's id is hex digits and dashes (`0000000A-0000001B-1`); it is
    // formatted into the statement because `SET TRANSACTION SNAPSHOT` takes no parameters.
    if !snapshot.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        return Err(SourceError::Accounts(format!(
            "the exported snapshot {snapshot:?} is not a snapshot id"
        )));
    }
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot}'"
        ))
        .await?;
    let accounts = client
        .query(
            "SELECT player, balance FROM public.accounts ORDER BY player",
            &[],
        )
        .await?
        .iter()
        .map(|row| Ok((row.try_get::<_, String>(0)?, row.try_get::<_, i64>(1)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    client.batch_execute("COMMIT").await?;
    Ok(accounts)
}

/// Reads the log from `start` to the head in one snapshot, sending rows to `out`; returns
/// when the log is read or the receiver is gone.
pub async fn read(
    clients: Clients,
    start: Start,
    checkpoints: &[Checkpoint],
    times: bool,
    out: mpsc::Sender<Piece>,
) -> Result<(), SourceError> {
    let client = clients.events;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let (head_position, head_hash) = store::head(&client).await?;
    let cursors = client
        .query_one(
            "SELECT (SELECT coalesce(max(position), 0) FROM public.outbox_cursor), \
                    (SELECT coalesce(max(stream_seq), 0) FROM public.gs_cursor)",
            &[],
        )
        .await?;
    let snapshot = Snapshot {
        head: head_position,
        outbox: cursors.try_get(0)?,
        gs_cursor: u64::try_from(cursors.try_get::<_, i64>(1)?).unwrap_or(0),
    };
    if out.send(Piece::Snapshot(snapshot)).await.is_err() {
        return Ok(());
    }
    // The accounts of this same snapshot, read on the other connection while the events
    // stream on this one (the task is aborted if this returns early).
    let accounts = match clients.accounts {
        Some(accounts_client) => {
            let exported: String = client
                .query_one("SELECT pg_export_snapshot()", &[])
                .await?
                .try_get(0)?;
            Some(AbortOnDropHandle::new(tokio::spawn(read_accounts(
                accounts_client,
                exported,
            ))))
        }
        None => None,
    };
    let mut found = Vec::new();
    let mut chain = Chain {
        prev: start.prev,
        expected: start.from,
        checkpoints: checkpoints.iter().map(|c| (c.position, c.hash)).collect(),
        checkpoints_verified: 0,
    };
    let messages =
        store::copy_events(&client, crate::copy::COLUMNS, start.from, head_position).await?;
    let mut messages = std::pin::pin!(messages);
    let mut reader = crate::copy::Reader::default();
    let mut batch = Vec::with_capacity(BATCH_ROWS);
    let mut events = 0u64;
    while let Some(message) = messages.next().await {
        let Some(mut row) = reader.row(message?).map_err(SourceError::Copy)? else {
            continue;
        };
        row.prev_hash = chain.prev;
        // Read here, on the reading task, so the merge finds it ready.
        if times {
            row.at = crate::wire::glance_at(&row.data).unwrap_or(Time::ZERO);
        }
        chain.check(&row, &mut found);
        events += 1;
        batch.push(row);
        if batch.len() == BATCH_ROWS {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
            if out
                .send(Piece::Rows(full, std::mem::take(&mut found)))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    }
    if !batch.is_empty() || !found.is_empty() {
        let _ = out
            .send(Piece::Rows(batch, std::mem::take(&mut found)))
            .await;
    }
    // The end: the last position is the head's, and the head's hash is the last event's.
    if chain.expected - 1 != head_position && head_position >= start.from {
        found.push(
            Violation::new(
                Check::Chain,
                format!("events up to the head's position {head_position}"),
                format!("the last event at {}", chain.expected - 1),
            )
            .at(chain.expected),
        );
    }
    if head_position >= start.from && head_hash != chain.prev {
        found.push(
            Violation::new(
                Check::Chain,
                format!("the head row's hash {}", hex::encode(head_hash)),
                format!("the last event's hash {}", hex::encode(chain.prev)),
            )
            .at(head_position),
        );
    }
    for (position, hash) in std::mem::take(&mut chain.checkpoints) {
        found.push(
            Violation::new(
                Check::Checkpoint,
                format!(
                    "an event at {position} with the published hash {}",
                    hex::encode(hash)
                ),
                format!("the log ends at {head_position}"),
            )
            .at(position),
        );
    }
    // Joined before this transaction ends: the export lives only as long as it does.
    let accounts = match accounts {
        Some(task) => Some(
            task.await
                .map_err(|e| SourceError::Accounts(e.to_string()))??,
        ),
        None => None,
    };
    client.batch_execute("COMMIT").await?;
    let _ = out
        .send(Piece::End(End {
            events,
            head: (chain.expected - 1, chain.prev),
            checkpoints_verified: chain.checkpoints_verified,
            accounts,
            violations: found,
        }))
        .await;
    Ok(())
}

/// Where a replay from a published checkpoint starts: the row at the checkpoint must still
/// have the published hash (it is read, not trusted).
pub async fn start_at(
    client: &tokio_postgres::Client,
    checkpoint: Option<Checkpoint>,
) -> Result<(Start, Option<Violation>), SourceError> {
    let Some(checkpoint) = checkpoint else {
        return Ok((
            Start {
                from: 1,
                prev: GENESIS,
            },
            None,
        ));
    };
    let stored: Option<Vec<u8>> = client
        .query_opt(
            "SELECT hash FROM public.events WHERE position = $1",
            &[&checkpoint.position],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    let violation = match &stored {
        Some(hash) if hash.as_slice() == checkpoint.hash => None,
        Some(hash) => Some(
            Violation::new(
                Check::Checkpoint,
                format!("the published hash {}", hex::encode(checkpoint.hash)),
                format!("hash {}", hex::encode(hash)),
            )
            .at(checkpoint.position),
        ),
        None => Some(
            Violation::new(
                Check::Checkpoint,
                format!("an event at {} (the checkpoint)", checkpoint.position),
                "no such event",
            )
            .at(checkpoint.position),
        ),
    };
    Ok((
        Start {
            from: checkpoint.position + 1,
            prev: checkpoint.hash,
        },
        violation,
    ))
}

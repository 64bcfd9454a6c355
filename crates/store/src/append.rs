//! Appending events: one pipelined `INSERT` (at most [`PIPELINED_MAX`] events) or one binary
//! `COPY` (more) per batch, positions taken from the head row, hashes
//! chained in Rust (`docs/contract/event-store.md`, ADR 0032).
//!
//! # How a write transaction is shaped
//!
//! ```text
//! BEGIN
//!   -- the caller's own work first: read models, wallet rows locked in player order, e.g.
//!   SELECT … FROM accounts … ORDER BY player FOR UPDATE
//!   UPDATE accounts … ;
//!   append(&tx, events)   -- locks the head row LAST, copies the rows in, moves the head
//! COMMIT
//! ```
//!
//! The head row is the one point every writer passes, so it is taken late, to hold it for as
//! short a time as possible; and since it is held until commit, transactions commit in position
//! order and readers never see a gap. A rolled-back transaction gives its positions back.
//!
//! "Append if not already there": the store does not skip duplicates silently, because an
//! event whose `event_id` is stored already is either a retry (answer with the first answer)
//! or a defect. Idempotent callers decide which events are new in the same transaction — GS
//! looks bets up by id, or lets the events' unique `event_id` (derived from the bet id) trip
//! and judges the batch again (ADR 0014, 0016) — and append only those. A
//! [`Conflict::DuplicateEvent`] from `append` therefore means a concurrent duplicate slipped
//! past that check: roll back and retry, and the retry finds the row.

use std::collections::{HashMap, HashSet};

use crate::PooledTransaction as Transaction;
use bytes::Bytes;
use time::OffsetDateTime;
use tokio_postgres::binary_copy::BinaryCopyInWriter;

use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use crate::error::{Conflict, StoreError};
use crate::hash::{MAX_FIELD_LEN, chain_hash};
use crate::read::parse_head;

/// The channel the append transaction notifies on commit (payload: the new head position), so
/// tailers wake up at once instead of waiting for their next poll.
pub const EVENTS_CHANNEL: &str = "croupier_events";

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Idempotency key: unique across the whole store, forever.
    pub event_id: Uuid,
    /// e.g. `player-alice`, `round-roulette-1-42`.
    pub stream: String,
    /// The version this event takes in its stream: the stream's current version + 1 (1 for a new
    /// stream), and consecutive for several events of one stream in a batch. Anything else is a
    /// [`Conflict::VersionConflict`].
    pub version: i32,
    /// The event's type (the `type` column), e.g. `bet_placed`.
    pub kind: String,
    /// MessagePack of the event object; opaque here.
    pub data: Bytes,
    /// A MessagePack map, or empty.
    pub metadata: Bytes,
}

/// Where an appended event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub position: i64,
    pub event_id: Uuid,
    pub hash: [u8; 32],
}

/// Appends `events`, in order, inside the caller's transaction (nothing is visible before the
/// caller commits; a rollback gives the positions back).
///
/// Takes the head row lock, so call it *last* in the transaction and commit soon after. Round
/// trips: the streams' current versions (before the lock); the head lock (which also reads the
/// database clock, after the lock, for `recorded_at`); then, for at most [`PIPELINED_MAX`]
/// events, one `INSERT` of the rows pipelined with the statement that moves the head and
/// notifies [`EVENTS_CHANNEL`] (one round trip), or for more, a binary `COPY` of the rows (two)
/// and that statement (one).
///
/// Errors: [`Conflict::DuplicateEvent`] when an `event_id` is stored already (or repeated in the
/// batch), [`Conflict::VersionConflict`] when a version is not the next of its stream;
/// after either, the transaction is aborted: roll back. There is no timeout here (the caller's
/// transaction may span several calls): use [`crate::Store::append`] for one, or wrap the call.
///
/// A deadpool transaction can be passed as is (`&tx` derefs to a tokio-postgres one).
pub async fn append(
    tx: &Transaction<'_>,
    events: &[NewEvent],
) -> Result<Vec<Appended>, StoreError> {
    let firsts = check_batch(events)?;
    if !firsts.is_empty() {
        check_stream_versions(tx, &firsts).await?;
    }
    write(tx, events).await
}

/// [`append`] for a caller that has read every stream's current version under a lock that
/// each writer of that stream holds until commit (GS: a player's `accounts` row, which carries
/// the `player-<id>` stream's version and is locked `FOR UPDATE` by every transaction that
/// appends to it). The store then skips re-reading the streams' versions — one index probe per
/// stream, a few milliseconds for a batch of thousands of players. The batch is still checked
/// (consecutive versions per stream, unique ids) and `UNIQUE (stream, version)` still refuses
/// a version taken twice; `croupier replay` checks every stream's versions end to end.
pub async fn append_with_locked_versions(
    tx: &Transaction<'_>,
    events: &[NewEvent],
) -> Result<Vec<Appended>, StoreError> {
    check_batch(events)?;
    write(tx, events).await
}

/// A batch of at most this many events is written by one `INSERT … SELECT FROM unnest(…)`,
/// pipelined with the head's move: one round trip while the head
/// is held, where a binary `COPY` takes two (start, then rows and end) before the head can
/// move. Larger batches are copied: `COPY` moves thousands of rows faster than a statement's
/// arrays (ADR 0032). GS's bet batches are at most 256 by default (`CROUPIER_BET_BATCH`).
pub const PIPELINED_MAX: usize = 256;

/// The events of a small batch, as arrays (see [`PIPELINED_MAX`]).
const INSERT_EVENTS: &str = "INSERT INTO public.events (position, event_id, stream, version, \
     type, data, metadata, recorded_at, hash) \
     SELECT p, i, s, v, t, d, m, $8, h \
     FROM unnest($1::int8[], $2::uuid[], $3::text[], $4::int4[], $5::text[], $6::bytea[], \
                 $7::bytea[], $9::bytea[]) AS u(p, i, s, v, t, d, m, h)";

/// Moves the head and notifies tailers (delivered on commit).
const MOVE_HEAD: &str = "WITH moved AS ( \
         UPDATE public.event_head SET position = $1, hash = $2 WHERE id RETURNING position \
     ) SELECT pg_notify($3, moved.position::text) FROM moved";

/// Locks the head, writes the events with their positions and hashes, moves the head
/// (nothing at all for an empty batch). For a batch of at most [`PIPELINED_MAX`] events, the
/// insert and the head's move go out in one pipeline, so the head is held for two round trips
/// and the commit.
async fn write(tx: &Transaction<'_>, events: &[NewEvent]) -> Result<Vec<Appended>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let count = i64::try_from(events.len())
        .map_err(|_| StoreError::InvalidBatch("too many events in one batch".into()))?;
    // The clock is read after the lock is granted (the CTE is materialized first), so
    // `recorded_at` grows with the position across transactions.
    let head = crate::prepared::query_opt(
        tx,
        "WITH head AS MATERIALIZED ( \
                 SELECT position, hash FROM public.event_head WHERE id FOR UPDATE \
             ) SELECT position, hash, clock_timestamp() FROM head",
        &[],
    )
    .await?
    .ok_or_else(|| StoreError::corrupt(None, "the event_head row is missing"))?;
    let (head_position, mut prev) = parse_head(&head)?;
    let recorded_at: OffsetDateTime = head.try_get(2)?;

    // Positions and the chain, before anything is written.
    let mut appended = Vec::with_capacity(events.len());
    for (offset, event) in (1..=count).zip(events) {
        let position = head_position + offset;
        let hash = chain_hash(
            &prev,
            position,
            event.event_id,
            &event.stream,
            &event.kind,
            &event.data,
            &event.metadata,
        );
        appended.push(Appended {
            position,
            event_id: event.event_id,
            hash,
        });
        prev = hash;
    }
    let new_head = head_position + count;
    let head_hash = prev.as_slice();
    let move_params: [(&(dyn ToSql + Sync), Type); 3] = [
        (&new_head, Type::INT8),
        (&head_hash, Type::BYTEA),
        (&EVENTS_CHANNEL, Type::TEXT),
    ];

    if events.len() > PIPELINED_MAX {
        copy_events(tx, events, &appended, recorded_at).await?;
        crate::prepared::query_one(tx, MOVE_HEAD, &move_params).await?;
        return Ok(appended);
    }

    let positions: Vec<i64> = appended.iter().map(|a| a.position).collect();
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let streams: Vec<&str> = events.iter().map(|e| e.stream.as_str()).collect();
    let versions: Vec<i32> = events.iter().map(|e| e.version).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let data: Vec<&[u8]> = events.iter().map(|e| e.data.as_ref()).collect();
    let metadata: Vec<&[u8]> = events.iter().map(|e| e.metadata.as_ref()).collect();
    let hashes: Vec<&[u8]> = appended.iter().map(|a| a.hash.as_slice()).collect();
    let insert_params: [(&(dyn ToSql + Sync), Type); 9] = [
        (&positions, Type::INT8_ARRAY),
        (&ids, Type::UUID_ARRAY),
        (&streams, Type::TEXT_ARRAY),
        (&versions, Type::INT4_ARRAY),
        (&kinds, Type::TEXT_ARRAY),
        (&data, Type::BYTEA_ARRAY),
        (&metadata, Type::BYTEA_ARRAY),
        (&recorded_at, Type::TIMESTAMPTZ),
        (&hashes, Type::BYTEA_ARRAY),
    ];
    let statements = crate::prepared::prepare_all(
        tx,
        &[(INSERT_EVENTS, &insert_params), (MOVE_HEAD, &move_params)],
    )
    .await?;
    let (inserted, moved) = tokio::join!(
        crate::prepared::execute_prepared(tx, &statements[0], &insert_params),
        crate::prepared::query_prepared(tx, &statements[1], &move_params),
    );
    let (inserted, _) = cause(
        inserted.map_err(StoreError::from),
        moved.map_err(StoreError::from),
    )?;
    if inserted != count as u64 {
        return Err(StoreError::corrupt(
            None,
            format!("inserted {inserted} events of a batch of {count}"),
        ));
    }
    Ok(appended)
}

/// Two results of statements pipelined together: the error that is the cause, not the
/// "current transaction is aborted" every statement after the failed one gets.
fn cause<A, B>(a: Result<A, StoreError>, b: Result<B, StoreError>) -> Result<(A, B), StoreError> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(a), Err(b)) if a.is_follow_on() && !b.is_follow_on() => Err(b),
        (Err(a), _) => Err(a),
        (_, Err(b)) => Err(b),
    }
}

/// One binary `COPY` of a large batch's rows, with the positions and hashes chained for them.
async fn copy_events(
    tx: &Transaction<'_>,
    events: &[NewEvent],
    appended: &[Appended],
    recorded_at: OffsetDateTime,
) -> Result<(), StoreError> {
    let sink = tx
        .copy_in(&format!(
            "COPY public.events ({EVENT_COLUMNS}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &EVENT_COLUMN_TYPES);
    futures_util::pin_mut!(writer);
    for (event, landed) in events.iter().zip(appended) {
        let (data, metadata, hash_bytes): (&[u8], &[u8], &[u8]) =
            (&event.data, &event.metadata, &landed.hash);
        writer
            .as_mut()
            .write(&[
                &landed.position,
                &event.event_id,
                &event.stream,
                &event.version,
                &event.kind,
                &data,
                &metadata,
                &recorded_at,
                &hash_bytes,
            ])
            .await?;
    }
    let inserted = writer.finish().await?;
    if inserted != events.len() as u64 {
        return Err(StoreError::corrupt(
            None,
            format!("inserted {inserted} events of a batch of {}", events.len()),
        ));
    }
    Ok(())
}

/// The columns of `events` a `COPY` writes, in order (every column:
/// `docs/contract/event-store.md`), and their types; the benchmark's anchors copy the same rows
/// with these.
pub const EVENT_COLUMNS: &str =
    "position, event_id, stream, version, type, data, metadata, recorded_at, hash";
/// See [`EVENT_COLUMNS`].
pub const EVENT_COLUMN_TYPES: [Type; 9] = [
    Type::INT8,
    Type::UUID,
    Type::TEXT,
    Type::INT4,
    Type::TEXT,
    Type::BYTEA,
    Type::BYTEA,
    Type::TIMESTAMPTZ,
    Type::BYTEA,
];

/// Checks what can be checked without the database; returns, per stream, the first version the
/// batch gives it.
fn check_batch(events: &[NewEvent]) -> Result<HashMap<&str, i32>, StoreError> {
    let mut ids = HashSet::with_capacity(events.len());
    let mut firsts: HashMap<&str, i32> = HashMap::new();
    let mut lasts: HashMap<&str, i32> = HashMap::new();
    for event in events {
        if event.stream.is_empty() || event.kind.is_empty() {
            return Err(StoreError::InvalidBatch(format!(
                "event {} has an empty stream or type",
                event.event_id
            )));
        }
        if event.version < 1 {
            return Err(StoreError::InvalidBatch(format!(
                "event {} has version {}; versions start at 1",
                event.event_id, event.version
            )));
        }
        if [event.data.len(), event.metadata.len()]
            .iter()
            .any(|&len| len > MAX_FIELD_LEN)
        {
            return Err(StoreError::InvalidBatch(format!(
                "event {} is too large",
                event.event_id
            )));
        }
        if !ids.insert(event.event_id) {
            return Err(Conflict::DuplicateEvent.into());
        }
        let stream = event.stream.as_str();
        match lasts.get(stream) {
            Some(&last) if event.version != last + 1 => {
                return Err(Conflict::VersionConflict {
                    stream: Some(event.stream.clone()),
                }
                .into());
            }
            Some(_) => {}
            None => {
                firsts.insert(stream, event.version);
            }
        }
        lasts.insert(stream, event.version);
    }
    Ok(firsts)
}

/// Each stream's first version in the batch must follow the stream's stored version. Done
/// before the head lock so as not to lengthen the time it is held; a writer racing on the same
/// stream after this check is stopped by `UNIQUE (stream, version)`.
async fn check_stream_versions(
    tx: &Transaction<'_>,
    firsts: &HashMap<&str, i32>,
) -> Result<(), StoreError> {
    let streams: Vec<&str> = firsts.keys().copied().collect();
    let rows = crate::prepared::query(tx,
            "SELECT s.stream, \
                    COALESCE((SELECT max(e.version) FROM public.events e WHERE e.stream = s.stream), 0) \
             FROM unnest($1::text[]) AS s(stream)",
            &[(&streams, Type::TEXT_ARRAY)],
        )
        .await?;
    for row in rows {
        let stream: &str = row.try_get(0)?;
        let current: i32 = row.try_get(1)?;
        if firsts.get(stream) != Some(&(current + 1)) {
            return Err(Conflict::VersionConflict {
                stream: Some(stream.to_string()),
            }
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stream: &str, version: i32, id: u128) -> NewEvent {
        NewEvent {
            event_id: Uuid::from_u128(id),
            stream: stream.into(),
            version,
            kind: "test_event".into(),
            data: Bytes::from_static(b"\x80"),
            metadata: Bytes::new(),
        }
    }

    #[test]
    fn a_batch_may_interleave_streams_with_consecutive_versions() {
        let batch = [event("a", 3, 1), event("b", 1, 2), event("a", 4, 3)];
        let firsts = check_batch(&batch).expect("valid batch");
        assert_eq!(firsts.get("a"), Some(&3));
        assert_eq!(firsts.get("b"), Some(&1));
    }

    #[test]
    fn a_batch_skipping_a_version_of_a_stream_is_a_version_conflict() {
        let batch = [event("a", 1, 1), event("a", 3, 2)];
        assert!(matches!(
            check_batch(&batch),
            Err(StoreError::Conflict(Conflict::VersionConflict { stream: Some(s) })) if s == "a"
        ));
    }

    #[test]
    fn a_batch_repeating_an_event_id_is_a_duplicate() {
        let batch = [event("a", 1, 7), event("b", 1, 7)];
        assert!(matches!(
            check_batch(&batch),
            Err(StoreError::Conflict(Conflict::DuplicateEvent))
        ));
    }

    #[test]
    fn versions_start_at_one_and_names_are_not_empty() {
        assert!(matches!(
            check_batch(&[event("a", 0, 1)]),
            Err(StoreError::InvalidBatch(_))
        ));
        assert!(matches!(
            check_batch(&[event("", 1, 1)]),
            Err(StoreError::InvalidBatch(_))
        ));
    }
}

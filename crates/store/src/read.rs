//! Reads of the event store: one stream by version, everything in global position order, and
//! the head. Free functions over any [`GenericClient`] (a connection or a transaction); the
//! [`crate::Store`] wraps them with a pooled connection and a client-side timeout.

use bytes::Bytes;
use time::OffsetDateTime;
use tokio_postgres::types::Type;
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

use crate::error::StoreError;

/// An event as stored, with its place in the global order and in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Global, gapless position (1, 2, 3, ...).
    pub position: i64,
    pub event_id: Uuid,
    pub stream: String,
    /// The event's version within its stream (1, 2, 3, ...).
    pub version: i32,
    /// The event's type (the `type` column), e.g. `funds_deposited`.
    pub kind: String,
    /// MessagePack of the event object (opaque to the store).
    pub data: Bytes,
    /// A MessagePack map, possibly empty (zero bytes).
    pub metadata: Bytes,
    pub recorded_at: OffsetDateTime,
    /// The chain hash of this event (`docs/contract/event-store.md`).
    pub hash: [u8; 32],
}

pub(crate) const EVENT_COLUMNS: &str =
    "position, event_id, stream, version, type, data, metadata, recorded_at, hash";

impl StoredEvent {
    /// Reads a row selected with [`EVENT_COLUMNS`], refusing (not panicking on) a bad shape.
    pub(crate) fn from_row(row: &Row) -> Result<Self, StoreError> {
        let position: i64 = row.try_get(0)?;
        let hash: Vec<u8> = row.try_get(8)?;
        let hash: [u8; 32] = hash.try_into().map_err(|bad: Vec<u8>| {
            StoreError::corrupt(
                Some(position),
                format!("hash has {} bytes instead of 32", bad.len()),
            )
        })?;
        Ok(StoredEvent {
            position,
            event_id: row.try_get(1)?,
            stream: row.try_get(2)?,
            version: row.try_get(3)?,
            kind: row.try_get(4)?,
            data: Bytes::from(row.try_get::<_, Vec<u8>>(5)?),
            metadata: Bytes::from(row.try_get::<_, Vec<u8>>(6)?),
            recorded_at: row.try_get(7)?,
            hash,
        })
    }
}

/// Events of `stream` with `version >= from_version`, in version order, at most `limit` of
/// them (page with the last version + 1).
pub async fn read_stream<C: GenericClient>(
    client: &C,
    stream: &str,
    from_version: i32,
    limit: i64,
) -> Result<Vec<StoredEvent>, StoreError> {
    let rows = client
        .query_typed(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM public.events \
                 WHERE stream = $1 AND version >= $2 ORDER BY version LIMIT $3"
            ),
            &[
                (&stream, Type::TEXT),
                (&from_version, Type::INT4),
                (&limit.max(0), Type::INT8),
            ],
        )
        .await?;
    rows.iter().map(StoredEvent::from_row).collect()
}

/// Events with `position >= from_position`, in position order, at most `limit` of them.
///
/// Thanks to the head row, what a reader sees is always a gapless prefix of the final order:
/// no event can commit later at a position below one already visible.
pub async fn read_from<C: GenericClient>(
    client: &C,
    from_position: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>, StoreError> {
    let rows = client
        .query_typed(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM public.events \
                 WHERE position >= $1 ORDER BY position LIMIT $2"
            ),
            &[(&from_position, Type::INT8), (&limit.max(0), Type::INT8)],
        )
        .await?;
    rows.iter().map(StoredEvent::from_row).collect()
}

/// The version the next event of `stream` takes: its last version + 1 (1 for a new stream),
/// as `client` sees it. Two writers that both read it race on the stream's unique version;
/// the loser gets [`crate::Conflict::VersionConflict`] from [`crate::append`].
pub async fn next_version<C: GenericClient>(client: &C, stream: &str) -> Result<i32, StoreError> {
    let row = client
        .query_typed_one(
            "SELECT coalesce(max(version), 0) + 1 FROM public.events WHERE stream = $1",
            &[(&stream, Type::TEXT)],
        )
        .await?;
    Ok(row.try_get(0)?)
}

/// The position of the last committed event (0 when the store is empty).
pub async fn last_position<C: GenericClient>(client: &C) -> Result<i64, StoreError> {
    Ok(head(client).await?.0)
}

/// The head row: the last committed position and its hash.
pub async fn head<C: GenericClient>(client: &C) -> Result<(i64, [u8; 32]), StoreError> {
    let row = client
        .query_typed_opt("SELECT position, hash FROM public.event_head WHERE id", &[])
        .await?
        .ok_or_else(|| StoreError::corrupt(None, "the event_head row is missing"))?;
    parse_head(&row)
}

pub(crate) fn parse_head(row: &Row) -> Result<(i64, [u8; 32]), StoreError> {
    let position: i64 = row.try_get(0)?;
    let hash: Vec<u8> = row.try_get(1)?;
    let hash: [u8; 32] = hash.try_into().map_err(|bad: Vec<u8>| {
        StoreError::corrupt(
            Some(position),
            format!("event_head hash has {} bytes instead of 32", bad.len()),
        )
    })?;
    Ok((position, hash))
}

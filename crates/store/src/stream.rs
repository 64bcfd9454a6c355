//! Reading a range of the log as one stream: a binary `COPY (SELECT … ORDER BY position) TO
//! STDOUT`, one statement for the whole range instead of a query per page, decoded row by row
//! as it arrives. Used by the auditor's replay and by the read models' rebuild.
//!
//! Run it in a transaction (repeatable read for a consistent snapshot) when other reads must
//! agree with it; the statement needs no statement timeout, since it lasts as long as the
//! range is long.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio_postgres::CopyOutStream;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use uuid::Uuid;

use crate::append::{EVENT_COLUMN_TYPES, EVENT_COLUMNS};
use crate::error::StoreError;
use crate::read::StoredEvent;

/// What can run a `COPY … TO STDOUT`: a connection or a transaction.
pub trait CopyOut {
    fn copy_out_stream(
        &self,
        statement: &str,
    ) -> impl Future<Output = Result<CopyOutStream, tokio_postgres::Error>> + Send;
}

impl CopyOut for tokio_postgres::Client {
    async fn copy_out_stream(
        &self,
        statement: &str,
    ) -> Result<CopyOutStream, tokio_postgres::Error> {
        self.copy_out(statement).await
    }
}

impl CopyOut for tokio_postgres::Transaction<'_> {
    async fn copy_out_stream(
        &self,
        statement: &str,
    ) -> Result<CopyOutStream, tokio_postgres::Error> {
        self.copy_out(statement).await
    }
}

/// The raw binary `COPY` output of `columns` (a list of the `events` table's column names) for
/// positions `from..=to` in position order: one `CopyData` message per row. For a reader that
/// parses the rows itself (the audit's); [`stream_events`] decodes them.
pub async fn copy_events<C: CopyOut>(
    client: &C,
    columns: &str,
    from: i64,
    to: i64,
) -> Result<CopyOutStream, tokio_postgres::Error> {
    // Positions are integers: formatting them into the statement is safe (COPY takes no
    // parameters); `columns` is a constant of the caller's, never input.
    let copy = format!(
        "COPY (SELECT {columns} FROM public.events WHERE position >= {from} \
         AND position <= {to} ORDER BY position) TO STDOUT (FORMAT binary)"
    );
    client.copy_out_stream(&copy).await
}

/// The events at positions `from..=to`, in position order, streamed by one binary `COPY`.
pub async fn stream_events<C: CopyOut>(
    client: &C,
    from: i64,
    to: i64,
) -> Result<impl Stream<Item = Result<StoredEvent, StoreError>> + use<C>, StoreError> {
    let rows = copy_events(client, EVENT_COLUMNS, from, to).await?;
    Ok(
        BinaryCopyOutStream::new(rows, &EVENT_COLUMN_TYPES).map(|row| {
            let row = row?;
            let position: i64 = row.try_get(0)?;
            let hash: &[u8] = row.try_get(8)?;
            let hash: [u8; 32] = hash.try_into().map_err(|_| {
                StoreError::corrupt(
                    Some(position),
                    format!("hash has {} bytes instead of 32", hash.len()),
                )
            })?;
            Ok(StoredEvent {
                position,
                event_id: row.try_get::<Uuid>(1)?,
                stream: row.try_get::<&str>(2)?.to_string(),
                version: row.try_get(3)?,
                kind: row.try_get::<&str>(4)?.to_string(),
                data: Bytes::copy_from_slice(row.try_get::<&[u8]>(5)?),
                metadata: Bytes::copy_from_slice(row.try_get::<&[u8]>(6)?),
                recorded_at: row.try_get(7)?,
                hash,
            })
        }),
    )
}

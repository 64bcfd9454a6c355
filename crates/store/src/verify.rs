//! Chain verification for auditors: recompute every hash from the stored fields, in position
//! order, and check the positions are gapless, every stream's versions consecutive (1, 2, 3,
//! … in position order) and the head agrees with the last event.
//!
//! Rows are read in keyset pages of [`VERIFY_PAGE`], so memory does not grow with the number
//! of events (only with the number of streams: one version per stream); each page is a separate short query (rows never change, so no long snapshot is
//! needed). The end is fixed before the first page: the head as it was when verification
//! began, so concurrent appends neither race nor lengthen the run.

use std::collections::HashMap;

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::error::StoreError;
use crate::hash::{GENESIS_HASH, chain_hash};
use crate::read::head;

/// Rows per verification query. Large enough that round trips do not dominate, small enough
/// that a page of maximal events stays a few MB in practice.
pub const VERIFY_PAGE: i64 = 1000;

/// A verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Events verified.
    pub events: u64,
    /// The last verified position (`from − 1` when there was nothing to verify).
    pub last_position: i64,
    /// Its hash (the hash before `from` when there was nothing to verify).
    pub last_hash: [u8; 32],
}

/// Progress of a verification, reported after every page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainProgress {
    /// Events verified so far.
    pub verified: u64,
    /// The last position verified so far.
    pub position: i64,
    /// The position verification ends at (the head when it began).
    pub end: i64,
}

/// Where and how the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the event chain is broken at position {position}: {reason}")]
pub struct ChainError {
    /// The first position that fails.
    pub position: i64,
    pub reason: ChainFault,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainFault {
    /// No event at this position; `found` is the next position present, if any before the end.
    #[error("position is missing (next present: {found:?})")]
    Gap { found: Option<i64> },
    /// The stored hash is not the hash of the stored fields chained to the previous hash: the
    /// event (or the one before it) was altered.
    #[error(
        "stored hash {} but the fields hash to {}",
        hex::encode(stored),
        hex::encode(computed)
    )]
    BadHash { stored: Vec<u8>, computed: [u8; 32] },
    /// The event's version is not the next of its stream (`expected` is `None` when the
    /// verification began after the stream's earlier events, and the stream's first version
    /// seen there is not checked).
    #[error("stream {stream} jumps from version {} to {found}", expected.map_or(0, |v| v - 1))]
    VersionGap {
        stream: String,
        expected: Option<i32>,
        found: i32,
    },
    /// The event before `from`, whose hash the verification starts from, is missing or has a
    /// malformed hash.
    #[error("the event before the starting position is missing or malformed")]
    BadPrevious,
    /// The head row disagrees with the last event it claims (events at the end removed, or
    /// the head altered).
    #[error(
        "the head says hash {} but the last event hashes to {}",
        hex::encode(head_hash),
        hex::encode(last_hash)
    )]
    HeadMismatch {
        head_hash: [u8; 32],
        last_hash: [u8; 32],
    },
}

/// Why a verification did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The chain is broken: tampering or corruption.
    #[error(transparent)]
    Broken(#[from] ChainError),
    /// The database failed during verification; nothing is known about the chain past
    /// what progress reported.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Verifies the chain from position `from` (1 for all of it) up to the head as it is now,
/// calling `progress` after every page. For `from > 1`, the stored hash of `from − 1` is
/// trusted as the starting point (verify from 1 to trust nothing).
pub async fn verify_chain<C: GenericClient>(
    client: &C,
    from: i64,
    mut progress: impl FnMut(ChainProgress),
) -> Result<ChainReport, VerifyError> {
    let from = from.max(1);
    let (end, head_hash) = head(client).await?;
    let mut prev = if from == 1 {
        GENESIS_HASH
    } else {
        let row = client
            .query_typed_opt(
                "SELECT hash FROM public.events WHERE position = $1",
                &[(&(from - 1), Type::INT8)],
            )
            .await
            .map_err(StoreError::from)?;
        let hash: Option<Vec<u8>> = row
            .map(|row| row.try_get(0))
            .transpose()
            .map_err(StoreError::from)?;
        match hash.map(<[u8; 32]>::try_from) {
            Some(Ok(hash)) => hash,
            _ if from - 1 > end => {
                // Nothing to verify yet: the start lies beyond the head.
                return Ok(ChainReport {
                    events: 0,
                    last_position: from - 1,
                    last_hash: GENESIS_HASH,
                });
            }
            _ => {
                return Err(ChainError {
                    position: from,
                    reason: ChainFault::BadPrevious,
                }
                .into());
            }
        }
    };

    let mut expected = from;
    let mut verified = 0u64;
    // stream → its last version seen.
    let mut versions: HashMap<String, i32> = HashMap::new();
    while expected <= end {
        let rows = client
            .query_typed(
                "SELECT position, event_id, stream, type, data, metadata, hash, version \
                 FROM public.events WHERE position >= $1 AND position <= $2 \
                 ORDER BY position LIMIT $3",
                &[
                    (&expected, Type::INT8),
                    (&end, Type::INT8),
                    (&VERIFY_PAGE, Type::INT8),
                ],
            )
            .await
            .map_err(StoreError::from)?;
        if rows.is_empty() {
            return Err(ChainError {
                position: expected,
                reason: ChainFault::Gap { found: None },
            }
            .into());
        }
        for row in &rows {
            let position: i64 = row.try_get(0).map_err(StoreError::from)?;
            if position != expected {
                return Err(ChainError {
                    position: expected,
                    reason: ChainFault::Gap {
                        found: Some(position),
                    },
                }
                .into());
            }
            let event_id: Uuid = row.try_get(1).map_err(StoreError::from)?;
            let stream: &str = row.try_get(2).map_err(StoreError::from)?;
            let kind: &str = row.try_get(3).map_err(StoreError::from)?;
            let data: &[u8] = row.try_get(4).map_err(StoreError::from)?;
            let metadata: &[u8] = row.try_get(5).map_err(StoreError::from)?;
            let stored: &[u8] = row.try_get(6).map_err(StoreError::from)?;
            let computed = chain_hash(&prev, position, event_id, stream, kind, data, metadata);
            if stored != computed {
                return Err(ChainError {
                    position,
                    reason: ChainFault::BadHash {
                        stored: stored.to_vec(),
                        computed,
                    },
                }
                .into());
            }
            let version: i32 = row.try_get(7).map_err(StoreError::from)?;
            let next = match versions.get(stream) {
                Some(&last) => Some(last + 1),
                None if from == 1 => Some(1),
                None => None,
            };
            if next.is_some_and(|next| next != version) {
                return Err(ChainError {
                    position,
                    reason: ChainFault::VersionGap {
                        stream: stream.to_string(),
                        expected: next,
                        found: version,
                    },
                }
                .into());
            }
            match versions.get_mut(stream) {
                Some(last) => *last = version,
                None => {
                    versions.insert(stream.to_string(), version);
                }
            }
            prev = computed;
            expected += 1;
            verified += 1;
        }
        progress(ChainProgress {
            verified,
            position: expected - 1,
            end,
        });
    }

    if end >= from && prev != head_hash {
        return Err(ChainError {
            position: end,
            reason: ChainFault::HeadMismatch {
                head_hash,
                last_hash: prev,
            },
        }
        .into());
    }
    Ok(ChainReport {
        events: verified,
        last_position: expected - 1,
        last_hash: prev,
    })
}

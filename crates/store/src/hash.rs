//! The hash chain of `docs/contract/event-store.md` (a public audit contract):
//!
//! ```text
//! hash = SHA-256(prev_hash ‖ f(position as 8-byte big-endian) ‖ f(event_id, 16 bytes) ‖
//!                f(stream) ‖ f(type) ‖ f(data) ‖ f(metadata))
//! f(x) = 4-byte big-endian length of x ‖ x
//! ```
//!
//! `prev_hash` is the hash of the event at `position − 1`, and [`GENESIS_HASH`] (32 zero bytes)
//! for the first event. Pure: the auditor reuses it to check the chain with no database at hand.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The `prev_hash` of the event at position 1.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The hash of the event at `position`, chained to `prev` (the hash of `position − 1`).
///
/// Every field is at most 1 GiB in Postgres (`bytea`, `text`), so its length always fits the
/// 4-byte prefix; the store refuses longer ones before hashing.
pub fn chain_hash(
    prev: &[u8; 32],
    position: i64,
    event_id: Uuid,
    stream: &str,
    kind: &str,
    data: &[u8],
    metadata: &[u8],
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    field(&mut hasher, &position.to_be_bytes());
    field(&mut hasher, event_id.as_bytes());
    field(&mut hasher, stream.as_bytes());
    field(&mut hasher, kind.as_bytes());
    field(&mut hasher, data);
    field(&mut hasher, metadata);
    hasher.finalize().into()
}

/// The largest field the chain can frame (its length must fit 4 bytes).
pub(crate) const MAX_FIELD_LEN: usize = u32::MAX as usize;

fn field(hasher: &mut Sha256, bytes: &[u8]) {
    let len = u32::try_from(bytes.len())
        .expect("fields longer than 4 GiB are refused before hashing and cannot be stored");
    hasher.update(len.to_be_bytes());
    hasher.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        let bytes = hex::decode(s).expect("test vector is hex");
        bytes.try_into().expect("test vector is 32 bytes")
    }

    #[test]
    fn the_design_test_vector_hashes_to_the_published_value() {
        let event_id = Uuid::parse_str("00000000-0000-4000-8000-000000000001").expect("uuid");
        let data = hex::decode("81a46b696e64a5686f6c6c6f").expect("hex");
        let hash = chain_hash(
            &GENESIS_HASH,
            1,
            event_id,
            "player-alice",
            "funds_deposited",
            &data,
            &[],
        );
        assert_eq!(
            hash,
            hex32("565ce6e737dd3975d5904a7f84d6322061ebfa330a257470d8750e2e30858ca5")
        );
    }

    #[test]
    fn every_field_and_the_previous_hash_change_the_hash() {
        let id = Uuid::from_u128(1);
        let base = chain_hash(&GENESIS_HASH, 1, id, "s", "t", b"d", b"m");
        let variants = [
            chain_hash(&[1; 32], 1, id, "s", "t", b"d", b"m"),
            chain_hash(&GENESIS_HASH, 2, id, "s", "t", b"d", b"m"),
            chain_hash(&GENESIS_HASH, 1, Uuid::from_u128(2), "s", "t", b"d", b"m"),
            chain_hash(&GENESIS_HASH, 1, id, "s2", "t", b"d", b"m"),
            chain_hash(&GENESIS_HASH, 1, id, "s", "t2", b"d", b"m"),
            chain_hash(&GENESIS_HASH, 1, id, "s", "t", b"d2", b"m"),
            chain_hash(&GENESIS_HASH, 1, id, "s", "t", b"d", b"m2"),
        ];
        for (i, variant) in variants.iter().enumerate() {
            assert_ne!(*variant, base, "variant {i} hashed like the base");
        }
    }

    #[test]
    fn length_prefixes_keep_field_boundaries_apart() {
        // Without the prefixes, moving a byte from one field to the next would not change the
        // concatenation, so it would not change the hash.
        let id = Uuid::from_u128(1);
        let a = chain_hash(&GENESIS_HASH, 1, id, "ab", "c", b"", b"");
        let b = chain_hash(&GENESIS_HASH, 1, id, "a", "bc", b"", b"");
        assert_ne!(a, b);
    }
}

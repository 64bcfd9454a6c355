//! Provably fair outcomes: commit to a seed, reveal it, and let anyone recompute the result
//! (docs/contract/fairness.md, part of the public contract).
//!
//! - `seed_hash` = SHA-256 of the 32 seed bytes, published when the round opens.
//! - For i = 0, 1, 2, ...: d = HMAC-SHA256(key = seed, message = `"<table>:<round>:<i>"`), read as
//!   eight big-endian u32 words; the first word below the acceptance limit picks the result by
//!   `word mod n`. For roulette n = 37 and the limit is 4294967289 = 37 × 116080197, the largest
//!   multiple of 37 that fits, so every pocket is hit by exactly 116080197 words: no modulo bias.
//!
//! The seed itself comes from the caller (GMS derives it from its master secret, ADR 0007);
//! this module only computes.
//! `docs/contract/fairness-test-vectors.md` lists vectors for outside implementations, and a test here
//! checks every one of them.

use std::fmt;
use std::num::NonZeroU32;

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::ids::{RoundId, TableId};
use crate::roulette::{Outcome, POCKETS};

/// Why a fairness value cannot be parsed or a round does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FairnessError {
    #[error("expected 64 lowercase hex digits, got {0:?}")]
    BadHex(String),
    #[error("the revealed seed hashes to {revealed}, but the round committed to {committed}")]
    SeedMismatch {
        committed: SeedHash,
        revealed: SeedHash,
    },
    #[error("the seed gives outcome {expected}, but {declared} was declared")]
    OutcomeMismatch {
        declared: Outcome,
        expected: Outcome,
    },
}

/// The secret 32 bytes that decide a round. Secret until the outcome is declared, so `Debug`
/// does not show it and there is no `Display`: printing one takes an explicit `to_hex()`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ServerSeed([u8; 32]);

impl ServerSeed {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses exactly 64 lowercase hex digits, the only spelling the contract publishes.
    pub fn from_hex(s: &str) -> Result<Self, FairnessError> {
        parse_hex32(s).map(Self)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The commitment published when the round opens.
    pub fn hash(&self) -> SeedHash {
        SeedHash(Sha256::digest(self.0).into())
    }
}

impl fmt::Debug for ServerSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerSeed(..)")
    }
}

impl Serialize for ServerSeed {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ServerSeed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_hex32(deserializer).map(Self)
    }
}

/// SHA-256 of a server seed: the public commitment.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeedHash([u8; 32]);

impl SeedHash {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses exactly 64 lowercase hex digits.
    pub fn from_hex(s: &str) -> Result<Self, FairnessError> {
        parse_hex32(s).map(Self)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for SeedHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SeedHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SeedHash({self})")
    }
}

impl Serialize for SeedHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for SeedHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_hex32(deserializer).map(Self)
    }
}

fn parse_hex32(s: &str) -> Result<[u8; 32], FairnessError> {
    let canonical = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let mut bytes = [0u8; 32];
    match hex::decode_to_slice(s, &mut bytes) {
        Ok(()) if canonical => Ok(bytes),
        _ => Err(FairnessError::BadHex(s.to_owned())),
    }
}

fn deserialize_hex32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
    crate::text::deserialize_parsed(deserializer, "64 lowercase hex digits", parse_hex32)
}

/// The acceptance limit for roulette: words at or above it are skipped.
pub const ROULETTE_WORD_LIMIT: u32 = 4_294_967_289;

/// The acceptance limit for a uniform draw among `n` results: the largest multiple of `n` that is
/// at most 2^32. It is a `u64` because for n = 1 (or any power of two) it is 2^32 itself.
pub const fn word_limit(n: NonZeroU32) -> u64 {
    let n = n.get() as u64;
    (1u64 << 32) / n * n
}

/// The eight big-endian words of block `i` for this seed, table and round.
pub fn block_words(seed: &ServerSeed, table: &TableId, round: RoundId, i: u64) -> [u32; 8] {
    let mut mac = match hmac::Hmac::<Sha256>::new_from_slice(&seed.0) {
        Ok(mac) => mac,
        // HMAC takes keys of any length; a 32-byte key cannot be refused.
        Err(_) => unreachable!("HMAC-SHA256 accepts a 32-byte key"),
    };
    mac.update(format!("{table}:{round}:{i}").as_bytes());
    let digest: [u8; 32] = mac.finalize().into_bytes().into();
    let mut words = [0u32; 8];
    for (word, chunk) in words.iter_mut().zip(digest.chunks_exact(4)) {
        *word = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    words
}

/// The first word strictly below `limit`, if any: the rejection step, kept pure so that its
/// boundary can be tested with chosen words.
pub fn select_word(words: &[u32; 8], limit: u64) -> Option<u32> {
    words.iter().copied().find(|&w| u64::from(w) < limit)
}

/// Runs the rejection loop over blocks 0, 1, 2, ... supplied by `block`, returning the accepted
/// word and the block it came from. Separate from the HMAC so the "every word of a block was
/// rejected" path, which no real seed will ever hit, can be exercised.
pub fn draw_from_blocks(mut block: impl FnMut(u64) -> [u32; 8], limit: u64) -> (u32, u64) {
    let mut i = 0u64;
    loop {
        if let Some(word) = select_word(&block(i), limit) {
            return (word, i);
        }
        // Each block is rejected with probability (7/2^32)^8 for roulette; wrapping after 2^64
        // blocks is not a state any seed reaches.
        i = i.wrapping_add(1);
    }
}

/// A uniform draw in `0..n` for this seed, table and round.
pub fn draw(seed: &ServerSeed, table: &TableId, round: RoundId, n: NonZeroU32) -> u32 {
    let (word, _) = draw_from_blocks(|i| block_words(seed, table, round, i), word_limit(n));
    word % n.get()
}

const ROULETTE_POCKETS: NonZeroU32 = match NonZeroU32::new(POCKETS as u32) {
    Some(n) => n,
    None => panic!("a wheel has pockets"),
};

/// The roulette pocket this seed gives for this table and round.
pub fn outcome(seed: &ServerSeed, table: &TableId, round: RoundId) -> Outcome {
    let pocket = draw(seed, table, round, ROULETTE_POCKETS);
    match Outcome::new(pocket as u8) {
        Ok(outcome) => outcome,
        Err(_) => unreachable!("a draw below 37 is a pocket"),
    }
}

/// What an auditor checks for one round: the revealed seed matches the hash committed when the
/// round opened (`round_opened.seed_hash`), and it gives the declared outcome
/// (`outcome_declared.outcome`, `outcome_declared.server_seed`).
pub fn verify(
    table: &TableId,
    round: RoundId,
    committed: &SeedHash,
    revealed: &ServerSeed,
    declared: Outcome,
) -> Result<(), FairnessError> {
    let revealed_hash = revealed.hash();
    if revealed_hash != *committed {
        return Err(FairnessError::SeedMismatch {
            committed: *committed,
            revealed: revealed_hash,
        });
    }
    let expected = outcome(revealed, table, round);
    if expected != declared {
        return Err(FairnessError::OutcomeMismatch { declared, expected });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> TableId {
        TableId::parse(s).expect("valid table")
    }

    fn round(n: u64) -> RoundId {
        RoundId::new(n).expect("valid round")
    }

    fn seed(hex: &str) -> ServerSeed {
        ServerSeed::from_hex(hex).expect("valid seed")
    }

    fn vector_outcomes(s: &ServerSeed) -> [u8; 3] {
        [
            outcome(s, &table("roulette-1"), round(1)).get(),
            outcome(s, &table("roulette-1"), round(2)).get(),
            outcome(s, &table("vip_7"), round(123_456)).get(),
        ]
    }

    #[test]
    fn design_vector_all_zero_seed_gives_32_33_1() {
        assert_eq!(
            vector_outcomes(&ServerSeed::from_bytes([0; 32])),
            [32, 33, 1]
        );
    }

    #[test]
    fn design_vector_counting_seed_gives_5_26_11() {
        let counting: [u8; 32] = std::array::from_fn(|i| i as u8);
        let s = ServerSeed::from_bytes(counting);
        assert_eq!(
            s.to_hex(),
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        );
        assert_eq!(vector_outcomes(&s), [5, 26, 11]);
    }

    #[test]
    fn design_vector_random_seed_gives_13_35_11() {
        let s = seed("2c6efcecf60887650f301debdbc5a88446094e3fd5c747cc59bbeb9a019e7f9d");
        assert_eq!(vector_outcomes(&s), [13, 35, 11]);
    }

    #[test]
    fn design_hand_check_first_word_is_af6e7883() {
        let words = block_words(
            &ServerSeed::from_bytes([0; 32]),
            &table("roulette-1"),
            round(1),
            0,
        );
        assert_eq!(words[0], 0xaf6e_7883);
        assert_eq!(words[0], 2_943_252_611);
        assert_eq!(words[0] % 37, 32);
    }

    #[test]
    fn seed_hash_is_lowercase_hex_sha256_of_the_seed_bytes() {
        // SHA-256 of 32 zero bytes, a widely published value.
        assert_eq!(
            ServerSeed::from_bytes([0; 32]).hash().to_hex(),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
    }

    #[test]
    fn the_roulette_limit_is_the_largest_multiple_of_37_below_two_to_the_32() {
        assert_eq!(word_limit(ROULETTE_POCKETS), u64::from(ROULETTE_WORD_LIMIT));
        assert_eq!(u64::from(ROULETTE_WORD_LIMIT), 37 * 116_080_197);
        assert!(u64::from(ROULETTE_WORD_LIMIT) + 37 > 1 << 32);
        let one = NonZeroU32::new(1).expect("non-zero");
        assert_eq!(word_limit(one), 1 << 32);
    }

    #[test]
    fn word_4294967288_is_used_but_4294967289_and_above_are_skipped() {
        let limit = u64::from(ROULETTE_WORD_LIMIT);
        let mut words = [u32::MAX; 8];
        words[3] = 4_294_967_288;
        assert_eq!(select_word(&words, limit), Some(4_294_967_288));
        words[3] = 4_294_967_289;
        assert_eq!(select_word(&words, limit), None);
        words[6] = 4_294_967_289;
        words[7] = 12;
        assert_eq!(select_word(&words, limit), Some(12));
        // 4294967288 mod 37 = 36: the last accepted word maps to the last pocket.
        assert_eq!(4_294_967_288u32 % 37, 36);
    }

    #[test]
    fn the_first_acceptable_word_wins_not_the_smallest() {
        let words = [4_294_967_295, 100, 5, 0, 0, 0, 0, 0];
        assert_eq!(
            select_word(&words, u64::from(ROULETTE_WORD_LIMIT)),
            Some(100)
        );
    }

    #[test]
    fn when_all_eight_words_of_block_zero_are_rejected_the_draw_moves_to_block_one() {
        let mut asked = Vec::new();
        let (word, block) = draw_from_blocks(
            |i| {
                asked.push(i);
                if i == 0 {
                    [
                        4_294_967_289,
                        u32::MAX,
                        4_294_967_290,
                        4_294_967_291,
                        u32::MAX,
                        u32::MAX,
                        4_294_967_292,
                        4_294_967_293,
                    ]
                } else {
                    [u32::MAX, 74, 0, 0, 0, 0, 0, 0]
                }
            },
            u64::from(ROULETTE_WORD_LIMIT),
        );
        assert_eq!((word, block), (74, 1));
        assert_eq!(asked, vec![0, 1]);
    }

    /// The cells of the markdown table rows of `doc` that have `columns` cells, backticks removed.
    fn table_rows(doc: &str, columns: usize) -> Vec<Vec<String>> {
        doc.lines()
            .filter(|line| line.starts_with("| `"))
            .map(|line| {
                line.trim_matches('|')
                    .split('|')
                    .map(|cell| cell.trim().trim_matches('`').to_owned())
                    .collect::<Vec<_>>()
            })
            .filter(|cells| cells.len() == columns)
            .collect()
    }

    #[test]
    fn every_vector_in_the_published_document_holds() {
        let doc = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/contract/fairness-test-vectors.md"
        ));
        let outcomes = table_rows(doc, 6);
        assert_eq!(outcomes.len(), 18, "the outcome table lost or gained rows");
        for row in &outcomes {
            let s = seed(&row[0]);
            let t = table(&row[1]);
            let r = RoundId::new(row[2].parse().expect("round")).expect("valid round");
            let words = block_words(&s, &t, r, 0);
            let d: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            assert_eq!(hex::encode(d), row[3], "block 0 of {row:?}");
            assert_eq!(words[0].to_string(), row[4], "first word of {row:?}");
            assert_eq!(outcome(&s, &t, r).to_string(), row[5], "outcome of {row:?}");
        }
        let hashes = table_rows(doc, 2);
        assert_eq!(hashes.len(), 4, "the seed hash table lost or gained rows");
        for row in &hashes {
            assert_eq!(seed(&row[0]).hash().to_hex(), row[1]);
        }
    }

    #[test]
    fn the_documented_rejection_examples_hold() {
        let limit = u64::from(ROULETTE_WORD_LIMIT);
        let m = u32::MAX;
        let cases = [
            ([4_294_967_288, m, m, m, m, m, m, m], 4_294_967_288, 36),
            ([4_294_967_289, m, 5, m, m, m, m, m], 5, 5),
            ([m, 100, 3, m, m, m, m, m], 100, 26),
        ];
        for (words, word, pocket) in cases {
            assert_eq!(select_word(&words, limit), Some(word));
            assert_eq!(word % 37, pocket);
        }
        assert_eq!(select_word(&[m; 8], limit), None);
    }

    #[test]
    fn the_hmac_message_is_table_round_and_block_in_decimal() {
        // Block 1 must differ from block 0 and from another round's block 0.
        let s = ServerSeed::from_bytes([7; 32]);
        let t = table("roulette-1");
        let b0 = block_words(&s, &t, round(1), 0);
        assert_ne!(b0, block_words(&s, &t, round(1), 1));
        assert_ne!(b0, block_words(&s, &t, round(2), 0));
        assert_ne!(b0, block_words(&s, &table("roulette-2"), round(1), 0));
    }

    #[test]
    fn verify_accepts_an_honest_round_and_names_what_is_wrong_otherwise() {
        let s = seed("2c6efcecf60887650f301debdbc5a88446094e3fd5c747cc59bbeb9a019e7f9d");
        let t = table("roulette-1");
        let committed = s.hash();
        assert_eq!(
            verify(
                &t,
                round(1),
                &committed,
                &s,
                Outcome::new(13).expect("pocket")
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                &t,
                round(1),
                &committed,
                &s,
                Outcome::new(14).expect("pocket")
            ),
            Err(FairnessError::OutcomeMismatch {
                declared: Outcome::new(14).expect("pocket"),
                expected: Outcome::new(13).expect("pocket"),
            })
        );
        let other = ServerSeed::from_bytes([0; 32]);
        assert!(matches!(
            verify(
                &t,
                round(1),
                &committed,
                &other,
                Outcome::new(32).expect("pocket")
            ),
            Err(FairnessError::SeedMismatch { .. })
        ));
    }

    #[test]
    fn seeds_do_not_show_their_bytes_in_debug_output() {
        let s = ServerSeed::from_bytes([0xab; 32]);
        let shown = format!("{s:?} {:?}", Some(&s));
        assert!(!shown.contains("ab"), "{shown}");
        assert!(shown.contains("ServerSeed(..)"));
    }

    #[test]
    fn seeds_and_hashes_are_lowercase_hex_strings_on_the_wire() {
        let s = ServerSeed::from_bytes([0xab; 32]);
        let json = serde_json::to_string(&s).expect("serialize");
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        let back: ServerSeed = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, s);
        let packed = rmp_serde::to_vec_named(&s.hash()).expect("serialize");
        let hash: SeedHash = rmp_serde::from_slice(&packed).expect("deserialize");
        assert_eq!(hash, s.hash());
        assert!(serde_json::from_str::<ServerSeed>(&format!("\"{}\"", "AB".repeat(32))).is_err());
        assert!(serde_json::from_str::<ServerSeed>(&format!("\"{}\"", "ab".repeat(31))).is_err());
        assert!(SeedHash::from_hex(&"g0".repeat(32)).is_err());
    }
}

//! The published rules, implemented again from the contract for the auditor: the provably
//! fair draw, the roulette layout and its odds, and the hash chain.
//!
//! Nothing here calls `domain`'s fairness or payout code, nor `store`'s chain hash: an audit
//! that reused the code that applied the rules would confirm its bugs instead of catching
//! them. The tests check this module against the published vectors (docs/contract/fairness.md and event-store.md,
//! `docs/contract/fairness-test-vectors.md`) and against the table's arithmetic, never against `domain`.

use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Pockets on a European wheel: 0 ..= 36.
pub const POCKETS: u8 = 37;

/// Words at or above this are skipped by the draw: 37 × 116080197, the largest multiple of 37
/// below 2^32, so every pocket is equally likely.
pub const WORD_LIMIT: u32 = 4_294_967_289;

/// The red pockets of the European layout; every other non-zero pocket is black.
pub const RED: [u8; 18] = [
    1, 3, 5, 7, 9, 12, 14, 16, 18, 19, 21, 23, 25, 27, 30, 32, 34, 36,
];

/// [`RED`] as a set of pockets (bit p for pocket p).
const RED_POCKETS: u64 = {
    let mut mask = 0u64;
    let mut i = 0;
    while i < RED.len() {
        mask |= 1 << RED[i];
        i += 1;
    }
    mask
};

/// SHA-256 of the 32 seed bytes: the `seed_hash` a round commits to when it opens.
pub fn seed_hash(seed: &[u8; 32]) -> [u8; 32] {
    Sha256::digest(seed).into()
}

/// The pocket a revealed seed gives for `table` and `round`: for i = 0, 1, …, HMAC-SHA256
/// keyed by the seed bytes over `"<table>:<round>:<i>"`, read as eight big-endian words; the
/// first word below [`WORD_LIMIT`] gives `word mod 37`.
pub fn draw(seed: &[u8; 32], table: &str, round: u64) -> u8 {
    draw_traced(seed, table, round).pocket
}

/// The draw step by step, as a last-game recall shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draw {
    /// Every block read, `(i, HMAC)`, up to the one with the accepted word.
    pub blocks: Vec<(u64, [u8; 32])>,
    /// The first word below [`WORD_LIMIT`].
    pub word: u32,
    /// `word mod 37`.
    pub pocket: u8,
}

/// [`draw`], keeping every block it read.
pub fn draw_traced(seed: &[u8; 32], table: &str, round: u64) -> Draw {
    let mut blocks = Vec::with_capacity(1);
    let mut i: u64 = 0;
    loop {
        let digest = hmac_block(seed, table, round, i);
        blocks.push((i, digest));
        if let Some(word) = words(&digest).into_iter().find(|w| *w < WORD_LIMIT) {
            // Below 37: the cast cannot truncate.
            let pocket = (word % u32::from(POCKETS)) as u8;
            return Draw {
                blocks,
                word,
                pocket,
            };
        }
        // A whole block is skipped with probability (7 / 2^32)^8; go on with the next.
        i = i.wrapping_add(1);
    }
}

/// A block read as eight big-endian words.
pub fn words(block: &[u8; 32]) -> [u32; 8] {
    std::array::from_fn(|k| {
        u32::from_be_bytes([
            block[4 * k],
            block[4 * k + 1],
            block[4 * k + 2],
            block[4 * k + 3],
        ])
    })
}

/// Block `i` of the draw, as published for checking by hand (`openssl dgst -mac HMAC`).
pub fn hmac_block(seed: &[u8; 32], table: &str, round: u64, i: u64) -> [u8; 32] {
    let Ok(mut mac) = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(seed) else {
        unreachable!("HMAC takes keys of any length")
    };
    mac.update(format!("{table}:{round}:{i}").as_bytes());
    mac.finalize().into_bytes().into()
}

/// A bet's kind as it appears on the wire (`selection.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Straight,
    Split,
    Street,
    Corner,
    SixLine,
    Red,
    Black,
    Odd,
    Even,
    Low,
    High,
    Dozen,
    Column,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "straight" => Kind::Straight,
            "split" => Kind::Split,
            "street" => Kind::Street,
            "corner" => Kind::Corner,
            "six_line" => Kind::SixLine,
            "red" => Kind::Red,
            "black" => Kind::Black,
            "odd" => Kind::Odd,
            "even" => Kind::Even,
            "low" => Kind::Low,
            "high" => Kind::High,
            "dozen" => Kind::Dozen,
            "column" => Kind::Column,
            _ => return None,
        })
    }

    /// Net odds (docs/contract/events.md): a winning bet pays `amount × (odds + 1)`.
    pub const fn net_odds(self) -> u64 {
        match self {
            Kind::Straight => 35,
            Kind::Split => 17,
            Kind::Street => 11,
            Kind::Corner => 8,
            Kind::SixLine => 5,
            Kind::Dozen | Kind::Column => 2,
            Kind::Red | Kind::Black | Kind::Odd | Kind::Even | Kind::Low | Kind::High => 1,
        }
    }
}

/// A selection the audit has checked against the layout: the set of pockets it wins on (bit
/// `p` for pocket `p`) and its odds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Wager {
    pub kind: Kind,
    pockets: u64,
}

/// Why a selection is not a bet on the layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
    #[error("{kind:?} does not cover the numbers {numbers:?} on the layout")]
    NotOnLayout { kind: Kind, numbers: Vec<u8> },
    #[error("{kind:?} needs an index 1, 2 or 3, got {index:?}")]
    BadIndex { kind: Kind, index: Option<u8> },
}

impl Wager {
    /// Checks `kind` with its `numbers` (inside bets) or `index` (dozens and columns) against
    /// the layout, as docs/contract/events.md describes it.
    pub fn new(kind: &str, numbers: &[u8], index: Option<u8>) -> Result<Wager, LayoutError> {
        let kind = Kind::parse(kind).ok_or_else(|| LayoutError::UnknownKind(kind.into()))?;
        let inside = matches!(
            kind,
            Kind::Straight | Kind::Split | Kind::Street | Kind::Corner | Kind::SixLine
        );
        let not_on_layout = || LayoutError::NotOnLayout {
            kind,
            numbers: numbers.to_vec(),
        };
        if inside {
            // No inside bet covers more than six pockets: sorted on the stack, not the heap
            // (this runs once per bet of a replay).
            let mut sorted = [0u8; 6];
            let sorted = sorted.get_mut(..numbers.len()).ok_or_else(not_on_layout)?;
            sorted.copy_from_slice(numbers);
            sorted.sort_unstable();
            if index.is_some() || !covers(kind, sorted) {
                return Err(not_on_layout());
            }
            let pockets = sorted.iter().fold(0u64, |mask, &p| mask | 1 << p);
            return Ok(Wager { kind, pockets });
        }
        if !numbers.is_empty() {
            return Err(not_on_layout());
        }
        let i = match (kind, index) {
            (Kind::Dozen | Kind::Column, Some(i @ 1..=3)) => i,
            (Kind::Dozen | Kind::Column, _) => return Err(LayoutError::BadIndex { kind, index }),
            (_, Some(_)) => return Err(LayoutError::BadIndex { kind, index }),
            (_, None) => 0,
        };
        let wins = |p: u8| match kind {
            Kind::Red => RED_POCKETS & 1 << p != 0,
            Kind::Black => RED_POCKETS & 1 << p == 0,
            Kind::Odd => p % 2 == 1,
            Kind::Even => p % 2 == 0,
            Kind::Low => p <= 18,
            Kind::High => p >= 19,
            Kind::Dozen => p > 12 * (i - 1) && p <= 12 * i,
            Kind::Column => p % 3 == i % 3,
            Kind::Straight | Kind::Split | Kind::Street | Kind::Corner | Kind::SixLine => false,
        };
        // Zero loses every outside bet.
        let pockets = (1..POCKETS)
            .filter(|&p| wins(p))
            .fold(0u64, |mask, p| mask | 1 << p);
        Ok(Wager { kind, pockets })
    }

    pub fn wins(&self, pocket: u8) -> bool {
        pocket < POCKETS && self.pockets & (1 << pocket) != 0
    }

    /// What a stake of `amount` pays on `pocket` (0 when it loses); `None` on overflow.
    pub fn payout(&self, amount: i64, pocket: u8) -> Option<i64> {
        if !self.wins(pocket) {
            return Some(0);
        }
        amount.checked_mul(i64::try_from(self.kind.net_odds() + 1).ok()?)
    }
}

/// Whether sorted, distinct `numbers` form an inside bet of `kind` on the layout: pockets
/// 1 ..= 36 in rows of three (1-2-3, 4-5-6, …), zero above the first row.
fn covers(kind: Kind, n: &[u8]) -> bool {
    if n.iter().any(|&p| p >= POCKETS) || n.windows(2).any(|w| w[0] == w[1]) {
        return false;
    }
    // The column of a non-zero pocket on the layout: 1, 2 or 3.
    let col = |p: u8| (p - 1) % 3 + 1;
    match (kind, n) {
        (Kind::Straight, [_]) => true,
        (Kind::Split, [0, 1..=3]) => true,
        (Kind::Split, [a, b]) if *a >= 1 => b - a == 3 || (b - a == 1 && col(*a) != 3),
        (Kind::Street, [0, 1, 2] | [0, 2, 3]) => true,
        (Kind::Street, [a, b, c]) if *a >= 1 => col(*a) == 1 && *b == a + 1 && *c == a + 2,
        (Kind::Corner, [0, 1, 2, 3]) => true,
        (Kind::Corner, [a, b, c, d]) if *a >= 1 => {
            col(*a) != 3 && *b == a + 1 && *c == a + 3 && *d == a + 4 && *d <= 36
        }
        (Kind::SixLine, [a, ..]) if *a >= 1 && n.len() == 6 => {
            col(*a) == 1 && *a <= 31 && n.iter().zip(*a..).all(|(&p, q)| p == q)
        }
        _ => false,
    }
}

/// The `prev_hash` of the event at position 1.
pub const GENESIS: [u8; 32] = [0; 32];

/// The chain hash of docs/contract/event-store.md for one row:
/// `SHA-256(prev ‖ f(position, 8 bytes BE) ‖ f(event_id) ‖ f(stream) ‖ f(type) ‖ f(data) ‖
/// f(metadata))`, `f(x)` = 4-byte big-endian length of x, then x.
pub fn chain_hash(
    prev: &[u8; 32],
    position: i64,
    event_id: &[u8; 16],
    stream: &[u8],
    kind: &[u8],
    data: &[u8],
    metadata: &[u8],
) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    for part in [
        &position.to_be_bytes()[..],
        event_id,
        stream,
        kind,
        data,
        metadata,
    ] {
        // Postgres fields are at most 1 GiB: the length fits four bytes.
        hasher.update((part.len() as u32).to_be_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        hex::decode(s).expect("hex").try_into().expect("32 bytes")
    }

    fn counting_seed() -> [u8; 32] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn the_draw_gives_the_contracts_vectors() {
        let cases: [([u8; 32], [u8; 3]); 3] = [
            ([0; 32], [32, 33, 1]),
            (counting_seed(), [5, 26, 11]),
            (
                hex32("2c6efcecf60887650f301debdbc5a88446094e3fd5c747cc59bbeb9a019e7f9d"),
                [13, 35, 11],
            ),
        ];
        for (seed, [first, second, vip]) in cases {
            assert_eq!(draw(&seed, "roulette-1", 1), first);
            assert_eq!(draw(&seed, "roulette-1", 2), second);
            assert_eq!(draw(&seed, "vip_7", 123_456), vip);
        }
    }

    #[test]
    fn the_hand_check_of_the_contract_holds() {
        assert_eq!(
            hex::encode(hmac_block(&[0; 32], "roulette-1", 1, 0)),
            "af6e788389e41ec92ff79c9517904275333dcdbb1eb840b7a0e8532344076409"
        );
        assert_eq!(
            hex::encode(seed_hash(&[0; 32])),
            "66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925"
        );
    }

    /// Every row of the published document's tables (the same rows `domain`'s own test reads),
    /// checked by this implementation: block 0, the outcome, and the seed hashes.
    #[test]
    fn every_row_of_the_published_vectors_holds() {
        let doc = include_str!("../../../docs/contract/fairness-test-vectors.md");
        let rows: Vec<Vec<&str>> = doc
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| {
                l.trim_matches('|')
                    .split('|')
                    .map(|c| c.trim().trim_matches('`'))
                    .collect()
            })
            .collect();
        let (mut outcomes, mut hashes) = (0, 0);
        for row in &rows {
            let seed: [u8; 32] = hex32(row[0]);
            match row.as_slice() {
                [_, table, round, block, _, outcome] => {
                    let round: u64 = round.parse().expect("round");
                    assert_eq!(hex::encode(hmac_block(&seed, table, round, 0)), *block);
                    assert_eq!(draw(&seed, table, round).to_string(), *outcome, "{row:?}");
                    outcomes += 1;
                }
                [_, hash] => {
                    assert_eq!(hex::encode(seed_hash(&seed)), *hash);
                    hashes += 1;
                }
                _ => {}
            }
        }
        assert_eq!(
            (outcomes, hashes),
            (18, 4),
            "the document lost or gained rows"
        );
    }

    #[test]
    fn the_chain_hash_gives_the_contracts_vector() {
        let id = uuid::Uuid::parse_str("00000000-0000-4000-8000-000000000001").expect("uuid");
        let data = hex::decode("81a46b696e64a5686f6c6c6f").expect("hex");
        let hash = chain_hash(
            &GENESIS,
            1,
            id.as_bytes(),
            b"player-alice",
            b"funds_deposited",
            &data,
            b"",
        );
        assert_eq!(
            hex::encode(hash),
            "565ce6e737dd3975d5904a7f84d6322061ebfa330a257470d8750e2e30858ca5"
        );
    }

    /// Every inside bet on the layout, enumerated from its geometry rather than from rules.
    fn layout_bets() -> Vec<(Kind, Vec<u8>)> {
        let mut bets = Vec::new();
        let at = |row: u8, col: u8| row * 3 + col + 1; // rows 0..12, columns 0..3
        for p in 0..37 {
            bets.push((Kind::Straight, vec![p]));
        }
        for row in 0..12 {
            for col in 0..3 {
                if col < 2 {
                    bets.push((Kind::Split, vec![at(row, col), at(row, col + 1)]));
                }
                if row < 11 {
                    bets.push((Kind::Split, vec![at(row, col), at(row + 1, col)]));
                }
                if col < 2 && row < 11 {
                    bets.push((
                        Kind::Corner,
                        vec![
                            at(row, col),
                            at(row, col + 1),
                            at(row + 1, col),
                            at(row + 1, col + 1),
                        ],
                    ));
                }
            }
            bets.push((Kind::Street, (0..3).map(|c| at(row, c)).collect()));
            if row < 11 {
                bets.push((Kind::SixLine, (0..6).map(|c| at(row, 0) + c).collect()));
            }
        }
        for n in 1..=3 {
            bets.push((Kind::Split, vec![0, n]));
        }
        bets.push((Kind::Street, vec![0, 1, 2]));
        bets.push((Kind::Street, vec![0, 2, 3]));
        bets.push((Kind::Corner, vec![0, 1, 2, 3]));
        bets
    }

    fn name(kind: Kind) -> &'static str {
        match kind {
            Kind::Straight => "straight",
            Kind::Split => "split",
            Kind::Street => "street",
            Kind::Corner => "corner",
            Kind::SixLine => "six_line",
            _ => unreachable!("inside kinds only"),
        }
    }

    #[test]
    fn the_layout_has_exactly_the_published_inside_bets() {
        let valid = layout_bets();
        // 37 straights, 57 + 3 splits, 12 + 2 streets, 22 + 1 corners, 11 six lines.
        assert_eq!(valid.len(), 37 + 60 + 14 + 23 + 11);
        for (kind, numbers) in &valid {
            assert!(
                Wager::new(name(*kind), numbers, None).is_ok(),
                "{kind:?} {numbers:?}"
            );
        }
        // Every other set of two, three or four pockets is refused, and every other run of six
        // within nine consecutive pockets.
        fn subsets(from: &[u8], len: usize) -> Vec<Vec<u8>> {
            if len == 0 {
                return vec![Vec::new()];
            }
            let mut all = Vec::new();
            for (i, &first) in from.iter().enumerate() {
                for mut rest in subsets(&from[i + 1..], len - 1) {
                    rest.insert(0, first);
                    all.push(rest);
                }
            }
            all
        }
        let pockets: Vec<u8> = (0..37).collect();
        let mut candidates: Vec<(Kind, Vec<u8>)> = Vec::new();
        for (kind, len) in [(Kind::Split, 2), (Kind::Street, 3), (Kind::Corner, 4)] {
            candidates.extend(subsets(&pockets, len).into_iter().map(|n| (kind, n)));
        }
        for start in 0..29 {
            let window: Vec<u8> = (start..start + 9).collect();
            candidates.extend(subsets(&window, 6).into_iter().map(|n| (Kind::SixLine, n)));
        }
        for (kind, numbers) in candidates {
            let listed = valid.iter().any(|(k, n)| *k == kind && *n == numbers);
            assert_eq!(
                Wager::new(name(kind), &numbers, None).is_ok(),
                listed,
                "{kind:?} {numbers:?}"
            );
        }
    }

    #[test]
    fn every_bet_returns_thirty_six_stakes_over_the_wheel() {
        let mut wagers: Vec<Wager> = layout_bets()
            .into_iter()
            .map(|(kind, numbers)| Wager::new(name(kind), &numbers, None).expect("valid"))
            .collect();
        for kind in ["red", "black", "odd", "even", "low", "high"] {
            wagers.push(Wager::new(kind, &[], None).expect("valid"));
        }
        for kind in ["dozen", "column"] {
            for i in 1..=3 {
                wagers.push(Wager::new(kind, &[], Some(i)).expect("valid"));
            }
        }
        for wager in wagers {
            let total: i64 = (0..37)
                .map(|p| wager.payout(10, p).expect("no overflow"))
                .sum();
            assert_eq!(total, 360, "{wager:?}");
            assert_eq!(wager.payout(10, 0) != Some(0), wager.wins(0));
        }
    }

    #[test]
    fn outside_bets_cover_the_published_pockets() {
        let red = Wager::new("red", &[], None).expect("red");
        assert!(red.wins(1) && red.wins(36) && !red.wins(2) && !red.wins(0));
        let black = Wager::new("black", &[], None).expect("black");
        assert!(black.wins(2) && black.wins(35) && !black.wins(0) && !black.wins(3));
        let dozen = Wager::new("dozen", &[], Some(2)).expect("dozen");
        assert!(dozen.wins(13) && dozen.wins(24) && !dozen.wins(12) && !dozen.wins(25));
        let column = Wager::new("column", &[], Some(1)).expect("column");
        assert!(column.wins(1) && column.wins(34) && !column.wins(3) && !column.wins(0));
        let even = Wager::new("even", &[], None).expect("even");
        assert!(even.wins(36) && !even.wins(0));
        assert_eq!(red.payout(100, 3), Some(200));
        assert_eq!(
            Wager::new("straight", &[17], None)
                .expect("straight")
                .payout(100, 17),
            Some(3600)
        );
        assert!(Wager::new("dozen", &[], Some(4)).is_err());
        assert!(Wager::new("red", &[1], None).is_err());
        assert!(Wager::new("split", &[3, 4], None).is_err());
        assert!(Wager::new("sideways", &[], None).is_err());
    }
}

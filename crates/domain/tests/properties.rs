//! Property tests of the domain's invariants, with fixed seeds so every run checks the same cases.
//!
//! Case counts (all with `RngSeed::Fixed(SEED)`, no persistence files):
//! - (a) payouts: 2 000 random (selection, amount) cases, plus an exhaustive pass over all 157
//!   valid selections × 37 outcomes.
//! - (b) fairness: 1 000 random (seed, table, round) cases for verify/determinism, plus a
//!   chi-square test over 111 000 seeds derived as SHA-256 of a counter.
//! - (c) rejection step: 4 000 random blocks of eight words and 1 000 random block sequences.
//! - (d) phases: 2 000 random command sequences of up to 24 commands.
//! - (e) geometry: 5 000 arbitrary number sets and 5 000 perturbed valid sets, each checked for all
//!   five inside kinds, plus 256 dozen/column indexes.
//! - wallet and bets: 4 000 debit/credit cases, 2 000 bet validations, 500 settled rounds.
//! - timestamps: 2 000 round trips.

use std::collections::BTreeSet;
use std::num::NonZeroU32;
use std::time::Duration;

use domain::fairness::{self, ROULETTE_WORD_LIMIT, draw_from_blocks, select_word};
use domain::{
    BetId, BettingWindow, Money, Outcome, Phase, PlayerId, RawSelection, Rejection, RoundCommand,
    RoundEvent, RoundId, RoundState, Selection, SelectionKind, ServerSeed, TableId, TableLimits,
    Timestamp, apply, credit, debit, decide, settle, validate_bet,
};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use sha2::{Digest, Sha256};

const SEED: u64 = 0x00C0_FFEE_5EED;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(SEED),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// An independent description of the table, written from the layout's rows and columns rather
/// than from the arithmetic the domain uses.
mod oracle {
    use super::*;

    pub const INSIDE: [SelectionKind; 5] = [
        SelectionKind::Straight,
        SelectionKind::Split,
        SelectionKind::Street,
        SelectionKind::Corner,
        SelectionKind::SixLine,
    ];

    /// The twelve rows of the layout, left to right; `rows()[r][c]` is in column `c + 1`.
    pub fn rows() -> Vec<[u8; 3]> {
        let mut rows = Vec::new();
        let mut n = 1;
        while n <= 36 {
            rows.push([n, n + 1, n + 2]);
            n += 3;
        }
        rows
    }

    fn sorted(numbers: &[u8]) -> Vec<u8> {
        let mut v = numbers.to_vec();
        v.sort_unstable();
        v
    }

    /// Every valid number set of an inside bet.
    pub fn valid(kind: SelectionKind) -> BTreeSet<Vec<u8>> {
        let rows = rows();
        let mut sets = BTreeSet::new();
        match kind {
            SelectionKind::Straight => {
                sets.insert(vec![0]);
                for row in &rows {
                    for &n in row {
                        sets.insert(vec![n]);
                    }
                }
            }
            SelectionKind::Split => {
                for zero_pair in [[0, 1], [0, 2], [0, 3]] {
                    sets.insert(zero_pair.to_vec());
                }
                for (r, row) in rows.iter().enumerate() {
                    for c in 0..2 {
                        sets.insert(sorted(&[row[c], row[c + 1]]));
                    }
                    if let Some(below) = rows.get(r + 1) {
                        for c in 0..3 {
                            sets.insert(sorted(&[row[c], below[c]]));
                        }
                    }
                }
            }
            SelectionKind::Street => {
                sets.insert(vec![0, 1, 2]);
                sets.insert(vec![0, 2, 3]);
                for row in &rows {
                    sets.insert(row.to_vec());
                }
            }
            SelectionKind::Corner => {
                sets.insert(vec![0, 1, 2, 3]);
                for pair in rows.windows(2) {
                    for c in 0..2 {
                        sets.insert(sorted(&[
                            pair[0][c],
                            pair[0][c + 1],
                            pair[1][c],
                            pair[1][c + 1],
                        ]));
                    }
                }
            }
            SelectionKind::SixLine => {
                for pair in rows.windows(2) {
                    sets.insert(sorted(&[pair[0], pair[1]].concat()));
                }
            }
            _ => {}
        }
        sets
    }

    const RED: [u8; 18] = [
        1, 3, 5, 7, 9, 12, 14, 16, 18, 19, 21, 23, 25, 27, 30, 32, 34, 36,
    ];

    /// The pockets a selection covers, from the layout and the wheel's colours.
    pub fn covered(raw: &RawSelection) -> BTreeSet<u8> {
        let non_zero = 1..=36u8;
        match raw {
            RawSelection::Straight { numbers }
            | RawSelection::Split { numbers }
            | RawSelection::Street { numbers }
            | RawSelection::Corner { numbers }
            | RawSelection::SixLine { numbers } => numbers.iter().copied().collect(),
            RawSelection::Red => RED.into_iter().collect(),
            RawSelection::Black => non_zero.filter(|n| !RED.contains(n)).collect(),
            RawSelection::Odd => non_zero.filter(|n| n % 2 == 1).collect(),
            RawSelection::Even => non_zero.filter(|n| n % 2 == 0).collect(),
            RawSelection::Low => (1..=18).collect(),
            RawSelection::High => (19..=36).collect(),
            RawSelection::Dozen { index } => rows()
                .iter()
                .skip(4 * usize::from(*index - 1))
                .take(4)
                .flatten()
                .copied()
                .collect(),
            RawSelection::Column { index } => rows()
                .iter()
                .map(|row| row[usize::from(*index - 1)])
                .collect(),
        }
    }

    /// the odds table of docs/contract/events.md.
    pub fn net_odds(kind: SelectionKind) -> i64 {
        match kind {
            SelectionKind::Straight => 35,
            SelectionKind::Split => 17,
            SelectionKind::Street => 11,
            SelectionKind::Corner => 8,
            SelectionKind::SixLine => 5,
            SelectionKind::Dozen | SelectionKind::Column => 2,
            _ => 1,
        }
    }

    pub fn raw(kind: SelectionKind, numbers: Vec<u8>) -> RawSelection {
        match kind {
            SelectionKind::Straight => RawSelection::Straight { numbers },
            SelectionKind::Split => RawSelection::Split { numbers },
            SelectionKind::Street => RawSelection::Street { numbers },
            SelectionKind::Corner => RawSelection::Corner { numbers },
            _ => RawSelection::SixLine { numbers },
        }
    }

    /// Every bet on the table, in wire form.
    pub fn all_raw() -> Vec<RawSelection> {
        let mut all = Vec::new();
        for kind in INSIDE {
            for numbers in valid(kind) {
                all.push(raw(kind, numbers));
            }
        }
        all.extend([
            RawSelection::Red,
            RawSelection::Black,
            RawSelection::Odd,
            RawSelection::Even,
            RawSelection::Low,
            RawSelection::High,
        ]);
        for index in 1..=3 {
            all.push(RawSelection::Dozen { index });
            all.push(RawSelection::Column { index });
        }
        all
    }
}

fn money(n: i64) -> Money {
    Money::new(n).expect("valid amount")
}

#[test]
fn the_oracle_knows_every_bet_on_the_table() {
    let counts: Vec<usize> = oracle::INSIDE
        .iter()
        .map(|&k| oracle::valid(k).len())
        .collect();
    // 37 straights; 24 + 33 + 3 splits; 12 + 2 streets; 22 + 1 corners; 11 six-lines.
    assert_eq!(counts, vec![37, 60, 14, 23, 11]);
    assert_eq!(oracle::all_raw().len(), 157);
}

// (a) For every valid selection, payouts over the 37 outcomes sum to 36 × amount, and each
// outcome pays what the odds table says.

fn check_payouts(raw: &RawSelection, amount: Money) -> Result<(), TestCaseError> {
    let selection =
        Selection::parse(raw.clone()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let covered = oracle::covered(raw);
    let odds = oracle::net_odds(raw.kind());
    prop_assert_eq!(i64::from(selection.net_odds()), odds);
    let mut total = 0i64;
    for pocket in 0..=36u8 {
        let outcome = Outcome::new(pocket).expect("pocket");
        let paid = selection.payout(amount, outcome).expect("in range").get();
        let expected = if covered.contains(&pocket) {
            amount.get() * (odds + 1)
        } else {
            0
        };
        prop_assert_eq!(paid, expected, "{:?} on {}", raw, pocket);
        prop_assert_eq!(selection.wins(outcome), covered.contains(&pocket));
        total += paid;
    }
    prop_assert_eq!(total, 36 * amount.get(), "{:?}", raw);
    Ok(())
}

#[test]
fn every_selection_pays_back_thirty_six_times_its_stake_over_the_wheel() {
    for raw in oracle::all_raw() {
        for amount in [1, 10, 100_000, Money::MAX_MINOR / 36] {
            check_payouts(&raw, money(amount)).expect("payouts match the odds table");
        }
    }
}

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn payouts_match_the_odds_table_for_random_selections_and_stakes(
        index in 0..157usize,
        amount in 1..=Money::MAX_MINOR / 36,
    ) {
        let raw = &oracle::all_raw()[index];
        check_payouts(raw, money(amount))?;
    }
}

// (b) Fairness outcomes verify, are deterministic, and are uniform.

fn table_id() -> impl Strategy<Value = TableId> {
    "[A-Za-z0-9_-]{1,64}".prop_map(|s| TableId::parse(&s).expect("matches the id pattern"))
}

proptest! {
    #![proptest_config(config(1_000))]

    #[test]
    fn outcomes_are_deterministic_and_verify_against_their_commitment(
        bytes in any::<[u8; 32]>(),
        table in table_id(),
        round in 1..=u64::MAX,
        flip in 0..256usize,
    ) {
        let seed = ServerSeed::from_bytes(bytes);
        let round = RoundId::new(round).expect("non-zero");
        let outcome = fairness::outcome(&seed, &table, round);
        prop_assert_eq!(outcome, fairness::outcome(&seed.clone(), &table.clone(), round));
        let committed = seed.hash();
        prop_assert_eq!(fairness::verify(&table, round, &committed, &seed, outcome), Ok(()));

        let wrong = Outcome::new((outcome.get() + 1) % 37).expect("pocket");
        let is_outcome_mismatch = matches!(
            fairness::verify(&table, round, &committed, &seed, wrong),
            Err(fairness::FairnessError::OutcomeMismatch { .. })
        );
        prop_assert!(is_outcome_mismatch);

        let mut other = bytes;
        other[flip / 8] ^= 1 << (flip % 8);
        let is_seed_mismatch = matches!(
            fairness::verify(&table, round, &committed, &ServerSeed::from_bytes(other), outcome),
            Err(fairness::FairnessError::SeedMismatch { .. })
        );
        prop_assert!(is_seed_mismatch);

        // The outcome is the first accepted word of the HMAC blocks, reduced mod 37.
        let (word, _) = draw_from_blocks(
            |i| fairness::block_words(&seed, &table, round, i),
            u64::from(ROULETTE_WORD_LIMIT),
        );
        prop_assert!(word < ROULETTE_WORD_LIMIT);
        prop_assert_eq!(u32::from(outcome.get()), word % 37);
    }
}

#[test]
fn outcomes_over_111000_seeds_pass_a_chi_square_test_at_p_0_001() {
    // 111 000 = 37 × 3 000, so every pocket expects exactly 3 000 hits.
    const SEEDS: u64 = 111_000;
    const CRITICAL_36_DF_P_0_001: f64 = 67.985;
    let table = TableId::parse("roulette-1").expect("valid table");
    let mut counts = [0u64; 37];
    for counter in 0..SEEDS {
        let seed = ServerSeed::from_bytes(Sha256::digest(counter.to_be_bytes()).into());
        let round = RoundId::new(counter % 1_000 + 1).expect("non-zero");
        counts[usize::from(fairness::outcome(&seed, &table, round).get())] += 1;
    }
    let expected = SEEDS as f64 / 37.0;
    let chi_square: f64 = counts
        .iter()
        .map(|&observed| (observed as f64 - expected).powi(2) / expected)
        .sum();
    eprintln!(
        "chi-square over {SEEDS} seeds, 36 degrees of freedom: {chi_square:.3} \
         (critical value at p = 0.001: {CRITICAL_36_DF_P_0_001}); min {} max {}",
        counts.iter().min().unwrap_or(&0),
        counts.iter().max().unwrap_or(&0),
    );
    assert!(
        counts.iter().all(|&c| c > 0),
        "every pocket occurs: {counts:?}"
    );
    assert!(
        chi_square < CRITICAL_36_DF_P_0_001,
        "chi-square {chi_square} exceeds {CRITICAL_36_DF_P_0_001}: {counts:?}"
    );
}

// (c) A word ≥ 4294967289 is never used.

fn word() -> impl Strategy<Value = u32> {
    // Half the words near the top so that rejections are common, not one in 600 million.
    prop_oneof![4_294_967_280u32..=u32::MAX, any::<u32>()]
}

proptest! {
    #![proptest_config(config(4_000))]

    #[test]
    fn the_selected_word_is_the_first_one_below_the_limit(words in prop::array::uniform8(word())) {
        let limit = u64::from(ROULETTE_WORD_LIMIT);
        let first_below = words.iter().copied().find(|&w| w < ROULETTE_WORD_LIMIT);
        prop_assert_eq!(select_word(&words, limit), first_below);
        if let Some(w) = select_word(&words, limit) {
            prop_assert!(w <= 4_294_967_288);
        }
    }
}

proptest! {
    #![proptest_config(config(1_000))]

    #[test]
    fn the_draw_skips_whole_blocks_of_rejected_words(
        blocks in prop::collection::vec(prop::array::uniform8(4_294_967_289u32..=u32::MAX), 0..4),
        last in prop::array::uniform8(word())
            .prop_filter("one word accepted", |ws| ws.iter().any(|&w| w < ROULETTE_WORD_LIMIT)),
    ) {
        let rejected = blocks.len() as u64;
        let (w, block) = draw_from_blocks(
            |i| blocks.get(i as usize).copied().unwrap_or(last),
            u64::from(ROULETTE_WORD_LIMIT),
        );
        prop_assert_eq!(block, rejected);
        prop_assert!(w < ROULETTE_WORD_LIMIT);
        prop_assert_eq!(Some(w), last.iter().copied().find(|&x| x < ROULETTE_WORD_LIMIT));
    }
}

#[test]
fn a_draw_among_any_number_of_results_stays_in_range() {
    let seed = ServerSeed::from_bytes([42; 32]);
    let table = TableId::parse("t").expect("valid table");
    for n in [1u32, 2, 6, 37, 54, 1 << 31, u32::MAX] {
        let n = NonZeroU32::new(n).expect("non-zero");
        for round in 1..=20 {
            let round = RoundId::new(round).expect("non-zero");
            assert!(fairness::draw(&seed, &table, round, n) < n.get());
        }
    }
}

// (d) Phases never skip: a round only ever moves to its successor phase or to Voided.

#[derive(Debug, Clone)]
enum Step {
    Open { closes_in_ms: u64, honest: bool },
    Close,
    Declare { honest: bool },
    Settle { bets: u64, staked: i64, paid: i64 },
    Void { reason: &'static str },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3_000u64, any::<bool>()).prop_map(|(closes_in_ms, honest)| Step::Open {
            closes_in_ms,
            honest
        }),
        Just(Step::Close),
        any::<bool>().prop_map(|honest| Step::Declare { honest }),
        (0..4u64, 0..400i64, 0..10_000i64).prop_map(|(bets, staked, paid)| Step::Settle {
            bets,
            staked,
            paid
        }),
        prop_oneof![Just(""), Just("operator"), Just("  ")]
            .prop_map(|reason| Step::Void { reason }),
    ]
}

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn phases_never_skip_and_rejections_change_nothing(
        steps in prop::collection::vec((step(), 0..2_000u64), 0..24),
    ) {
        let committed = ServerSeed::from_bytes([1; 32]);
        let impostor = ServerSeed::from_bytes([2; 32]);
        let table = TableId::parse("roulette-1").expect("valid table");
        let mut state = RoundState::new(table.clone(), RoundId::FIRST);
        let mut now = Timestamp::parse("2026-11-25T22:17:00Z").expect("valid");
        let mut history = Vec::new();
        for (step, advance_ms) in steps {
            now = now.checked_add(Duration::from_millis(advance_ms)).expect("in range");
            let command = match step {
                Step::Open { closes_in_ms, honest } => RoundCommand::Open {
                    closes_at: now
                        .checked_add(Duration::from_millis(closes_in_ms))
                        .expect("in range"),
                    seed_hash: if honest { committed.hash() } else { impostor.hash() },
                },
                Step::Close => RoundCommand::CloseBetting,
                Step::Declare { honest } => RoundCommand::DeclareOutcome {
                    server_seed: if honest { committed.clone() } else { impostor.clone() },
                },
                Step::Settle { bets, staked, paid } => RoundCommand::MarkSettled {
                    bets,
                    staked: money(staked),
                    paid: money(paid),
                },
                Step::Void { reason } => RoundCommand::Void { reason: reason.to_owned() },
            };
            let before = state.clone();
            match decide(&state, command, now) {
                Ok(events) => {
                    prop_assert_eq!(events.len(), 1);
                    for event in &events {
                        let to = event.phase_after();
                        let legal = match before.phase() {
                            None => to == Phase::Open,
                            Some(from) => {
                                let voids = matches!(from, Phase::Open | Phase::Closed);
                                from.successor() == Some(to) || (to == Phase::Voided && voids)
                            }
                        };
                        prop_assert!(legal, "{:?} -> {:?}", before.phase(), to);
                        if let RoundEvent::OutcomeDeclared { outcome, server_seed } = event {
                            let hash = before.seed_hash().expect("opened rounds have a hash");
                            let verified =
                                fairness::verify(&table, RoundId::FIRST, hash, server_seed, *outcome);
                            prop_assert_eq!(verified, Ok(()));
                        }
                        apply(&mut state, event);
                        prop_assert_eq!(state.phase(), Some(to));
                        history.push(event.clone());
                    }
                }
                Err(rejection) => {
                    prop_assert_eq!(&state, &before);
                    if let Rejection::IllegalTransition { from: said, .. } = rejection {
                        prop_assert_eq!(before.phase(), Some(said));
                    }
                }
            }
        }
        // An auditor rebuilding the round from its events reaches the same state.
        let rebuilt = RoundState::replay(table, RoundId::FIRST, &history);
        prop_assert_eq!(rebuilt, Ok(state));
    }
}

// (e) Invalid geometry is always rejected, and valid geometry always accepted, in any order.

fn numbers() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(0..=40u8, 0..=7)
}

fn agrees_with_oracle(kind: SelectionKind, numbers: &[u8]) -> Result<(), TestCaseError> {
    let mut key = numbers.to_vec();
    key.sort_unstable();
    let valid = oracle::valid(kind).contains(&key);
    let parsed = Selection::parse(oracle::raw(kind, numbers.to_vec()));
    prop_assert_eq!(
        parsed.is_ok(),
        valid,
        "{} {:?}: {:?}",
        kind,
        numbers,
        parsed
    );
    if let Ok(selection) = parsed {
        prop_assert_eq!(selection.numbers(), key.as_slice());
        prop_assert_eq!(selection.kind(), kind);
    }
    // The wire path validates the same way.
    let json = serde_json::json!({ "kind": kind.as_str(), "numbers": numbers });
    prop_assert_eq!(serde_json::from_value::<Selection>(json).is_ok(), valid);
    Ok(())
}

proptest! {
    #![proptest_config(config(5_000))]

    #[test]
    fn arbitrary_number_sets_are_accepted_exactly_when_the_layout_has_them(numbers in numbers()) {
        for kind in oracle::INSIDE {
            agrees_with_oracle(kind, &numbers)?;
        }
    }

    #[test]
    fn near_misses_of_valid_bets_are_accepted_exactly_when_the_layout_has_them(
        pick in any::<prop::sample::Index>(),
        position in any::<prop::sample::Index>(),
        delta in prop_oneof![-4i16..=-1, 1i16..=4],
        shuffle in any::<prop::sample::Index>(),
    ) {
        for kind in oracle::INSIDE {
            let valid: Vec<Vec<u8>> = oracle::valid(kind).into_iter().collect();
            let mut numbers = pick.get(&valid).clone();
            // The valid set itself, in a rotated order, must be accepted.
            let len = numbers.len();
            numbers.rotate_left(shuffle.index(len));
            agrees_with_oracle(kind, &numbers)?;
            // One number moved by up to four places: sometimes still valid, usually not.
            let i = position.index(len);
            let moved = i16::from(numbers[i]) + delta;
            numbers[i] = u8::try_from(moved.rem_euclid(41)).expect("0..41");
            agrees_with_oracle(kind, &numbers)?;
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn dozens_and_columns_exist_only_for_indexes_one_to_three(index in any::<u8>()) {
        let valid = (1..=3).contains(&index);
        prop_assert_eq!(Selection::parse(RawSelection::Dozen { index }).is_ok(), valid);
        prop_assert_eq!(Selection::parse(RawSelection::Column { index }).is_ok(), valid);
    }
}

// Wallet and bets.

fn amount() -> impl Strategy<Value = Money> {
    prop_oneof![
        0..=1_000i64,
        Money::MAX_MINOR - 1_000..=Money::MAX_MINOR,
        0..=Money::MAX_MINOR
    ]
    .prop_map(money)
}

proptest! {
    #![proptest_config(config(4_000))]

    #[test]
    fn a_debit_never_takes_a_balance_below_zero_and_a_credit_never_above_the_maximum(
        balance in amount(),
        change in amount(),
    ) {
        match debit(balance, change) {
            Ok(after) => {
                prop_assert!(change <= balance);
                prop_assert_eq!(after.get(), balance.get() - change.get());
            }
            Err(_) => prop_assert!(change > balance),
        }
        match credit(balance, change) {
            Ok(after) => {
                prop_assert_eq!(after.get(), balance.get() + change.get());
                prop_assert_eq!(debit(after, change), Ok(balance));
            }
            Err(_) => prop_assert!(balance.get() + change.get() > Money::MAX_MINOR),
        }
    }
}

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn an_accepted_bet_respects_the_window_the_limits_and_the_balance(
        phase in prop::sample::select(vec![
            Phase::Open,
            Phase::Closed,
            Phase::Resulted,
            Phase::Settled,
            Phase::Voided,
        ]),
        seen in any::<bool>(),
        closes_in_ms in -2_000i64..2_000,
        stake in 1..200_000i64,
        already in 0..1_100_000i64,
        balance in 0..300_000i64,
    ) {
        let now = Timestamp::parse("2026-11-25T22:17:00Z").expect("valid");
        let closes_at = Timestamp::from_unix_micros(now.unix_micros() + closes_in_ms * 1_000)
            .expect("in range");
        let window = seen.then_some(BettingWindow { phase, closes_at });
        let limits = TableLimits::default();
        let result =
            validate_bet(window, now, money(stake), &limits, money(already), money(balance));
        let open = seen && phase == Phase::Open && now < closes_at;
        let within = (10..=100_000).contains(&stake) && already + stake <= 1_000_000;
        let code = match &result {
            Ok(after) => {
                prop_assert_eq!(after.get(), balance - stake);
                None
            }
            Err(rejection) => Some(rejection.code()),
        };
        let expected = if !open {
            Some("BETTING_CLOSED")
        } else if !within {
            Some("LIMIT_EXCEEDED")
        } else if stake > balance {
            Some("INSUFFICIENT_FUNDS")
        } else {
            None
        };
        prop_assert_eq!(code, expected);
    }
}

proptest! {
    #![proptest_config(config(500))]

    #[test]
    fn settlement_returns_exactly_thirty_six_thirty_sevenths_of_stakes_over_the_wheel(
        bets in prop::collection::vec((0..157usize, 1..=100_000i64), 0..20),
    ) {
        let all = oracle::all_raw();
        let bets: Vec<domain::Bet> = bets
            .into_iter()
            .enumerate()
            .map(|(n, (index, stake))| domain::Bet {
                id: BetId::from_uuid(uuid::Uuid::from_u128(n as u128 + 1)),
                player: PlayerId::parse("p").expect("valid"),
                table: TableId::parse("roulette-1").expect("valid"),
                round: RoundId::FIRST,
                selection: Selection::parse(all[index].clone()).expect("valid"),
                amount: money(stake),
            })
            .collect();
        let staked: i64 = bets.iter().map(|b| b.amount.get()).sum();
        let mut paid_over_wheel = 0;
        for pocket in 0..=36 {
            let result = settle(&bets, Outcome::new(pocket).expect("pocket")).expect("in range");
            prop_assert_eq!(result.totals.bets, bets.len() as u64);
            prop_assert_eq!(result.totals.staked.get(), staked);
            let sum: i64 = result.payouts.iter().map(|(_, m)| m.get()).sum();
            prop_assert_eq!(result.totals.paid.get(), sum);
            paid_over_wheel += sum;
        }
        prop_assert_eq!(paid_over_wheel, 36 * staked);
    }
}

// Timestamps.

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn timestamps_round_trip_through_their_text_and_microseconds(
        micros in -62_167_219_200_000_000i64..=253_402_300_799_999_999,
    ) {
        let at = Timestamp::from_unix_micros(micros).expect("years 0000..=9999");
        prop_assert_eq!(at.unix_micros(), micros);
        let text = at.to_string();
        prop_assert_eq!(text.len(), 27);
        prop_assert!(text.ends_with('Z'));
        prop_assert_eq!(Timestamp::parse(&text), Ok(at));
    }
}

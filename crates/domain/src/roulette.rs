//! European roulette: the wheel's pockets, the table layout, the selections a player can bet on,
//! and what each pays (docs/contract/events.md).
//!
//! A [`Selection`] can only be built by parsing, and parsing checks the geometry against the real
//! layout (twelve rows of three, `0` above the first row), so the rest of Croupier never sees a
//! split of two numbers that do not touch. Payouts are `amount × (net odds + 1)` for a win and 0
//! otherwise; over the 37 pockets every selection pays back exactly `36 × amount`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::money::{Money, MoneyError};

/// The number of pockets on a European wheel: 0 to 36.
pub const POCKETS: u8 = 37;

/// The red pockets; the other non-zero pockets are black.
const RED: [u8; 18] = [
    1, 3, 5, 7, 9, 12, 14, 16, 18, 19, 21, 23, 25, 27, 30, 32, 34, 36,
];

/// The pocket a round lands in, 0 ..= 36.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Outcome(u8);

/// A pocket number outside 0 ..= 36.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a pocket of a European wheel (0 to 36)")]
pub struct OutcomeError(pub u8);

impl Outcome {
    pub const fn new(pocket: u8) -> Result<Outcome, OutcomeError> {
        if pocket < POCKETS {
            Ok(Outcome(pocket))
        } else {
            Err(OutcomeError(pocket))
        }
    }

    pub const fn get(self) -> u8 {
        self.0
    }

    /// The 37 pockets in order.
    pub fn all() -> impl Iterator<Item = Outcome> {
        (0..POCKETS).map(Outcome)
    }

    pub fn color(self) -> Color {
        if self.0 == 0 {
            Color::Green
        } else if RED.contains(&self.0) {
            Color::Red
        } else {
            Color::Black
        }
    }
}

impl TryFrom<u8> for Outcome {
    type Error = OutcomeError;

    fn try_from(pocket: u8) -> Result<Self, OutcomeError> {
        Self::new(pocket)
    }
}

impl From<Outcome> for u8 {
    fn from(outcome: Outcome) -> u8 {
        outcome.0
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The colour of a pocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Color {
    Green,
    Red,
    Black,
}

/// The kinds of bet, with their wire names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectionKind {
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

impl SelectionKind {
    pub const ALL: [SelectionKind; 13] = [
        Self::Straight,
        Self::Split,
        Self::Street,
        Self::Corner,
        Self::SixLine,
        Self::Red,
        Self::Black,
        Self::Odd,
        Self::Even,
        Self::Low,
        Self::High,
        Self::Dozen,
        Self::Column,
    ];

    /// The `kind` string on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Straight => "straight",
            Self::Split => "split",
            Self::Street => "street",
            Self::Corner => "corner",
            Self::SixLine => "six_line",
            Self::Red => "red",
            Self::Black => "black",
            Self::Odd => "odd",
            Self::Even => "even",
            Self::Low => "low",
            Self::High => "high",
            Self::Dozen => "dozen",
            Self::Column => "column",
        }
    }

    /// Net odds `n` of `n:1`: a winning stake is returned with `n` times itself.
    pub const fn net_odds(self) -> u32 {
        match self {
            Self::Straight => 35,
            Self::Split => 17,
            Self::Street => 11,
            Self::Corner => 8,
            Self::SixLine => 5,
            Self::Dozen | Self::Column => 2,
            Self::Red | Self::Black | Self::Odd | Self::Even | Self::Low | Self::High => 1,
        }
    }

    /// How many numbers an inside bet names; `None` for outside bets.
    pub const fn inside_len(self) -> Option<usize> {
        match self {
            Self::Straight => Some(1),
            Self::Split => Some(2),
            Self::Street => Some(3),
            Self::Corner => Some(4),
            Self::SixLine => Some(6),
            _ => None,
        }
    }
}

impl fmt::Display for SelectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A selection exactly as it appears on the wire, before its geometry is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RawSelection {
    Straight { numbers: Vec<u8> },
    Split { numbers: Vec<u8> },
    Street { numbers: Vec<u8> },
    Corner { numbers: Vec<u8> },
    SixLine { numbers: Vec<u8> },
    Red,
    Black,
    Odd,
    Even,
    Low,
    High,
    Dozen { index: u8 },
    Column { index: u8 },
}

impl RawSelection {
    pub fn kind(&self) -> SelectionKind {
        match self {
            Self::Straight { .. } => SelectionKind::Straight,
            Self::Split { .. } => SelectionKind::Split,
            Self::Street { .. } => SelectionKind::Street,
            Self::Corner { .. } => SelectionKind::Corner,
            Self::SixLine { .. } => SelectionKind::SixLine,
            Self::Red => SelectionKind::Red,
            Self::Black => SelectionKind::Black,
            Self::Odd => SelectionKind::Odd,
            Self::Even => SelectionKind::Even,
            Self::Low => SelectionKind::Low,
            Self::High => SelectionKind::High,
            Self::Dozen { .. } => SelectionKind::Dozen,
            Self::Column { .. } => SelectionKind::Column,
        }
    }
}

/// Why a raw selection is not a bet that exists on the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error("a {kind} bet names {expected} number(s), not {got}")]
    WrongCount {
        kind: SelectionKind,
        expected: usize,
        got: usize,
    },
    #[error("{0} is not a pocket (0 to 36)")]
    NotAPocket(u8),
    #[error("{0} is named twice")]
    Repeated(u8),
    #[error("{numbers:?} is not a {kind} on the table layout")]
    NotOnLayout {
        kind: SelectionKind,
        numbers: Vec<u8>,
    },
    #[error("a {kind} index is 1, 2 or 3, not {index}")]
    BadIndex { kind: SelectionKind, index: u8 },
}

/// The most numbers any inside bet names (a six-line).
const MAX_INSIDE: usize = 6;

/// A bet that exists on the table: its geometry has been checked, its numbers are sorted.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Selection {
    kind: SelectionKind,
    /// Sorted; only the first `len` entries are meaningful (the rest are zero so that derived
    /// equality and hashing see one representation per selection).
    numbers: [u8; MAX_INSIDE],
    len: u8,
    /// 1..=3 for dozens and columns, 0 otherwise.
    index: u8,
    /// Bit `p` is set when pocket `p` wins; computed once so that settling a round is a mask test.
    pockets: u64,
}

impl Selection {
    /// Checks a wire selection against the layout.
    pub fn parse(raw: RawSelection) -> Result<Selection, SelectionError> {
        let kind = raw.kind();
        match raw {
            RawSelection::Straight { numbers }
            | RawSelection::Split { numbers }
            | RawSelection::Street { numbers }
            | RawSelection::Corner { numbers }
            | RawSelection::SixLine { numbers } => Self::inside(kind, &numbers),
            RawSelection::Red => Ok(Self::outside(kind, 0, |p| Outcome(p).color() == Color::Red)),
            RawSelection::Black => Ok(Self::outside(kind, 0, |p| {
                Outcome(p).color() == Color::Black
            })),
            RawSelection::Odd => Ok(Self::outside(kind, 0, |p| p % 2 == 1)),
            RawSelection::Even => Ok(Self::outside(kind, 0, |p| p % 2 == 0)),
            RawSelection::Low => Ok(Self::outside(kind, 0, |p| p <= 18)),
            RawSelection::High => Ok(Self::outside(kind, 0, |p| p >= 19)),
            RawSelection::Dozen { index } => {
                check_index(kind, index)?;
                Ok(Self::outside(kind, index, |p| (p - 1) / 12 + 1 == index))
            }
            RawSelection::Column { index } => {
                check_index(kind, index)?;
                Ok(Self::outside(kind, index, |p| (p - 1) % 3 + 1 == index))
            }
        }
    }

    /// Outside bets cover only non-zero pockets: zero loses every one of them.
    fn outside(kind: SelectionKind, index: u8, wins: impl Fn(u8) -> bool) -> Selection {
        let pockets = (1..POCKETS)
            .filter(|&p| wins(p))
            .fold(0u64, |mask, p| mask | 1 << p);
        Selection {
            kind,
            numbers: [0; MAX_INSIDE],
            len: 0,
            index,
            pockets,
        }
    }

    fn inside(kind: SelectionKind, given: &[u8]) -> Result<Selection, SelectionError> {
        let expected = kind.inside_len().unwrap_or(0);
        if given.len() != expected {
            return Err(SelectionError::WrongCount {
                kind,
                expected,
                got: given.len(),
            });
        }
        let mut numbers = [0u8; MAX_INSIDE];
        numbers[..expected].copy_from_slice(given);
        let sorted = &mut numbers[..expected];
        sorted.sort_unstable();
        if let Some(&bad) = sorted.iter().find(|&&n| n >= POCKETS) {
            return Err(SelectionError::NotAPocket(bad));
        }
        if let Some(pair) = sorted.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(SelectionError::Repeated(pair[0]));
        }
        if !layout::is_inside_bet(kind, sorted) {
            return Err(SelectionError::NotOnLayout {
                kind,
                numbers: sorted.to_vec(),
            });
        }
        let pockets = sorted.iter().fold(0u64, |mask, &p| mask | 1 << p);
        Ok(Selection {
            kind,
            numbers,
            len: u8::try_from(expected).unwrap_or(0),
            index: 0,
            pockets,
        })
    }

    pub fn kind(&self) -> SelectionKind {
        self.kind
    }

    /// The numbers of an inside bet, sorted ascending; empty for outside bets.
    pub fn numbers(&self) -> &[u8] {
        &self.numbers[..usize::from(self.len)]
    }

    /// The dozen or column, 1 ..= 3; `None` for other bets.
    pub fn index(&self) -> Option<u8> {
        (self.index != 0).then_some(self.index)
    }

    pub fn net_odds(&self) -> u32 {
        self.kind.net_odds()
    }

    pub fn wins(&self, outcome: Outcome) -> bool {
        self.pockets & (1 << outcome.0) != 0
    }

    /// The pockets this selection wins on, ascending.
    pub fn winning_outcomes(&self) -> impl Iterator<Item = Outcome> + '_ {
        Outcome::all().filter(|&o| self.wins(o))
    }

    /// `amount × (net odds + 1)` when the selection wins, zero otherwise. Fails only when the win
    /// would exceed [`Money::MAX`], which table limits keep far away.
    pub fn payout(&self, amount: Money, outcome: Outcome) -> Result<Money, MoneyError> {
        if self.wins(outcome) {
            amount
                .checked_mul(u64::from(self.net_odds()) + 1)
                .ok_or(MoneyError::Overflow)
        } else {
            Ok(Money::ZERO)
        }
    }

    /// The wire form.
    pub fn to_raw(&self) -> RawSelection {
        let numbers = self.numbers().to_vec();
        match self.kind {
            SelectionKind::Straight => RawSelection::Straight { numbers },
            SelectionKind::Split => RawSelection::Split { numbers },
            SelectionKind::Street => RawSelection::Street { numbers },
            SelectionKind::Corner => RawSelection::Corner { numbers },
            SelectionKind::SixLine => RawSelection::SixLine { numbers },
            SelectionKind::Red => RawSelection::Red,
            SelectionKind::Black => RawSelection::Black,
            SelectionKind::Odd => RawSelection::Odd,
            SelectionKind::Even => RawSelection::Even,
            SelectionKind::Low => RawSelection::Low,
            SelectionKind::High => RawSelection::High,
            SelectionKind::Dozen => RawSelection::Dozen { index: self.index },
            SelectionKind::Column => RawSelection::Column { index: self.index },
        }
    }
}

fn check_index(kind: SelectionKind, index: u8) -> Result<(), SelectionError> {
    if (1..=3).contains(&index) {
        Ok(())
    } else {
        Err(SelectionError::BadIndex { kind, index })
    }
}

impl fmt::Debug for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Selection");
        s.field("kind", &self.kind);
        if self.len > 0 {
            s.field("numbers", &self.numbers());
        }
        if let Some(index) = self.index() {
            s.field("index", &index);
        }
        s.finish()
    }
}

impl TryFrom<RawSelection> for Selection {
    type Error = SelectionError;

    fn try_from(raw: RawSelection) -> Result<Self, SelectionError> {
        Self::parse(raw)
    }
}

impl From<Selection> for RawSelection {
    fn from(selection: Selection) -> RawSelection {
        selection.to_raw()
    }
}

impl Serialize for Selection {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_raw().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Selection {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = RawSelection::deserialize(deserializer)?;
        Selection::parse(raw).map_err(serde::de::Error::custom)
    }
}

/// The table layout: `0` on top, then twelve rows `3r+1, 3r+2, 3r+3` (r = 0..12) whose
/// positions in the row are the three columns.
mod layout {
    use super::SelectionKind;

    /// (row 0..12, column 0..3) of a pocket 1..=36; `None` for 0, which sits above row 0.
    fn cell(n: u8) -> Option<(u8, u8)> {
        (1..=36).contains(&n).then(|| ((n - 1) / 3, (n - 1) % 3))
    }

    /// The bets that include 0 are the only ones that cannot be described by cells: 0 touches
    /// each of 1, 2 and 3.
    const ZERO_BETS: [&[u8]; 6] = [
        &[0, 1],
        &[0, 2],
        &[0, 3],
        &[0, 1, 2],
        &[0, 2, 3],
        &[0, 1, 2, 3],
    ];

    /// `numbers` are sorted, distinct pockets and as many as `kind` needs.
    pub(super) fn is_inside_bet(kind: SelectionKind, numbers: &[u8]) -> bool {
        if numbers.first() == Some(&0) && numbers.len() > 1 {
            return ZERO_BETS.contains(&numbers);
        }
        let mut cells = Vec::with_capacity(numbers.len());
        for &n in numbers {
            match cell(n) {
                Some(c) => cells.push(c),
                None => return kind == SelectionKind::Straight,
            }
        }
        let rows = span(cells.iter().map(|&(r, _)| r));
        let cols = span(cells.iter().map(|&(_, c)| c));
        // The numbers are distinct, so a block of `rows × cols` cells holding exactly that many
        // numbers is filled completely: each bet is a full rectangle of the right shape.
        match kind {
            SelectionKind::Straight => true,
            SelectionKind::Split => matches!((rows, cols), (1, 2) | (2, 1)),
            SelectionKind::Street => (rows, cols) == (1, 3),
            SelectionKind::Corner => (rows, cols) == (2, 2),
            SelectionKind::SixLine => (rows, cols) == (2, 3),
            _ => false,
        }
    }

    /// max − min + 1 of a non-empty sequence.
    fn span(values: impl Iterator<Item = u8>) -> u8 {
        let (lo, hi) = values.fold((u8::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
        hi.saturating_sub(lo) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_json(json: &str) -> Result<Selection, String> {
        serde_json::from_str::<Selection>(json).map_err(|e| e.to_string())
    }

    fn inside(kind: SelectionKind, numbers: &[u8]) -> Result<Selection, SelectionError> {
        let numbers = numbers.to_vec();
        Selection::parse(match kind {
            SelectionKind::Straight => RawSelection::Straight { numbers },
            SelectionKind::Split => RawSelection::Split { numbers },
            SelectionKind::Street => RawSelection::Street { numbers },
            SelectionKind::Corner => RawSelection::Corner { numbers },
            _ => RawSelection::SixLine { numbers },
        })
    }

    #[test]
    fn zero_may_be_split_with_one_two_or_three_only() {
        for ok in [[0, 1], [0, 2], [0, 3], [2, 0]] {
            assert!(inside(SelectionKind::Split, &ok).is_ok(), "{ok:?}");
        }
        for bad in [[0, 4], [0, 36], [0, 5]] {
            assert!(inside(SelectionKind::Split, &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn zero_streets_and_first_four_are_valid() {
        assert!(inside(SelectionKind::Street, &[0, 1, 2]).is_ok());
        assert!(inside(SelectionKind::Street, &[3, 0, 2]).is_ok());
        assert!(inside(SelectionKind::Street, &[0, 1, 3]).is_err());
        assert!(inside(SelectionKind::Corner, &[3, 2, 1, 0]).is_ok());
        assert!(inside(SelectionKind::Street, &[0, 1, 2, 3]).is_err());
    }

    #[test]
    fn splits_touch_across_a_row_or_down_a_column_but_not_across_row_ends() {
        assert!(inside(SelectionKind::Split, &[1, 2]).is_ok());
        assert!(inside(SelectionKind::Split, &[1, 4]).is_ok());
        assert!(inside(SelectionKind::Split, &[33, 36]).is_ok());
        // 3 ends row 0 and 4 starts row 1: consecutive numbers that do not touch.
        assert!(matches!(
            inside(SelectionKind::Split, &[3, 4]),
            Err(SelectionError::NotOnLayout { .. })
        ));
        assert!(inside(SelectionKind::Split, &[1, 5]).is_err());
    }

    #[test]
    fn corners_and_six_lines_are_full_rectangles() {
        assert!(inside(SelectionKind::Corner, &[1, 2, 4, 5]).is_ok());
        assert!(inside(SelectionKind::Corner, &[32, 33, 35, 36]).is_ok());
        assert!(inside(SelectionKind::Corner, &[2, 3, 4, 5]).is_err());
        assert!(inside(SelectionKind::Corner, &[3, 4, 6, 7]).is_err());
        assert!(inside(SelectionKind::SixLine, &[31, 32, 33, 34, 35, 36]).is_ok());
        assert!(inside(SelectionKind::SixLine, &[2, 3, 4, 5, 6, 7]).is_err());
        assert!(inside(SelectionKind::Street, &[34, 35, 36]).is_ok());
        assert!(inside(SelectionKind::Street, &[2, 3, 4]).is_err());
    }

    #[test]
    fn counts_pockets_and_repeats_are_checked_before_geometry() {
        assert_eq!(
            inside(SelectionKind::Split, &[1]),
            Err(SelectionError::WrongCount {
                kind: SelectionKind::Split,
                expected: 2,
                got: 1
            })
        );
        assert_eq!(
            inside(SelectionKind::Straight, &[37]),
            Err(SelectionError::NotAPocket(37))
        );
        assert_eq!(
            inside(SelectionKind::Split, &[5, 5]),
            Err(SelectionError::Repeated(5))
        );
    }

    #[test]
    fn selections_parse_from_the_design_wire_shapes() {
        let s = parse_json(r#"{"kind":"six_line","numbers":[6,5,4,3,2,1]}"#).expect("valid");
        assert_eq!(s.kind(), SelectionKind::SixLine);
        assert_eq!(s.numbers(), &[1, 2, 3, 4, 5, 6]);
        let s = parse_json(r#"{"kind":"red"}"#).expect("valid");
        assert_eq!(s.kind(), SelectionKind::Red);
        let s = parse_json(r#"{"kind":"column","index":3}"#).expect("valid");
        assert_eq!(s.index(), Some(3));
        assert!(parse_json(r#"{"kind":"column","index":4}"#).is_err());
        assert!(parse_json(r#"{"kind":"split","numbers":[3,4]}"#).is_err());
        assert!(parse_json(r#"{"kind":"basket","numbers":[0,1,2]}"#).is_err());
        assert!(parse_json(r#"{"kind":"straight","numbers":[300]}"#).is_err());
        assert!(parse_json(r#"{"numbers":[1]}"#).is_err());
    }

    #[test]
    fn selections_serialize_sorted_in_the_design_wire_shapes() {
        let s = parse_json(r#"{"kind":"corner","numbers":[5,1,4,2]}"#).expect("valid");
        assert_eq!(
            serde_json::to_string(&s).expect("serialize"),
            r#"{"kind":"corner","numbers":[1,2,4,5]}"#
        );
        let s = parse_json(r#"{"kind":"even"}"#).expect("valid");
        assert_eq!(
            serde_json::to_string(&s).expect("serialize"),
            r#"{"kind":"even"}"#
        );
        let s = parse_json(r#"{"kind":"dozen","index":2}"#).expect("valid");
        assert_eq!(
            serde_json::to_string(&s).expect("serialize"),
            r#"{"kind":"dozen","index":2}"#
        );
    }

    #[test]
    fn selections_round_trip_through_messagepack_maps() {
        for json in [
            r#"{"kind":"split","numbers":[0,3]}"#,
            r#"{"kind":"high"}"#,
            r#"{"kind":"column","index":1}"#,
        ] {
            let s = parse_json(json).expect("valid");
            let packed = rmp_serde::to_vec_named(&s).expect("serialize");
            let back: Selection = rmp_serde::from_slice(&packed).expect("deserialize");
            assert_eq!(back, s);
            let as_value: serde_json::Value = rmp_serde::from_slice(&packed).expect("a map");
            assert_eq!(
                as_value,
                serde_json::from_str::<serde_json::Value>(json).expect("json")
            );
        }
    }

    #[test]
    fn zero_loses_every_outside_bet() {
        let zero = Outcome(0);
        for raw in [
            RawSelection::Red,
            RawSelection::Black,
            RawSelection::Odd,
            RawSelection::Even,
            RawSelection::Low,
            RawSelection::High,
            RawSelection::Dozen { index: 1 },
            RawSelection::Column { index: 1 },
        ] {
            let s = Selection::parse(raw).expect("valid");
            assert!(!s.wins(zero), "{s:?} must lose on zero");
        }
    }

    #[test]
    fn a_straight_on_17_pays_thirty_six_times_the_stake_on_17_and_nothing_otherwise() {
        let s = inside(SelectionKind::Straight, &[17]).expect("valid");
        let stake = Money::stake(100).expect("valid");
        assert_eq!(s.payout(stake, Outcome(17)).map(Money::get), Ok(3_600));
        assert_eq!(s.payout(stake, Outcome(18)), Ok(Money::ZERO));
        assert_eq!(s.payout(Money::MAX, Outcome(17)), Err(MoneyError::Overflow));
    }

    #[test]
    fn pocket_colours_follow_the_wheel() {
        assert_eq!(Outcome(0).color(), Color::Green);
        assert_eq!(Outcome(1).color(), Color::Red);
        assert_eq!(Outcome(2).color(), Color::Black);
        assert_eq!(Outcome(10).color(), Color::Black);
        assert_eq!(Outcome(19).color(), Color::Red);
        assert_eq!(
            Outcome::all().filter(|o| o.color() == Color::Red).count(),
            18
        );
        assert!(Outcome::new(37).is_err());
        assert!(serde_json::from_str::<Outcome>("37").is_err());
    }
}

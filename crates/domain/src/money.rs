//! Money: an exact count of minor units (docs/contract/events.md).
//!
//! Amounts are `i64` minor units kept within `0..=2^53 − 1`, so every amount survives a trip
//! through a JavaScript client's `Number` unchanged. A balance may be zero; a stake may not, which
//! is why stakes have their own parser. All arithmetic is checked: an amount that would leave the
//! range is an error, never a wrap, a saturation or a float.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why an integer is not a valid amount, or why arithmetic left the valid range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount {0} is negative")]
    Negative(i64),
    #[error("amount {0} exceeds the maximum of {max}", max = Money::MAX_MINOR)]
    TooLarge(i64),
    #[error("a stake must be at least 1 minor unit")]
    ZeroStake,
    #[error("the result would exceed the maximum amount of {max}", max = Money::MAX_MINOR)]
    Overflow,
}

/// An amount of money in minor units, `0 ..= 2^53 − 1`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(try_from = "i64", into = "i64")]
pub struct Money(i64);

impl Money {
    /// 2^53 − 1: the largest integer a JSON client using IEEE doubles represents exactly.
    pub const MAX_MINOR: i64 = (1 << 53) - 1;
    pub const MAX: Money = Money(Self::MAX_MINOR);
    pub const ZERO: Money = Money(0);

    /// Any amount in `0 ..= MAX`: balances, payouts, totals.
    pub const fn new(minor: i64) -> Result<Money, MoneyError> {
        if minor < 0 {
            Err(MoneyError::Negative(minor))
        } else if minor > Self::MAX_MINOR {
            Err(MoneyError::TooLarge(minor))
        } else {
            Ok(Money(minor))
        }
    }

    /// A stake: `1 ..= MAX`. A zero stake would be a bet that cannot lose or win anything.
    pub const fn stake(minor: i64) -> Result<Money, MoneyError> {
        if minor == 0 {
            Err(MoneyError::ZeroStake)
        } else {
            Self::new(minor)
        }
    }

    pub const fn get(self) -> i64 {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// `None` when the sum exceeds `MAX`.
    pub const fn checked_add(self, other: Money) -> Option<Money> {
        // Both operands are at most 2^53, so the i64 sum cannot overflow; only MAX can be crossed.
        let sum = self.0 + other.0;
        if sum > Self::MAX_MINOR {
            None
        } else {
            Some(Money(sum))
        }
    }

    /// `None` when the difference would be below zero.
    pub const fn checked_sub(self, other: Money) -> Option<Money> {
        if other.0 > self.0 {
            None
        } else {
            Some(Money(self.0 - other.0))
        }
    }

    /// `None` when the product exceeds `MAX`.
    pub const fn checked_mul(self, factor: u64) -> Option<Money> {
        // Widen so that neither operand can overflow before the range check.
        let product = self.0 as i128 * factor as i128;
        if product > Self::MAX_MINOR as i128 {
            None
        } else {
            Some(Money(product as i64))
        }
    }

    /// Adds up amounts, `None` if the total exceeds `MAX`.
    pub fn checked_sum<I: IntoIterator<Item = Money>>(amounts: I) -> Option<Money> {
        amounts
            .into_iter()
            .try_fold(Money::ZERO, |total, amount| total.checked_add(amount))
    }
}

impl TryFrom<i64> for Money {
    type Error = MoneyError;

    fn try_from(minor: i64) -> Result<Self, MoneyError> {
        Self::new(minor)
    }
}

impl From<Money> for i64 {
    fn from(money: Money) -> i64 {
        money.0
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_outside_zero_to_two_to_the_53_minus_one_are_refused() {
        assert_eq!(Money::new(0), Ok(Money::ZERO));
        assert_eq!(
            Money::new(9_007_199_254_740_991).map(Money::get),
            Ok(Money::MAX_MINOR)
        );
        assert_eq!(
            Money::new(9_007_199_254_740_992),
            Err(MoneyError::TooLarge(9_007_199_254_740_992))
        );
        assert_eq!(Money::new(-1), Err(MoneyError::Negative(-1)));
    }

    #[test]
    fn a_stake_of_zero_is_refused_but_one_minor_unit_is_accepted() {
        assert_eq!(Money::stake(0), Err(MoneyError::ZeroStake));
        assert_eq!(Money::stake(1).map(Money::get), Ok(1));
        assert_eq!(Money::stake(-5), Err(MoneyError::Negative(-5)));
        assert_eq!(Money::stake(Money::MAX_MINOR), Ok(Money::MAX));
    }

    #[test]
    fn arithmetic_that_leaves_the_range_returns_none() {
        let one = Money::stake(1).expect("valid");
        assert_eq!(Money::MAX.checked_add(one), None);
        assert_eq!(Money::ZERO.checked_sub(one), None);
        assert_eq!(one.checked_sub(one), Some(Money::ZERO));
        assert_eq!(Money::MAX.checked_mul(2), None);
        assert_eq!(Money::MAX.checked_mul(u64::MAX), None);
        assert_eq!(Money::MAX.checked_mul(1), Some(Money::MAX));
        assert_eq!(Money::MAX.checked_mul(0), Some(Money::ZERO));
        assert_eq!(Money::checked_sum([Money::MAX, one]), None);
        assert_eq!(Money::checked_sum([one, one]).map(Money::get), Some(2));
    }

    #[test]
    fn money_is_a_validated_integer_on_the_wire() {
        let m: Money = serde_json::from_str("100").expect("valid");
        assert_eq!(m.get(), 100);
        assert_eq!(serde_json::to_string(&m).expect("serialize"), "100");
        assert!(serde_json::from_str::<Money>("-1").is_err());
        assert!(serde_json::from_str::<Money>("9007199254740992").is_err());
        assert!(serde_json::from_str::<Money>("1.5").is_err());
        let packed = rmp_serde::to_vec_named(&m).expect("serialize");
        let back: Money = rmp_serde::from_slice(&packed).expect("deserialize");
        assert_eq!(back, m);
    }
}

//! Wallet rules: a balance never goes below zero, and never above the largest amount (docs/contract/events.md).
//!
//! Only the arithmetic lives here; where balances are stored and locked is the business of the
//! game service and the event store.

use crate::money::Money;

/// Why a balance cannot be changed by this amount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    #[error("balance {balance} does not cover {amount}")]
    InsufficientFunds { balance: Money, amount: Money },
    #[error(
        "crediting {amount} to {balance} would exceed the largest balance, {}",
        Money::MAX
    )]
    Overflow { balance: Money, amount: Money },
}

/// The balance after taking `amount` out; refused rather than going below zero.
pub fn debit(balance: Money, amount: Money) -> Result<Money, WalletError> {
    balance
        .checked_sub(amount)
        .ok_or(WalletError::InsufficientFunds { balance, amount })
}

/// The balance after paying `amount` in; refused rather than exceeding [`Money::MAX`].
pub fn credit(balance: Money, amount: Money) -> Result<Money, WalletError> {
    balance
        .checked_add(amount)
        .ok_or(WalletError::Overflow { balance, amount })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(n: i64) -> Money {
        Money::new(n).expect("valid amount")
    }

    #[test]
    fn a_debit_may_empty_the_balance_but_not_overdraw_it() {
        assert_eq!(debit(money(100), money(100)), Ok(Money::ZERO));
        assert_eq!(
            debit(money(100), money(101)),
            Err(WalletError::InsufficientFunds {
                balance: money(100),
                amount: money(101)
            })
        );
    }

    #[test]
    fn a_credit_that_would_pass_the_largest_balance_is_refused() {
        assert_eq!(credit(money(1), money(2)), Ok(money(3)));
        assert_eq!(credit(Money::MAX, Money::ZERO), Ok(Money::MAX));
        assert_eq!(
            credit(Money::MAX, money(1)),
            Err(WalletError::Overflow {
                balance: Money::MAX,
                amount: money(1)
            })
        );
    }
}

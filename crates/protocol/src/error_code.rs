//! The error codes of the WebSocket protocol (`docs/contract/websocket.md`), shared with the bet
//! reply on the bus (`docs/contract/bus.md`) so that a rejection travels from GS to the client
//! without translation.
//!
//! The set of codes is part of the public contract: adding one is a protocol change.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a client message was not acted upon. Serialized in `SCREAMING_SNAKE_CASE`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Not an object, unknown `type`, or a missing or ill-typed field.
    BadMessage,
    /// The token is missing, malformed, expired or wrongly signed where one is required.
    Unauthorized,
    /// The token is valid but does not grant this (another player's channel, a spectator's bet).
    Forbidden,
    /// The channel name is neither `table.<id>` nor `player.<id>`, or names no known table.
    UnknownChannel,
    /// The round is not open for bets (or its betting time is over).
    BettingClosed,
    /// Betting is switched off, or no game service could take the bet: retry later with the same
    /// `bet_id` (`docs/contract/websocket.md`).
    BettingUnavailable,
    /// The balance does not cover the stake.
    InsufficientFunds,
    /// The stake is outside the table limits or the per-round limit.
    LimitExceeded,
    /// The same `bet_id` was used before with different content.
    BetIdConflict,
    /// No answer from GS in time: retry with the same `bet_id`.
    Timeout,
    /// The client sends faster than it is allowed to.
    RateLimited,
    /// The server sheds load.
    Overloaded,
}

impl ErrorCode {
    /// Every code, in the order of `docs/contract/websocket.md`.
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::BadMessage,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::UnknownChannel,
        ErrorCode::BettingClosed,
        ErrorCode::BettingUnavailable,
        ErrorCode::InsufficientFunds,
        ErrorCode::LimitExceeded,
        ErrorCode::BetIdConflict,
        ErrorCode::Timeout,
        ErrorCode::RateLimited,
        ErrorCode::Overloaded,
    ];

    /// The wire form, e.g. `"BAD_MESSAGE"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "BAD_MESSAGE",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::UnknownChannel => "UNKNOWN_CHANNEL",
            ErrorCode::BettingClosed => "BETTING_CLOSED",
            ErrorCode::BettingUnavailable => "BETTING_UNAVAILABLE",
            ErrorCode::InsufficientFunds => "INSUFFICIENT_FUNDS",
            ErrorCode::LimitExceeded => "LIMIT_EXCEEDED",
            ErrorCode::BetIdConflict => "BET_ID_CONFLICT",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::Overloaded => "OVERLOADED",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_serializes_to_its_screaming_snake_case_name_and_back() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(code.to_string(), code.as_str());
            let back: ErrorCode = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, code);
        }
    }

    #[test]
    fn the_code_list_is_exactly_the_one_of_the_contract() {
        let names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "BAD_MESSAGE",
                "UNAUTHORIZED",
                "FORBIDDEN",
                "UNKNOWN_CHANNEL",
                "BETTING_CLOSED",
                "BETTING_UNAVAILABLE",
                "INSUFFICIENT_FUNDS",
                "LIMIT_EXCEEDED",
                "BET_ID_CONFLICT",
                "TIMEOUT",
                "RATE_LIMITED",
                "OVERLOADED"
            ]
        );
    }
}

//! Betting status: whether bets are taken at all. GS writes it to the `status` KV bucket
//! (`docs/contract/bus.md`) so that a gateway that starts later learns it at once; gateways tell
//! clients with the `welcome` and `status` messages (`docs/contract/websocket.md`).

use domain::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whether the system takes bets: `"enabled"` or `"disabled"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Betting {
    #[default]
    Enabled,
    Disabled,
}

impl Betting {
    pub const fn as_str(self) -> &'static str {
        match self {
            Betting::Enabled => "enabled",
            Betting::Disabled => "disabled",
        }
    }

    pub const fn is_enabled(self) -> bool {
        matches!(self, Betting::Enabled)
    }
}

/// The value of key [`crate::subject::STATUS_BETTING_KEY`] in the `status` KV bucket: MessagePack
/// map `{betting, reason, at}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BettingStatus {
    pub betting: Betting,
    /// Why, for people: e.g. `"database unreachable"`; empty when there is nothing to say.
    pub reason: String,
    /// When GS decided it.
    #[schemars(with = "crate::schema::TimestampSchema")]
    pub at: Timestamp,
}

impl BettingStatus {
    /// The `status` message that tells clients about this status.
    pub fn to_message(&self) -> crate::ws::StatusMessage {
        crate::ws::StatusMessage {
            betting: self.betting,
            reason: self.reason.clone(),
        }
    }
}

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
    /// Why betting is off: one of the codes of [`reason`] (`store_unavailable`, `store_slow`,
    /// `gs_unavailable`, `bus_unavailable`, `operator`); empty while betting is on.
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

/// Why betting is off: the `reason` of a disabled [`BettingStatus`] (and of the `status`
/// message clients get). Codes, not prose: clients and dashboards switch on them.
pub mod reason {
    /// The event store cannot be reached, or does not answer (stopped, frozen, cut off).
    pub const STORE_UNAVAILABLE: &str = "store_unavailable";
    /// The event store answers, but appends wait past the slow threshold.
    pub const STORE_SLOW: &str = "store_slow";
    /// No GS is alive to take bets.
    pub const GS_UNAVAILABLE: &str = "gs_unavailable";
    /// The gateway has lost the bus; it cannot forward bets.
    pub const BUS_UNAVAILABLE: &str = "bus_unavailable";
    /// An operator switched betting off (`croupier betting off`).
    pub const OPERATOR: &str = "operator";
}

/// A GS process's heartbeat in the `gs_health` bucket (key: the process's id), written every
/// second; the bucket's `max_age` removes the key of a process that stopped writing it.
/// Gateways count a GS alive while its heartbeat keeps coming; GS processes agree on the
/// betting status from all of them (ADR 0020).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GsHeartbeat {
    /// The GS's instance name (`CROUPIER_GS_INSTANCE`; by default `gs-<hostname>-<pid>`).
    pub instance: String,
    /// Whether this GS takes bets now: its store is healthy and it has caught up.
    pub serving: bool,
    /// Its store as it sees it: `"healthy"`, [`reason::STORE_SLOW`] or
    /// [`reason::STORE_UNAVAILABLE`].
    pub store: String,
    /// When it wrote this heartbeat.
    #[schemars(with = "crate::schema::TimestampSchema")]
    pub at: Timestamp,
}

impl GsHeartbeat {
    /// The `store` of a GS whose database is healthy.
    pub const HEALTHY: &'static str = "healthy";
}

//! Settings shared by every command: each comes from its flag, else its environment variable,
//! else `.data/endpoints.env` (written by `just up`), else a working development default
//! (`docs/contract/cli.md`). Invalid values are reported together, before anything starts.

use clap::Args;

use crate::endpoints::Endpoints;

pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/croupier";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
/// The development secret used when none is configured anywhere: fine on a laptop, and the
/// log says loudly that it is in use.
pub const DEV_JWT_SECRET: &str = "croupier-development-secret-change-me!";

/// Endpoints and secrets, as flags with environment fallbacks.
#[derive(Debug, Clone, Args)]
pub struct Connect {
    /// NATS server URL, or a comma-separated list of a cluster's servers.
    #[arg(long, env = "NATS_URL", global = true)]
    pub nats_url: Option<String>,
    /// Replicas of every stream and bucket this process creates or updates (3 on a
    /// three-node cluster; default 1). Every process of a deployment must agree.
    #[arg(long, env = "CROUPIER_NATS_REPLICAS", global = true, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: Option<u8>,
    /// Postgres URL of the event store.
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// HMAC key of player tokens (at least 32 bytes).
    #[arg(
        long,
        env = "CROUPIER_JWT_SECRET",
        global = true,
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// Namespace of every NATS subject, stream, consumer and bucket.
    #[arg(long, env = "CROUPIER_NATS_PREFIX", global = true, default_value = "")]
    pub nats_prefix: String,
}

/// [`Connect`] with every fallback applied.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub nats_url: String,
    pub database_url: String,
    pub jwt_secret: String,
    pub jwt_secret_is_default: bool,
    pub http_addr_from_file: Option<String>,
    pub nats_prefix: String,
    pub nats_replicas: usize,
}

impl Resolved {
    /// The shipped stream and bucket definitions with this deployment's replica count.
    pub fn definitions(&self) -> bus::Definitions {
        bus::Definitions::croupier().with_replicas(self.nats_replicas)
    }
}

impl Connect {
    pub fn resolve(&self) -> Resolved {
        let file = Endpoints::discover();
        let pick = |flag: &Option<String>, key: &str, default: &str| {
            flag.clone()
                .or_else(|| file.get(key).map(str::to_string))
                .unwrap_or_else(|| default.to_string())
        };
        let secret = self
            .jwt_secret
            .clone()
            .or_else(|| file.get("CROUPIER_JWT_SECRET").map(str::to_string));
        Resolved {
            nats_url: pick(&self.nats_url, "NATS_URL", DEFAULT_NATS_URL),
            database_url: pick(&self.database_url, "DATABASE_URL", DEFAULT_DATABASE_URL),
            jwt_secret_is_default: secret.is_none(),
            jwt_secret: secret.unwrap_or_else(|| DEV_JWT_SECRET.to_string()),
            http_addr_from_file: file.get("CROUPIER_HTTP_ADDR").map(str::to_string),
            nats_prefix: self.nats_prefix.clone(),
            nats_replicas: self
                .nats_replicas
                .map(usize::from)
                .or_else(|| {
                    file.get("CROUPIER_NATS_REPLICAS")
                        .and_then(|v| v.parse::<usize>().ok())
                        .filter(|n| (1..=5).contains(n))
                })
                .unwrap_or(1),
        }
    }
}

/// The table limits (`docs/contract/events.md#table-limits`): GS judges bets by them, and
/// `croupier replay` checks the log against the same settings.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct TableLimitsArgs {
    /// Smallest stake.
    #[arg(long, env = "CROUPIER_MIN_BET", default_value_t = 10)]
    pub min_bet: i64,
    /// Largest stake of one bet.
    #[arg(long, env = "CROUPIER_MAX_BET", default_value_t = 100_000)]
    pub max_bet: i64,
    /// Most a player may stake on one round.
    #[arg(long, env = "CROUPIER_MAX_ROUND_STAKE", default_value_t = 1_000_000)]
    pub max_round_stake: i64,
}

//! `croupier`, the one binary: the composition root. It parses configuration (flags with
//! environment fallbacks, then `.data/endpoints.env`), sets up telemetry, picks the adapters
//! (`nats` or `local` bus, Postgres store) and runs any role, or all of them in one process.
//!
//! The only crate allowed to depend on concrete adapters.

mod audit_bets;
mod config;
mod endpoints;
mod limits;
mod loadgen;
mod operator;
mod projections;
mod replay;
mod run;
mod telemetry;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::Connect;

#[derive(Debug, Parser)]
#[command(name = "croupier", version, about = "Live round-based betting backend")]
struct Cli {
    #[command(flatten)]
    connect: Connect,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a role (gms, gs, gateway) or all of them in this process.
    Run(Box<run::RunArgs>),
    /// Apply the event store's migrations (each once).
    Migrate,
    /// Print a development token for a player, signed with the configured secret.
    Token {
        /// The player id (`[A-Za-z0-9_-]{1,64}`).
        #[arg(long)]
        player: String,
        /// How long the token is valid, e.g. `30m`, `1h`, `7d`.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Player wallets.
    #[command(subcommand)]
    Wallet(WalletCommand),
    /// Verify the event store: gapless positions and the hash chain, end to end. Exit 0 only
    /// when every check passes.
    Replay(replay::ReplayArgs),
    /// Many WebSocket clients and bettors on one table or several, with a latency report (a
    /// benchmark).
    Loadgen(loadgen::LoadgenArgs),
    /// Check `loadgen --bets-out`'s answers against the event store: every accepted bet stored
    /// and settled once, no refused bet stored, none debited twice. Exit 0 clean, 1 when a
    /// violation was found, 2 when it could not check.
    AuditBets(audit_bets::AuditBetsArgs),
    /// The read models (`rounds`, `bets`, `accounts`, `deposits`).
    #[command(subcommand)]
    Projections(projections::ProjectionsCommand),
    /// Switch betting off or on for every table or one (`--table`), as an operator (rounds go
    /// on either way); recorded in the event store as `betting_switched`.
    Betting(operator::BettingArgs),
    /// Operator actions on a round.
    #[command(subcommand)]
    Round(operator::RoundCommand),
}

#[derive(Debug, Subcommand)]
enum WalletCommand {
    /// Credit a player's wallet; idempotent by `--deposit-id`.
    Deposit {
        #[arg(long)]
        player: String,
        /// Minor units.
        #[arg(long)]
        amount: i64,
        /// Idempotency key: the same id is credited once. Default: a fresh one.
        #[arg(long)]
        deposit_id: Option<String>,
    },
}

fn main() -> ExitCode {
    match main_with_code() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("Error: {error:?}");
            ExitCode::FAILURE
        }
    }
}

fn main_with_code() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let settings = cli.connect.resolve();
    match cli.command {
        Command::Token { player, ttl } => {
            let player = domain::PlayerId::parse(&player)
                .map_err(|e| anyhow::anyhow!("--player {player:?}: {e}"))?;
            let secret = gateway::auth::JwtSecret::new(&settings.jwt_secret)
                .context("CROUPIER_JWT_SECRET")?;
            if settings.jwt_secret_is_default {
                eprintln!(
                    "warning: no CROUPIER_JWT_SECRET set; signing with the development secret"
                );
            }
            println!(
                "{}",
                gateway::auth::mint(&secret, &player, ttl, gateway::auth::now_unix())
            );
            Ok(ExitCode::SUCCESS)
        }
        command => {
            telemetry::init_logs();
            let runtime = match &command {
                // Sized for a benchmark that shares the machine with the server it measures.
                Command::Loadgen(_) => loadgen::runtime(),
                Command::Replay(_) => replay::runtime(),
                Command::Run(args) => run::runtime(args.worker_affinity),
                _ => tokio::runtime::Runtime::new(),
            }
            .context("start the async runtime")?;
            runtime.block_on(async_main(command, settings))
        }
    }
}

async fn async_main(command: Command, settings: config::Resolved) -> anyhow::Result<ExitCode> {
    let done: anyhow::Result<()> = match command {
        // The one command whose outcome is more than done or failed (exit 0, 1 or 2).
        Command::Replay(args) => return Ok(replay::run(args, &settings).await),
        Command::AuditBets(args) => return Ok(audit_bets::run(args, &settings).await),
        Command::Run(args) => run::run(*args, settings).await,
        Command::Betting(args) => operator::betting(args, &settings).await,
        Command::Round(operator::RoundCommand::Void(args)) => operator::void(args, &settings).await,
        Command::Migrate => {
            let store = open_store(&settings)?;
            let report = store.migrate().await.context("apply migrations")?;
            println!("{report:?}");
            Ok(())
        }
        Command::Wallet(WalletCommand::Deposit {
            player,
            amount,
            deposit_id,
        }) => {
            let player = domain::PlayerId::parse(&player)
                .map_err(|e| anyhow::anyhow!("--player {player:?}: {e}"))?;
            let amount = domain::Money::stake(amount)
                .map_err(|e| anyhow::anyhow!("--amount {amount}: {e}"))?;
            let deposit_id = deposit_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            let deposit_id = protocol::DepositId::parse(&deposit_id)
                .map_err(|e| anyhow::anyhow!("--deposit-id: {e:?}"))?;
            let store = open_store(&settings)?;
            store.migrate().await.context("apply migrations")?;
            let balance = gs::ledger::deposit(&store, &player, amount, &deposit_id)
                .await
                .context("record the deposit")?;
            println!(
                "deposit {} credited {} to {player}; balance {}",
                deposit_id.as_str(),
                amount.get(),
                balance.get()
            );
            Ok(())
        }
        Command::Loadgen(args) => {
            limits::raise_open_files();
            loadgen::run(args, settings).await
        }
        Command::Projections(command) => projections::run(command, open_store(&settings)?).await,
        Command::Token { .. } => Ok(()),
    };
    done.map(|()| ExitCode::SUCCESS)
}

fn open_store(settings: &config::Resolved) -> anyhow::Result<store::Store> {
    let mut pool = store::PoolConfig::new(settings.database_url.clone());
    pool.max_size = 2;
    pool.application_name = "croupier-cli".into();
    store::Store::new(&pool).context("configure the Postgres pool")
}

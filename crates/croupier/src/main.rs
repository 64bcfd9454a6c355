//! `croupier`, the one binary: the composition root. It parses configuration (flags with
//! environment fallbacks), sets up telemetry, picks the adapters (`nats` or `local` bus,
//! Postgres store) and runs any role, or all of them in one process.
//!
//! The only crate allowed to depend on concrete adapters.

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "croupier", version, about = "Live round-based betting backend")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the version and exit.
    Version,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("croupier {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}

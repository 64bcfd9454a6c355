//! `croupier projections rebuild`: recreates the read models from the events (see
//! `gs::projections`).

use anyhow::Context;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Recreate the read models (`rounds`, `legacy_bets`, `bet_results`, `round_stakes`,
    /// `accounts`, `deposits`) from the events, in one transaction. Best run with GS stopped:
    /// its writes wait meanwhile.
    Rebuild,
}

pub async fn run(command: ProjectionsCommand, store: store::Store) -> anyhow::Result<()> {
    match command {
        ProjectionsCommand::Rebuild => {
            let report = gs::projections::rebuild(&store)
                .await
                .context("rebuild the read models")?;
            println!(
                "rebuilt from {} events: {} rounds, {} bets ({} from before migration 0005), \
                 {} bet results, {} round stakes, {} accounts, {} deposits",
                report.events,
                report.rounds,
                report.bets,
                report.legacy_bets,
                report.bet_results,
                report.round_stakes,
                report.accounts,
                report.deposits
            );
            Ok(())
        }
    }
}

//! `croupier replay`: proves the log (see `audit::replay`). Exit 0 when every check holds, 1
//! when a violation was found, 2 when the replay could not run (the database unreachable, bad
//! arguments).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// Exit code when a violation was found.
pub const EXIT_VIOLATIONS: u8 = 1;
/// Exit code when the replay could not run.
pub const EXIT_CANNOT_RUN: u8 = 2;

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Rebuild and report only this table's rounds.
    #[arg(long)]
    pub table: Option<String>,
    /// Rebuild and report only rounds from this one on.
    #[arg(long)]
    pub from_round: Option<u64>,
    /// Rebuild and report only rounds up to this one.
    #[arg(long)]
    pub to_round: Option<u64>,
    /// Last-game recall: print this round's proof (with --table). With --json, a
    /// self-contained file that --verify-recall checks offline.
    #[arg(long, requires = "table", conflicts_with_all = ["from_round", "to_round"])]
    pub round: Option<u64>,
    /// Check a recall file (from --round --json) offline: no database, no NATS.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["table", "round", "from_round", "to_round", "checkpoints", "expect_head", "from_checkpoint"])]
    pub verify_recall: Option<PathBuf>,
    /// Print one JSON object instead of text (schema: schemas/replay-report.json).
    #[arg(long)]
    pub json: bool,
    /// A published checkpoint `POSITION:HASH` that must still hold (repeatable).
    #[arg(long = "expect-head", value_name = "POSITION:HASH")]
    pub expect_head: Vec<audit::Checkpoint>,
    /// A file of published checkpoints, one `POSITION:HASH` per line (`#` starts a comment).
    #[arg(long, value_name = "FILE")]
    pub checkpoints: Option<PathBuf>,
    /// Start from this published checkpoint instead of position 1: the chain from there on,
    /// and the rounds that open after it.
    #[arg(long, value_name = "POSITION:HASH")]
    pub from_checkpoint: Option<audit::Checkpoint>,
    /// The table limits the services ran with.
    #[command(flatten)]
    pub limits: crate::config::TableLimitsArgs,
    /// Check the Postgres log alone, without comparing it with the JetStream streams (for an
    /// auditor who has a copy of the database and no access to the bus).
    #[arg(long)]
    pub no_bus: bool,
}

/// How long connecting to NATS may take before the replay gives up (exit 2).
const BUS_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn read_checkpoints(path: &PathBuf) -> Result<Vec<audit::Checkpoint>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--checkpoints {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(n, line)| (n, line.split('#').next().unwrap_or("").trim()))
        .filter(|(_, line)| !line.is_empty())
        .map(|(n, line)| {
            line.parse()
                .map_err(|e| format!("--checkpoints {} line {}: {e}", path.display(), n + 1))
        })
        .collect()
}

fn options(args: &ReplayArgs) -> Result<audit::ReplayOptions, String> {
    let table = args
        .table
        .as_deref()
        .map(domain::TableId::parse)
        .transpose()
        .map_err(|e| format!("--table: {e}"))?;
    let mut checkpoints = args.expect_head.clone();
    if let Some(path) = &args.checkpoints {
        checkpoints.extend(read_checkpoints(path)?);
    }
    let l = args.limits;
    if l.min_bet < 1 || l.max_bet < l.min_bet || l.max_round_stake < l.max_bet {
        return Err(format!(
            "limits: need 1 ≤ --min-bet ({}) ≤ --max-bet ({}) ≤ --max-round-stake ({})",
            l.min_bet, l.max_bet, l.max_round_stake
        ));
    }
    let table = table.map(|t| t.as_str().to_string());
    Ok(audit::ReplayOptions {
        recall: args
            .round
            .zip(table.clone())
            .map(|(round, table)| (table, round)),
        scope: audit::Scope {
            table,
            from_round: args.from_round.or(args.round),
            to_round: args.to_round.or(args.round),
        },
        limits: audit::Limits {
            min_bet: l.min_bet,
            max_bet: l.max_bet,
            max_round_stake: l.max_round_stake,
        },
        checkpoints,
        from_checkpoint: args.from_checkpoint,
    })
}

fn cannot_run(json: bool, message: &str) -> ExitCode {
    if json {
        let failure = audit::schema::Failure {
            ok: false,
            error: message.to_string(),
        };
        println!("{}", serde_json::to_string(&failure).unwrap_or_default());
    }
    eprintln!("error: replay could not run: {message}");
    ExitCode::from(EXIT_CANNOT_RUN)
}

/// This process's peak resident memory, from Linux's `/proc/self/status` (`VmHWM`).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `--verify-recall FILE`: the file alone decides.
fn verify_recall(path: &PathBuf, json: bool) -> ExitCode {
    let recall: audit::recall::Recall = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(&text).map_err(|e| format!("not a recall: {e}")))
    {
        Ok(recall) => recall,
        Err(error) => {
            return cannot_run(
                json,
                &format!("--verify-recall {}: {error}", path.display()),
            );
        }
    };
    let found = audit::recall::verify(&recall);
    if json {
        let verdict = audit::schema::RecallVerdict {
            ok: found.is_empty(),
            table: recall.table.clone(),
            round: recall.round,
            violations: found.clone(),
        };
        println!("{}", serde_json::to_string(&verdict).unwrap_or_default());
    } else {
        for violation in &found {
            println!("VIOLATION {violation}");
        }
        if found.is_empty() {
            println!(
                "ok: the recall of table {} round {} holds ({} events, each hash recomputed; \
                 outcome {} follows from the revealed seed; chain head {})",
                recall.table,
                recall.round,
                recall.events.len(),
                recall
                    .drawn_outcome
                    .map_or("-".to_string(), |o| o.to_string()),
                recall.head
            );
        } else {
            println!("FAILED: {} violations in the recall", found.len());
        }
    }
    if found.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_VIOLATIONS)
    }
}

/// The replay's runtime: the merge runs on the main thread (`block_on`), the readers of the
/// two logs on one worker, and the machine's other core is left to the Postgres backend and
/// nats-server that serve them. On two cores this beat tokio's default of a worker per core:
/// 1.1M events, five interleaved runs, `--no-bus` 1.88 → 1.75 s and CPU 2.35 → 2.11 s, the
/// whole replay 7.07 → 6.87 s (ADR 0018): fewer threads, fewer cross-thread wake-ups.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
}

pub async fn run(args: ReplayArgs, settings: &crate::config::Resolved) -> ExitCode {
    let (nats_url, nats_prefix) = (settings.nats_url.as_str(), settings.nats_prefix.as_str());
    // The audit reads the whole log in one long statement: no statement timeout.
    let mut store = store::PoolConfig::new(settings.database_url.clone());
    store.statement_timeout = std::time::Duration::ZERO;
    store.idle_in_transaction_timeout = std::time::Duration::ZERO;
    store.application_name = "croupier-replay".into();
    if let Some(path) = &args.verify_recall {
        return verify_recall(path, args.json);
    }
    let options = match options(&args) {
        Ok(options) => options,
        Err(message) => return cannot_run(args.json, &message),
    };
    let config = match store.pg_config() {
        Ok(config) => config,
        Err(error) => return cannot_run(args.json, &format!("DATABASE_URL: {error}")),
    };
    // A bar only for a person watching: not with --json, not when the output goes elsewhere.
    let quiet = args.json || !std::io::stdout().is_terminal();
    let bus = if args.no_bus {
        None
    } else {
        let options = bus::NatsOptions {
            connection_name: Some("croupier-replay".into()),
            ..bus::NatsOptions::default()
        };
        let connect = bus::NatsBus::connect(nats_url, nats_prefix, options);
        match tokio::time::timeout(BUS_CONNECT_TIMEOUT, connect).await {
            Ok(Ok(bus)) => Some(bus),
            Ok(Err(error)) => {
                return cannot_run(
                    args.json,
                    &format!("connect to NATS at {nats_url} (or pass --no-bus): {error}"),
                );
            }
            Err(_) => {
                return cannot_run(
                    args.json,
                    &format!("connect to NATS at {nats_url}: no answer (or pass --no-bus)"),
                );
            }
        }
    };
    match audit::replay_with_progress(&config, bus.as_ref(), &options, quiet).await {
        Ok(mut report) => {
            report.run.peak_rss_kib = peak_rss_kib();
            match (&report.recall, args.json) {
                (Some(recall), true) => println!("{}", recall.to_json()),
                (Some(recall), false) => print!("{}\n{}", recall.to_text(), report.to_text()),
                (None, true) => println!("{}", report.to_json()),
                (None, false) => print!("{}", report.to_text()),
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_VIOLATIONS)
            }
        }
        Err(error) => cannot_run(args.json, &error.to_string()),
    }
}

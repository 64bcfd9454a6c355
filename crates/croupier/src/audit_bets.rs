//! `croupier audit-bets FILE`: what clients were told about their bets against what the event
//! store holds (`docs/contract/cli.md`). `FILE` is `croupier loadgen --bets-out`'s: one line per
//! bet, tab-separated: bet id, player, table, round, answer (`accepted`, an error code, or
//! `none` when no definite answer came).
//!
//! The store is read as one stream of its events (`store::stream_events`), and each bet of the
//! file is judged by its `bet_placed`, `bet_settled` and `bet_refunded` events:
//!
//! - **lost**: answered `accepted` but not in the store, or left without a definite answer
//!   (`TIMEOUT` after every retry, or silence);
//! - **refused yet recorded**: answered with a refusal (which tells the client nothing was
//!   recorded) but in the store for the same player;
//! - **debited twice**: more than one `bet_placed` for the bet id;
//! - **not as sent**: stored for another player, table or round;
//! - **unsettled**: accepted, its round settled (`round_settled`), and no `bet_settled` or
//!   `bet_refunded` for it;
//! - **settled twice**: more than one of them.
//!
//! Accepted bets whose round has not been settled yet are counted as pending, not as a
//! violation. Exit 0 when nothing is wrong, 1 when something is, 2 when it could not check.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use protocol::EventBody;
use serde::Serialize;

use crate::replay::{EXIT_CANNOT_RUN, EXIT_VIOLATIONS};

#[derive(Debug, Clone, Args)]
pub struct AuditBetsArgs {
    /// The bets file (`croupier loadgen --bets-out`).
    pub file: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One line of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Told {
    player: String,
    table: String,
    round: u64,
    answer: String,
}

/// What the store holds for one bet id of the file.
#[derive(Debug, Default, Clone)]
struct Stored {
    placed: u32,
    /// Player, table and round of the (first) `bet_placed`.
    placed_as: Option<(String, String, u64)>,
    settled: u32,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Verdict {
    pub bets: u64,
    pub accepted: u64,
    pub refused: u64,
    /// Lines that name a bet id already named above (the file itself is wrong).
    pub repeated_lines: u64,
    pub lost_accepted: u64,
    pub lost_unanswered: u64,
    pub refused_yet_recorded: u64,
    pub debited_twice: u64,
    pub not_as_sent: u64,
    pub unsettled: u64,
    pub settled_twice: u64,
    /// Accepted, stored, round not settled yet: not a violation.
    pub pending: u64,
    /// Up to ten examples of each violation: `<what>: <bet id>`.
    pub examples: Vec<String>,
}

impl Verdict {
    pub fn violations(&self) -> u64 {
        self.repeated_lines
            + self.lost_accepted
            + self.lost_unanswered
            + self.refused_yet_recorded
            + self.debited_twice
            + self.not_as_sent
            + self.unsettled
            + self.settled_twice
    }

    fn example(
        &mut self,
        counts: &mut HashMap<&'static str, usize>,
        what: &'static str,
        id: &uuid::Uuid,
    ) {
        let seen = counts.entry(what).or_default();
        if *seen < 10 {
            self.examples.push(format!("{what}: {id}"));
        }
        *seen += 1;
    }
}

fn parse_file(text: &str) -> anyhow::Result<(Vec<(uuid::Uuid, Told)>, u64)> {
    let mut bets = Vec::new();
    let mut seen = HashSet::new();
    let mut repeated = 0;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [id, player, table, round, answer] = fields[..] else {
            anyhow::bail!(
                "line {}: expected 5 tab-separated fields (bet id, player, table, round, answer), found {}",
                n + 1,
                fields.len()
            );
        };
        let id =
            uuid::Uuid::parse_str(id).with_context(|| format!("line {}: bet id {id:?}", n + 1))?;
        let round = round
            .parse()
            .with_context(|| format!("line {}: round {round:?}", n + 1))?;
        if !seen.insert(id) {
            repeated += 1;
            continue;
        }
        bets.push((
            id,
            Told {
                player: player.to_string(),
                table: table.to_string(),
                round,
                answer: answer.to_string(),
            },
        ));
    }
    Ok((bets, repeated))
}

fn judge(
    bets: &[(uuid::Uuid, Told)],
    repeated: u64,
    stored: &HashMap<uuid::Uuid, Stored>,
    settled_rounds: &HashSet<(String, u64)>,
) -> Verdict {
    let mut verdict = Verdict {
        bets: bets.len() as u64 + repeated,
        repeated_lines: repeated,
        ..Verdict::default()
    };
    let mut counts = HashMap::new();
    let none = Stored::default();
    for (id, told) in bets {
        let s = stored.get(id).unwrap_or(&none);
        if s.placed > 1 {
            verdict.debited_twice += 1;
            verdict.example(&mut counts, "debited twice", id);
        }
        match told.answer.as_str() {
            "accepted" => {
                verdict.accepted += 1;
                let Some((player, table, round)) = &s.placed_as else {
                    verdict.lost_accepted += 1;
                    verdict.example(&mut counts, "accepted, not stored", id);
                    continue;
                };
                if (player, table, *round) != (&told.player, &told.table, told.round) {
                    verdict.not_as_sent += 1;
                    verdict.example(&mut counts, "stored for another player, table or round", id);
                    continue;
                }
                match s.settled {
                    0 if settled_rounds.contains(&(told.table.clone(), told.round)) => {
                        verdict.unsettled += 1;
                        verdict.example(&mut counts, "round settled, bet not", id);
                    }
                    0 => verdict.pending += 1,
                    1 => {}
                    _ => {
                        verdict.settled_twice += 1;
                        verdict.example(&mut counts, "settled twice", id);
                    }
                }
            }
            "TIMEOUT" | "none" => {
                verdict.lost_unanswered += 1;
                verdict.example(&mut counts, "no definite answer", id);
            }
            // The bet id was used before with other content: what is stored is that other bet.
            "BET_ID_CONFLICT" => verdict.refused += 1,
            // Every other answer is a definite refusal: "nothing was recorded".
            _ => {
                verdict.refused += 1;
                if s.placed_as
                    .as_ref()
                    .is_some_and(|(player, _, _)| *player == told.player)
                {
                    verdict.refused_yet_recorded += 1;
                    verdict.example(&mut counts, "refused, yet recorded", id);
                }
            }
        }
    }
    verdict
}

pub async fn run(args: AuditBetsArgs, settings: &crate::config::Resolved) -> ExitCode {
    match audit(&args, settings).await {
        Ok(verdict) => {
            if args.json {
                match serde_json::to_string_pretty(&verdict) {
                    Ok(json) => println!("{json}"),
                    Err(error) => {
                        eprintln!("Error: encode the verdict: {error}");
                        return ExitCode::from(EXIT_CANNOT_RUN);
                    }
                }
            } else {
                print(&verdict);
            }
            if verdict.violations() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_VIOLATIONS)
            }
        }
        Err(error) => {
            eprintln!("Error: {error:?}");
            ExitCode::from(EXIT_CANNOT_RUN)
        }
    }
}

fn print(v: &Verdict) {
    println!(
        "{} bets: {} accepted, {} refused, {} pending (round not settled yet)",
        v.bets, v.accepted, v.refused, v.pending
    );
    let lines = [
        ("accepted, not stored (lost)", v.lost_accepted),
        ("no definite answer (lost)", v.lost_unanswered),
        ("refused, yet recorded", v.refused_yet_recorded),
        ("debited twice", v.debited_twice),
        ("stored for another player, table or round", v.not_as_sent),
        ("round settled, bet not", v.unsettled),
        ("settled twice", v.settled_twice),
        ("lines naming a bet id twice", v.repeated_lines),
    ];
    for (what, n) in lines {
        println!("{what:<44} {n}");
    }
    for example in &v.examples {
        println!("  {example}");
    }
    if v.violations() == 0 {
        println!("clean");
    } else {
        println!("{} violations", v.violations());
    }
}

async fn audit(
    args: &AuditBetsArgs,
    settings: &crate::config::Resolved,
) -> anyhow::Result<Verdict> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("read {}", args.file.display()))?;
    let (bets, repeated) = parse_file(&text)?;
    let wanted: HashSet<uuid::Uuid> = bets.iter().map(|(id, _)| *id).collect();

    let store = crate::open_store(settings)?;
    let mut client = store
        .client()
        .await
        .context("connect to Postgres (DATABASE_URL)")?;
    // One snapshot for the head and the rows; no statement timeout on a read this long.
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .context("begin a read")?;
    tx.batch_execute("SET LOCAL statement_timeout = 0")
        .await
        .context("begin a read")?;
    let head = store::last_position(&*tx)
        .await
        .context("read the event store's head")?;
    let mut events = std::pin::pin!(
        store::stream_events(&*tx, 1, head)
            .await
            .context("read the event store")?
    );
    let mut stored: HashMap<uuid::Uuid, Stored> = HashMap::with_capacity(wanted.len());
    let mut settled_rounds = HashSet::new();
    while let Some(event) = events.next().await {
        let event = event.context("read the event store")?;
        if !matches!(
            event.kind.as_str(),
            "bet_placed" | "bet_settled" | "bet_refunded" | "round_settled"
        ) {
            continue;
        }
        let decoded = protocol::decode_event(&event.data)
            .with_context(|| format!("decode the event at position {}", event.position))?;
        match decoded.body {
            EventBody::BetPlaced(b) if wanted.contains(b.bet_id.as_uuid()) => {
                let entry = stored.entry(*b.bet_id.as_uuid()).or_default();
                entry.placed += 1;
                entry.placed_as.get_or_insert((
                    b.player.as_str().to_string(),
                    b.table.as_str().to_string(),
                    b.round.get(),
                ));
            }
            EventBody::BetSettled(b) if wanted.contains(b.bet_id.as_uuid()) => {
                stored.entry(*b.bet_id.as_uuid()).or_default().settled += 1;
            }
            EventBody::BetRefunded(b) if wanted.contains(b.bet_id.as_uuid()) => {
                stored.entry(*b.bet_id.as_uuid()).or_default().settled += 1;
            }
            EventBody::RoundSettled(r) => {
                settled_rounds.insert((r.table.as_str().to_string(), r.round.get()));
            }
            _ => {}
        }
    }
    Ok(judge(&bets, repeated, &stored, &settled_rounds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> uuid::Uuid {
        uuid::Uuid::from_u128(n)
    }

    fn told(answer: &str) -> Told {
        Told {
            player: "p-1".into(),
            table: "t".into(),
            round: 7,
            answer: answer.into(),
        }
    }

    fn stored(placed: u32, settled: u32) -> Stored {
        Stored {
            placed,
            placed_as: (placed > 0).then(|| ("p-1".into(), "t".into(), 7)),
            settled,
        }
    }

    #[test]
    fn each_way_a_bet_can_go_wrong_is_counted_and_the_right_ones_are_not() {
        let bets = vec![
            (id(1), told("accepted")),            // fine
            (id(2), told("accepted")),            // lost
            (id(3), told("none")),                // no definite answer
            (id(4), told("INSUFFICIENT_FUNDS")),  // refused, yet recorded
            (id(5), told("accepted")),            // settled twice
            (id(6), told("accepted")),            // unsettled on a settled round
            (id(7), told("BETTING_UNAVAILABLE")), // refused, not recorded: fine
            (id(8), told("accepted")),            // debited twice
        ];
        let stored: HashMap<_, _> = [
            (id(1), stored(1, 1)),
            (id(4), stored(1, 1)),
            (id(5), stored(1, 2)),
            (id(6), stored(1, 0)),
            (id(8), stored(2, 1)),
        ]
        .into();
        let settled: HashSet<_> = [("t".to_string(), 7)].into();
        let v = judge(&bets, 1, &stored, &settled);
        assert_eq!(v.bets, 9);
        assert_eq!(v.accepted, 5);
        assert_eq!(v.refused, 2);
        assert_eq!(
            (
                v.lost_accepted,
                v.lost_unanswered,
                v.refused_yet_recorded,
                v.settled_twice,
                v.unsettled,
                v.debited_twice,
                v.repeated_lines
            ),
            (1, 1, 1, 1, 1, 1, 1)
        );
        assert_eq!(v.violations(), 7);

        // The same bets before their round is settled: the unsettled one is pending.
        let v = judge(&bets, 0, &stored, &HashSet::new());
        assert_eq!((v.unsettled, v.pending), (0, 1));
    }

    #[test]
    fn a_bet_stored_for_another_round_is_not_as_sent() {
        let bets = vec![(id(1), told("accepted"))];
        let mut s = stored(1, 1);
        s.placed_as = Some(("p-1".into(), "t".into(), 8));
        let v = judge(&bets, 0, &[(id(1), s)].into(), &HashSet::new());
        assert_eq!(v.not_as_sent, 1);
        assert_eq!(v.violations(), 1);
    }

    #[test]
    fn the_file_is_read_strictly() {
        let good = format!("{}\tp-1\tt\t7\taccepted\n\n", id(1));
        let (bets, repeated) = parse_file(&format!("{good}{good}")).expect("parses");
        assert_eq!((bets.len(), repeated), (1, 1));
        assert!(parse_file("not-a-uuid\tp\tt\t1\taccepted").is_err());
        assert!(parse_file(&format!("{}\tp\tt\tseven\taccepted", id(1))).is_err());
        assert!(parse_file(&format!("{}\tp\tt\t7", id(1))).is_err());
    }
}

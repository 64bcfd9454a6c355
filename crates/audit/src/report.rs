//! What a replay found: violations, each naming where and what, and the per-table figures an
//! operator or a regulator reads. Printed for people or as one JSON object (`--json`, schema
//! in `schemas/replay-report.json`).

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How many violations a report lists; more are counted, not listed.
pub const MAX_LISTED: usize = 1000;

/// European roulette's theoretical return to player: 36/37.
pub const THEORETICAL_RTP: f64 = 36.0 / 37.0;

/// Which rule a violation broke.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Positions gapless, every hash recomputed, stream versions consecutive, the head row.
    Chain,
    /// A published checkpoint (`--expect-head`, `--checkpoints`, `--from-checkpoint`).
    Checkpoint,
    /// A row that is not an event of the contract, or whose columns disagree with it.
    Event,
    /// `seed_hash` = SHA-256(seed), the outcome follows from the seed, no seed hash twice.
    Fairness,
    /// Phases complete and in order, GMS times non-decreasing, no round missing.
    Round,
    /// Placed while the round was open, within the limits, once.
    Bet,
    /// Settled or refunded exactly once, with the payout the odds give.
    Settlement,
    /// `round_settled` agrees with the round's bets.
    Totals,
    /// Every wallet event's balance follows from the one before; never negative.
    Wallet,
    /// The `accounts` read model equals the wallets rebuilt from the events.
    Accounts,
    /// Deposits = balances + house net + stakes in play.
    Conservation,
    /// The Postgres log and the JetStream streams agree event by event.
    Bus,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Chain => "chain",
            Check::Checkpoint => "checkpoint",
            Check::Event => "event",
            Check::Fairness => "fairness",
            Check::Round => "round",
            Check::Bet => "bet",
            Check::Settlement => "settlement",
            Check::Totals => "totals",
            Check::Wallet => "wallet",
            Check::Accounts => "accounts",
            Check::Conservation => "conservation",
            Check::Bus => "bus",
        }
    }
}

/// One thing that does not hold, with where it is and what was expected and found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Violation {
    pub check: Check,
    /// The `events` position of the event at fault, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bet_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub player: Option<String>,
    /// The bus message at fault, e.g. `TABLES seq 12 (table.roulette-1.round)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
    /// What the rule says.
    pub expected: String,
    /// What the logs say.
    pub found: String,
}

impl Violation {
    pub fn new(check: Check, expected: impl Into<String>, found: impl Into<String>) -> Self {
        Violation {
            check,
            position: None,
            table: None,
            round: None,
            bet_id: None,
            player: None,
            bus: None,
            expected: expected.into(),
            found: found.into(),
        }
    }

    pub fn at(mut self, position: i64) -> Self {
        self.position = Some(position);
        self
    }

    pub fn round(mut self, table: &str, round: u64) -> Self {
        self.table = Some(table.to_string());
        self.round = Some(round);
        self
    }

    pub fn table(mut self, table: &str) -> Self {
        self.table = Some(table.to_string());
        self
    }

    pub fn bet(mut self, bet_id: impl fmt::Display) -> Self {
        self.bet_id = Some(bet_id.to_string());
        self
    }

    pub fn player(mut self, player: &str) -> Self {
        self.player = Some(player.to_string());
        self
    }

    pub fn bus(mut self, place: impl Into<String>) -> Self {
        self.bus = Some(place.into());
        self
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.check.as_str())?;
        if let Some(position) = self.position {
            write!(f, " position {position}")?;
        }
        if let Some(bus) = &self.bus {
            write!(f, " {bus}")?;
        }
        match (&self.table, self.round) {
            (Some(table), Some(round)) => write!(f, " table {table} round {round}")?,
            (Some(table), None) => write!(f, " table {table}")?,
            _ => {}
        }
        if let Some(bet) = &self.bet_id {
            write!(f, " bet {bet}")?;
        }
        if let Some(player) = &self.player {
            write!(f, " player {player}")?;
        }
        write!(f, ": expected {}, found {}", self.expected, self.found)
    }
}

/// Violations as they are found: the first [`MAX_LISTED`] kept, all counted.
#[derive(Debug, Clone, Default)]
pub struct Violations {
    listed: Vec<Violation>,
    total: u64,
}

impl Violations {
    pub fn push(&mut self, violation: Violation) {
        self.total += 1;
        if self.listed.len() < MAX_LISTED {
            self.listed.push(violation);
        }
    }

    pub fn extend(&mut self, violations: impl IntoIterator<Item = Violation>) {
        for violation in violations {
            self.push(violation);
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn listed(&self) -> &[Violation] {
        &self.listed
    }

    pub fn into_listed(self) -> Vec<Violation> {
        self.listed
    }
}

/// One table's figures over the rounds in scope.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct TableReport {
    /// Rounds settled (outcome declared and every bet paid).
    pub rounds: u64,
    /// Rounds voided (every stake refunded).
    pub voided: u64,
    /// Rounds still running when the replay read the log (the table's latest).
    pub in_progress: u64,
    /// Bets on settled rounds.
    pub bets: u64,
    pub staked: i64,
    pub paid: i64,
    /// Stakes returned on voided rounds.
    pub refunded: i64,
    /// `staked − paid` over settled rounds.
    pub house_net: i64,
    /// `paid / staked` over settled rounds; `None` before any stake.
    pub rtp: Option<f64>,
    /// Violations that name this table.
    pub violations: u64,
}

/// An operator's switch of betting, from its `betting_switched` event (ADR 0022): who switched
/// what, for which table, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OperatorAction {
    /// The `events` position of the event.
    pub position: i64,
    /// When the operator switched (the event's `at`).
    pub at: String,
    pub event_id: String,
    /// Who switched.
    pub by: String,
    /// `"disabled"` (switched off) or `"enabled"` (the switch lifted).
    pub betting: String,
    /// The table switched; `null` for every table.
    pub table: Option<String>,
    /// Why, in the operator's words.
    pub reason: String,
}

impl fmt::Display for OperatorAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let switched = if self.betting == "enabled" {
            "on"
        } else {
            "off"
        };
        let table = self
            .table
            .as_ref()
            .map_or("every table".to_string(), |t| format!("table {t}"));
        write!(
            f,
            "{} position {}: {} switched betting {switched} for {table} ({:?})",
            self.at, self.position, self.by, self.reason
        )
    }
}

/// Where the chain ends: the checkpoint to publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Head {
    pub position: i64,
    /// Lowercase hex of the hash at `position`.
    pub hash: String,
}

impl fmt::Display for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.position, self.hash)
    }
}

/// Money over the whole log (on an unscoped run from position 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Money {
    pub deposits: i64,
    /// Sum of every wallet's balance as rebuilt from the events.
    pub balances: i64,
    /// Stakes minus payouts and refunds on settled or voided rounds.
    pub house_net: i64,
    /// Stakes on rounds not settled or refunded yet.
    pub in_play: i64,
    pub wallets: u64,
}

/// How the replay ran (for operators sizing a nightly audit, and for `just bench-replay`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RunStats {
    /// From connecting to the report.
    pub seconds: f64,
    /// Events read from Postgres per second.
    pub events_per_second: f64,
    /// Bus messages read.
    pub bus_messages: u64,
    /// The replaying process's peak resident memory (Linux `VmHWM`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_kib: Option<u64>,
}

/// What a replay proved, and what it found.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Report {
    /// True when no violation was found.
    pub ok: bool,
    /// Events read from the store (the whole chain from its start).
    pub events: u64,
    /// The chain was verified from this position (1 unless `--from-checkpoint`).
    pub from_position: i64,
    pub head: Head,
    /// The rounds rebuilt and reported: `--table`, `--from-round`, `--to-round`.
    pub scope: Scope,
    pub tables: BTreeMap<String, TableReport>,
    /// Present when wallets were checked (an unscoped run from position 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub money: Option<Money>,
    /// Operators' switches of betting (`betting_switched`) in position order, of the table in
    /// scope and of every table: the first 1000.
    pub operator_actions: Vec<OperatorAction>,
    /// Every operator action found; the first 1000 are listed in `operator_actions`.
    pub operator_actions_total: u64,
    /// The comparison with the JetStream streams; absent with `--no-bus`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus: Option<crate::crosscheck::BusReport>,
    /// Checkpoints given and found to hold.
    pub checkpoints_verified: u64,
    /// Every violation found; the first 1000 are listed in `violations`.
    pub violations_total: u64,
    pub violations: Vec<Violation>,
    pub run: RunStats,
    /// The proof of one round, when one was asked for (printed on its own).
    #[serde(skip)]
    #[schemars(skip)]
    pub recall: Option<crate::recall::Recall>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Scope {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_round: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_round: Option<u64>,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"ok\":false,\"error\":{e:?}}}"))
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} events verified, positions {}..={}",
            self.events, self.from_position, self.head.position
        );
        for (table, t) in &self.tables {
            let rtp = t
                .rtp
                .map_or("-".to_string(), |r| format!("{:.2} %", r * 100.0));
            let _ = writeln!(
                out,
                "table {table}: {} rounds settled, {} voided, {} in progress; {} bets, staked {}, \
                 paid {}, refunded {}, house net {}; RTP {rtp} (theoretical {:.2} %); {} violations",
                t.rounds,
                t.voided,
                t.in_progress,
                t.bets,
                t.staked,
                t.paid,
                t.refunded,
                t.house_net,
                THEORETICAL_RTP * 100.0,
                t.violations
            );
        }
        if let Some(money) = &self.money {
            let _ = writeln!(
                out,
                "money: deposits {} = balances {} + house net {} + in play {} ({} wallets)",
                money.deposits, money.balances, money.house_net, money.in_play, money.wallets
            );
        }
        if self.operator_actions_total == 0 {
            let _ = writeln!(out, "operator actions: none");
        } else {
            let _ = writeln!(out, "operator actions: {}", self.operator_actions_total);
            for action in &self.operator_actions {
                let _ = writeln!(out, "  {action}");
            }
            if self.operator_actions_total > self.operator_actions.len() as u64 {
                let _ = writeln!(
                    out,
                    "  … and {} more",
                    self.operator_actions_total - self.operator_actions.len() as u64
                );
            }
        }
        match &self.bus {
            Some(bus) => {
                let streams: Vec<String> = bus
                    .streams
                    .iter()
                    .map(|s| {
                        format!(
                            "{} {}..={}{}",
                            s.name,
                            s.first_seq,
                            s.last_seq,
                            if s.retention_limited {
                                " (retention-limited)"
                            } else {
                                ""
                            }
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "bus: {}: {} events agree with Postgres; {} awaiting publication (outbox at \
                     position {}), {} transitions not yet recorded, {} recorded after the \
                     snapshot, {} older than the streams' retention",
                    streams.join(", "),
                    bus.matched,
                    bus.awaiting_publication,
                    bus.outbox_position,
                    bus.not_yet_recorded,
                    bus.outside_snapshot,
                    bus.before_retention
                );
            }
            None => {
                let _ = writeln!(out, "bus: not compared (--no-bus)");
            }
        }
        if self.checkpoints_verified > 0 {
            let _ = writeln!(out, "{} checkpoints hold", self.checkpoints_verified);
        }
        for violation in &self.violations {
            let _ = writeln!(out, "VIOLATION {violation}");
        }
        if self.violations_total > self.violations.len() as u64 {
            let _ = writeln!(
                out,
                "… and {} more violations",
                self.violations_total - self.violations.len() as u64
            );
        }
        let _ = writeln!(
            out,
            "replayed in {:.2} s ({:.0} events/s){}",
            self.run.seconds,
            self.run.events_per_second,
            self.run.peak_rss_kib.map_or(String::new(), |k| format!(
                ", peak RSS {:.1} MiB",
                k as f64 / 1024.0
            ))
        );
        let verdict = if self.ok {
            "ok: every check holds"
        } else {
            "FAILED"
        };
        let _ = writeln!(
            out,
            "{verdict}: {} violations; chain head {} (publish it as a checkpoint)",
            self.violations_total, self.head
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(actions: Vec<OperatorAction>, total: u64) -> Report {
        Report {
            ok: true,
            events: 9,
            from_position: 1,
            head: Head {
                position: 9,
                hash: "00".repeat(32),
            },
            scope: Scope::default(),
            tables: BTreeMap::new(),
            money: None,
            operator_actions: actions,
            operator_actions_total: total,
            bus: None,
            checkpoints_verified: 0,
            violations_total: 0,
            violations: Vec::new(),
            run: RunStats::default(),
            recall: None,
        }
    }

    fn action(position: i64, table: Option<&str>, betting: &str, reason: &str) -> OperatorAction {
        OperatorAction {
            position,
            at: format!("2026-11-25T22:40:0{position}.000000Z"),
            event_id: format!("0190f5a2-7c1e-7000-8000-00000000000{position}"),
            by: "dana".into(),
            betting: betting.into(),
            table: table.map(str::to_string),
            reason: reason.into(),
        }
    }

    #[test]
    fn the_text_report_says_who_switched_what_for_which_table_and_when_in_order() {
        let text = report(
            vec![
                action(3, Some("roulette-1"), "disabled", "wheel serviced"),
                action(5, None, "disabled", "database flaky"),
                action(7, Some("roulette-1"), "enabled", "wheel back"),
            ],
            3,
        )
        .to_text();
        let lines: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("operator actions"))
            .take(4)
            .collect();
        assert_eq!(
            lines,
            [
                "operator actions: 3",
                "  2026-11-25T22:40:03.000000Z position 3: dana switched betting off for table roulette-1 (\"wheel serviced\")",
                "  2026-11-25T22:40:05.000000Z position 5: dana switched betting off for every table (\"database flaky\")",
                "  2026-11-25T22:40:07.000000Z position 7: dana switched betting on for table roulette-1 (\"wheel back\")",
            ],
            "{text}"
        );
        assert!(
            report(Vec::new(), 0)
                .to_text()
                .contains("operator actions: none\n")
        );
        let more = report(vec![action(3, None, "disabled", "r")], 1001).to_text();
        assert!(more.contains("  … and 1000 more\n"), "{more}");
    }

    #[test]
    fn the_json_report_lists_operator_actions_with_null_for_every_table() {
        let json: serde_json::Value = serde_json::from_str(
            &report(
                vec![
                    action(3, Some("roulette-1"), "disabled", "wheel serviced"),
                    action(5, None, "enabled", "over"),
                ],
                2,
            )
            .to_json(),
        )
        .expect("JSON");
        assert_eq!(json["operator_actions_total"], 2);
        let actions = json["operator_actions"].as_array().expect("a list");
        assert_eq!(actions[0]["table"], "roulette-1");
        assert_eq!(actions[0]["by"], "dana");
        assert_eq!(actions[0]["betting"], "disabled");
        assert_eq!(actions[0]["at"], "2026-11-25T22:40:03.000000Z");
        assert_eq!(actions[0]["position"], 3);
        assert!(actions[1]["table"].is_null(), "{}", actions[1]);
        assert!(
            report(Vec::new(), 0)
                .to_json()
                .contains("\"operator_actions\":[]")
        );
    }
}

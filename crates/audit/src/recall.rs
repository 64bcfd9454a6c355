//! Last-game recall: one round's proof for a person (`croupier replay --table T --round N`),
//! and, as JSON, a self-contained file a regulator keeps and re-checks offline
//! (`croupier replay --verify-recall FILE`): the round's events themselves with the hash each
//! chains to, the commitment, the reveal and the draw worked step by step, every bet and its
//! payout, the totals, and the verdict of each check.

use std::collections::BTreeMap;

use protocol::EventBody;
use serde::{Deserialize, Serialize};

use crate::model::{Auditor, Limits, Row, Scope};
use crate::report::{Check, Violation};
use crate::rules::{self, WORD_LIMIT};

/// One of the round's events as stored, with what its hash chains to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RecalledEvent {
    pub position: i64,
    pub event_id: String,
    pub stream: String,
    pub version: i32,
    #[serde(rename = "type")]
    pub kind: String,
    /// Lowercase hex of the stored `data` (MessagePack of the event).
    pub data: String,
    /// Lowercase hex of the stored `metadata`.
    pub metadata: String,
    /// Lowercase hex of the hash of the row at `position − 1`.
    pub prev_hash: String,
    pub hash: String,
    /// The event as JSON, for reading (the `data` bytes are what is checked).
    pub event: serde_json::Value,
    /// Where the event is on the bus, when the replay compared the two logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
}

/// One block of the draw: `HMAC-SHA256(seed, "<table>:<round>:<i>")` read as eight words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Block {
    pub i: u64,
    /// The HMAC message, e.g. `roulette-1:5:0`.
    pub message: String,
    /// Lowercase hex of the HMAC.
    pub hmac: String,
    pub words: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RecalledBet {
    pub bet_id: String,
    pub player: String,
    pub selection: serde_json::Value,
    pub amount: i64,
    pub accepted_at: String,
    pub position: i64,
    /// `None` while not settled (or when refunded).
    pub payout: Option<i64>,
    pub refunded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RecallLimits {
    pub min_bet: i64,
    pub max_bet: i64,
    pub max_round_stake: i64,
}

impl From<Limits> for RecallLimits {
    fn from(l: Limits) -> Self {
        RecallLimits {
            min_bet: l.min_bet,
            max_bet: l.max_bet,
            max_round_stake: l.max_round_stake,
        }
    }
}

impl From<RecallLimits> for Limits {
    fn from(l: RecallLimits) -> Self {
        Limits {
            min_bet: l.min_bet,
            max_bet: l.max_bet,
            max_round_stake: l.max_round_stake,
        }
    }
}

/// A check and whether it holds for this round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Verdict {
    pub check: String,
    pub holds: bool,
}

/// One round's proof.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Recall {
    pub table: String,
    pub round: u64,
    pub phase: String,
    /// Lowercase hex: the commitment published when the round opened.
    pub seed_hash: Option<String>,
    pub opened_at: Option<String>,
    /// Where the commitment is: its Postgres position and its place on the bus.
    pub commitment_position: Option<i64>,
    pub commitment_bus: Option<String>,
    /// Bets were accepted only before this instant.
    pub closes_at: Option<String>,
    pub betting_closed_at: Option<String>,
    /// Lowercase hex of the revealed seed.
    pub server_seed: Option<String>,
    pub declared_at: Option<String>,
    /// SHA-256 of the revealed seed, to compare with `seed_hash`.
    pub revealed_seed_hash: Option<String>,
    /// The blocks the draw read, up to the one with the accepted word.
    pub blocks: Vec<Block>,
    /// The first word below 4294967289, and `word mod 37`.
    pub accepted_word: Option<u32>,
    pub drawn_outcome: Option<u8>,
    pub declared_outcome: Option<u8>,
    pub voided: Option<String>,
    pub bets: Vec<RecalledBet>,
    pub staked: i64,
    pub paid: i64,
    pub refunded: i64,
    pub checks: Vec<Verdict>,
    pub violations: Vec<Violation>,
    /// The table limits the bets were judged by.
    pub limits: RecallLimits,
    /// Whether the round's events were compared with the bus (not with `--no-bus`); the
    /// `bus` verdict is listed only then.
    pub bus_compared: bool,
    /// The round's events, in position order.
    pub events: Vec<RecalledEvent>,
    /// The chain head when the recall was made (compare with the published checkpoints).
    pub head: crate::report::Head,
}

/// The checks a round's verdict lists.
const ROUND_CHECKS: [Check; 7] = [
    Check::Chain,
    Check::Fairness,
    Check::Round,
    Check::Bet,
    Check::Settlement,
    Check::Totals,
    Check::Bus,
];

/// Collects the rows of one round during a replay.
#[derive(Debug, Default)]
pub struct Collector {
    pub table: String,
    pub round: u64,
    rows: Vec<(Row, serde_json::Value)>,
}

impl Collector {
    pub fn new(table: &str, round: u64) -> Self {
        Collector {
            table: table.to_string(),
            round,
            rows: Vec::new(),
        }
    }

    pub fn wants(&self, event: &crate::wire::Event<'_>) -> bool {
        event.table == Some(self.table.as_str()) && event.round == Some(self.round)
    }

    pub fn add(&mut self, row: &Row) {
        let json = protocol::decode_event(&row.data)
            .ok()
            .and_then(|event| serde_json::to_value(&event).ok())
            .unwrap_or_default();
        self.rows.push((row.clone(), json));
    }

    /// The proof, with the replay's findings about this round and where the events are on
    /// the bus (`bus`: event id → place).
    pub fn finish(
        self,
        violations: &[Violation],
        bus: &BTreeMap<String, String>,
        head: crate::report::Head,
        limits: Limits,
        bus_compared: bool,
    ) -> Recall {
        let events = self
            .rows
            .into_iter()
            .map(|(row, event)| RecalledEvent {
                position: row.position,
                event_id: row.event_id.to_string(),
                bus: bus.get(&row.event_id.to_string()).cloned(),
                stream: row.stream.into(),
                version: row.version,
                kind: row.kind.into(),
                data: hex::encode(&row.data),
                metadata: hex::encode(&row.metadata),
                prev_hash: hex::encode(row.prev_hash),
                hash: hex::encode(row.hash),
                event,
            })
            .collect();
        let ours: Vec<Violation> = violations
            .iter()
            .filter(|v| {
                v.table.as_deref() == Some(self.table.as_str()) && v.round == Some(self.round)
                    || v.check == Check::Chain
            })
            .cloned()
            .collect();
        summarize(
            &self.table,
            self.round,
            events,
            ours,
            head,
            limits.into(),
            bus_compared,
        )
    }
}

/// Builds the readable part of a recall from its events.
fn summarize(
    table: &str,
    round: u64,
    events: Vec<RecalledEvent>,
    violations: Vec<Violation>,
    head: crate::report::Head,
    limits: RecallLimits,
    bus_compared: bool,
) -> Recall {
    let mut recall = Recall {
        table: table.to_string(),
        round,
        phase: "unknown".into(),
        seed_hash: None,
        opened_at: None,
        commitment_position: None,
        commitment_bus: None,
        closes_at: None,
        betting_closed_at: None,
        server_seed: None,
        declared_at: None,
        revealed_seed_hash: None,
        blocks: Vec::new(),
        accepted_word: None,
        drawn_outcome: None,
        declared_outcome: None,
        voided: None,
        bets: Vec::new(),
        staked: 0,
        paid: 0,
        refunded: 0,
        checks: Vec::new(),
        violations: Vec::new(),
        limits,
        bus_compared,
        events: Vec::new(),
        head,
    };
    let mut index: BTreeMap<uuid::Uuid, usize> = BTreeMap::new();
    for recalled in &events {
        let Ok(data) = hex::decode(&recalled.data) else {
            continue;
        };
        let Ok(event) = protocol::decode_event(&data) else {
            continue;
        };
        let at = event.at.to_string();
        match &event.body {
            EventBody::RoundOpened(o) => {
                recall.phase = "open".into();
                recall.seed_hash = Some(o.seed_hash.to_hex());
                recall.opened_at = Some(at);
                recall.closes_at = Some(o.closes_at.to_string());
                recall.commitment_position = Some(recalled.position);
                recall.commitment_bus.clone_from(&recalled.bus);
            }
            EventBody::BettingClosed(_) => {
                recall.phase = "closed".into();
                recall.betting_closed_at = Some(at);
            }
            EventBody::OutcomeDeclared(d) => {
                recall.phase = "resulted".into();
                let seed = *d.server_seed.as_bytes();
                recall.server_seed = Some(hex::encode(seed));
                recall.revealed_seed_hash = Some(hex::encode(rules::seed_hash(&seed)));
                recall.declared_at = Some(at);
                recall.declared_outcome = Some(d.outcome.get());
                let draw = rules::draw_traced(&seed, table, round);
                recall.blocks = draw
                    .blocks
                    .iter()
                    .map(|(i, hmac)| Block {
                        i: *i,
                        message: format!("{table}:{round}:{i}"),
                        hmac: hex::encode(hmac),
                        words: rules::words(hmac).to_vec(),
                    })
                    .collect();
                recall.accepted_word = Some(draw.word);
                recall.drawn_outcome = Some(draw.pocket);
            }
            EventBody::RoundVoided(v) => {
                recall.phase = "voided".into();
                recall.voided = Some(v.reason.clone());
            }
            EventBody::BetPlaced(b) => {
                index.insert(*b.bet_id.as_uuid(), recall.bets.len());
                recall.staked += b.amount.get();
                recall.bets.push(RecalledBet {
                    bet_id: b.bet_id.as_uuid().to_string(),
                    player: b.player.as_str().to_string(),
                    selection: serde_json::to_value(event.body.clone())
                        .ok()
                        .and_then(|v| v.get("selection").cloned())
                        .unwrap_or_default(),
                    amount: b.amount.get(),
                    accepted_at: at,
                    position: recalled.position,
                    payout: None,
                    refunded: false,
                });
            }
            EventBody::BetSettled(s) => {
                recall.paid += s.payout.get();
                if let Some(bet) = index
                    .get(s.bet_id.as_uuid())
                    .and_then(|&i| recall.bets.get_mut(i))
                {
                    bet.payout = Some(s.payout.get());
                }
            }
            EventBody::BetRefunded(r) => {
                recall.refunded += r.amount.get();
                if let Some(bet) = index
                    .get(r.bet_id.as_uuid())
                    .and_then(|&i| recall.bets.get_mut(i))
                {
                    bet.refunded = true;
                }
            }
            EventBody::RoundSettled(_) => recall.phase = "settled".into(),
            EventBody::FundsDeposited(_) | EventBody::BettingSwitched(_) => {}
        }
    }
    recall.checks = ROUND_CHECKS
        .iter()
        .filter(|check| bus_compared || **check != Check::Bus)
        .map(|check| Verdict {
            check: check.as_str().to_string(),
            holds: !violations.iter().any(|v| v.check == *check),
        })
        .collect();
    recall.violations = violations;
    recall.events = events;
    recall
}

impl Recall {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":{e:?}}}"))
    }

    /// The proof for a person.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let none = || "-".to_string();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Round {} of table {} ({})",
            self.round, self.table, self.phase
        );
        let _ = writeln!(
            out,
            "  commitment: seed_hash {} published {} (Postgres position {}, {})",
            self.seed_hash.clone().unwrap_or_else(none),
            self.opened_at.clone().unwrap_or_else(none),
            self.commitment_position
                .map_or_else(none, |p| p.to_string()),
            self.commitment_bus
                .clone()
                .unwrap_or_else(|| "bus not compared".into()),
        );
        let _ = writeln!(
            out,
            "  betting: open until {}, closed at {}",
            self.closes_at.clone().unwrap_or_else(none),
            self.betting_closed_at.clone().unwrap_or_else(none)
        );
        if let Some(reason) = &self.voided {
            let _ = writeln!(out, "  voided: {reason}");
        }
        if let Some(seed) = &self.server_seed {
            let _ = writeln!(
                out,
                "  reveal: server_seed {seed} at {}; SHA-256 of it = {}",
                self.declared_at.clone().unwrap_or_else(none),
                self.revealed_seed_hash.clone().unwrap_or_else(none)
            );
            for block in &self.blocks {
                let _ = writeln!(
                    out,
                    "  HMAC-SHA256(seed, \"{}\") = {}; words {:?}",
                    block.message, block.hmac, block.words
                );
            }
            let _ = writeln!(
                out,
                "  draw: first word below {WORD_LIMIT} is {}; {} mod 37 = {}; declared outcome {}",
                self.accepted_word.map_or_else(none, |w| w.to_string()),
                self.accepted_word.map_or_else(none, |w| w.to_string()),
                self.drawn_outcome.map_or_else(none, |o| o.to_string()),
                self.declared_outcome.map_or_else(none, |o| o.to_string()),
            );
        }
        let _ = writeln!(out, "  bets ({}):", self.bets.len());
        for bet in &self.bets {
            let result = match (bet.refunded, bet.payout) {
                (true, _) => "refunded".to_string(),
                (false, Some(payout)) => format!("paid {payout}"),
                (false, None) => "not settled".to_string(),
            };
            let _ = writeln!(
                out,
                "    {} {} {} {} at {} (position {}): {result}",
                bet.player, bet.bet_id, bet.selection, bet.amount, bet.accepted_at, bet.position
            );
        }
        let _ = writeln!(
            out,
            "  totals: staked {}, paid {}, refunded {}",
            self.staked, self.paid, self.refunded
        );
        let verdicts: Vec<String> = self
            .checks
            .iter()
            .map(|c| format!("{} {}", c.check, if c.holds { "holds" } else { "FAILS" }))
            .collect();
        let _ = writeln!(out, "  checks: {}", verdicts.join(", "));
        for violation in &self.violations {
            let _ = writeln!(out, "  VIOLATION {violation}");
        }
        let _ = writeln!(
            out,
            "  {} events, each with the hash it chains to; chain head {}",
            self.events.len(),
            self.head
        );
        out
    }
}

/// Checks a recall file offline, with nothing but its contents: every event's hash from its
/// stored fields and the hash before it, the round rebuilt from the events by the published
/// rules, and the readable part agreeing with the events. Returns what does not hold.
pub fn verify(recall: &Recall) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut rows = Vec::new();
    let mut last_position = 0;
    for e in &recall.events {
        let row = (|| -> Option<Row> {
            Some(Row {
                position: e.position,
                event_id: e.event_id.parse().ok()?,
                stream: e.stream.as_str().into(),
                version: e.version,
                kind: e.kind.as_str().into(),
                data: hex::decode(&e.data).ok()?.into(),
                metadata: hex::decode(&e.metadata).ok()?.into(),
                hash: hex::decode(&e.hash).ok()?.try_into().ok()?,
                prev_hash: hex::decode(&e.prev_hash).ok()?.try_into().ok()?,
                at: crate::wire::Time::ZERO,
            })
        })();
        let Some(row) = row else {
            found.push(
                Violation::new(Check::Event, "hex fields of the right lengths", "malformed")
                    .at(e.position),
            );
            continue;
        };
        found.extend(row.hash_violation());
        if row.position <= last_position {
            found.push(
                Violation::new(Check::Event, "events in position order", "out of order")
                    .at(row.position),
            );
        }
        last_position = row.position;
        rows.push(row);
    }
    let scope = Scope {
        table: Some(recall.table.clone()),
        from_round: Some(recall.round),
        to_round: Some(recall.round),
    };
    let mut auditor = Auditor::new(recall.limits.into(), scope, false);
    for row in &rows {
        let event = crate::wire::decode(&row.data);
        if let Ok(event) = &event
            && !(event.table == Some(recall.table.as_str()) && event.round == Some(recall.round))
        {
            found.push(
                Violation::new(
                    Check::Event,
                    format!("an event of table {} round {}", recall.table, recall.round),
                    format!("a {} of another round", event.kind),
                )
                .at(row.position),
            );
        }
        auditor.apply(row, event.as_ref().map_err(String::as_str));
    }
    found.extend(auditor.finish(None).violations.into_listed());
    // The readable part says what the events say.
    let again = summarize(
        &recall.table,
        recall.round,
        recall.events.clone(),
        recall.violations.clone(),
        recall.head.clone(),
        recall.limits,
        recall.bus_compared,
    );
    if again != *recall {
        found.push(
            Violation::new(
                Check::Event,
                "a summary that says what the recalled events say",
                "a summary that differs from them",
            )
            .round(&recall.table, recall.round),
        );
    }
    found
}

//! The rebuild: every round, bet, settlement and wallet, from the events in position order,
//! checked against the published rules (`crate::rules`) as it goes.
//!
//! Memory holds one entry per round still open and per wallet, not per event: a round's bets
//! are dropped once its `round_settled` has been checked, leaving a small summary so that a
//! late event for it is still caught. Tables and players are numbered as they are first seen,
//! so a row costs no allocation once its table and player are known. Pure and synchronous:
//! rows come in, violations and figures come out.
//!
//! An operator's switch of betting (`betting_switched`, ADR 0022) moves no money and belongs to
//! no round: it is only listed, in order, for the report's "operator actions" (the first
//! [`MAX_LISTED`] of them; all are counted).

use std::collections::{BTreeMap, BTreeSet};

// FxHash: the keys (ids, UUIDs, positions) come from the log being audited, read offline; a
// crafted set of colliding keys could only slow the audit down, never change its verdict.
use compact_str::CompactString;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use uuid::Uuid;

use crate::report::{Check, MAX_LISTED, Money, OperatorAction, TableReport, Violation, Violations};
use crate::rules::Wager;
use crate::wire::{Body, Event, Kind, Time};

/// The stream every `betting_switched` is recorded in (`docs/contract/event-store.md`).
pub const OPERATOR_STREAM: &str = "operator";

/// The table limits the bets were judged by (the services' `CROUPIER_MIN_BET`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub min_bet: i64,
    pub max_bet: i64,
    pub max_round_stake: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_bet: 10,
            max_bet: 100_000,
            max_round_stake: 1_000_000,
        }
    }
}

/// Which rounds are rebuilt and reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub table: Option<String>,
    pub from_round: Option<u64>,
    pub to_round: Option<u64>,
}

impl Scope {
    pub fn covers(&self, table: &str, round: u64) -> bool {
        self.table.as_deref().is_none_or(|t| t == table)
            && self.from_round.is_none_or(|from| round >= from)
            && self.to_round.is_none_or(|to| round <= to)
    }

    pub fn is_everything(&self) -> bool {
        self.table.is_none() && self.from_round.is_none() && self.to_round.is_none()
    }
}

/// One row of `events` as the auditor reads it.
#[derive(Debug, Clone)]
pub struct Row {
    pub position: i64,
    pub event_id: Uuid,
    pub stream: CompactString,
    pub version: i32,
    pub kind: CompactString,
    pub data: bytes::Bytes,
    pub metadata: bytes::Bytes,
    pub hash: [u8; 32],
    /// The stored hash of the row before (what this row's hash chains to).
    pub prev_hash: [u8; 32],
    /// The event's `at`, when the reader was asked for it (to merge with the bus by time);
    /// `Time::ZERO` otherwise, or when the event does not decode.
    pub at: Time,
}

impl Row {
    /// The chain check of this one row: its stored hash is the hash of its fields chained to
    /// `prev_hash` (`docs/contract/event-store.md`), else the violation naming it.
    pub fn hash_violation(&self) -> Option<Violation> {
        let computed = crate::rules::chain_hash(
            &self.prev_hash,
            self.position,
            self.event_id.as_bytes(),
            self.stream.as_bytes(),
            self.kind.as_bytes(),
            &self.data,
            &self.metadata,
        );
        (computed != self.hash).then(|| {
            Violation::new(
                Check::Chain,
                format!("hash {} of the stored fields", hex::encode(computed)),
                format!("stored hash {}", hex::encode(self.hash)),
            )
            .at(self.position)
        })
    }
}

/// A bet of a round not finished yet.
#[derive(Debug, Clone)]
struct Bet {
    player: u32,
    wager: Wager,
    amount: i64,
    /// Set once settled or refunded: the position of that event.
    result: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    position: i64,
    at: Time,
}

#[derive(Debug, Default)]
struct Round {
    opened: Option<Mark>,
    closes_at: Option<Time>,
    seed_hash: Option<[u8; 32]>,
    closed: Option<Mark>,
    declared: Option<Mark>,
    outcome: Option<u8>,
    voided: Option<Mark>,
    bets: HashMap<Uuid, Bet>,
    /// Per player: staked on this round so far (the per-round limit).
    stakes: HashMap<u32, i64>,
    paid: i64,
    refunded: i64,
}

/// What is left of a round once it is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finished {
    Settled,
    Voided,
}

#[derive(Debug, Default)]
struct Table {
    name: String,
    /// Round numbers seen (opened or finished), to find the missing ones.
    rounds: BTreeSet<u64>,
    report: TableReport,
}

/// A player as the rebuild knows them, held in the map entry of their id: the lookup every
/// money event makes reads one entry, not an entry and then a wallet elsewhere (with 100,000
/// players neither fits a core's cache, and the second read was most of `apply`'s own time).
#[derive(Debug)]
struct Player {
    /// Index in [`Auditor::names`], and how rounds refer to the player.
    id: u32,
    /// `None` until known: a replay from a checkpoint learns it from the first event.
    balance: Option<i64>,
    /// The last version seen in the stream `player-<id>`, when stream versions are checked.
    version: Option<i32>,
}

/// Stream versions, when checked (a replay of the log; not a recall's handful of rows): each
/// stream's versions 1, 2, 3, … in position order. A player's stream's last version lives in
/// the player's entry, which the row's event reads anyway (one lookup instead of two that miss
/// the cache: a seventh of the Postgres half's time when it was a map of its own on the
/// reading task).
#[derive(Debug)]
struct StreamVersions {
    /// From position 1 (a stream's first version must be 1), or from a checkpoint (the first
    /// version seen of a stream is taken as it is).
    from_start: bool,
    /// Every stream not named `player-…`: rounds', the operator's, anything else.
    others: HashMap<CompactString, i32>,
}

/// The rebuild in progress.
#[derive(Debug)]
pub struct Auditor {
    limits: Limits,
    scope: Scope,
    /// Replaying from a checkpoint: rounds and wallets from before it are unknown.
    partial: bool,
    rounds: HashMap<(u32, u64), Round>,
    finished: HashMap<(u32, u64), Finished>,
    table_ids: HashMap<String, u32>,
    tables: Vec<Table>,
    seed_hashes: HashSet<[u8; 32]>,
    /// Player id → the player's number and wallet; keys held inline (ids are short), so a
    /// lookup reads no heap string either.
    players: hashbrown::HashMap<CompactString, Player, rustc_hash::FxBuildHasher>,
    /// Player number → id, for reports.
    names: Vec<CompactString>,
    versions: Option<StreamVersions>,
    deposit_ids: HashSet<String>,
    money: Money,
    violations: Violations,
    /// Operators' switches of betting, in position order (the first [`MAX_LISTED`]).
    operator_actions: Vec<OperatorAction>,
    operator_actions_total: u64,
}

impl Auditor {
    pub fn new(limits: Limits, scope: Scope, partial: bool) -> Self {
        Auditor {
            limits,
            scope,
            partial,
            rounds: HashMap::default(),
            finished: HashMap::default(),
            table_ids: HashMap::default(),
            tables: Vec::new(),
            seed_hashes: HashSet::default(),
            players: hashbrown::HashMap::default(),
            names: Vec::new(),
            versions: None,
            deposit_ids: HashSet::default(),
            money: Money::default(),
            violations: Violations::default(),
            operator_actions: Vec::new(),
            operator_actions_total: 0,
        }
    }

    /// Whether wallets are rebuilt and checked: an unscoped run from the start of the log.
    pub fn checks_wallets(&self) -> bool {
        !self.partial && self.scope.is_everything()
    }

    pub fn violation(&mut self, violation: Violation) {
        self.violations.push(violation);
    }

    fn table_id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.table_ids.get(name) {
            return id;
        }
        let id = self.tables.len() as u32;
        self.tables.push(Table {
            name: name.to_string(),
            ..Table::default()
        });
        self.table_ids.insert(name.to_string(), id);
        id
    }

    fn player(&mut self, name: &str) -> &mut Player {
        let names = &mut self.names;
        self.players.entry_ref(name).or_insert_with(|| {
            let id = names.len() as u32;
            names.push(CompactString::from(name));
            Player {
                id,
                balance: None,
                version: None,
            }
        })
    }

    /// Checks from now on that every stream's versions follow each other (part of the chain
    /// check, `Check::Chain`), from 1 when `from_start`.
    pub fn check_stream_versions(&mut self, from_start: bool) {
        self.versions = Some(StreamVersions {
            from_start,
            others: HashMap::default(),
        });
    }

    /// The row's version follows its stream's last one (whatever its data says).
    fn check_version(&mut self, row: &Row) {
        let Some(versions) = self.versions.as_mut() else {
            return;
        };
        let from_start = versions.from_start;
        let last = match row.stream.strip_prefix("player-") {
            Some(player) => self.player(player).version.replace(row.version),
            None => versions.others.insert(row.stream.clone(), row.version),
        };
        let next = match last {
            Some(last) => Some(i64::from(last) + 1),
            None if from_start => Some(1),
            None => None,
        };
        if let Some(next) = next
            && next != i64::from(row.version)
        {
            self.violation(
                Violation::new(
                    Check::Chain,
                    format!("version {next} of stream {}", row.stream),
                    format!("version {}", row.version),
                )
                .at(row.position),
            );
        }
    }

    /// Rebuilds with one more row, whose `data` decoded to `event` (or did not, and why).
    pub fn apply(&mut self, row: &Row, event: Result<&Event<'_>, &str>) {
        self.check_version(row);
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                self.violation(
                    Violation::new(Check::Event, "an event of the contract", error)
                        .at(row.position),
                );
                return;
            }
        };
        self.check_columns(row, event);
        if let Body::BettingSwitched {
            betting,
            reason,
            by,
        } = event.body
        {
            self.operator_action(row, event, betting, reason, by);
            return;
        }
        // Looked up once for both the wallet and the round.
        let player = if self.checks_wallets() {
            self.apply_wallet(row.position, event)
        } else {
            event.player().map(|p| self.player(p).id)
        };
        let (Some(table), Some(round)) = (event.table, event.round) else {
            return;
        };
        if !self.scope.covers(table, round) {
            return;
        }
        self.apply_round(row.position, table, round, event, player);
    }

    /// Lists an operator's switch (within the scope's table, or of every table): who, what,
    /// which table, when. Nothing about money to check.
    fn operator_action(
        &mut self,
        row: &Row,
        event: &Event<'_>,
        betting: crate::wire::Switch,
        reason: &str,
        by: &str,
    ) {
        let in_scope = match (self.scope.table.as_deref(), event.table) {
            (Some(scope), Some(table)) => scope == table,
            _ => true,
        };
        if !in_scope {
            return;
        }
        self.operator_actions_total += 1;
        if self.operator_actions.len() < MAX_LISTED {
            self.operator_actions.push(OperatorAction {
                position: row.position,
                at: event.at.to_string(),
                event_id: event.id.to_string(),
                by: by.to_string(),
                betting: betting.as_str().to_string(),
                table: event.table.map(str::to_string),
                reason: reason.to_string(),
            });
        }
    }

    /// The row's columns agree with the event it holds.
    fn check_columns(&mut self, row: &Row, event: &Event<'_>) {
        let stream_holds = match (event.player(), event.table, event.round) {
            _ if event.kind == Kind::BettingSwitched => row.stream == OPERATOR_STREAM,
            (Some(player), _, _) => row.stream.strip_prefix("player-") == Some(player),
            (None, Some(table), Some(round)) => row
                .stream
                .strip_prefix("round-")
                .and_then(|rest| rest.rsplit_once('-'))
                .is_some_and(|(t, r)| t == table && r.parse() == Ok(round)),
            _ => true,
        };
        if row.kind == event.kind.as_str() && row.event_id == event.id && stream_holds {
            return;
        }
        let mut mismatches = Vec::new();
        if row.kind != event.kind.as_str() {
            mismatches.push(format!("type {:?} for a {} event", row.kind, event.kind));
        }
        if row.event_id != event.id {
            mismatches.push(format!(
                "event_id {} for event id {}",
                row.event_id, event.id
            ));
        }
        if !stream_holds {
            mismatches.push(format!("stream {:?} for this {}", row.stream, event.kind));
        }
        self.violation(
            Violation::new(
                Check::Event,
                "columns that agree with the event",
                mismatches.join(", "),
            )
            .at(row.position),
        );
    }

    /// Applies a money event to its player's wallet; returns the player's number (for any
    /// event with a player).
    fn apply_wallet(&mut self, position: i64, event: &Event<'_>) -> Option<u32> {
        let (player, delta, balance, what) = match event.body {
            Body::FundsDeposited {
                player,
                deposit_id,
                amount,
                balance,
            } => {
                if !self.deposit_ids.insert(deposit_id.to_string()) {
                    self.violation(
                        Violation::new(
                            Check::Wallet,
                            "each deposit id credited once",
                            format!("deposit {deposit_id} credited again"),
                        )
                        .at(position)
                        .player(player),
                    );
                }
                self.money.deposits = self.money.deposits.saturating_add(amount);
                (player, amount, balance, "deposit")
            }
            Body::BetPlaced {
                player,
                amount,
                balance,
                ..
            } => (player, -amount, balance, "stake"),
            Body::BetSettled {
                player,
                payout,
                balance,
                ..
            } => (player, payout, balance, "payout"),
            Body::BetRefunded {
                player,
                amount,
                balance,
                ..
            } => (player, amount, balance, "refund"),
            _ => return event.player().map(|p| self.player(p).id),
        };
        let wallet = self.player(player);
        let id = wallet.id;
        let before = wallet.balance.unwrap_or(0);
        let after = before.saturating_add(delta);
        wallet.balance = Some(after);
        if after < 0 {
            self.violation(
                Violation::new(
                    Check::Wallet,
                    "a balance never below zero",
                    format!("{before} − {} = {after}", -delta),
                )
                .at(position)
                .player(player),
            );
        } else if after != balance {
            self.violation(
                Violation::new(
                    Check::Wallet,
                    format!(
                        "balance {after} after a {what} of {} on {before}",
                        delta.abs()
                    ),
                    format!("balance {balance}"),
                )
                .at(position)
                .player(player),
            );
        }
        Some(id)
    }

    fn apply_round(
        &mut self,
        position: i64,
        table: &str,
        round: u64,
        event: &Event<'_>,
        player: Option<u32>,
    ) {
        let t = self.table_id(table);
        let key = (t, round);
        let on = |check: Check, expected: String, found: String| {
            Violation::new(check, expected, found)
                .at(position)
                .round(table, round)
        };
        if let Some(finished) = self.finished.get(&key).copied() {
            // Nothing may happen to a round after it is finished.
            let what = match finished {
                Finished::Settled => "settled",
                Finished::Voided => "voided and refunded",
            };
            self.violation(on(
                Check::Round,
                format!("nothing after the round was {what}"),
                format!("{} event", event.kind),
            ));
            return;
        }
        if event.kind == Kind::RoundOpened {
            if self.rounds.contains_key(&key) {
                self.violation(on(
                    Check::Round,
                    "one round_opened per round".into(),
                    "a second round_opened".into(),
                ));
                return;
            }
            self.rounds.insert(key, Round::default());
            self.tables[t as usize].rounds.insert(round);
        }
        let Some(state) = self.rounds.get_mut(&key) else {
            if !self.partial {
                self.violations.push(on(
                    Check::Round,
                    "round_opened before anything else of the round".into(),
                    format!("{} for a round never opened", event.kind),
                ));
            }
            return;
        };
        let mut found = Vec::new();
        let bet = |check: Check, bet_id: Uuid, expected: String, found: String| {
            let player = event.player().unwrap_or_default();
            on(check, expected, found).bet(bet_id).player(player)
        };
        let at = event.at;
        match event.body {
            Body::RoundOpened {
                closes_at,
                seed_hash,
            } => {
                state.opened = Some(Mark { position, at });
                state.closes_at = Some(closes_at);
                state.seed_hash = Some(seed_hash);
                if !self.seed_hashes.insert(seed_hash) {
                    found.push(on(
                        Check::Fairness,
                        "a fresh seed for every round".into(),
                        format!("seed_hash {} committed before", hex::encode(seed_hash)),
                    ));
                }
            }
            Body::BettingClosed => {
                if state.closed.is_some() || state.declared.is_some() || state.voided.is_some() {
                    found.push(on(
                        Check::Round,
                        "betting_closed once, while the round is open".into(),
                        phase_of(state).into(),
                    ));
                }
                check_time(state.opened, at, "round_opened", &on, &mut found);
                state.closed = Some(Mark { position, at });
            }
            Body::OutcomeDeclared {
                outcome,
                server_seed,
            } => {
                if state.closed.is_none() || state.declared.is_some() || state.voided.is_some() {
                    found.push(on(
                        Check::Round,
                        "outcome_declared once, after betting_closed".into(),
                        phase_of(state).into(),
                    ));
                }
                check_time(
                    state.closed.or(state.opened),
                    at,
                    "betting_closed",
                    &on,
                    &mut found,
                );
                let revealed = crate::rules::seed_hash(&server_seed);
                if let Some(committed) = state.seed_hash
                    && committed != revealed
                {
                    found.push(on(
                        Check::Fairness,
                        format!("a seed hashing to the committed {}", hex::encode(committed)),
                        format!(
                            "seed {} hashing to {}",
                            hex::encode(server_seed),
                            hex::encode(revealed)
                        ),
                    ));
                }
                let drawn = crate::rules::draw(&server_seed, table, round);
                if drawn != outcome {
                    found.push(on(
                        Check::Fairness,
                        format!("outcome {drawn} drawn from the revealed seed"),
                        format!("outcome {outcome}"),
                    ));
                }
                state.declared = Some(Mark { position, at });
                state.outcome = Some(outcome);
            }
            Body::RoundVoided { .. } => {
                if state.declared.is_some() || state.voided.is_some() {
                    found.push(on(
                        Check::Round,
                        "round_voided once, before an outcome".into(),
                        phase_of(state).into(),
                    ));
                }
                check_time(
                    state.closed.or(state.opened),
                    at,
                    "the phase before",
                    &on,
                    &mut found,
                );
                state.voided = Some(Mark { position, at });
            }
            Body::BetPlaced {
                bet_id,
                wager,
                amount,
                ..
            } => {
                let player = player.unwrap_or_default();
                if state.declared.is_some() || state.voided.is_some() {
                    found.push(bet(
                        Check::Bet,
                        bet_id,
                        "a bet placed before the outcome".into(),
                        format!("a bet placed after {}", phase_of(state)),
                    ));
                }
                if let Some(closes_at) = state.closes_at
                    && at >= closes_at
                {
                    found.push(bet(
                        Check::Bet,
                        bet_id,
                        format!("accepted before betting closed at {closes_at}"),
                        format!("accepted at {at}"),
                    ));
                }
                let limits = self.limits;
                if amount < limits.min_bet || amount > limits.max_bet {
                    found.push(bet(
                        Check::Bet,
                        bet_id,
                        format!("a stake within {}..={}", limits.min_bet, limits.max_bet),
                        format!("a stake of {amount}"),
                    ));
                }
                let staked = state.stakes.entry(player).or_default();
                *staked = staked.saturating_add(amount);
                if *staked > limits.max_round_stake {
                    found.push(bet(
                        Check::Bet,
                        bet_id,
                        format!(
                            "at most {} staked per player per round",
                            limits.max_round_stake
                        ),
                        format!("{staked} staked"),
                    ));
                }
                let previous = state.bets.insert(
                    bet_id,
                    Bet {
                        player,
                        wager,
                        amount,
                        result: None,
                    },
                );
                if previous.is_some() {
                    found.push(bet(
                        Check::Bet,
                        bet_id,
                        "each bet placed and debited once".into(),
                        "the bet placed again".into(),
                    ));
                }
            }
            Body::BetSettled { bet_id, payout, .. } => {
                let outcome = state.outcome.unwrap_or_default();
                if let Some(placed) = resolve(
                    state,
                    Resolution::Settled,
                    bet_id,
                    position,
                    &bet,
                    &mut found,
                ) {
                    if placed.player != player.unwrap_or_default() {
                        found.push(bet(
                            Check::Settlement,
                            bet_id,
                            format!("paid to {}", self.names[placed.player as usize]),
                            format!("paid to {}", event.player().unwrap_or_default()),
                        ));
                    }
                    let due = placed.wager.payout(placed.amount, outcome);
                    if due != Some(payout) {
                        found.push(bet(
                            Check::Settlement,
                            bet_id,
                            format!(
                                "payout {} ({:?} × {} on pocket {outcome})",
                                due.map_or("overflow".into(), |d| d.to_string()),
                                placed.wager.kind,
                                placed.amount
                            ),
                            format!("payout {payout}"),
                        ));
                    }
                    state.paid = state.paid.saturating_add(payout);
                }
            }
            Body::BetRefunded { bet_id, amount, .. } => {
                if let Some(placed) = resolve(
                    state,
                    Resolution::Refunded,
                    bet_id,
                    position,
                    &bet,
                    &mut found,
                ) {
                    if placed.amount != amount || placed.player != player.unwrap_or_default() {
                        found.push(bet(
                            Check::Settlement,
                            bet_id,
                            format!(
                                "{} refunded to {}",
                                placed.amount, self.names[placed.player as usize]
                            ),
                            format!(
                                "{amount} refunded to {}",
                                event.player().unwrap_or_default()
                            ),
                        ));
                    }
                    state.refunded = state.refunded.saturating_add(amount);
                }
            }
            Body::RoundSettled {
                bets: claimed_bets,
                staked: claimed_staked,
                paid: claimed_paid,
            } => {
                if state.outcome.is_none() {
                    found.push(on(
                        Check::Round,
                        "round_settled after the outcome".into(),
                        format!("round_settled while {}", phase_of(state)),
                    ));
                }
                let unsettled: Vec<Uuid> = state
                    .bets
                    .iter()
                    .filter(|(_, b)| b.result.is_none())
                    .map(|(id, _)| *id)
                    .collect();
                for bet_id in unsettled.iter().take(20) {
                    found.push(
                        on(
                            Check::Settlement,
                            "every bet settled before round_settled".into(),
                            "a bet never settled".into(),
                        )
                        .bet(bet_id),
                    );
                }
                let bets = state.bets.len() as u64;
                let staked: i64 = state.bets.values().map(|b| b.amount).sum();
                let paid = state.paid;
                if (claimed_bets, claimed_staked, claimed_paid) != (bets, staked, paid) {
                    found.push(on(
                        Check::Totals,
                        format!("{bets} bets, staked {staked}, paid {paid}"),
                        format!(
                            "{claimed_bets} bets, staked {claimed_staked}, paid {claimed_paid}"
                        ),
                    ));
                }
                let report = &mut self.tables[t as usize].report;
                report.rounds += 1;
                report.bets += bets;
                report.staked = report.staked.saturating_add(staked);
                report.paid = report.paid.saturating_add(paid);
                self.money.house_net = self.money.house_net.saturating_add(staked - paid);
                self.rounds.remove(&key);
                self.finished.insert(key, Finished::Settled);
            }
            Body::FundsDeposited { .. } | Body::BettingSwitched { .. } => {}
        }
        // A voided round is finished once every stake on it is refunded (it has no closing
        // event of its own).
        let refunded = self
            .rounds
            .get(&key)
            .filter(|r| r.voided.is_some() && r.bets.values().all(|b| b.result.is_some()))
            .map(|r| (r.bets.values().map(|b| b.amount).sum::<i64>(), r.refunded));
        if let Some((staked, refunded)) = refunded {
            let report = &mut self.tables[t as usize].report;
            report.voided += 1;
            report.refunded = report.refunded.saturating_add(refunded);
            self.money.house_net = self.money.house_net.saturating_add(staked - refunded);
            self.rounds.remove(&key);
            self.finished.insert(key, Finished::Voided);
        }
        self.violations.extend(found);
    }

    /// Ends the rebuild: rounds left open, missing rounds, and (when wallets were rebuilt) the
    /// `accounts` read model as read in the same snapshot.
    pub fn finish(mut self, accounts: Option<&[(String, i64)]>) -> Finish {
        let mut left: Vec<((u32, u64), Round)> = self.rounds.drain().collect();
        left.sort_by_key(|(key, _)| *key);
        for ((t, round), state) in left {
            let unresolved = state.bets.values().filter(|b| b.result.is_none()).count();
            let in_play: i64 = state
                .bets
                .values()
                .filter(|b| b.result.is_none())
                .map(|b| b.amount)
                .sum();
            self.money.in_play = self.money.in_play.saturating_add(in_play);
            let table = &mut self.tables[t as usize];
            // Still running: fine for the table's latest round; an earlier one was left behind.
            if table.rounds.last().is_some_and(|&last| round >= last) {
                table.report.in_progress += 1;
                continue;
            }
            let position = state
                .voided
                .or(state.declared)
                .or(state.closed)
                .or(state.opened)
                .map_or(0, |m| m.position);
            self.violations.push(
                Violation::new(
                    Check::Round,
                    "every round but the latest completed (settled, or voided and refunded)",
                    format!(
                        "the round stopped {} with {unresolved} bets unresolved",
                        phase_of(&state)
                    ),
                )
                .at(position)
                .round(&table.name, round),
            );
        }
        // No round missing: every table's rounds run 1, 2, 3, … (from the first one rebuilt
        // when the replay began at a checkpoint or a chosen round).
        for t in &self.tables {
            let (Some(&first), Some(&last)) = (t.rounds.first(), t.rounds.last()) else {
                continue;
            };
            let start = if self.partial {
                first
            } else {
                self.scope.from_round.unwrap_or(1).max(1)
            };
            let missing: Vec<u64> = (start..=last).filter(|r| !t.rounds.contains(r)).collect();
            if !missing.is_empty() {
                let listed: Vec<String> = missing.iter().take(20).map(u64::to_string).collect();
                self.violations.push(
                    Violation::new(
                        Check::Round,
                        format!("rounds {start}..={last} of the table"),
                        format!(
                            "{} rounds missing: {}{}",
                            missing.len(),
                            listed.join(", "),
                            if missing.len() > 20 { ", …" } else { "" }
                        ),
                    )
                    .table(&t.name),
                );
            }
        }
        let mut money = None;
        if self.checks_wallets() {
            self.money.balances = self
                .players
                .values()
                .fold(0i64, |sum, p| sum.saturating_add(p.balance.unwrap_or(0)));
            // Players known only from a stream's name (an event that did not decode, or was
            // someone else's) hold no wallet.
            self.money.wallets = self
                .players
                .values()
                .filter(|p| p.balance.is_some())
                .count() as u64;
            if let Some(accounts) = accounts {
                self.check_accounts(accounts);
            }
            let m = &self.money;
            if m.deposits
                != m.balances
                    .saturating_add(m.house_net)
                    .saturating_add(m.in_play)
            {
                self.violations.push(Violation::new(
                    Check::Conservation,
                    format!(
                        "deposits {} = balances {} + house net {} + in play {}",
                        m.deposits, m.balances, m.house_net, m.in_play
                    ),
                    format!(
                        "a difference of {}",
                        m.deposits - m.balances - m.house_net - m.in_play
                    ),
                ));
            }
            money = Some(self.money.clone());
        }
        let mut tables = BTreeMap::new();
        for t in self.tables {
            let mut report = t.report;
            report.house_net = report.staked - report.paid;
            report.rtp = (report.staked > 0).then(|| report.paid as f64 / report.staked as f64);
            tables.insert(t.name, report);
        }
        Finish {
            tables,
            money,
            violations: self.violations,
            operator_actions: self.operator_actions,
            operator_actions_total: self.operator_actions_total,
        }
    }

    fn check_accounts(&mut self, accounts: &[(String, i64)]) {
        let mut seen = HashSet::default();
        for (player, balance) in accounts {
            let rebuilt = self
                .players
                .get(player.as_str())
                .and_then(|p| p.balance)
                .unwrap_or(0);
            seen.insert(player.as_str());
            if rebuilt != *balance {
                self.violations.push(
                    Violation::new(
                        Check::Accounts,
                        format!("balance {rebuilt}, rebuilt from the events"),
                        format!("accounts.balance {balance}"),
                    )
                    .player(player),
                );
            }
        }
        let mut missing: Vec<(&str, i64)> = self
            .players
            .iter()
            .filter(|(name, p)| !seen.contains(name.as_str()) && p.balance.unwrap_or(0) != 0)
            .map(|(name, p)| (name.as_str(), p.balance.unwrap_or(0)))
            .collect();
        missing.sort();
        let found: Vec<Violation> = missing
            .into_iter()
            .map(|(player, balance)| {
                Violation::new(
                    Check::Accounts,
                    format!("an accounts row with balance {balance}"),
                    "no accounts row",
                )
                .player(player)
            })
            .collect();
        self.violations.extend(found);
    }
}

/// The rebuild's results.
#[derive(Debug)]
pub struct Finish {
    pub tables: BTreeMap<String, TableReport>,
    pub money: Option<Money>,
    pub violations: Violations,
    /// Operators' switches of betting in position order: the first [`MAX_LISTED`].
    pub operator_actions: Vec<OperatorAction>,
    pub operator_actions_total: u64,
}

/// What resolves a bet: a settlement (after the outcome) or a refund (on a voided round).
#[derive(Debug, Clone, Copy)]
enum Resolution {
    Settled,
    Refunded,
}

/// The bet a `bet_settled` or `bet_refunded` resolves, marked resolved at `position`; `None`
/// when the round is not in the phase for it or has no such bet. What does not hold is pushed
/// to `found`, through `bet` (which names the round, the bet and the player).
fn resolve<'r>(
    state: &'r mut Round,
    resolution: Resolution,
    bet_id: Uuid,
    position: i64,
    bet: &impl Fn(Check, Uuid, String, String) -> Violation,
    found: &mut Vec<Violation>,
) -> Option<&'r mut Bet> {
    let phase = phase_of(state);
    let ready = match resolution {
        Resolution::Settled => state.outcome.is_some(),
        Resolution::Refunded => state.voided.is_some(),
    };
    let (precondition, event, noun, past) = match resolution {
        Resolution::Settled => (
            "a settlement after the outcome",
            "bet_settled",
            "settlement",
            "settled",
        ),
        Resolution::Refunded => (
            "a refund on a voided round",
            "bet_refunded",
            "refund",
            "refunded",
        ),
    };
    let violation = |expected: String, was: String| bet(Check::Settlement, bet_id, expected, was);
    if !ready {
        found.push(violation(
            precondition.into(),
            format!("{event} while {phase}"),
        ));
        return None;
    }
    let Some(placed) = state.bets.get_mut(&bet_id) else {
        found.push(violation(
            format!("a {noun} of a bet placed on the round"),
            format!("a {noun} of no bet"),
        ));
        return None;
    };
    if let Some(first) = placed.result {
        found.push(violation(
            format!("each bet {past} once"),
            format!("{past} again (first at position {first})"),
        ));
    }
    placed.result = Some(position);
    Some(placed)
}

fn phase_of(state: &Round) -> &'static str {
    if state.voided.is_some() {
        "voided"
    } else if state.declared.is_some() {
        "resulted"
    } else if state.closed.is_some() {
        "closed"
    } else {
        "open"
    }
}

/// GMS's times within a round never go back.
fn check_time(
    before: Option<Mark>,
    at: Time,
    what: &str,
    violation: &impl Fn(Check, String, String) -> Violation,
    found: &mut Vec<Violation>,
) {
    if let Some(before) = before
        && at < before.at
    {
        found.push(violation(
            Check::Round,
            format!("a time at or after {what} ({})", before.at),
            format!("{at}"),
        ));
    }
}

#[cfg(test)]
mod tests {
    //! The rebuild on small hand-made histories: given events, when rebuilt, then exactly the
    //! expected violations (by check) and figures.

    use domain::{
        BetId, Money, Outcome, PlayerId, RoundId, Selection, ServerSeed, TableId, Timestamp,
    };
    use protocol::{
        BetPlaced, BetRefunded, BetSettled, Betting, BettingClosed, BettingSwitched, DepositId,
        Event, EventBody, FundsDeposited, OutcomeDeclared, RoundOpened, RoundSettled, RoundVoided,
    };

    use super::*;

    const SEED: ServerSeed = ServerSeed::from_bytes([3; 32]);

    struct Log {
        rows: Vec<Row>,
        clock: i64,
    }

    fn t(s: &str) -> TableId {
        TableId::parse(s).expect("table")
    }
    fn p(s: &str) -> PlayerId {
        PlayerId::parse(s).expect("player")
    }
    fn r(n: u64) -> RoundId {
        RoundId::new(n).expect("round")
    }
    fn m(n: i64) -> Money {
        Money::new(n).expect("money")
    }

    impl Log {
        fn new() -> Self {
            Log {
                rows: Vec::new(),
                clock: 1_000_000,
            }
        }

        /// Appends an event `ms` after the previous one.
        fn push(&mut self, ms: i64, body: impl Into<EventBody>) -> Uuid {
            self.clock += ms * 1000;
            let id = Uuid::new_v4();
            let at = Timestamp::from_unix_micros(self.clock).expect("time");
            let event = Event::new(id, at, body);
            let stream = match (event.player(), event.table(), event.round()) {
                _ if matches!(event.body, EventBody::BettingSwitched(_)) => "operator".into(),
                (Some(player), _, _) => compact_str::format_compact!("player-{player}"),
                (None, Some(table), Some(round)) => {
                    compact_str::format_compact!("round-{table}-{}", round.get())
                }
                _ => "other".into(),
            };
            let row = Row {
                position: self.rows.len() as i64 + 1,
                event_id: id,
                stream,
                version: 1,
                kind: event.kind().into(),
                data: protocol::encode_event(&event).expect("encode"),
                metadata: bytes::Bytes::new(),
                hash: [0; 32],
                prev_hash: [0; 32],
                at: crate::wire::Time::ZERO,
            };
            self.rows.push(row);
            id
        }

        fn at(&self, ms: i64) -> Timestamp {
            Timestamp::from_unix_micros(self.clock + ms * 1000).expect("time")
        }

        fn deposit(&mut self, player: &str, amount: i64, balance: i64) {
            self.push(
                1,
                FundsDeposited {
                    table: None,
                    player: p(player),
                    deposit_id: DepositId::parse(&format!("d-{}", self.rows.len())).expect("id"),
                    amount: m(amount),
                    balance: m(balance),
                },
            );
        }

        fn open(&mut self, round: u64) {
            let closes_at = self.at(1000);
            self.push(
                1,
                RoundOpened {
                    table: t("t1"),
                    round: r(round),
                    closes_at,
                    seed_hash: SEED.hash(),
                },
            );
        }

        fn bet(&mut self, round: u64, player: &str, amount: i64, balance: i64) -> BetId {
            let bet_id = BetId::from_uuid(Uuid::new_v4());
            self.push(
                1,
                BetPlaced {
                    table: t("t1"),
                    round: r(round),
                    bet_id,
                    player: p(player),
                    selection: Selection::parse(domain::RawSelection::Red).expect("red"),
                    amount: m(amount),
                    balance: m(balance),
                },
            );
            bet_id
        }

        fn close_and_declare(&mut self, round: u64) -> u8 {
            self.push(
                1000,
                BettingClosed {
                    table: t("t1"),
                    round: r(round),
                },
            );
            let outcome = crate::rules::draw(SEED.as_bytes(), "t1", round);
            self.push(
                1,
                OutcomeDeclared {
                    table: t("t1"),
                    round: r(round),
                    outcome: Outcome::new(outcome).expect("pocket"),
                    server_seed: SEED.clone(),
                },
            );
            outcome
        }

        fn switch(&mut self, table: Option<&str>, betting: Betting, by: &str, reason: &str) {
            self.push(
                1,
                BettingSwitched {
                    table: table.map(t),
                    betting,
                    reason: reason.into(),
                    by: by.into(),
                },
            );
        }

        fn rebuild(&self, limits: Limits) -> Finish {
            self.rebuild_in(limits, Scope::default())
        }

        fn rebuild_in(&self, limits: Limits, scope: Scope) -> Finish {
            let mut auditor = Auditor::new(limits, scope, false);
            for row in &self.rows {
                let event = crate::wire::decode(&row.data);
                auditor.apply(row, event.as_ref().map_err(String::as_str));
            }
            auditor.finish(None)
        }

        fn checks(&self) -> Vec<Check> {
            let mut checks: Vec<Check> = self
                .rebuild(Limits::default())
                .violations
                .listed()
                .iter()
                .map(|v| v.check)
                .collect();
            checks.sort();
            checks.dedup();
            checks
        }
    }

    fn red_wins(pocket: u8) -> bool {
        crate::rules::RED.contains(&pocket)
    }

    /// A round whose one bet of 100 on red is settled as the seed says.
    fn settled_round() -> (Log, BetId) {
        let mut log = Log::new();
        log.deposit("ann", 1000, 1000);
        log.open(1);
        let bet = log.bet(1, "ann", 100, 900);
        let outcome = log.close_and_declare(1);
        let payout = if red_wins(outcome) { 200 } else { 0 };
        log.push(
            1,
            BetSettled {
                table: t("t1"),
                round: r(1),
                bet_id: bet,
                player: p("ann"),
                payout: m(payout),
                balance: m(900 + payout),
            },
        );
        log.push(
            0,
            RoundSettled {
                table: t("t1"),
                round: r(1),
                bets: 1,
                staked: m(100),
                paid: m(payout),
            },
        );
        (log, bet)
    }

    #[test]
    fn stream_versions_follow_each_other_from_one_or_from_a_checkpoint() {
        // Three deposits to one player (one stream) and a round opened (another).
        let mut log = Log::new();
        log.deposit("p1", 100, 100);
        log.deposit("p1", 100, 200);
        log.deposit("p1", 100, 300);
        log.open(1);
        for (row, version) in log.rows.iter_mut().zip([1, 2, 3, 1]) {
            row.version = version;
        }
        let versions = |log: &Log, from_start: bool| {
            let mut auditor = Auditor::new(Limits::default(), Scope::default(), !from_start);
            auditor.check_stream_versions(from_start);
            for row in &log.rows {
                let event = crate::wire::decode(&row.data);
                auditor.apply(row, event.as_ref().map_err(String::as_str));
            }
            auditor
                .finish(None)
                .violations
                .listed()
                .iter()
                .filter(|v| v.check == Check::Chain)
                .map(|v| (v.position, v.expected.clone(), v.found.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(versions(&log, true), vec![], "1, 2, 3 and 1 hold");

        // A version skipped, then one repeated: each named where it happens, and the check
        // goes on from what is stored.
        let mut broken = Log::new();
        broken.rows = log.rows.clone();
        broken.rows[1].version = 3;
        broken.rows[3].version = 2;
        assert_eq!(
            versions(&broken, true),
            vec![
                (
                    Some(2),
                    "version 2 of stream player-p1".to_string(),
                    "version 3".to_string()
                ),
                (
                    Some(3),
                    "version 4 of stream player-p1".to_string(),
                    "version 3".to_string()
                ),
                (
                    Some(4),
                    "version 1 of stream round-t1-1".to_string(),
                    "version 2".to_string()
                ),
            ]
        );

        // From a checkpoint, a stream's first version is taken as it is.
        let mut later = Log::new();
        later.rows = log.rows.clone();
        for row in &mut later.rows {
            row.version += 40;
        }
        assert_eq!(versions(&later, false), vec![]);
        // And a recall's handful of rows (no `check_stream_versions`) is not judged by them.
        assert!(!later.checks().contains(&Check::Chain));
    }

    #[test]
    fn a_settled_round_holds_and_is_counted() {
        let (log, _) = settled_round();
        let finish = log.rebuild(Limits::default());
        assert_eq!(finish.violations.listed(), &[], "no violation");
        let table = &finish.tables["t1"];
        assert_eq!((table.rounds, table.bets, table.staked), (1, 1, 100));
        let money = finish.money.expect("wallets rebuilt");
        assert_eq!(money.deposits, money.balances + money.house_net);
    }

    #[test]
    fn a_voided_round_refunded_once_holds_and_twice_does_not() {
        let mut log = Log::new();
        log.deposit("ann", 1000, 1000);
        log.open(1);
        let bet = log.bet(1, "ann", 100, 900);
        let refund = |balance| BetRefunded {
            table: t("t1"),
            round: r(1),
            bet_id: bet,
            player: p("ann"),
            amount: m(100),
            balance: m(balance),
        };
        log.push(
            1,
            RoundVoided {
                table: t("t1"),
                round: r(1),
                reason: "operator".into(),
            },
        );
        log.push(1, refund(1000));
        let finish = log.rebuild(Limits::default());
        assert_eq!(finish.violations.listed(), &[]);
        assert_eq!(finish.tables["t1"].voided, 1);
        assert_eq!(finish.tables["t1"].refunded, 100);
        log.push(1, refund(1100));
        // Refunded after the round was finished, and money made from nothing.
        assert_eq!(log.checks(), vec![Check::Round, Check::Conservation]);
    }

    #[test]
    fn operator_switches_are_listed_in_order_with_who_what_and_when_and_move_no_money() {
        let (mut log, _) = settled_round();
        log.switch(Some("t1"), Betting::Disabled, "dana", "wheel serviced");
        log.switch(None, Betting::Disabled, "eve", "database flaky");
        log.switch(Some("t2"), Betting::Disabled, "dana", "dealer break");
        log.switch(Some("t1"), Betting::Enabled, "dana", "wheel back");
        let finish = log.rebuild(Limits::default());
        assert_eq!(finish.violations.listed(), &[], "no violation");
        let money = finish.money.expect("wallets rebuilt");
        assert_eq!(money.deposits, money.balances + money.house_net);
        assert_eq!(finish.tables["t1"].rounds, 1, "no round of its own");
        assert!(!finish.tables.contains_key("t2"), "a switch opens no table");
        let listed: Vec<(&str, &str, Option<&str>, &str)> = finish
            .operator_actions
            .iter()
            .map(|a| {
                (
                    a.by.as_str(),
                    a.betting.as_str(),
                    a.table.as_deref(),
                    a.reason.as_str(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("dana", "disabled", Some("t1"), "wheel serviced"),
                ("eve", "disabled", None, "database flaky"),
                ("dana", "disabled", Some("t2"), "dealer break"),
                ("dana", "enabled", Some("t1"), "wheel back"),
            ]
        );
        assert_eq!(finish.operator_actions_total, 4);
        let positions: Vec<i64> = finish.operator_actions.iter().map(|a| a.position).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
        let times: Vec<&str> = finish
            .operator_actions
            .iter()
            .map(|a| a.at.as_str())
            .collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
        let last = log.rows.last().expect("a row");
        assert_eq!(
            finish.operator_actions[3].event_id,
            last.event_id.to_string()
        );

        // Scoped to a table: its switches and those of every table.
        let scoped = log.rebuild_in(
            Limits::default(),
            Scope {
                table: Some("t1".into()),
                ..Scope::default()
            },
        );
        let reasons: Vec<&str> = scoped
            .operator_actions
            .iter()
            .map(|a| a.reason.as_str())
            .collect();
        assert_eq!(reasons, ["wheel serviced", "database flaky", "wheel back"]);
    }

    #[test]
    fn an_operator_switch_outside_the_operator_stream_is_named() {
        let mut log = Log::new();
        log.switch(None, Betting::Disabled, "dana", "drill");
        log.rows[0].stream = "round-t1-1".into();
        assert_eq!(log.checks(), vec![Check::Event]);
    }

    #[test]
    fn a_bet_over_the_limits_or_the_balance_is_named() {
        let mut log = Log::new();
        log.deposit("ann", 100, 100);
        log.open(1);
        log.bet(1, "ann", 5, 95); // below the minimum of 10
        log.bet(1, "ann", 200, 0); // more than the balance of 95
        let checks = log.checks();
        assert!(checks.contains(&Check::Bet), "{checks:?}");
        assert!(checks.contains(&Check::Wallet), "{checks:?}");
    }

    #[test]
    fn a_stake_over_the_round_limit_is_named() {
        let mut log = Log::new();
        log.deposit("ann", 10_000, 10_000);
        log.open(1);
        log.bet(1, "ann", 600, 9_400);
        log.bet(1, "ann", 600, 8_800);
        let finish = log.rebuild(Limits {
            min_bet: 10,
            max_bet: 1000,
            max_round_stake: 1000,
        });
        let found: Vec<&Violation> = finish.violations.listed().iter().collect();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].expected.contains("at most 1000"), "{found:?}");
    }

    #[test]
    fn a_bet_placed_after_the_outcome_is_named() {
        let (mut log, _) = settled_round();
        // Same round, after its outcome and its settlement.
        log.bet(1, "ann", 100, 800);
        assert!(log.checks().contains(&Check::Round), "{:?}", log.checks());
        let mut log = Log::new();
        log.deposit("ann", 1000, 1000);
        log.open(1);
        log.close_and_declare(1);
        log.bet(1, "ann", 100, 900);
        assert!(log.checks().contains(&Check::Bet), "{:?}", log.checks());
    }

    #[test]
    fn a_deposit_credited_twice_is_named() {
        let mut log = Log::new();
        let deposit = |balance| FundsDeposited {
            table: None,
            player: p("ann"),
            deposit_id: DepositId::parse("same").expect("id"),
            amount: m(100),
            balance: m(balance),
        };
        log.push(1, deposit(100));
        log.push(1, deposit(200));
        assert_eq!(log.checks(), vec![Check::Wallet]);
    }

    #[test]
    fn a_seed_used_twice_is_named_even_when_each_round_is_fair() {
        let (mut log, _) = settled_round();
        log.open(2);
        assert_eq!(log.checks(), vec![Check::Fairness]);
    }

    #[test]
    fn an_earlier_round_left_unfinished_is_named_but_the_latest_is_in_progress() {
        let mut log = Log::new();
        log.open(1);
        log.open(2);
        let finish = log.rebuild(Limits::default());
        let found: Vec<Check> = finish.violations.listed().iter().map(|v| v.check).collect();
        // Round 1 stopped open while round 2 runs (and both share a seed here: fairness).
        assert!(found.contains(&Check::Round), "{found:?}");
        assert_eq!(finish.tables["t1"].in_progress, 1);
    }
}

//! The rebuild: every round, bet, settlement and wallet, from the events in position order,
//! checked against the published rules (`crate::rules`) as it goes.
//!
//! Memory holds one entry per round still open and per wallet, not per event: a round's bets
//! are dropped once its `round_settled` has been checked, leaving a small summary so that a
//! late event for it is still caught. Pure and synchronous: rows come in, violations and
//! figures come out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use domain::Timestamp;
use protocol::{Event, EventBody, EventKind};
use uuid::Uuid;

use crate::report::{Check, Money, TableReport, Violation, Violations};
use crate::rules::{self, Wager};

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
    pub stream: String,
    pub version: i32,
    pub kind: String,
    pub data: bytes::Bytes,
    pub metadata: bytes::Bytes,
    pub hash: [u8; 32],
    /// The stored hash of the row before (what this row's hash chains to).
    pub prev_hash: [u8; 32],
}

/// A bet of a round not finished yet.
#[derive(Debug, Clone)]
struct Bet {
    player: String,
    wager: Wager,
    amount: i64,
    /// Set once settled or refunded: the position of that event.
    result: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    position: i64,
    at: Timestamp,
}

#[derive(Debug, Default)]
struct Round {
    opened: Option<Mark>,
    closes_at: Option<Timestamp>,
    seed_hash: Option<[u8; 32]>,
    closed: Option<Mark>,
    declared: Option<Mark>,
    outcome: Option<u8>,
    voided: Option<Mark>,
    bets: HashMap<Uuid, Bet>,
    /// Per player: staked on this round so far (the per-round limit).
    stakes: HashMap<String, i64>,
    paid: i64,
    refunded: i64,
    settled_bets: u64,
    refunded_bets: u64,
}

/// What is left of a round once it is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finished {
    Settled,
    Voided,
}

#[derive(Debug, Default)]
struct Table {
    /// Round numbers seen (opened or finished), to find the missing ones.
    rounds: BTreeSet<u64>,
    report: TableReport,
}

#[derive(Debug, Default)]
struct Wallet {
    /// `None` until known: a replay from a checkpoint learns it from the first event.
    balance: Option<i64>,
}

/// The rebuild in progress.
#[derive(Debug)]
pub struct Auditor {
    limits: Limits,
    scope: Scope,
    /// Replaying from a checkpoint: rounds and wallets from before it are unknown.
    partial: bool,
    rounds: HashMap<(String, u64), Round>,
    finished: HashMap<(String, u64), Finished>,
    tables: BTreeMap<String, Table>,
    seed_hashes: HashSet<[u8; 32]>,
    wallets: HashMap<String, Wallet>,
    deposit_ids: HashSet<String>,
    money: Money,
    violations: Violations,
}

/// Where a violation about this round goes.
fn on(
    check: Check,
    table: &str,
    round: u64,
    position: i64,
) -> impl Fn(String, String) -> Violation {
    let table = table.to_string();
    move |expected, found| {
        Violation::new(check, expected, found)
            .at(position)
            .round(&table, round)
    }
}

impl Auditor {
    pub fn new(limits: Limits, scope: Scope, partial: bool) -> Self {
        Auditor {
            limits,
            scope,
            partial,
            rounds: HashMap::new(),
            finished: HashMap::new(),
            tables: BTreeMap::new(),
            seed_hashes: HashSet::new(),
            wallets: HashMap::new(),
            deposit_ids: HashSet::new(),
            money: Money::default(),
            violations: Violations::default(),
        }
    }

    /// Whether wallets are rebuilt and checked: an unscoped run from the start of the log.
    pub fn checks_wallets(&self) -> bool {
        !self.partial && self.scope.is_everything()
    }

    pub fn violation(&mut self, violation: Violation) {
        self.violations.push(violation);
    }

    /// Rebuilds with one more row, whose `data` decoded to `event` (or did not).
    pub fn apply(&mut self, row: &Row, event: Result<&Event, &protocol::DecodeError>) {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                self.violation(
                    Violation::new(Check::Event, "an event of the contract", error.to_string())
                        .at(row.position),
                );
                return;
            }
        };
        self.check_columns(row, event);
        if self.checks_wallets() {
            self.apply_wallet(row.position, event);
        }
        let (Some(table), Some(round)) = (event.table(), event.round()) else {
            return;
        };
        let (table, round) = (table.as_str().to_string(), round.get());
        if !self.scope.covers(&table, round) {
            return;
        }
        self.apply_round(row.position, &table, round, event);
    }

    /// The row's columns agree with the event it holds.
    fn check_columns(&mut self, row: &Row, event: &Event) {
        let expected_stream = match (&event.body, event.table(), event.round()) {
            (EventBody::FundsDeposited(_) | EventBody::BetPlaced(_), _, _)
            | (EventBody::BetSettled(_) | EventBody::BetRefunded(_), _, _) => {
                event.player().map(|p| format!("player-{p}"))
            }
            (_, Some(table), Some(round)) => Some(format!("round-{table}-{}", round.get())),
            _ => None,
        };
        let mut mismatches = Vec::new();
        if row.kind != event.kind() {
            mismatches.push(format!("type {:?} for a {} event", row.kind, event.kind()));
        }
        if row.event_id != event.id {
            mismatches.push(format!(
                "event_id {} for event id {}",
                row.event_id, event.id
            ));
        }
        if let Some(stream) = expected_stream
            && stream != row.stream
        {
            mismatches.push(format!("stream {:?} for {stream:?}", row.stream));
        }
        if !mismatches.is_empty() {
            self.violation(
                Violation::new(
                    Check::Event,
                    "columns that agree with the event",
                    mismatches.join(", "),
                )
                .at(row.position),
            );
        }
    }

    fn apply_wallet(&mut self, position: i64, event: &Event) {
        let (player, delta, balance, what) = match &event.body {
            EventBody::FundsDeposited(d) => {
                if !self.deposit_ids.insert(d.deposit_id.as_str().to_string()) {
                    self.violation(
                        Violation::new(
                            Check::Wallet,
                            "each deposit id credited once",
                            format!("deposit {} credited again", d.deposit_id),
                        )
                        .at(position)
                        .player(d.player.as_str()),
                    );
                }
                self.money.deposits = self.money.deposits.saturating_add(d.amount.get());
                (&d.player, d.amount.get(), d.balance.get(), "deposit")
            }
            EventBody::BetPlaced(b) => (&b.player, -b.amount.get(), b.balance.get(), "stake"),
            EventBody::BetSettled(b) => (&b.player, b.payout.get(), b.balance.get(), "payout"),
            EventBody::BetRefunded(b) => (&b.player, b.amount.get(), b.balance.get(), "refund"),
            _ => return,
        };
        let wallet = self.wallets.entry(player.as_str().to_string()).or_default();
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
                .player(player.as_str()),
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
                .player(player.as_str()),
            );
        }
    }

    fn table(&mut self, table: &str) -> &mut Table {
        self.tables.entry(table.to_string()).or_default()
    }

    fn apply_round(&mut self, position: i64, table: &str, round: u64, event: &Event) {
        let key = (table.to_string(), round);
        if let Some(finished) = self.finished.get(&key).copied() {
            // Nothing may happen to a round after it is finished.
            let what = match finished {
                Finished::Settled => "settled",
                Finished::Voided => "voided and refunded",
            };
            self.violation(on(Check::Round, table, round, position)(
                format!("nothing after the round was {what}"),
                format!("{} event", event.kind()),
            ));
            return;
        }
        let kind = event.event_kind();
        if kind == EventKind::RoundOpened {
            if self.rounds.contains_key(&key) {
                self.violation(on(Check::Round, table, round, position)(
                    "one round_opened per round".into(),
                    "a second round_opened".into(),
                ));
                return;
            }
            self.rounds.insert(key.clone(), Round::default());
            self.table(table).rounds.insert(round);
        }
        let Some(state) = self.rounds.get_mut(&key) else {
            if !self.partial {
                self.violation(on(Check::Round, table, round, position)(
                    "round_opened before anything else of the round".into(),
                    format!("{} for a round never opened", event.kind()),
                ));
            }
            return;
        };
        let mut found = Vec::new();
        let violation = on(Check::Round, table, round, position);
        let at = event.at;
        match &event.body {
            EventBody::RoundOpened(o) => {
                state.opened = Some(Mark { position, at });
                state.closes_at = Some(o.closes_at);
                let hash = *o.seed_hash.as_bytes();
                state.seed_hash = Some(hash);
                if !self.seed_hashes.insert(hash) {
                    found.push(
                        Violation::new(
                            Check::Fairness,
                            "a fresh seed for every round",
                            format!("seed_hash {} committed before", hex::encode(hash)),
                        )
                        .at(position)
                        .round(table, round),
                    );
                }
            }
            EventBody::BettingClosed(_) => {
                if state.closed.is_some() || state.declared.is_some() || state.voided.is_some() {
                    found.push(violation(
                        "betting_closed once, while the round is open".into(),
                        phase_of(state).into(),
                    ));
                }
                check_time(state.opened, at, "round_opened", &violation, &mut found);
                state.closed = Some(Mark { position, at });
            }
            EventBody::OutcomeDeclared(d) => {
                if state.closed.is_none() || state.declared.is_some() || state.voided.is_some() {
                    found.push(violation(
                        "outcome_declared once, after betting_closed".into(),
                        phase_of(state).into(),
                    ));
                }
                check_time(
                    state.closed.or(state.opened),
                    at,
                    "betting_closed",
                    &violation,
                    &mut found,
                );
                let seed = *d.server_seed.as_bytes();
                let revealed = rules::seed_hash(&seed);
                if state
                    .seed_hash
                    .is_some_and(|committed| committed != revealed)
                {
                    found.push(
                        Violation::new(
                            Check::Fairness,
                            format!(
                                "a seed hashing to the committed {}",
                                hex::encode(state.seed_hash.unwrap_or_default())
                            ),
                            format!(
                                "seed {} hashing to {}",
                                hex::encode(seed),
                                hex::encode(revealed)
                            ),
                        )
                        .at(position)
                        .round(table, round),
                    );
                }
                let drawn = rules::draw(&seed, table, round);
                if drawn != d.outcome.get() {
                    found.push(
                        Violation::new(
                            Check::Fairness,
                            format!("outcome {drawn} drawn from the revealed seed"),
                            format!("outcome {}", d.outcome.get()),
                        )
                        .at(position)
                        .round(table, round),
                    );
                }
                state.declared = Some(Mark { position, at });
                state.outcome = Some(d.outcome.get());
            }
            EventBody::RoundVoided(_) => {
                if state.declared.is_some() || state.voided.is_some() {
                    found.push(violation(
                        "round_voided once, before an outcome".into(),
                        phase_of(state).into(),
                    ));
                }
                check_time(
                    state.closed.or(state.opened),
                    at,
                    "the phase before",
                    &violation,
                    &mut found,
                );
                state.voided = Some(Mark { position, at });
            }
            EventBody::BetPlaced(b) => {
                let bet = violation_for_bet(
                    Check::Bet,
                    table,
                    round,
                    position,
                    b.bet_id,
                    b.player.as_str(),
                );
                if state.declared.is_some() || state.voided.is_some() {
                    found.push(bet(
                        "a bet placed before the outcome".into(),
                        format!("a bet placed after {}", phase_of(state)),
                    ));
                }
                if let Some(closes_at) = state.closes_at
                    && at >= closes_at
                {
                    found.push(bet(
                        format!("accepted before betting closed at {closes_at}"),
                        format!("accepted at {at}"),
                    ));
                }
                let amount = b.amount.get();
                let limits = self.limits;
                if amount < limits.min_bet || amount > limits.max_bet {
                    found.push(bet(
                        format!("a stake within {}..={}", limits.min_bet, limits.max_bet),
                        format!("a stake of {amount}"),
                    ));
                }
                let staked = state
                    .stakes
                    .entry(b.player.as_str().to_string())
                    .or_default();
                *staked = staked.saturating_add(amount);
                if *staked > limits.max_round_stake {
                    found.push(bet(
                        format!(
                            "at most {} staked per player per round",
                            limits.max_round_stake
                        ),
                        format!("{staked} staked"),
                    ));
                }
                let selection = b.selection;
                let wager = Wager::new(
                    selection.kind().as_str(),
                    selection.numbers(),
                    selection.index(),
                );
                match wager {
                    Err(error) => {
                        found.push(bet("a selection on the layout".into(), error.to_string()))
                    }
                    Ok(wager) => {
                        let previous = state.bets.insert(
                            *b.bet_id.as_uuid(),
                            Bet {
                                player: b.player.as_str().to_string(),
                                wager,
                                amount,
                                result: None,
                            },
                        );
                        if previous.is_some() {
                            found.push(bet(
                                "each bet placed and debited once".into(),
                                "the bet placed again".into(),
                            ));
                        }
                    }
                }
            }
            EventBody::BetSettled(s) => {
                let bet = violation_for_bet(
                    Check::Settlement,
                    table,
                    round,
                    position,
                    s.bet_id,
                    s.player.as_str(),
                );
                match (state.outcome, state.bets.get_mut(s.bet_id.as_uuid())) {
                    (None, _) => found.push(bet(
                        "a settlement after the outcome".into(),
                        format!("bet_settled while {}", phase_of(state)),
                    )),
                    (Some(_), None) => found.push(bet(
                        "a settlement of a bet placed on the round".into(),
                        "a settlement of no bet".into(),
                    )),
                    (Some(outcome), Some(placed)) => {
                        if let Some(first) = placed.result {
                            found.push(bet(
                                "each bet settled once".into(),
                                format!("settled again (first at position {first})"),
                            ));
                        }
                        placed.result = Some(position);
                        if placed.player != s.player.as_str() {
                            found.push(bet(
                                format!("paid to {}", placed.player),
                                format!("paid to {}", s.player),
                            ));
                        }
                        let due = placed.wager.payout(placed.amount, outcome);
                        if due != Some(s.payout.get()) {
                            found.push(bet(
                                format!(
                                    "payout {} ({:?} × {} on pocket {outcome})",
                                    due.map_or("overflow".into(), |d| d.to_string()),
                                    placed.wager.kind,
                                    placed.amount
                                ),
                                format!("payout {}", s.payout.get()),
                            ));
                        }
                        state.settled_bets += 1;
                        state.paid = state.paid.saturating_add(s.payout.get());
                    }
                }
            }
            EventBody::BetRefunded(r) => {
                let bet = violation_for_bet(
                    Check::Settlement,
                    table,
                    round,
                    position,
                    r.bet_id,
                    r.player.as_str(),
                );
                match (state.voided, state.bets.get_mut(r.bet_id.as_uuid())) {
                    (None, _) => found.push(bet(
                        "a refund on a voided round".into(),
                        format!("bet_refunded while {}", phase_of(state)),
                    )),
                    (Some(_), None) => found.push(bet(
                        "a refund of a bet placed on the round".into(),
                        "a refund of no bet".into(),
                    )),
                    (Some(_), Some(placed)) => {
                        if let Some(first) = placed.result {
                            found.push(bet(
                                "each bet refunded once".into(),
                                format!("refunded again (first at position {first})"),
                            ));
                        }
                        placed.result = Some(position);
                        if placed.amount != r.amount.get() || placed.player != r.player.as_str() {
                            found.push(bet(
                                format!("{} refunded to {}", placed.amount, placed.player),
                                format!("{} refunded to {}", r.amount.get(), r.player),
                            ));
                        }
                        state.refunded_bets += 1;
                        state.refunded = state.refunded.saturating_add(r.amount.get());
                    }
                }
            }
            EventBody::RoundSettled(s) => {
                if state.outcome.is_none() {
                    found.push(violation(
                        "round_settled after the outcome".into(),
                        format!("round_settled while {}", phase_of(state)),
                    ));
                }
                let unsettled: Vec<String> = state
                    .bets
                    .iter()
                    .filter(|(_, b)| b.result.is_none())
                    .map(|(id, _)| id.to_string())
                    .collect();
                for bet_id in unsettled.iter().take(20) {
                    found.push(
                        Violation::new(
                            Check::Settlement,
                            "every bet settled before round_settled",
                            "a bet never settled",
                        )
                        .at(position)
                        .round(table, round)
                        .bet(bet_id),
                    );
                }
                let bets = state.bets.len() as u64;
                let staked: i64 = state.bets.values().map(|b| b.amount).sum();
                let paid = state.paid;
                if (s.bets, s.staked.get(), s.paid.get()) != (bets, staked, paid) {
                    found.push(
                        Violation::new(
                            Check::Totals,
                            format!("{bets} bets, staked {staked}, paid {paid}"),
                            format!(
                                "{} bets, staked {}, paid {}",
                                s.bets,
                                s.staked.get(),
                                s.paid.get()
                            ),
                        )
                        .at(position)
                        .round(table, round),
                    );
                }
                let report = &mut self.tables.entry(table.to_string()).or_default().report;
                report.rounds += 1;
                report.bets += bets;
                report.staked = report.staked.saturating_add(staked);
                report.paid = report.paid.saturating_add(paid);
                self.money.house_net = self.money.house_net.saturating_add(staked - paid);
                self.rounds.remove(&key);
                self.finished.insert(key.clone(), Finished::Settled);
            }
            EventBody::FundsDeposited(_) => {}
        }
        // A voided round is finished once every stake on it is refunded (it has no closing
        // event of its own).
        let refunded = self
            .rounds
            .get(&key)
            .filter(|r| r.voided.is_some() && r.bets.values().all(|b| b.result.is_some()))
            .map(|r| (r.bets.values().map(|b| b.amount).sum::<i64>(), r.refunded));
        if let Some((staked, refunded)) = refunded {
            let report = &mut self.tables.entry(table.to_string()).or_default().report;
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
        // Voided rounds are finished once every stake is refunded; they have no closing event.
        let keys: Vec<(String, u64)> = self.rounds.keys().cloned().collect();
        let mut latest: HashMap<String, u64> = HashMap::new();
        for (table, t) in &self.tables {
            if let Some(&last) = t.rounds.last() {
                latest.insert(table.clone(), last);
            }
        }
        for key in keys {
            let Some(state) = self.rounds.remove(&key) else {
                continue;
            };
            let (table, round) = (&key.0, key.1);
            let unresolved = state.bets.values().filter(|b| b.result.is_none()).count();
            let in_play: i64 = state
                .bets
                .values()
                .filter(|b| b.result.is_none())
                .map(|b| b.amount)
                .sum();
            self.money.in_play = self.money.in_play.saturating_add(in_play);
            let report = &mut self.tables.entry(table.clone()).or_default().report;
            // Still running: fine for the table's latest round; an earlier one was left behind.
            if latest.get(table).is_some_and(|&last| round >= last) {
                report.in_progress += 1;
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
                .round(table, round),
            );
        }
        // No round missing: every table's rounds run 1, 2, 3, … (from the first one rebuilt
        // when the replay began at a checkpoint or a chosen round).
        for (table, t) in &self.tables {
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
                    .table(table),
                );
            }
        }
        let mut money = None;
        if self.checks_wallets() {
            let mut balances: i64 = 0;
            for wallet in self.wallets.values() {
                balances = balances.saturating_add(wallet.balance.unwrap_or(0));
            }
            self.money.balances = balances;
            self.money.wallets = self.wallets.len() as u64;
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
        for (name, t) in self.tables {
            let mut report = t.report;
            report.house_net = report.staked - report.paid;
            report.rtp = (report.staked > 0).then(|| report.paid as f64 / report.staked as f64);
            tables.insert(name, report);
        }
        Finish {
            tables,
            money,
            violations: self.violations,
        }
    }

    fn check_accounts(&mut self, accounts: &[(String, i64)]) {
        let mut seen = HashSet::new();
        for (player, balance) in accounts {
            seen.insert(player.as_str());
            let rebuilt = self
                .wallets
                .get(player)
                .and_then(|w| w.balance)
                .unwrap_or(0);
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
        let mut missing: Vec<(&String, i64)> = self
            .wallets
            .iter()
            .filter(|(p, w)| !seen.contains(p.as_str()) && w.balance.unwrap_or(0) != 0)
            .map(|(p, w)| (p, w.balance.unwrap_or(0)))
            .collect();
        missing.sort();
        for (player, balance) in missing {
            self.violations.push(
                Violation::new(
                    Check::Accounts,
                    format!("an accounts row with balance {balance}"),
                    "no accounts row",
                )
                .player(player),
            );
        }
    }
}

/// The rebuild's results.
#[derive(Debug)]
pub struct Finish {
    pub tables: BTreeMap<String, TableReport>,
    pub money: Option<Money>,
    pub violations: Violations,
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
    at: Timestamp,
    what: &str,
    violation: &impl Fn(String, String) -> Violation,
    found: &mut Vec<Violation>,
) {
    if let Some(before) = before
        && at < before.at
    {
        found.push(violation(
            format!("a time at or after {what} ({})", before.at),
            format!("{at}"),
        ));
    }
}

fn violation_for_bet(
    check: Check,
    table: &str,
    round: u64,
    position: i64,
    bet_id: domain::BetId,
    player: &str,
) -> impl Fn(String, String) -> Violation {
    let table = table.to_string();
    let player = player.to_string();
    move |expected, found| {
        Violation::new(check, expected, found)
            .at(position)
            .round(&table, round)
            .bet(bet_id.as_uuid())
            .player(&player)
    }
}

#[cfg(test)]
mod tests {
    //! The rebuild on small hand-made histories: given events, when rebuilt, then exactly the
    //! expected violations (by check) and figures.

    use domain::{BetId, Money, Outcome, PlayerId, RoundId, Selection, ServerSeed, TableId};
    use protocol::{
        BetPlaced, BetRefunded, BetSettled, BettingClosed, DepositId, EventBody, FundsDeposited,
        OutcomeDeclared, RoundOpened, RoundSettled, RoundVoided,
    };

    use super::*;

    const SEED: ServerSeed = ServerSeed::from_bytes([3; 32]);

    struct Log {
        rows: Vec<(Row, Event)>,
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
                (Some(player), _, _) => format!("player-{player}"),
                (None, Some(table), Some(round)) => format!("round-{table}-{}", round.get()),
                _ => "other".into(),
            };
            let row = Row {
                position: self.rows.len() as i64 + 1,
                event_id: id,
                stream,
                version: 1,
                kind: event.kind().to_string(),
                data: protocol::encode_event(&event).expect("encode"),
                metadata: bytes::Bytes::new(),
                hash: [0; 32],
                prev_hash: [0; 32],
            };
            self.rows.push((row, event));
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

        fn rebuild(&self, limits: Limits) -> Finish {
            let mut auditor = Auditor::new(limits, Scope::default(), false);
            for (row, event) in &self.rows {
                auditor.apply(row, Ok(event));
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

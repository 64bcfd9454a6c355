//! loadgen's open-loop bettors (`--bet-rate`): bets at a steady total rate while rounds are open,
//! whatever the answers do, each timed from when it was due, each final answer kept.
//!
//! Every reader thread bets for its own connections: the rate is split evenly over the threads
//! and the tables, and on each table the bets go round-robin over its bettors. A table's bets
//! are due every `1 / rate` from the moment its round is seen open until `--close-margin`
//! before the round's `closes_at` (or its `betting_closed`), so a late answer never delays the
//! next bet: latency is measured from the due time, not the send. A bet answered `TIMEOUT` is
//! sent again with the same `bet_id` (the contract's way to learn its fate), after a pause
//! ([`retry_pause`]), until it gets a definite answer; that answer is the bet's. So is a bet whose connection ended before its
//! answer came: it goes again on the client's next connection, within the same bound of tries.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Sends of one bet (the first, retries after a `TIMEOUT`, and sends again on a new connection
/// after the one it went on ended) before it is left without a definite answer.
pub(super) const MAX_TRIES: u8 = 10;

/// The pause before a `TIMEOUT` is asked again: 250 ms, doubling, at most 4 s. A `TIMEOUT`
/// can last as long as an outage (a gateway answers a bet whose earlier attempt may stand
/// `TIMEOUT` while betting is off), so the tries are spread over about half a minute rather
/// than spent at once.
pub(super) fn retry_pause(tries: u8) -> Duration {
    let doublings = u32::from(tries.saturating_sub(1)).min(4);
    Duration::from_millis(250) * 2u32.pow(doublings)
}

/// A bet sent and not answered yet.
pub(super) struct Pending {
    /// When the bet was due (the open-loop schedule), not when it left.
    pub due: Instant,
    pub bet_id: uuid::Uuid,
    pub table: usize,
    pub round: u64,
    /// The bet's number in its thread: picks its selection.
    pub n: u64,
    pub tries: u8,
    /// Rate mode only: answers are kept for the report and `--bets-out`.
    pub counted: bool,
}

/// One table as a reader thread sees it.
#[derive(Default)]
pub(super) struct TableState {
    /// The round open for bets and its `closes_at` (µs since the epoch).
    pub open: Option<(u64, i64)>,
    /// The last round seen opened (every connection on the table sees its `round_opened`).
    pub opened: u64,
    /// The next bet's due time while betting on this table.
    pub next_due: Option<Instant>,
    /// When the current betting window began.
    pub window_from: Option<Instant>,
    /// Betting windows so far, summed.
    pub window: Duration,
    /// Slots of this table's bettors, and whose turn it is.
    pub bettors: Vec<usize>,
    pub turn: usize,
}

impl TableState {
    /// Ends the betting window, if one is open.
    pub fn stop_betting(&mut self, now: Instant) {
        if let Some(from) = self.window_from.take() {
            self.window += now.saturating_duration_since(from);
        }
        self.next_due = None;
    }

    /// The next bettor in turn.
    pub fn next_bettor(&mut self) -> Option<usize> {
        if self.bettors.is_empty() {
            return None;
        }
        self.turn = (self.turn + 1) % self.bettors.len();
        Some(self.bettors[self.turn])
    }
}

/// When a round's outcome and settlement were stamped (µs since the epoch, from the events'
/// own `at`), and how many bets its `round_settled` counted.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct RoundTimes {
    pub outcome_at: Option<i64>,
    pub settled_at: Option<i64>,
    pub bets: Option<u64>,
    /// This thread had a bet accepted on the round (it counts in
    /// `Shared::rounds_unsettled` until its `round_settled` arrives).
    pub bet_on: bool,
}

/// What a thread's bettors did, merged into the report.
#[derive(Default)]
pub(super) struct BetTally {
    pub sent: u64,
    pub accepted: u64,
    pub refusals: BTreeMap<String, u64>,
    pub timeouts_retried: u64,
    pub resent: u64,
    pub unanswered: u64,
    /// Betting windows per table, summed over the thread's tables.
    pub windows: Vec<Duration>,
    pub rounds: HashMap<(usize, u64), RoundTimes>,
}

impl BetTally {
    pub fn merge(&mut self, other: BetTally) {
        self.sent += other.sent;
        self.accepted += other.accepted;
        for (code, n) in other.refusals {
            *self.refusals.entry(code).or_default() += n;
        }
        self.timeouts_retried += other.timeouts_retried;
        self.resent += other.resent;
        self.unanswered += other.unanswered;
        if self.windows.len() < other.windows.len() {
            self.windows.resize(other.windows.len(), Duration::ZERO);
        }
        for (i, w) in other.windows.into_iter().enumerate() {
            self.windows[i] = self.windows[i].max(w);
        }
        for (key, times) in other.rounds {
            let entry = self.rounds.entry(key).or_default();
            entry.outcome_at = entry.outcome_at.or(times.outcome_at);
            entry.settled_at = entry.settled_at.or(times.settled_at);
            entry.bets = entry.bets.or(times.bets);
            entry.bet_on |= times.bet_on;
        }
    }
}

/// The selection of bet number `n`: four in five even-money (red, black, even, odd), one in
/// five straight up on one pocket.
pub(super) fn selection(n: u64) -> String {
    if n % 5 == 4 {
        format!(r#"{{"kind":"straight","numbers":[{}]}}"#, (n / 5) % 37)
    } else {
        let kind = ["red", "black", "even", "odd"][(n % 4) as usize];
        format!(r#"{{"kind":"{kind}"}}"#)
    }
}

/// The `bet` message of a pending bet, under `request_id`.
pub(super) fn bet_message(request_id: &str, pending: &Pending, table: &str) -> String {
    format!(
        r#"{{"type":"bet","request_id":"{request_id}","bet_id":"{}","table":"{table}","round":{},"selection":{},"amount":10}}"#,
        pending.bet_id,
        pending.round,
        selection(pending.n)
    )
}

/// `--bets-out`: one line per bet, tab-separated: bet id, player, table, round, answer
/// (`accepted`, an error code, or `none` when no definite answer came).
#[derive(Clone)]
pub(super) struct BetsOut(Arc<Mutex<std::io::BufWriter<std::fs::File>>>);

impl BetsOut {
    pub fn create(path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::File::create(path)?;
        Ok(Self(Arc::new(Mutex::new(std::io::BufWriter::new(file)))))
    }

    pub fn line(&self, bet_id: &uuid::Uuid, player: &str, table: &str, round: u64, answer: &str) {
        if let Ok(mut out) = self.0.lock() {
            let _ = writeln!(out, "{bet_id}\t{player}\t{table}\t{round}\t{answer}");
        }
    }

    pub fn flush(&self) -> std::io::Result<()> {
        match self.0.lock() {
            Ok(mut out) => out.flush(),
            Err(_) => Err(std::io::Error::other("the bets file's lock is poisoned")),
        }
    }
}

/// A settled round in the report.
#[derive(Debug, Serialize)]
pub struct RoundReport {
    pub table: String,
    pub round: u64,
    /// Bets the round's `round_settled` counted.
    pub bets: u64,
    /// `outcome_declared.at` to `round_settled.at`. GS stamps `round_settled` when it starts
    /// the settlement, so this is how long the round waited for its settlement to begin (the
    /// settlement's own time is GS's `gs_settlement_seconds`).
    pub settle_start_ms: f64,
}

/// The bettors' part of the report (`--bet-rate`).
#[derive(Debug, Default, Serialize)]
pub struct BetReport {
    /// The rate asked for, bets/s over all tables while their rounds are open.
    pub rate: f64,
    pub bettors: usize,
    pub tables: usize,
    pub sent: u64,
    /// Seconds a table's round was open for bets, averaged over the tables.
    pub open_s: f64,
    pub offered_per_s: f64,
    pub accepted: u64,
    pub accepted_per_s: f64,
    /// Definite refusals, by error code.
    pub refusals: BTreeMap<String, u64>,
    /// `TIMEOUT` answers that were retried with the same `bet_id`.
    pub timeouts_retried: u64,
    /// Bets sent again, same `bet_id`, on a new connection after theirs ended unanswered.
    pub resent_after_reconnect: u64,
    /// Bets with no definite answer at the end (`TIMEOUT` after every retry, or silence).
    pub unanswered: u64,
    /// Due time to final answer.
    pub latency_ms: super::Percentiles,
    /// A round's `outcome_declared.at` to its `bet_settled` reaching the bettor.
    pub settled_at_client_ms: super::Percentiles,
    pub rounds: Vec<RoundReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bet_in_five_is_straight_up_and_the_rest_even_money() {
        let selections: Vec<String> = (0..10).map(selection).collect();
        assert_eq!(selections[0], r#"{"kind":"red"}"#);
        assert_eq!(selections[1], r#"{"kind":"black"}"#);
        assert_eq!(selections[4], r#"{"kind":"straight","numbers":[0]}"#);
        assert_eq!(selections[9], r#"{"kind":"straight","numbers":[1]}"#);
        let straight = selections.iter().filter(|s| s.contains("straight")).count();
        assert_eq!(straight, 2);
        for s in &selections {
            let parsed: serde_json::Value = serde_json::from_str(s).expect("JSON");
            assert!(parsed["kind"].is_string());
        }
    }

    #[test]
    fn windows_add_up_and_bettors_take_turns() {
        let mut table = TableState::default();
        let t0 = Instant::now();
        table.window_from = Some(t0);
        table.next_due = Some(t0);
        table.stop_betting(t0 + Duration::from_millis(300));
        assert_eq!(table.window, Duration::from_millis(300));
        assert!(table.next_due.is_none());
        // Stopping twice counts once.
        table.stop_betting(t0 + Duration::from_secs(5));
        assert_eq!(table.window, Duration::from_millis(300));

        assert_eq!(table.next_bettor(), None);
        table.bettors = vec![3, 7, 9];
        let turns: Vec<usize> = (0..4).filter_map(|_| table.next_bettor()).collect();
        assert_eq!(turns, vec![7, 9, 3, 7]);
    }
}

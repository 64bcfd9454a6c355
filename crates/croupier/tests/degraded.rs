//! Degraded read-only mode (ADR 0020), with real faults on real processes: the stack's own
//! Postgres stopped, frozen (SIGSTOP to every process of the cluster), or its event store
//! blocked by a held lock; the stack's own nats-server stopped. GS and GMS run as separate
//! `croupier` processes, the gateway in this process.
//!
//! For each drill a client connected through the gateway sees `status` disabled, gets
//! `BETTING_UNAVAILABLE` at once for a bet, keeps receiving round events, sees betting come
//! back, and a bet placed then is accepted and settled; every bet accepted before the fault is
//! settled exactly once; `croupier replay` exits 0. What the client received on the table
//! channel is checked against the stream: every message JetStream holds for the channel over
//! the drill was delivered, none twice. Time bounds are generous: the detection and recovery
//! figures come from `just bench-degraded`, not from here.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bus::{Bus, Kv};
use common::{BIN, Stack, StackOptions, TABLE};
use futures_util::StreamExt;
use serde_json::{Value, json};
use testkit::WsClient;

/// Generous: detection is meant to take ≤ 2 s and recovery ≤ 5 s.
const SWITCH: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    PgStopped,
    PgFrozen,
    HeadLocked,
    NatsStopped,
}

impl Fault {
    fn reason(self) -> &'static str {
        match self {
            Fault::PgStopped | Fault::PgFrozen => "store_unavailable",
            Fault::HeadLocked => "store_slow",
            Fault::NatsStopped => "bus_unavailable",
        }
    }
}

/// A client that keeps a record of every event it is sent, by channel.
struct Client {
    ws: WsClient,
    seen: HashMap<String, Vec<u64>>,
    settled: HashMap<String, usize>,
}

impl Client {
    async fn recv_until(
        &mut self,
        timeout: Duration,
        mut until: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = self
                .ws
                .recv(left)
                .await
                .unwrap_or_else(|e| panic!("nothing awaited came within {timeout:?}: {e:?}"));
            if message["type"] == "event" {
                let channel = message["channel"].as_str().unwrap_or_default().to_string();
                let seq = message["seq"].as_u64().expect("seq");
                if message["event"]["kind"] == "bet_settled" {
                    let bet = message["event"]["bet_id"].as_str().unwrap_or_default();
                    *self.settled.entry(bet.to_string()).or_default() += 1;
                }
                self.seen.entry(channel).or_default().push(seq);
            }
            if until(&message) {
                return message;
            }
        }
    }

    async fn status(&mut self, betting: &str) -> Value {
        self.recv_until(SWITCH, |m| m["type"] == "status" && m["betting"] == betting)
            .await
    }

    /// Places a bet on the next round to open; returns its answer and bet id.
    async fn bet_on_next_round(&mut self, request_id: &str) -> (Value, String) {
        let opened = self
            .recv_until(WAIT, |m| {
                m["channel"] == TABLE && m["event"]["kind"] == "round_opened"
            })
            .await;
        let round = opened["event"]["round"].as_u64().expect("round");
        self.bet(request_id, round).await
    }

    async fn bet(&mut self, request_id: &str, round: u64) -> (Value, String) {
        let bet = common::bet(request_id, round, 100);
        let bet_id = bet["bet_id"].as_str().expect("bet_id").to_string();
        self.ws.send_json(&bet).await.expect("send the bet");
        let answer = self
            .recv_until(WAIT, |m| {
                (m["type"] == "bet_result" || m["type"] == "error") && m["request_id"] == request_id
            })
            .await;
        (answer, bet_id)
    }
}

async fn start(fault: Fault) -> (Stack, Client, u64) {
    let stack = Stack::start(StackOptions {
        private_postgres: fault != Fault::NatsStopped,
        private_nats: fault == Fault::NatsStopped,
        ..StackOptions::default()
    })
    .await;
    let url = stack.gateway().ws_url(Some(&stack.token("alice")));
    let mut ws = WsClient::connect(&url, Some("croupier.v1.json"))
        .await
        .expect("connect");
    let welcome = ws.recv(WAIT).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome");
    let mut client = Client {
        ws,
        seen: HashMap::new(),
        settled: HashMap::new(),
    };
    if welcome["betting"] != "enabled" {
        // GS says so once it has caught up with the stream.
        client.status("enabled").await;
    }
    let mut from = 0;
    for channel in [TABLE, "player.alice"] {
        client
            .ws
            .send_json(&json!({"type": "subscribe", "channel": channel}))
            .await
            .expect("subscribe");
        let subscribed = client
            .recv_until(WAIT, |m| {
                m["type"] == "subscribed" && m["channel"] == channel
            })
            .await;
        if channel == TABLE {
            from = subscribed["seq"].as_u64().expect("seq");
        }
    }
    (stack, client, from)
}

async fn lock_head(stack: &Stack) -> tokio_postgres::Client {
    let client = testkit::pg_connect(&stack.db.url)
        .await
        .expect("connect to hold the lock");
    client
        .batch_execute("BEGIN; SELECT position FROM event_head WHERE id FOR UPDATE")
        .await
        .expect("take the head row's lock");
    client
}

async fn drill(fault: Fault) {
    let (mut stack, mut client, from) = start(fault).await;

    // Before: bets are accepted.
    let mut accepted = Vec::new();
    for attempt in 0..5 {
        let (answer, bet_id) = client.bet_on_next_round(&format!("before-{attempt}")).await;
        if answer["type"] == "bet_result" {
            accepted.push(bet_id);
            break;
        }
    }
    assert!(!accepted.is_empty(), "no bet was accepted before the fault");

    // The fault.
    let mut held = None;
    match fault {
        Fault::PgStopped => stack.pg.as_mut().expect("pg").stop(),
        Fault::PgFrozen => stack.pg.as_ref().expect("pg").freeze().expect("freeze"),
        Fault::HeadLocked => held = Some(lock_head(&stack).await),
        Fault::NatsStopped => stack.nats.as_mut().expect("nats").stop(),
    }
    let off = client.status("disabled").await;
    assert_eq!(off["reason"], fault.reason(), "{off}");

    // A bet is answered at once, without reaching GS.
    let asked = Instant::now();
    let (answer, _) = client.bet("during", 1).await;
    assert_eq!(answer["code"], "BETTING_UNAVAILABLE", "{answer}");
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "a bet while betting is off waited {:?}",
        asked.elapsed()
    );

    // Rounds go on (the bus is up in every drill but the last).
    if fault != Fault::NatsStopped {
        for _ in 0..2 {
            client
                .recv_until(WAIT, |m| {
                    m["channel"] == TABLE && m["event"]["kind"] == "round_opened"
                })
                .await;
        }
    } else {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    // Healthy again.
    match fault {
        Fault::PgStopped => stack.pg.as_mut().expect("pg").restart().expect("restart"),
        Fault::PgFrozen => stack.pg.as_ref().expect("pg").thaw().expect("thaw"),
        Fault::HeadLocked => {
            let held = held.take().expect("held");
            held.batch_execute("ROLLBACK").await.expect("release");
        }
        Fault::NatsStopped => stack
            .nats
            .as_mut()
            .expect("nats")
            .restart()
            .expect("restart"),
    }
    client.status("enabled").await;

    // After: a bet is accepted and settled.
    let mut after = None;
    for attempt in 0..5 {
        let (answer, bet_id) = client.bet_on_next_round(&format!("after-{attempt}")).await;
        if answer["type"] == "bet_result" {
            after = Some(bet_id);
            break;
        }
    }
    let after = after.expect("no bet was accepted after recovery");
    accepted.push(after.clone());
    client
        .recv_until(WAIT, |m| {
            m["channel"] == "player.alice"
                && m["event"]["kind"] == "bet_settled"
                && m["event"]["bet_id"] == after.as_str()
        })
        .await;
    // Let every earlier bet's settlement arrive too.
    let deadline = Instant::now() + WAIT;
    while accepted.iter().any(|b| !client.settled.contains_key(b)) && Instant::now() < deadline {
        let _ = tokio::time::timeout(
            Duration::from_millis(500),
            client.recv_until(Duration::from_millis(500), |_| true),
        )
        .await;
    }

    // Every accepted bet settled exactly once: on the client's channel and in the store.
    for bet in &accepted {
        assert_eq!(client.settled.get(bet), Some(&1), "bet {bet} settled");
    }
    let db = testkit::pg_connect(&stack.db.url).await.expect("connect");
    for bet in &accepted {
        let id = uuid::Uuid::parse_str(bet).expect("uuid");
        let rows: i64 = db
            .query_one("SELECT count(*) FROM bet_results WHERE bet_id = $1", &[&id])
            .await
            .expect("bet_results")
            .get(0);
        assert_eq!(rows, 1, "bet {bet} has one result");
    }

    // The table channel against the stream: everything delivered, nothing twice.
    let seen = client.seen.get(TABLE).cloned().unwrap_or_default();
    let distinct: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), seen.len(), "an event was delivered twice");
    let last = *distinct.last().expect("events");
    let mut stored = BTreeSet::new();
    let mut feed = stack
        .bus
        .replay("TABLES", "table.roulette-1.>", from + 1)
        .await
        .expect("read the stream");
    while let Ok(Some(message)) = tokio::time::timeout(WAIT, feed.next()).await {
        let message = message.expect("message");
        if message.seq > last {
            break;
        }
        stored.insert(message.seq);
        if message.seq == last {
            break;
        }
    }
    let missed: Vec<_> = stored.difference(&distinct).collect();
    assert!(missed.is_empty(), "the client missed {missed:?}");

    // The audit agrees.
    stack.env.replay_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_turns_betting_off_and_back_on() {
    drill(Fault::PgStopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_frozen_turns_betting_off_and_back_on() {
    drill(Fault::PgFrozen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_store_blocked_by_a_lock_turns_betting_off_as_slow() {
    drill(Fault::HeadLocked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_keeps_clients_and_says_the_bus_is_unavailable() {
    drill(Fault::NatsStopped).await;
}

/// A switch the test made (by `tester`): its record's time lies between `before` and `after`.
struct Switched {
    before: String,
    after: String,
    betting: &'static str,
    table: Option<&'static str>,
    reason: &'static str,
}

/// The contract's form of "now" (`docs/contract/events.md`), to bound the times of records.
fn contract_now() -> String {
    domain::Timestamp::from_offset_datetime(time::OffsetDateTime::now_utc())
        .expect("a time")
        .to_string()
}

/// `croupier betting off|on [--table T]` and `croupier round void`, as an operator runs them
/// against a running stack: clients are told, bets are refused while off (on one table only,
/// with the status left on, for `--table`), a voided round's bets are refunded, GMS goes on
/// with the next round, each switch is recorded and the audit lists them, who, what, which
/// table and when, in order; a switch whose record fails still switches, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_switches_betting_off_and_on_and_voids_a_round() {
    let stack = Stack::start(StackOptions {
        gms_args: vec!["--betting-ms", "8000"],
        ..StackOptions::default()
    })
    .await;
    let url = stack.gateway().ws_url(Some(&stack.token("alice")));
    let mut client = Client {
        ws: WsClient::connect(&url, Some("croupier.v1.json"))
            .await
            .expect("connect"),
        seen: HashMap::new(),
        settled: HashMap::new(),
    };
    let welcome = client.ws.recv(WAIT).await.expect("welcome");
    assert_eq!(welcome["betting"], "enabled", "{welcome}");
    for channel in [TABLE, "player.alice"] {
        client
            .ws
            .send_json(&json!({"type": "subscribe", "channel": channel}))
            .await
            .expect("subscribe");
        client
            .recv_until(WAIT, |m| {
                m["type"] == "subscribed" && m["channel"] == channel
            })
            .await;
    }

    // Every switch, in order.
    let mut switches: Vec<Switched> = Vec::new();
    let mut switch = |args: &[&'static str]| {
        let before = contract_now();
        let said = stack.env.croupier(args);
        assert!(said.contains("recorded in the event store"), "{said}");
        let after = contract_now();
        let value = |flag: &str| args.iter().position(|a| *a == flag).map(|i| args[i + 1]);
        let betting = if args[1] == "off" {
            "disabled"
        } else {
            "enabled"
        };
        let reason = value("--reason").expect("a reason");
        switches.push(Switched {
            before,
            after,
            betting,
            table: value("--table"),
            reason,
        });
    };

    switch(&["betting", "off", "--reason", "drill", "--by", "tester"]);
    let off = client.status("disabled").await;
    assert_eq!(off["reason"], "operator", "{off}");
    let (answer, _) = client.bet("while-off", 1).await;
    assert_eq!(answer["code"], "BETTING_UNAVAILABLE", "{answer}");
    switch(&["betting", "on", "--reason", "drill over", "--by", "tester"]);
    client.status("enabled").await;

    // One table switched off: its bets are refused, naming it, while the status stays on.
    switch(&[
        "betting",
        "off",
        "--table",
        "roulette-1",
        "--reason",
        "dealer break",
        "--by",
        "tester",
    ]);
    let deadline = Instant::now() + SWITCH;
    let refused = loop {
        let (answer, _) = client.bet_on_next_round("table-off").await;
        if answer["code"] == "BETTING_UNAVAILABLE" || Instant::now() >= deadline {
            break answer;
        }
    };
    assert_eq!(refused["code"], "BETTING_UNAVAILABLE", "{refused}");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("roulette-1") && message.contains("operator"),
        "{refused}"
    );
    let (other, welcome) = common::connect(&url, "croupier.v1.json").await;
    assert_eq!(welcome["betting"], "enabled", "{welcome}");
    other.close().await;
    switch(&[
        "betting",
        "on",
        "--table",
        "roulette-1",
        "--reason",
        "dealer back",
        "--by",
        "tester",
    ]);

    // Taken again (this bet is then voided with its round).
    let deadline = Instant::now() + SWITCH;
    let (answer, bet_id) = loop {
        let (answer, bet_id) = client.bet_on_next_round("to-void").await;
        if answer["type"] == "bet_result" || Instant::now() >= deadline {
            break (answer, bet_id);
        }
    };
    assert_eq!(answer["type"], "bet_result", "{answer}");
    let opened_round = {
        // The round the bet went to: the last round_opened the client saw.
        let db = testkit::pg_connect(&stack.db.url).await.expect("connect");
        let id = domain::BetId::parse(&bet_id).expect("bet id");
        let row = db
            .query_one(
                "SELECT data FROM events WHERE event_id = $1",
                &[&gs::ledger::bet_placed_id(&id)],
            )
            .await
            .expect("the bet is stored");
        match protocol::decode_event(row.get::<_, &[u8]>(0))
            .expect("event")
            .body
        {
            protocol::EventBody::BetPlaced(placed) => placed.round.get() as i64,
            other => panic!("not a bet_placed: {other:?}"),
        }
    };
    let round = opened_round.to_string();
    stack.env.croupier(&[
        "round",
        "void",
        "--table",
        "roulette-1",
        "--round",
        &round,
        "--reason",
        "wheel jammed",
        "--by",
        "tester",
    ]);
    let voided = client
        .recv_until(WAIT, |m| {
            m["channel"] == TABLE && m["event"]["kind"] == "round_voided"
        })
        .await;
    assert_eq!(voided["event"]["round"], opened_round, "{voided}");
    let reason = voided["event"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("tester") && reason.contains("wheel jammed"),
        "{voided}"
    );
    client
        .recv_until(WAIT, |m| {
            m["channel"] == "player.alice"
                && m["event"]["kind"] == "bet_refunded"
                && m["event"]["bet_id"] == bet_id.as_str()
        })
        .await;
    // GMS goes on with the next round.
    let next = client
        .recv_until(WAIT, |m| {
            m["channel"] == TABLE && m["event"]["kind"] == "round_opened"
        })
        .await;
    assert!(
        next["event"]["round"].as_i64() > Some(opened_round),
        "{next}"
    );
    // Voiding a round that is over is refused with a clear error.
    let output = stack
        .env
        .apply(&mut Command::new(BIN))
        .args([
            "round",
            "void",
            "--table",
            "roulette-1",
            "--round",
            &round,
            "--reason",
            "again",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not in progress"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The read models rebuild from a log with the switches in it.
    stack.env.croupier(&["projections", "rebuild"]);

    let output = stack
        .env
        .apply(&mut Command::new(BIN))
        .args(["replay", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("run replay");
    assert!(
        output.status.success(),
        "replay failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    let actions = report["operator_actions"]
        .as_array()
        .expect("operator actions");
    assert_eq!(report["operator_actions_total"], switches.len(), "{report}");
    assert_eq!(actions.len(), switches.len(), "{actions:?}");
    let mut last_position = 0;
    for (action, switched) in actions.iter().zip(&switches) {
        assert_eq!(action["by"], "tester", "{action}");
        assert_eq!(action["betting"], switched.betting, "{action}");
        assert_eq!(action["table"].as_str(), switched.table, "{action}");
        assert_eq!(action["reason"], switched.reason, "{action}");
        let at = action["at"].as_str().expect("at");
        let (before, after) = (&switched.before, &switched.after);
        assert!(
            before.as_str() <= at && at <= after.as_str(),
            "{before} {at} {after}"
        );
        let position = action["position"].as_i64().expect("position");
        assert!(position > last_position, "in order: {actions:?}");
        last_position = position;
    }

    // With the database out of reach the switch is made all the same, and says it is not
    // recorded.
    let output = stack
        .env
        .apply(&mut Command::new(BIN))
        .args([
            "betting",
            "off",
            "--table",
            "roulette-9",
            "--reason",
            "no database",
            "--by",
            "tester",
        ])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "betting switched off for table roulette-9, but NOT recorded in the event store"
        ) && stderr.contains("run the same command again"),
        "{stderr}"
    );
    let kv = stack.bus.kv("status").await.expect("status bucket");
    let entry = kv
        .get("operator.roulette-9")
        .await
        .expect("read")
        .expect("the switch is made");
    let status: protocol::BettingStatus = protocol::Encoding::MsgPack
        .decode(&entry.value)
        .expect("a status");
    assert_eq!(status.betting, protocol::Betting::Disabled);
}

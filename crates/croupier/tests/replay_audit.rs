//! `croupier replay` as an auditor's tool, on a real history: rounds run by GMS, bets placed
//! through the gateway, accepted and settled by GS, all as separate processes on real NATS and
//! Postgres. A clean history passes; each tampering below, planted the way someone with
//! database access would (rewrite or delete rows, then re-hash the chain from there so the
//! chain alone cannot tell), is detected and named.
//!
//! The history is built once per test process and every test works on its own copy of the
//! database (`CREATE DATABASE … TEMPLATE`).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Stack, StackOptions, TABLE, connect, is_table_event, subscribe};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);
/// Betting rounds the history has.
const ROUNDS: usize = 3;

/// The history every test copies.
struct History {
    /// The database holding it; nobody connects to it after it is built.
    db: testkit::TestDb,
    /// The bets of each betting round: (round, bet ids).
    rounds: Vec<(u64, Vec<Uuid>)>,
    /// What the table channel showed a client: (round, kind) → the event.
    seen: std::collections::HashMap<(u64, String), Value>,
    /// The bus the services published on, and their namespace there.
    nats_url: String,
    prefix: String,
}

static HISTORY: OnceCell<History> = OnceCell::const_new();

async fn history() -> &'static History {
    HISTORY.get_or_init(build_history).await
}

/// Bets of one player in one round: a selection and an amount each.
fn bets_of(player: &str) -> Vec<(Value, i64)> {
    if player == "alice" {
        vec![
            (json!({"kind": "straight", "numbers": [17]}), 100),
            (json!({"kind": "red"}), 200),
            (json!({"kind": "dozen", "index": 2}), 50),
        ]
    } else {
        vec![
            (json!({"kind": "black"}), 300),
            (json!({"kind": "corner", "numbers": [1, 2, 4, 5]}), 40),
            (json!({"kind": "split", "numbers": [0, 1]}), 60),
        ]
    }
}

async fn build_history() -> History {
    let stack = Stack::start(StackOptions {
        deposits: vec!["alice", "bob"],
        ..StackOptions::default()
    })
    .await;
    let gateway = stack.gateway();
    let (mut watcher, _) = connect(&gateway.ws_url(None), "croupier.v1.json").await;
    let subscribed = subscribe(&mut watcher, json!({"type": "subscribe", "channel": TABLE})).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let mut players = Vec::new();
    for player in ["alice", "bob"] {
        let (client, _) = connect(
            &gateway.ws_url(Some(&stack.token(player))),
            "croupier.v1.json",
        )
        .await;
        players.push((player, client));
    }
    let mut rounds = Vec::new();
    let mut seen = std::collections::HashMap::new();
    let mut record = |m: &Value| {
        if m["type"] == "event" && m["channel"] == TABLE {
            let event = &m["event"];
            if let (Some(round), Some(kind)) = (event["round"].as_u64(), event["kind"].as_str()) {
                seen.insert((round, kind.to_string()), event.clone());
            }
        }
    };
    while rounds.len() < ROUNDS {
        let opened = watcher
            .recv_until(WAIT, |m| {
                record(m);
                is_table_event(m, "round_opened")
            })
            .await
            .expect("round_opened");
        let round = opened["event"]["round"].as_u64().expect("round");
        let mut ids = Vec::new();
        for (player, client) in &mut players {
            for (n, (selection, amount)) in bets_of(player).into_iter().enumerate() {
                let bet_id = Uuid::new_v4();
                let request_id = format!("{player}-{round}-{n}");
                client
                    .send_json(&json!({
                        "type": "bet", "request_id": request_id, "bet_id": bet_id.to_string(),
                        "table": "roulette-1", "round": round, "selection": selection,
                        "amount": amount,
                    }))
                    .await
                    .expect("send bet");
                let answer = client
                    .recv_until(WAIT, |m| m["request_id"] == request_id.as_str())
                    .await
                    .expect("bet answer");
                match answer["type"].as_str() {
                    Some("bet_result") => ids.push(bet_id),
                    _ if answer["code"] == "BETTING_CLOSED" => {}
                    _ => panic!("bet refused: {answer}"),
                }
            }
        }
        // A round that closed under every bet (a slow machine) is left out; the next one is used.
        if !ids.is_empty() {
            rounds.push((round, ids));
        }
    }
    let last = rounds.last().map(|(r, _)| *r).expect("rounds");
    watcher
        .recv_until(Duration::from_secs(60), |m| {
            record(m);
            is_table_event(m, "round_settled") && m["event"]["round"] == last
        })
        .await
        .expect("the last betting round settled");
    let Stack {
        db,
        processes,
        gateways,
        env,
        ..
    } = stack;
    // GMS and GS stop (SIGKILL): the history is what they left, as after a crash.
    drop(processes);
    for node in gateways {
        node.shutdown.cancel();
        let _ = node.done.await;
    }
    History {
        db,
        rounds,
        seen,
        nats_url: env.nats_url,
        prefix: env.prefix,
    }
}

/// A copy of the history for one test.
async fn copy_of_history() -> testkit::TestDb {
    let history = history().await;
    testkit::postgres()
        .expect("postgres")
        .copy_of(&history.db)
        .await
        .expect("copy the history")
}

struct Replay {
    code: Option<i32>,
    stdout: String,
    json: Value,
}

fn replay(db: &testkit::TestDb, args: &[&str]) -> Replay {
    let history = HISTORY
        .get()
        .expect("the history is built before it is copied");
    let run = |json: bool| {
        let mut command = Command::new(BIN);
        command
            .arg("replay")
            .args(args)
            .env("DATABASE_URL", &db.url)
            .env("NATS_URL", &history.nats_url)
            .env("CROUPIER_NATS_PREFIX", &history.prefix)
            .env("CROUPIER_ENDPOINTS_FILE", "/nonexistent")
            .stdin(Stdio::null());
        if json {
            command.arg("--json");
        }
        command.output().expect("run croupier replay")
    };
    let text = run(false);
    let json = run(true);
    assert_eq!(
        text.status.code(),
        json.status.code(),
        "text and JSON agree"
    );
    Replay {
        code: text.status.code(),
        stdout: String::from_utf8_lossy(&text.stdout).to_string(),
        json: serde_json::from_slice(&json.stdout).unwrap_or_else(|e| {
            panic!(
                "--json printed no JSON ({e}): {}",
                String::from_utf8_lossy(&json.stdout)
            )
        }),
    }
}

impl Replay {
    fn violations(&self) -> &[Value] {
        self.json["violations"]
            .as_array()
            .map_or(&[], Vec::as_slice)
    }

    /// Asserts the replay failed with exit 1 and a violation of `check` that satisfies
    /// `names`, which the text report lists too.
    fn assert_found(&self, check: &str, names: impl Fn(&Value) -> bool) -> &Value {
        assert_eq!(self.code, Some(1), "a violation exits 1: {}", self.stdout);
        let found = self
            .violations()
            .iter()
            .find(|v| v["check"] == check && names(v))
            .unwrap_or_else(|| panic!("no {check} violation as expected in {}", self.stdout));
        assert!(
            self.stdout.contains(&format!("[{check}]")),
            "{}",
            self.stdout
        );
        found
    }
}

// ---------------------------------------------------------------------------------------------
// The attacker's tools: rewrite `events` as a superuser, then re-hash the chain and move the
// head, so that positions stay gapless, versions consecutive and every hash consistent.

/// One row of `events`, without what the attacker recomputes (position, version, hash).
#[derive(Debug, Clone)]
struct Ev {
    event_id: Uuid,
    stream: String,
    kind: String,
    data: Vec<u8>,
    metadata: Vec<u8>,
    recorded_at: String,
}

impl Ev {
    fn event(&self) -> protocol::Event {
        protocol::decode_event(&self.data).expect("an event")
    }

    fn set(&mut self, event: &protocol::Event) {
        self.data = protocol::encode_event(event).expect("encode").to_vec();
    }
}

async fn load(db: &testkit::TestDb) -> Vec<Ev> {
    let client = db.client().await.expect("connect");
    client
        .query(
            "SELECT event_id, stream, type, data, metadata, recorded_at::text FROM events ORDER BY position",
            &[],
        )
        .await
        .expect("read events")
        .iter()
        .map(|row| Ev {
            event_id: row.get(0),
            stream: row.get(1),
            kind: row.get(2),
            data: row.get(3),
            metadata: row.get(4),
            recorded_at: row.get(5),
        })
        .collect()
}

/// Replaces the whole log with `events`, numbered, versioned and chained afresh.
async fn rewrite(db: &testkit::TestDb, events: &[Ev]) {
    let mut client = db.client().await.expect("connect");
    let tx = client.transaction().await.expect("begin");
    tx.batch_execute(
        "ALTER TABLE events DISABLE TRIGGER USER;
         ALTER TABLE event_head DISABLE TRIGGER USER;
         DELETE FROM events;",
    )
    .await
    .expect("disable the guards as a superuser");
    let insert = tx
        .prepare(
            "INSERT INTO events (position, event_id, stream, version, type, data, metadata, recorded_at, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8::text::timestamptz, $9)",
        )
        .await
        .expect("prepare");
    let mut versions = std::collections::HashMap::<String, i32>::new();
    let mut prev = store::GENESIS_HASH;
    for (i, ev) in events.iter().enumerate() {
        let position = i as i64 + 1;
        let version = versions.entry(ev.stream.clone()).or_default();
        *version += 1;
        let hash = store::chain_hash(
            &prev,
            position,
            ev.event_id,
            &ev.stream,
            &ev.kind,
            &ev.data,
            &ev.metadata,
        );
        tx.execute(
            &insert,
            &[
                &position,
                &ev.event_id,
                &ev.stream,
                &*version,
                &ev.kind,
                &ev.data,
                &ev.metadata,
                &ev.recorded_at,
                &hash.as_slice(),
            ],
        )
        .await
        .expect("insert");
        prev = hash;
    }
    tx.execute(
        "UPDATE event_head SET position = $1, hash = $2",
        &[&(events.len() as i64), &prev.as_slice()],
    )
    .await
    .expect("move the head");
    tx.batch_execute(
        "ALTER TABLE events ENABLE ALWAYS TRIGGER events_refuse_update_delete;
         ALTER TABLE events ENABLE ALWAYS TRIGGER events_refuse_truncate;
         ALTER TABLE event_head ENABLE TRIGGER USER;",
    )
    .await
    .expect("enable the guards");
    tx.commit().await.expect("commit");
}

fn kind_of(ev: &Ev, kind: &str) -> bool {
    ev.kind == kind
}

fn bet_id_of(ev: &Ev) -> Option<Uuid> {
    match ev.event().body {
        protocol::EventBody::BetPlaced(b) => Some(*b.bet_id.as_uuid()),
        protocol::EventBody::BetSettled(b) => Some(*b.bet_id.as_uuid()),
        protocol::EventBody::BetRefunded(b) => Some(*b.bet_id.as_uuid()),
        _ => None,
    }
}

fn names_bet(v: &Value, bet: Uuid) -> bool {
    v["bet_id"] == bet.to_string()
}

/// A bet of the history's second betting round.
async fn a_bet() -> (u64, Uuid) {
    let (round, bets) = &history().await.rounds[1];
    (*round, bets[0])
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_history_passes_with_its_figures_and_head() {
    let db = copy_of_history().await;
    let clean = replay(&db, &[]);
    assert_eq!(clean.code, Some(0), "{}", clean.stdout);
    assert!(
        clean.stdout.contains("ok: every check holds"),
        "{}",
        clean.stdout
    );
    let report = &clean.json;
    assert_eq!(report["ok"], true);
    assert_eq!(report["violations_total"], 0);
    let table = &report["tables"]["roulette-1"];
    let bets: usize = history().await.rounds.iter().map(|(_, b)| b.len()).sum();
    assert!(
        table["rounds"].as_u64().expect("rounds") >= ROUNDS as u64,
        "{table}"
    );
    assert_eq!(table["bets"], bets as u64, "{table}");
    let staked = table["staked"].as_i64().expect("staked");
    let paid = table["paid"].as_i64().expect("paid");
    assert_eq!(table["house_net"], staked - paid);
    // Deposits of 10 000 each = balances + house net (+ nothing in play: every bet settled).
    let money = &report["money"];
    assert_eq!(money["deposits"], 20_000);
    assert_eq!(
        money["balances"].as_i64().expect("balances") + money["house_net"].as_i64().expect("net"),
        20_000,
        "{money}"
    );
    let head = format!(
        "{}:{}",
        report["head"]["position"],
        report["head"]["hash"].as_str().expect("hash")
    );
    assert!(
        clean.stdout.contains(&head),
        "the text report prints the head to publish"
    );

    // Narrowed to one round: only it is reported, the chain is still verified whole.
    let (round, bets) = &history().await.rounds[1];
    let one = replay(
        &db,
        &[
            "--table",
            "roulette-1",
            "--from-round",
            &round.to_string(),
            "--to-round",
            &round.to_string(),
        ],
    );
    assert_eq!(one.code, Some(0), "{}", one.stdout);
    assert_eq!(one.json["tables"]["roulette-1"]["rounds"], 1);
    assert_eq!(one.json["tables"]["roulette-1"]["bets"], bets.len() as u64);
    assert_eq!(one.json["events"], report["events"]);
    assert!(
        one.json.get("money").is_none(),
        "wallets only on an unscoped run"
    );

    // Published checkpoints hold (the head, and one in the middle from a file); so does a
    // replay that starts from one.
    let middle = {
        let client = db.client().await.expect("connect");
        let row = client
            .query_one(
                "SELECT position, encode(hash, 'hex') FROM events WHERE position = (SELECT position / 2 FROM event_head)",
                &[],
            )
            .await
            .expect("a middle row");
        format!("{}:{}", row.get::<_, i64>(0), row.get::<_, String>(1))
    };
    let checkpoints = tempfile::NamedTempFile::new().expect("file");
    std::fs::write(checkpoints.path(), format!("# published daily\n{middle}\n")).expect("write");
    let checked = replay(
        &db,
        &[
            "--expect-head",
            &head,
            "--checkpoints",
            checkpoints.path().to_str().expect("path"),
        ],
    );
    assert_eq!(checked.code, Some(0), "{}", checked.stdout);
    assert_eq!(checked.json["checkpoints_verified"], 2);
    let from = replay(&db, &["--from-checkpoint", &middle]);
    assert_eq!(from.code, Some(0), "{}", from.stdout);
    assert_eq!(from.json["head"], report["head"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_changed_without_rehashing_is_named_by_position() {
    let db = copy_of_history().await;
    let client = db.client().await.expect("connect");
    let position: i64 = client
        .query_one(
            "SELECT min(position) FROM events WHERE type = 'bet_placed'",
            &[],
        )
        .await
        .expect("a bet")
        .get(0);
    client
        .batch_execute(&format!(
            "ALTER TABLE events DISABLE TRIGGER USER;
             UPDATE events SET data = set_byte(data, 20, get_byte(data, 20) # 1) WHERE position = {position};
             ALTER TABLE events ENABLE ALWAYS TRIGGER events_refuse_update_delete;
             ALTER TABLE events ENABLE ALWAYS TRIGGER events_refuse_truncate;"
        ))
        .await
        .expect("tamper");
    let found = replay(&db, &[]);
    found.assert_found("chain", |v| v["position"] == position);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_payout_rehashed_is_named_by_bet() {
    let (_, bet) = a_bet().await;
    let db = copy_of_history().await;
    let mut events = load(&db).await;
    let settled = events
        .iter_mut()
        .find(|e| kind_of(e, "bet_settled") && bet_id_of(e) == Some(bet))
        .expect("the bet's settlement");
    let mut event = settled.event();
    if let protocol::EventBody::BetSettled(s) = &mut event.body {
        s.payout = domain::Money::new(s.payout.get() + 100).expect("money");
        s.balance = domain::Money::new(s.balance.get() + 100).expect("money");
    }
    settled.set(&event);
    rewrite(&db, &events).await;
    let found = replay(&db, &[]);
    let v = found.assert_found("settlement", |v| names_bet(v, bet));
    assert!(
        v["expected"].as_str().is_some_and(|e| e.contains("payout")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_settlement_is_named_by_bet() {
    let (_, bet) = a_bet().await;
    let db = copy_of_history().await;
    let mut events = load(&db).await;
    events.retain(|e| !(kind_of(e, "bet_settled") && bet_id_of(e) == Some(bet)));
    rewrite(&db, &events).await;
    replay(&db, &[]).assert_found("settlement", |v| names_bet(v, bet));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_bet_deleted_breaks_its_rounds_totals() {
    let (round, bet) = a_bet().await;
    let db = copy_of_history().await;
    let mut events = load(&db).await;
    events.retain(|e| bet_id_of(e) != Some(bet));
    rewrite(&db, &events).await;
    let found = replay(&db, &[]);
    found.assert_found("totals", |v| v["round"] == round);
    // The bus still has the bet, placed and settled: both are named, by the bet and where
    // they are on the bus.
    for kind in ["bet_placed", "bet_settled"] {
        let v = found.assert_found("bus", |v| {
            names_bet(v, bet) && v["expected"].as_str().is_some_and(|e| e.contains(kind))
        });
        assert!(
            v["bus"]
                .as_str()
                .is_some_and(|b| b.starts_with("PLAYERS seq")),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_seed_that_agrees_with_itself_in_postgres_but_not_with_the_bus_is_named() {
    let (round, _) = a_bet().await;
    let db = copy_of_history().await;
    let mut events = load(&db).await;
    // The attacker picks the outcome: a seed of their own, its hash and its outcome, all
    // consistent in Postgres.
    let seed = domain::ServerSeed::from_bytes([7; 32]);
    let table = domain::TableId::parse("roulette-1").expect("table");
    let round_id = domain::RoundId::new(round).expect("round");
    let outcome = domain::fairness::outcome(&seed, &table, round_id);
    for ev in events.iter_mut() {
        let mut event = ev.event();
        match &mut event.body {
            protocol::EventBody::RoundOpened(o) if o.round == round_id => {
                o.seed_hash = seed.hash();
            }
            protocol::EventBody::OutcomeDeclared(d) if d.round == round_id => {
                d.server_seed = seed.clone();
                d.outcome = outcome;
            }
            _ => continue,
        }
        ev.set(&event);
    }
    rewrite(&db, &events).await;
    let found = replay(&db, &[]);
    assert!(
        !found.violations().iter().any(|v| v["check"] == "fairness"),
        "Postgres alone is consistent: {}",
        found.stdout
    );
    for kind in ["round_opened", "outcome_declared"] {
        let v = found.assert_found("bus", |v| {
            v["round"] == round && v["expected"].as_str().is_some_and(|e| e.contains(kind))
        });
        assert!(
            v["bus"]
                .as_str()
                .is_some_and(|b| b.starts_with("TABLES seq")),
            "{v}"
        );
        assert!(v["position"].is_u64(), "both places are named: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bet_settled_twice_is_named_by_bet() {
    let (_, bet) = a_bet().await;
    let db = copy_of_history().await;
    let mut events = load(&db).await;
    let at = events
        .iter()
        .position(|e| kind_of(e, "bet_settled") && bet_id_of(e) == Some(bet))
        .expect("the bet's settlement");
    let mut twice = events[at].clone();
    twice.event_id = Uuid::new_v4();
    let mut event = twice.event();
    event.id = twice.event_id;
    twice.set(&event);
    events.insert(at + 1, twice);
    rewrite(&db, &events).await;
    let found = replay(&db, &[]);
    let v = found.assert_found("settlement", |v| names_bet(v, bet));
    assert!(
        v["found"].as_str().is_some_and(|f| f.contains("again")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bet_accepted_after_its_round_closed_is_named_by_bet() {
    let (round, bet) = a_bet().await;
    let db = copy_of_history().await;
    let mut events = load(&db).await;
    let closes_at = events
        .iter()
        .find_map(|e| match e.event().body {
            protocol::EventBody::RoundOpened(o) if o.round.get() == round => Some(o.closes_at),
            _ => None,
        })
        .expect("the round's opening");
    let placed = events
        .iter_mut()
        .find(|e| kind_of(e, "bet_placed") && bet_id_of(e) == Some(bet))
        .expect("the bet");
    let mut event = placed.event();
    event.at = closes_at
        .checked_add(Duration::from_millis(1))
        .expect("time");
    placed.set(&event);
    rewrite(&db, &events).await;
    let found = replay(&db, &[]);
    let v = found.assert_found("bet", |v| names_bet(v, bet));
    assert!(
        v["expected"]
            .as_str()
            .is_some_and(|e| e.contains("before betting closed")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_that_does_not_follow_from_its_seed_is_named_by_round() {
    let (round, _) = a_bet().await;
    let db = copy_of_history().await;
    let mut events = load(&db).await;
    let declared = events
        .iter_mut()
        .find(|e| {
            kind_of(e, "outcome_declared") && e.event().round().map(|r| r.get()) == Some(round)
        })
        .expect("the outcome");
    let mut event = declared.event();
    if let protocol::EventBody::OutcomeDeclared(d) = &mut event.body {
        d.outcome = domain::Outcome::new((d.outcome.get() + 1) % 37).expect("pocket");
    }
    declared.set(&event);
    rewrite(&db, &events).await;
    let found = replay(&db, &[]);
    let v = found.assert_found("fairness", |v| v["round"] == round);
    assert!(
        v["expected"]
            .as_str()
            .is_some_and(|e| e.contains("drawn from the revealed seed")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_missing_from_the_log_is_named_by_table() {
    let (round, _) = a_bet().await;
    let db = copy_of_history().await;
    let mut events = load(&db).await;
    let stream = format!("round-roulette-1-{round}");
    // The round's own events and every bet on it, settled or not.
    events.retain(|e| e.stream != stream && e.event().round().map(|r| r.get()) != Some(round));
    rewrite(&db, &events).await;
    let found = replay(&db, &[]);
    let v = found.assert_found("round", |v| {
        v["table"] == "roulette-1" && v.get("round").is_none()
    });
    assert!(
        v["found"]
            .as_str()
            .is_some_and(|f| f.contains(&round.to_string())),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_balance_that_differs_is_named_by_player() {
    let db = copy_of_history().await;
    db.client()
        .await
        .expect("connect")
        .batch_execute("UPDATE accounts SET balance = balance + 1 WHERE player = 'alice'")
        .await
        .expect("tamper");
    replay(&db, &[]).assert_found("accounts", |v| v["player"] == "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_checkpoint_that_no_longer_matches_is_named_by_position() {
    let db = copy_of_history().await;
    let clean = replay(&db, &[]);
    assert_eq!(clean.code, Some(0), "{}", clean.stdout);
    let head = format!(
        "{}:{}",
        clean.json["head"]["position"],
        clean.json["head"]["hash"].as_str().expect("hash")
    );
    // A history rewritten after the checkpoint was published: one deposit amount changed and
    // everything re-hashed, read models and all, so that only the checkpoint can tell.
    let mut events = load(&db).await;
    let deposit = events
        .iter_mut()
        .find(|e| kind_of(e, "funds_deposited"))
        .expect("a deposit");
    let mut event = deposit.event();
    let event_id = event.id;
    if let protocol::EventBody::FundsDeposited(d) = &mut event.body {
        d.deposit_id = protocol::DepositId::parse("rewritten").expect("id");
    }
    deposit.set(&event);
    assert_eq!(deposit.event_id, event_id);
    rewrite(&db, &events).await;
    // The bus still has the deposit as it was...
    let with_bus = replay(&db, &[]);
    let v = with_bus.assert_found("bus", |v| v["player"] == "alice" || v["player"] == "bob");
    assert!(
        v["found"].as_str().is_some_and(|f| f.contains("rewritten")),
        "{v}"
    );
    // ...and for an auditor with the database alone, the published checkpoint tells.
    let quiet = replay(&db, &["--no-bus"]);
    assert_eq!(
        quiet.code,
        Some(0),
        "the rewrite is consistent: {}",
        quiet.stdout
    );
    let position = clean.json["head"]["position"].clone();
    replay(&db, &["--no-bus", "--expect-head", &head])
        .assert_found("checkpoint", |v| v["position"] == position);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_game_recall_shows_what_the_client_saw_and_its_file_checks_offline() {
    let history = history().await;
    let (round, bets) = &history.rounds[1];
    let seen = |kind: &str| {
        history
            .seen
            .get(&(*round, kind.to_string()))
            .unwrap_or_else(|| panic!("the client saw no {kind} for round {round}"))
    };
    let db = copy_of_history().await;
    let args = ["--table", "roulette-1", "--round", &round.to_string()];
    let text = replay(&db, &args);
    assert_eq!(text.code, Some(0), "{}", text.stdout);
    let recall = &text.json;
    // The commitment, the reveal and the outcome the client saw, worked step by step.
    let opened = seen("round_opened");
    let declared = seen("outcome_declared");
    assert_eq!(recall["seed_hash"], opened["seed_hash"]);
    assert_eq!(recall["server_seed"], declared["server_seed"]);
    assert_eq!(recall["revealed_seed_hash"], opened["seed_hash"]);
    assert_eq!(recall["declared_outcome"], declared["outcome"]);
    assert_eq!(recall["drawn_outcome"], declared["outcome"]);
    assert_eq!(
        recall["blocks"][0]["message"],
        format!("roulette-1:{round}:0")
    );
    assert!(recall["commitment_position"].is_u64(), "{recall}");
    assert!(
        recall["commitment_bus"]
            .as_str()
            .is_some_and(|b| b.starts_with("TABLES seq")),
        "{recall}"
    );
    // Every bet the client placed, with its payout, and the totals the table channel showed.
    let ids: std::collections::BTreeSet<String> = recall["bets"]
        .as_array()
        .expect("bets")
        .iter()
        .map(|b| {
            assert!(b["payout"].is_i64(), "settled: {b}");
            b["bet_id"].as_str().expect("id").to_string()
        })
        .collect();
    let placed: std::collections::BTreeSet<String> = bets.iter().map(Uuid::to_string).collect();
    assert_eq!(ids, placed);
    let settled = seen("round_settled");
    assert_eq!(recall["staked"], settled["staked"]);
    assert_eq!(recall["paid"], settled["paid"]);
    assert!(
        recall["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .all(|c| c["holds"] == true),
        "{recall}"
    );
    for id in &placed {
        assert!(
            text.stdout.contains(id.as_str()),
            "the text recall lists bet {id}"
        );
    }
    for field in ["seed_hash", "server_seed"] {
        let value = recall[field].as_str().expect("hex");
        assert!(
            text.stdout.contains(value),
            "the text recall shows the {field}"
        );
    }

    // The file checks offline (no database, no NATS), and not once a byte of it changes.
    let file = tempfile::NamedTempFile::new().expect("file");
    let pretty = serde_json::to_string_pretty(recall).expect("json");
    std::fs::write(file.path(), &pretty).expect("write");
    let verify = |path: &std::path::Path| {
        Command::new(BIN)
            .args(["replay", "--verify-recall"])
            .arg(path)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("NATS_URL", "nats://127.0.0.1:1")
            .env("CROUPIER_ENDPOINTS_FILE", "/nonexistent")
            .stdin(Stdio::null())
            .output()
            .expect("run croupier replay --verify-recall")
    };
    let ok = verify(file.path());
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let changes = [
        // A byte of a stored event (its hash no longer recomputes).
        {
            let data = recall["events"][1]["data"].as_str().expect("data");
            let flipped = format!(
                "{}{}",
                &data[..40],
                if &data[40..41] == "0" { "1" } else { "0" }
            );
            pretty.replacen(data, &format!("{flipped}{}", &data[41..]), 1)
        },
        // The readable outcome (no longer what the events say).
        pretty.replacen(
            &format!("\"declared_outcome\": {}", declared["outcome"]),
            &format!(
                "\"declared_outcome\": {}",
                (declared["outcome"].as_u64().expect("pocket") + 1) % 37
            ),
            1,
        ),
    ];
    for changed in changes {
        assert_ne!(changed, pretty, "the change took");
        std::fs::write(file.path(), &changed).expect("write");
        let bad = verify(file.path());
        assert_eq!(
            bad.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&bad.stdout)
        );
    }
    std::fs::write(file.path(), "{not json").expect("write");
    assert_eq!(verify(file.path()).status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_keeps_everything_but_lost_its_first_messages_is_named() {
    testkit::init_logging();
    // A history of its own: purging the shared one would disturb the other tests.
    let (env, _db) = common::Env::fresh().await;
    for (player, id) in [("ann", "d1"), ("ben", "d2"), ("cat", "d3")] {
        env.deposit(player, 500, id);
    }
    let bus = bus::NatsBus::connect(&env.nats_url, &env.prefix, bus::NatsOptions::default())
        .await
        .expect("connect");
    bus::Bus::setup(&bus, &common::croupier_definitions())
        .await
        .expect("streams");
    {
        let _gs = env.spawn(&["run", "gs"]);
        let deadline = tokio::time::Instant::now() + WAIT;
        while bus::Bus::stream_state(&bus, "PLAYERS")
            .await
            .expect("state")
            .last_seq
            < 3
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "deposits never published"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let run = |extra: &[&str]| {
        let output = env
            .apply(&mut Command::new(BIN))
            .args(["replay", "--json"])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("replay");
        let report: Value = serde_json::from_slice(&output.stdout).expect("json");
        (output.status.code(), report)
    };
    let (code, report) = run(&[]);
    assert_eq!(code, Some(0), "{report}");

    // Someone with access to the bus removes the first message of PLAYERS (which keeps
    // everything): the stream now starts at 2.
    let client = async_nats::connect(&env.nats_url).await.expect("nats");
    let js = async_nats::jetstream::new(client);
    let stream = js
        .get_stream(format!("{}_PLAYERS", env.prefix))
        .await
        .expect("the stream");
    stream.purge().sequence(2).await.expect("purge");
    let (code, report) = run(&[]);
    assert_eq!(code, Some(1), "{report}");
    let violations = report["violations"].as_array().expect("violations");
    assert!(
        violations.iter().any(|v| v["check"] == "bus"
            && v["expected"]
                .as_str()
                .is_some_and(|e| e.contains("PLAYERS from sequence 1"))
            && v["found"].as_str().is_some_and(|f| f.contains("1..=1"))),
        "{report}"
    );
    assert!(
        violations
            .iter()
            .any(|v| v["check"] == "bus" && v["position"] == 1),
        "the deposit no longer on the bus is named too: {report}"
    );
}

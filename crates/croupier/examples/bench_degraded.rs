//! `just bench-degraded`: the degraded-mode drills (ADR 0020) on `just up`'s own stack, under
//! steady load, with the figures of issue 16 §4 per drill.
//!
//! - The stack: `ops/scripts/stack.sh up` in a temporary data directory (its own NATS and
//!   Postgres, `croupier run all` from the release build), rounds of 3 s betting.
//! - Load: `croupier loadgen` (300 clients, 10 of them betting) for the whole run, plus this
//!   program's own 8 bettors (one bet each every 100 ms on the open round, every answer
//!   recorded) and an observer client on the table channel (every event and status recorded).
//! - Drills, in turn, each after 10 s of health: `just pg-stop` + `pg-start` after 8 s,
//!   `just pg-freeze 8`, `just pg-slow 8`, `just nats-stop` + `nats-start` after 8 s.
//! - Per drill: time from the fault to betting off (as the observer sees `status`), time from
//!   healthy again to betting on, the bettors' answers from the fault to 2 s after betting is
//!   back (accepted / `BETTING_UNAVAILABLE` / `TIMEOUT` / other), events the observer received
//!   while betting was off, and the table events it missed or got twice compared with the
//!   stream. After the drills: accepted bets missing from the store (lost, must be 0), accepted
//!   bets whose round was settled without a result for them or with two (must be 0), and
//!   `croupier replay`'s exit code.
//! - No false alarms: before the drills, 30 s of the load alone, then 100,000 bets written into
//!   one round straight through GS's ledger (`gs::ledger::place_bets`, batches of 2,000, as
//!   `just bench-store` writes) and settled by the stack's GS in one go: betting must not turn
//!   off (the number of status changes is printed).

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bus::Bus;
use futures_util::StreamExt;
use serde_json::json;
use testkit::WsClient;
use tokio::time::Instant;

const BETTORS: usize = 8;
const HEALTHY_BEFORE: Duration = Duration::from_secs(10);
const FAULT_FOR: u64 = 8;
const SWITCH_WAIT: Duration = Duration::from_secs(60);
const TABLE: &str = "table.roulette-1";

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(run())
}

#[path = "support/up.rs"]
mod up;

use up::{Up, bin};

/// What the observer saw: table events and betting status changes, with when.
#[derive(Default)]
struct Seen {
    events: Vec<(Instant, u64)>,
    statuses: Vec<(Instant, bool, String)>,
    /// The round open now, if any.
    open_round: Option<u64>,
    /// Rounds whose `round_settled` arrived, with when.
    settled: Vec<(Instant, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Answer {
    Accepted,
    Unavailable,
    Timeout,
    Other,
}

/// When, what, the bet id, and the error code (empty when accepted).
type Answers = Arc<Mutex<Vec<(Instant, Answer, String, String)>>>;

async fn observe(url: String, seen: Arc<Mutex<Seen>>) -> Result<()> {
    let mut client = WsClient::connect(&url, Some("croupier.v1.json")).await?;
    client
        .send_json(&json!({"type": "subscribe", "channel": TABLE}))
        .await?;
    loop {
        let Ok(message) = client.recv(Duration::from_secs(3600)).await else {
            bail!("the observer was disconnected");
        };
        let now = Instant::now();
        let mut seen = seen.lock().expect("seen");
        match message["type"].as_str() {
            Some("welcome") => {
                let on = message["betting"] == "enabled";
                seen.statuses.push((now, on, String::new()));
            }
            Some("status") => {
                let on = message["betting"] == "enabled";
                let reason = message["reason"].as_str().unwrap_or_default().to_string();
                seen.statuses.push((now, on, reason));
            }
            Some("event") if message["channel"] == TABLE => {
                let seq = message["seq"].as_u64().unwrap_or_default();
                seen.events.push((now, seq));
                let round = message["event"]["round"].as_u64();
                match message["event"]["kind"].as_str() {
                    Some("round_opened") => seen.open_round = round,
                    Some("betting_closed" | "round_voided") => seen.open_round = None,
                    Some("round_settled") => {
                        if let Some(round) = round {
                            seen.settled.push((now, round));
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

async fn bettor(url: String, seen: Arc<Mutex<Seen>>, answers: Answers, index: usize) -> Result<()> {
    let mut client = WsClient::connect(&url, Some("croupier.v1.json")).await?;
    let _welcome = client.recv(Duration::from_secs(10)).await;
    let mut n = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let round = seen.lock().expect("seen").open_round;
        let Some(round) = round else { continue };
        n += 1;
        let request_id = format!("b{index}-{n}");
        let bet_id = uuid::Uuid::new_v4().to_string();
        client
            .send_json(&json!({
                "type": "bet", "request_id": request_id, "bet_id": bet_id,
                "table": "roulette-1", "round": round, "selection": {"kind": "red"}, "amount": 10
            }))
            .await?;
        let deadline = Instant::now() + Duration::from_secs(15);
        let answer = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match client.recv(left).await {
                Ok(m) if m["request_id"] == request_id.as_str() => break Some(m),
                Ok(_) => {}
                Err(_) => break None,
            }
        };
        let code = answer
            .as_ref()
            .and_then(|m| m["code"].as_str())
            .unwrap_or(if answer.is_none() { "(silence)" } else { "" })
            .to_string();
        let answer = match answer {
            Some(m) if m["type"] == "bet_result" => Answer::Accepted,
            Some(m) if m["code"] == "BETTING_UNAVAILABLE" => Answer::Unavailable,
            Some(m) if m["code"] == "TIMEOUT" => Answer::Timeout,
            // Silence is counted as a timeout: the client cannot tell either.
            None => Answer::Timeout,
            Some(_) => Answer::Other,
        };
        answers
            .lock()
            .expect("answers")
            .push((Instant::now(), answer, bet_id, code));
    }
}

#[derive(Debug)]
struct Drill {
    name: &'static str,
    fault: Instant,
    healed: Instant,
    off: Option<(Instant, String)>,
    on: Option<Instant>,
}

async fn status_after(
    seen: &Arc<Mutex<Seen>>,
    after: Instant,
    on: bool,
) -> Option<(Instant, String)> {
    let deadline = Instant::now() + SWITCH_WAIT;
    loop {
        let found = seen
            .lock()
            .expect("seen")
            .statuses
            .iter()
            .find(|(at, is_on, _)| *at >= after && *is_on == on)
            .map(|(at, _, reason)| (*at, reason.clone()));
        if found.is_some() || Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn drill(up: &Up, seen: &Arc<Mutex<Seen>>, name: &'static str) -> Result<Drill> {
    tokio::time::sleep(HEALTHY_BEFORE).await;
    let seconds = FAULT_FOR.to_string();
    let fault = Instant::now();
    let healed = match name {
        "pg-stop" | "nats-stop" => {
            if !up.stack(&[name]).status()?.success() {
                bail!("{name} failed");
            }
            tokio::time::sleep(Duration::from_secs(FAULT_FOR)).await;
            let start = if name == "pg-stop" {
                "pg-start"
            } else {
                "nats-start"
            };
            if !up.stack(&[start]).status()?.success() {
                bail!("{start} failed");
            }
            Instant::now()
        }
        _ => {
            let mut held = up.stack(&[name, &seconds]).spawn()?;
            let status = tokio::task::spawn_blocking(move || held.wait()).await??;
            if !status.success() {
                bail!("{name} failed");
            }
            Instant::now()
        }
    };
    let off = status_after(seen, fault, false).await;
    let on = status_after(seen, healed, true).await.map(|(at, _)| at);
    Ok(Drill {
        name,
        fault,
        healed,
        off,
        on,
    })
}

/// 100k bets on one round, written through the ledger, then settled by the stack's GS: how
/// many were placed, how long the settlement took to reach the observer, and how many times
/// betting switched meanwhile (must be 0).
async fn big_settlement(
    database_url: &str,
    seen: &Arc<Mutex<Seen>>,
) -> Result<(usize, Duration, usize)> {
    const PLAYERS: usize = 1000;
    const PER_PLAYER: usize = 100;
    const CHUNK: usize = 2000;
    let mut pool = store::PoolConfig::new(database_url.to_string());
    pool.max_size = 4;
    pool.call_timeout = Duration::from_secs(60);
    pool.statement_timeout = Duration::from_secs(60);
    let store = store::Store::new(&pool)?;
    let players: Vec<domain::PlayerId> = (0..PLAYERS)
        .map(|i| domain::PlayerId::parse(&format!("bd-big-{i}")))
        .collect::<Result<_, _>>()?;
    for (i, player) in players.iter().enumerate() {
        let id = protocol::DepositId::parse(&format!("bench-degraded-big-{i}"))?;
        gs::ledger::deposit(&store, player, domain::Money::new(1_000_000)?, &id).await?;
    }
    // A round that has just opened, so its whole window is ahead.
    let before = seen.lock().expect("seen").open_round;
    let round = loop {
        let now = seen.lock().expect("seen").open_round;
        if let Some(round) = now.filter(|_| now != before) {
            break round;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let started = Instant::now();
    let table = domain::TableId::parse("roulette-1")?;
    let red = domain::Selection::parse(domain::RawSelection::Red)?;
    let limits = domain::TableLimits::DEFAULT;
    let bets: Vec<gs::ledger::BetRequest> = (0..PLAYERS * PER_PLAYER)
        .map(|n| gs::ledger::BetRequest {
            bet_id: domain::BetId::from_uuid(uuid::Uuid::new_v4()),
            player: players[n % PLAYERS].clone(),
            table: table.clone(),
            round: domain::RoundId::new(round).expect("round"),
            selection: red,
            amount: domain::Money::stake(10).expect("stake"),
        })
        .collect();
    let mut placed = 0;
    for chunk in bets.chunks(CHUNK) {
        let now = time_now();
        let outcomes = gs::ledger::place_bets(&store, chunk, &limits, now).await?;
        let accepted = outcomes
            .iter()
            .filter(|o| matches!(o, gs::ledger::BetOutcome::Accepted { .. }))
            .count();
        placed += accepted;
        if accepted < chunk.len() {
            break; // the round closed
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let settled_at = loop {
        let found = seen
            .lock()
            .expect("seen")
            .settled
            .iter()
            .find(|(_, r)| *r == round)
            .map(|(at, _)| *at);
        if let Some(at) = found {
            break at;
        }
        if Instant::now() > deadline {
            bail!("round {round} was never settled");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let switches = seen
        .lock()
        .expect("seen")
        .statuses
        .iter()
        .filter(|(at, _, _)| *at >= started)
        .count();
    Ok((placed, settled_at - started, switches))
}

fn time_now() -> domain::Timestamp {
    domain::Timestamp::from_offset_datetime(time::OffsetDateTime::now_utc())
        .unwrap_or(domain::Timestamp::UNIX_EPOCH)
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

async fn run() -> Result<()> {
    if !bin().exists() {
        bail!("build first: cargo build --release -p croupier");
    }
    eprintln!("bench-degraded: starting `just up`'s stack (release build)…");
    let up = Up::start(
        "croupier-bench-degraded-",
        &[
            ("CROUPIER_BETTING_MS", "6000"),
            ("CROUPIER_RESULT_MS", "500"),
            ("CROUPIER_PAUSE_MS", "500"),
            ("CROUPIER_MAX_CONNECTIONS", "5000"),
        ],
    )
    .await?;
    let endpoints = up.endpoints();
    let ws = format!("ws://{}/ws", up.http_addr);
    let secret = gateway::JwtSecret::new(&endpoints["CROUPIER_JWT_SECRET"])?;
    let token = |player: &str| {
        let player = domain::PlayerId::parse(player).expect("player");
        gateway::auth::mint(
            &secret,
            &player,
            Duration::from_secs(3600),
            gateway::auth::now_unix(),
        )
    };
    for i in 0..BETTORS {
        let out = up
            .croupier()
            .args([
                "wallet",
                "deposit",
                "--player",
                &format!("bd-{i}"),
                "--amount",
                "10000000",
                "--deposit-id",
                &format!("bench-degraded-{i}"),
            ])
            .output()?;
        if !out.status.success() {
            bail!("deposit: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    let loadgen = up
        .croupier()
        .args([
            "loadgen",
            "--url",
            &ws,
            "--clients",
            "300",
            "--bettors",
            "10",
            "--duration",
            "900s",
            "--quiet",
            "--nats-url",
            &endpoints["NATS_URL"],
            "--database-url",
            &endpoints["DATABASE_URL"],
            "--jwt-secret",
            &endpoints["CROUPIER_JWT_SECRET"],
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _loadgen = Kill(loadgen);

    let seen = Arc::new(Mutex::new(Seen::default()));
    let answers: Answers = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(observe(
        format!("{ws}?token={}", token("bd-observer")),
        seen.clone(),
    ));
    for i in 0..BETTORS {
        tasks.spawn(bettor(
            format!("{ws}?token={}", token(&format!("bd-{i}"))),
            seen.clone(),
            answers.clone(),
            i,
        ));
    }
    // Betting on before the first drill.
    status_after(&seen, Instant::now() - Duration::from_secs(600), true)
        .await
        .context("betting never came on")?;

    // No false alarms: the load alone, then a 100k-bet round written and settled.
    let quiet_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let quiet_switches = seen
        .lock()
        .expect("seen")
        .statuses
        .iter()
        .filter(|(at, _, _)| *at >= quiet_from)
        .count();
    eprintln!("bench-degraded: 100k bets on one round…");
    let (big_placed, big_settled_after, big_switches) =
        big_settlement(&endpoints["DATABASE_URL"], &seen).await?;

    let mut drills = Vec::new();
    for name in ["pg-stop", "pg-freeze", "pg-slow", "nats-stop"] {
        eprintln!("bench-degraded: drill {name}…");
        drills.push(drill(&up, &seen, name).await?);
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    tasks.abort_all();

    // The stream, for missed and doubled events.
    let bus =
        bus::NatsBus::connect(&endpoints["NATS_URL"], "", bus::NatsOptions::default()).await?;
    let events = seen.lock().expect("seen").events.clone();
    let first = events.iter().map(|(_, s)| *s).min().unwrap_or(1);
    let last = events.iter().map(|(_, s)| *s).max().unwrap_or(0);
    let mut stored = BTreeSet::new();
    let mut feed = bus.replay("TABLES", "table.roulette-1.>", first).await?;
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(10), feed.next()).await {
        let message = message?;
        if message.seq > last {
            break;
        }
        stored.insert(message.seq);
        if message.seq == last {
            break;
        }
    }

    // Lost and double-settled accepted bets.
    let (db, connection) =
        tokio_postgres::connect(&endpoints["DATABASE_URL"], tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let answers = answers.lock().expect("answers").clone();
    let accepted: Vec<uuid::Uuid> = answers
        .iter()
        .filter(|(_, a, _, _)| *a == Answer::Accepted)
        .filter_map(|(_, _, id, _)| uuid::Uuid::parse_str(id).ok())
        .collect();
    // Each accepted bet's `bet_placed` event (by the event id derived from its bet id), the
    // phase of its round, and whether it has a result.
    let event_ids: Vec<uuid::Uuid> = accepted
        .iter()
        .map(|id| gs::ledger::bet_placed_id(&domain::BetId::from_uuid(*id)))
        .collect();
    let rows = db
        .query(
            "SELECT e.data, EXISTS (SELECT 1 FROM bet_results x WHERE x.bet_id = a.bet_id)
             FROM unnest($1::uuid[], $2::uuid[]) AS a(event_id, bet_id)
             JOIN events e ON e.event_id = a.event_id",
            &[&event_ids, &accepted],
        )
        .await
        .context("look the accepted bets up")?;
    let lost = (accepted.len() - rows.len()) as i64;
    // The rounds' phases, read once for all the bets.
    let settled: std::collections::HashSet<(String, i64)> = db
        .query(
            "SELECT table_id, round FROM rounds WHERE phase = 'settled'",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut unsettled = 0i64;
    for row in rows {
        let event = protocol::decode_event(row.get::<_, &[u8]>(0)).context("a stored bet")?;
        let protocol::EventBody::BetPlaced(placed) = event.body else {
            anyhow::bail!("an accepted bet's event is not a bet_placed");
        };
        let round = (placed.table.to_string(), placed.round.get() as i64);
        if settled.contains(&round) && !row.get::<_, bool>(1) {
            unsettled += 1;
        }
    }
    let replay = up.croupier().arg("replay").stdout(Stdio::null()).status()?;

    println!("\n## just bench-degraded");
    println!(
        "stack: `just up` (release), rounds 6 s betting; load: loadgen 300 clients / 10 bettors + {BETTORS} bench bettors (1 bet / 100 ms each); faults held {FAULT_FOR} s\n"
    );
    println!(
        "| drill | reason | betting off after (s) | on after healthy (s) | accepted | BETTING_UNAVAILABLE | TIMEOUT | other | events during outage | missed | doubled |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let seqs: Vec<(Instant, u64)> = events;
    for d in &drills {
        let end = d.on.unwrap_or(d.healed) + Duration::from_secs(2);
        let mut counts: HashMap<Answer, usize> = HashMap::new();
        let mut others: std::collections::BTreeMap<&str, usize> = Default::default();
        for (at, answer, _, code) in &answers {
            if *at >= d.fault && *at <= end {
                *counts.entry(*answer).or_default() += 1;
                if *answer == Answer::Other {
                    *others.entry(code.as_str()).or_default() += 1;
                }
            }
        }
        let others: Vec<String> = others.iter().map(|(c, n)| format!("{n} {c}")).collect();
        let others = if others.is_empty() {
            "0".to_string()
        } else {
            others.join(", ")
        };
        let off_at = d.off.as_ref().map(|(at, _)| *at);
        let during = match (off_at, d.on) {
            (Some(off), Some(on)) => seqs
                .iter()
                .filter(|(at, _)| *at >= off && *at <= on)
                .count(),
            _ => 0,
        };
        // The table events of the window against the stream.
        let window_end = end + Duration::from_secs(3);
        let before = seqs
            .iter()
            .filter(|(at, _)| *at < d.fault)
            .map(|(_, s)| *s)
            .max()
            .unwrap_or(first.saturating_sub(1));
        let delivered: Vec<u64> = seqs
            .iter()
            .filter(|(at, _)| *at >= d.fault && *at <= window_end)
            .map(|(_, s)| *s)
            .collect();
        let top = delivered.iter().copied().max().unwrap_or(before);
        let distinct: BTreeSet<u64> = delivered.iter().copied().collect();
        let doubled = delivered.len() - distinct.len();
        let missed = stored
            .range(before + 1..=top)
            .filter(|s| !distinct.contains(s))
            .count();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            d.name,
            d.off.as_ref().map_or("-", |(_, r)| r.as_str()),
            off_at.map_or("never".into(), |at| secs(at - d.fault)),
            d.on.map_or("never".into(), |at| secs(at - d.healed)),
            counts.get(&Answer::Accepted).unwrap_or(&0),
            counts.get(&Answer::Unavailable).unwrap_or(&0),
            counts.get(&Answer::Timeout).unwrap_or(&0),
            others,
            during,
            missed,
            doubled,
        );
    }
    println!(
        "\nno false alarms: betting switched {quiet_switches} times in 30 s of the load alone; {big_placed} bets written into one round and settled (round_settled seen {} s after the first write) with {big_switches} switches",
        secs(big_settled_after)
    );
    println!(
        "\nwhole run: {} bets answered, {} accepted; lost (accepted, not in the store): {lost}; accepted on a settled round without a result: {unsettled}; `croupier replay` exit: {}",
        answers.len(),
        accepted.len(),
        replay.code().map_or("signal".into(), |c| c.to_string())
    );
    Ok(())
}

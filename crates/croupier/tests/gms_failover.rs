//! GMS leadership across processes (issue 6): two `croupier run gms` processes on one table,
//! real nats-server. Exactly one publishes; when the leader dies (`kill -9`) or freezes
//! (SIGSTOP, then SIGCONT after a takeover) the other goes on from the next phase, and the
//! table's stream read back from sequence 1 has no gap, no duplicate, and verifies.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use bus::{Bus, Kv, NatsBus};
use common::{BIN, Env, Running, free_addr};
use domain::{RoundEvent, RoundId, TableId};
use futures_util::StreamExt;

const WAIT: Duration = Duration::from_secs(90);
const TABLE: &str = "roulette-1";
/// A short lease so that a takeover after a crash takes seconds; renewed every 500 ms.
const LEASE_TTL_MS: &str = "1500";

struct Gms {
    process: Running,
    metrics_addr: String,
}

impl Gms {
    fn pid(&self) -> u32 {
        self.process.0.id()
    }

    fn start(env: &Env) -> Gms {
        let metrics_addr = free_addr();
        let child = env
            .apply(&mut Command::new(BIN))
            .args(["run", "gms"])
            .env("CROUPIER_METRICS_ADDR", &metrics_addr)
            .env("CROUPIER_LEASE_TTL_MS", LEASE_TTL_MS)
            .stdin(Stdio::null())
            .spawn()
            .expect("start croupier run gms");
        Gms {
            process: Running(child),
            metrics_addr,
        }
    }

    /// How many transitions this process has published, from its `/metrics`.
    async fn published(&self) -> u64 {
        let text = http_get(&self.metrics_addr, "/metrics")
            .await
            .unwrap_or_default();
        text.lines()
            .filter(|line| line.starts_with("gms_transitions_published_total"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|n| n as u64)
            .sum()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {}", self.pid());
    }
}

/// GMS never touches Postgres.
fn env() -> Env {
    testkit::init_logging();
    Env::without_database()
}

async fn bus(env: &Env) -> NatsBus {
    let bus = NatsBus::connect(&env.nats_url, &env.prefix, bus::NatsOptions::default())
        .await
        .expect("connect");
    bus.setup(&bus::Definitions::croupier())
        .await
        .expect("setup");
    bus
}

/// The pid in the table's lease, once someone leads it.
async fn leader_pid(bus: &NatsBus) -> u32 {
    let kv = bus
        .kv(protocol::subject::GMS_LEASES_BUCKET)
        .await
        .expect("leases");
    tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(Some(entry)) = kv.get(TABLE).await {
                if let Ok(record) = gms::LeaseRecord::decode(&entry.value) {
                    if record.owner.is_some() {
                        return record.pid;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a leader")
}

#[derive(Debug)]
struct Transition {
    msg_id: Option<String>,
    round: u64,
    event: RoundEvent,
}

/// The table's transitions from sequence 1 until `rounds` rounds after `after` have ended.
async fn rounds_ended_after(bus: &NatsBus, after: u64, rounds: usize) -> Vec<Transition> {
    let mut replay = bus
        .replay(
            protocol::subject::TABLES_STREAM,
            &format!("table.{TABLE}.round"),
            1,
        )
        .await
        .expect("replay");
    let mut seen: Vec<Transition> = Vec::new();
    tokio::time::timeout(WAIT, async {
        loop {
            let ended = seen
                .iter()
                .filter(|t| {
                    t.round > after
                        && matches!(
                            t.event,
                            RoundEvent::OutcomeDeclared { .. } | RoundEvent::RoundVoided { .. }
                        )
                })
                .count();
            if ended >= rounds {
                return;
            }
            let message = replay
                .next()
                .await
                .expect("replay goes on")
                .expect("message");
            let event = protocol::decode_event(&message.payload).expect("event");
            seen.push(Transition {
                msg_id: message.msg_id,
                round: event.round().expect("round").get(),
                event: event.body.to_round_event().expect("round event"),
            });
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{rounds} rounds after {after} never ended: {seen:#?}"));
    seen
}

/// Each round exactly open, closed, declared (or voided), consecutive rounds from 1, no msg
/// id twice, and every outcome verifies with `domain::fairness::verify`. Returns the number of
/// declared rounds.
fn check_stream(transitions: &[Transition]) -> usize {
    let table = TableId::parse(TABLE).expect("table");
    let mut ids = HashSet::new();
    let (mut round, mut previous, mut commitment, mut declared) = (1, None, None, 0);
    for t in transitions {
        let kind = t.event.kind();
        let msg_id = t.msg_id.clone().expect("msg id");
        assert_eq!(msg_id, format!("{TABLE}:{}:{kind}", t.round));
        assert!(ids.insert(msg_id.clone()), "{msg_id} stored twice");
        let allowed = match previous {
            None | Some("outcome_declared" | "round_voided") => kind == "round_opened",
            Some("round_opened") => matches!(kind, "betting_closed" | "round_voided"),
            _ => matches!(kind, "outcome_declared" | "round_voided"),
        };
        assert!(allowed, "{kind} after {previous:?}: {transitions:#?}");
        if kind == "round_opened" && previous.is_some() {
            round += 1;
        }
        assert_eq!(t.round, round, "no round skipped: {transitions:#?}");
        match &t.event {
            RoundEvent::RoundOpened { seed_hash, .. } => commitment = Some(*seed_hash),
            RoundEvent::OutcomeDeclared {
                outcome,
                server_seed,
            } => {
                domain::fairness::verify(
                    &table,
                    RoundId::new(t.round).expect("round"),
                    &commitment.expect("commitment"),
                    server_seed,
                    *outcome,
                )
                .expect("the round verifies");
                declared += 1;
            }
            _ => {}
        }
        previous = Some(kind);
    }
    declared
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_is_killed_the_standby_goes_on_with_no_gap_and_no_duplicate() {
    let env = env();
    let bus = bus(&env).await;
    let a = Gms::start(&env);
    let b = Gms::start(&env);
    rounds_ended_after(&bus, 0, 2).await;

    let pid = leader_pid(&bus).await;
    let (leader, standby) = if a.pid() == pid { (a, b) } else { (b, a) };
    assert!(leader.published().await > 0, "the leader publishes");
    assert_eq!(
        standby.published().await,
        0,
        "the standby publishes nothing"
    );

    let before = rounds_ended_after(&bus, 0, 2).await;
    let round_at_kill = before.last().expect("transitions").round;
    leader.signal("-KILL");
    drop(leader);

    let transitions = rounds_ended_after(&bus, round_at_kill, 2).await;
    assert_eq!(leader_pid(&bus).await, standby.pid());
    assert!(standby.published().await > 0, "the standby took over");
    assert!(check_stream(&transitions) >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_that_wakes_after_a_takeover_does_not_fork_the_table() {
    let env = env();
    let bus = bus(&env).await;
    let a = Gms::start(&env);
    let b = Gms::start(&env);
    rounds_ended_after(&bus, 0, 1).await;
    let pid = leader_pid(&bus).await;
    let (leader, standby) = if a.pid() == pid { (a, b) } else { (b, a) };

    leader.signal("-STOP");
    let frozen_at = rounds_ended_after(&bus, 0, 1).await;
    let round_at_freeze = frozen_at.last().expect("transitions").round;
    // The standby takes over and goes on while the leader sleeps with its timers due.
    rounds_ended_after(&bus, round_at_freeze, 1).await;
    assert_eq!(leader_pid(&bus).await, standby.pid());
    leader.signal("-CONT");

    let woke_at = rounds_ended_after(&bus, 0, 1)
        .await
        .last()
        .expect("transitions")
        .round;
    let transitions = rounds_ended_after(&bus, woke_at, 2).await;
    assert_eq!(
        leader_pid(&bus).await,
        standby.pid(),
        "the new leader keeps the table"
    );
    assert!(check_stream(&transitions) >= 3);
    drop(leader);
}

/// `GET path` by hand over TCP; the body.
async fn http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response).to_string();
    Some(text.split_once("\r\n\r\n")?.1.to_string())
}

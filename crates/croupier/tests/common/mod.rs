//! Shared by the end-to-end tests: the roles as separate `croupier` processes against the
//! harness's real servers, and a client that plays a round through the gateway.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use testkit::WsClient;

pub const SECRET: &str = "end-to-end-test-secret-of-32-bytes!!";
pub const BIN: &str = env!("CARGO_BIN_EXE_croupier");

/// The environment every process of one test shares.
#[derive(Debug, Clone)]
pub struct Env {
    pub nats_url: String,
    pub prefix: String,
    pub database_url: String,
    pub http_addr: String,
}

impl Env {
    pub fn apply<'a>(&self, command: &'a mut Command) -> &'a mut Command {
        command
            .env("NATS_URL", &self.nats_url)
            .env("CROUPIER_NATS_PREFIX", &self.prefix)
            .env("DATABASE_URL", &self.database_url)
            .env("CROUPIER_HTTP_ADDR", &self.http_addr)
            .env("CROUPIER_JWT_SECRET", SECRET)
            .env(
                "CROUPIER_SEED_SECRET",
                "end-to-end-seed-secret-of-32-bytes!!",
            )
            .env("CROUPIER_BETTING_MS", "1500")
            .env("CROUPIER_RESULT_MS", "200")
            .env("CROUPIER_PAUSE_MS", "300")
            // Never pick up a developer's running stack.
            .env("CROUPIER_ENDPOINTS_FILE", "/nonexistent")
            .env(
                "RUST_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
    }

    /// Runs `croupier <args>` to completion and returns its stdout.
    pub fn croupier(&self, args: &[&str]) -> String {
        let output = self
            .apply(&mut Command::new(BIN))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run croupier");
        assert!(
            output.status.success(),
            "croupier {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Starts `croupier run <role>` in the background; killed when the guard drops.
    pub fn spawn(&self, args: &[&str]) -> Running {
        let child = self
            .apply(&mut Command::new(BIN))
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("start croupier");
        Running(child)
    }
}

/// A background process, stopped (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").to_string()
}

/// Waits until the gateway's `/readyz` answers 200.
pub async fn wait_ready(http_addr: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if readyz(http_addr).await == Some(200) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gateway at {http_addr} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status code of `GET /readyz`, by hand over TCP (no HTTP client crate needed).
pub async fn readyz(http_addr: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(http_addr).await.ok()?;
    stream
        .write_all(
            format!("GET /readyz HTTP/1.1\r\nHost: {http_addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace().nth(1)?.parse().ok()
}

const WAIT: Duration = Duration::from_secs(30);

fn is_event(message: &Value, channel: &str, kind: &str) -> bool {
    message["type"] == "event" && message["channel"] == channel && message["event"]["kind"] == kind
}

/// What a round played through the gateway showed the client.
#[derive(Debug)]
pub struct PlayedRound {
    pub round: u64,
    pub seed_hash: String,
    pub balance_after_bet: i64,
    pub outcome: u8,
    pub server_seed: String,
    pub payout: i64,
    pub balance_after_settlement: i64,
}

/// Connects as `player` with `token`, subscribes to the table and the player's channel, waits
/// for a round to open, bets `amount` on red, and follows the round to its settlement.
pub async fn play_a_round(http_addr: &str, token: &str, player: &str, amount: i64) -> PlayedRound {
    let url = format!("ws://{http_addr}/ws?token={token}");
    let mut client = WsClient::connect(&url, Some("croupier.v1.json"))
        .await
        .expect("connect");
    assert_eq!(
        client.subprotocol.as_deref(),
        Some("croupier.v1.json"),
        "the chosen subprotocol is echoed"
    );
    let welcome = client.recv(WAIT).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome", "welcome comes first: {welcome}");
    assert_eq!(welcome["player"], player);

    // Malformed input is answered and the connection stays usable.
    client.send_text("{not json").await.expect("send");
    let answer = client.recv(WAIT).await.expect("answer to garbage");
    assert_eq!(answer["type"], "error");
    assert_eq!(answer["code"], "BAD_MESSAGE");

    let table = "table.roulette-1";
    let wallet = format!("player.{player}");
    for channel in [table, wallet.as_str()] {
        client
            .send_json(&json!({"type": "subscribe", "channel": channel}))
            .await
            .expect("subscribe");
        let subscribed = client
            .recv_until(WAIT, |m| {
                m["type"] == "subscribed" && m["channel"] == channel
            })
            .await
            .expect("subscribed");
        assert!(subscribed["seq"].is_u64(), "{subscribed}");
    }

    let opened = client
        .recv_until(WAIT, |m| is_event(m, table, "round_opened"))
        .await
        .expect("round_opened");
    let round = opened["event"]["round"].as_u64().expect("round");
    let seed_hash = opened["event"]["seed_hash"]
        .as_str()
        .expect("seed_hash")
        .to_string();
    assert_eq!(seed_hash.len(), 64);

    let bet_id = uuid::Uuid::new_v4().to_string();
    client
        .send_json(&json!({
            "type": "bet", "request_id": "r1", "bet_id": bet_id, "table": "roulette-1",
            "round": round, "selection": {"kind": "red"}, "amount": amount
        }))
        .await
        .expect("bet");
    let result = client
        .recv_until(WAIT, |m| m["request_id"] == "r1")
        .await
        .expect("bet answer");
    assert_eq!(
        result["type"], "bet_result",
        "the bet is accepted: {result}"
    );
    assert_eq!(result["status"], "accepted");
    assert_eq!(result["bet_id"], bet_id.as_str());
    let balance_after_bet = result["balance"].as_i64().expect("balance");

    let declared = client
        .recv_until(WAIT, |m| {
            is_event(m, table, "outcome_declared") && m["event"]["round"] == round
        })
        .await
        .expect("outcome_declared");
    let outcome = declared["event"]["outcome"].as_u64().expect("outcome") as u8;
    let server_seed = declared["event"]["server_seed"]
        .as_str()
        .expect("seed")
        .to_string();

    let settled = client
        .recv_until(WAIT, |m| {
            is_event(m, &wallet, "bet_settled") && m["event"]["bet_id"] == bet_id.as_str()
        })
        .await
        .expect("bet_settled");
    let payout = settled["event"]["payout"].as_i64().expect("payout");
    let balance_after_settlement = settled["event"]["balance"].as_i64().expect("balance");
    client.close().await;
    PlayedRound {
        round,
        seed_hash,
        balance_after_bet,
        outcome,
        server_seed,
        payout,
        balance_after_settlement,
    }
}

/// Checks a played round against the domain: the seed matches its commitment, the outcome is
/// the fair one, and the payout is what the odds table gives for red.
pub fn check_round(played: &PlayedRound, amount: i64, balance_before: i64) {
    let table = domain::TableId::parse("roulette-1").expect("table");
    let round = domain::RoundId::new(played.round).expect("round");
    let seed = domain::ServerSeed::from_hex(&played.server_seed).expect("seed hex");
    let committed = domain::SeedHash::from_hex(&played.seed_hash).expect("hash hex");
    let outcome = domain::Outcome::new(played.outcome).expect("outcome");
    domain::fairness::verify(&table, round, &committed, &seed, outcome)
        .expect("the round verifies");
    let red = domain::Selection::parse(domain::RawSelection::Red).expect("red");
    let stake = domain::Money::stake(amount).expect("stake");
    let expected = red.payout(stake, outcome).expect("payout").get();
    assert_eq!(
        played.payout, expected,
        "red pays {expected} on {}",
        played.outcome
    );
    assert_eq!(played.balance_after_bet, balance_before - amount);
    assert_eq!(
        played.balance_after_settlement,
        balance_before - amount + expected
    );
}

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
    /// The usual environment of an end-to-end test: the harness's NATS with a fresh prefix, a
    /// freshly migrated database (returned too: it lives as long as the test holds it) and a
    /// free gateway address.
    pub async fn fresh() -> (Env, testkit::TestDb) {
        let nats = testkit::nats().expect("nats");
        let db = migrated_database().await;
        let env = Env {
            nats_url: nats.url,
            prefix: nats.prefix,
            database_url: db.url.clone(),
            http_addr: free_addr(),
        };
        (env, db)
    }

    /// The environment of a test that needs no Postgres (a gateway or GMS alone): the
    /// harness's NATS with a fresh prefix, a database URL nothing answers, and a free gateway
    /// address.
    pub fn without_database() -> Env {
        let nats = testkit::nats().expect("nats");
        Env {
            nats_url: nats.url,
            prefix: nats.prefix,
            database_url: "postgres://unused@127.0.0.1:1/unused".into(),
            http_addr: free_addr(),
        }
    }

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

    /// Runs `croupier replay` on the environment's database and bus, failing the test with its
    /// report when it finds the history wrong.
    pub fn replay_ok(&self) {
        let output = self
            .apply(&mut Command::new(BIN))
            .arg("replay")
            .stdin(Stdio::null())
            .output()
            .expect("run replay");
        assert!(
            output.status.success(),
            "replay failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
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

    /// `croupier wallet deposit`: credits `amount` to `player`, once per `deposit_id`.
    pub fn deposit(&self, player: &str, amount: i64, deposit_id: &str) -> String {
        self.croupier(&[
            "wallet",
            "deposit",
            "--player",
            player,
            "--amount",
            &amount.to_string(),
            "--deposit-id",
            deposit_id,
        ])
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
    // (A `status` may come first: betting switched on as the stack finished starting.)
    let answer = client
        .recv_until(WAIT, |m| m["type"] != "status")
        .await
        .expect("answer to garbage");
    assert_eq!(answer["type"], "error");
    assert_eq!(answer["code"], "BAD_MESSAGE");

    let table = "table.roulette-1";
    let wallet = format!("player.{player}");
    for channel in [table, wallet.as_str()] {
        // A channel the gateway cannot open right now (its bus is moving to another server) is
        // answered OVERLOADED, "retry": a client retries after a pause.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            client
                .send_json(&json!({"type": "subscribe", "channel": channel}))
                .await
                .expect("subscribe");
            let subscribed = client
                .recv_until(WAIT, |m| {
                    (m["type"] == "subscribed" && m["channel"] == channel) || m["type"] == "error"
                })
                .await
                .unwrap_or_else(|e| {
                    panic!("no answer to subscribe {channel} on {http_addr}: {e:?}")
                });
            if subscribed["code"] == "OVERLOADED" && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
            assert!(subscribed["seq"].is_u64(), "{subscribed}");
            break;
        }
    }

    // A round with time left to bet: one relayed late (the gateway caught up after its bus
    // moved) may already be closing, and its bet would rightly be refused.
    let opened = client
        .recv_until(WAIT, |m| {
            is_event(m, table, "round_opened")
                && m["event"]["closes_at"]
                    .as_str()
                    .and_then(|t| domain::Timestamp::parse(t).ok())
                    .is_some_and(|closes| {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .expect("clock")
                            .as_micros() as i64;
                        closes.unix_micros() - now > 500_000
                    })
        })
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

// ---------------------------------------------------------------------------------------------
// Gateway contract tests (issue 8): GMS and GS as `croupier` processes on real NATS and
// Postgres, gateways in this process (so a test can run two nodes, shut one down, shorten its
// timeouts), clients over real WebSockets.

/// How a [`Stack`] is put together.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Run `croupier run gms` (rounds of 1.5 s betting).
    pub gms: bool,
    /// Run `croupier run gs`.
    pub gs: bool,
    /// Gateway nodes in this process.
    pub gateways: usize,
    pub idle_timeout: Duration,
    pub bet_timeout: Duration,
    pub dev_tokens: bool,
    /// Players credited 10 000 before anything starts.
    pub deposits: Vec<&'static str>,
    /// More flags for `croupier run gms`, e.g. a longer `--betting-ms`.
    pub gms_args: Vec<&'static str>,
    /// A Postgres server of the stack's own, for tests that stop, freeze or restart it.
    pub private_postgres: bool,
    /// A nats-server of the stack's own, for tests that stop or restart it.
    pub private_nats: bool,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            gms: true,
            gs: true,
            gateways: 1,
            idle_timeout: Duration::from_secs(30),
            bet_timeout: Duration::from_secs(5),
            dev_tokens: false,
            deposits: vec!["alice"],
            gms_args: Vec::new(),
            private_postgres: false,
            private_nats: false,
        }
    }
}

/// A gateway served by this process.
#[derive(Debug)]
pub struct GatewayNode {
    pub addr: String,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub done: tokio::task::JoinHandle<()>,
}

impl GatewayNode {
    /// A gateway node in this process on `bus`, with the tests' secret, a 2 s drain and what
    /// `configure` sets; returns once it answers `/readyz`.
    pub async fn start(
        bus: bus::NatsBus,
        configure: impl FnOnce(&mut gateway::GatewayConfig),
    ) -> GatewayNode {
        let secret = gateway::JwtSecret::new(SECRET).expect("secret");
        let mut config = gateway::GatewayConfig::new("127.0.0.1:0".parse().expect("addr"), secret);
        config.drain_timeout = Duration::from_secs(2);
        configure(&mut config);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let node = gateway::Gateway::build(config, bus, shutdown.clone())
            .await
            .expect("bind gateway");
        let addr = node.local_addr().expect("addr").to_string();
        let done = tokio::spawn(node.run());
        wait_ready(&addr).await;
        GatewayNode {
            addr,
            shutdown,
            done,
        }
    }

    /// Shuts the node down and waits (a while) for it to end.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.done).await;
    }

    pub fn ws_url(&self, token: Option<&str>) -> String {
        match token {
            Some(token) => format!("ws://{}/ws?token={token}", self.addr),
            None => format!("ws://{}/ws", self.addr),
        }
    }
}

/// Real NATS and Postgres, the services, and gateway nodes.
#[derive(Debug)]
pub struct Stack {
    pub env: Env,
    /// A bus handle of the test's own (same prefix), e.g. to write the betting status.
    pub bus: bus::NatsBus,
    pub gateways: Vec<GatewayNode>,
    pub processes: Vec<Running>,
    pub db: testkit::TestDb,
    /// The stack's own Postgres, with `private_postgres`.
    pub pg: Option<testkit::PgServer>,
    /// The stack's own nats-server, with `private_nats`.
    pub nats: Option<testkit::NatsServer>,
}

pub async fn migrated_database() -> testkit::TestDb {
    testkit::postgres()
        .expect("postgres")
        .database(
            &format!("croupier-{}", store::migrations_fingerprint()),
            |url| async move { store::migrate_url(&url).await.map(|_| ()) },
        )
        .await
        .expect("database")
}

impl Stack {
    pub async fn start(options: StackOptions) -> Stack {
        testkit::init_logging();
        let (nats, nats_server) = if options.private_nats {
            let server = testkit::NatsServer::start().expect("a nats-server of our own");
            let nats = testkit::TestNats {
                url: server.url(),
                prefix: testkit::unique_prefix(),
            };
            (nats, Some(server))
        } else {
            (testkit::nats().expect("nats"), None)
        };
        let (db, pg) = if options.private_postgres {
            let server = testkit::PgServer::start(testkit::PgServerOptions::default())
                .expect("a Postgres of our own");
            let db = server
                .databases()
                .database("croupier", |url| async move {
                    store::migrate_url(&url).await.map(|_| ())
                })
                .await
                .expect("database");
            (db, Some(server))
        } else {
            (migrated_database().await, None)
        };
        let env = Env {
            nats_url: nats.url.clone(),
            prefix: nats.prefix.clone(),
            database_url: db.url.clone(),
            http_addr: free_addr(),
        };
        for player in &options.deposits {
            env.deposit(player, 10_000, &format!("contract-{player}"));
        }
        let bus = bus::NatsBus::connect(&nats.url, &nats.prefix, bus::NatsOptions::default())
            .await
            .expect("connect to NATS");
        bus::Bus::setup(&bus, &croupier_definitions())
            .await
            .expect("set up streams");
        let mut processes = Vec::new();
        if options.gs {
            processes.push(env.spawn(&["run", "gs"]));
        }
        if options.gms {
            let mut args = vec!["run", "gms"];
            args.extend(options.gms_args.iter().copied());
            processes.push(env.spawn(&args));
        }
        if options.gs {
            // Deposits reach the player channels through GS's outbox: wait for them, so a test
            // that subscribes sees its players' balances.
            for player in &options.deposits {
                let subject = format!("player.{player}.wallet");
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while bus::Bus::last_message(&bus, "PLAYERS", &subject)
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "the deposit of {player} was never published"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        if options.gs {
            // GS takes bets once it has caught up with the stream, and says so in the status.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            let kv = bus::Bus::kv(&bus, "status").await.expect("status bucket");
            loop {
                let entry = bus::Kv::get(&kv, "betting").await.ok().flatten();
                let enabled = entry.is_some_and(|e| {
                    protocol::Encoding::MsgPack
                        .decode::<protocol::BettingStatus>(&e.value)
                        .is_ok_and(|s| s.betting == protocol::Betting::Enabled)
                });
                if enabled {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "GS never switched betting on"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let mut stack = Stack {
            env,
            bus,
            gateways: Vec::new(),
            processes,
            db,
            pg,
            nats: nats_server,
        };
        for _ in 0..options.gateways {
            stack.add_gateway(&options).await;
        }
        if options.gs {
            // A gateway learns the status from the buckets as it starts; on a busy machine its
            // first read may miss the heartbeats for a moment (it says `gs_unavailable` until
            // its watch catches up): tests begin once every node says betting is on.
            for node in &stack.gateways {
                wait_betting_enabled(&node.ws_url(None)).await;
            }
        }
        stack
    }

    /// Starts one more gateway node on the stack's bus namespace.
    pub async fn add_gateway(&mut self, options: &StackOptions) {
        let bus = bus::NatsBus::connect(
            &self.env.nats_url,
            &self.env.prefix,
            bus::NatsOptions::default(),
        )
        .await
        .expect("connect to NATS");
        let node = GatewayNode::start(bus, |config| {
            config.idle_timeout = options.idle_timeout;
            config.bet_timeout = options.bet_timeout;
            config.dev_tokens = options.dev_tokens;
            config.metrics = Some(std::sync::Arc::new(|| "# metrics\n".to_string()));
        })
        .await;
        self.gateways.push(node);
    }

    pub fn gateway(&self) -> &GatewayNode {
        &self.gateways[0]
    }

    /// A token for `player` signed with the stack's secret.
    pub fn token(&self, player: &str) -> String {
        let secret = gateway::JwtSecret::new(SECRET).expect("secret");
        let player = domain::PlayerId::parse(player).expect("player");
        gateway::auth::mint(
            &secret,
            &player,
            Duration::from_secs(600),
            gateway::auth::now_unix(),
        )
    }

    /// Switches betting as an operator does: key `operator` of bucket `status`, MessagePack;
    /// GS turns it into the betting status.
    pub async fn set_betting(&self, enabled: bool, reason: &str) {
        put_betting_status(&self.bus, "operator", enabled, reason).await;
    }

    /// Writes the betting status itself (key `betting`), as GS does: for tests that stand in
    /// for GS.
    pub async fn say_betting(&self, enabled: bool, reason: &str) {
        put_betting_status(&self.bus, "betting", enabled, reason).await;
    }
}

/// Puts a betting status under `key` of bucket `status`, MessagePack.
async fn put_betting_status(bus: &bus::NatsBus, key: &str, enabled: bool, reason: &str) {
    use bus::{Bus, Kv};
    let status = protocol::BettingStatus {
        betting: if enabled {
            protocol::Betting::Enabled
        } else {
            protocol::Betting::Disabled
        },
        reason: reason.to_string(),
        at: domain::Timestamp::from_unix_micros(0).expect("timestamp"),
    };
    let kv = bus.kv("status").await.expect("status bucket");
    kv.put(
        key,
        protocol::Encoding::MsgPack.encode(&status).expect("encode"),
    )
    .await
    .expect("put status");
}

/// Makes gateways believe a GS is alive and serving, as a real one says it: a heartbeat in
/// `gs_health` every second and `enabled` in `status.betting`. For tests that stand in for GS
/// (e.g. one that never answers). Stops when the handle is aborted or dropped with the runtime.
pub fn pretend_gs_alive(bus: &bus::NatsBus) -> tokio::task::JoinHandle<()> {
    use bus::{Bus, Kv};
    let bus = bus.clone();
    tokio::spawn(async move {
        let at = domain::Timestamp::from_unix_micros(0).expect("timestamp");
        let heartbeat = protocol::GsHeartbeat {
            instance: "stand-in".into(),
            serving: true,
            store: protocol::GsHeartbeat::HEALTHY.into(),
            at,
        };
        let status = protocol::BettingStatus {
            betting: protocol::Betting::Enabled,
            reason: String::new(),
            at,
        };
        let health = bus.kv("gs_health").await.expect("gs_health bucket");
        let betting = bus.kv("status").await.expect("status bucket");
        betting
            .put(
                "betting",
                protocol::Encoding::MsgPack.encode(&status).expect("encode"),
            )
            .await
            .expect("put status");
        loop {
            let _ = health
                .put(
                    "stand-in",
                    protocol::Encoding::MsgPack
                        .encode(&heartbeat)
                        .expect("encode"),
                )
                .await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Waits until a client connecting to `url` is welcomed with betting `enabled`.
pub async fn wait_betting_enabled(url: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut client = WsClient::connect(url, Some("croupier.v1.json"))
            .await
            .expect("connect");
        let welcome = client.recv(WAIT).await.expect("welcome");
        client.close().await;
        if welcome["betting"] == "enabled" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "betting never came on: {welcome}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The stream and bucket definitions of the services.
pub fn croupier_definitions() -> bus::Definitions {
    bus::Definitions::croupier()
}

/// A client on `url` speaking `subprotocol`, past its `welcome` (returned).
pub async fn connect(url: &str, subprotocol: &str) -> (WsClient, Value) {
    let mut client = WsClient::connect(url, Some(subprotocol))
        .await
        .expect("connect");
    assert_eq!(client.subprotocol.as_deref(), Some(subprotocol));
    let welcome = client.recv(WAIT).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (client, welcome)
}

/// Subscribes and returns the `subscribed` answer.
pub async fn subscribe(client: &mut WsClient, request: Value) -> Value {
    let channel = request["channel"].clone();
    client.send_json(&request).await.expect("subscribe");
    client
        .recv_until(WAIT, |m| {
            (m["type"] == "subscribed" && m["channel"] == channel) || m["type"] == "error"
        })
        .await
        .expect("subscribed")
}

/// Both subprotocols, for tests that run once per encoding.
pub const ENCODINGS: [&str; 2] = ["croupier.v1.json", "croupier.v1.msgpack"];

pub const TABLE: &str = "table.roulette-1";

pub fn is_table_event(message: &Value, kind: &str) -> bool {
    is_event(message, TABLE, kind)
}

/// A bet as a client writes it.
pub fn bet(request_id: &str, round: u64, amount: i64) -> Value {
    json!({
        "type": "bet", "request_id": request_id, "bet_id": uuid::Uuid::new_v4().to_string(),
        "table": "roulette-1", "round": round, "selection": {"kind": "red"}, "amount": amount
    })
}

/// Waits for the next `round_opened` on the table channel and returns its round.
pub async fn next_open_round(client: &mut WsClient) -> u64 {
    let opened = client
        .recv_until(Duration::from_secs(30), |m| {
            is_table_event(m, "round_opened")
        })
        .await
        .expect("round_opened");
    opened["event"]["round"].as_u64().expect("round")
}

/// `GET path` by hand over TCP: the status code and the body.
pub async fn http_get(http_addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(http_addr)
        .await
        .expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {http_addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

// ---------------------------------------------------------------------------------------------
// Gateway limits tests (issue 9): one gateway node in this process on real NATS, nothing else.

/// A gateway node on `nats` (no GMS, GS or Postgres) with its limits set by `configure`, and a
/// bus handle of the test's own on the same namespace (to publish events).
pub async fn lone_gateway(
    nats: &testkit::TestNats,
    configure: impl FnOnce(&mut gateway::GatewayConfig),
) -> (GatewayNode, bus::NatsBus) {
    let connect = || bus::NatsBus::connect(&nats.url, &nats.prefix, bus::NatsOptions::default());
    let bus = connect().await.expect("connect to NATS");
    bus::Bus::setup(&bus, &croupier_definitions())
        .await
        .expect("set up streams");
    let node = GatewayNode::start(connect().await.expect("connect"), configure).await;
    (node, bus)
}

/// Publishes a synthetic `round_opened` of `table` (round `round`) to JetStream as GMS would;
/// returns its stream sequence.
pub async fn publish_round_opened(bus: &bus::NatsBus, table: &str, round: u64) -> u64 {
    let table_id = domain::TableId::parse(table).expect("table");
    let now = domain::Timestamp::from_unix_micros(1_700_000_000_000_000).expect("timestamp");
    let body = protocol::EventBody::RoundOpened(protocol::RoundOpened {
        table: table_id,
        round: domain::RoundId::new(round).expect("round"),
        closes_at: now,
        seed_hash: domain::ServerSeed::from_bytes([7; 32]).hash(),
    });
    let event = protocol::Event::new(uuid::Uuid::new_v4(), now, body);
    let payload = protocol::encode_event(&event).expect("encode");
    let published = bus::Bus::publish(
        bus,
        bus::Publish::new(format!("table.{table}.round"), payload),
    )
    .await
    .expect("publish");
    published.seq
}

// ---------------------------------------------------------------------------------------------
// Observability tests (issue 16 §5): processes with settings of their own on top of `Env`'s.

impl Env {
    /// Starts `croupier <args>` in the background with `vars` set on top of [`Env::apply`]'s
    /// (e.g. `CROUPIER_METRICS_ADDR`); killed when the guard drops.
    pub fn spawn_with(&self, args: &[&str], vars: &[(&str, &str)]) -> Running {
        let mut command = Command::new(BIN);
        self.apply(&mut command);
        for (name, value) in vars {
            command.env(name, value);
        }
        let child = command
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("start croupier");
        Running(child)
    }
}

/// Players `<prefix>0` to `<prefix>{n-1}`, each credited `amount` straight through GS's ledger
/// (deposit id `seed-<player>`, so once per player and database).
pub async fn funded_players(
    store: &store::Store,
    prefix: &str,
    n: usize,
    amount: i64,
) -> Vec<domain::PlayerId> {
    let players: Vec<domain::PlayerId> = (0..n)
        .map(|i| domain::PlayerId::parse(&format!("{prefix}{i}")).expect("player"))
        .collect();
    for who in &players {
        let id = protocol::DepositId::parse(&format!("seed-{who}")).expect("deposit id");
        gs::ledger::deposit(store, who, domain::Money::new(amount).expect("money"), &id)
            .await
            .expect("deposit");
    }
    players
}

// ---------------------------------------------------------------------------------------------
// Stacks started by the recipes (`just up`, `just up-cluster`) and the verdicts of the CLI.

/// `just` from the project's virtualenv, in the workspace root.
pub fn just() -> Command {
    let root = testkit::workspace_root();
    let mut command = Command::new(root.join(".tools/venv/bin/just"));
    command.current_dir(&root);
    command
}

/// Whether `pid` runs (a zombie does not).
pub fn pid_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// A stack's `endpoints.env`, as a map.
pub fn read_endpoints(path: &std::path::Path) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            Some((key.to_string(), value.trim_matches('\'').to_string()))
        })
        .collect()
}

/// Runs `just down` for the stack of this data directory when dropped; when the test is
/// failing, first prints what its processes warned of (the directory goes away with it).
pub struct DownOnDrop(pub std::path::PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for entry in std::fs::read_dir(self.0.join("log"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let notable: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("[ERR]"))
                    .collect();
                let tail = &notable[notable.len().saturating_sub(15)..];
                eprintln!("--- {}:\n{}", entry.path().display(), tail.join("\n"));
            }
        }
        let _ = just()
            .arg("down")
            .env("CROUPIER_DATA_DIR", &self.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `croupier audit-bets --json FILE` on the environment's store: exit code and verdict.
pub fn audit_bets(env: &Env, file: &std::path::Path) -> (i32, Value) {
    let output = env
        .apply(&mut Command::new(BIN))
        .args(["audit-bets", "--json"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .expect("run audit-bets");
    let verdict = serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "audit-bets printed no verdict: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), verdict)
}

/// Waits until no accepted bet in the store is left unsettled (fails the test after `wait`).
pub async fn wait_bets_settled(client: &tokio_postgres::Client, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let open: i64 = client
            .query_one(
                "SELECT (SELECT count(*) FROM events WHERE type = 'bet_placed') \
                      - (SELECT count(*) FROM bet_results)",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        if open == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} bets never settled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

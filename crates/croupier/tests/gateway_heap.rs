//! The gateway's heap per idle WebSocket connection (issue 19), measured with dhat's counting
//! allocator so that a change which makes every connection heavier fails here.
//!
//! Only this test binary runs on the profiling allocator (the `#[global_allocator]` below):
//! no cargo feature, nothing changes for the `croupier` binary or the other tests.
//!
//! The gateway runs in this process on a real nats-server (testkit). Its clients must not:
//! their own allocations would be counted with the gateway's. So the test starts this same
//! test binary again as a child process (`CROUPIER_HEAP_CLIENTS_OF` set, the same test
//! selected), which connects the clients on the parent's word (one line on its stdin), and
//! answers `ready: …` once every client it holds has its `subscribed` answer. The parent counts
//! the heap once a warm-up client per kind is connected (the table's feed, the hub's writers
//! and every lazily built structure exist by then) and again once `CLIENTS` more are
//! connected, subscribed to `table.roulette-1` and idle: the difference, per connection, is
//! what one more idle client costs the node's heap.
//!
//! Two kinds of client: spectators (no token, what `just bench-gateway`'s 14.0 KiB of RSS per
//! connection measures, ADR 0017) and players (a token each, otherwise the same).
//!
//! Run: `cargo test -p croupier --test gateway_heap -- --nocapture` prints the figures. With
//! `GATEWAY_HEAP_PROFILE=/path/dhat.json` it also writes dhat's profile, taken with every
//! client still connected (each allocation site's live bytes are its `eb` field); ADR 0029
//! explains how the breakdown was read from it.

// The counting allocator for this binary only.
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

mod common;

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use testkit::WsClient;

/// Clients of each kind measured (besides one warm-up client per kind).
const CLIENTS: usize = 500;

/// The heap one idle spectator may cost the node, in bytes: measured 3,162 bytes in 10 blocks
/// (debug build, the same on every run), with about 10 % on top. Where they go: ADR 0029 (its
/// "after"; 14,335 bytes in 19 blocks before the session read the socket itself).
const SPECTATOR_BUDGET: u64 = 3_500;
/// The heap one idle player (a connection with a token) may cost: measured 3,170 bytes in 11
/// blocks (its player id, in the token's `Verified`, on top of a spectator's).
const PLAYER_BUDGET: u64 = 3_500;

/// Set in the child process: the gateway's WebSocket URL.
const CHILD_ENV: &str = "CROUPIER_HEAP_CLIENTS_OF";
/// This test's name, which the child process runs.
const TEST_NAME: &str =
    "an_idle_websocket_connection_costs_the_gateway_no_more_heap_than_its_budget";
const TABLE_CHANNEL: &str = "table.roulette-1";
const WAIT: Duration = Duration::from_secs(60);

#[test]
fn an_idle_websocket_connection_costs_the_gateway_no_more_heap_than_its_budget() {
    if let Ok(url) = std::env::var(CHILD_ENV) {
        clients_process(&url);
        return;
    }
    // From the first allocation on; in testing mode nothing is written at the end.
    let profile = std::env::var_os("GATEWAY_HEAP_PROFILE");
    let profiler = match &profile {
        Some(path) => dhat::Profiler::builder()
            .file_name(path)
            .trim_backtraces(Some(40))
            .build(),
        None => dhat::Profiler::builder().testing().build(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ((spectator, player), running) = runtime.block_on(measure());
    // With `GATEWAY_HEAP_PROFILE`, the profile is written now, while every client is still
    // connected.
    drop(profiler);
    runtime.block_on(running.stop());
    runtime.shutdown_timeout(Duration::from_secs(5));

    for (kind, per, budget) in [
        ("spectator", spectator, SPECTATOR_BUDGET),
        ("player", player, PLAYER_BUDGET),
    ] {
        println!(
            "heap per idle {kind} connection: {:.0} bytes in {:.1} blocks (budget {budget} bytes)",
            per.bytes, per.blocks
        );
        assert!(
            per.bytes <= budget as f64,
            "an idle {kind} connection costs {:.0} bytes of heap, over its budget of {budget}: \
             see ADR 0029 for where the bytes go",
            per.bytes
        );
    }
}

/// Heap per connection, averaged over `CLIENTS`.
#[derive(Debug, Clone, Copy)]
struct PerConnection {
    bytes: f64,
    blocks: f64,
}

/// Starts NATS, the gateway and the clients' process; returns the heap per spectator and per
/// player connection.
async fn measure() -> ((PerConnection, PerConnection), Running) {
    testkit::init_logging();
    let nats = testkit::nats().expect("nats");
    let bus = bus::NatsBus::connect(&nats.url, &nats.prefix, bus::NatsOptions::default())
        .await
        .expect("connect to NATS");
    bus::Bus::setup(&bus, &common::croupier_definitions())
        .await
        .expect("set up the streams");
    let node = common::GatewayNode::start(bus, |config| {
        // No pings during the measurement: a ping in flight is not an idle connection's state.
        config.idle_timeout = Duration::from_secs(600);
    })
    .await;
    let addr = node.addr.clone();

    let mut clients = Clients::start(&format!("ws://{addr}/ws"));
    // Warm-up: the table's feed, the hub's writers and whatever else the first connection of
    // each kind builds once for all.
    clients.connect("spectators", 1).await;
    clients.connect("players", 1).await;
    let before = settled().await;
    clients.connect("spectators", CLIENTS).await;
    let spectators = settled().await;
    clients.connect("players", CLIENTS).await;
    let players = settled().await;

    let per = |from: &dhat::HeapStats, to: &dhat::HeapStats| PerConnection {
        bytes: (to.curr_bytes as f64 - from.curr_bytes as f64) / CLIENTS as f64,
        blocks: (to.curr_blocks as f64 - from.curr_blocks as f64) / CLIENTS as f64,
    };
    let result = (per(&before, &spectators), per(&spectators, &players));
    let running = Running {
        clients,
        node,
        _nats: nats,
    };
    (result, running)
}

/// What stays up until the profile is written.
struct Running {
    clients: Clients,
    node: common::GatewayNode,
    _nats: testkit::TestNats,
}

impl Running {
    async fn stop(self) {
        drop(self.clients);
        self.node.stop().await;
    }
}

/// The heap once it stops moving: the gateway has finished with the last client's handshake
/// and `subscribe` (an idle node allocates nothing on its own but the bus client's pings).
async fn settled() -> dhat::HeapStats {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = dhat::HeapStats::get();
    let mut still = 0;
    while still < 4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = dhat::HeapStats::get();
        // Within 4 KiB: under 10 bytes a connection, against thousands measured.
        if now.curr_bytes.abs_diff(last.curr_bytes) <= 4096 {
            still += 1;
        } else {
            still = 0;
        }
        last = now;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway's heap never settled: {} bytes in {} blocks",
            last.curr_bytes,
            last.curr_blocks
        );
    }
    last
}

/// The clients' process, seen from the parent.
struct Clients {
    child: std::process::Child,
    answers: tokio::sync::mpsc::Receiver<String>,
}

impl Clients {
    fn start(url: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("this test binary"))
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the clients' process");
        let stdout = child.stdout.take().expect("the child's stdout");
        let (tx, answers) = tokio::sync::mpsc::channel(16);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.blocking_send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, answers }
    }

    /// Has the child connect `count` more clients of `kind` and waits until they are
    /// subscribed.
    async fn connect(&mut self, kind: &str, count: usize) {
        let stdin = self.child.stdin.as_mut().expect("the child's stdin");
        writeln!(stdin, "{kind} {count}").expect("tell the clients' process");
        stdin.flush().expect("flush");
        loop {
            let line = tokio::time::timeout(WAIT, self.answers.recv())
                .await
                .expect("the clients' process answers within a minute")
                .expect("the clients' process is running");
            // libtest's own `test … ` may begin the line.
            if let Some((_, rest)) = line.split_once("ready: ") {
                assert_eq!(rest, format!("{kind} {count}"), "answer to {kind} {count}");
                return;
            }
        }
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        // Closing its stdin ends the child; kill it too should it hang.
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child: connects clients on each line of stdin (`spectators N` or `players N`), keeps
/// them reading, answers `ready: <line>` once all of them are subscribed, and ends with stdin.
fn clients_process(url: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let secret = gateway::JwtSecret::new(common::SECRET).expect("secret");
    let mut next = 0usize;
    for line in std::io::stdin().lock().lines() {
        let line = line.expect("read a command");
        let (kind, count) = line.split_once(' ').expect("`kind count`");
        let count: usize = count.parse().expect("a count");
        let urls: Vec<String> = (next..next + count)
            .map(|i| match kind {
                "spectators" => url.to_string(),
                "players" => {
                    let player = domain::PlayerId::parse(&format!("heap-{i}")).expect("player");
                    let token = gateway::auth::mint(
                        &secret,
                        &player,
                        Duration::from_secs(3600),
                        gateway::auth::now_unix(),
                    );
                    format!("{url}?token={token}")
                }
                other => panic!("unknown kind of client: {other}"),
            })
            .collect();
        next += count;
        runtime.block_on(async {
            // A few handshakes at a time: well under the node's handshake burst.
            futures_util::stream::iter(urls)
                .map(|url| async move {
                    let (mut client, _) = common::connect(&url, "croupier.v1.json").await;
                    client
                        .send_json(&json!({"type": "subscribe", "channel": TABLE_CHANNEL}))
                        .await
                        .expect("send subscribe");
                    client
                        .recv_until(WAIT, |m| m["type"] == "subscribed")
                        .await
                        .expect("subscribed");
                    // Read on, so that a ping would be answered; nothing else comes.
                    tokio::spawn(keep_reading(client));
                })
                .buffer_unordered(32)
                .collect::<Vec<()>>()
                .await;
        });
        println!("ready: {line}");
        std::io::stdout().flush().expect("flush");
    }
}

async fn keep_reading(mut client: WsClient) {
    while client.recv(Duration::from_secs(3600)).await.is_ok() {}
}

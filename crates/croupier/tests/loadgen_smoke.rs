//! A smoke run of `croupier loadgen` (issue 9): 200 clients on a real gateway and nats-server,
//! 20 of them betting, with loadgen publishing the events itself. It checks that the tool
//! connects everyone, sees the events, matches bets to answers and writes its report — not how
//! fast anything is (that is `just bench-gateway`).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Env, Running, free_addr, wait_ready};

/// Runs `croupier loadgen --quiet --json <file> <args>`; returns its output and its report.
async fn run_loadgen(env: &Env, args: &[&str]) -> (String, serde_json::Value) {
    let report = tempfile::NamedTempFile::new().expect("report file");
    let mut all: Vec<String> = ["loadgen", "--quiet", "--json"].map(String::from).into();
    all.push(report.path().to_string_lossy().to_string());
    all.extend(args.iter().map(|a| a.to_string()));
    let env = env.clone();
    let output = tokio::task::spawn_blocking(move || {
        env.croupier(&all.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .expect("loadgen ran");
    let report = serde_json::from_str(&std::fs::read_to_string(report.path()).expect("report"))
        .expect("JSON report");
    (output, report)
}

/// A gateway on the harness's NATS, ready, with its WebSocket URL.
async fn gateway() -> (Env, Running, String) {
    let env = Env::without_database();
    let gateway = env.spawn(&["run", "gateway"]);
    wait_ready(&env.http_addr).await;
    let url = format!("ws://{}/ws", env.http_addr);
    (env, gateway, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_connects_200_clients_and_reports_what_they_received() {
    let (env, _gateway, url) = gateway().await;
    let (output, report) = run_loadgen(
        &env,
        &[
            "--url",
            &url,
            "--table",
            "smoke",
            "--clients",
            "200",
            "--bettors",
            "20",
            "--duration",
            "3s",
            "--publish-rate",
            "5",
        ],
    )
    .await;
    assert!(output.contains("publish->client"), "{output}");

    assert_eq!(report["connected"], 200, "{report}");
    assert_eq!(report["connect_failures"], 0, "{report}");
    assert_eq!(report["drops"], 0, "{report}");
    let delivered = report["delivered"].as_u64().expect("delivered");
    // 200 clients for about 3 s at 5 events/s: thousands of deliveries, each with a latency.
    assert!(delivered >= 200, "only {delivered} deliveries: {report}");
    assert_eq!(
        report["latency_ms"]["samples"].as_u64(),
        Some(delivered),
        "{report}"
    );
    // The bettors bet on each round opened and read their answers (no game server runs here,
    // so the answers are errors, but each is matched to its bet by request id; those answered
    // while measuring are timed).
    let answered = report["bets_answered"].as_u64().expect("bets_answered");
    assert!(answered >= 20, "only {answered} bets answered: {report}");
    let timed = report["bet_latency_ms"]["samples"]
        .as_u64()
        .expect("samples");
    assert!((1..=answered).contains(&timed), "{report}");
}

/// A table with more clients than one fan-out chunk (256): the gateway's writers share each
/// event's fan-out, chunk by chunk (ADR 0035), and a burst published faster than they write it
/// must still reach every client whole and in order — an event sent to a connection after a
/// later one of its channel would be skipped there, and show as missed. A tenth of the clients
/// stop reading during the burst, so their events also go through the connections' queues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_more_clients_than_one_fan_out_chunk_reaches_each_whole_and_in_order() {
    let (env, _gateway, url) = gateway().await;
    let (_, report) = run_loadgen(
        &env,
        &[
            "--url",
            &url,
            "--table",
            "chunks",
            "--clients",
            "700",
            "--duration",
            "1s",
            "--publish-rate",
            "5",
            "--burst",
            "300",
            "--slow-share",
            "0.1",
            "--check-delivery",
        ],
    )
    .await;
    assert_eq!(report["connected"], 700, "{report}");
    assert_eq!(report["drops"], 0, "{report}");
    assert_eq!(report["delivery_followed"], 700, "{report}");
    assert_eq!(report["missed"], 0, "{report}");
    assert_eq!(report["doubled"], 0, "{report}");
    assert_eq!(report["burst"]["events_per_table"], 300, "{report}");
    let catch_up = report["burst"]["catch_up_ms"]
        .as_f64()
        .expect("catch_up_ms");
    assert!(
        catch_up < 30_000.0,
        "the slow clients never caught up: {report}"
    );
}

/// `--target nats` (the other half of `just bench-gateway`): loadgen speaks the NATS protocol
/// over nats-server's own WebSocket listener and measures the same events there. A server of
/// this test's own, because the listener needs a config block and subjects without a prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_measures_nats_servers_own_websocket_listener_too() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (nats_addr, ws_addr) = (free_addr(), free_addr());
    let port = nats_addr.rsplit_once(':').expect("port").1.to_string();
    let config = dir.path().join("ws.conf");
    std::fs::write(
        &config,
        format!(
            "websocket {{\n  listen: \"{ws_addr}\"\n  no_tls: true\n  compression: false\n}}\n"
        ),
    )
    .expect("write the config");
    let binary = testkit::nats_server_binary().expect("nats-server");
    let _nats = Running(
        Command::new(binary)
            .arg("-c")
            .arg(&config)
            .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
            .arg(dir.path().join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server"),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(&ws_addr).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nats-server's websocket listener never came up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let env = Env {
        nats_url: format!("nats://{nats_addr}"),
        prefix: String::new(),
        database_url: "postgres://unused@127.0.0.1:1/unused".into(),
        http_addr: free_addr(),
    };
    let url = format!("ws://{ws_addr}");
    let (_, report) = run_loadgen(
        &env,
        &[
            "--url",
            &url,
            "--target",
            "nats",
            "--table",
            "smoke",
            "--clients",
            "50",
            "--duration",
            "3s",
            "--publish-rate",
            "5",
        ],
    )
    .await;
    assert_eq!(report["target"], "nats", "{report}");
    assert_eq!(report["connected"], 50, "{report}");
    assert_eq!(report["drops"], 0, "{report}");
    let delivered = report["delivered"].as_u64().expect("delivered");
    assert!(delivered >= 50, "only {delivered} deliveries: {report}");
    // Every delivery's latency came from the MessagePack event's `at` on the bus.
    assert_eq!(
        report["latency_ms"]["samples"].as_u64(),
        Some(delivered),
        "{report}"
    );
}

/// What `just bench-gateway` reads besides latency: clients spread over several tables, each
/// also on its own player channel; the gateway's and the bus's memory at every stage and their
/// CPU time; and a burst that a share of the clients does not read until it is over. The burst's
/// clients must catch up (every client gets every burst event) and nothing may be missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_measures_memory_and_cpu_across_a_burst_on_many_tables_with_player_channels() {
    // A server of this test's own, whose process loadgen can read.
    let nats = testkit::NatsServer::start().expect("private nats");
    let env = Env {
        nats_url: nats.url(),
        prefix: testkit::unique_prefix(),
        database_url: "postgres://unused@127.0.0.1:1/unused".into(),
        http_addr: free_addr(),
    };
    let gateway = env.spawn(&["run", "gateway"]);
    wait_ready(&env.http_addr).await;

    let url = format!("ws://{}/ws", env.http_addr);
    let pid = gateway.0.id().to_string();
    let bus_pid = nats.pid().expect("nats-server runs").to_string();
    let (output, report) = run_loadgen(
        &env,
        &[
            "--url",
            &url,
            "--table",
            "smoke-1,smoke-2,smoke-3",
            "--clients",
            "90",
            "--player-channels",
            "--duration",
            "2s",
            "--publish-rate",
            "5",
            "--burst",
            "50",
            "--slow-share",
            "0.2",
            "--server-pid",
            &pid,
            "--bus-pid",
            &bus_pid,
            "--check-delivery",
        ],
    )
    .await;
    assert!(output.contains("burst"), "{output}");
    assert_eq!(report["connected"], 90, "{report}");
    assert_eq!(report["drops"], 0, "{report}");
    // Every client followed its table and its player channel, and missed nothing on either.
    assert_eq!(report["delivery_followed"], 180, "{report}");
    assert_eq!(report["missed"], 0, "{report}");
    assert_eq!(report["doubled"], 0, "{report}");
    // Each table had its events: every client received some while measuring.
    let delivered = report["delivered"].as_u64().expect("delivered");
    assert!(delivered >= 90, "only {delivered} deliveries: {report}");

    let burst = &report["burst"];
    assert_eq!(burst["slow_clients"], 18, "{report}");
    assert_eq!(burst["events_per_table"], 50, "{report}");
    let catch_up = burst["catch_up_ms"].as_f64().expect("catch_up_ms");
    assert!(
        catch_up < 30_000.0,
        "the slow clients never caught up with the burst: {report}"
    );

    let stages: Vec<&str> = report["memory"]
        .as_array()
        .expect("memory")
        .iter()
        .map(|m| m["at"].as_str().expect("at"))
        .collect();
    assert_eq!(
        stages,
        ["before", "connected", "measured", "burst", "after_burst"],
        "{report}"
    );
    for sample in report["memory"].as_array().expect("memory") {
        assert!(
            sample["server_rss_kib"].as_u64().is_some_and(|k| k > 0),
            "{report}"
        );
        assert!(
            sample["bus_rss_kib"].as_u64().is_some_and(|k| k > 0),
            "{report}"
        );
    }
    assert!(
        report["cpu"]["server_ms_per_event"].as_f64().is_some(),
        "{report}"
    );
    assert!(
        report["cpu"]["bus_ms_per_event"].as_f64().is_some(),
        "{report}"
    );
}

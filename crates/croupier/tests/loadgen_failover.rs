//! `croupier loadgen` over two gateways, one killed with SIGKILL while betting goes on (issue
//! 17 §2): the clients it held connect to the other and resume their channels, bets left
//! unanswered go again with their bet ids, and `--check-delivery` finds no message missed or
//! doubled, judged against the JetStream streams; `croupier audit-bets` agrees with every
//! answer.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    BIN, Env, Running, Stack, StackOptions, audit_bets, free_addr, funded_players, wait_ready,
};

const CLIENTS: u64 = 200;

/// `croupier run gateway` on an address of its own.
async fn gateway(env: &Env) -> (Running, String) {
    let addr = free_addr();
    let node = env.spawn_with(
        &["run", "gateway"],
        &[("CROUPIER_HTTP_ADDR", addr.as_str())],
    );
    wait_ready(&addr).await;
    let url = format!("ws://{addr}/ws");
    common::wait_betting_enabled(&url).await;
    (node, url)
}

/// Sends `SIGNAL` to a process of the test's own.
fn signal(process: &Running, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(process.0.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_gateway_resume_on_the_other_without_a_message_missed_or_doubled() {
    let stack = Stack::start(StackOptions {
        gateways: 0,
        ..StackOptions::default()
    })
    .await;
    let env = stack.env.clone();
    let store = store::Store::new(&store::PoolConfig::new(stack.db.url.clone())).expect("store");
    funded_players(&store, "fo-", 40, 1_000_000).await;
    let (mut doomed, doomed_url) = gateway(&env).await;
    let (survivor, survivor_url) = gateway(&env).await;

    let dir = tempfile::tempdir().expect("dir");
    let bets_file = dir.path().join("bets.tsv");
    let report_file = dir.path().join("report.json");
    let loadgen = env
        .apply(&mut Command::new(BIN))
        .args(["loadgen", "--quiet", "--check-delivery"])
        .args(["--url", &format!("{doomed_url},{survivor_url}")])
        .args(["--clients", &CLIENTS.to_string(), "--bettors", "40"])
        .args(["--players", "fo", "--bet-rate", "100", "--duration", "12s"])
        .arg("--bets-out")
        .arg(&bets_file)
        .arg("--json")
        .arg(&report_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loadgen");

    // About 1.5 s of ramp-up, then a few seconds of betting before the gateway dies. It hangs
    // for half a second first (SIGSTOP), so that it dies with bets it never answered. The
    // survivor is frozen for two seconds as it dies, a round's worth of events, so that the
    // clients come to it only after the channels moved on: only a resume that replays what
    // they missed gives them every message.
    tokio::time::sleep(Duration::from_secs(4)).await;
    signal(&doomed, "STOP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    signal(&survivor, "STOP");
    doomed.0.kill().expect("SIGKILL the gateway");
    let _ = doomed.0.wait();
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&survivor, "CONT");

    let output = tokio::task::spawn_blocking(move || loadgen.wait_with_output())
        .await
        .expect("join")
        .expect("loadgen ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "loadgen failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).expect("report"))
            .expect("JSON report");
    println!("{stdout}");
    let n = |v: &serde_json::Value| {
        v.as_u64()
            .unwrap_or_else(|| panic!("not a count: {v} in {report}"))
    };

    // Client i started on URL i mod 2: half on each gateway.
    assert_eq!(n(&report["connected"]), CLIENTS, "{report}");
    let gateways = report["gateways"].as_array().expect("gateways");
    assert_eq!(gateways.len(), 2, "{report}");
    for gateway in gateways {
        assert_eq!(n(&gateway["connected"]), CLIENTS / 2, "{report}");
    }
    // Every client of the killed gateway came back on the other one and resumed.
    let reconnects = n(&report["reconnects"]);
    assert!(
        reconnects >= CLIENTS / 2,
        "{reconnects} reconnects: {report}"
    );
    assert_eq!(n(&report["reconnect_failures"]), 0, "{report}");
    assert!(
        n(&report["resumes_recovered"]) >= CLIENTS / 2,
        "every table channel of the killed gateway's clients resumes: {report}"
    );
    assert_eq!(n(&report["resumes_not_recovered"]), 0, "{report}");
    // Checked against the streams: something to check, nothing missed, nothing doubled.
    assert!(n(&report["delivery_followed"]) >= CLIENTS, "{report}");
    assert!(n(&report["delivery_expected"]) > CLIENTS, "{report}");
    assert_eq!(n(&report["missed"]), 0, "{report}");
    assert_eq!(n(&report["doubled"]), 0, "{report}");

    // Every bet got a definite answer (those in flight on the killed gateway went again on
    // the other), and the store agrees with each answer once the last rounds are settled.
    let bets = &report["bets"];
    assert!(n(&bets["sent"]) > 100, "{report}");
    assert!(n(&bets["accepted"]) > 0, "{report}");
    assert!(
        n(&bets["resent_after_reconnect"]) > 0,
        "the bets the killed gateway held went again: {report}"
    );
    assert_eq!(n(&bets["unanswered"]), 0, "{report}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, verdict) = audit_bets(&env, &bets_file);
        if code == 0 && verdict["pending"] == 0 {
            assert_eq!(verdict["accepted"], bets["accepted"], "{verdict}");
            break;
        }
        assert!(
            code == 0 && tokio::time::Instant::now() < deadline,
            "audit-bets did not come clean: exit {code}, {verdict}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

//! `just up` as a user runs it (issue 5): in the background with stdin closed, then a client
//! plays a round through the stack it started, the degraded-mode drills turn betting off and on
//! again while the client keeps seeing rounds (issue 16: `just pg-stop`/`pg-start`,
//! `just pg-freeze`, `just pg-slow`), `just replay` exits 0, and `just down` leaves nothing
//! running.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    DownOnDrop, TABLE, check_round, free_addr, just, pid_alive, play_a_round, read_endpoints,
    wait_ready,
};
use testkit::WsClient;

const WAIT: Duration = Duration::from_secs(20);

/// Generous: detection is meant to take ≤ 2 s and recovery ≤ 5 s (`just bench-degraded`).
const SWITCH: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn just_up_serves_a_round_and_just_down_leaves_nothing_running() {
    let data = tempfile::Builder::new()
        .prefix("croupier-just-up-")
        .tempdir()
        .expect("tempdir");
    let http_addr = free_addr();
    let log = std::fs::File::create(data.path().join("up.log")).expect("log");
    let configure = |command: &mut Command| {
        command
            .env("CROUPIER_DATA_DIR", data.path())
            // The debug build `cargo test` has just made: the same recipe and script as the
            // release default (ADR 0024), without a cold optimised build inside the test.
            .env("CROUPIER_PROFILE", "debug")
            .env("CROUPIER_HTTP_ADDR", &http_addr)
            .env("CROUPIER_BETTING_MS", "1500")
            .env("CROUPIER_RESULT_MS", "200")
            .env("CROUPIER_PAUSE_MS", "300")
            .env_remove("NATS_URL")
            .env_remove("DATABASE_URL")
            .env_remove("CROUPIER_JWT_SECRET")
            .env_remove("CROUPIER_SEED_SECRET")
            .env_remove("CROUPIER_NATS_PREFIX");
    };
    let mut up = just();
    up.arg("up")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    configure(&mut up);
    let mut up = up.spawn().expect("just up");
    // Whatever happens below, a failed assertion included, the stack is stopped: a stack left
    // running would keep writing to whatever later takes its ports.
    let _down_on_exit = DownOnDrop(data.path().to_path_buf());

    let endpoints_file = data.path().join("endpoints.env");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while !endpoints_file.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "just up wrote no endpoints.env"
        );
        assert!(
            up.try_wait().expect("poll").is_none(),
            "just up exited early: {}",
            up_log(data.path())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let endpoints = read_endpoints(&endpoints_file);
    for key in [
        "NATS_URL",
        "DATABASE_URL",
        "CROUPIER_HTTP_ADDR",
        "CROUPIER_JWT_SECRET",
    ] {
        assert!(
            endpoints.contains_key(key),
            "{key} missing from endpoints.env"
        );
    }
    assert_eq!(endpoints["CROUPIER_HTTP_ADDR"], http_addr);
    wait_ready(&http_addr).await;

    // The CLI finds the running stack through endpoints.env, as in another shell.
    let token = Command::new(common::BIN)
        .args(["token", "--player", "alice"])
        .env("CROUPIER_ENDPOINTS_FILE", &endpoints_file)
        .env_remove("CROUPIER_JWT_SECRET")
        .output()
        .expect("croupier token");
    assert!(token.status.success());
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();

    // Betting on (every GS serving) before the round is played.
    common::wait_betting_enabled(&format!("ws://{http_addr}/ws")).await;
    // `just up` deposited the demo balance; wait for it to be there before betting.
    let played = play_a_round(&http_addr, &token, "alice", 100).await;
    // alice starts with the demo balance that `just up` deposited.
    check_round(&played, 100, 100_000);

    // The drills: each turns betting off with its reason while rounds go on, then on again.
    let mut client = WsClient::connect(
        &format!("ws://{http_addr}/ws?token={token}"),
        Some("croupier.v1.json"),
    )
    .await
    .expect("connect");
    let welcome = client.recv(WAIT).await.expect("welcome");
    assert_eq!(welcome["betting"], "enabled", "{welcome}");
    client
        .send_json(&serde_json::json!({"type": "subscribe", "channel": TABLE}))
        .await
        .expect("subscribe");
    /// A fault, what heals it (when it does not end by itself), and the reason clients see.
    type Drill<'a> = (&'a [&'a str], Option<&'a [&'a str]>, &'a str);
    let drills: [Drill; 3] = [
        (&["pg-stop"], Some(&["pg-start"]), "store_unavailable"),
        (&["pg-freeze", "6"], None, "store_unavailable"),
        (&["pg-slow", "6"], None, "store_slow"),
    ];
    for (fault, heal, reason) in drills {
        let mut drill = just();
        drill
            .args(fault)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        configure(&mut drill);
        // pg-freeze and pg-slow hold the fault for their SECONDS, then end it themselves.
        let running = drill.spawn().expect("drill");
        let off = client
            .recv_until(SWITCH, |m| {
                m["type"] == "status" && m["betting"] == "disabled"
            })
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: betting never went off: {e:?}"));
        assert_eq!(
            off["reason"],
            reason,
            "{fault:?}: {off}\nGS said:\n{}",
            health_log(data.path())
        );
        client
            .recv_until(SWITCH, |m| {
                m["channel"] == TABLE && m["event"]["kind"] == "round_opened"
            })
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: rounds stopped: {e:?}"));
        let ended = running.wait_with_output().expect("drill ends");
        assert!(
            ended.status.success(),
            "{fault:?}: {}{}",
            String::from_utf8_lossy(&ended.stdout),
            String::from_utf8_lossy(&ended.stderr)
        );
        if let Some(heal) = heal {
            let mut heal_cmd = just();
            heal_cmd.args(heal).stdout(Stdio::null());
            configure(&mut heal_cmd);
            assert!(heal_cmd.status().expect("heal").success(), "{heal:?}");
        }
        client
            .recv_until(SWITCH, |m| {
                m["type"] == "status" && m["betting"] == "enabled"
            })
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: betting never came back: {e:?}"));
    }
    client.close().await;
    // Betting is back: a bet is accepted and settled as before the drills.
    let balance = 100_000 - 100 + played.payout;
    let again = play_a_round(&http_addr, &token, "alice", 100).await;
    check_round(&again, 100, balance);

    let mut replay = just();
    replay
        .args(["replay"])
        .env("CROUPIER_ENDPOINTS_FILE", &endpoints_file)
        .stdout(Stdio::null());
    configure(&mut replay);
    assert!(
        replay.status().expect("just replay").success(),
        "just replay found the history wrong after the drills"
    );

    let pids: Vec<u32> = ["nats", "postgres", "croupier"]
        .iter()
        .map(|name| {
            std::fs::read_to_string(data.path().join("run").join(format!("{name}.pid")))
                .expect("pid file")
                .trim()
                .parse()
                .expect("pid")
        })
        .collect();
    let mut down = just();
    down.arg("down");
    configure(&mut down);
    let status = down.status().expect("just down");
    assert!(status.success());
    let exited = up.wait().expect("just up ends");
    assert!(
        exited.success(),
        "just up ends cleanly after just down: {}",
        up_log(data.path())
    );
    for pid in pids {
        assert!(!pid_alive(pid), "process {pid} still runs after just down");
    }
    let mut clean = just();
    clean.arg("clean");
    configure(&mut clean);
    assert!(clean.status().expect("just clean").success());
}

/// What GS said of its store's health, from the stack's log.
fn health_log(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("log").join("croupier.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("gs::health") || l.contains("gs::status"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn up_log(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("up.log")).unwrap_or_default()
}

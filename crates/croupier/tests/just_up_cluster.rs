//! `just up-cluster` as a user runs it (issue 17): a three-node NATS cluster, Postgres and every
//! role twice, each its own process. A client plays a round on each gateway; `just kill nats-1`
//! and `just kill gms-1` (SIGKILL) leave the stack serving rounds and bets through the other
//! nodes; `just revive` brings them back; `just replay` proves the history; `just down` leaves
//! nothing running.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{DownOnDrop, check_round, just, pid_alive, play_a_round, read_endpoints, wait_ready};

const PROCESSES: [&str; 10] = [
    "nats-1",
    "nats-2",
    "nats-3",
    "postgres",
    "gms-1",
    "gms-2",
    "gs-1",
    "gs-2",
    "gateway-1",
    "gateway-2",
];

/// A NATS node and a GMS killed, then revived: rounds, bets and their settlements go on at both
/// gateways. (With the NATS node killed, a client's `bet_settled` was once late by more than
/// 30 s in about one run in five: a gateway's feed of every player channel whose consumer
/// lived on the killed node stayed silent; ADR 0028 has the finding and the fix, after which
/// it passed 8 runs in 8.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn just_up_cluster_runs_every_role_twice_and_rides_out_a_killed_nats_node_and_gms() {
    up_cluster_with_faults(&["nats-1", "gms-1"]).await;
}

async fn up_cluster_with_faults(killed: &[&str]) {
    let mut data = tempfile::Builder::new()
        .prefix("croupier-up-cluster-")
        .tempdir()
        .expect("tempdir");
    // `CROUPIER_KEEP_STACK=1` keeps every process's log to read after the run.
    if std::env::var_os("CROUPIER_KEEP_STACK").is_some() {
        data.disable_cleanup(true);
        eprintln!("stack data kept in {}", data.path().display());
    }
    let log = std::fs::File::create(data.path().join("up.log")).expect("log");
    let configure = |command: &mut Command| {
        command
            .env("CROUPIER_DATA_DIR", data.path())
            .env("CROUPIER_PROFILE", "debug")
            .env("CROUPIER_BETTING_MS", "1500")
            .env("CROUPIER_RESULT_MS", "200")
            .env("CROUPIER_PAUSE_MS", "300")
            .env_remove("NATS_URL")
            .env_remove("DATABASE_URL")
            .env_remove("CROUPIER_HTTP_ADDR")
            .env_remove("CROUPIER_JWT_SECRET")
            .env_remove("CROUPIER_SEED_SECRET")
            .env_remove("CROUPIER_NATS_PREFIX")
            .env_remove("CROUPIER_TABLES");
    };
    let run = |args: &[&str]| {
        let mut command = just();
        command.args(args).stdout(Stdio::null());
        configure(&mut command);
        let status = command.status().expect("just");
        assert!(status.success(), "just {args:?} failed");
    };
    let mut up = just();
    up.arg("up-cluster")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    configure(&mut up);
    let mut up = up.spawn().expect("just up-cluster");
    let _down_on_exit = DownOnDrop(data.path().to_path_buf());

    let endpoints_file = data.path().join("endpoints.env");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while !endpoints_file.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "just up-cluster wrote no endpoints.env"
        );
        assert!(
            up.try_wait().expect("poll").is_none(),
            "just up-cluster exited early: {}",
            up_log(data.path())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let endpoints = read_endpoints(&endpoints_file);
    assert_eq!(
        endpoints["NATS_URL"].split(',').count(),
        3,
        "NATS_URL lists the three nodes: {endpoints:?}"
    );
    assert_eq!(endpoints["CROUPIER_NATS_REPLICAS"], "3");
    let gateways: Vec<String> = endpoints["CROUPIER_WS_URLS"]
        .split(',')
        .map(|url| {
            url.trim_start_matches("ws://")
                .trim_end_matches("/ws")
                .to_string()
        })
        .collect();
    assert_eq!(gateways.len(), 2, "two gateways: {endpoints:?}");
    for addr in &gateways {
        wait_ready(addr).await;
        common::wait_betting_enabled(&format!("ws://{addr}/ws")).await;
    }
    let pid = |name: &str| -> u32 {
        std::fs::read_to_string(data.path().join("run").join(format!("{name}.pid")))
            .unwrap_or_else(|e| panic!("pid file of {name}: {e}"))
            .trim()
            .parse()
            .expect("pid")
    };
    for name in PROCESSES {
        assert!(pid_alive(pid(name)), "{name} runs");
    }

    let token = Command::new(common::BIN)
        .args(["token", "--player", "alice"])
        .env("CROUPIER_ENDPOINTS_FILE", &endpoints_file)
        .env_remove("CROUPIER_JWT_SECRET")
        .output()
        .expect("croupier token");
    assert!(token.status.success());
    let token = String::from_utf8_lossy(&token.stdout).trim().to_string();

    // A round on each gateway.
    let mut balance = 100_000;
    for addr in &gateways {
        eprintln!("a round on {addr}");
        let played = play_a_round(addr, &token, "alice", 100).await;
        check_round(&played, 100, balance);
        balance += played.payout - 100;
    }

    // A NATS node and the GMS that may lead the table die: the other nodes carry on.
    for name in killed {
        run(&["kill", name]);
    }
    for addr in &gateways {
        eprintln!("a round on {addr} without {killed:?}");
        // Betting may pause while the bus elects new leaders (GS heartbeats go stale):
        // clients are told, and bet again once it is back.
        wait_betting_steady(addr).await;
        let played = play_a_round(addr, &token, "alice", 100).await;
        check_round(&played, 100, balance);
        balance += played.payout - 100;
    }
    for name in killed {
        run(&["revive", name]);
    }
    let played = play_a_round(&gateways[0], &token, "alice", 100).await;
    check_round(&played, 100, balance);

    let mut replay = just();
    replay
        .args(["replay"])
        .env("CROUPIER_ENDPOINTS_FILE", &endpoints_file)
        .stdout(Stdio::null());
    configure(&mut replay);
    assert!(
        replay.status().expect("just replay").success(),
        "just replay found the history wrong"
    );

    let pids: Vec<u32> = PROCESSES.iter().map(|name| pid(name)).collect();
    run(&["down"]);
    let exited = up.wait().expect("just up-cluster ends");
    assert!(
        exited.success(),
        "just up-cluster ends cleanly after just down: {}",
        up_log(data.path())
    );
    for pid in pids {
        assert!(!pid_alive(pid), "process {pid} still runs after just down");
    }
    run(&["clean"]);
}

/// Waits until a client on `addr` is welcomed with betting on and sees it stay on for 3 s.
async fn wait_betting_steady(addr: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    'again: loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "betting never stayed on at {addr}"
        );
        common::wait_betting_enabled(&format!("ws://{addr}/ws")).await;
        let (mut client, welcome) =
            common::connect(&format!("ws://{addr}/ws"), "croupier.v1.json").await;
        if welcome["betting"] != "enabled" {
            continue;
        }
        let steady = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Some(left) = steady.checked_duration_since(tokio::time::Instant::now()) {
            match client.recv(left).await {
                Ok(m) if m["type"] == "status" && m["betting"] != "enabled" => continue 'again,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        client.close().await;
        return;
    }
}

fn up_log(dir: &std::path::Path) -> String {
    std::fs::read_to_string(dir.join("up.log")).unwrap_or_default()
}

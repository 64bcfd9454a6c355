//! `croupier replay` as a process: exit 0 on an intact store, and on a store with one byte of
//! one event changed, a non-zero exit naming the first bad position.

mod common;

use std::process::{Command, Stdio};

use common::{BIN, Env, free_addr};

fn replay(env: &Env, args: &[&str]) -> (bool, String, String) {
    let (code, stdout, stderr) = replay_code(env, args);
    (code == Some(0), stdout, stderr)
}

/// `croupier replay --no-bus …`: this store's events were never published (no GS ran).
fn replay_code(env: &Env, args: &[&str]) -> (Option<i32>, String, String) {
    replay_raw(env, &[&["--no-bus"], args].concat())
}

fn replay_raw(env: &Env, args: &[&str]) -> (Option<i32>, String, String) {
    let output = env
        .apply(&mut Command::new(BIN))
        .arg("replay")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run croupier replay");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_passes_on_an_intact_store_and_names_the_first_tampered_position() {
    testkit::init_logging();
    let db = testkit::postgres()
        .expect("postgres")
        .database(
            &format!("croupier-{}", store::migrations_fingerprint()),
            |url| async move { store::migrate_url(&url).await.map(|_| ()) },
        )
        .await
        .expect("database");
    let env = Env {
        nats_url: "nats://127.0.0.1:1".into(),
        prefix: String::new(),
        database_url: db.url.clone(),
        http_addr: free_addr(),
    };
    for (player, id) in [
        ("alice", "d1"),
        ("bob", "d2"),
        ("alice", "d3"),
        ("carol", "d4"),
    ] {
        env.deposit(player, 500, id);
    }
    // The read models rebuild from these events (GS's own tests compare every row).
    let rebuilt = env.croupier(&["projections", "rebuild"]);
    assert!(rebuilt.contains("3 accounts, 4 deposits"), "{rebuilt}");
    let (ok, stdout, stderr) = replay(&env, &[]);
    assert!(ok, "an intact store replays: {stdout} {stderr}");
    assert!(stdout.contains("4 events verified"), "{stdout}");
    let (ok, stdout, _) = replay(&env, &["--json"]);
    assert!(ok);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(report["ok"], true);
    assert_eq!(report["events"], 4);

    let client = db.client().await.expect("connect");
    client
        .batch_execute(
            "ALTER TABLE events DISABLE TRIGGER USER;
             UPDATE events SET data = set_byte(data, 5, get_byte(data, 5) # 1) WHERE position = 3;
             ALTER TABLE events ENABLE ALWAYS TRIGGER events_refuse_update_delete;
             ALTER TABLE events ENABLE ALWAYS TRIGGER events_refuse_truncate;",
        )
        .await
        .expect("tamper as superuser");

    // Without --no-bus the bus is required: NATS unreachable is a replay that cannot run.
    let (code, _, stderr) = replay_raw(&env, &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("connect to NATS"), "{stderr}");

    // Bad arguments against a reachable store: exit 2, naming the argument.
    for (bad, named) in [
        (&["--expect-head", "12"][..], "--expect-head"),
        (&["--expect-head", "0:00"], "--expect-head"),
        (&["--from-checkpoint", "5:nothex"], "--from-checkpoint"),
        (&["--min-bet", "0"], "--min-bet"),
        (&["--table", "no spaces"], "--table"),
    ] {
        let (code, stdout, stderr) = replay_code(&env, bad);
        assert_eq!(code, Some(2), "{bad:?}: {stdout} {stderr}");
        assert!(stderr.contains(named), "{bad:?}: {stderr}");
    }

    let (code, stdout, stderr) = replay_code(&env, &[]);
    assert_eq!(code, Some(1), "a tampered store fails: {stdout} {stderr}");
    assert!(stdout.contains("[chain] position 3"), "{stdout}");
    let (code, stdout, _) = replay_code(&env, &["--json"]);
    assert_eq!(code, Some(1));
    let failure: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(failure["ok"], false);
    assert_eq!(failure["violations"][0]["check"], "chain");
    assert_eq!(failure["violations"][0]["position"], 3);
}

#[test]
fn replay_that_cannot_run_exits_2_with_a_clear_message() {
    let env = Env {
        nats_url: "nats://127.0.0.1:1".into(),
        prefix: String::new(),
        // Nothing listens there.
        database_url: format!("postgres://postgres@{}/none?connect_timeout=2", free_addr()),
        http_addr: free_addr(),
    };
    let (code, stdout, stderr) = replay_code(&env, &[]);
    assert_eq!(code, Some(2), "{stdout} {stderr}");
    assert!(stderr.contains("could not run"), "{stderr}");
    let (code, stdout, _) = replay_code(&env, &["--json"]);
    assert_eq!(code, Some(2));
    let failure: serde_json::Value = serde_json::from_str(stdout.trim()).expect("json");
    assert_eq!(failure["ok"], false);
    assert!(
        failure["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{failure}"
    );
}

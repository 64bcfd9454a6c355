//! `croupier loadgen --bet-rate` and `croupier audit-bets` (issue 18's bench-bets uses both) on
//! a real stack: two tables, open-loop bettors, every final answer written out, then checked
//! against the event store — clean, and caught when the file says something the store does not.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Env, audit_bets, funded_players, wait_betting_enabled, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_bettors_on_two_tables_are_all_answered_and_audit_bets_checks_the_answers() {
    let (env, db) = Env::fresh().await;
    let store = store::Store::new(&store::PoolConfig::new(db.url.clone())).expect("store");
    funded_players(&store, "rate-", 20, 1_000_000).await;
    let _all = env.spawn_with(&["run", "all"], &[("CROUPIER_TABLES", "rate-a,rate-b")]);
    wait_ready(&env.http_addr).await;
    let url = format!("ws://{}/ws", env.http_addr);
    wait_betting_enabled(&url).await;

    let dir = tempfile::tempdir().expect("dir");
    let bets_file = dir.path().join("bets.tsv");
    let report_file = dir.path().join("report.json");
    let env2 = env.clone();
    let (bets_arg, report_arg) = (
        bets_file.to_string_lossy().to_string(),
        report_file.to_string_lossy().to_string(),
    );
    let output = tokio::task::spawn_blocking(move || {
        env2.croupier(&[
            "loadgen",
            "--quiet",
            "--url",
            &url,
            "--table",
            "rate-a,rate-b",
            "--clients",
            "20",
            "--bettors",
            "20",
            "--players",
            "rate",
            "--bet-rate",
            "40",
            "--duration",
            "4s",
            "--bets-out",
            &bets_arg,
            "--json",
            &report_arg,
        ])
    })
    .await
    .expect("loadgen ran");
    assert!(output.contains("bet due->answer"), "{output}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).expect("report"))
            .expect("JSON report");
    let bets = &report["bets"];
    let sent = bets["sent"].as_u64().expect("sent");
    let accepted = bets["accepted"].as_u64().expect("accepted");
    // 4 s at 40 bets/s, rounds of 1.5 s betting in 2 s: dozens of bets, on both tables.
    assert!(sent >= 40, "only {sent} bets sent: {report}");
    assert!(accepted > 0, "no bet accepted: {report}");
    let refused: u64 = bets["refusals"]
        .as_object()
        .expect("refusals")
        .values()
        .map(|n| n.as_u64().expect("count"))
        .sum();
    assert_eq!(
        accepted + refused + bets["unanswered"].as_u64().expect("unanswered"),
        sent,
        "every bet sent has one final answer: {report}"
    );
    assert_eq!(
        bets["latency_ms"]["samples"].as_u64(),
        Some(accepted + refused)
    );

    let text = std::fs::read_to_string(&bets_file).expect("bets file");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, sent, "one line per bet");
    for table in ["rate-a", "rate-b"] {
        assert!(
            lines.iter().any(|l| l.split('\t').nth(2) == Some(table)),
            "no bet on {table}"
        );
    }

    // Once the last bets' rounds are settled, every answer agrees with the store.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let verdict = loop {
        let (code, verdict) = audit_bets(&env, &bets_file);
        if code == 0 && verdict["pending"] == 0 {
            break verdict;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "audit-bets never came clean: exit {code}, {verdict}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(verdict["accepted"].as_u64(), Some(accepted), "{verdict}");

    // A file that claims what the store does not hold: an accepted bet the store never saw
    // (lost), and a recorded bet said to be refused.
    let accepted_line = lines
        .iter()
        .find(|l| l.ends_with("\taccepted"))
        .expect("an accepted bet");
    let planted = dir.path().join("planted.tsv");
    let mut wrong: Vec<String> = lines
        .iter()
        .filter(|l| *l != accepted_line)
        .map(|l| l.to_string())
        .collect();
    wrong.push(accepted_line.replace("\taccepted", "\tINSUFFICIENT_FUNDS"));
    wrong.push(format!(
        "{}\trate-0\trate-a\t1\taccepted",
        uuid::Uuid::new_v4()
    ));
    std::fs::write(&planted, wrong.join("\n")).expect("write");
    let (code, verdict) = audit_bets(&env, &planted);
    assert_eq!(code, 1, "{verdict}");
    assert_eq!(verdict["lost_accepted"], 1, "{verdict}");
    assert_eq!(verdict["refused_yet_recorded"], 1, "{verdict}");

    // A file it cannot read is exit 2, not a verdict.
    std::fs::write(&planted, "not a bets file").expect("write");
    let output = env
        .apply(&mut Command::new(BIN))
        .arg("audit-bets")
        .arg(&planted)
        .stdin(Stdio::null())
        .output()
        .expect("run audit-bets");
    assert_eq!(output.status.code(), Some(2));
}

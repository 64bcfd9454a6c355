//! What the operator watches (issue 16 §5): every metric the Grafana dashboard
//! (`ops/grafana/croupier.json`) and the alert rules (`ops/prometheus/alerts.yml`) query is
//! exported by a real stack under a little load — GS, GMS and the gateway as `croupier`
//! processes, each scraped on its own `/metrics` — so no panel stays empty and no alert waits on
//! a series that never comes. `croupier run all` serves the same text on its HTTP address and on
//! `CROUPIER_METRICS_ADDR`. With `promtool` on `PATH` the rules, the Prometheus config and the
//! dashboard's queries are checked by it too.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Env, SECRET, http_get, next_open_round, subscribe, wait_betting_enabled, wait_ready};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
/// Bets of the load that GS accepts; with the two it refuses, under the 8 bets one connection
/// may have waiting (and the 20 messages a client may send at once).
const BETS: usize = 6;

fn repo_file(path: &str) -> String {
    let path = testkit::workspace_root().join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every `expr` of the dashboard's panels (at any depth: rows may nest panels).
fn dashboard_expressions(dashboard: &Value) -> Vec<String> {
    fn walk(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", Value::String(expr)) => found.push(expr.clone()),
                        _ => walk(value, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    walk(dashboard, &mut found);
    found
}

/// The `expr` of every rule of a Prometheus rule file: inline (plain or quoted) or a block
/// scalar (`|`, `>`, with chomping indicators) whose lines are indented deeper than `expr:`.
/// Enough YAML for rule files; the test checks that it found one per rule.
fn rule_expressions(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let Some(rest) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|next| next.trim().is_empty() || indent(next) > indent(line))
                .map(|next| next.trim())
                .collect();
            found.push(block.join("\n").trim().to_string());
        } else {
            let unquoted = rest
                .strip_prefix('"')
                .and_then(|r| r.strip_suffix('"'))
                .or_else(|| rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
                .unwrap_or(rest);
            found.push(unquoted.to_string());
        }
    }
    found
}

/// PromQL words that are not metric names wherever they stand.
const KEYWORDS: [&str; 12] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
];
/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The series names a PromQL expression selects: identifiers that are not functions or
/// aggregations (followed by `(`), keywords, label names (inside `{…}` or a `by (…)`-like list),
/// numbers and durations (inside `[…]`), strings, or Grafana variables (`$__rate_interval`,
/// `${DS}`). Histogram series keep their suffix (`x_bucket`): that is the series that must exist.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let (mut braces, mut brackets) = (0_i32, 0_i32);
    // For each open parenthesis: whether it holds label names.
    let mut parens: Vec<bool> = Vec::new();
    let mut label_list_next = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            '{' => braces += 1,
            '}' => braces -= 1,
            '[' => brackets += 1,
            ']' => brackets -= 1,
            '(' => {
                parens.push(label_list_next);
                label_list_next = false;
            }
            ')' => {
                parens.pop();
            }
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                } else {
                    while i + 1 < chars.len() && is_word(chars[i + 1]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // A number or a duration (`5m`, `1e3`, `0.5`).
                while i + 1 < chars.len() && (is_word(chars[i + 1]) || chars[i + 1] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i + 1 < chars.len() && is_word(chars[i + 1]) {
                    i += 1;
                }
                let word: String = chars[start..=i].iter().collect();
                let rest: String = chars[i + 1..].iter().collect();
                let rest = rest.trim_start();
                let next = rest.chars().next();
                // `sum by (…) (…)`: an aggregation with its grouping first.
                let grouping_follows = ["by", "without"].iter().any(|kw| {
                    rest.strip_prefix(kw)
                        .is_some_and(|after| after.starts_with(|c: char| !is_word(c)))
                });
                let in_labels = braces > 0 || brackets > 0 || parens.last() == Some(&true);
                if in_labels {
                    // A label name or value.
                } else if KEYWORDS.contains(&word.as_str()) {
                    label_list_next = LABEL_LISTS.contains(&word.as_str());
                } else if next == Some('(') || grouping_follows {
                    label_list_next = false; // a function or an aggregation
                } else {
                    label_list_next = false;
                    names.insert(word);
                }
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// One scrape, read: metric family → type (from `# TYPE`), and every sample's series name.
#[derive(Debug, Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: BTreeSet<String>,
}

impl Scrape {
    fn parse(text: &str, into: &mut Scrape) {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    into.types.insert(name.to_string(), kind.to_string());
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                into.samples.insert(line[..end].to_string());
            }
        }
    }

    /// The family `series` belongs to: `x` for `x_bucket`/`x_sum`/`x_count` of a histogram
    /// `x` (and `_sum`/`_count` of a summary), else the series itself.
    fn family<'a>(&self, series: &'a str) -> &'a str {
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = series.strip_suffix(suffix) {
                match self.types.get(base).map(String::as_str) {
                    Some("histogram") => return base,
                    Some("summary") if suffix != "_bucket" => return base,
                    _ => {}
                }
            }
        }
        series
    }

    /// Whether `series` is exported with at least one sample, as the family it belongs to.
    fn exports(&self, series: &str) -> bool {
        self.types.contains_key(self.family(series)) && self.samples.contains(series)
    }
}

async fn scrape(addrs: &[&str]) -> Scrape {
    let mut scraped = Scrape::default();
    for addr in addrs {
        let (status, body) = http_get(addr, "/metrics").await;
        assert_eq!(status, 200, "GET http://{addr}/metrics: {body}");
        Scrape::parse(&body, &mut scraped);
    }
    scraped
}

/// Metric series the dashboard and the alert rules use, each with where it is used.
fn wanted_series() -> BTreeMap<String, BTreeSet<String>> {
    let dashboard: Value =
        serde_json::from_str(&repo_file("ops/grafana/croupier.json")).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        for expr in dashboard_expressions(panel) {
            for name in metric_names(&expr) {
                wanted
                    .entry(name)
                    .or_default()
                    .insert(format!("dashboard panel {title:?}"));
            }
        }
    }
    let alerts = repo_file("ops/prometheus/alerts.yml");
    let expressions = rule_expressions(&alerts);
    let rules = alerts
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            line.starts_with("- alert:") || line.starts_with("- record:")
        })
        .count();
    assert_eq!(
        expressions.len(),
        rules,
        "one expr per rule: {expressions:#?}"
    );
    for expr in expressions {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "an alert on no metric: {expr}");
        for name in names {
            wanted
                .entry(name)
                .or_default()
                .insert(format!("alert {expr:?}"));
        }
    }
    wanted
}

#[test]
fn metric_names_are_read_from_promql_as_prometheus_reads_them() {
    let names = |expr: &str| metric_names(expr).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (table, le) (rate(gms_transition_lag_seconds_bucket{kind="round_opened"}[$__rate_interval]))) > 0.5"#
        ),
        ["gms_transition_lag_seconds_bucket"]
    );
    assert_eq!(
        names(
            "(max(gs_store_head_position) - max(gs_outbox_position)) > 0\n  and on () max(changes(gs_outbox_position[5m])) == 0"
        ),
        ["gs_outbox_position", "gs_store_head_position"]
    );
    assert_eq!(
        names("sum(x_sum) by (code) / ignoring(code) group_left sum(y_count) unless z offset 5m"),
        ["x_sum", "y_count", "z"]
    );
    assert_eq!(
        names(r#"absent(up{job="croupier", x='a b'}) or vector(1e3)"#),
        ["up"]
    );
    assert_eq!(
        names("60 * sum without (instance) (rate(a:b_total[1m]))"),
        ["a:b_total"]
    );
    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        for: 1m\n      - alert: B\n        expr: |\n          sum(a)\n            > 1\n        labels:\n          x: y\n      - record: r\n        expr: \"b + c\"\n";
    assert_eq!(rule_expressions(yaml), ["up == 0", "sum(a)\n> 1", "b + c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported_by_a_running_stack() {
    testkit::init_logging();
    let wanted = wanted_series();
    for required in [
        "gms_leading",
        "gms_transition_lag_seconds_bucket",
        "gateway_bet_answer_seconds_bucket",
        "gs_settlement_seconds_bucket",
        "gs_db_pool_connections",
        "gateway_betting_enabled",
        "gateway_slow_consumers_total",
        "gateway_rejections_total",
    ] {
        assert!(
            wanted.contains_key(required),
            "the dashboard or the alerts should use {required}"
        );
    }

    let (env, _db) = Env::fresh().await;
    env.deposit("alice", 10_000, "observability-alice");
    let (gs_metrics, gms_metrics) = (common::free_addr(), common::free_addr());
    let _gs = env.spawn_with(&["run", "gs"], &[("CROUPIER_METRICS_ADDR", &gs_metrics)]);
    let _gms = env.spawn_with(&["run", "gms"], &[("CROUPIER_METRICS_ADDR", &gms_metrics)]);
    // The gateway as a process too: its `/metrics` is the binary's recorder.
    let _gateway = env.spawn(&["run", "gateway"]);
    wait_ready(&env.http_addr).await;

    // A little load: bets accepted and settled, bets rejected by GS, a message the gateway
    // refuses, a spectator and a player on the table.
    let secret = gateway::JwtSecret::new(SECRET).expect("secret");
    let token = gateway::auth::mint(
        &secret,
        &domain::PlayerId::parse("alice").expect("player"),
        Duration::from_secs(600),
        gateway::auth::now_unix(),
    );
    let url = format!("ws://{}/ws?token={token}", env.http_addr);
    wait_betting_enabled(&url).await;
    let (mut spectator, _) =
        common::connect(&format!("ws://{}/ws", env.http_addr), "croupier.v1.msgpack").await;
    subscribe(
        &mut spectator,
        json!({"type": "subscribe", "channel": common::TABLE}),
    )
    .await;
    let (mut client, _) = common::connect(&url, "croupier.v1.json").await;
    for channel in [common::TABLE, "player.alice"] {
        let answer = subscribe(
            &mut client,
            json!({"type": "subscribe", "channel": channel}),
        )
        .await;
        assert_eq!(answer["type"], "subscribed", "{answer}");
    }
    client.send_text("{not json").await.expect("send");
    let round = next_open_round(&mut client).await;
    for n in 0..BETS {
        client
            .send_json(&common::bet(&format!("ok-{n}"), round, 10))
            .await
            .expect("bet");
    }
    // Below the table's minimum, and on a round that is not open: GS says no.
    client
        .send_json(&common::bet("too-small", round, 1))
        .await
        .expect("bet");
    client
        .send_json(&common::bet("wrong-round", round + 1000, 10))
        .await
        .expect("bet");
    let mut answers = BTreeMap::new();
    while answers.len() < BETS + 2 {
        let answer = client
            .recv_until(WAIT, |m| {
                (m["type"] == "bet_result" || m["type"] == "error") && m["request_id"].is_string()
            })
            .await
            .expect("every bet is answered");
        let id = answer["request_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        answers.insert(id, answer);
    }
    let accepted = answers
        .values()
        .filter(|a| a["type"] == "bet_result")
        .count();
    assert!(accepted > 0, "some bets are accepted: {answers:#?}");
    for refused in ["too-small", "wrong-round"] {
        assert_eq!(answers[refused]["type"], "error", "{:#}", answers[refused]);
    }
    // The round settles: settlement, the outbox and every kind of transition have run.
    client
        .recv_until(WAIT, |m| {
            m["type"] == "event"
                && m["channel"] == "player.alice"
                && m["event"]["kind"] == "bet_settled"
        })
        .await
        .expect("a bet of the round is settled");

    // Every role's endpoint, until every wanted series is there (some are sampled each second).
    let endpoints = [env.http_addr.as_str(), &gs_metrics, &gms_metrics];
    let deadline = tokio::time::Instant::now() + WAIT;
    let missing = loop {
        let scraped = scrape(&endpoints).await;
        let missing: Vec<(&String, &BTreeSet<String>)> = wanted
            .iter()
            .filter(|(series, _)| !scraped.exports(series))
            .collect();
        if missing.is_empty() || tokio::time::Instant::now() >= deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        missing.is_empty(),
        "used by the dashboard or the alerts but exported by no role (scraped {endpoints:?}):\n{}",
        missing
            .iter()
            .map(|(series, used)| format!(
                "  {series}: {}",
                used.iter().cloned().collect::<Vec<_>>().join("; ")
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
    spectator.close().await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_serves_the_same_metrics_on_croupier_metrics_addr_as_on_its_http_address() {
    testkit::init_logging();
    let (env, _db) = Env::fresh().await;
    let metrics_addr = common::free_addr();
    let _all = env.spawn_with(&["run", "all"], &[("CROUPIER_METRICS_ADDR", &metrics_addr)]);
    wait_ready(&env.http_addr).await;
    let families = |text: &str| -> BTreeSet<String> {
        let mut scraped = Scrape::default();
        Scrape::parse(text, &mut scraped);
        scraped.types.into_keys().collect()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (http_status, http) = http_get(&env.http_addr, "/metrics").await;
        let (metrics_status, metrics) = http_get(&metrics_addr, "/metrics").await;
        assert_eq!((http_status, metrics_status), (200, 200));
        let (http, metrics) = (families(&http), families(&metrics));
        let every_role = ["gms_leading", "gs_store_healthy", "gateway_connections"]
            .iter()
            .all(|name| metrics.contains(*name));
        // One recorder: the same families (a scrape between two registrations may differ once).
        if every_role && http == metrics {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "CROUPIER_METRICS_ADDR under `run all` serves {metrics:?}, the gateway {http:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn a_metrics_address_that_is_the_gateways_own_is_refused_before_anything_starts() {
    let env = Env {
        nats_url: "nats://127.0.0.1:1".into(),
        prefix: "unused".into(),
        database_url: "postgres://unused@127.0.0.1:1/unused".into(),
        http_addr: common::free_addr(),
    };
    let mut command = Command::new(common::BIN);
    env.apply(&mut command);
    let output = command
        .args(["run", "all"])
        .env("CROUPIER_METRICS_ADDR", &env.http_addr)
        .stdin(Stdio::null())
        .output()
        .expect("run croupier");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("invalid configuration") && stderr.contains("CROUPIER_METRICS_ADDR"),
        "{stderr}"
    );
}

/// `promtool` on the rules, the Prometheus config (which loads them) and every dashboard query
/// (as recording rules, `$__rate_interval` as `1m`). Skipped, with a note, without `promtool`.
#[test]
fn alert_rules_prometheus_config_and_dashboard_queries_pass_promtool() {
    let Some(promtool) = find_on_path("promtool") else {
        eprintln!(
            "note: promtool is not on PATH; skipping `promtool check` (Debian: apt-get install prometheus)"
        );
        return;
    };
    let root = testkit::workspace_root();
    let check = |args: &[&str]| {
        let output = Command::new(&promtool)
            .args(args)
            .current_dir(&root)
            .output()
            .expect("run promtool");
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    check(&["check", "rules", "ops/prometheus/alerts.yml"]);
    check(&["check", "config", "ops/prometheus/prometheus.yml"]);

    let dashboard: Value =
        serde_json::from_str(&repo_file("ops/grafana/croupier.json")).expect("dashboard JSON");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, expr) in dashboard_expressions(&dashboard).iter().enumerate() {
        let expr = expr.replace("$__rate_interval", "1m");
        rules.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: {}\n",
            serde_json::to_string(&expr).expect("quote")
        ));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, rules).expect("write");
    check(&["check", "rules", &file.to_string_lossy()]);
}

fn find_on_path(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

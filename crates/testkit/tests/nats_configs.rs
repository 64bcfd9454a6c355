//! The nats-server configurations under `ops/nats/` are what `just up` and the cluster recipes
//! run; nats-server itself must accept them (`nats-server -t -c`).

use std::process::Command;

fn check_config(relative: &str) {
    let path = testkit::workspace_root().join(relative);
    let output = Command::new(testkit::nats_server_binary().expect("nats-server installed"))
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run nats-server -t");
    assert!(
        output.status.success(),
        "{relative} is refused: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn single_node_config_parses() {
    check_config("ops/nats/nats.conf");
}

#[test]
fn cluster_configs_parse() {
    for node in ["n1", "n2", "n3"] {
        check_config(&format!("ops/nats/cluster/{node}.conf"));
    }
}

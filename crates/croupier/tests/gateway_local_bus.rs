//! `croupier run all --bus local` (issue 8): the whole system in one process on the in-process
//! bus passes the same end-to-end test as the walking skeleton does with separate processes on
//! NATS — a round and a bet through the gateway, settled with the fair payout.

mod common;

use common::{Env, check_round, play_a_round, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_on_the_local_bus_settles_a_bet_placed_over_websocket() {
    testkit::init_logging();
    let (mut env, _db) = Env::fresh().await;
    // Never used by the local bus; a closed port makes any accidental use fail loudly.
    env.nats_url = "nats://127.0.0.1:1".into();
    let deposit = env.croupier(&[
        "wallet",
        "deposit",
        "--player",
        "alice",
        "--amount",
        "10000",
        "--deposit-id",
        "local-1",
    ]);
    assert!(deposit.contains("balance 10000"), "{deposit}");
    let _all = env.spawn(&["run", "all", "--bus", "local"]);
    wait_ready(&env.http_addr).await;
    let token = env.croupier(&["token", "--player", "alice", "--ttl", "10m"]);
    let played = play_a_round(&env.http_addr, &token, "alice", 100).await;
    check_round(&played, 100, 10_000);
}

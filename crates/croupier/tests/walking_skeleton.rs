//! The walking skeleton (issue 5): a round and a bet through every real part — GMS publishing
//! to JetStream, GS recording in Postgres and settling, the gateway relaying over WebSocket —
//! each role a separate `croupier` process, the client a WebSocket crate that is not ours.

mod common;

use common::{Env, check_round, play_a_round, wait_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bet_placed_over_websocket_is_settled_with_the_fair_payout() {
    testkit::init_logging();
    let (env, db) = Env::fresh().await;
    let deposit = env.croupier(&[
        "wallet",
        "deposit",
        "--player",
        "alice",
        "--amount",
        "10000",
        "--deposit-id",
        "e2e-1",
    ]);
    assert!(deposit.contains("balance 10000"), "{deposit}");
    // The same deposit id is credited once.
    let again = env.croupier(&[
        "wallet",
        "deposit",
        "--player",
        "alice",
        "--amount",
        "10000",
        "--deposit-id",
        "e2e-1",
    ]);
    assert!(again.contains("balance 10000"), "{again}");

    let _gms = env.spawn(&["run", "gms"]);
    let _gs = env.spawn(&["run", "gs"]);
    let _gateway = env.spawn(&["run", "gateway"]);
    wait_ready(&env.http_addr).await;

    let token = env.croupier(&["token", "--player", "alice", "--ttl", "10m"]);
    let played = play_a_round(&env.http_addr, &token, "alice", 100).await;
    check_round(&played, 100, 10_000);

    // The balance in Postgres is the one the client was told.
    let client = db.client().await.expect("connect");
    let balance: i64 = client
        .query_one("SELECT balance FROM accounts WHERE player = 'alice'", &[])
        .await
        .expect("account")
        .get(0);
    assert_eq!(balance, played.balance_after_settlement);
}

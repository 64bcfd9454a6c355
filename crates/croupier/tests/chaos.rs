//! The subset of `just chaos` that `just test` runs (issue 17 §3): on `just up-cluster`'s stack
//! (debug build, short rounds), under loadgen's clients over both gateways and open-loop
//! bettors, one GS killed with a transaction open, one gateway killed, and the NATS node
//! leading `TABLES` killed and restarted. Each passes only with nothing lost, settled twice,
//! missed or doubled, `croupier audit-bets` and `croupier replay` clean, and betting back.

use std::time::Duration;

// Shared with `just chaos`, which uses more of them.
#[allow(dead_code)]
#[path = "../examples/support/up.rs"]
mod up;

#[allow(dead_code)]
#[path = "../examples/support/chaos.rs"]
mod chaos;

use chaos::Scenario;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gs_a_gateway_and_a_nats_node_killed_under_load_lose_nothing() {
    let options = chaos::Options {
        profile: "debug",
        // `CHAOS_SCENARIOS` narrows the run (to chase one scenario's failure, say).
        scenarios: Scenario::from_env(&[
            Scenario::GsKill,
            Scenario::GatewayKill,
            Scenario::NatsKill,
        ])
        .expect("CHAOS_SCENARIOS names scenarios"),
        clients: 200,
        bettors: 40,
        bet_rate: 100,
        before: Duration::from_secs(4),
        fault_for: Duration::from_secs(4),
        long_fault_for: Duration::from_secs(150),
        after: Duration::from_secs(8),
        betting_ms: 1_500,
        result_ms: 200,
        pause_ms: 300,
        lease_ttl_ms: 3_000,
    };
    let outcomes = chaos::run(&options).await.expect("the scenarios ran");
    println!("{}", chaos::table(&outcomes));
    for outcome in &outcomes {
        assert!(
            outcome.passed,
            "{}: {:?}\n{}",
            outcome.scenario.name(),
            outcome.failures,
            chaos::table(&outcomes)
        );
        assert!(outcome.accepted > 0 && outcome.clients > 0);
        // Rounds keep their cadence within issue 17's 1 s, except while the `TABLES` stream
        // elects a new leader: nothing is stored for nats-server's election timeout (ADR 0027).
        let bound = if outcome.scenario == Scenario::NatsKill {
            10.0
        } else {
            outcome.round_delay_bound_s
        };
        assert!(
            outcome.largest_round_delay_s <= bound,
            "{}: a round was {:.2} s late (bound {bound} s)",
            outcome.scenario.name(),
            outcome.largest_round_delay_s
        );
    }
    if let Some(gateway) = outcomes
        .iter()
        .find(|o| o.scenario == Scenario::GatewayKill)
    {
        assert!(
            gateway.reconnects > 0,
            "the killed gateway's clients reconnected"
        );
    }
}

//! The services on a three-node JetStream cluster (streams and buckets with three replicas),
//! one node killed with SIGKILL while bets flow and rounds run, then restarted (issue 17).
//! The node killed is the `TABLES` stream's leader, so GMS's publishes and the gateway's table
//! feed must move to a new leader. Afterwards: every bet a client was told is accepted is
//! stored and settled exactly once, none was refused and stored, a client on the gateway saw
//! every table message the stream holds since it subscribed once and in order, rounds kept
//! their cadence within a stated bound, and `croupier replay` proves both logs agree.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bus::{Bus, NatsBus, NatsOptions};
use common::{Env, Running};
use futures_util::StreamExt;
use protocol::{Encoding, ErrorCode, PlaceBetReply, PlaceBetRequest};
use serde_json::json;

const PLAYERS: usize = 20;
/// GMS's round: 1.5 s betting, 0.2 s result, 0.3 s pause (Env::apply).
const CYCLE: Duration = Duration::from_millis(2_000);
/// How much longer than its cycle a round may take when the `TABLES` leader dies: nats-server's
/// replicas wait a randomised 4–9 s election timeout without the leader's heartbeat before one
/// of them campaigns (its raft defaults, not configurable), and nothing is stored meanwhile;
/// then one more second for GMS to carry on (ADR 0027).
const ROUND_DELAY_BOUND: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Accepted,
    Refused,
    Unanswered,
}

/// Places a bet on `bets.place.roulette-1` like a gateway does, retrying with the same `bet_id`
/// while the answer is not definite (timeout, or betting paused while the bus moved).
async fn place(bus: &NatsBus, request: &PlaceBetRequest) -> Answer {
    let payload = Encoding::MsgPack.encode(request).expect("encode");
    for _ in 0..20 {
        if let Ok(answer) = bus
            .request(
                "bets.place.roulette-1",
                payload.clone(),
                Duration::from_secs(2),
            )
            .await
        {
            match Encoding::MsgPack.decode::<PlaceBetReply>(&answer) {
                Ok(PlaceBetReply::Accepted(_)) => return Answer::Accepted,
                Ok(PlaceBetReply::Rejected(r))
                    if matches!(r.code, ErrorCode::BettingUnavailable | ErrorCode::Timeout) => {}
                Ok(PlaceBetReply::Rejected(_)) => return Answer::Refused,
                Err(error) => panic!("undecodable answer: {error}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Answer::Unanswered
}

async fn open_round(client: &tokio_postgres::Client) -> Option<i64> {
    client
        .query_opt(
            "SELECT round FROM rounds WHERE table_id = 'roulette-1' AND phase = 'open' \
             AND closes_at > now() + interval '300 milliseconds' ORDER BY round DESC LIMIT 1",
            &[],
        )
        .await
        .expect("rounds")
        .map(|row| row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_node_killed_under_load_and_restarted_loses_nothing() {
    testkit::init_logging();
    let mut cluster = testkit::NatsCluster::start().expect("a three-node NATS cluster");
    let db = common::migrated_database().await;
    let env = Env {
        nats_url: cluster.url(),
        prefix: testkit::unique_prefix(),
        database_url: db.url.clone(),
        http_addr: common::free_addr(),
    };
    let store = store::Store::new(&store::PoolConfig::new(db.url.clone())).expect("store");
    let players = common::funded_players(&store, "c", PLAYERS, 1_000_000).await;
    let client = db.client().await.expect("connect");

    let replicas = [("CROUPIER_NATS_REPLICAS", "3")];
    let _processes: Vec<Running> = vec![
        env.spawn_with(&["run", "gs"], &replicas),
        env.spawn_with(&["run", "gms"], &replicas),
        env.spawn_with(&["run", "gateway"], &replicas),
    ];
    let bus = NatsBus::connect(&env.nats_url, &env.prefix, NatsOptions::default())
        .await
        .expect("bus");
    bus.setup(&bus::Definitions::croupier().with_replicas(3))
        .await
        .expect("streams with three replicas");
    common::wait_ready(&env.http_addr).await;
    let ws_url = format!("ws://{}/ws", env.http_addr);
    common::wait_betting_enabled(&ws_url).await;
    // GMS may still be setting up the cluster's streams when GS and the gateway are ready: the
    // load and the kill start once a round is open, or the test would judge a startup.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while open_round(&client).await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no round opened within 60 s of the stack starting"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A client on the gateway follows the table for the whole run.
    let (mut watcher, _) = common::connect(&ws_url, "croupier.v1.json").await;
    let subscribed = common::subscribe(
        &mut watcher,
        json!({"type": "subscribe", "request_id": "w", "channel": common::TABLE}),
    )
    .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let first_seq = subscribed["seq"].as_u64().expect("seq");
    let stop = Arc::new(AtomicBool::new(false));
    let watching = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match watcher.recv(Duration::from_millis(200)).await {
                    Ok(message) => {
                        if message["type"] == "event" && message["channel"] == common::TABLE {
                            seqs.push(message["seq"].as_u64().expect("seq"));
                        }
                    }
                    Err(testkit::WsEnd::TimedOut) => {}
                    Err(end) => panic!("the gateway closed the watcher: {end:?}"),
                }
            }
            seqs
        })
    };

    // Bettors: a bet every 25 ms on the open round, from a bounded set of tasks.
    let betting = {
        let bus = bus.clone();
        let stop = stop.clone();
        let players = players.clone();
        let client = db.client().await.expect("connect");
        tokio::spawn(async move {
            let table = domain::TableId::parse("roulette-1").expect("table");
            let red = domain::Selection::parse(domain::RawSelection::Red).expect("red");
            let mut answers: Vec<(uuid::Uuid, Answer)> = Vec::new();
            let mut in_flight = futures_util::stream::FuturesUnordered::new();
            let mut tick = tokio::time::interval(Duration::from_millis(25));
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                tokio::select! {
                    _ = tick.tick() => {
                        let Some(round) = open_round(&client).await else { continue };
                        if in_flight.len() >= 64 {
                            continue;
                        }
                        let request = PlaceBetRequest {
                            request_id: format!("b{n}"),
                            bet_id: domain::BetId::from_uuid(uuid::Uuid::new_v4()),
                            player: players[n % PLAYERS].clone(),
                            table: table.clone(),
                            round: domain::RoundId::new(round as u64).expect("round"),
                            selection: red,
                            amount: domain::Money::stake(10).expect("stake"),
                        };
                        n += 1;
                        let bus = bus.clone();
                        in_flight.push(async move {
                            let answer = place(&bus, &request).await;
                            (*request.bet_id.as_uuid(), answer)
                        });
                    }
                    Some(done) = in_flight.next() => answers.push(done),
                }
            }
            while let Some(done) = in_flight.next().await {
                answers.push(done);
            }
            answers
        })
    };

    // Let rounds run, then kill the TABLES stream's leader.
    tokio::time::sleep(CYCLE * 2).await;
    let js = async_nats::jetstream::new(bus.client().clone());
    let info = js
        .get_stream(format!("{}_TABLES", env.prefix))
        .await
        .expect("TABLES")
        .info()
        .await
        .expect("info")
        .clone();
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .expect("the stream has a leader");
    let index: usize = leader
        .trim_start_matches('n')
        .parse::<usize>()
        .expect("node name n<k>")
        - 1;
    let killed_at = tokio::time::Instant::now();
    cluster.node_mut(index).kill().expect("SIGKILL the leader");
    tokio::time::sleep(Duration::from_secs(5)).await;
    cluster.node_mut(index).restart().expect("restart the node");
    let restarted_after = killed_at.elapsed();
    tokio::time::sleep(CYCLE * 3).await;
    stop.store(true, Ordering::Relaxed);
    let answers = betting.await.expect("bettors");
    let seen = watching.await.expect("watcher");

    // Every round with bets gets settled.
    common::wait_bets_settled(&client, Duration::from_secs(60)).await;

    // Bets: accepted ⇒ stored and settled once; refused ⇒ not stored; nothing unanswered.
    let unanswered = answers
        .iter()
        .filter(|(_, a)| *a == Answer::Unanswered)
        .count();
    assert_eq!(unanswered, 0, "bets left without a definite answer");
    let accepted: HashSet<uuid::Uuid> = answers
        .iter()
        .filter(|(_, a)| *a == Answer::Accepted)
        .map(|(id, _)| *id)
        .collect();
    eprintln!(
        "bets: {} answered, {} accepted",
        answers.len(),
        accepted.len()
    );
    if accepted.len() <= 50 {
        // Which rounds GS recorded, and when they closed: the bettors bet only on a round GS
        // shows open, so this says whether rounds or their recording stalled.
        let rounds: Vec<String> = client
            .query(
                "SELECT round, phase::text, closes_at::text FROM rounds \
                 WHERE table_id = 'roulette-1' ORDER BY round",
                &[],
            )
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        format!(
                            "{} {} {}",
                            r.get::<_, i64>(0),
                            r.get::<_, String>(1),
                            r.get::<_, Option<String>>(2).unwrap_or_default()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        panic!(
            "bets were taken: {} (killed {:?} after the bettors started; rounds: {rounds:#?})",
            accepted.len(),
            CYCLE * 2
        );
    }
    let refused: HashSet<uuid::Uuid> = answers
        .iter()
        .filter(|(_, a)| *a == Answer::Refused)
        .map(|(id, _)| *id)
        .collect();
    let mut placed: HashSet<uuid::Uuid> = HashSet::new();
    let mut settled: HashMap<uuid::Uuid, u32> = HashMap::new();
    let mut opened: Vec<(u64, i64)> = Vec::new();
    for row in client
        .query("SELECT data FROM events ORDER BY position", &[])
        .await
        .expect("events")
    {
        let event = protocol::decode_event(row.get::<_, &[u8]>(0)).expect("event");
        match event.body {
            protocol::EventBody::BetPlaced(e) => {
                assert!(placed.insert(*e.bet_id.as_uuid()), "a bet placed twice");
            }
            protocol::EventBody::BetSettled(e) => {
                *settled.entry(*e.bet_id.as_uuid()).or_default() += 1;
            }
            protocol::EventBody::RoundOpened(e) => {
                opened.push((e.round.get(), event.at.unix_micros()));
            }
            _ => {}
        }
    }
    for id in &accepted {
        assert!(placed.contains(id), "accepted bet {id} was not stored");
        assert_eq!(settled.get(id), Some(&1), "accepted bet {id} settled once");
    }
    for id in &refused {
        assert!(!placed.contains(id), "refused bet {id} was stored");
    }

    // Rounds kept their cadence.
    opened.sort_unstable();
    let largest_gap = opened
        .windows(2)
        .map(|w| Duration::from_micros((w[1].1 - w[0].1).max(0) as u64))
        .max()
        .expect("rounds opened");
    let delay = largest_gap.saturating_sub(CYCLE);
    eprintln!(
        "nats node {leader} killed (restarted after {restarted_after:?}): {} bets accepted, {} refused; \
         largest round delay {delay:?}; watcher saw {} table messages",
        accepted.len(),
        refused.len(),
        seen.len()
    );
    assert!(
        delay <= ROUND_DELAY_BOUND,
        "a round was delayed by {delay:?} (bound {ROUND_DELAY_BOUND:?})"
    );

    // The watcher: every table message the stream holds since it subscribed, once, in order.
    let last = *seen.last().expect("the watcher saw messages");
    let mut stored = Vec::new();
    let mut replay = bus
        .replay("TABLES", "table.roulette-1.*", first_seq + 1)
        .await
        .expect("replay");
    while let Some(message) = replay.next().await {
        let seq = message.expect("message").seq;
        if seq > last {
            break;
        }
        stored.push(seq);
        if seq == last {
            break;
        }
    }
    let doubled = seen.len() - seen.iter().collect::<HashSet<_>>().len();
    assert_eq!(doubled, 0, "the watcher got {doubled} messages twice");
    assert_eq!(
        seen, stored,
        "the watcher missed or reordered table messages"
    );

    env.replay_ok();
}

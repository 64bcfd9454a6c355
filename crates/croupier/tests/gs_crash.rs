//! Two GS processes share the bets; one is killed with SIGKILL while batches are in flight.
//! Every bet a client was told is accepted is settled exactly once, retries with the same
//! `bet_id` are answered idempotently by the survivor, and money adds up. Two GS on one host
//! are two instances, and one started in the killed one's place resumes from the furthest cursor.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bus::{Bus, NatsBus, NatsOptions};
use common::Env;
use futures_util::future::join_all;
use protocol::{Encoding, ErrorCode, PlaceBetReply, PlaceBetRequest};

const PLAYERS: usize = 12;
const BETS_PER_ROUND: usize = 120;
const ROUNDS: usize = 5;

async fn open_round(client: &tokio_postgres::Client, after: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let row = client
            .query_opt(
                "SELECT round FROM rounds WHERE table_id = 'roulette-1' AND phase = 'open' \
                 AND round > $1 AND closes_at > now() + interval '600 milliseconds' \
                 ORDER BY round DESC LIMIT 1",
                &[&after],
            )
            .await
            .expect("rounds");
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(tokio::time::Instant::now() < deadline, "no round opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a bet, retrying with the same bet_id on a timeout or BETTING_UNAVAILABLE; returns
/// whether it was finally accepted.
async fn place(bus: &NatsBus, request: PlaceBetRequest) -> bool {
    let payload = Encoding::MsgPack.encode(&request).expect("encode");
    for _ in 0..6 {
        // A timeout (the GS that had it was killed) is retried like BETTING_UNAVAILABLE.
        if let Ok(answer) = bus
            .request(
                "bets.place.roulette-1",
                payload.clone(),
                Duration::from_secs(2),
            )
            .await
        {
            match Encoding::MsgPack.decode::<PlaceBetReply>(&answer) {
                Ok(PlaceBetReply::Accepted(a)) => {
                    assert_eq!(a.bet_id, request.bet_id);
                    return true;
                }
                Ok(PlaceBetReply::Rejected(r)) if r.code == ErrorCode::BettingUnavailable => {}
                Ok(PlaceBetReply::Rejected(_)) => return false,
                Err(error) => panic!("undecodable answer: {error}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn gs_cursors(client: &tokio_postgres::Client) -> HashMap<String, i64> {
    client
        .query("SELECT consumer, stream_seq FROM gs_cursor", &[])
        .await
        .expect("cursors")
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_gs_and_one_killed_mid_batch_every_accepted_bet_is_settled_exactly_once() {
    testkit::init_logging();
    let (env, db) = Env::fresh().await;
    let store = store::Store::new(&store::PoolConfig::new(db.url.clone())).expect("store");
    let players = common::funded_players(&store, "k", PLAYERS, 1_000_000).await;
    let client = db.client().await.expect("connect");

    let mut gs_a = env.spawn(&["run", "gs"]);
    let gs_b = env.spawn(&["run", "gs"]);
    let (pid_a, pid_b) = (gs_a.0.id(), gs_b.0.id());
    let _gms = env.spawn(&["run", "gms"]);
    let bus = NatsBus::connect(&env.nats_url, &env.prefix, NatsOptions::default())
        .await
        .expect("bus");

    let table = domain::TableId::parse("roulette-1").expect("table");
    let red = domain::Selection::parse(domain::RawSelection::Red).expect("red");
    let mut accepted: HashSet<uuid::Uuid> = HashSet::new();
    let mut round = 0;
    for n in 0..ROUNDS {
        round = open_round(&client, round).await;
        let requests: Vec<PlaceBetRequest> = (0..BETS_PER_ROUND)
            .map(|i| PlaceBetRequest {
                request_id: format!("{round}-{i}"),
                bet_id: domain::BetId::from_uuid(uuid::Uuid::new_v4()),
                player: players[i % PLAYERS].clone(),
                table: table.clone(),
                round: domain::RoundId::new(round as u64).expect("round"),
                selection: red,
                amount: domain::Money::stake(10 + i as i64).expect("stake"),
            })
            .collect();
        let ids: Vec<uuid::Uuid> = requests.iter().map(|r| *r.bet_id.as_uuid()).collect();
        let bets = join_all(requests.into_iter().map(|r| place(&bus, r)));
        let answers = if n == 1 {
            // Kill GS A while this round's bets are being batched.
            let kill = async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                gs_a.0.kill().expect("SIGKILL gs A");
            };
            let (answers, ()) = tokio::join!(bets, kill);
            answers
        } else {
            bets.await
        };
        for (id, ok) in ids.into_iter().zip(answers) {
            if ok {
                accepted.insert(id);
            }
        }
    }
    assert!(
        accepted.len() > ROUNDS * BETS_PER_ROUND / 2,
        "most bets were accepted"
    );

    // Two GS on one host are two instances by default (`gs-<hostname>-<pid>`), each with its
    // own cursor; a GS started in A's place resumes from the furthest cursor, not from the
    // stream's start (its row appears at once, already there).
    let cursors = gs_cursors(&client).await;
    for pid in [pid_a, pid_b] {
        assert!(
            cursors
                .keys()
                .any(|name| name.starts_with("gs-") && name.ends_with(&format!("-{pid}"))),
            "a cursor row for the GS with pid {pid}: {cursors:?}"
        );
    }
    let furthest = cursors.values().copied().max().unwrap_or(0);
    assert!(furthest > 0, "the GS recorded transitions: {cursors:?}");
    let gs_c = env.spawn(&["run", "gs"]);
    let suffix = format!("-{}", gs_c.0.id());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let first_seen = loop {
        if let Some((_, seq)) = gs_cursors(&client)
            .await
            .into_iter()
            .find(|(name, _)| name.ends_with(&suffix))
        {
            break seq;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted GS created no cursor"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        first_seen >= furthest,
        "the restarted GS resumed from {first_seen}, behind the furthest cursor {furthest}"
    );

    // Wait for every round with bets to be settled by the survivor.
    common::wait_bets_settled(&client, Duration::from_secs(60)).await;

    let rows = client
        .query("SELECT data FROM events ORDER BY position", &[])
        .await
        .expect("events");
    let mut settled: HashMap<uuid::Uuid, u32> = HashMap::new();
    let mut placed: HashSet<uuid::Uuid> = HashSet::new();
    let mut summaries: HashMap<u64, u32> = HashMap::new();
    let (mut deposits, mut stakes, mut payouts) = (0i64, 0i64, 0i64);
    for row in rows {
        match protocol::decode_event(row.get::<_, &[u8]>(0))
            .expect("event")
            .body
        {
            protocol::EventBody::BetPlaced(e) => {
                assert!(placed.insert(*e.bet_id.as_uuid()), "a bet placed twice");
                stakes += e.amount.get();
            }
            protocol::EventBody::BetSettled(e) => {
                *settled.entry(*e.bet_id.as_uuid()).or_default() += 1;
                payouts += e.payout.get();
            }
            protocol::EventBody::RoundSettled(e) => {
                *summaries.entry(e.round.get()).or_default() += 1;
            }
            protocol::EventBody::FundsDeposited(e) => deposits += e.amount.get(),
            _ => {}
        }
    }
    for id in &accepted {
        assert_eq!(
            settled.get(id),
            Some(&1),
            "accepted bet {id} settled exactly once"
        );
    }
    assert!(settled.values().all(|&n| n == 1), "nothing settled twice");
    assert_eq!(
        placed.len(),
        settled.len(),
        "every recorded bet was settled"
    );
    assert!(
        summaries.values().all(|&n| n == 1),
        "each round settled once"
    );
    let balances: i64 = client
        .query_one("SELECT sum(balance)::int8 FROM accounts", &[])
        .await
        .expect("sum")
        .get(0);
    assert_eq!(balances, deposits - stakes + payouts, "money is conserved");
    store
        .verify_chain(1, |_| {})
        .await
        .expect("the chain holds");
}

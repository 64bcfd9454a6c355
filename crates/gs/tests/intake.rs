//! GS serving bets over a real NATS server: micro-batched intake, one answer per request,
//! malformed payloads, and the betting status it announces.

mod common;

use std::time::Duration;

use bus::{Bus, Kv, NatsBus, NatsOptions};
use common::*;
use futures_util::future::join_all;
use protocol::{Encoding, ErrorCode, PlaceBetReply, PlaceBetRequest};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(10);

async fn request(bus: &NatsBus, payload: bytes::Bytes) -> PlaceBetReply {
    let answer = bus
        .request("bets.place.t1", payload, DEADLINE)
        .await
        .expect("an answer");
    Encoding::MsgPack.decode(&answer).expect("a reply")
}

fn encode(bet: &gs::ledger::BetRequest) -> bytes::Bytes {
    Encoding::MsgPack
        .encode(&PlaceBetRequest {
            request_id: "r".into(),
            bet_id: bet.bet_id,
            player: bet.player.clone(),
            table: bet.table.clone(),
            round: bet.round,
            selection: bet.selection,
            amount: bet.amount,
        })
        .expect("encode")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bets_are_batched_each_gets_its_own_answer_and_garbage_gets_bad_message() {
    let db = migrated_db().await;
    let store = store(&db.url, 8);
    let client = connect(&db.url).await;
    let nats = testkit::nats().expect("nats");
    let bus = NatsBus::connect(&nats.url, &nats.prefix, NatsOptions::default())
        .await
        .expect("connect");
    bus.setup(&bus::Definitions::croupier())
        .await
        .expect("setup");

    let t = table("t1");
    let players: Vec<_> = (0..8).map(|i| player(&format!("n{i}"))).collect();
    for who in &players {
        deposit(&store, who, 10_000).await;
    }
    let mut rounds = Rounds::new(&store, &t);
    rounds.open(1, Duration::from_secs(120)).await;

    let config = gs::GsConfig {
        batch_size: 16,
        // Past the requests' deadline: a bet that waited for it would time out. With no batch
        // in flight a batch is written at once; the linger only gathers bets behind one
        // (ADR 0034).
        linger: Duration::from_secs(30),
        ..gs::GsConfig::new("gs-test")
    };
    let shutdown = CancellationToken::new();
    let gs = gs::Gs::build(config, bus.clone(), store.clone());
    let running = tokio::spawn(gs.run(shutdown.clone()));

    // The betting status is announced once GS serves.
    let kv = bus.kv(protocol::subject::STATUS_BUCKET).await.expect("kv");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(entry) = kv
            .get(protocol::subject::STATUS_BETTING_KEY)
            .await
            .expect("get")
        {
            let status: protocol::BettingStatus =
                Encoding::MsgPack.decode(&entry.value).expect("status");
            if status.betting == protocol::Betting::Enabled {
                break entry;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no betting status");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let status: protocol::BettingStatus = Encoding::MsgPack.decode(&status.value).expect("status");
    assert_eq!(status.betting, protocol::Betting::Enabled);

    // Garbage first: answered, and GS goes on serving.
    for garbage in [&b"\xc1\xc1"[..], b"", &[0x81, 0xa1, b'x', 0x01]] {
        match request(&bus, bytes::Bytes::copy_from_slice(garbage)).await {
            PlaceBetReply::Rejected(r) => assert_eq!(r.code, ErrorCode::BadMessage),
            other => panic!("garbage accepted: {other:?}"),
        }
    }

    // Many bets at once, each player 10 × 100, plus one retry of each player's first bet.
    let bets: Vec<_> = players
        .iter()
        .flat_map(|who| {
            (0..10)
                .map(|_| bet(who, &t, 1, red(), 100))
                .collect::<Vec<_>>()
        })
        .collect();
    let retries: Vec<_> = bets.iter().step_by(10).cloned().collect();
    let answers = join_all(
        bets.iter()
            .chain(&retries)
            .map(|b| request(&bus, encode(b))),
    )
    .await;
    for (answer, sent) in answers.iter().zip(bets.iter().chain(&retries)) {
        match answer {
            PlaceBetReply::Accepted(a) => assert_eq!(a.bet_id, sent.bet_id),
            other => panic!("refused: {other:?}"),
        }
    }
    for who in &players {
        assert_eq!(
            balance(&client, who.as_str()).await,
            9_000,
            "debited once per bet"
        );
    }
    let batches: i64 = client
        .query_one(
            "SELECT count(DISTINCT xmin::text) FROM events WHERE type = 'bet_placed'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert!(
        batches < 80,
        "80 bets were written in fewer transactions ({batches})"
    );

    // A bet alone, with nothing in flight, is written at once, not after the linger.
    let alone = bet(&players[0], &t, 1, red(), 100);
    match request(&bus, encode(&alone)).await {
        PlaceBetReply::Accepted(a) => assert_eq!(a.bet_id, alone.bet_id),
        other => panic!("a bet alone: {other:?}"),
    }

    // Still serving after all that.
    match request(&bus, b"not msgpack"[..].into()).await {
        PlaceBetReply::Rejected(r) => assert_eq!(r.code, ErrorCode::BadMessage),
        other => panic!("garbage accepted: {other:?}"),
    }
    shutdown.cancel();
    running.await.expect("join").expect("gs ran");
}

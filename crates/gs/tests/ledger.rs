//! GS's ledger against a real Postgres: batched placement, settlement, refunds, idempotency,
//! the wallet rules, conservation of money, racing settlers, and rebuilding the read models.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use domain::{RawSelection, Selection};
use gs::ledger::{self, BetOutcome};
use protocol::{ErrorCode, EventBody};

const OPEN: Duration = Duration::from_secs(120);

fn random_selection(rng: &mut Rng) -> Selection {
    let raw = match rng.between(0, 4) {
        0 => RawSelection::Red,
        1 => RawSelection::Black,
        2 => RawSelection::Straight {
            numbers: vec![rng.between(0, 36) as u8],
        },
        3 => RawSelection::Dozen {
            index: rng.between(1, 3) as u8,
        },
        _ => RawSelection::Odd,
    };
    Selection::parse(raw).expect("selection")
}

/// Table `t1` with round 1 open, and two funded players.
struct Open {
    _db: testkit::TestDb,
    store: store::Store,
    client: tokio_postgres::Client,
    t: domain::TableId,
    alice: domain::PlayerId,
    bob: domain::PlayerId,
    rounds: Rounds,
}

async fn alice_and_bob_at_round_1(pool: usize, funds: i64) -> Open {
    let db = migrated_db().await;
    let store = store(&db.url, pool);
    let client = connect(&db.url).await;
    let t = table("t1");
    let (alice, bob) = (player("alice"), player("bob"));
    deposit(&store, &alice, funds).await;
    deposit(&store, &bob, funds).await;
    let mut rounds = Rounds::new(&store, &t);
    rounds.open(1, OPEN).await;
    Open {
        _db: db,
        store,
        client,
        t,
        alice,
        bob,
        rounds,
    }
}

/// Every row of the read models, as text, in key order.
async fn read_models(client: &tokio_postgres::Client) -> Vec<String> {
    let mut rows = Vec::new();
    for query in [
        "SELECT r::text FROM rounds r ORDER BY table_id, round",
        "SELECT l::text FROM legacy_bets l ORDER BY bet_id",
        "SELECT r::text FROM bet_results r ORDER BY bet_id",
        "SELECT s::text FROM round_stakes s ORDER BY table_id, round, player",
        "SELECT a::text FROM accounts a ORDER BY player",
        "SELECT d::text FROM deposits d ORDER BY deposit_id",
    ] {
        for row in client.query(query, &[]).await.expect("read model") {
            rows.push(row.get::<_, String>(0));
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_is_conserved_over_many_random_rounds_and_the_read_models_rebuild_identically() {
    let db = migrated_db().await;
    let store = store(&db.url, 4);
    let client = connect(&db.url).await;
    let table = table("roulette-1");
    let mut rounds = Rounds::new(&store, &table);
    let mut rng = Rng::new(0x5eed_0007);
    let players: Vec<_> = (0..12).map(|i| player(&format!("p{i}"))).collect();
    for who in &players {
        deposit(&store, who, rng.between(500, 20_000) as i64).await;
    }
    let mut accepted_ids: HashSet<uuid::Uuid> = HashSet::new();
    let mut rejected = 0usize;
    for round in 1..=40u64 {
        rounds.open(round, OPEN).await;
        for _ in 0..rng.between(1, 4) {
            let mut batch = Vec::new();
            for _ in 0..rng.between(1, 30) {
                let who = &players[rng.between(0, players.len() as u64 - 1) as usize];
                let amount = rng.between(10, 3_000) as i64;
                batch.push(bet(who, &table, round, random_selection(&mut rng), amount));
            }
            // Some retries of the same bets ride along in the batch.
            if rng.percent(30) {
                let again = batch[0].clone();
                batch.push(again);
            }
            for (outcome, placed) in place(&store, &batch).await.into_iter().zip(&batch) {
                match outcome {
                    BetOutcome::Accepted { .. } => {
                        accepted_ids.insert(*placed.bet_id.as_uuid());
                    }
                    BetOutcome::Rejected { .. } => rejected += 1,
                }
            }
        }
        if rng.percent(20) {
            if rng.percent(50) {
                rounds.close(round).await;
            }
            rounds.void(round).await;
            ledger::refund_round(&store, &table, domain::RoundId::new(round).expect("round"))
                .await
                .expect("refund");
        } else {
            rounds.close(round).await;
            rounds.declare(round).await;
            ledger::settle_round(&store, &table, domain::RoundId::new(round).expect("round"))
                .await
                .expect("settle")
                .expect("the round is settled here");
        }
        if rng.percent(15) {
            let who = &players[rng.between(0, players.len() as u64 - 1) as usize];
            deposit(&store, who, 1_000).await;
        }
    }
    let accepted = accepted_ids.len();
    assert!(accepted > 200, "enough bets were accepted: {accepted}");
    assert!(rejected > 0, "some bets were refused for funds: {rejected}");

    // Sums from the events table.
    let (mut deposits, mut stakes, mut payouts, mut refunds) = (0i64, 0i64, 0i64, 0i64);
    let mut last_balance: HashMap<String, i64> = HashMap::new();
    let mut placed: HashSet<uuid::Uuid> = HashSet::new();
    let mut closed: HashSet<uuid::Uuid> = HashSet::new();
    let rows = client
        .query("SELECT data FROM events ORDER BY position", &[])
        .await
        .expect("events");
    for row in rows {
        let event = protocol::decode_event(row.get::<_, &[u8]>(0)).expect("decodable");
        match event.body {
            EventBody::FundsDeposited(e) => {
                deposits += e.amount.get();
                last_balance.insert(e.player.to_string(), e.balance.get());
            }
            EventBody::BetPlaced(e) => {
                stakes += e.amount.get();
                assert!(placed.insert(*e.bet_id.as_uuid()), "placed once");
                last_balance.insert(e.player.to_string(), e.balance.get());
            }
            EventBody::BetSettled(e) => {
                payouts += e.payout.get();
                assert!(closed.insert(*e.bet_id.as_uuid()), "settled once");
                last_balance.insert(e.player.to_string(), e.balance.get());
            }
            EventBody::BetRefunded(e) => {
                refunds += e.amount.get();
                assert!(closed.insert(*e.bet_id.as_uuid()), "refunded once");
                last_balance.insert(e.player.to_string(), e.balance.get());
            }
            _ => {}
        }
    }
    assert_eq!(
        placed, closed,
        "every accepted bet is settled or refunded exactly once"
    );
    assert_eq!(
        placed, accepted_ids,
        "exactly the accepted bets were recorded"
    );
    let staked_bets: i64 = client
        .query_one("SELECT coalesce(sum(bets), 0)::int8 FROM round_stakes", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(staked_bets as usize, accepted);
    let from_events: i64 = last_balance.values().sum();
    let from_accounts: i64 = client
        .query_one("SELECT coalesce(sum(balance), 0)::int8 FROM accounts", &[])
        .await
        .expect("sum")
        .get(0);
    let expected = deposits - stakes + payouts + refunds;
    assert_eq!(from_events, expected, "the events' balances add up");
    assert_eq!(from_accounts, expected, "the accounts read model adds up");

    store
        .verify_chain(1, |_| {})
        .await
        .expect("the chain holds");

    let before = read_models(&client).await;
    let report = gs::projections::rebuild(&store).await.expect("rebuild");
    assert_eq!(report.rounds, 40);
    let after = read_models(&client).await;
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a, "a rebuilt row differs");
    }
}

#[tokio::test]
async fn a_retried_bet_gets_the_first_answer_and_is_debited_once() {
    let db = migrated_db().await;
    let store = store(&db.url, 2);
    let client = connect(&db.url).await;
    let t = table("t1");
    let alice = player("alice");
    deposit(&store, &alice, 1_000).await;
    let mut rounds = Rounds::new(&store, &t);
    rounds.open(1, OPEN).await;

    let first = bet(&alice, &t, 1, red(), 100);
    let answer = place(&store, std::slice::from_ref(&first)).await;
    assert_eq!(
        answer,
        vec![BetOutcome::Accepted {
            balance: money(900)
        }]
    );
    // Another bet moves the balance on; the retry still gets the first answer.
    place(&store, &[bet(&alice, &t, 1, red(), 50)]).await;
    let retry = place(&store, std::slice::from_ref(&first)).await;
    assert_eq!(
        retry,
        vec![BetOutcome::Accepted {
            balance: money(900)
        }]
    );
    assert_eq!(balance(&client, "alice").await, 850, "debited once");

    // The same id with other content is a conflict, and costs nothing.
    let mut other = first.clone();
    other.amount = money(200);
    assert_eq!(
        code(&place(&store, &[other.clone()]).await[0]),
        Some(ErrorCode::BetIdConflict)
    );
    // Within one batch: a repeat is answered like the first, a changed repeat is a conflict.
    let fresh = bet(&alice, &t, 1, straight(17), 10);
    let mut changed = fresh.clone();
    changed.selection = straight(18);
    let answers = place(&store, &[fresh.clone(), fresh.clone(), changed]).await;
    assert_eq!(
        answers[0],
        BetOutcome::Accepted {
            balance: money(840)
        }
    );
    assert_eq!(answers[1], answers[0]);
    assert_eq!(code(&answers[2]), Some(ErrorCode::BetIdConflict));
    assert_eq!(balance(&client, "alice").await, 840);
}

#[tokio::test]
async fn bets_breaking_the_wallet_rules_are_refused_and_cost_nothing() {
    let db = migrated_db().await;
    let store = store(&db.url, 2);
    let client = connect(&db.url).await;
    let t = table("t1");
    let bob = player("bob");
    deposit(&store, &bob, 150_000).await;
    let mut rounds = Rounds::new(&store, &t);
    rounds.open(1, OPEN).await;
    rounds.open(2, Duration::from_millis(1)).await;
    rounds.open(3, OPEN).await;
    rounds.close(3).await;
    tokio::time::sleep(Duration::from_millis(20)).await;

    let answers = place(
        &store,
        &[
            bet(&bob, &t, 1, red(), 5),                // below the minimum
            bet(&bob, &t, 1, red(), 100_001),          // above the maximum
            bet(&bob, &t, 2, red(), 100),              // after closes_at
            bet(&bob, &t, 3, red(), 100),              // round closed
            bet(&bob, &t, 9, red(), 100),              // round never seen
            bet(&player("nobody"), &t, 1, red(), 100), // no money at all
            bet(&bob, &t, 1, red(), 100_000),          // fine
            bet(&bob, &t, 1, red(), 60_000),           // more than is left
        ],
    )
    .await;
    let codes: Vec<_> = answers.iter().map(code).collect();
    assert_eq!(
        codes,
        vec![
            Some(ErrorCode::LimitExceeded),
            Some(ErrorCode::LimitExceeded),
            Some(ErrorCode::BettingClosed),
            Some(ErrorCode::BettingClosed),
            Some(ErrorCode::BettingClosed),
            Some(ErrorCode::InsufficientFunds),
            None,
            Some(ErrorCode::InsufficientFunds),
        ]
    );
    assert_eq!(balance(&client, "bob").await, 50_000);
    let no_account: i64 = client
        .query_one("SELECT count(*) FROM accounts WHERE player = 'nobody'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(no_account, 0, "a refused bet leaves no trace");

    // The per-round stake limit counts what is staked already.
    let limits =
        domain::TableLimits::new(money(10), money(100_000), money(120_000)).expect("limits");
    let answers = ledger::place_bets(&store, &[bet(&bob, &t, 1, red(), 30_000)], &limits, now())
        .await
        .expect("batch");
    assert_eq!(code(&answers[0]), Some(ErrorCode::LimitExceeded));
    // A refused bet is not recorded: the same bet_id may succeed later.
    let retry = bet(&bob, &t, 1, red(), 20_000);
    let answers = ledger::place_bets(&store, std::slice::from_ref(&retry), &limits, now())
        .await
        .expect("batch");
    assert_eq!(
        answers[0],
        BetOutcome::Accepted {
            balance: money(30_000)
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_settlers_racing_on_a_round_settle_it_exactly_once() {
    let db = migrated_db().await;
    let store_a = store(&db.url, 2);
    let store_b = store(&db.url, 2);
    let client = connect(&db.url).await;
    let t = table("t1");
    let mut rounds = Rounds::new(&store_a, &t);
    let players: Vec<_> = (0..20).map(|i| player(&format!("r{i}"))).collect();
    for who in &players {
        deposit(&store_a, who, 10_000).await;
    }
    for round in 1..=5u64 {
        rounds.open(round, OPEN).await;
        let batch: Vec<_> = players
            .iter()
            .flat_map(|who| {
                [
                    bet(who, &t, round, red(), 100),
                    bet(who, &t, round, straight(3), 10),
                ]
            })
            .collect();
        place(&store_a, &batch).await;
        rounds.close(round).await;
        rounds.declare(round).await;
        let id = domain::RoundId::new(round).expect("round");
        let (a, b) = tokio::join!(
            ledger::settle_round(&store_a, &t, id),
            ledger::settle_round(&store_b, &t, id)
        );
        let settled = [a.expect("settler a"), b.expect("settler b")];
        assert_eq!(
            settled.iter().filter(|s| s.is_some()).count(),
            1,
            "exactly one settles round {round}"
        );
        // Settling again later finds nothing to claim.
        assert!(
            ledger::settle_round(&store_a, &t, id)
                .await
                .expect("again")
                .is_none()
        );
    }
    let settled: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE type = 'bet_settled'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(settled, 5 * 40);
    let summaries: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE type = 'round_settled'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(summaries, 5);
}

#[tokio::test]
async fn a_voided_round_refunds_every_stake_once() {
    let db = migrated_db().await;
    let store = store(&db.url, 2);
    let client = connect(&db.url).await;
    let t = table("t1");
    let carol = player("carol");
    deposit(&store, &carol, 1_000).await;
    let mut rounds = Rounds::new(&store, &t);
    rounds.open(1, OPEN).await;
    place(
        &store,
        &[
            bet(&carol, &t, 1, red(), 300),
            bet(&carol, &t, 1, straight(0), 200),
        ],
    )
    .await;
    assert_eq!(balance(&client, "carol").await, 500);
    rounds.void(1).await;
    let id = domain::RoundId::new(1).expect("round");
    let refund = ledger::refund_round(&store, &t, id)
        .await
        .expect("refund")
        .expect("refunded");
    assert_eq!(refund.bets, 2);
    assert_eq!(refund.refunded, money(500));
    assert!(
        ledger::refund_round(&store, &t, id)
            .await
            .expect("again")
            .is_none()
    );
    assert_eq!(balance(&client, "carol").await, 1_000);
    // A voided round takes no more bets and is never settled.
    assert_eq!(
        code(&place(&store, &[bet(&carol, &t, 1, red(), 100)]).await[0]),
        Some(ErrorCode::BettingClosed)
    );
    assert!(
        ledger::settle_round(&store, &t, id)
            .await
            .expect("settle")
            .is_none()
    );
}

#[tokio::test]
async fn one_changed_byte_of_a_bet_event_is_found_by_the_chain_verifier_at_its_position() {
    let db = migrated_db().await;
    let store = store(&db.url, 2);
    let client = connect(&db.url).await;
    let t = table("t1");
    let dave = player("dave");
    deposit(&store, &dave, 1_000).await;
    let mut rounds = Rounds::new(&store, &t);
    rounds.open(1, OPEN).await;
    place(
        &store,
        &[bet(&dave, &t, 1, red(), 100), bet(&dave, &t, 1, red(), 100)],
    )
    .await;
    let position: i64 = client
        .query_one(
            "SELECT min(position) FROM events WHERE type = 'bet_placed'",
            &[],
        )
        .await
        .expect("position")
        .get(0);
    store.verify_chain(1, |_| {}).await.expect("intact");
    client
        .batch_execute(&format!(
            "ALTER TABLE events DISABLE TRIGGER USER;
             UPDATE events SET data = set_byte(data, 3, get_byte(data, 3) # 1) WHERE position = {position};
             ALTER TABLE events ENABLE ALWAYS TRIGGER events_refuse_update_delete;
             ALTER TABLE events ENABLE ALWAYS TRIGGER events_refuse_truncate;"
        ))
        .await
        .expect("tamper as superuser");
    match store.verify_chain(1, |_| {}).await {
        Err(store::VerifyError::Broken(broken)) => assert_eq!(broken.position, position),
        other => panic!("expected a broken chain at {position}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_retry_among_new_bets_or_after_betting_closed_gets_the_first_answer() {
    let Open {
        _db,
        store,
        client,
        t,
        alice,
        bob,
        mut rounds,
    } = alice_and_bob_at_round_1(2, 1_000).await;

    let first = bet(&alice, &t, 1, red(), 100);
    place(&store, std::slice::from_ref(&first)).await;
    // The retry sits in a batch of new bets: the optimistic attempt trips on its stored id,
    // the batch is judged again, and every bet still gets the right answer, debited once.
    let new_alice = bet(&alice, &t, 1, straight(3), 10);
    let new_bob = bet(&bob, &t, 1, red(), 30);
    let answers = place(&store, &[new_alice.clone(), first.clone(), new_bob.clone()]).await;
    assert_eq!(
        answers,
        vec![
            BetOutcome::Accepted {
                balance: money(890)
            },
            BetOutcome::Accepted {
                balance: money(900)
            },
            BetOutcome::Accepted {
                balance: money(970)
            },
        ]
    );
    assert_eq!(balance(&client, "alice").await, 890);
    assert_eq!(balance(&client, "bob").await, 970);

    // After betting closed, a retry of an accepted bet is still answered with its first
    // answer (not BETTING_CLOSED), a changed one is a conflict, a new one is refused.
    rounds.close(1).await;
    let mut changed = new_bob.clone();
    changed.amount = money(31);
    let late = bet(&bob, &t, 1, red(), 5);
    let answers = place(&store, &[first.clone(), changed, late]).await;
    assert_eq!(
        answers[0],
        BetOutcome::Accepted {
            balance: money(900)
        }
    );
    assert_eq!(code(&answers[1]), Some(ErrorCode::BetIdConflict));
    assert_eq!(code(&answers[2]), Some(ErrorCode::BettingClosed));
    assert_eq!(balance(&client, "alice").await, 890);
    assert_eq!(balance(&client, "bob").await, 970);
    let stakes: Vec<(String, i64, i32)> = client
        .query(
            "SELECT player, staked, bets FROM round_stakes ORDER BY player",
            &[],
        )
        .await
        .expect("round_stakes")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        stakes,
        vec![("alice".to_string(), 110, 2), ("bob".to_string(), 30, 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_players_racing_with_one_bet_id_get_one_acceptance_and_one_conflict() {
    let Open {
        _db,
        store,
        client,
        t,
        alice,
        bob,
        rounds: _,
    } = alice_and_bob_at_round_1(4, 100_000).await;

    // Each batch also carries bets of its own, so a batch that loses the race is judged
    // again as a whole and its other bets still go through, once.
    let (mut alice_spent, mut bob_spent) = (0, 0);
    for _ in 0..20 {
        let contested = bet(&alice, &t, 1, red(), 10);
        let mut reused = bet(&bob, &t, 1, straight(7), 20);
        reused.bet_id = contested.bet_id;
        let alice_batch = vec![bet(&alice, &t, 1, red(), 11), contested];
        let bob_batch = vec![reused, bet(&bob, &t, 1, red(), 12)];
        let (a, b) = tokio::join!(place(&store, &alice_batch), place(&store, &bob_batch));
        let alice_won = matches!(a[1], BetOutcome::Accepted { .. });
        let bob_won = matches!(b[0], BetOutcome::Accepted { .. });
        assert!(alice_won != bob_won, "exactly one wins: {a:?} {b:?}");
        let loser = if alice_won { &b[0] } else { &a[1] };
        assert_eq!(code(loser), Some(ErrorCode::BetIdConflict));
        assert!(matches!(a[0], BetOutcome::Accepted { .. }), "{a:?}");
        assert!(matches!(b[1], BetOutcome::Accepted { .. }), "{b:?}");
        alice_spent += 11 + if alice_won { 10 } else { 0 };
        bob_spent += 12 + if bob_won { 20 } else { 0 };
    }
    assert_eq!(balance(&client, "alice").await, 100_000 - alice_spent);
    assert_eq!(balance(&client, "bob").await, 100_000 - bob_spent);
    let bets: i64 = client
        .query_one("SELECT count(*) FROM events WHERE type = 'bet_placed'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(bets, 60, "two own bets and one contested bet per race");
}

/// Writes `bet` as GS did before migration 0005: its `bet_placed` event has a random id, and
/// (as the migration does for such bets) `legacy_bets` records where it is.
async fn place_as_before_0005(store: &store::Store, bet: &gs::ledger::BetRequest, balance: i64) {
    let mut client = store.client().await.expect("client");
    let tx = client.transaction().await.expect("begin");
    let player = bet.player.as_str();
    let version: i32 = tx
        .query_one(
            "SELECT version FROM accounts WHERE player = $1 FOR UPDATE",
            &[&player],
        )
        .await
        .expect("account")
        .get(0);
    let at = now();
    let event = protocol::Event::new(
        uuid::Uuid::new_v4(),
        at,
        EventBody::BetPlaced(bet.placed(money(balance))),
    );
    let appended = store::append(
        &tx,
        &[store::NewEvent {
            event_id: event.id,
            stream: format!("player-{player}"),
            version: version + 1,
            kind: "bet_placed".into(),
            data: protocol::encode_event(&event).expect("encode"),
            metadata: bytes::Bytes::new(),
        }],
    )
    .await
    .expect("append");
    let (position, when) = (appended[0].position, at.as_offset_datetime());
    let (round, amount) = (bet.round.get() as i64, bet.amount.get());
    tx.execute(
        "UPDATE accounts SET balance = $2, version = $3, updated_at = $4 WHERE player = $1",
        &[&player, &balance, &(version + 1), &when],
    )
    .await
    .expect("debit");
    tx.execute(
        "INSERT INTO round_stakes (table_id, round, player, staked, bets, first_version, \
                                   last_version) VALUES ($1, $2, $3, $4, 1, $5, $5)",
        &[
            &bet.table.as_str(),
            &round,
            &player,
            &amount,
            &(version + 1),
        ],
    )
    .await
    .expect("stake");
    tx.execute(
        "INSERT INTO legacy_bets (bet_id, placed_position) VALUES ($1, $2)",
        &[bet.bet_id.as_uuid(), &position],
    )
    .await
    .expect("legacy bet");
    tx.commit().await.expect("commit");
}

#[tokio::test]
async fn bets_are_keyed_by_their_event_id_and_bets_from_before_0005_keep_their_first_answer() {
    let Open {
        _db,
        store,
        client,
        t,
        alice,
        bob,
        mut rounds,
    } = alice_and_bob_at_round_1(2, 1_000).await;

    // A new bet's event id is derived from its bet id.
    let new = bet(&bob, &t, 1, red(), 10);
    place(&store, std::slice::from_ref(&new)).await;
    let derived: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE type = 'bet_placed' AND event_id = $1",
            &[&ledger::bet_placed_id(&new.bet_id)],
        )
        .await
        .expect("event")
        .get(0);
    assert_eq!(derived, 1);

    // A bet from before migration 0005 (random event id): its retry, alone or among new
    // bets, gets the first answer and is not debited again; another player reusing its id
    // is a conflict.
    let old = bet(&alice, &t, 1, red(), 100);
    place_as_before_0005(&store, &old, 900).await;
    let first = BetOutcome::Accepted {
        balance: money(900),
    };
    assert_eq!(
        place(&store, std::slice::from_ref(&old)).await,
        vec![first.clone()]
    );
    let mut reused = bet(&bob, &t, 1, straight(7), 20);
    reused.bet_id = old.bet_id;
    let fresh = bet(&alice, &t, 1, straight(3), 10);
    let answers = place(&store, &[fresh, old.clone(), reused]).await;
    assert_eq!(
        answers[0],
        BetOutcome::Accepted {
            balance: money(890)
        }
    );
    assert_eq!(answers[1], first);
    assert_eq!(code(&answers[2]), Some(ErrorCode::BetIdConflict));
    assert_eq!(balance(&client, "alice").await, 890);
    assert_eq!(balance(&client, "bob").await, 990);

    // Settled like any other bet, and the rebuild finds it again from its event.
    rounds.close(1).await;
    rounds.declare(1).await;
    let settled = ledger::settle_round(&store, &t, domain::RoundId::new(1).expect("round"))
        .await
        .expect("settle")
        .expect("settled");
    assert_eq!(settled.bets, 3);
    let before = read_models(&client).await;
    let report = gs::projections::rebuild(&store).await.expect("rebuild");
    assert_eq!((report.bets, report.legacy_bets), (3, 1));
    assert_eq!(read_models(&client).await, before);
}

/// Settlement finds the round's bets through `round_stakes` (ADR 0033). A row that disagrees
/// with the events (here Bob's version range cut short by hand) stops the settlement before
/// anything is paid, and the round stays resulted; once `croupier projections rebuild` has
/// recreated the rows from the events, every bet is settled once.
#[tokio::test]
async fn a_round_whose_stake_totals_disagree_with_its_events_settles_only_once_rebuilt() {
    let Open {
        store,
        client,
        t,
        alice,
        bob,
        mut rounds,
        ..
    } = alice_and_bob_at_round_1(2, 1_000).await;
    place(&store, &[bet(&alice, &t, 1, red(), 100)]).await;
    place(&store, &[bet(&bob, &t, 1, red(), 200)]).await;
    place(&store, &[bet(&bob, &t, 1, straight(7), 10)]).await;
    client
        .execute(
            "UPDATE round_stakes SET last_version = first_version WHERE player = 'bob'",
            &[],
        )
        .await
        .expect("cut bob's range");
    rounds.close(1).await;
    rounds.declare(1).await;
    let round_1 = domain::RoundId::new(1).expect("round");
    let refused = ledger::settle_round(&store, &t, round_1).await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("round_stakes counts 2 bets of bob")),
        "{refused:?}"
    );
    let (phase, results): (String, i64) = {
        let row = client
            .query_one(
                "SELECT (SELECT phase FROM rounds WHERE table_id = 't1' AND round = 1), \
                        (SELECT count(*) FROM bet_results)",
                &[],
            )
            .await
            .expect("state");
        (row.get(0), row.get(1))
    };
    assert_eq!(
        (phase.as_str(), results),
        ("resulted", 0),
        "nothing was settled"
    );

    gs::projections::rebuild(&store).await.expect("rebuild");
    let settled = ledger::settle_round(&store, &t, round_1)
        .await
        .expect("settle")
        .expect("settled");
    assert_eq!(settled.bets, 3);
    assert_eq!(settled.staked, money(310));
    let results: i64 = client
        .query_one(
            "SELECT count(*) FROM bet_results WHERE status = 'settled'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(results, 3);
    // Money is conserved: what both wallets hold is what they were given, less the stakes,
    // plus the payouts.
    let held = balance(&client, "alice").await + balance(&client, "bob").await;
    assert_eq!(held, 2_000 - 310 + settled.paid.get());
}

/// A refund writes back only the wallets it credits: a player of the round whose bets have
/// their result already is locked with the others but left as it was.
#[tokio::test]
async fn a_refund_leaves_the_wallets_it_does_not_credit_untouched() {
    let Open {
        store,
        client,
        t,
        alice,
        bob,
        mut rounds,
        ..
    } = alice_and_bob_at_round_1(2, 1_000).await;
    let bobs = bet(&bob, &t, 1, red(), 200);
    place(&store, &[bet(&alice, &t, 1, red(), 100), bobs.clone()]).await;
    // Bob's bet has its result already (as a refund interrupted halfway would leave it).
    client
        .execute(
            "INSERT INTO bet_results (bet_id, status, payout, position) \
             VALUES ($1, 'refunded', NULL, 1)",
            &[bobs.bet_id.as_uuid()],
        )
        .await
        .expect("result");
    let wallet = async |who: &str| -> (i64, i32, String) {
        let row = client
            .query_one(
                "SELECT balance, version, updated_at::text FROM accounts WHERE player = $1",
                &[&who],
            )
            .await
            .expect("wallet");
        (row.get(0), row.get(1), row.get(2))
    };
    let bob_before = wallet("bob").await;
    rounds.void(1).await;
    let refund = ledger::refund_round(&store, &t, domain::RoundId::new(1).expect("round"))
        .await
        .expect("refund")
        .expect("refunded");
    assert_eq!(refund.bets, 1);
    assert_eq!(refund.refunded, money(100));
    assert_eq!(balance(&client, "alice").await, 1_000);
    assert_eq!(
        wallet("bob").await,
        bob_before,
        "bob's wallet is not written"
    );
}

/// A batch of more than `store::PIPELINED_MAX` accepted bets is written by binary COPY, a
/// smaller one by pipelined INSERTs: both leave the same rows (the rebuild from the events
/// writes them a third way), every `round_stakes` row's versions bracket its player's bets on
/// the round, and the round settles every bet once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_written_by_copy_and_one_by_insert_leave_the_same_rows() {
    let db = migrated_db().await;
    let store = store(&db.url, 2);
    let client = connect(&db.url).await;
    let t = table("t1");
    let players: Vec<_> = (0..40).map(|i| player(&format!("p{i}"))).collect();
    for who in &players {
        deposit(&store, who, 100_000).await;
    }
    let mut rounds = Rounds::new(&store, &t);
    rounds.open(1, OPEN).await;
    let mut rng = Rng::new(0x5eed_0032);
    let mut batch = |n: usize| -> Vec<_> {
        (0..n)
            .map(|i| {
                let selection = random_selection(&mut rng);
                bet(&players[i % players.len()], &t, 1, selection, 10 + i as i64)
            })
            .collect()
    };
    let (large, small) = (batch(store::PIPELINED_MAX + 44), batch(3));
    for placed in [&large, &small] {
        let outcomes = place(&store, placed).await;
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, BetOutcome::Accepted { .. })),
            "{outcomes:?}"
        );
    }
    let total = (large.len() + small.len()) as i64;

    // Each row's first and last version are bets, and between them are all its bets.
    let (ends_not_bets, bracketed): (i64, i64) = {
        let row = client
            .query_one(
                "SELECT count(*) FILTER (WHERE e.version IN (s.first_version, s.last_version) \
                                           AND e.type <> 'bet_placed'), \
                        count(*) FILTER (WHERE e.type = 'bet_placed') \
                 FROM round_stakes s JOIN events e ON e.stream = 'player-' || s.player \
                  AND e.version BETWEEN s.first_version AND s.last_version",
                &[],
            )
            .await
            .expect("join");
        (row.get(0), row.get(1))
    };
    assert_eq!(ends_not_bets, 0);
    assert_eq!(bracketed, total);
    store
        .verify_chain(1, |_| {})
        .await
        .expect("the chain holds");

    let before = read_models(&client).await;
    gs::projections::rebuild(&store).await.expect("rebuild");
    assert_eq!(before, read_models(&client).await, "the rebuild differs");

    rounds.close(1).await;
    rounds.declare(1).await;
    let settled = ledger::settle_round(&store, &t, domain::RoundId::new(1).expect("round"))
        .await
        .expect("settle")
        .expect("settled");
    assert_eq!(settled.bets as i64, total);
}

/// A round's bets are read from the player streams between the versions `round_stakes` keeps
/// (ADR 0033): a player who bet on another table between two bets on this round has that bet
/// in the range too. Settlement and refunds take only their own round's bets.
#[tokio::test]
async fn a_round_settles_only_its_own_bets_when_its_players_bet_elsewhere_between() {
    let Open {
        _db,
        store,
        client,
        t,
        alice,
        bob,
        mut rounds,
    } = alice_and_bob_at_round_1(2, 1_000).await;
    let t2 = table("t2");
    let mut rounds_t2 = Rounds::new(&store, &t2);
    rounds_t2.open(1, OPEN).await;

    // Alice: t1, then t2, then t1 again (three batches: versions 2, 3, 4); Bob: t1 only.
    let first = bet(&alice, &t, 1, red(), 10);
    let elsewhere = bet(&alice, &t2, 1, red(), 20);
    let second = bet(&alice, &t, 1, straight(17), 30);
    let bobs = bet(&bob, &t, 1, red(), 15);
    for batch in [
        vec![first.clone(), bobs.clone()],
        vec![elsewhere.clone()],
        vec![second.clone()],
    ] {
        let outcomes = place(&store, &batch).await;
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, BetOutcome::Accepted { .. })),
            "{outcomes:?}"
        );
    }
    let range: (i32, i32) = {
        let row = client
            .query_one(
                "SELECT first_version, last_version FROM round_stakes \
                 WHERE table_id = 't1' AND round = 1 AND player = 'alice'",
                &[],
            )
            .await
            .expect("alice's stakes on t1");
        (row.get(0), row.get(1))
    };
    assert_eq!(range, (2, 4), "alice's t1 bets span her t2 bet");

    // t2's round is voided: only its own bet is refunded.
    rounds_t2.void(1).await;
    let round_1 = domain::RoundId::new(1).expect("round");
    let refund = ledger::refund_round(&store, &t2, round_1)
        .await
        .expect("refund")
        .expect("refunded");
    assert_eq!((refund.bets, refund.refunded), (1, money(20)));
    assert_eq!(
        ledger::refund_round(&store, &t2, round_1)
            .await
            .expect("again"),
        None,
        "nothing is refunded twice"
    );

    // t1's round settles its three bets, not alice's t2 bet in between.
    rounds.close(1).await;
    rounds.declare(1).await;
    let settled = ledger::settle_round(&store, &t, round_1)
        .await
        .expect("settle")
        .expect("settled");
    assert_eq!((settled.bets, settled.staked), (3, money(55)));
    let mut settled_ids = Vec::new();
    for row in client
        .query(
            "SELECT data FROM events WHERE type = 'bet_settled' ORDER BY position",
            &[],
        )
        .await
        .expect("events")
    {
        let event = protocol::decode_event(row.get::<_, &[u8]>(0)).expect("decodable");
        if let EventBody::BetSettled(e) = event.body {
            settled_ids.push(e.bet_id);
        }
    }
    assert_eq!(settled_ids, vec![first.bet_id, bobs.bet_id, second.bet_id]);
}

/// Settlement reads a round's bets by the events' key on (stream, version), one range per
/// player (ADR 0033), not by a scan of the whole log: with 400k events (20 rounds of 2,000
/// players, five bets and five results each), the plan Postgres makes for a round, with the
/// custom plans GS's sessions use, scans `events_stream_version_key` and never `events` itself.
/// (Flattened into a join, the same query was planned as a sorted sequential scan of `events`
/// on this very data.)
#[tokio::test]
async fn a_rounds_bets_are_read_by_the_events_key() {
    let db = migrated_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "INSERT INTO events (position, event_id, stream, version, type, data, metadata, hash)
             SELECT row_number() OVER (ORDER BY r, k, p), gen_random_uuid(), 'player-p' || p,
                    (r - 1) * 10 + k,
                    CASE WHEN k <= 5 THEN 'bet_placed' ELSE 'bet_settled' END,
                    decode(repeat('ab', 180), 'hex'), '', decode(repeat('00', 32), 'hex')
             FROM generate_series(1, 20) r, generate_series(1, 10) k,
                  generate_series(1, 2000) p;
             INSERT INTO round_stakes (table_id, round, player, staked, bets, first_version,
                                       last_version)
             SELECT 't1', r, 'p' || p, 50, 5, (r - 1) * 10 + 1, (r - 1) * 10 + 5
             FROM generate_series(1, 20) r, generate_series(1, 2000) p;
             ANALYZE events; ANALYZE round_stakes;
             SET plan_cache_mode = force_custom_plan;",
        )
        .await
        .expect("a log of 400k events");
    client
        .batch_execute(&format!(
            "PREPARE round_bets (text, int8) AS {}",
            ledger::ROUND_BETS
        ))
        .await
        .expect("prepare");
    let plan: Vec<String> = client
        .query("EXPLAIN EXECUTE round_bets ('t1', 17)", &[])
        .await
        .expect("explain")
        .iter()
        .map(|row| row.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using events_stream_version_key")
            && !plan.contains("Seq Scan on events"),
        "{plan}"
    );
    let rows = client
        .query("EXECUTE round_bets ('t1', 17)", &[])
        .await
        .expect("execute");
    assert_eq!(rows.len(), 10_000);
}

//! The `events` table against a real Postgres: gapless, chained appends; refusals of UPDATE,
//! DELETE and TRUNCATE; conflicts; reads; and tamper detection by `verify_chain`.

mod common;

use common::{TestResult, connect, event, migrated_db, store};
use store::{
    ChainFault, Conflict, GENESIS_HASH, PIPELINED_MAX, StoreError, VerifyError, append, chain_hash,
    read_from,
};

#[tokio::test]
async fn appends_are_gapless_and_chained_and_the_chain_verifies() -> TestResult {
    let db = migrated_db().await;
    let store = store(&db.url, 4);
    let mut all = Vec::new();
    let mut versions = [0, 0];
    // Both ways a batch is written: one pipelined INSERT up to PIPELINED_MAX events, a
    // binary COPY beyond.
    let sizes = [1, 7, 3, 50, 2, PIPELINED_MAX, PIPELINED_MAX + 1, 2];
    for batch_size in sizes {
        let batch: Vec<_> = (0..batch_size)
            .map(|i| {
                let which = i % 2;
                versions[which] += 1;
                let stream = ["player-alice", "player-bob"][which];
                event(stream, versions[which], "funds_deposited", &[0x80, i as u8])
            })
            .collect();
        let appended = store.append_batch(&batch).await?;
        assert_eq!(appended.len(), batch.len());
        all.extend(appended);
    }
    let total = sizes.iter().sum::<usize>() as i64;
    let positions: Vec<i64> = all.iter().map(|a| a.position).collect();
    let expected: Vec<i64> = (1..=total).collect();
    assert_eq!(positions, expected, "positions are 1..N with no gap");

    // Each stored hash is the chain hash of its fields and the previous stored hash.
    let stored = store.read_from(1, 1000).await?;
    let mut prev = GENESIS_HASH;
    for (event, appended) in stored.iter().zip(&all) {
        let hash = chain_hash(
            &prev,
            event.position,
            event.event_id,
            &event.stream,
            &event.kind,
            &event.data,
            &event.metadata,
        );
        assert_eq!(event.hash, hash, "hash of position {}", event.position);
        assert_eq!(appended.hash, hash);
        assert_eq!(appended.event_id, event.event_id);
        prev = hash;
    }

    assert_eq!(stored.len() as i64, total);
    let mut pages = 0;
    let report = store.verify_chain(1, |_| pages += 1).await?;
    assert_eq!(report.events as i64, total);
    assert_eq!(report.last_position, total);
    assert_eq!(report.last_hash, prev);
    assert_eq!(pages, 1);
    assert_eq!(store.head().await?, (total, prev));

    // Resuming from the middle trusts the hash before it and checks the rest.
    let report = store.verify_chain(40, |_| {}).await?;
    assert_eq!(
        (report.events as i64, report.last_position),
        (total - 39, total)
    );
    Ok(())
}

#[tokio::test]
async fn the_first_event_matches_the_design_test_vector_when_stored() -> TestResult {
    let db = migrated_db().await;
    let store = store(&db.url, 2);
    let mut deposit = event("player-alice", 1, "funds_deposited", &[]);
    deposit.event_id = uuid::Uuid::parse_str("00000000-0000-4000-8000-000000000001")?;
    deposit.data = hex::decode("81a46b696e64a5686f6c6c6f")?.into();
    let appended = store.append_batch(&[deposit]).await?;
    assert_eq!(appended[0].position, 1);
    let client = connect(&db.url).await;
    let row = client
        .query_one(
            "SELECT encode(hash, 'hex') FROM events WHERE position = 1",
            &[],
        )
        .await?;
    let hash: String = row.try_get(0)?;
    assert_eq!(
        hash,
        "565ce6e737dd3975d5904a7f84d6322061ebfa330a257470d8750e2e30858ca5"
    );
    Ok(())
}

#[tokio::test]
async fn update_delete_and_truncate_of_events_are_refused_even_for_a_superuser() -> TestResult {
    let db = migrated_db().await;
    let store = store(&db.url, 2);
    store
        .append_batch(&[
            event("player-alice", 1, "funds_deposited", b"\x80"),
            event("player-alice", 2, "bet_placed", b"\x80"),
        ])
        .await?;
    let client = connect(&db.url).await;
    let role: bool = client
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?
        .try_get(0)?;
    assert!(role, "the test connects as a superuser");

    for (statement, operation) in [
        (
            "UPDATE events SET data = '\\x00' WHERE position = 1",
            "UPDATE",
        ),
        ("UPDATE events SET type = type WHERE false", "UPDATE"),
        ("DELETE FROM events WHERE position = 2", "DELETE"),
        ("DELETE FROM events", "DELETE"),
        ("TRUNCATE events", "TRUNCATE"),
    ] {
        let error = client
            .batch_execute(statement)
            .await
            .expect_err("the statement is refused");
        let db_error = error.as_db_error().expect("an error from the server");
        assert_eq!(
            db_error.message(),
            format!("events is append-only: {operation} is refused"),
            "{statement}"
        );
        assert_eq!(
            db_error.code(),
            &tokio_postgres::error::SqlState::RESTRICT_VIOLATION
        );
    }

    // Replication mode, which silences ordinary triggers, does not silence these.
    client
        .batch_execute("SET session_replication_role = replica")
        .await?;
    let error = client
        .batch_execute("DELETE FROM events")
        .await
        .expect_err("refused in replica mode too");
    assert_eq!(
        error.as_db_error().map(|e| e.message()),
        Some("events is append-only: DELETE is refused")
    );
    client
        .batch_execute("SET session_replication_role = origin")
        .await?;

    assert_eq!(
        store.read_from(1, 10).await?.len(),
        2,
        "nothing was removed"
    );
    store.verify_chain(1, |_| {}).await?;
    Ok(())
}

#[tokio::test]
async fn a_tampered_event_is_reported_at_exactly_its_position() -> TestResult {
    let db = migrated_db().await;
    let store = store(&db.url, 2);
    for version in 1..=10 {
        store
            .append_batch(&[event(
                "player-carol",
                version,
                "funds_deposited",
                b"\x81\xa1a\x01",
            )])
            .await?;
    }
    store.verify_chain(1, |_| {}).await?;

    let client = connect(&db.url).await;
    client
        .batch_execute(
            "ALTER TABLE events DISABLE TRIGGER USER;
             UPDATE events SET data = set_byte(data, 0, get_byte(data, 0) # 1) WHERE position = 6;
             ALTER TABLE events ENABLE ALWAYS TRIGGER events_refuse_update_delete;
             ALTER TABLE events ENABLE ALWAYS TRIGGER events_refuse_truncate;",
        )
        .await?;

    match store.verify_chain(1, |_| {}).await {
        Err(VerifyError::Broken(broken)) => {
            assert_eq!(broken.position, 6, "{broken}");
            assert!(
                matches!(broken.reason, ChainFault::BadHash { .. }),
                "{broken}"
            );
        }
        other => panic!("expected a broken chain at position 6, got {other:?}"),
    }
    // Verifying only what follows the tampered event passes (it trusts the stored hash of 6).
    assert_eq!(store.verify_chain(7, |_| {}).await?.events, 4);
    // The triggers are back on.
    assert!(client.batch_execute("DELETE FROM events").await.is_err());
    Ok(())
}

#[tokio::test]
async fn a_removed_event_is_reported_as_a_gap() -> TestResult {
    let db = migrated_db().await;
    let store = store(&db.url, 2);
    let batch: Vec<_> = (1..=5)
        .map(|v| event("round-roulette-1-1", v, "round_opened", b"\x80"))
        .collect();
    store.append_batch(&batch).await?;
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "ALTER TABLE events DISABLE TRIGGER USER;
             DELETE FROM events WHERE position = 3;
             ALTER TABLE events ENABLE ALWAYS TRIGGER events_refuse_update_delete;",
        )
        .await?;
    match store.verify_chain(1, |_| {}).await {
        Err(VerifyError::Broken(broken)) => {
            assert_eq!(broken.position, 3);
            assert_eq!(broken.reason, ChainFault::Gap { found: Some(4) });
        }
        other => panic!("expected a gap at 3, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_changed_stream_version_is_reported_though_the_hash_does_not_cover_it() -> TestResult {
    let db = migrated_db().await;
    let store = store(&db.url, 2);
    let batch: Vec<_> = (1..=4)
        .map(|v| event("player-erin", v, "funds_deposited", b"\x80"))
        .collect();
    store.append_batch(&batch).await?;
    store.verify_chain(1, |_| {}).await?;
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "ALTER TABLE events DISABLE TRIGGER USER;
             UPDATE events SET version = 7 WHERE position = 3;
             ALTER TABLE events ENABLE ALWAYS TRIGGER events_refuse_update_delete;
             ALTER TABLE events ENABLE ALWAYS TRIGGER events_refuse_truncate;",
        )
        .await?;
    match store.verify_chain(1, |_| {}).await {
        Err(VerifyError::Broken(broken)) => {
            assert_eq!(broken.position, 3, "{broken}");
            assert_eq!(
                broken.reason,
                ChainFault::VersionGap {
                    stream: "player-erin".into(),
                    expected: Some(3),
                    found: 7
                }
            );
        }
        other => panic!("expected a version gap at 3, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_duplicate_event_id_is_refused_as_a_duplicate_event() -> TestResult {
    let db = migrated_db().await;
    let store = store(&db.url, 2);
    let first = event("player-dave", 1, "funds_deposited", b"\x80");
    store.append_batch(std::slice::from_ref(&first)).await?;

    // The stored id last in a batch written by INSERT, then in one written by COPY.
    for size in [1, PIPELINED_MAX + 1] {
        let mut batch: Vec<_> = (1..=size)
            .map(|version| event("player-erin", version as i32, "funds_deposited", b"\x80"))
            .collect();
        batch[size - 1].event_id = first.event_id;
        let result = store.append_batch(&batch).await;
        assert!(
            matches!(result, Err(StoreError::Conflict(Conflict::DuplicateEvent))),
            "a batch of {size}: {result:?}"
        );
        assert_eq!(
            store.last_position().await?,
            1,
            "the failed batch took no position"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_unexpected_stream_version_is_refused_as_a_version_conflict() -> TestResult {
    let db = migrated_db().await;
    let store = store(&db.url, 2);
    store
        .append_batch(&[
            event("player-frank", 1, "funds_deposited", b"\x80"),
            event("player-frank", 2, "bet_placed", b"\x80"),
        ])
        .await?;
    for stale in [1, 2, 4] {
        let result = store
            .append_batch(&[event("player-frank", stale, "bet_placed", b"\x80")])
            .await;
        assert!(
            matches!(
                &result,
                Err(StoreError::Conflict(Conflict::VersionConflict { stream: Some(s) }))
                    if s == "player-frank"
            ),
            "version {stale}: {result:?}"
        );
    }
    store
        .append_batch(&[event("player-frank", 3, "bet_placed", b"\x80")])
        .await?;
    assert_eq!(store.last_position().await?, 3);
    Ok(())
}

#[tokio::test]
async fn two_writers_racing_for_the_same_stream_version_let_exactly_one_win() -> TestResult {
    let db = migrated_db().await;
    let store = store(&db.url, 4);
    let mut first = store.client().await?;
    let mut second = store.client().await?;

    // The first writer appends version 1 and holds its transaction open (and the head row).
    let tx1 = first.transaction().await?;
    append(&tx1, &[event("player-gina", 1, "funds_deposited", b"\x80")]).await?;

    // The second passed the version check (nothing committed yet) and waits for the head row.
    let racer = tokio::spawn(async move {
        let tx2 = second.transaction().await?;
        let result = append(&tx2, &[event("player-gina", 1, "funds_deposited", b"\x81")]).await;
        if result.is_ok() {
            tx2.commit().await?;
        }
        Ok::<_, StoreError>(result)
    });
    // Let the racer reach the head row lock before the first commits.
    let probe = connect(&db.url).await;
    for attempt in 0.. {
        assert!(
            attempt < 1000,
            "the second writer never waited for the head row"
        );
        let waiting: i64 = probe
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
                &[],
            )
            .await?
            .try_get(0)?;
        if waiting > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tx1.commit().await?;

    let result = racer.await??;
    assert!(
        matches!(
            result,
            Err(StoreError::Conflict(Conflict::VersionConflict { .. }))
        ),
        "{result:?}"
    );
    let events = store.read_stream("player-gina", 1, 10).await?;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data.as_ref(), b"\x80", "the first writer won");
    assert_eq!(store.last_position().await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_rolled_back_append_gives_its_positions_back() -> TestResult {
    let db = migrated_db().await;
    let store = store(&db.url, 2);
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let appended = append(&tx, &[event("player-hank", 1, "funds_deposited", b"\x80")]).await?;
    assert_eq!(appended[0].position, 1);
    tx.rollback().await?;
    drop(client);

    let appended = store
        .append_batch(&[event("player-ivy", 1, "funds_deposited", b"\x80")])
        .await?;
    assert_eq!(appended[0].position, 1, "position 1 was handed out again");
    store.verify_chain(1, |_| {}).await?;
    Ok(())
}

#[tokio::test]
async fn streams_read_in_version_order_and_the_store_reads_in_position_order() -> TestResult {
    let db = migrated_db().await;
    let store = store(&db.url, 2);
    // Interleave two streams over several batches.
    for round in 0..4 {
        store
            .append_batch(&[
                event("player-jo", round * 2 + 1, "bet_placed", &[round as u8]),
                event("round-roulette-1-7", round + 1, "round_opened", b"\x80"),
                event("player-jo", round * 2 + 2, "bet_settled", &[round as u8]),
            ])
            .await?;
    }
    let jo = store.read_stream("player-jo", 3, 100).await?;
    let versions: Vec<i32> = jo.iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![3, 4, 5, 6, 7, 8]);
    assert!(jo.iter().all(|e| e.stream == "player-jo"));
    assert_eq!(
        store.read_stream("player-jo", 1, 2).await?.len(),
        2,
        "limit holds"
    );
    assert!(store.read_stream("player-nobody", 1, 10).await?.is_empty());

    let page = store.read_from(5, 4).await?;
    let positions: Vec<i64> = page.iter().map(|e| e.position).collect();
    assert_eq!(positions, vec![5, 6, 7, 8]);
    assert_eq!(page[0].kind, "round_opened");
    assert!(
        page.windows(2)
            .all(|w| w[0].recorded_at <= w[1].recorded_at)
    );
    assert_eq!(store.last_position().await?, 12);

    // The free functions work on any connection or transaction too.
    let client = connect(&db.url).await;
    assert_eq!(read_from(&client, 12, 10).await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn read_models_are_mutable_and_refuse_invalid_money() -> TestResult {
    let db = migrated_db().await;
    let client = connect(&db.url).await;
    client
        .batch_execute(
            "INSERT INTO accounts (player, balance, version) VALUES ('alice', 100, 1);
             UPDATE accounts SET balance = 40, version = 2 WHERE player = 'alice';
             INSERT INTO rounds (table_id, round, phase) VALUES ('roulette-1', 1, 'open');
             UPDATE rounds SET phase = 'closed' WHERE table_id = 'roulette-1' AND round = 1;
             INSERT INTO round_stakes (table_id, round, player, staked, bets, first_version, last_version)
                 VALUES ('roulette-1', 1, 'alice', 60, 1, 2, 2);
             INSERT INTO deposits (deposit_id, player, amount, position) VALUES ('d1', 'alice', 100, 1);
             INSERT INTO gs_cursor (consumer, stream_seq) VALUES ('gs-1', 17);
             INSERT INTO outbox_cursor (name, position) VALUES ('results', 0);
             DELETE FROM round_stakes;",
        )
        .await?;
    for (statement, constraint) in [
        (
            "UPDATE accounts SET balance = -1 WHERE player = 'alice'",
            "accounts_balance_range",
        ),
        (
            "UPDATE accounts SET balance = 9007199254740992 WHERE player = 'alice'",
            "accounts_balance_range",
        ),
        (
            "INSERT INTO rounds (table_id, round, phase) VALUES ('roulette-1', 2, 'spinning')",
            "rounds_phase",
        ),
        (
            "INSERT INTO round_stakes (table_id, round, player, staked, bets, first_version, last_version)
                 VALUES ('roulette-1', 1, 'bob', 0, 1, 1, 1)",
            "round_stakes_staked_range",
        ),
        (
            "INSERT INTO round_stakes (table_id, round, player, staked, bets, first_version, last_version)
                 VALUES ('roulette-1', 1, 'bob', 10, 1, 3, 2)",
            "round_stakes_versions",
        ),
    ] {
        let error = client.batch_execute(statement).await.expect_err(statement);
        assert_eq!(
            error.as_db_error().and_then(|e| e.constraint()),
            Some(constraint),
            "{statement}"
        );
    }
    Ok(())
}

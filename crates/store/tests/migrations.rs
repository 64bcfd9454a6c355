//! Migrations against a real Postgres: applied once, safe to run from many starters at once,
//! and refused when an applied one has changed.

mod common;

use common::{TestResult, connect};
use store::{MIGRATIONS, MigrationError, StoreError};

async fn empty_db() -> testkit::TestDb {
    testkit::init_logging();
    testkit::postgres()
        .expect("a Postgres server for tests")
        .empty_database()
        .await
        .expect("an empty test database")
}

/// Applies and records (as `migrate` does) every migration up to `version` not applied yet, so
/// a test can put rows where a later migration will find them.
async fn apply_up_to(client: &mut tokio_postgres::Client, version: i32) -> TestResult {
    let tx = client.transaction().await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS public.schema_migrations (version integer NOT NULL PRIMARY KEY, \
         name text NOT NULL, checksum bytea NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let applied: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    for migration in MIGRATIONS
        .iter()
        .filter(|m| m.version > applied && m.version <= version)
    {
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[
                &migration.version,
                &migration.name,
                &migration.checksum().as_slice(),
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

fn all_versions() -> Vec<i32> {
    MIGRATIONS.iter().map(|m| m.version).collect()
}

#[tokio::test]
async fn migrations_are_applied_once_and_a_second_run_does_nothing() -> TestResult {
    let db = empty_db().await;
    let first = store::migrate_url(&db.url).await?;
    assert_eq!(first.applied, all_versions());
    let second = store::migrate_url(&db.url).await?;
    assert!(second.applied.is_empty(), "{second:?}");
    assert!(second.unknown.is_empty());

    let client = connect(&db.url).await;
    let rows = client
        .query(
            "SELECT version, name, checksum FROM schema_migrations ORDER BY version",
            &[],
        )
        .await?;
    assert_eq!(rows.len(), MIGRATIONS.len());
    for (row, migration) in rows.iter().zip(MIGRATIONS) {
        assert_eq!(row.try_get::<_, i32>(0)?, migration.version);
        assert_eq!(row.try_get::<_, &str>(1)?, migration.name);
        assert_eq!(row.try_get::<_, &[u8]>(2)?, migration.checksum().as_slice());
    }
    // The schema is whole: the event head and every read model exist.
    for table in [
        "events",
        "event_head",
        "accounts",
        "rounds",
        "round_stakes",
        "bet_results",
        "legacy_bets",
        "deposits",
        "gs_cursor",
        "outbox_cursor",
    ] {
        let found: Option<String> = client
            .query_one(
                "SELECT to_regclass($1)::text",
                &[&format!("public.{table}")],
            )
            .await?
            .try_get(0)?;
        assert_eq!(found.as_deref(), Some(table));
    }
    Ok(())
}

#[tokio::test]
async fn four_starters_migrating_at_once_all_succeed_and_each_migration_runs_once() -> TestResult {
    let db = empty_db().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = db.url.clone();
        tasks.spawn(async move { store::migrate_url(&url).await });
    }
    let mut applied = Vec::new();
    while let Some(result) = tasks.join_next().await {
        applied.extend(result??.applied);
    }
    applied.sort_unstable();
    assert_eq!(
        applied,
        all_versions(),
        "each migration applied by exactly one starter"
    );

    let client = connect(&db.url).await;
    let count: i64 = client
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await?
        .try_get(0)?;
    assert_eq!(count, i64::try_from(MIGRATIONS.len())?);
    Ok(())
}

#[tokio::test]
async fn a_changed_checksum_of_an_applied_migration_is_refused() -> TestResult {
    let db = empty_db().await;
    store::migrate_url(&db.url).await?;
    let client = connect(&db.url).await;
    client
        .batch_execute("UPDATE schema_migrations SET checksum = '\\x00' WHERE version = 1")
        .await?;

    let result = store::migrate_url(&db.url).await;
    match result {
        Err(StoreError::Migration(MigrationError::ChecksumMismatch { version, name, .. })) => {
            assert_eq!((version, name.as_str()), (1, "events"));
        }
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn migration_5_keeps_bets_placed_before_it_findable_and_their_selections_compact()
-> TestResult {
    let db = empty_db().await;
    let mut client = connect(&db.url).await;
    // The schema as migration 4 left it, recorded as `migrate` records it, with two bets.
    apply_up_to(&mut client, 4).await?;
    let tx = client.transaction().await?;
    tx.batch_execute(
        "INSERT INTO bets (bet_id, table_id, round, player, selection, amount, placed_position)
         VALUES ('00000000-0000-4000-8000-000000000001', 't1', 1, 'alice',
                 '{\"kind\":\"straight\",\"numbers\":[17]}', 10, 7),
                ('00000000-0000-4000-8000-000000000002', 't1', 1, 'bob',
                 '{\"kind\":\"dozen\",\"index\":2}', 20, 9);
         INSERT INTO bet_results (bet_id, status, payout, position)
         VALUES ('00000000-0000-4000-8000-000000000002', 'settled', 60, 12);",
    )
    .await?;
    tx.commit().await?;

    apply_up_to(&mut client, 5).await?;
    let rows: Vec<(String, String, Option<i64>)> = client
        .query(
            "SELECT b.player, b.selection, b.payout FROM bets_with_results b ORDER BY player",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "alice".to_string(),
                r#"{"kind":"straight","numbers":[17]}"#.to_string(),
                None
            ),
            (
                "bob".to_string(),
                r#"{"kind":"dozen","index":2}"#.to_string(),
                Some(60)
            ),
        ]
    );
    let legacy: Vec<(uuid::Uuid, i64)> = client
        .query(
            "SELECT bet_id, placed_position FROM legacy_bets ORDER BY placed_position",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        legacy,
        vec![
            (uuid::Uuid::from_u128(0x4000_8000_0000_0000_0001), 7),
            (uuid::Uuid::from_u128(0x4000_8000_0000_0000_0002), 9),
        ]
    );
    Ok(())
}

/// Migration 6 (ADR 0033) gives every `round_stakes` row the first and last version of its
/// player's stream that holds one of its bets, from the `bets` rows it then drops.
#[tokio::test]
async fn migration_6_finds_each_rounds_bets_by_stream_versions_and_drops_bets() -> TestResult {
    let db = empty_db().await;
    let mut client = connect(&db.url).await;
    apply_up_to(&mut client, 5).await?;
    // Alice bets on t1, t2, t1 (her stream's versions 2, 3, 4), Bob on t1 (his version 1).
    client
        .batch_execute(&format!(
            "INSERT INTO events (position, event_id, stream, version, type, data, metadata, hash)
             VALUES (1, gen_random_uuid(), 'player-alice', 1, 'funds_deposited', '', '', {h}),
                    (2, gen_random_uuid(), 'player-alice', 2, 'bet_placed', '', '', {h}),
                    (3, gen_random_uuid(), 'player-alice', 3, 'bet_placed', '', '', {h}),
                    (4, gen_random_uuid(), 'player-alice', 4, 'bet_placed', '', '', {h}),
                    (5, gen_random_uuid(), 'player-bob', 1, 'bet_placed', '', '', {h});
             INSERT INTO bets (bet_id, table_id, round, player, selection, amount, placed_position)
             VALUES (gen_random_uuid(), 't1', 1, 'alice', '{{\"kind\":\"red\"}}', 10, 2),
                    (gen_random_uuid(), 't2', 1, 'alice', '{{\"kind\":\"red\"}}', 20, 3),
                    (gen_random_uuid(), 't1', 1, 'alice', '{{\"kind\":\"red\"}}', 30, 4),
                    (gen_random_uuid(), 't1', 1, 'bob', '{{\"kind\":\"red\"}}', 15, 5);
             INSERT INTO round_stakes (table_id, round, player, staked, bets)
             VALUES ('t1', 1, 'alice', 40, 2), ('t2', 1, 'alice', 20, 1), ('t1', 1, 'bob', 15, 1);",
            h = "decode(repeat('00', 32), 'hex')"
        ))
        .await?;

    let report = store::migrate_url(&db.url).await?;
    assert_eq!(report.applied, vec![6]);
    let rows: Vec<(String, String, i32, i32)> = client
        .query(
            "SELECT table_id, player, first_version, last_version FROM round_stakes \
             ORDER BY table_id, player",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let row = |t: &str, p: &str, first, last| (t.to_string(), p.to_string(), first, last);
    assert_eq!(
        rows,
        vec![
            row("t1", "alice", 2, 4),
            row("t1", "bob", 1, 1),
            row("t2", "alice", 3, 3)
        ]
    );
    let gone: (Option<String>, Option<String>) = {
        let r = client
            .query_one(
                "SELECT to_regclass('public.bets')::text, \
                        to_regclass('public.bets_with_results')::text",
                &[],
            )
            .await?;
        (r.get(0), r.get(1))
    };
    assert_eq!(gone, (None, None));
    Ok(())
}

/// A `round_stakes` row with no bet behind it (it cannot be written so) stops migration 6, and
/// the database is left as it was: `bets` is still there and 6 is not recorded.
#[tokio::test]
async fn migration_6_refuses_a_stake_row_without_bets_and_changes_nothing() -> TestResult {
    let db = empty_db().await;
    let mut client = connect(&db.url).await;
    apply_up_to(&mut client, 5).await?;
    client
        .batch_execute(
            "INSERT INTO round_stakes (table_id, round, player, staked, bets) \
             VALUES ('t1', 1, 'alice', 40, 2)",
        )
        .await?;
    let error = store::migrate_url(&db.url)
        .await
        .expect_err("a stake row without bets");
    assert!(
        matches!(
            &error,
            StoreError::Migration(MigrationError::Failed { version: 6, .. })
        ) && error.to_string().contains("first_version"),
        "{error}"
    );
    let (bets, applied): (Option<String>, i32) = {
        let r = client
            .query_one(
                "SELECT to_regclass('public.bets')::text, \
                        (SELECT max(version) FROM schema_migrations)",
                &[],
            )
            .await?;
        (r.get(0), r.get(1))
    };
    assert_eq!((bets.as_deref(), applied), (Some("bets"), 5));
    Ok(())
}

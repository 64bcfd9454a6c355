//! Statements prepared once per connection (`store::prepared`), pipelined in one transaction:
//! the order the server runs them in, and the error each of them gets when one fails.

mod common;

use common::{TestResult, migrated_db, store};
use store::StoreError;
use store::prepared::{prepare_all, query, query_prepared};
use tokio_postgres::types::{ToSql, Type};

/// Fails when run with 0, not when prepared.
const DIVIDE: &str = "SELECT 1 / $1";

/// The value a pipelined query drew from the transaction's sequence: the order it ran in.
fn drawn(rows: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>) -> i64 {
    rows.expect("query")[0].get(0)
}

#[tokio::test]
async fn a_pipeline_runs_in_the_order_written_once_its_statements_are_prepared() -> TestResult {
    let db = migrated_db().await;
    let store = store(&db.url, 1);
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    tx.batch_execute("CREATE TEMPORARY SEQUENCE drawn").await?;

    // The hazard: the second statement is cached on this connection, the first is not. The
    // first waits for its Parse round trip, and the second, sent meanwhile, runs ahead of it.
    query(&tx, "SELECT nextval('drawn'), 'b'", &[]).await?;
    let (first, second) = tokio::join!(
        query(&tx, "SELECT nextval('drawn'), 'a'", &[]),
        query(&tx, "SELECT nextval('drawn'), 'b'", &[]),
    );
    assert!(
        drawn(first) > drawn(second),
        "a statement still to be prepared no longer falls behind: prepare_all may be unneeded"
    );

    // The remedy: both prepared first, they run as written.
    query(&tx, "SELECT nextval('drawn'), 'd'", &[]).await?;
    let statements = prepare_all(
        &tx,
        &[
            ("SELECT nextval('drawn'), 'c'", &[]),
            ("SELECT nextval('drawn'), 'd'", &[]),
        ],
    )
    .await?;
    let (first, second) = tokio::join!(
        query_prepared(&tx, &statements[0], &[]),
        query_prepared(&tx, &statements[1], &[]),
    );
    assert!(drawn(first) < drawn(second));
    Ok(())
}

#[tokio::test]
async fn a_statement_after_the_one_that_failed_is_told_apart_as_its_echo() -> TestResult {
    let db = migrated_db().await;
    let store = store(&db.url, 1);
    let mut client = store.client().await?;
    let tx = client.transaction().await?;
    let zero: [(&(dyn ToSql + Sync), Type); 1] = [(&0_i32, Type::INT4)];
    let statements = prepare_all(&tx, &[(DIVIDE, &zero), ("SELECT 1", &[])]).await?;
    let (failed, after) = tokio::join!(
        query_prepared(&tx, &statements[0], &zero),
        query_prepared(&tx, &statements[1], &[]),
    );
    let failed = StoreError::from(failed.expect_err("division by zero"));
    let after = StoreError::from(after.expect_err("the transaction is aborted"));
    assert!(!failed.is_follow_on(), "{failed}");
    assert!(after.is_follow_on(), "{after}");
    // The log line says what the server said, not only tokio-postgres's "db error".
    assert!(
        failed.to_string().contains("22012 division by zero"),
        "{failed}"
    );
    Ok(())
}

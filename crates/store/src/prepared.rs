//! Statements prepared once per pooled connection. `query_typed` sends each statement unnamed
//! (Parse, Bind, Execute): one round trip, but Postgres parses, analyses and plans it every
//! time — about a third of the database's CPU under `just bench-bets`. These helpers prepare a
//! statement on first use on a connection (deadpool's statement cache, kept across pool
//! checkouts: the pool recycles with `RecyclingMethod::Fast`, which keeps prepared statements)
//! and then only Bind and Execute it: still one round trip, and no parse or analysis. Each run
//! is still planned for its parameters: the pool's sessions set `plan_cache_mode =
//! force_custom_plan`, since a generic plan, blind to the arrays' sizes, chose hash joins over
//! sequential scans for the `JOIN unnest(…)` lookups (seen under `perf` in `just bench-bets`).
//!
//! The SQL must be a fixed text (a literal): every distinct text is one cached statement per
//! connection.
//!
//! Pipelines: a query whose statement is cached is sent when its future is first polled, so
//! queries joined in one `tokio::join!` reach the server in the order written. A statement
//! still to be prepared is not: its query waits for the Parse round trip while the queries
//! after it go ahead. A pipeline whose order matters (a read that must follow a lock) takes
//! its statements from [`prepare_all`] and runs them with [`query_prepared`], which sends at
//! the first poll by construction.

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Error, Row, RowStream, Statement};

/// A transaction on a pooled connection, which carries the connection's statement cache.
pub type PooledTransaction<'a> = deadpool_postgres::Transaction<'a>;

/// A pooled connection, whose transactions are [`PooledTransaction`]s.
pub type PooledClient = deadpool_postgres::Object;

/// Parameters with their Postgres types, as `query_typed` takes them.
pub type TypedParams<'p> = [(&'p (dyn ToSql + Sync), Type)];

async fn prepared(
    tx: &PooledTransaction<'_>,
    sql: &str,
    params: &TypedParams<'_>,
) -> Result<Statement, Error> {
    let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
    tx.prepare_typed_cached(sql, &types).await
}

fn values<'p>(params: &'p TypedParams<'p>) -> Vec<&'p (dyn ToSql + Sync)> {
    params.iter().map(|(value, _)| *value).collect()
}

/// `query_typed`, with the statement prepared once per connection.
pub async fn query(
    tx: &PooledTransaction<'_>,
    sql: &str,
    params: &TypedParams<'_>,
) -> Result<Vec<Row>, Error> {
    let statement = prepared(tx, sql, params).await?;
    tx.query(&statement, &values(params)).await
}

/// `query_typed_opt`, with the statement prepared once per connection.
pub async fn query_opt(
    tx: &PooledTransaction<'_>,
    sql: &str,
    params: &TypedParams<'_>,
) -> Result<Option<Row>, Error> {
    let statement = prepared(tx, sql, params).await?;
    tx.query_opt(&statement, &values(params)).await
}

/// `query_typed_one`, with the statement prepared once per connection.
pub async fn query_one(
    tx: &PooledTransaction<'_>,
    sql: &str,
    params: &TypedParams<'_>,
) -> Result<Row, Error> {
    let statement = prepared(tx, sql, params).await?;
    tx.query_one(&statement, &values(params)).await
}

/// `execute_typed`, with the statement prepared once per connection.
pub async fn execute(
    tx: &PooledTransaction<'_>,
    sql: &str,
    params: &TypedParams<'_>,
) -> Result<u64, Error> {
    let statement = prepared(tx, sql, params).await?;
    tx.execute(&statement, &values(params)).await
}

/// `query_raw`, with the statement prepared once per connection: the rows as the server sends
/// them, so the caller can work on the first while later ones are still being read (a query
/// without `ORDER BY` streams as its plan produces rows).
pub async fn query_stream(
    tx: &PooledTransaction<'_>,
    sql: &str,
    params: &TypedParams<'_>,
) -> Result<RowStream, Error> {
    let statement = prepared(tx, sql, params).await?;
    tx.query_raw(&statement, values(params)).await
}

/// The statements of a pipeline, each prepared once per connection, in the order given. The
/// prepares go out together: one round trip on a connection's first use, none after. Run them
/// with [`query_prepared`]: each query is then sent when first polled, so joined queries run
/// in the order written.
pub async fn prepare_all(
    tx: &PooledTransaction<'_>,
    statements: &[(&str, &TypedParams<'_>)],
) -> Result<Vec<Statement>, Error> {
    futures_util::future::try_join_all(
        statements
            .iter()
            .map(|(sql, params)| prepared(tx, sql, params)),
    )
    .await
}

/// `query_typed` with a statement from [`prepare_all`] (its parameters' types as prepared).
pub async fn query_prepared(
    tx: &PooledTransaction<'_>,
    statement: &Statement,
    params: &TypedParams<'_>,
) -> Result<Vec<Row>, Error> {
    tx.query(statement, &values(params)).await
}

/// `execute_typed` with a statement from [`prepare_all`]: the rows it changed.
pub async fn execute_prepared(
    tx: &PooledTransaction<'_>,
    statement: &Statement,
    params: &TypedParams<'_>,
) -> Result<u64, Error> {
    tx.execute(statement, &values(params)).await
}

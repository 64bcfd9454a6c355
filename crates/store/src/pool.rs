//! The connection pool and [`Store`], the store's handle for services: pooled connections
//! that cannot hang a caller, so that GS can notice a stalled database and stop taking bets.
//!
//! Three layers of protection against a stalled or unreachable server:
//! - TCP keepalives and a connect timeout on every connection, so a dead peer is noticed;
//! - `statement_timeout` and `idle_in_transaction_session_timeout` set per session, so the
//!   server cancels a slow statement and frees the head row of a client that went quiet
//!   mid-transaction;
//! - a client-side timeout around every call ([`Store`]'s methods), which is what holds when
//!   the server itself is frozen and answers nothing. A connection whose call timed out is
//!   discarded, not returned to the pool, since it may still have a request in flight.

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures_util::Stream;
use tokio_postgres::NoTls;

use crate::append::{Appended, NewEvent, append};
use crate::error::{StoreError, Unavailable};
use crate::migrations::{MigrationReport, migrate};
use crate::read::{StoredEvent, head, read_from, read_stream};
use crate::tail::{TailOptions, tail};
use crate::verify::{ChainProgress, ChainReport, VerifyError, verify_chain};

/// How to reach Postgres and how long to wait for it.
#[derive(Clone)]
pub struct PoolConfig {
    /// `postgres://user:password@host:port/database` (no TLS).
    pub url: String,
    /// Connections at most.
    pub max_size: usize,
    /// How long a caller waits for a free connection.
    pub wait_timeout: Duration,
    /// Server-side limit on one statement (`-c statement_timeout=…`).
    pub statement_timeout: Duration,
    /// Limit on opening a connection (TCP connect and start-up).
    pub connect_timeout: Duration,
    /// TCP keepalive idle time.
    pub keepalive_idle: Duration,
    /// Server-side limit on a session idle inside a transaction: a stalled client cannot hold
    /// the head row (and so every writer) for longer.
    pub idle_in_transaction_timeout: Duration,
    /// Client-side limit on one call (one statement, or one short sequence of them).
    pub call_timeout: Duration,
    /// Reported to the server (`pg_stat_activity.application_name`).
    pub application_name: String,
}

impl PoolConfig {
    /// Development defaults: 16 connections, 2 s pool wait, 5 s statements, 3 s connect, 10 s
    /// keepalive, 10 s idle in transaction, 6 s per call (a little above the statement
    /// timeout, so the server's own cancel usually answers first, with a clearer error).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_size: 16,
            wait_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            keepalive_idle: Duration::from_secs(10),
            idle_in_transaction_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(6),
            application_name: "croupier".into(),
        }
    }

    /// The tokio-postgres configuration every connection of the pool (and of a tailer) uses.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, StoreError> {
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| StoreError::Config(format!("DATABASE_URL is not a valid URL: {e}")))?;
        let mut options = config.get_options().unwrap_or_default().to_string();
        for (name, value) in [
            ("statement_timeout", self.statement_timeout),
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction_timeout,
            ),
        ] {
            if !options.is_empty() {
                options.push(' ');
            }
            options.push_str(&format!("-c {name}={}", value.as_millis()));
        }
        // Statements are prepared once per connection (`crate::prepared`) to save their parse,
        // but each run is still planned for its own parameters: a generic plan knows nothing of
        // the arrays' sizes and turned the `JOIN unnest(…)` lookups into hash joins over
        // sequential scans, a cost that grows with the tables.
        if !options.is_empty() {
            options.push(' ');
        }
        options.push_str("-c plan_cache_mode=force_custom_plan");
        config
            .options(options)
            .application_name(&self.application_name)
            .connect_timeout(self.connect_timeout)
            .keepalives(true)
            .keepalives_idle(self.keepalive_idle)
            .keepalives_interval(self.keepalive_idle / 4)
            .keepalives_retries(3);
        Ok(config)
    }
}

impl std::fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConfig")
            .field("url", &redact_password(&self.url))
            .field("max_size", &self.max_size)
            .field("wait_timeout", &self.wait_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("keepalive_idle", &self.keepalive_idle)
            .field(
                "idle_in_transaction_timeout",
                &self.idle_in_transaction_timeout,
            )
            .field("call_timeout", &self.call_timeout)
            .field("application_name", &self.application_name)
            .finish()
    }
}

/// `url` with the password of its user info replaced, for logs.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(unparsed url)".into();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split(':').next().unwrap_or_default();
            let hidden = if user_info.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// The event store: a pool of connections with timeouts on every call. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    pg_config: tokio_postgres::Config,
    call_timeout: Duration,
    acquire_timeout: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Builds the pool. No connection is made until one is needed.
    pub fn new(config: &PoolConfig) -> Result<Self, StoreError> {
        let pg_config = config.pg_config()?;
        let manager = Manager::from_config(
            pg_config.clone(),
            NoTls,
            ManagerConfig {
                // Fast: no round trip on checkout. A connection whose call timed out is
                // discarded by the Store, so a stuck one is never handed out again.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.max_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.wait_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.call_timeout))
            .build()
            .map_err(|e| StoreError::Config(e.to_string()))?;
        Ok(Self {
            pool,
            pg_config,
            call_timeout: config.call_timeout,
            // Waiting for a slot, then maybe opening a connection.
            acquire_timeout: config.wait_timeout + config.connect_timeout,
        })
    }

    /// The underlying pool, for callers that run their own statements.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The connection settings (for a dedicated connection, e.g. a tailer's).
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.pg_config
    }

    /// The client-side timeout of one call.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// A pooled connection, within the pool's wait and connect timeouts.
    pub async fn client(&self) -> Result<Object, StoreError> {
        match tokio::time::timeout(self.acquire_timeout, self.pool.get()).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(deadpool_postgres::PoolError::Backend(error))) => {
                Err(match crate::error::classify(error) {
                    // A connection could not be made or set up: the server is unreachable.
                    StoreError::Database(error) => Unavailable::Connection(error).into(),
                    other => other,
                })
            }
            Ok(Err(error)) => Err(Unavailable::Pool(error.to_string()).into()),
            Err(_) => Err(Unavailable::TimedOut {
                what: "getting a connection",
                after: self.acquire_timeout,
            }
            .into()),
        }
    }

    /// Runs `call` under the client-side timeout; a timeout is [`Unavailable::TimedOut`].
    ///
    /// Use it for your own statements on a connection from [`Store::client`]; after a timeout,
    /// throw that connection away with [`Store::discard`].
    pub async fn timed<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(Unavailable::TimedOut {
                what,
                after: self.call_timeout,
            }
            .into()),
        }
    }

    /// Takes a connection out of the pool for good (closing it), instead of returning it: for
    /// a connection whose call timed out or whose state is unknown.
    pub fn discard(client: Object) {
        drop(Object::take(client));
    }

    /// Returns `client` to the pool, or discards it when `result` says the database did not
    /// answer (the connection may still have a request in flight).
    fn settle<T>(client: Object, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.as_ref().is_err_and(StoreError::is_unavailable) {
            Self::discard(client);
        }
        result
    }

    /// Applies pending migrations (see [`crate::migrate`]). No client-side timeout beyond
    /// the server's statement timeout: a migration may legitimately take a while.
    pub async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let mut client = self.client().await?;
        let result = migrate(&mut client).await;
        Self::settle(client, result)
    }

    /// [`crate::append`] under the client-side timeout, in the caller's transaction. After an
    /// error, roll back; after [`StoreError::Unavailable`], also [`Store::discard`] the
    /// connection.
    pub async fn append(
        &self,
        tx: &crate::PooledTransaction<'_>,
        events: &[NewEvent],
    ) -> Result<Vec<Appended>, StoreError> {
        self.timed("append", append(tx, events)).await
    }

    /// Appends `events` in a transaction of their own and commits (deposits, tests, tools).
    pub async fn append_batch(&self, events: &[NewEvent]) -> Result<Vec<Appended>, StoreError> {
        let mut client = self.client().await?;
        let result = self
            .timed("append a batch", async {
                let tx = client.transaction().await?;
                let appended = append(&tx, events).await?;
                tx.commit().await?;
                Ok(appended)
            })
            .await;
        Self::settle(client, result)
    }

    /// Events of `stream` from `from_version` on, at most `limit`.
    pub async fn read_stream(
        &self,
        stream: &str,
        from_version: i32,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let client = self.client().await?;
        let result = self
            .timed(
                "read a stream",
                read_stream(&**client, stream, from_version, limit),
            )
            .await;
        Self::settle(client, result)
    }

    /// Events from `from_position` on, in position order, at most `limit`.
    pub async fn read_from(
        &self,
        from_position: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let client = self.client().await?;
        let result = self
            .timed("read events", read_from(&**client, from_position, limit))
            .await;
        Self::settle(client, result)
    }

    /// The last committed position (0 when empty).
    pub async fn last_position(&self) -> Result<i64, StoreError> {
        Ok(self.head().await?.0)
    }

    /// The last committed position and its hash.
    pub async fn head(&self) -> Result<(i64, [u8; 32]), StoreError> {
        let client = self.client().await?;
        let result = self.timed("read the head", head(&**client)).await;
        Self::settle(client, result)
    }

    /// Every committed event from `from_position` on, forever (see [`crate::tail()`]), on a
    /// connection of its own with this store's settings.
    pub fn tail(
        &self,
        from_position: i64,
        options: TailOptions,
    ) -> impl Stream<Item = Result<StoredEvent, StoreError>> + Send + 'static {
        let options = TailOptions {
            call_timeout: self.call_timeout,
            ..options
        };
        tail(self.pg_config.clone(), from_position, options)
    }

    /// [`crate::verify_chain`] on a pooled connection. The client-side timeout applies to the
    /// whole run scaled by its length, so it is not applied here: each page is bounded by the
    /// server's statement timeout instead.
    pub async fn verify_chain(
        &self,
        from: i64,
        progress: impl FnMut(ChainProgress),
    ) -> Result<ChainReport, VerifyError> {
        let client = self.client().await?;
        let result = verify_chain(&**client, from, progress).await;
        if matches!(&result, Err(VerifyError::Store(e)) if e.is_unavailable()) {
            Self::discard(client);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_the_debug_output() {
        let config = PoolConfig::new("postgres://app:s3cret@db.example:5432/croupier");
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("postgres://app:***@db.example:5432/croupier"),
            "{shown}"
        );
    }

    #[test]
    fn session_timeouts_and_keepalives_are_part_of_every_connection() {
        let mut config =
            PoolConfig::new("postgres://app@localhost/croupier?options=-c%20search_path%3Dpublic");
        config.statement_timeout = Duration::from_millis(1500);
        let pg = config.pg_config().expect("valid url");
        let options = pg.get_options().unwrap_or_default();
        assert!(options.contains("search_path=public"), "{options}");
        assert!(options.contains("-c statement_timeout=1500"), "{options}");
        assert!(
            options.contains("-c idle_in_transaction_session_timeout=10000"),
            "{options}"
        );
        assert!(
            options.contains("-c plan_cache_mode=force_custom_plan"),
            "{options}"
        );
        assert!(pg.get_keepalives());
        assert_eq!(pg.get_keepalives_idle(), Duration::from_secs(10));
        assert_eq!(pg.get_connect_timeout(), Some(&Duration::from_secs(3)));
    }
}

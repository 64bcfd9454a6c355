//! The store's one error type, [`StoreError`], and the classification of Postgres errors into
//! its three kinds (STYLE §6): a [`Conflict`] (retry or answer idempotently), [`Unavailable`]
//! (the database is down or too slow: degraded mode), and everything else (a defect: log it).
//!
//! Unique violations are told apart by constraint name, never by message text.

use std::fmt::Write as _;
use std::time::Duration;

use tokio_postgres::error::SqlState;

/// The constraint behind [`Conflict::DuplicateEvent`].
pub(crate) const EVENT_ID_CONSTRAINT: &str = "events_event_id_key";
/// The constraint behind [`Conflict::VersionConflict`].
pub(crate) const STREAM_VERSION_CONSTRAINT: &str = "events_stream_version_key";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Somebody else got there first; the caller retries or answers idempotently.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// The database did not answer in time or the connection failed: the caller degrades.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[from] Unavailable),
    /// The caller passed something the store cannot record (a defect upstream).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// A migration could not be applied, or an applied one was changed afterwards.
    #[error(transparent)]
    Migration(#[from] MigrationError),
    /// A row does not have the shape the schema promises (e.g. a hash that is not 32 bytes).
    #[error("corrupt row{}: {reason}", position.map(|p| format!(" at position {p}")).unwrap_or_default())]
    Corrupt {
        position: Option<i64>,
        reason: String,
    },
    /// Any other database error: a defect, logged where it is handled (with the server's
    /// SQLSTATE and message: tokio-postgres's own text is only "db error").
    #[error("database error: {}", describe(.0))]
    Database(#[source] tokio_postgres::Error),
    /// The connection settings could not be turned into a pool.
    #[error("invalid pool configuration: {0}")]
    Config(String),
}

/// A conflict: the write was refused because of what is already stored. Retrying with fresh
/// state (or answering with the first answer, for idempotent requests) is the remedy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Conflict {
    /// An event with one of the batch's `event_id`s is already stored (or the batch holds the
    /// same `event_id` twice).
    #[error("an event with the same event_id is already stored")]
    DuplicateEvent,
    /// A stream's expected version is not the next one: another writer appended to the stream
    /// first. `stream` is known when the store detected it before writing.
    #[error("version conflict on stream {}", stream.as_deref().unwrap_or("(unknown)"))]
    VersionConflict { stream: Option<String> },
    /// Another unique constraint (of a read model, e.g. `bets_pkey`) refused a row.
    #[error("unique constraint {constraint} refused a row")]
    Unique { constraint: String },
    /// Postgres aborted the transaction to break a deadlock or a serialization failure.
    #[error("the transaction was aborted by a concurrent one (deadlock or serialization failure)")]
    Serialization,
}

/// Why the database counts as unavailable.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// A call did not finish within its client-side timeout.
    #[error("{what} did not finish within {after:?}")]
    TimedOut { what: &'static str, after: Duration },
    /// No pooled connection could be had in time.
    #[error("no connection from the pool: {0}")]
    Pool(String),
    /// The connection failed or the server refused work (shutting down, too many clients,
    /// statement timeout).
    #[error("{}", describe(.0))]
    Connection(#[source] tokio_postgres::Error),
}

/// Problems with migrations.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// A migration already applied to this database differs from the one this build carries.
    #[error(
        "migration {version} ({name}) was applied with checksum {applied} but this build has {expected}: \
         an applied migration must never change; add a new one instead"
    )]
    ChecksumMismatch {
        version: i32,
        name: String,
        applied: String,
        expected: String,
    },
    /// The database records a migration under a name different from this build's.
    #[error("migration {version} is recorded as {applied:?} but this build calls it {expected:?}")]
    NameMismatch {
        version: i32,
        applied: String,
        expected: String,
    },
    /// A migration's SQL failed.
    #[error("migration {version} ({name}) failed: {}", describe(source))]
    Failed {
        version: i32,
        name: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

/// A Postgres error as an operator needs it in a log line: the server's SQLSTATE, message,
/// detail and constraint when the server answered, else tokio-postgres's own text and cause.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("{} {}", db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                let _ = write!(text, " ({detail})");
            }
            if let Some(constraint) = db.constraint() {
                let _ = write!(text, " [constraint {constraint}]");
            }
            text
        }
        None => match std::error::Error::source(error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        },
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(error: tokio_postgres::Error) -> Self {
        classify(error)
    }
}

/// Sorts a Postgres error into conflict, unavailability or defect.
pub(crate) fn classify(error: tokio_postgres::Error) -> StoreError {
    let Some(db) = error.as_db_error() else {
        // No error response from the server: the connection broke or was closed (an I/O
        // error), or the client itself refused something (a defect, e.g. a bad row count).
        let io = std::error::Error::source(&error).is_some_and(|s| s.is::<std::io::Error>());
        return if error.is_closed() || io {
            StoreError::Unavailable(Unavailable::Connection(error))
        } else {
            StoreError::Database(error)
        };
    };
    let code = db.code();
    if *code == SqlState::UNIQUE_VIOLATION {
        let conflict = match db.constraint() {
            Some(EVENT_ID_CONSTRAINT) => Conflict::DuplicateEvent,
            Some(STREAM_VERSION_CONSTRAINT) => Conflict::VersionConflict { stream: None },
            Some(other) => Conflict::Unique {
                constraint: other.to_string(),
            },
            None => Conflict::Unique {
                constraint: String::new(),
            },
        };
        return StoreError::Conflict(conflict);
    }
    if *code == SqlState::T_R_SERIALIZATION_FAILURE || *code == SqlState::T_R_DEADLOCK_DETECTED {
        return StoreError::Conflict(Conflict::Serialization);
    }
    let unavailable = code.code().starts_with("08") // connection exceptions
        || code.code().starts_with("53") // insufficient resources (too many connections, disk full)
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::QUERY_CANCELED // statement_timeout
        || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
        || *code == SqlState::LOCK_NOT_AVAILABLE;
    if unavailable {
        StoreError::Unavailable(Unavailable::Connection(error))
    } else {
        StoreError::Database(error)
    }
}

impl StoreError {
    /// Whether the database is down or too slow (degraded mode), as opposed to a conflict or a
    /// defect.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// The SQLSTATE of the database error behind this one, if any.
    pub fn sql_state(&self) -> Option<&SqlState> {
        match self {
            StoreError::Database(e)
            | StoreError::Unavailable(Unavailable::Connection(e))
            | StoreError::Migration(MigrationError::Failed { source: e, .. }) => e.code(),
            _ => None,
        }
    }

    /// Whether this is only the echo of an earlier failure in the same transaction
    /// (`25P02`, "current transaction is aborted"): of statements pipelined together, every
    /// one after the statement that failed gets it, and the cause is that other error.
    pub fn is_follow_on(&self) -> bool {
        self.sql_state() == Some(&SqlState::IN_FAILED_SQL_TRANSACTION)
    }

    pub(crate) fn corrupt(position: Option<i64>, reason: impl Into<String>) -> Self {
        StoreError::Corrupt {
            position,
            reason: reason.into(),
        }
    }
}

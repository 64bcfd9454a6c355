//! The Postgres event store (`docs/contract/event-store.md`): the append-only, hash-chained
//! `events` table with gapless global positions, its migrations (which also create the read-model
//! tables GS fills), appends, reads, tailing, chain verification, and a pool whose every call has a
//! timeout.
//!
//! Payloads are opaque bytes here: this crate must not depend on `domain` or `protocol` (the
//! events' shapes belong there), nor on any service. Services reach it through a port of
//! their own; only the `croupier` binary picks this adapter.
//!
//! - [`migrate`] / [`migrate_url`] / [`MIGRATIONS`] / [`migrations_fingerprint`]: the schema.
//! - [`append`]: one batch in the caller's transaction, head row locked last.
//! - [`read_stream`], [`read_from`], [`last_position`], [`tail()`]: reading;
//!   [`stream_events`]: a range of the log in one binary `COPY`.
//! - [`chain_hash`], [`verify_chain`]: the hash chain, for writers and auditors alike.
//! - [`PoolConfig`], [`Store`]: pooled connections with keepalives and timeouts.

mod append;
mod error;
mod hash;
mod migrations;
mod pool;
pub mod prepared;
mod read;
mod stream;
mod tail;
mod verify;

pub use append::{
    Appended, EVENT_COLUMN_TYPES, EVENT_COLUMNS, EVENTS_CHANNEL, NewEvent, PIPELINED_MAX, append,
    append_with_locked_versions,
};
pub use error::{Conflict, MigrationError, StoreError, Unavailable};
pub use hash::{GENESIS_HASH, chain_hash};
pub use migrations::{
    MIGRATIONS, Migration, MigrationReport, migrate, migrate_url, migrations_fingerprint,
};
pub use pool::{PoolConfig, Store};
pub use prepared::{PooledClient, PooledTransaction};
pub use read::{StoredEvent, head, last_position, next_version, read_from, read_stream};
pub use stream::{CopyOut, copy_events, stream_events};
pub use tail::{TailOptions, tail};
pub use verify::{
    ChainError, ChainFault, ChainProgress, ChainReport, VERIFY_PAGE, VerifyError, verify_chain,
};

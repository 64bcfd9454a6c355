//! The event store port and its Postgres adapter (tokio-postgres, deadpool-postgres): the
//! append-only, hash-chained `events` table of DESIGN §6, migrations, and the read models
//! (`rounds`, `bets`, `accounts`) updated in the same transaction as their events.
//!
//! May depend on `domain` and `protocol`; services depend on the port, never on this adapter.

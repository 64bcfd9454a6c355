//! The `Bus` port (publish with message id and expected sequence, ordered replay, durable
//! consume, request/reply, key-value) and its adapters: `nats` (async-nats JetStream) and `local`
//! (in-process, for the single-binary mode and for tests). docs/contract/bus.md.
//!
//! Services depend on the port ([`Bus`], [`Kv`] and the types beside them) and use logical
//! names: subjects `table.<t>.round`, streams `TABLES`/`PLAYERS`, buckets `gms_leases`/`status`.
//! Only the composition root picks [`NatsBus`] or [`LocalBus`]. The streams and buckets are
//! declared as data in `ops/nats/definitions/` ([`Definitions::croupier`]) and applied with
//! [`Bus::setup`] at every start.
//!
//! Depends on no crate of ours: the bus carries bytes; `protocol` gives them meaning.

mod definitions;
mod error;
mod local;
mod nats;
mod port;
mod subject;

pub use definitions::{BucketDef, ConsumerDef, Definitions, Storage, StreamDef};
pub use error::{BusError, KvError, PublishError, RequestError};
pub use local::{LocalBus, LocalKv};
pub use nats::{NatsBus, NatsKv, NatsOptions, server_list};
pub use port::{
    AckMessage, Batches, Bus, Deliveries, Feed, Kv, KvEntry, KvEvent, KvWatch, Publish, Published,
    Request, Requests, StoredMessage, StreamState, Subscription,
};

/// An id unique within the process and, with overwhelming likelihood, across processes: for
/// stream epochs of the local adapter and msg ids the nats adapter makes up.
pub(crate) fn unique_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};

    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // `RandomState` is seeded from the OS once per process: a cheap source of randomness.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.write_u64(count);
    hasher.write_u32(std::process::id());
    format!("{:016x}{count:x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    #[test]
    fn unique_ids_differ() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| super::unique_id()).collect();
        assert_eq!(ids.len(), 1000);
    }
}

//! Helpers shared by the store's integration tests: migrated databases from the test harness,
//! a store on them, raw superuser connections, and events to append.
#![allow(dead_code)] // each test file uses its own subset

use bytes::Bytes;
use store::{NewEvent, PoolConfig, Store};
use testkit::TestDb;
use tokio_postgres::Client;
use uuid::Uuid;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A fresh database with every migration applied (cloned from a template keyed on the
/// migrations' fingerprint, so a changed migration gets a new template).
pub async fn migrated_db() -> TestDb {
    testkit::init_logging();
    let key = format!("store-{}", store::migrations_fingerprint());
    testkit::postgres()
        .expect("a Postgres server for tests")
        .database(&key, |url| async move {
            store::migrate_url(&url).await.map(|_| ())
        })
        .await
        .expect("a migrated test database")
}

/// A store on `url` with a pool of `max_size`.
pub fn store(url: &str, max_size: usize) -> Store {
    let mut config = PoolConfig::new(url);
    config.max_size = max_size;
    Store::new(&config).expect("a valid pool configuration")
}

/// A plain connection (as the harness's superuser), driven on the current runtime.
pub async fn connect(url: &str) -> Client {
    testkit::pg_connect(url)
        .await
        .expect("connect to the test database")
}

/// An event with a random id and a small MessagePack-ish payload.
pub fn event(stream: &str, version: i32, kind: &str, data: &[u8]) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        stream: stream.to_string(),
        version,
        kind: kind.to_string(),
        data: Bytes::copy_from_slice(data),
        metadata: Bytes::new(),
    }
}

/// A small, seeded pseudo-random generator (splitmix64), so runs are repeatable.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

//! Shared by GS's integration tests: a migrated database, a store on it, rounds driven through
//! `ledger::record_transition` as GMS would publish them, and bets.
#![allow(dead_code)]

use std::time::Duration;

use domain::{BetId, Money, PlayerId, RawSelection, RoundId, Selection, TableId, Timestamp};
use gs::ledger::{self, BetOutcome, BetRequest};
use protocol::{BettingClosed, Event, EventBody, OutcomeDeclared, RoundOpened, RoundVoided};
use store::{PoolConfig, Store};
use testkit::TestDb;
use tokio_postgres::Client;
use uuid::Uuid;

pub async fn migrated_db() -> TestDb {
    testkit::init_logging();
    let key = format!("gs-{}", store::migrations_fingerprint());
    testkit::postgres()
        .expect("a Postgres server for tests")
        .database(&key, |url| async move {
            store::migrate_url(&url).await.map(|_| ())
        })
        .await
        .expect("a migrated test database")
}

pub fn store(url: &str, max_size: usize) -> Store {
    let mut config = PoolConfig::new(url);
    config.max_size = max_size;
    Store::new(&config).expect("a valid pool configuration")
}

pub async fn connect(url: &str) -> Client {
    testkit::pg_connect(url)
        .await
        .expect("connect to the test database")
}

pub fn now() -> Timestamp {
    Timestamp::from_offset_datetime(time::OffsetDateTime::now_utc()).expect("now")
}

pub fn table(name: &str) -> TableId {
    TableId::parse(name).expect("table id")
}

pub fn player(name: &str) -> PlayerId {
    PlayerId::parse(name).expect("player id")
}

pub fn money(amount: i64) -> Money {
    Money::new(amount).expect("money")
}

pub fn red() -> Selection {
    Selection::parse(RawSelection::Red).expect("red")
}

pub fn straight(n: u8) -> Selection {
    Selection::parse(RawSelection::Straight { numbers: vec![n] }).expect("straight")
}

pub fn seed(round: u64) -> domain::ServerSeed {
    let mut bytes = [7u8; 32];
    bytes[..8].copy_from_slice(&round.to_be_bytes());
    domain::ServerSeed::from_bytes(bytes)
}

/// A table whose rounds are driven by hand, recording transitions as GS would from the bus.
pub struct Rounds {
    pub store: Store,
    pub table: TableId,
    seq: u64,
}

impl Rounds {
    pub fn new(store: &Store, table: &TableId) -> Self {
        Self {
            store: store.clone(),
            table: table.clone(),
            seq: 0,
        }
    }

    async fn record(&mut self, body: EventBody) {
        self.seq += 1;
        let event = Event::new(Uuid::new_v4(), now(), body);
        ledger::record_transition(&self.store, &event, self.seq)
            .await
            .expect("record a transition");
    }

    /// Opens `round` for bets during `open_for`.
    pub async fn open(&mut self, round: u64, open_for: Duration) {
        let closes_at = now().checked_add(open_for).expect("closes_at");
        self.record(EventBody::RoundOpened(RoundOpened {
            table: self.table.clone(),
            round: RoundId::new(round).expect("round"),
            closes_at,
            seed_hash: seed(round).hash(),
        }))
        .await;
    }

    pub async fn close(&mut self, round: u64) {
        self.record(EventBody::BettingClosed(BettingClosed {
            table: self.table.clone(),
            round: RoundId::new(round).expect("round"),
        }))
        .await;
    }

    /// Declares the fair outcome of `round` and returns it (settlement is separate).
    pub async fn declare(&mut self, round: u64) -> domain::Outcome {
        let round_id = RoundId::new(round).expect("round");
        let server_seed = seed(round);
        let outcome = domain::fairness::outcome(&server_seed, &self.table, round_id);
        self.record(EventBody::OutcomeDeclared(OutcomeDeclared {
            table: self.table.clone(),
            round: round_id,
            outcome,
            server_seed,
        }))
        .await;
        outcome
    }

    pub async fn void(&mut self, round: u64) {
        self.record(EventBody::RoundVoided(RoundVoided {
            table: self.table.clone(),
            round: RoundId::new(round).expect("round"),
            reason: "operator".into(),
        }))
        .await;
    }
}

pub fn bet(
    player: &PlayerId,
    table: &TableId,
    round: u64,
    selection: Selection,
    amount: i64,
) -> BetRequest {
    BetRequest {
        bet_id: BetId::from_uuid(Uuid::new_v4()),
        player: player.clone(),
        table: table.clone(),
        round: RoundId::new(round).expect("round"),
        selection,
        amount: Money::stake(amount).expect("stake"),
    }
}

pub async fn deposit(store: &Store, who: &PlayerId, amount: i64) -> Money {
    let id = protocol::DepositId::parse(&Uuid::new_v4().to_string()).expect("deposit id");
    ledger::deposit(store, who, money(amount), &id)
        .await
        .expect("deposit")
}

pub async fn place(store: &Store, bets: &[BetRequest]) -> Vec<BetOutcome> {
    ledger::place_bets(store, bets, &domain::TableLimits::DEFAULT, now())
        .await
        .expect("a batch is recorded")
}

pub fn code(outcome: &BetOutcome) -> Option<protocol::ErrorCode> {
    match outcome {
        BetOutcome::Accepted { .. } => None,
        BetOutcome::Rejected { code, .. } => Some(*code),
    }
}

pub async fn balance(client: &Client, who: &str) -> i64 {
    client
        .query_opt("SELECT balance FROM accounts WHERE player = $1", &[&who])
        .await
        .expect("query")
        .map(|row| row.get(0))
        .unwrap_or(0)
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

    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    pub fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

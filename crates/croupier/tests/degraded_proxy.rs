//! Degraded mode (ADR 0020) with faults on GS's own database connections while Postgres stays
//! up: each GS under test is a `croupier run gs` process whose `DATABASE_URL` points at a
//! [`testkit::PgProxy`], which cuts a connection at a chosen point of the Postgres protocol
//! (mid-pipeline at an `Execute`, mid-`COPY`, before or right after `COMMIT`), cuts every
//! connection, or refuses new ones.
//! GMS runs as a process; bets are NATS requests on `bets.place.roulette-1` built by hand, so
//! every answer GS gives is seen as it is (no responders included).
//!
//! - a batch cut mid-write (at the `Execute` of its `round_stakes` write, pipelined after its
//!   debits) or before its `COMMIT` in an outage: its bets are answered
//!   `BETTING_UNAVAILABLE` or `TIMEOUT`, never accepted unless stored; after recovery the
//!   same bets retried are accepted once (one debit each);
//! - a batch cut right after its `COMMIT` went out: its bets stand and are not answered
//!   `BETTING_UNAVAILABLE`; retried, they get their first answer;
//! - a settlement cut (mid-`COPY` or after `COMMIT`) in an outage: every bet settled once,
//!   money adds up, `croupier replay` exits 0;
//! - two GS, one losing its database: betting stays on and every bet is accepted.
//!
//! Time bounds are generous guards, never the thing under test.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bus::{Bus, Kv, NatsBus, NatsOptions, RequestError};
use common::{Env, Running};
use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use protocol::{Encoding, ErrorCode, PlaceBetReply, PlaceBetRequest};
use testkit::{CutAt, PgProxy};
use tokio::time::Instant;
use uuid::Uuid;

/// A guard on every wait: far above what anything here needs.
const WAIT: Duration = Duration::from_secs(60);
/// What every player is credited before anything starts.
const DEPOSIT: i64 = 1_000_000;
const SUBJECT: &str = "bets.place.roulette-1";

/// What a bettor heard back.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Accepted {
        balance: i64,
    },
    Rejected(ErrorCode),
    /// No GS serves bets (a gateway says `BETTING_UNAVAILABLE`).
    NoResponders,
    /// Nothing within the requester's deadline (a gateway says `TIMEOUT`).
    Unanswered,
}

impl Answer {
    /// The answer says the bet was not recorded.
    fn says_not_recorded(&self) -> bool {
        matches!(
            self,
            Answer::Rejected(ErrorCode::BettingUnavailable) | Answer::NoResponders
        )
    }

    /// The answer says nothing about whether the bet was recorded: retry with the same id.
    fn unknown(&self) -> bool {
        matches!(
            self,
            Answer::Rejected(ErrorCode::Timeout) | Answer::Unanswered
        )
    }
}

/// One GS (or two) behind a proxy, GMS, the bus and the database.
struct Drill {
    /// The processes' environment with the database reached directly.
    env: Env,
    /// Held: the database lives as long as the drill.
    _db: testkit::TestDb,
    proxy: PgProxy,
    bus: NatsBus,
    client: tokio_postgres::Client,
    players: Vec<domain::PlayerId>,
    /// Held: the processes are killed when the drill ends.
    _processes: Vec<Running>,
}

impl Drill {
    /// Credits `players` players, then starts GS processes (`through_proxy`, one each) and GMS
    /// with betting windows of `betting_ms`, and waits for betting to be on.
    async fn start(players: usize, through_proxy: &[bool], betting_ms: u64) -> Drill {
        testkit::init_logging();
        let (env, db) = Env::fresh().await;
        let proxy = PgProxy::start(&db.url).await.expect("proxy");
        let store = store::Store::new(&store::PoolConfig::new(db.url.clone())).expect("store");
        let players = common::funded_players(&store, "p", players, DEPOSIT).await;
        let bus = NatsBus::connect(&env.nats_url, &env.prefix, NatsOptions::default())
            .await
            .expect("bus");
        bus.setup(&common::croupier_definitions())
            .await
            .expect("set up streams");
        let mut processes = Vec::new();
        for &proxied in through_proxy {
            let mut gs_env = env.clone();
            if proxied {
                gs_env.database_url = proxy.url().to_string();
            }
            processes.push(gs_env.spawn(&["run", "gs"]));
        }
        let betting_ms = betting_ms.to_string();
        processes.push(env.spawn(&["run", "gms", "--betting-ms", &betting_ms]));
        let client = db.client().await.expect("connect");
        let drill = Drill {
            env,
            _db: db,
            proxy,
            bus,
            client,
            players,
            _processes: processes,
        };
        drill.wait_betting(protocol::Betting::Enabled).await;
        drill
    }

    async fn betting(&self) -> Option<protocol::BettingStatus> {
        let kv = self.bus.kv("status").await.ok()?;
        let entry = kv.get("betting").await.ok().flatten()?;
        Encoding::MsgPack.decode(&entry.value).ok()
    }

    async fn wait_betting(&self, betting: protocol::Betting) {
        let deadline = Instant::now() + WAIT;
        while self.betting().await.map(|s| s.betting) != Some(betting) {
            assert!(
                Instant::now() < deadline,
                "betting never became {betting:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The newest open round that stays open for `left` at least (GS's view of it); `None`
    /// when there is none now.
    async fn open_round_now(&self, left: Duration) -> Option<u64> {
        let left = format!("{} milliseconds", left.as_millis());
        self.client
            .query_opt(
                "SELECT round FROM rounds WHERE table_id = 'roulette-1' AND phase = 'open' \
                 AND closes_at > now() + $1::text::interval ORDER BY round DESC LIMIT 1",
                &[&left],
            )
            .await
            .expect("rounds")
            .map(|row| row.get::<_, i64>(0) as u64)
    }

    async fn open_round(&self, left: Duration) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(round) = self.open_round_now(left).await {
                return round;
            }
            assert!(Instant::now() < deadline, "no round opened for {left:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A bet of player `i` on `round`; stakes differ by player.
    fn bet(&self, round: u64, i: usize) -> PlaceBetRequest {
        PlaceBetRequest {
            request_id: format!("{round}-{i}"),
            bet_id: domain::BetId::from_uuid(Uuid::new_v4()),
            player: self.players[i % self.players.len()].clone(),
            table: domain::TableId::parse("roulette-1").expect("table"),
            round: domain::RoundId::new(round).expect("round"),
            selection: domain::Selection::parse(domain::RawSelection::Red).expect("red"),
            amount: domain::Money::stake(100 + i as i64).expect("stake"),
        }
    }

    async fn place(&self, bet: &PlaceBetRequest, deadline: Duration) -> Answer {
        place(&self.bus, bet, deadline).await
    }

    /// Sends `bet` again (same bet id) until it is accepted or refused for good; its answer.
    async fn retry_until_decided(&self, bet: &PlaceBetRequest) -> Answer {
        let deadline = Instant::now() + WAIT;
        loop {
            let answer = self.place(bet, Duration::from_secs(10)).await;
            if !(answer.says_not_recorded() || answer.unknown()) || Instant::now() >= deadline {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// How many `bet_placed` events each of `ids` has (absent: none), found by the event id
    /// derived from the bet id.
    async fn stored(&self, ids: &[Uuid]) -> HashMap<Uuid, i64> {
        let by_event: HashMap<Uuid, Uuid> = ids
            .iter()
            .map(|id| {
                let bet = domain::BetId::from_uuid(*id);
                (gs::ledger::bet_placed_id(&bet), *id)
            })
            .collect();
        let event_ids: Vec<Uuid> = by_event.keys().copied().collect();
        self.client
            .query(
                "SELECT event_id, count(*) FROM events \
                 WHERE event_id = ANY($1) AND type = 'bet_placed' GROUP BY event_id",
                &[&event_ids],
            )
            .await
            .expect("bet_placed events")
            .into_iter()
            .map(|row| (by_event[&row.get::<_, Uuid>(0)], row.get(1)))
            .collect()
    }

    /// Waits until every bet of `ids` has its result.
    async fn wait_settled(&self, ids: &[Uuid]) {
        let ids = ids.to_vec();
        let deadline = Instant::now() + WAIT;
        loop {
            let settled: i64 = self
                .client
                .query_one(
                    "SELECT count(*) FROM bet_results WHERE bet_id = ANY($1)",
                    &[&ids],
                )
                .await
                .expect("bet_results")
                .get(0);
            if settled as usize == ids.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {} bets never settled",
                ids.len() - settled as usize,
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The whole log read back: every bet placed once and settled at most once, every round
    /// settled at most once, each wallet and the total equal to deposits − stakes + payouts.
    async fn check_ledger(&self) -> Ledger {
        let rows = self
            .client
            .query("SELECT data FROM events ORDER BY position", &[])
            .await
            .expect("events");
        let mut ledger = Ledger::default();
        let mut wallets: HashMap<String, i64> = HashMap::new();
        for row in rows {
            let event = protocol::decode_event(row.get::<_, &[u8]>(0)).expect("event");
            match event.body {
                protocol::EventBody::BetPlaced(e) => {
                    *ledger.placed.entry(*e.bet_id.as_uuid()).or_default() += 1;
                    *wallets.entry(e.player.to_string()).or_default() -= e.amount.get();
                }
                protocol::EventBody::BetSettled(e) => {
                    *ledger.settled.entry(*e.bet_id.as_uuid()).or_default() += 1;
                    *wallets.entry(e.player.to_string()).or_default() += e.payout.get();
                }
                protocol::EventBody::BetRefunded(e) => {
                    *ledger.settled.entry(*e.bet_id.as_uuid()).or_default() += 1;
                    *wallets.entry(e.player.to_string()).or_default() += e.amount.get();
                }
                protocol::EventBody::RoundSettled(e) => {
                    *ledger.rounds_settled.entry(e.round.get()).or_default() += 1;
                }
                protocol::EventBody::FundsDeposited(e) => {
                    *wallets.entry(e.player.to_string()).or_default() += e.amount.get();
                }
                _ => {}
            }
        }
        for (bet, n) in &ledger.placed {
            assert_eq!(*n, 1, "bet {bet} placed {n} times");
        }
        for (bet, n) in &ledger.settled {
            assert_eq!(*n, 1, "bet {bet} settled {n} times");
            assert!(
                ledger.placed.contains_key(bet),
                "bet {bet} settled, never placed"
            );
        }
        for (round, n) in &ledger.rounds_settled {
            assert_eq!(*n, 1, "round {round} settled {n} times");
        }
        let accounts: HashMap<String, i64> = self
            .client
            .query("SELECT player, balance FROM accounts", &[])
            .await
            .expect("accounts")
            .into_iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect();
        assert_eq!(
            accounts, wallets,
            "each wallet is deposits − stakes + payouts"
        );
        let counted: i64 = self
            .client
            .query_one("SELECT coalesce(sum(bets), 0)::int8 FROM round_stakes", &[])
            .await
            .expect("round_stakes")
            .get(0);
        assert_eq!(
            counted as usize,
            ledger.placed.len(),
            "`round_stakes` counts every bet once"
        );
        let results: i64 = self
            .client
            .query_one("SELECT count(*) FROM bet_results", &[])
            .await
            .expect("bet_results")
            .get(0);
        assert_eq!(
            results as usize,
            ledger.settled.len(),
            "one result row per result"
        );
        ledger
    }

    /// `croupier replay` on the database, directly.
    fn replay(&self) {
        self.env.replay_ok();
    }
}

#[derive(Debug, Default)]
struct Ledger {
    placed: HashMap<Uuid, u32>,
    settled: HashMap<Uuid, u32>,
    rounds_settled: HashMap<u64, u32>,
}

async fn place(bus: &NatsBus, bet: &PlaceBetRequest, deadline: Duration) -> Answer {
    let payload = Encoding::MsgPack.encode(bet).expect("encode");
    match bus.request(SUBJECT, payload, deadline).await {
        Ok(answer) => match Encoding::MsgPack.decode::<PlaceBetReply>(&answer) {
            Ok(PlaceBetReply::Accepted(a)) => {
                assert_eq!(a.bet_id, bet.bet_id, "the answer is this bet's");
                Answer::Accepted {
                    balance: a.balance.get(),
                }
            }
            Ok(PlaceBetReply::Rejected(r)) => Answer::Rejected(r.code),
            Err(error) => panic!("undecodable answer: {error}"),
        },
        Err(RequestError::NoResponders) => Answer::NoResponders,
        Err(RequestError::Timeout) => Answer::Unanswered,
        Err(error) => panic!("request failed: {error}"),
    }
}

/// Per bet: no answer says "accepted" for a bet not stored, none says "not recorded" for a
/// stored one (read once every answer is in).
fn check_answers(bets: &[PlaceBetRequest], answers: &[Answer], stored: &HashMap<Uuid, i64>) {
    for (bet, answer) in bets.iter().zip(answers) {
        let id = bet.bet_id.as_uuid();
        let rows = stored.get(id).copied().unwrap_or(0);
        assert!(rows <= 1, "bet {id} stored {rows} times");
        match answer {
            Answer::Accepted { balance } => {
                assert_eq!(rows, 1, "bet {id} answered accepted but not stored");
                assert_eq!(*balance, DEPOSIT - bet.amount.get(), "bet {id}: one debit");
            }
            answer if answer.says_not_recorded() => {
                assert_eq!(rows, 0, "bet {id} answered {answer:?} but stored");
            }
            answer => assert!(answer.unknown(), "bet {id} answered {answer:?}"),
        }
    }
}

/// After recovery, every bet retried with its bet id is accepted, once, with the balance of
/// one debit (each player has one bet on the round).
async fn retry_all(drill: &Drill, bets: &[PlaceBetRequest]) {
    drill.wait_betting(protocol::Betting::Enabled).await;
    let answers = join_all(bets.iter().map(|bet| drill.retry_until_decided(bet))).await;
    for (bet, answer) in bets.iter().zip(&answers) {
        assert_eq!(
            *answer,
            Answer::Accepted {
                balance: DEPOSIT - bet.amount.get()
            },
            "bet {} retried",
            bet.bet_id.as_uuid()
        );
    }
    let ids: Vec<Uuid> = bets.iter().map(|b| *b.bet_id.as_uuid()).collect();
    let stored = drill.stored(&ids).await;
    for id in &ids {
        assert_eq!(stored.get(id), Some(&1), "bet {id} stored once");
    }
}

const PLAYERS: usize = 10;

/// The statement that adds a batch's stakes to `round_stakes` (placement alone writes it, after
/// the debits it is pipelined with and before the head row is locked): the proxy's triggers
/// fire in its transaction.
const STAKES_WRITE: &str = "INSERT INTO round_stakes (table_id";

/// (a) One GS; the batch is cut at `at` (mid-write at its stakes' `Execute`, or before its
/// `COMMIT`),
/// and at that moment the database goes away for GS (every connection cut, new ones refused)
/// for a while.
async fn outage_cuts_a_batch(at: CutAt) {
    let drill = Drill::start(PLAYERS, &[true], 20_000).await;
    let round = drill.open_round(Duration::from_secs(15)).await;
    let bets: Vec<PlaceBetRequest> = (0..PLAYERS).map(|i| drill.bet(round, i)).collect();
    let armed = drill.proxy.arm(at, STAKES_WRITE);
    let outage = async {
        assert!(armed.fired(WAIT).await, "no batch reached {at:?}");
        drill.proxy.refuse(true);
        drill.proxy.cut_all();
        tokio::time::sleep(Duration::from_secs(3)).await;
        drill.proxy.refuse(false);
    };
    let placing = join_all(
        bets.iter()
            .map(|bet| drill.place(bet, Duration::from_secs(10))),
    );
    let (answers, ()) = tokio::join!(placing, outage);
    let ids: Vec<Uuid> = bets.iter().map(|b| *b.bet_id.as_uuid()).collect();
    let stored = drill.stored(&ids).await;
    check_answers(&bets, &answers, &stored);
    assert!(
        answers
            .iter()
            .any(|a| !matches!(a, Answer::Accepted { .. })),
        "the cut batch was answered: {answers:?}"
    );
    assert!(
        bets.iter()
            .any(|b| !stored.contains_key(b.bet_id.as_uuid())),
        "the cut batch was not stored"
    );

    retry_all(&drill, &bets).await;
    drill.wait_settled(&ids).await;
    let ledger = drill.check_ledger().await;
    for id in &ids {
        assert_eq!(ledger.settled.get(id), Some(&1), "bet {id} settled once");
    }
    drill.replay();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_mid_write_in_an_outage_is_refused_then_accepted_once_on_retry() {
    outage_cuts_a_batch(CutAt::Execute).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_before_its_commit_in_an_outage_is_refused_then_accepted_once_on_retry() {
    outage_cuts_a_batch(CutAt::BeforeCommit).await;
}

/// (b) One GS; a batch's `COMMIT` reaches the database, the answer never reaches GS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cut_right_after_its_commit_stands_and_retries_get_the_first_answer() {
    let drill = Drill::start(PLAYERS, &[true], 10_000).await;
    let round = drill.open_round(Duration::from_secs(7)).await;
    let bets: Vec<PlaceBetRequest> = (0..PLAYERS).map(|i| drill.bet(round, i)).collect();
    let armed = drill.proxy.arm(CutAt::AfterCommit, STAKES_WRITE);
    let answers = join_all(
        bets.iter()
            .map(|bet| drill.place(bet, Duration::from_secs(10))),
    )
    .await;
    assert!(armed.has_fired(), "no batch reached its COMMIT");
    let ids: Vec<Uuid> = bets.iter().map(|b| *b.bet_id.as_uuid()).collect();
    // The server commits once it reads the COMMIT, which may be just after GS heard the cut.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stored = drill.stored(&ids).await;
    check_answers(&bets, &answers, &stored);
    let stood_unknown: Vec<&Answer> = bets
        .iter()
        .zip(&answers)
        .filter(|(b, a)| stored.contains_key(b.bet_id.as_uuid()) && a.unknown())
        .map(|(_, a)| a)
        .collect();
    assert!(
        !stood_unknown.is_empty(),
        "the cut batch stood, answered as unknown: {answers:?}"
    );

    retry_all(&drill, &bets).await;
    drill.wait_settled(&ids).await;
    let ledger = drill.check_ledger().await;
    for id in &ids {
        assert_eq!(ledger.settled.get(id), Some(&1), "bet {id} settled once");
    }
    drill.replay();
}

/// (c) One GS; the settlement of a round with bets is cut at `at`, and the database goes
/// away for GS for a while.
async fn outage_cuts_a_settlement(at: CutAt) {
    let drill = Drill::start(PLAYERS, &[true], 3_000).await;
    let round = drill.open_round(Duration::from_millis(1500)).await;
    let bets: Vec<PlaceBetRequest> = (0..PLAYERS).map(|i| drill.bet(round, i)).collect();
    let answers = join_all(
        bets.iter()
            .map(|bet| drill.place(bet, Duration::from_secs(10))),
    )
    .await;
    for (bet, answer) in bets.iter().zip(&answers) {
        assert_eq!(
            *answer,
            Answer::Accepted {
                balance: DEPOSIT - bet.amount.get()
            },
            "bet {} before the fault",
            bet.bet_id.as_uuid()
        );
    }
    let armed = drill.proxy.arm(at, "COPY bet_results");
    assert!(armed.fired(WAIT).await, "no settlement reached {at:?}");
    drill.proxy.refuse(true);
    drill.proxy.cut_all();
    tokio::time::sleep(Duration::from_secs(2)).await;
    drill.proxy.refuse(false);

    let ids: Vec<Uuid> = bets.iter().map(|b| *b.bet_id.as_uuid()).collect();
    drill.wait_settled(&ids).await;
    // And betting works after it: a later round's bets are accepted and settled too.
    drill.wait_betting(protocol::Betting::Enabled).await;
    let later = drill.open_round(Duration::from_millis(1500)).await;
    let after: Vec<PlaceBetRequest> = (0..3).map(|i| drill.bet(later, i)).collect();
    for bet in &after {
        let answer = drill.retry_until_decided(bet).await;
        assert!(matches!(answer, Answer::Accepted { .. }), "{answer:?}");
    }
    let after: Vec<Uuid> = after.iter().map(|b| *b.bet_id.as_uuid()).collect();
    drill.wait_settled(&after).await;

    let ledger = drill.check_ledger().await;
    for id in ids.iter().chain(&after) {
        assert_eq!(ledger.settled.get(id), Some(&1), "bet {id} settled once");
    }
    assert_eq!(
        ledger.rounds_settled.get(&round),
        Some(&1),
        "round {round} settled once"
    );
    drill.replay();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_cut_mid_copy_in_an_outage_settles_every_bet_once_after_recovery() {
    outage_cuts_a_settlement(CutAt::CopyData).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_cut_right_after_its_commit_settles_every_bet_once() {
    outage_cuts_a_settlement(CutAt::AfterCommit).await;
}

/// (d) Two GS, one through the proxy, one direct; the proxied one loses its database (every
/// connection cut, new ones refused) while bets flow, and gets it back later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_gs_one_losing_its_database_betting_stays_on_and_every_bet_is_accepted() {
    const BETTORS: usize = 20;
    const EVERY: Duration = Duration::from_millis(25);
    /// A guard: a hand-off answers within a gateway's bet deadline (5 s) by design.
    const DEADLINE: Duration = Duration::from_secs(10);
    let drill = Drill::start(BETTORS, &[true, false], 20_000).await;
    // Both serve before the fault.
    let kv = drill.bus.kv("gs_health").await.expect("gs_health");
    // The latest heartbeat of each GS process.
    let heartbeats = || async {
        let mut feed = kv.watch(">").await.expect("watch");
        let mut beats = HashMap::new();
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(300), feed.next()).await
        {
            match event.value {
                Some(value) => {
                    if let Ok(beat) = Encoding::MsgPack.decode::<protocol::GsHeartbeat>(&value) {
                        beats.insert(event.key, beat);
                    }
                }
                None => {
                    beats.remove(&event.key);
                }
            }
        }
        beats.into_values().collect::<Vec<_>>()
    };
    let deadline = Instant::now() + WAIT;
    while heartbeats().await.iter().filter(|b| b.serving).count() < 2 {
        assert!(Instant::now() < deadline, "both GS never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The status, as it changes, for the whole drill.
    let status = drill.bus.kv("status").await.expect("status bucket");
    let mut statuses = status.watch("betting").await.expect("watch the status");
    let stop = tokio_util::sync::CancellationToken::new();
    let watching = async {
        let mut seen = Vec::new();
        loop {
            tokio::select! {
                () = stop.cancelled() => return seen,
                event = statuses.next() => match event {
                    Some(event) => {
                        let value = event.value.expect("the status is never deleted");
                        let status: protocol::BettingStatus =
                            Encoding::MsgPack.decode(&value).expect("status");
                        seen.push(status);
                    }
                    None => panic!("the status watch ended"),
                },
            }
        }
    };

    // Bettors: one bet every EVERY on a round that stays open long enough for any hand-off.
    let betting = async {
        let mut placed: Vec<(PlaceBetRequest, Answer)> = Vec::new();
        let mut in_flight = FuturesUnordered::new();
        let mut round: Option<u64> = None;
        let mut next = 0usize;
        let mut tick = tokio::time::interval(EVERY);
        let bus = &drill.bus;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(done) = in_flight.next(), if !in_flight.is_empty() => placed.push(done),
                _ = tick.tick() => {
                    if next % 20 == 0 || round.is_none() {
                        round = drill.open_round_now(Duration::from_secs(6)).await;
                    }
                    if let Some(round) = round {
                        let bet = drill.bet(round, next);
                        next += 1;
                        in_flight.push(async move {
                            let answer = place(bus, &bet, DEADLINE).await;
                            (bet, answer)
                        });
                    }
                }
            }
        }
        while let Some(done) = in_flight.next().await {
            placed.push(done);
        }
        placed
    };

    let faults = async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        drill.proxy.refuse(true);
        drill.proxy.cut_all();
        // The sick GS finds out and stops serving.
        let deadline = Instant::now() + WAIT;
        loop {
            let beats = heartbeats().await;
            let sick = beats
                .iter()
                .any(|b| !b.serving && b.store == protocol::status::reason::STORE_UNAVAILABLE);
            if sick {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the proxied GS never lost its store"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        drill.proxy.refuse(false);
        // It comes back.
        let deadline = Instant::now() + WAIT;
        while heartbeats().await.iter().filter(|b| b.serving).count() < 2 {
            assert!(
                Instant::now() < deadline,
                "the proxied GS never served again"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.cancel();
    };
    let (seen, placed, ()) = tokio::join!(watching, betting, faults);

    let disabled: Vec<_> = seen
        .iter()
        .filter(|s| s.betting != protocol::Betting::Enabled)
        .collect();
    assert!(
        disabled.is_empty(),
        "betting was switched off: {disabled:?}"
    );
    let mut tally: HashMap<String, usize> = HashMap::new();
    for (_, answer) in &placed {
        let key = match answer {
            Answer::Accepted { .. } => "accepted".to_string(),
            other => format!("{other:?}"),
        };
        *tally.entry(key).or_default() += 1;
    }
    assert!(placed.len() > 100, "bets flowed throughout: {tally:?}");
    assert_eq!(
        tally.get("accepted"),
        Some(&placed.len()),
        "every bet was accepted: {tally:?}"
    );

    let ids: Vec<Uuid> = placed.iter().map(|(b, _)| *b.bet_id.as_uuid()).collect();
    let stored = drill.stored(&ids).await;
    let once: HashSet<&Uuid> = stored
        .iter()
        .filter(|(_, n)| **n == 1)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(once.len(), ids.len(), "every accepted bet is stored once");
    drill.check_ledger().await;
}

//! Helpers of the GMS tests: buses set up like a service would, a GMS with millisecond timings,
//! and the check every test ends with: the table's stream read back from sequence 1.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::time::Duration;

use bus::{Bus, Definitions, LocalBus, NatsBus, NatsOptions, Publish, StoredMessage};
use domain::{RoundEvent, RoundId, TableId, Timestamp};
use futures_util::StreamExt;
use gms::{Gms, GmsConfig, LeaseConfig, SeedSecret};
use protocol::{Event, EventBody};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Generous: a loaded 2-core machine never fails a test that is only slow.
pub const WAIT: Duration = Duration::from_secs(60);
pub const SECRET: &str = "gms-test-seed-secret-of-32-bytes!!";
pub const OTHER_SECRET: &str = "another-seed-secret-of-32-bytes!!!";

pub fn table(name: &str) -> TableId {
    TableId::parse(name).expect("table id")
}

pub async fn nats_bus_at(url: &str, prefix: &str) -> NatsBus {
    let bus = NatsBus::connect(url, prefix, NatsOptions::default())
        .await
        .expect("connect to NATS");
    bus.setup(&Definitions::croupier())
        .await
        .expect("set up the streams and buckets");
    bus
}

/// A nats bus on the shared test server, in its own namespace.
pub async fn nats_bus() -> NatsBus {
    testkit::init_logging();
    let nats = testkit::nats().expect("a NATS server for tests");
    nats_bus_at(&nats.url, &nats.prefix).await
}

pub async fn local_bus() -> LocalBus {
    testkit::init_logging();
    let bus = LocalBus::new();
    bus.setup(&Definitions::croupier())
        .await
        .expect("set up the streams and buckets");
    bus
}

/// Millisecond rounds on `tables`, seeds from [`SECRET`], a lease of `ttl`.
pub fn config(tables: &[&str], ttl: Duration) -> GmsConfig {
    GmsConfig {
        tables: tables.iter().map(|t| table(t)).collect(),
        betting: Duration::from_millis(150),
        result: Duration::from_millis(50),
        pause: Duration::from_millis(50),
        seed_secret: SeedSecret::new(SECRET).expect("secret"),
        lease: LeaseConfig::with_ttl(ttl),
    }
}

/// A GMS running in the background.
pub struct Running {
    pub instance: String,
    pub leading: watch::Receiver<BTreeSet<TableId>>,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<()>,
}

impl Running {
    pub fn leads(&self, name: &str) -> bool {
        self.leading.borrow().contains(&table(name))
    }

    /// Stops it gracefully and waits until it has.
    pub async fn stop(self) {
        self.shutdown.cancel();
        within("the GMS to stop", self.handle)
            .await
            .expect("the GMS task");
    }
}

pub fn spawn<B: Bus>(bus: &B, config: GmsConfig) -> Running {
    let instance = config.lease.instance.clone();
    let gms = Gms::build(config, bus.clone());
    let leading = gms.leading();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(gms.run(shutdown.clone()));
    Running {
        instance,
        leading,
        shutdown,
        handle,
    }
}

pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

/// Waits until `condition` holds, polling.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// One transition as stored.
#[derive(Debug, Clone)]
pub struct Transition {
    pub seq: u64,
    pub msg_id: Option<String>,
    pub round: u64,
    pub event: RoundEvent,
}

impl Transition {
    pub fn kind(&self) -> &'static str {
        self.event.kind()
    }

    pub fn ends_round(&self) -> bool {
        matches!(
            self.event,
            RoundEvent::OutcomeDeclared { .. } | RoundEvent::RoundVoided { .. }
        )
    }
}

fn transition(message: StoredMessage) -> Transition {
    let event = protocol::decode_event(&message.payload).expect("a decodable event");
    Transition {
        seq: message.seq,
        msg_id: message.msg_id,
        round: event.round().expect("a round").get(),
        event: event.body.to_round_event().expect("a round event"),
    }
}

/// The table's transitions from sequence 1 until `done` says enough.
pub async fn read_until<B: Bus>(
    bus: &B,
    name: &str,
    mut done: impl FnMut(&[Transition]) -> bool,
) -> Vec<Transition> {
    let mut replay = bus
        .replay(
            protocol::subject::TABLES_STREAM,
            &format!("table.{name}.round"),
            1,
        )
        .await
        .expect("replay the table");
    let mut seen = Vec::new();
    within(&format!("transitions of {name}"), async {
        while !done(&seen) {
            let message = replay
                .next()
                .await
                .expect("the replay goes on")
                .expect("a stored message");
            seen.push(transition(message));
        }
    })
    .await;
    seen
}

/// The table's transitions until `rounds` rounds have ended after round `after`.
pub async fn rounds_ended_after<B: Bus>(
    bus: &B,
    name: &str,
    after: u64,
    rounds: usize,
) -> Vec<Transition> {
    read_until(bus, name, |seen| {
        seen.iter()
            .filter(|t| t.round > after && t.ends_round())
            .count()
            >= rounds
    })
    .await
}

/// The last transition stored for the table, if any.
pub async fn last<B: Bus>(bus: &B, name: &str) -> Option<Transition> {
    bus.last_message(
        protocol::subject::TABLES_STREAM,
        &format!("table.{name}.round"),
    )
    .await
    .expect("last message")
    .map(transition)
}

/// What every test ends with: from round `first`, each round is exactly open, closed, declared
/// (or open, voided; or open, closed, voided), round numbers are consecutive, no msg id is
/// stored twice and each is `<table>:<round>:<kind>`, and every declared outcome verifies with
/// `domain::fairness::verify` against the round's own commitment. A trailing round may be
/// unfinished. Returns how many rounds were declared.
pub fn check_stream(name: &str, first: u64, transitions: &[Transition]) -> usize {
    let table = table(name);
    let mut ids = HashSet::new();
    let mut declared = 0;
    let mut expected_round = first;
    let mut commitment = None;
    let mut previous: Option<&'static str> = None;
    for t in transitions {
        let msg_id = t.msg_id.clone().expect("every transition has a msg id");
        assert_eq!(msg_id, format!("{name}:{}:{}", t.round, t.kind()));
        assert!(ids.insert(msg_id.clone()), "msg id {msg_id} stored twice");
        let kind = t.kind();
        let allowed = match previous {
            None | Some("outcome_declared" | "round_voided") => kind == "round_opened",
            Some("round_opened") => matches!(kind, "betting_closed" | "round_voided"),
            Some("betting_closed") => matches!(kind, "outcome_declared" | "round_voided"),
            Some(other) => panic!("unexpected {other}"),
        };
        assert!(
            allowed,
            "{kind} of round {} after {previous:?}: {transitions:#?}",
            t.round
        );
        if kind == "round_opened" && previous.is_some() {
            expected_round += 1;
        }
        assert_eq!(
            t.round, expected_round,
            "round numbers are consecutive: {transitions:#?}"
        );
        match &t.event {
            RoundEvent::RoundOpened { seed_hash, .. } => commitment = Some(*seed_hash),
            RoundEvent::OutcomeDeclared {
                outcome,
                server_seed,
            } => {
                let committed = commitment.expect("a commitment before the outcome");
                domain::fairness::verify(
                    &table,
                    RoundId::new(t.round).expect("round"),
                    &committed,
                    server_seed,
                    *outcome,
                )
                .unwrap_or_else(|e| panic!("round {} does not verify: {e}", t.round));
                declared += 1;
            }
            _ => {}
        }
        previous = Some(kind);
    }
    declared
}

/// Publishes a transition as some other writer would (a former leader, an operator).
pub async fn publish_as_other<B: Bus>(
    bus: &B,
    name: &str,
    round: u64,
    event: RoundEvent,
    expected_last_seq: u64,
) -> Result<bus::Published, bus::PublishError> {
    let body = EventBody::from_round_event(table(name), RoundId::new(round).expect("round"), event);
    let event = Event::new(uuid::Uuid::new_v4(), now(), body);
    let msg_id = protocol::gms_msg_id(&event).expect("msg id");
    let payload = protocol::encode_event(&event).expect("encode");
    bus.publish(
        Publish::new(format!("table.{name}.round"), payload)
            .msg_id(msg_id)
            .expected_last_subject_seq(expected_last_seq),
    )
    .await
}

pub fn now() -> Timestamp {
    let micros = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000;
    Timestamp::from_unix_micros(i64::try_from(micros).expect("micros")).expect("timestamp")
}

/// The commitment a GMS with `secret` makes for the round.
pub fn commitment(secret: &str, name: &str, round: u64) -> domain::SeedHash {
    SeedSecret::new(secret)
        .expect("secret")
        .seed(&table(name), RoundId::new(round).expect("round"))
        .hash()
}

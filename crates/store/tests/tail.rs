//! The tailer under concurrent writers: it must see every committed event, in position order,
//! with no gap and no reordering, while four writers append batches and roll back some.
//!
//! The ignored test is the control experiment: the same writers and the same check, but with
//! positions from a plain `bigserial` instead of the head row. Run it with
//! `cargo test -p store --test tail -- --ignored`: it FAILS (the tailer sees gaps, and misses
//! events that commit after a higher position was already read), which shows both that the
//! check can fail and why the store takes positions from a head row locked last
//! (`docs/contract/event-store.md`).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Rng, TestResult, connect, migrated_db, store};
use futures_util::{Stream, StreamExt};
use store::{NewEvent, Store, TailOptions, append};
use tokio_postgres::types::Type;
use uuid::Uuid;

/// Committed events the writers produce between them (they stop once it is reached).
const TARGET_EVENTS: u64 = 10_000;
const WRITERS: u64 = 4;
const MAX_BATCH: u64 = 50;
const ROLLBACK_PERCENT: u64 = 20;
/// Only a guard against a hung test; a passing run takes seconds.
const GUARD: Duration = Duration::from_secs(300);
/// How long a woken tailer may take before the wake-up counts as lost (its poll interval is an
/// hour, so only a notification can deliver within this).
const WAKE_GUARD: Duration = Duration::from_secs(30);

type Committed = Vec<(i64, Uuid)>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What one writer does between appending and committing: sometimes nothing, sometimes a
/// short pause, so that transactions overlap the way busy GS instances' do.
async fn dawdle(rng: &mut Rng) {
    if rng.percent(50) {
        tokio::time::sleep(Duration::from_micros(rng.between(0, 2000))).await;
    } else {
        tokio::task::yield_now().await;
    }
}

/// A writer appending with the store (positions from the head row), on its own connection.
async fn head_row_writer(
    store: Store,
    seed: u64,
    total: Arc<AtomicU64>,
) -> Result<Committed, BoxError> {
    let mut rng = Rng::new(seed);
    let mut client = store.client().await?;
    let mut versions: HashMap<String, i32> = HashMap::new();
    let mut committed = Vec::new();
    while total.load(Ordering::SeqCst) < TARGET_EVENTS {
        let size = rng.between(1, MAX_BATCH);
        let mut next = versions.clone();
        let events: Vec<NewEvent> = (0..size)
            .map(|_| {
                let stream = format!("writer-{seed}-{}", rng.between(0, 2));
                let version = next.entry(stream.clone()).or_insert(0);
                *version += 1;
                NewEvent {
                    event_id: Uuid::new_v4(),
                    stream,
                    version: *version,
                    kind: "test_event".into(),
                    data: Bytes::from(rng.next_u64().to_be_bytes().to_vec()),
                    metadata: Bytes::new(),
                }
            })
            .collect();
        let tx = client.transaction().await?;
        let appended = append(&tx, &events).await?;
        dawdle(&mut rng).await;
        if rng.percent(ROLLBACK_PERCENT) {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
            versions = next;
            committed.extend(appended.iter().map(|a| (a.position, a.event_id)));
            total.fetch_add(size, Ordering::SeqCst);
        }
    }
    Ok(committed)
}

/// The control: a writer taking positions from a bigserial column of a scratch table.
async fn bigserial_writer(
    url: String,
    seed: u64,
    total: Arc<AtomicU64>,
) -> Result<Committed, BoxError> {
    let mut rng = Rng::new(seed);
    let mut client = connect(&url).await;
    let mut committed = Vec::new();
    while total.load(Ordering::SeqCst) < TARGET_EVENTS {
        let size = rng.between(1, MAX_BATCH);
        let ids: Vec<Uuid> = (0..size).map(|_| Uuid::new_v4()).collect();
        let data: Vec<Vec<u8>> = (0..size)
            .map(|_| rng.next_u64().to_be_bytes().to_vec())
            .collect();
        let tx = client.transaction().await?;
        let rows = tx
            .query_typed(
                "INSERT INTO scratch_events (event_id, data) \
                 SELECT * FROM unnest($1::uuid[], $2::bytea[]) RETURNING position, event_id",
                &[(&ids, Type::UUID_ARRAY), (&data, Type::BYTEA_ARRAY)],
            )
            .await?;
        dawdle(&mut rng).await;
        if rng.percent(ROLLBACK_PERCENT) {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
            for row in rows {
                committed.push((row.try_get(0)?, row.try_get(1)?));
            }
            total.fetch_add(size, Ordering::SeqCst);
        }
    }
    Ok(committed)
}

/// The control's tailer: what a naive reader of a bigserial table does, "everything after the
/// last position I saw".
fn bigserial_tail(url: String) -> impl Stream<Item = Result<(i64, Uuid), BoxError>> {
    futures_util::stream::unfold(
        (
            None::<tokio_postgres::Client>,
            0i64,
            std::collections::VecDeque::new(),
        ),
        move |(mut client, mut last, mut buffered)| {
            let url = url.clone();
            async move {
                loop {
                    if let Some(item) = buffered.pop_front() {
                        return Some((Ok(item), (client, last, buffered)));
                    }
                    let reader = match &client {
                        Some(reader) => reader,
                        None => client.insert(connect(&url).await),
                    };
                    let rows = match reader
                        .query(
                            "SELECT position, event_id FROM scratch_events \
                             WHERE position > $1 ORDER BY position LIMIT 500",
                            &[&last],
                        )
                        .await
                    {
                        Ok(rows) => rows,
                        Err(e) => return Some((Err(e.into()), (client, last, buffered))),
                    };
                    if rows.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    for row in rows {
                        let (Ok(position), Ok(id)) = (row.try_get(0), row.try_get(1)) else {
                            return Some((Err("bad row".into()), (client, last, buffered)));
                        };
                        last = position;
                        buffered.push_back((position, id));
                    }
                }
            }
        },
    )
}

/// Runs the writers while consuming the tail, until the tail has reached the last committed
/// position; returns what the tailer saw and what the writers committed.
async fn race<W>(
    writers: Vec<W>,
    tail: impl Stream<Item = Result<(i64, Uuid), BoxError>>,
) -> Result<(Committed, Committed), BoxError>
where
    W: Future<Output = Result<Committed, BoxError>> + Send + 'static,
{
    let mut running = tokio::task::JoinSet::new();
    for writer in writers {
        running.spawn(writer);
    }
    let mut tail = std::pin::pin!(tail);
    let mut seen: Committed = Vec::new();
    let mut committed: Committed = Vec::new();
    let mut end: Option<i64> = None;
    let run = async {
        loop {
            if let Some(end) = end {
                if seen.last().is_some_and(|&(position, _)| position >= end) {
                    return Ok::<_, BoxError>(());
                }
            }
            tokio::select! {
                Some(done) = running.join_next(), if !running.is_empty() => {
                    committed.extend(done??);
                    if running.is_empty() {
                        end = Some(committed.iter().map(|&(p, _)| p).max().unwrap_or(0));
                    }
                }
                item = tail.next() => match item {
                    Some(Ok(item)) => seen.push(item),
                    Some(Err(error)) => return Err(error),
                    None => return Err("the tail ended".into()),
                },
            }
        }
    };
    tokio::time::timeout(GUARD, run).await??;
    Ok((seen, committed))
}

/// Everything wrong with what the tailer saw, as lines for the assertion message.
fn tail_problems(seen: &[(i64, Uuid)], committed: &[(i64, Uuid)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut gaps = Vec::new();
    let mut reorderings = Vec::new();
    let mut previous = 0;
    for &(position, _) in seen {
        if position > previous + 1 {
            gaps.push(format!("{previous}→{position}"));
        } else if position <= previous {
            reorderings.push(format!("{previous}→{position}"));
        }
        previous = position;
    }
    if !gaps.is_empty() {
        problems.push(format!(
            "{} gaps in the positions the tailer saw (first: {})",
            gaps.len(),
            gaps.iter().take(8).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if !reorderings.is_empty() {
        problems.push(format!(
            "{} reorderings (first: {})",
            reorderings.len(),
            reorderings
                .iter()
                .take(8)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let seen_set: BTreeSet<(i64, Uuid)> = seen.iter().copied().collect();
    let committed_set: BTreeSet<(i64, Uuid)> = committed.iter().copied().collect();
    let missed: Vec<i64> = committed_set
        .difference(&seen_set)
        .map(|&(p, _)| p)
        .collect();
    if !missed.is_empty() {
        problems.push(format!(
            "{} of {} committed events never reached the tailer (first positions: {:?})",
            missed.len(),
            committed_set.len(),
            &missed[..missed.len().min(8)]
        ));
    }
    let phantom: Vec<i64> = seen_set
        .difference(&committed_set)
        .map(|&(p, _)| p)
        .collect();
    if !phantom.is_empty() {
        problems.push(format!(
            "{} events seen that were never committed (first positions: {:?})",
            phantom.len(),
            &phantom[..phantom.len().min(8)]
        ));
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_tailer_sees_every_committed_event_in_order_while_four_writers_race() -> TestResult {
    let db = migrated_db().await;
    let store = store(&db.url, usize::try_from(WRITERS)? + 2);
    let total = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (1..=WRITERS)
        .map(|seed| head_row_writer(store.clone(), seed, Arc::clone(&total)))
        .collect();
    let options = TailOptions {
        batch: 200,
        poll_interval: Duration::from_millis(50),
        ..TailOptions::default()
    };
    let tail = store.tail(1, options).map(|item| {
        item.map(|e| (e.position, e.event_id))
            .map_err(BoxError::from)
    });

    let (seen, committed) = race(writers, tail).await?;

    assert!(
        committed.len() >= 10_000,
        "only {} committed",
        committed.len()
    );
    let problems = tail_problems(&seen, &committed);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // Committed positions are exactly 1..N: rollbacks gave theirs back.
    let mut positions: Vec<i64> = committed.iter().map(|&(p, _)| p).collect();
    positions.sort_unstable();
    assert!(
        positions
            .iter()
            .copied()
            .eq(1..=i64::try_from(positions.len())?)
    );
    // And the chain they form is intact.
    let report = store.verify_chain(1, |_| {}).await?;
    assert_eq!(report.events, u64::try_from(committed.len())?);
    Ok(())
}

/// The control experiment (see the module comment): FAILS when run with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "control experiment: positions from a bigserial let the tailer see gaps and miss events, so this fails"]
async fn a_tailer_of_bigserial_positions_sees_every_committed_event_in_order() -> TestResult {
    let db = migrated_db().await;
    connect(&db.url)
        .await
        .batch_execute(
            "CREATE TABLE scratch_events (
                 position bigserial PRIMARY KEY,
                 event_id uuid NOT NULL UNIQUE,
                 data bytea NOT NULL
             )",
        )
        .await?;
    let total = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (1..=WRITERS)
        .map(|seed| bigserial_writer(db.url.clone(), seed, Arc::clone(&total)))
        .collect();

    let (seen, committed) = race(writers, bigserial_tail(db.url.clone())).await?;

    assert!(
        committed.len() >= 10_000,
        "only {} committed",
        committed.len()
    );
    let problems = tail_problems(&seen, &committed);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[tokio::test]
async fn a_commit_wakes_the_tailer_without_waiting_for_its_poll_interval() -> TestResult {
    let db = migrated_db().await;
    let store = store(&db.url, 2);
    // With an hour between polls, only the notification sent on commit can deliver the event.
    let options = TailOptions {
        poll_interval: Duration::from_secs(3600),
        ..TailOptions::default()
    };
    let mut tail = Box::pin(store.tail(1, options));
    let first = store
        .append_batch(&[common::event("player-kim", 1, "funds_deposited", b"\x80")])
        .await?;
    let seen = tokio::time::timeout(WAKE_GUARD, tail.next())
        .await?
        .ok_or("tail ended")??;
    assert_eq!(seen.event_id, first[0].event_id);

    // Now caught up and waiting: the next commit must wake it.
    let waiter = tokio::spawn(async move {
        tokio::time::timeout(WAKE_GUARD, tail.next())
            .await
            .map(|item| item.map(|r| r.map(|e| e.event_id)))
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = store
        .append_batch(&[common::event("player-kim", 2, "funds_deposited", b"\x80")])
        .await?;
    let woken = waiter
        .await?
        .map_err(|_| "the tailer was not woken by the commit")?;
    assert_eq!(woken.ok_or("tail ended")??, second[0].event_id);
    Ok(())
}

#[tokio::test]
async fn the_tailer_resumes_after_a_server_restart_without_skipping_an_event() -> TestResult {
    testkit::init_logging();
    let mut server = testkit::PgServer::start(testkit::PgServerOptions { durable: false })?;
    store::migrate_url(&server.url()).await?;
    let mut config = store::PoolConfig::new(server.url());
    config.call_timeout = Duration::from_secs(2);
    config.connect_timeout = Duration::from_secs(2);
    let store = Store::new(&config)?;
    let options = TailOptions {
        poll_interval: Duration::from_millis(50),
        reconnect_delay: Duration::from_millis(100),
        ..TailOptions::default()
    };
    let mut tail = std::pin::pin!(store.tail(1, options));
    let mut expected = Vec::new();
    for version in 1..=3 {
        let appended = store
            .append_batch(&[common::event(
                "player-lee",
                version,
                "funds_deposited",
                b"\x80",
            )])
            .await?;
        expected.push(appended[0].event_id);
    }
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(GUARD, tail.next())
            .await?
            .ok_or("tail ended")??;
        seen.push(event.event_id);
    }

    server.restart()?;
    // The pool's connections died with the server: the first call may fail, a retry works.
    let mut version = 4;
    while version <= 6 {
        match store
            .append_batch(&[common::event(
                "player-lee",
                version,
                "funds_deposited",
                b"\x80",
            )])
            .await
        {
            Ok(appended) => {
                expected.push(appended[0].event_id);
                version += 1;
            }
            Err(error) if error.is_unavailable() => {}
            Err(error) => return Err(error.into()),
        }
    }
    let mut errors = 0;
    while seen.len() < 6 {
        match tokio::time::timeout(GUARD, tail.next())
            .await?
            .ok_or("tail ended")?
        {
            Ok(event) => seen.push(event.event_id),
            Err(error) => {
                assert!(error.is_unavailable(), "{error}");
                errors += 1;
            }
        }
    }
    assert_eq!(seen, expected, "every event, in order, none twice");
    assert!(errors >= 1, "the restart was reported to the consumer");
    Ok(())
}

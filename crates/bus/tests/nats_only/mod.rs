//! What only the nats adapter has to prove: surviving server restarts, giving up at its
//! deadline, and applying the namespace prefix and definitions on a real server.

use std::time::Duration;

use bus::{Bus, BusError, Definitions, Kv, NatsBus, NatsOptions, Publish, PublishError, StreamDef};
use bytes::Bytes;

use futures_util::StreamExt;

use crate::support::{next, within};

/// A private server (it gets stopped) and a bus on it that waits for acknowledgements briefly
/// and keeps retrying publishes for a long time.
async fn private_bus() -> (testkit::NatsServer, NatsBus) {
    testkit::init_logging();
    let server = testkit::NatsServer::start().expect("a private NATS server");
    let options = NatsOptions {
        request_timeout: Duration::from_secs(1),
        publish_deadline: Duration::from_secs(60),
        ..NatsOptions::default()
    };
    let bus = NatsBus::connect(&server.url(), &testkit::unique_prefix(), options)
        .await
        .expect("connect");
    bus.setup(&Definitions::croupier()).await.expect("setup");
    (server, bus)
}

async fn wait_until_disconnected(bus: &NatsBus) {
    within("the bus to notice the server is gone", async {
        while bus.is_connected() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_during_a_nats_restart_is_retried_and_lands_exactly_once() {
    let (mut server, bus) = private_bus().await;
    bus.publish(Publish::new("table.a.round", "before").msg_id("roulette-1:1:round_opened"))
        .await
        .expect("publish before the restart");
    tokio::task::block_in_place(|| server.stop());
    wait_until_disconnected(&bus).await;

    let publisher = tokio::spawn({
        let bus = bus.clone();
        async move {
            bus.publish(
                Publish::new("table.a.round", "during")
                    .msg_id("roulette-1:2:round_opened")
                    .expected_last_subject_seq(1),
            )
            .await
        }
    });
    // Long enough for attempts to time out and be retried while the server is down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !publisher.is_finished(),
        "the publish keeps retrying instead of failing"
    );
    tokio::task::block_in_place(|| server.restart()).expect("restart the server");

    let published = within("the publish to land", publisher)
        .await
        .expect("the publisher finished")
        .expect("the publish lands after the restart");
    assert_eq!(published.seq, 2);
    assert!(bus.is_connected());
    let state = bus.stream_state("TABLES").await.expect("stream state");
    assert_eq!(state.last_seq, 2, "stored exactly once despite the retries");
    let mut replay = bus.replay("TABLES", "table.>", 1).await.expect("replay");
    let mut stored = Vec::new();
    for _ in 0..2 {
        let message = next(&mut replay, "a stored message")
            .await
            .expect("replayed");
        stored.push((message.seq, message.msg_id));
    }
    assert_eq!(
        stored,
        vec![
            (1, Some("roulette-1:1:round_opened".to_string())),
            (2, Some("roulette-1:2:round_opened".to_string())),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_replay_survives_a_nats_restart_without_gap_or_duplicate() {
    let (mut server, bus) = private_bus().await;
    for i in 1..=3 {
        bus.publish(Publish::new("table.a.round", i.to_string()).msg_id(format!("m{i}")))
            .await
            .expect("publish");
    }
    let mut replay = bus.replay("TABLES", "table.a.>", 1).await.expect("replay");
    for expected in 1..=3 {
        let message = next(&mut replay, "a stored message")
            .await
            .expect("replayed");
        assert_eq!(message.seq, expected);
    }
    tokio::task::block_in_place(|| server.restart()).expect("restart the server");
    for i in 4..=6 {
        bus.publish(Publish::new("table.a.round", i.to_string()).msg_id(format!("m{i}")))
            .await
            .expect("publish after the restart");
    }
    for expected in 4..=6 {
        let message = next(&mut replay, "a message after the restart")
            .await
            .expect("the replay goes on after the restart");
        assert_eq!(message.seq, expected, "no gap, no duplicate");
        assert_eq!(message.payload, Bytes::from(expected.to_string()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_read_survives_a_nats_restart_midway_without_gap_or_duplicate() {
    let (mut server, bus) = private_bus().await;
    // More than the read holds in flight (pulls of the client, batches handed over), so the
    // restart falls inside the read.
    const COUNT: u64 = 12_000;
    for i in 1..=COUNT {
        bus.publish(Publish::new("player.p-1.wallet", i.to_string()).msg_id(format!("m{i}")))
            .await
            .expect("publish");
    }
    let mut batches = bus
        .read_range("PLAYERS", "player.>", 1, COUNT)
        .await
        .expect("start a range read");
    let mut seqs = Vec::new();
    let first = next(&mut batches, "the first batch")
        .await
        .expect("a batch before the restart");
    seqs.extend(first.iter().map(|m| m.seq));
    tokio::task::block_in_place(|| server.restart()).expect("restart the server");
    within("the rest of the range after the restart", async {
        while let Some(batch) = batches.next().await {
            let batch = batch.expect("the read goes on after the restart");
            for message in batch {
                assert_eq!(message.payload, Bytes::from(message.seq.to_string()));
                seqs.push(message.seq);
            }
        }
    })
    .await;
    assert_eq!(
        seqs,
        (1..=COUNT).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_bus_ends_a_range_read_whose_reader_stopped_reading() {
    let (_server, bus) = private_bus().await;
    // More than the read hands over before its reader must take some (four batches of 1,024),
    // and a partial batch it holds when the stream goes quiet.
    const COUNT: u64 = 4_500;
    for i in 1..=COUNT {
        bus.publish(Publish::new("player.p-1.wallet", i.to_string()).msg_id(format!("m{i}")))
            .await
            .expect("publish");
    }
    let batches = bus
        .read_range("PLAYERS", "player.>", 1, COUNT + 100)
        .await
        .expect("start a range read");
    // The reader takes nothing; the read goes quiet with its queue full.
    tokio::time::sleep(Duration::from_secs(2)).await;
    within(
        "the bus to close with a range read blocked on its reader",
        bus.close(),
    )
    .await;
    drop(batches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_gives_up_with_a_timeout_after_its_deadline() {
    testkit::init_logging();
    let mut server = testkit::NatsServer::start().expect("a private NATS server");
    let options = NatsOptions {
        request_timeout: Duration::from_millis(500),
        publish_deadline: Duration::from_secs(2),
        ..NatsOptions::default()
    };
    let bus = NatsBus::connect(&server.url(), &testkit::unique_prefix(), options)
        .await
        .expect("connect");
    bus.setup(&Definitions::croupier()).await.expect("setup");
    tokio::task::block_in_place(|| server.stop());
    wait_until_disconnected(&bus).await;
    let outcome = within(
        "the publish to give up",
        bus.publish(Publish::new("table.a.round", "lost").msg_id("x")),
    )
    .await;
    assert_eq!(outcome, Err(PublishError::Timeout));
}

#[tokio::test]
async fn names_are_prefixed_on_the_server_and_logical_on_the_way_back() {
    testkit::init_logging();
    let nats = testkit::nats().expect("a NATS server");
    let bus = NatsBus::connect(&nats.url, &nats.prefix, NatsOptions::default())
        .await
        .expect("connect");
    bus.setup(&Definitions::croupier()).await.expect("setup");
    let published = bus
        .publish(Publish::new("table.a.round", "x").msg_id("x"))
        .await
        .expect("publish");
    assert_eq!(published.stream, "TABLES");

    let js = async_nats::jetstream::new(bus.client().clone());
    let prefix = &nats.prefix;
    let tables = js
        .get_stream(format!("{prefix}_TABLES"))
        .await
        .expect("the stream exists under its prefixed name");
    assert_eq!(
        tables.cached_info().config.subjects,
        vec![format!("{prefix}.table.>")]
    );
    let raw = tables
        .get_last_raw_message_by_subject(&format!("{prefix}.table.a.round"))
        .await
        .expect("the message is stored under its prefixed subject");
    assert_eq!(raw.sequence, published.seq);
    js.get_key_value(format!("{prefix}_gms_leases"))
        .await
        .expect("the bucket exists under its prefixed name");

    // Another namespace on the same server sees nothing of it.
    let neighbour = NatsBus::connect(&nats.url, &testkit::unique_prefix(), NatsOptions::default())
        .await
        .expect("connect");
    neighbour
        .setup(&Definitions::croupier())
        .await
        .expect("setup");
    let state = neighbour
        .stream_state("TABLES")
        .await
        .expect("stream state");
    assert_eq!(state.last_seq, 0);
}

#[tokio::test]
async fn setup_updates_a_changed_stream_definition_on_the_server() {
    testkit::init_logging();
    let nats = testkit::nats().expect("a NATS server");
    let bus = NatsBus::connect(&nats.url, &nats.prefix, NatsOptions::default())
        .await
        .expect("connect");
    let mut definitions = Definitions::default().stream(StreamDef::new("EXTRA", &["extra.>"]));
    bus.setup(&definitions).await.expect("create");
    bus.setup(&definitions).await.expect("setup twice is fine");
    let stream = definitions.stream_mut("EXTRA").expect("declared");
    stream.duplicate_window = Duration::from_secs(30);
    stream.max_msgs = 1000;
    bus.setup(&definitions).await.expect("update");

    let js = async_nats::jetstream::new(bus.client().clone());
    let info = js
        .get_stream(format!("{}_EXTRA", nats.prefix))
        .await
        .expect("the stream exists");
    let config = &info.cached_info().config;
    assert_eq!(config.duplicate_window, Duration::from_secs(30));
    assert_eq!(config.max_messages, 1000);
}

#[tokio::test]
async fn a_prefix_that_is_not_a_single_token_is_refused() {
    let nats = testkit::nats().expect("a NATS server");
    let refused = NatsBus::connect(&nats.url, "a.b", NatsOptions::default()).await;
    assert!(matches!(refused, Err(BusError::Invalid { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_and_durable_consumers_carry_on_after_a_nats_restart() {
    let (mut server, bus) = private_bus().await;
    let status = bus.kv("status").await.expect("open status");
    status
        .put("betting", Bytes::from_static(b"enabled"))
        .await
        .expect("put");
    let mut watch = status.watch("betting").await.expect("watch");
    let current = next(&mut watch, "the current status").await;
    assert_eq!(current.value, Some(Bytes::from_static(b"enabled")));
    let mut deliveries = bus
        .consume("TABLES", "settler", "table.>")
        .await
        .expect("consume");

    tokio::task::block_in_place(|| server.restart()).expect("restart the server");
    within("the bus to reconnect", async {
        while !bus.is_connected() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    let disabled = within("the status to be written after the restart", async {
        loop {
            match status.put("betting", Bytes::from_static(b"disabled")).await {
                Ok(revision) => break revision,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await;
    let change = next(&mut watch, "the status change after the restart").await;
    assert_eq!(
        (change.value, change.revision),
        (Some(Bytes::from_static(b"disabled")), disabled)
    );
    let seq = bus
        .publish(Publish::new("table.a.round", "after").msg_id("after"))
        .await
        .expect("publish after the restart")
        .seq;
    let delivery = next(&mut deliveries, "a delivery after the restart")
        .await
        .expect("delivered");
    assert_eq!(delivery.msg.seq, seq);
    delivery.ack().await.expect("ack");
}

//! The conformance suite: what every `Bus` adapter must do, written once, generic over the
//! adapter, and instantiated for `nats` and `local` by `tests/bus.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bus::{
    BucketDef, Bus, BusError, ConsumerDef, Definitions, Kv, KvError, KvEvent, Publish,
    PublishError, RequestError, StoredMessage, StreamDef,
};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::support::{WAIT, assert_quiet, next, within};

async fn publish<B: Bus>(bus: &B, subject: &str, payload: &str) -> u64 {
    bus.publish(Publish::new(subject, payload.to_string()).msg_id(format!("{subject}:{payload}")))
        .await
        .unwrap_or_else(|e| panic!("publish {payload} on {subject}: {e}"))
        .seq
}

fn summary(message: &StoredMessage) -> (u64, String, String) {
    (
        message.seq,
        message.subject.clone(),
        String::from_utf8_lossy(&message.payload).into_owned(),
    )
}

pub async fn publish_assigns_sequences_per_stream_and_remembers_the_last_message_per_subject<
    B: Bus,
>(
    bus: B,
) {
    let first = bus
        .publish(Publish::new("table.a.round", "a1").msg_id("a:1"))
        .await
        .expect("publish a1");
    assert_eq!(first.stream, "TABLES");
    assert_eq!(first.seq, 1);
    assert!(!first.duplicate);
    assert_eq!(publish(&bus, "table.b.round", "b1").await, 2);
    assert_eq!(
        bus.publish(Publish::new("table.a.round", "a2").msg_id("a:2"))
            .await
            .expect("publish a2")
            .seq,
        3
    );
    let wallet = bus
        .publish(Publish::new("player.alice.wallet", "w1"))
        .await
        .expect("publish to PLAYERS");
    assert_eq!((wallet.stream.as_str(), wallet.seq), ("PLAYERS", 1));

    let last = bus
        .last_message("TABLES", "table.a.round")
        .await
        .expect("read the last message");
    assert_eq!(
        last,
        Some(StoredMessage {
            subject: "table.a.round".into(),
            seq: 3,
            payload: Bytes::from_static(b"a2"),
            msg_id: Some("a:2".into()),
        })
    );
    assert_eq!(
        bus.last_message("TABLES", "table.c.round")
            .await
            .expect("read a subject without messages"),
        None
    );

    let state = bus.stream_state("TABLES").await.expect("stream state");
    assert_eq!((state.first_seq, state.last_seq), (1, 3));
    assert!(!state.epoch.is_empty());
    assert!(!state.retention_limited, "TABLES keeps everything");
    let again = bus
        .stream_state("TABLES")
        .await
        .expect("stream state again");
    assert_eq!(again.epoch, state.epoch, "the epoch is stable");
}

pub async fn unknown_streams_and_buckets_are_reported_as_not_found<B: Bus>(bus: B) {
    assert_eq!(
        bus.stream_state("NOPE").await,
        Err(BusError::StreamNotFound("NOPE".into()))
    );
    assert_eq!(
        bus.last_message("NOPE", "table.a.round").await,
        Err(BusError::StreamNotFound("NOPE".into()))
    );
    assert!(matches!(
        bus.replay("NOPE", "table.>", 1).await,
        Err(BusError::StreamNotFound(_))
    ));
    assert!(matches!(
        bus.kv("nope").await,
        Err(BusError::BucketNotFound(_))
    ));
}

pub async fn publish_to_a_subject_no_stream_captures_is_refused<B: Bus>(bus: B) {
    assert_eq!(
        bus.publish(Publish::new("nowhere.at.all", "x")).await,
        Err(PublishError::NoStream)
    );
    assert!(matches!(
        bus.publish(Publish::new("table.*.round", "x")).await,
        Err(PublishError::Other(_))
    ));
}

pub async fn duplicate_msg_id_within_the_window_is_reported_and_stored_once<B: Bus>(bus: B) {
    let first = bus
        .publish(Publish::new("table.a.round", "first").msg_id("roulette-1:1:round_opened"))
        .await
        .expect("publish");
    let again = bus
        .publish(Publish::new("table.a.round", "second").msg_id("roulette-1:1:round_opened"))
        .await
        .expect("publish the same msg id again");
    assert!(again.duplicate);
    assert_eq!(again.seq, first.seq);
    let state = bus.stream_state("TABLES").await.expect("stream state");
    assert_eq!(state.last_seq, first.seq, "the duplicate is not stored");
    let last = bus
        .last_message("TABLES", "table.a.round")
        .await
        .expect("last message")
        .expect("a message is stored");
    assert_eq!(last.payload, Bytes::from_static(b"first"));
}

pub async fn msg_id_is_forgotten_after_the_duplicate_window<B: Bus>(bus: B) {
    let mut stream = StreamDef::new("SHORT_DEDUP", &["dedup.>"]);
    stream.duplicate_window = Duration::from_secs(1);
    bus.setup(&Definitions::default().stream(stream))
        .await
        .expect("set up a stream with a short duplicate window");
    let first = bus
        .publish(Publish::new("dedup.x", "1").msg_id("same"))
        .await
        .expect("publish");
    let stored_again = within("the msg id to be forgotten", async {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let again = bus
                .publish(Publish::new("dedup.x", "2").msg_id("same"))
                .await
                .expect("publish again");
            if !again.duplicate {
                break again;
            }
            assert_eq!(again.seq, first.seq);
        }
    })
    .await;
    assert_eq!(stored_again.seq, first.seq + 1);
}

pub async fn publish_with_a_stale_expected_subject_sequence_is_a_conflict<B: Bus>(bus: B) {
    let opened = bus
        .publish(
            Publish::new("table.a.round", "open")
                .msg_id("a:1:open")
                .expected_last_subject_seq(0),
        )
        .await
        .expect("the first message of a subject expects 0");
    let rival = bus
        .publish(
            Publish::new("table.a.round", "rival")
                .msg_id("a:1:rival")
                .expected_last_subject_seq(0),
        )
        .await;
    assert_eq!(
        rival,
        Err(PublishError::WrongLastSequence {
            expected: 0,
            subject: "table.a.round".into()
        })
    );
    // Sequences are per subject: another table is not affected.
    bus.publish(
        Publish::new("table.b.round", "open")
            .msg_id("b:1:open")
            .expected_last_subject_seq(0),
    )
    .await
    .expect("another subject has its own last sequence");
    let closed = bus
        .publish(
            Publish::new("table.a.round", "close")
                .msg_id("a:1:close")
                .expected_last_subject_seq(opened.seq),
        )
        .await
        .expect("the right expected sequence is accepted");
    let late = bus
        .publish(
            Publish::new("table.a.round", "late")
                .msg_id("a:1:late")
                .expected_last_subject_seq(opened.seq),
        )
        .await;
    assert!(matches!(
        late,
        Err(PublishError::WrongLastSequence { expected, .. }) if expected == opened.seq
    ));
    let state = bus.stream_state("TABLES").await.expect("stream state");
    assert_eq!(
        state.last_seq, closed.seq,
        "refused messages are not stored"
    );
}

pub async fn retried_publish_with_the_same_msg_id_is_a_duplicate_not_a_conflict<B: Bus>(bus: B) {
    let publish = Publish::new("table.a.round", "open")
        .msg_id("roulette-1:7:round_opened")
        .expected_last_subject_seq(0);
    let first = bus.publish(publish.clone()).await.expect("publish");
    // The retry of a publish whose acknowledgement was lost: its expected sequence is now
    // stale, but dedup recognises it, so the writer learns it already succeeded.
    let retry = bus
        .publish(publish.clone())
        .await
        .expect("the retry is answered");
    assert!(retry.duplicate);
    assert_eq!(retry.seq, first.seq);
    // Once another message follows it, the same retry is a conflict: someone else advanced.
    bus.publish(
        Publish::new("table.a.round", "rival")
            .msg_id("rival")
            .expected_last_subject_seq(first.seq),
    )
    .await
    .expect("another writer advances the subject");
    assert!(matches!(
        bus.publish(publish).await,
        Err(PublishError::WrongLastSequence { expected: 0, .. })
    ));
    assert_eq!(
        bus.stream_state("TABLES").await.expect("state").last_seq,
        first.seq + 1
    );
}

pub async fn filtered_replay_from_a_sequence_then_live_has_no_gap_or_duplicate<B: Bus>(bus: B) {
    publish(&bus, "table.a.round", "a1").await;
    publish(&bus, "table.b.round", "b1").await;
    let a2 = publish(&bus, "table.a.result", "a2").await;
    publish(&bus, "table.b.round", "b2").await;
    let a3 = publish(&bus, "table.a.round", "a3").await;

    let mut replay = bus
        .replay("TABLES", "table.a.>", a2)
        .await
        .expect("start a replay");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let message = next(&mut replay, "a stored message")
            .await
            .expect("replayed");
        seen.push(summary(&message));
    }
    assert_eq!(
        seen,
        vec![
            (a2, "table.a.result".into(), "a2".into()),
            (a3, "table.a.round".into(), "a3".into()),
        ]
    );

    publish(&bus, "table.b.round", "b3").await;
    let a4 = publish(&bus, "table.a.round", "a4").await;
    let a5 = publish(&bus, "table.a.result", "a5").await;
    let mut live = Vec::new();
    for _ in 0..2 {
        let message = next(&mut replay, "a live message").await.expect("live");
        live.push(summary(&message));
    }
    assert_eq!(
        live,
        vec![
            (a4, "table.a.round".into(), "a4".into()),
            (a5, "table.a.result".into(), "a5".into()),
        ]
    );

    // From past the end: only what comes next.
    let state = bus.stream_state("TABLES").await.expect("stream state");
    let mut tail = bus
        .replay("TABLES", "table.a.>", state.last_seq + 1)
        .await
        .expect("start a replay at the end");
    let a6 = publish(&bus, "table.a.round", "a6").await;
    let message = next(&mut tail, "the next message").await.expect("live");
    assert_eq!(summary(&message), (a6, "table.a.round".into(), "a6".into()));
}

pub async fn read_range_hands_over_the_range_in_order_and_ends<B: Bus>(bus: B) {
    // More than one pull and one hand-over of the nats adapter, on two subjects of which the
    // filter takes one, and a message past the range.
    const COUNT: u64 = 1_500;
    let mut wanted = Vec::new();
    for i in 0..COUNT {
        let seq = publish(&bus, "table.a.round", &format!("a{i}")).await;
        wanted.push((seq, "table.a.round".to_string(), format!("a{i}")));
        if i % 3 == 0 {
            publish(&bus, "table.b.round", &format!("b{i}")).await;
        }
    }
    let from = wanted[10].0;
    let to = wanted[1_400].0;
    publish(&bus, "table.a.round", "after").await;
    let mut batches = bus
        .read_range("TABLES", "table.a.>", from, to)
        .await
        .expect("start a range read");
    let read = within("the range read to end", async {
        let mut read = Vec::new();
        while let Some(batch) = batches.next().await {
            let batch = batch.expect("a batch");
            assert!(!batch.is_empty(), "no empty batch is handed over");
            read.extend(batch.iter().map(summary));
        }
        read
    })
    .await;
    assert_eq!(read, wanted[10..=1_400].to_vec());

    // A range that holds nothing matching ends at once, as does one past the end.
    let last = bus.stream_state("TABLES").await.expect("state").last_seq;
    for (filter, from, to) in [("table.c.>", 1, last), ("table.a.>", last + 1, last + 10)] {
        let mut batches = bus
            .read_range("TABLES", filter, from, to)
            .await
            .expect("start a range read");
        let first = within("an empty range to end", batches.next()).await;
        assert!(
            first.is_none(),
            "{filter} {from}..={to}: nothing and the end"
        );
    }
}

pub async fn replay_keeps_order_while_messages_arrive_during_it<B: Bus>(bus: B) {
    const COUNT: u64 = 150;
    for i in 1..=COUNT / 2 {
        publish(&bus, "table.busy.round", &i.to_string()).await;
    }
    let mut replay = bus
        .replay("TABLES", "table.busy.>", 1)
        .await
        .expect("start a replay");
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for i in COUNT / 2 + 1..=COUNT {
                publish(&bus, "table.busy.round", &i.to_string()).await;
            }
        })
    };
    for expected in 1..=COUNT {
        let message = next(&mut replay, "the next message in order")
            .await
            .expect("replayed");
        assert_eq!(message.seq, expected, "no gap, no duplicate, in order");
        assert_eq!(message.payload, Bytes::from(expected.to_string()));
    }
    within("the publisher", publisher)
        .await
        .expect("the publisher finished");
}

pub async fn unacked_message_is_redelivered_after_ack_wait<B: Bus>(bus: B) {
    let mut worker = ConsumerDef::new("TABLES", "worker");
    worker.ack_wait = Duration::from_secs(1);
    bus.setup(&Definitions::default().consumer(worker))
        .await
        .expect("set up a consumer with a short ack_wait");
    let seq = publish(&bus, "table.a.round", "m1").await;
    let mut deliveries = bus
        .consume("TABLES", "worker", "table.>")
        .await
        .expect("consume");
    let first = next(&mut deliveries, "the first delivery")
        .await
        .expect("delivered");
    assert_eq!((first.msg.seq, first.delivered), (seq, 1));
    // Not acked: it comes back.
    let second = next(&mut deliveries, "the redelivery")
        .await
        .expect("redelivered");
    assert_eq!((second.msg.seq, second.delivered), (seq, 2));
    assert_eq!(second.msg.payload, Bytes::from_static(b"m1"));
    second.ack().await.expect("ack");

    let seq2 = publish(&bus, "table.a.round", "m2").await;
    let third = next(&mut deliveries, "the next message")
        .await
        .expect("delivered");
    assert_eq!((third.msg.seq, third.delivered), (seq2, 1));
    third.ack().await.expect("ack");
    assert_quiet(
        &mut deliveries,
        Duration::from_secs(3),
        "no redelivery of acked messages",
    )
    .await;
}

pub async fn durable_consumer_resumes_after_its_last_acked_message<B: Bus>(bus: B) {
    let mut resumer = ConsumerDef::new("TABLES", "resumer");
    resumer.ack_wait = Duration::from_secs(1);
    bus.setup(&Definitions::default().consumer(resumer))
        .await
        .expect("set up a consumer");
    publish(&bus, "table.a.round", "m1").await;
    publish(&bus, "table.a.round", "m2").await;
    {
        let mut deliveries = bus
            .consume("TABLES", "resumer", "table.>")
            .await
            .expect("consume");
        for expected in ["m1", "m2"] {
            let delivery = next(&mut deliveries, expected).await.expect("delivered");
            assert_eq!(delivery.msg.payload, Bytes::from(expected));
            delivery.ack().await.expect("ack");
        }
    }
    let seq3 = publish(&bus, "table.a.round", "m3").await;
    let mut deliveries = bus
        .consume("TABLES", "resumer", "table.>")
        .await
        .expect("consume again");
    let delivery = next(&mut deliveries, "m3").await.expect("delivered");
    assert_eq!(
        delivery.msg.seq, seq3,
        "acked messages are not delivered again"
    );
    assert_eq!(delivery.msg.payload, Bytes::from_static(b"m3"));
}

pub async fn queue_group_spreads_requests_and_each_reaches_one_member<B: Bus>(bus: B) {
    const REQUESTS: usize = 40;
    let handled = Arc::new(AtomicUsize::new(0));
    let mut members = Vec::new();
    for member in ["gs-1", "gs-2"] {
        let mut requests = bus.serve("bets.place.*", "gs").await.expect("serve");
        let handled = handled.clone();
        members.push(tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                handled.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "{member}|{}|{}",
                    request.subject,
                    String::from_utf8_lossy(&request.payload)
                );
                request.respond(Bytes::from(answer)).await.expect("respond");
            }
        }));
    }
    let mut by_member: HashMap<String, usize> = HashMap::new();
    for i in 0..REQUESTS {
        let answer = bus
            .request("bets.place.roulette-1", Bytes::from(i.to_string()), WAIT)
            .await
            .expect("an answer");
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let mut parts = answer.split('|');
        let member = parts.next().expect("member").to_string();
        assert_eq!(
            parts.next(),
            Some("bets.place.roulette-1"),
            "logical subject"
        );
        assert_eq!(
            parts.next(),
            Some(i.to_string().as_str()),
            "the answer to this request"
        );
        *by_member.entry(member).or_default() += 1;
    }
    assert_eq!(by_member.len(), 2, "both members served: {by_member:?}");
    assert_eq!(
        handled.load(Ordering::SeqCst),
        REQUESTS,
        "each request reached exactly one member"
    );
    for member in members {
        member.abort();
    }
}

pub async fn request_without_responders_fails_and_unanswered_request_times_out<B: Bus>(bus: B) {
    assert_eq!(
        bus.request("bets.place.nobody", Bytes::from_static(b"x"), WAIT)
            .await,
        Err(RequestError::NoResponders)
    );
    let mut requests = bus.serve("bets.place.silent", "gs").await.expect("serve");
    let swallower = tokio::spawn(async move {
        // Receives requests and never answers.
        let mut kept = Vec::new();
        while let Some(request) = requests.next().await {
            kept.push(request);
        }
    });
    assert_eq!(
        bus.request(
            "bets.place.silent",
            Bytes::from_static(b"x"),
            Duration::from_millis(500)
        )
        .await,
        Err(RequestError::Timeout)
    );
    swallower.abort();
}

pub async fn kv_create_has_exactly_one_winner_among_racers<B: Bus>(bus: B) {
    let kv = bus.kv("gms_leases").await.expect("open gms_leases");
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let kv = kv.clone();
            tokio::spawn(async move {
                (
                    i,
                    kv.create("roulette-1", Bytes::from(format!("gms-{i}")))
                        .await,
                )
            })
        })
        .collect();
    let mut winners = Vec::new();
    for racer in racers {
        let (i, outcome) = within("a racer", racer).await.expect("racer finished");
        match outcome {
            Ok(revision) => winners.push((i, revision)),
            Err(KvError::AlreadyExists) => {}
            Err(other) => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner: {winners:?}");
    let (winner, revision) = winners[0];
    let entry = kv
        .get("roulette-1")
        .await
        .expect("get")
        .expect("the lease is held");
    assert_eq!(entry.value, Bytes::from(format!("gms-{winner}")));
    assert_eq!(entry.revision, revision);
}

pub async fn kv_compare_and_set_has_exactly_one_winner_among_racers<B: Bus>(bus: B) {
    let kv = bus.kv("gms_leases").await.expect("open gms_leases");
    let base = kv
        .put("roulette-1", Bytes::from_static(b"gms-0"))
        .await
        .expect("put");
    let racers: Vec<_> = (1..=8)
        .map(|i| {
            let kv = kv.clone();
            tokio::spawn(async move {
                (
                    i,
                    kv.update("roulette-1", Bytes::from(format!("gms-{i}")), base)
                        .await,
                )
            })
        })
        .collect();
    let mut winners = Vec::new();
    for racer in racers {
        let (i, outcome) = within("a racer", racer).await.expect("racer finished");
        match outcome {
            Ok(revision) => winners.push((i, revision)),
            Err(KvError::WrongRevision) => {}
            Err(other) => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one winner: {winners:?}");
    let (winner, revision) = winners[0];
    assert!(revision > base);
    let entry = kv.get("roulette-1").await.expect("get").expect("a value");
    assert_eq!(
        (entry.value, entry.revision),
        (Bytes::from(format!("gms-{winner}")), revision)
    );
    assert_eq!(
        kv.update("roulette-1", Bytes::from_static(b"late"), base)
            .await,
        Err(KvError::WrongRevision)
    );
}

pub async fn kv_lease_expires_unless_renewed<B: Bus>(bus: B) {
    let mut leases = BucketDef::new("short_leases");
    leases.max_age = Duration::from_secs(2);
    bus.setup(&Definitions::default().bucket(leases))
        .await
        .expect("set up a bucket with a short TTL");
    let kv = bus.kv("short_leases").await.expect("open the bucket");
    let mut revision = kv
        .create("roulette-1", Bytes::from_static(b"gms-a"))
        .await
        .expect("take the lease");
    // Renewed well within the TTL, the lease outlives it.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        revision = kv
            .update("roulette-1", Bytes::from_static(b"gms-a"), revision)
            .await
            .expect("renew the lease");
        assert_eq!(
            kv.create("roulette-1", Bytes::from_static(b"gms-b")).await,
            Err(KvError::AlreadyExists),
            "a held lease cannot be taken"
        );
    }
    // Not renewed any more: it expires and another instance takes it.
    let taken = within("the lease to expire", async {
        loop {
            match kv.create("roulette-1", Bytes::from_static(b"gms-b")).await {
                Ok(revision) => break revision,
                Err(KvError::AlreadyExists) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(other) => panic!("unexpected outcome {other:?}"),
            }
        }
    })
    .await;
    let entry = kv.get("roulette-1").await.expect("get").expect("held");
    assert_eq!(
        (entry.value, entry.revision),
        (Bytes::from_static(b"gms-b"), taken)
    );
    assert_eq!(
        kv.update("roulette-1", Bytes::from_static(b"gms-a"), revision)
            .await,
        Err(KvError::WrongRevision),
        "the old holder cannot renew a lease it lost"
    );
}

pub async fn kv_watch_starts_with_the_current_value_then_follows_changes<B: Bus>(bus: B) {
    let kv = bus.kv("status").await.expect("open status");
    let enabled = kv
        .put("betting", Bytes::from_static(b"enabled"))
        .await
        .expect("put");
    let mut watch = kv.watch("betting").await.expect("watch");
    assert_eq!(
        next(&mut watch, "the current value").await,
        KvEvent {
            key: "betting".into(),
            value: Some(Bytes::from_static(b"enabled")),
            revision: enabled,
        }
    );
    let disabled = kv
        .put("betting", Bytes::from_static(b"disabled"))
        .await
        .expect("put");
    assert_eq!(
        next(&mut watch, "the change").await,
        KvEvent {
            key: "betting".into(),
            value: Some(Bytes::from_static(b"disabled")),
            revision: disabled,
        }
    );
    kv.delete("betting").await.expect("delete");
    let deleted = next(&mut watch, "the delete").await;
    assert_eq!((deleted.key.as_str(), deleted.value), ("betting", None));
    assert!(deleted.revision > disabled);
    let other = kv
        .put("other", Bytes::from_static(b"x"))
        .await
        .expect("put");
    let again = kv
        .put("betting", Bytes::from_static(b"enabled"))
        .await
        .expect("put");
    assert_eq!(
        next(&mut watch, "the next change of the watched key").await,
        KvEvent {
            key: "betting".into(),
            value: Some(Bytes::from_static(b"enabled")),
            revision: again,
        },
        "other keys are not seen"
    );

    let mut everything = kv.watch(">").await.expect("watch every key");
    let first = next(&mut everything, "the current values").await;
    let second = next(&mut everything, "the current values").await;
    assert_eq!(
        [(first.key, first.revision), (second.key, second.revision)],
        [("other".to_string(), other), ("betting".to_string(), again)],
        "current values come in revision order"
    );
}

pub async fn kv_values_follow_revisions_through_put_delete_and_create<B: Bus>(bus: B) {
    let kv = bus.kv("status").await.expect("open status");
    assert_eq!(kv.get("missing").await, Ok(None));
    let first = kv.put("k", Bytes::from_static(b"v1")).await.expect("put");
    let entry = kv.get("k").await.expect("get").expect("a value");
    assert_eq!(
        (entry.value, entry.revision),
        (Bytes::from_static(b"v1"), first)
    );
    let second = kv.put("k", Bytes::from_static(b"v2")).await.expect("put");
    assert!(second > first);
    assert_eq!(
        kv.create("k", Bytes::from_static(b"v3")).await,
        Err(KvError::AlreadyExists)
    );
    kv.delete("k").await.expect("delete");
    assert_eq!(kv.get("k").await, Ok(None));
    let recreated = kv
        .create("k", Bytes::from_static(b"v3"))
        .await
        .expect("a deleted key can be created again");
    assert!(recreated > second);
    assert!(matches!(
        kv.put("not a key", Bytes::from_static(b"x")).await,
        Err(KvError::InvalidKey(_))
    ));
}

pub async fn setup_is_idempotent_and_applies_changed_definitions<B: Bus>(bus: B) {
    bus.setup(&Definitions::croupier())
        .await
        .expect("setting up the same definitions again is fine");
    let mut bucket = BucketDef::new("changing");
    let definitions = Definitions::default().bucket(bucket.clone());
    bus.setup(&definitions).await.expect("set up a bucket");
    let kv = bus.kv("changing").await.expect("open the bucket");
    kv.put("k", Bytes::from_static(b"v")).await.expect("put");
    bus.setup(&definitions)
        .await
        .expect("set up the bucket again");
    assert!(
        kv.get("k").await.expect("get").is_some(),
        "setup again keeps the data"
    );
    bucket.max_age = Duration::from_secs(1);
    bus.setup(&Definitions::default().bucket(bucket))
        .await
        .expect("update the bucket's TTL");
    within("the entry to expire under the new TTL", async {
        while kv.get("k").await.expect("get").is_some() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

pub async fn stream_limits_drop_the_oldest_messages_and_move_the_first_sequence<B: Bus>(bus: B) {
    let mut stream = StreamDef::new("CAPPED", &["capped.>"]);
    stream.max_msgs = 3;
    bus.setup(&Definitions::default().stream(stream))
        .await
        .expect("set up a capped stream");
    for i in 1..=5 {
        publish(&bus, "capped.x", &i.to_string()).await;
    }
    let state = bus.stream_state("CAPPED").await.expect("stream state");
    assert_eq!((state.first_seq, state.last_seq), (3, 5));
    assert!(
        state.retention_limited,
        "a stream with max_msgs drops by its limits"
    );
    let mut replay = bus
        .replay("CAPPED", "capped.>", 1)
        .await
        .expect("replay from before the first sequence");
    for expected in 3..=5 {
        let message = next(&mut replay, "a retained message")
            .await
            .expect("replayed");
        assert_eq!(
            message.seq, expected,
            "replay starts at the oldest retained"
        );
    }
}

/// Not instantiated by the macro: each adapter's test passes its own `close`.
pub async fn closing_the_bus_ends_its_replays_consumers_and_watches<B: Bus>(
    bus: B,
    close: impl std::future::Future<Output = ()>,
) {
    let mut replay = bus.replay("TABLES", "table.>", 1).await.expect("replay");
    let mut deliveries = bus
        .consume("TABLES", "closing", "table.>")
        .await
        .expect("consume");
    let kv = bus.kv("status").await.expect("open status");
    let mut watch = kv.watch("betting").await.expect("watch");
    within("the bus to close", close).await;
    assert!(within("the replay to end", replay.next()).await.is_none());
    assert!(
        within("the consumer to end", deliveries.next())
            .await
            .is_none()
    );
    assert!(within("the watch to end", watch.next()).await.is_none());
}

/// A queue member that drains (GS leaving the bet queue while its database is sick) answers
/// every request routed to it before the leave, and new requests go to the other member: no
/// request is lost in between.
pub async fn draining_a_queue_member_loses_no_request_and_routes_new_ones_elsewhere<B: Bus>(
    bus: B,
) {
    const REQUESTS: usize = 300;
    let (drain_now, drain_asked) = tokio::sync::oneshot::channel::<()>();
    let (drained, drained_seen) = tokio::sync::oneshot::channel::<()>();
    let mut leaving = bus.serve("bets.place.*", "gs").await.expect("serve");
    let leaver = tokio::spawn(async move {
        let mut drain_asked = Some(drain_asked);
        loop {
            let request = match drain_asked.as_mut() {
                Some(asked) => tokio::select! {
                    _ = asked => {
                        drain_asked = None;
                        leaving.drain();
                        continue;
                    }
                    request = leaving.next() => request,
                },
                None => leaving.next().await,
            };
            let Some(request) = request else { break };
            if drain_asked.is_some() {
                // A slow member (a GS whose batches wait on a sick database): requests pile
                // up in its subscription, and the leave must not lose them.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let answer = format!("leaving|{}", String::from_utf8_lossy(&request.payload));
            request.respond(Bytes::from(answer)).await.expect("respond");
        }
        let _ = drained.send(());
    });
    let mut staying = bus.serve("bets.place.*", "gs").await.expect("serve");
    let stayer = tokio::spawn(async move {
        while let Some(request) = staying.next().await {
            let answer = format!("staying|{}", String::from_utf8_lossy(&request.payload));
            request.respond(Bytes::from(answer)).await.expect("respond");
        }
    });
    let asks = (0..REQUESTS).map(|i| {
        let bus = bus.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(i as u64 / 3)).await;
            bus.request("bets.place.t", Bytes::from(i.to_string()), WAIT)
                .await
                .map(|a| String::from_utf8_lossy(&a).into_owned())
        }
    });
    let all = futures_util::future::join_all(asks);
    let drain = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        drain_now.send(()).expect("drain");
    };
    let (answers, ()) = tokio::join!(all, drain);
    let mut lost = Vec::new();
    for (i, answer) in answers.iter().enumerate() {
        match answer {
            Ok(answer) => assert!(answer.ends_with(&format!("|{i}")), "{answer}"),
            Err(_) => lost.push(i),
        }
    }
    // The local bus closes its channel and loses nothing. async-nats 0.51 ends a drained
    // subscription once its UNSUB is flushed rather than when the server's PONG comes back, so
    // requests the server routed here in that instant can still be dropped (their requesters
    // time out and retry): 0 to 7 of these 300 in runs here, where dropping the feed instead
    // loses every request waiting in it (over 40).
    let local = std::any::type_name::<B>().contains("Local");
    eprintln!("requests lost while a member drained: {lost:?}");
    if local {
        assert!(
            lost.is_empty(),
            "requests lost while a member drained: {lost:?}"
        );
    } else {
        assert!(
            lost.len() <= REQUESTS / 10,
            "requests lost while a member drained: {lost:?}"
        );
    }
    within("the drained feed to end", drained_seen)
        .await
        .expect("the drained feed ends");
    leaver.await.expect("leaver");
    for i in 0..20 {
        let answer = bus
            .request("bets.place.t", Bytes::from(format!("after-{i}")), WAIT)
            .await
            .expect("an answer");
        assert!(
            String::from_utf8_lossy(&answer).starts_with("staying|"),
            "a drained member got a new request"
        );
    }
    stayer.abort();
}

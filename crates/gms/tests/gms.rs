//! GMS against a real bus: every case runs on the nats adapter (real nats-server, a prefix of
//! its own) and on the local adapter (two `Gms` on one `LocalBus` where two are involved).
//! Each ends by reading the table's stream back from sequence 1 (`support::check_stream`).

mod support;

use std::time::Duration;

use bus::{Bus, Kv};
use domain::RoundEvent;
use gms::LeaseRecord;
use support::*;

/// Long enough that no lease expires during a test unless the test means it to.
const LONG_TTL: Duration = Duration::from_secs(6);

macro_rules! on_both_buses {
    ($($name:ident),* $(,)?) => {
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::nats_bus().await).await;
                }
            )*
        }
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::support::local_bus().await).await;
                }
            )*
        }
    };
}

on_both_buses!(
    rounds_progress_and_every_round_verifies,
    of_two_gms_exactly_one_leads_and_a_graceful_stop_hands_the_table_over,
    a_publish_from_a_stale_view_is_rejected_and_the_leader_rereads_the_table,
    a_leader_whose_lease_is_taken_stops_publishing_until_it_wins_it_back,
    a_round_whose_betting_window_passed_while_nobody_led_is_closed_then_resulted,
    a_closed_round_is_resulted_with_the_commitment_read_back_from_the_stream,
    a_round_committed_under_another_secret_is_voided_and_the_next_one_opens,
    two_gms_lead_two_tables_each_with_exactly_one_leader,
);

async fn rounds_progress_and_every_round_verifies<B: Bus>(bus: B) {
    let gms = spawn(&bus, config(&["roulette-1"], LONG_TTL));
    let transitions = rounds_ended_after(&bus, "roulette-1", 0, 5).await;
    gms.stop().await;
    assert_eq!(transitions[0].round, 1, "a new table starts at round 1");
    assert!(check_stream("roulette-1", 1, &transitions) >= 5);
}

async fn of_two_gms_exactly_one_leads_and_a_graceful_stop_hands_the_table_over<B: Bus>(bus: B) {
    let a = spawn(&bus, config(&["roulette-1"], LONG_TTL));
    let b = spawn(&bus, config(&["roulette-1"], LONG_TTL));
    eventually("a leader", || {
        a.leads("roulette-1") || b.leads("roulette-1")
    })
    .await;
    rounds_ended_after(&bus, "roulette-1", 0, 2).await;
    assert!(
        a.leads("roulette-1") != b.leads("roulette-1"),
        "exactly one GMS leads the table"
    );
    let (leader, standby) = if a.leads("roulette-1") {
        (a, b)
    } else {
        (b, a)
    };
    let leader_id = leader.instance.clone();
    let round_at_stop = last(&bus, "roulette-1").await.expect("a transition").round;
    leader.stop().await;

    // The lease is released at once rather than left to expire: a standby need not wait.
    let kv = bus
        .kv(protocol::subject::GMS_LEASES_BUCKET)
        .await
        .expect("leases");
    let entry = kv.get("roulette-1").await.expect("lease");
    if let Some(entry) = entry {
        let record = LeaseRecord::decode(&entry.value).expect("a lease record");
        assert_ne!(
            record.owner.as_deref(),
            Some(leader_id.as_str()),
            "the stopped leader released its lease"
        );
    }

    eventually("the standby to lead", || standby.leads("roulette-1")).await;
    let transitions = rounds_ended_after(&bus, "roulette-1", round_at_stop, 2).await;
    standby.stop().await;
    check_stream("roulette-1", 1, &transitions);
}

async fn a_publish_from_a_stale_view_is_rejected_and_the_leader_rereads_the_table<B: Bus>(bus: B) {
    let mut slow = config(&["roulette-1"], LONG_TTL);
    slow.betting = Duration::from_millis(1500);
    let gms = spawn(&bus, slow);
    let opened = read_until(&bus, "roulette-1", |seen| !seen.is_empty()).await;
    let opened = &opened[0];
    assert_eq!(opened.kind(), "round_opened");

    // Another writer advances the table behind the leader's back while its round is open.
    publish_as_other(
        &bus,
        "roulette-1",
        1,
        RoundEvent::RoundVoided {
            reason: "voided by an operator".into(),
        },
        opened.seq,
    )
    .await
    .expect("the other writer's publish");

    // The leader's betting_closed for round 1 expects round_opened as the last message: it is
    // refused; the leader reads the table again and goes on from the void.
    let transitions = rounds_ended_after(&bus, "roulette-1", 1, 1).await;
    gms.stop().await;
    assert_eq!(transitions[1].kind(), "round_voided");
    assert!(
        !transitions
            .iter()
            .any(|t| t.round == 1 && t.kind() == "betting_closed"),
        "the stale betting_closed was refused: {transitions:#?}"
    );
    assert_eq!(check_stream("roulette-1", 1, &transitions), 1);
}

async fn a_leader_whose_lease_is_taken_stops_publishing_until_it_wins_it_back<B: Bus>(bus: B) {
    let mut slow = config(&["roulette-1"], LONG_TTL);
    slow.betting = Duration::from_millis(1500);
    let gms = spawn(&bus, slow);
    let opened = read_until(&bus, "roulette-1", |seen| !seen.is_empty()).await;
    eventually("the GMS to lead", || gms.leads("roulette-1")).await;

    // A new leader takes the lease and voids the round (as a takeover with another secret
    // would); the former leader's renewal and publish both fail.
    let kv = bus
        .kv(protocol::subject::GMS_LEASES_BUCKET)
        .await
        .expect("leases");
    let theirs = LeaseRecord {
        owner: Some("another-gms".into()),
        pid: 0,
        since: now(),
        ttl_ms: 60_000,
    };
    kv.put(
        "roulette-1",
        serde_json::to_vec(&theirs).expect("json").into(),
    )
    .await
    .expect("take the lease");
    // The other leader renews its lease, so the bucket's max_age never expires it.
    let renewing = tokio_util::sync::CancellationToken::new();
    let renewer = tokio::spawn({
        let (kv, renewing, theirs) = (kv.clone(), renewing.clone(), theirs.clone());
        async move {
            while !renewing.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let value = serde_json::to_vec(&theirs).expect("json");
                let _ = kv.put("roulette-1", value.into()).await;
            }
        }
    });
    publish_as_other(
        &bus,
        "roulette-1",
        1,
        RoundEvent::RoundVoided {
            reason: "taken over".into(),
        },
        opened[0].seq,
    )
    .await
    .expect("the new leader's publish");
    eventually("the former leader to stand by", || !gms.leads("roulette-1")).await;
    // Past the close of its round: had it kept publishing, betting_closed would be there.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        last(&bus, "roulette-1").await.expect("a transition").kind(),
        "round_voided",
        "nothing published without the lease"
    );

    // The other leader shuts down and releases: the GMS takes the table back and goes on.
    renewing.cancel();
    renewer.await.expect("renewer");
    let released = LeaseRecord {
        owner: None,
        ..theirs
    };
    kv.put(
        "roulette-1",
        serde_json::to_vec(&released).expect("json").into(),
    )
    .await
    .expect("release the lease");
    let transitions = rounds_ended_after(&bus, "roulette-1", 1, 1).await;
    gms.stop().await;
    assert_eq!(check_stream("roulette-1", 1, &transitions), 1);
}

async fn a_round_whose_betting_window_passed_while_nobody_led_is_closed_then_resulted<B: Bus>(
    bus: B,
) {
    // Round 6 ended and round 7 opened under a GMS that then died; its window has passed.
    let ended = publish_as_other(
        &bus,
        "roulette-1",
        6,
        RoundEvent::RoundVoided {
            reason: "earlier".into(),
        },
        0,
    )
    .await
    .expect("publish");
    let closes_at = now()
        .checked_sub(Duration::from_secs(5))
        .expect("a past time");
    publish_as_other(
        &bus,
        "roulette-1",
        7,
        RoundEvent::RoundOpened {
            closes_at,
            seed_hash: commitment(SECRET, "roulette-1", 7),
        },
        ended.seq,
    )
    .await
    .expect("publish");

    let gms = spawn(&bus, config(&["roulette-1"], LONG_TTL));
    let transitions = rounds_ended_after(&bus, "roulette-1", 7, 1).await;
    gms.stop().await;
    let kinds: Vec<(u64, &str)> = transitions.iter().map(|t| (t.round, t.kind())).collect();
    assert_eq!(
        kinds[..4],
        [
            (6, "round_voided"),
            (7, "round_opened"),
            (7, "betting_closed"),
            (7, "outcome_declared")
        ]
    );
    assert_eq!(check_stream("roulette-1", 7, &transitions[1..]), 2);
}

async fn a_closed_round_is_resulted_with_the_commitment_read_back_from_the_stream<B: Bus>(bus: B) {
    let opened = publish_as_other(
        &bus,
        "roulette-1",
        1,
        RoundEvent::RoundOpened {
            closes_at: now(),
            seed_hash: commitment(SECRET, "roulette-1", 1),
        },
        0,
    )
    .await
    .expect("publish");
    // Other tables' transitions and results lie between the opening and the close.
    for i in 0..300 {
        bus.publish(bus::Publish::new(
            format!("table.other-{}.result", i % 7),
            bytes::Bytes::from_static(b"noise"),
        ))
        .await
        .expect("publish noise");
    }
    publish_as_other(&bus, "roulette-1", 1, RoundEvent::BettingClosed, opened.seq)
        .await
        .expect("publish");

    let gms = spawn(&bus, config(&["roulette-1"], LONG_TTL));
    let transitions = rounds_ended_after(&bus, "roulette-1", 0, 2).await;
    gms.stop().await;
    assert_eq!(transitions[2].kind(), "outcome_declared");
    assert_eq!(check_stream("roulette-1", 1, &transitions), 2);
}

async fn a_round_committed_under_another_secret_is_voided_and_the_next_one_opens<B: Bus>(bus: B) {
    let opened = publish_as_other(
        &bus,
        "roulette-1",
        1,
        RoundEvent::RoundOpened {
            closes_at: now(),
            seed_hash: commitment(OTHER_SECRET, "roulette-1", 1),
        },
        0,
    )
    .await
    .expect("publish");
    publish_as_other(&bus, "roulette-1", 1, RoundEvent::BettingClosed, opened.seq)
        .await
        .expect("publish");

    let gms = spawn(&bus, config(&["roulette-1"], LONG_TTL));
    let transitions = rounds_ended_after(&bus, "roulette-1", 0, 2).await;
    gms.stop().await;
    assert_eq!(
        transitions[2].kind(),
        "round_voided",
        "a seed that does not match the commitment is never revealed"
    );
    assert_eq!(check_stream("roulette-1", 1, &transitions), 1);
}

async fn two_gms_lead_two_tables_each_with_exactly_one_leader<B: Bus>(bus: B) {
    let tables = ["roulette-1", "vip_7"];
    let a = spawn(&bus, config(&tables, LONG_TTL));
    let b = spawn(&bus, config(&tables, LONG_TTL));
    for name in tables {
        rounds_ended_after(&bus, name, 0, 2).await;
        assert!(
            a.leads(name) != b.leads(name),
            "exactly one GMS leads {name}"
        );
    }
    a.stop().await;
    b.stop().await;
    for name in tables {
        let all = rounds_ended_after(&bus, name, 0, 2).await;
        check_stream(name, 1, &all);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gms_reconnects_after_nats_restarts_mid_round_and_the_stream_has_no_gap() {
    testkit::init_logging();
    let mut server = testkit::NatsServer::start().expect("a private NATS server");
    let bus = nats_bus_at(&server.url(), "").await;
    let mut slow = config(&["roulette-1"], LONG_TTL);
    slow.betting = Duration::from_millis(1000);
    let gms = spawn(&bus, slow);
    rounds_ended_after(&bus, "roulette-1", 0, 2).await;
    // Mid-round: wait for an opening, then take the server away for a while.
    let before = last(&bus, "roulette-1").await.expect("a transition").round;
    read_until(&bus, "roulette-1", |seen| {
        seen.last()
            .is_some_and(|t| t.round > before && t.kind() == "round_opened")
    })
    .await;
    server.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart().expect("restart NATS");

    let transitions = rounds_ended_after(&bus, "roulette-1", before + 1, 2).await;
    gms.stop().await;
    assert!(check_stream("roulette-1", 1, &transitions) >= 4);
}

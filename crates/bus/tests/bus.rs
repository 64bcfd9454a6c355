//! The bus tests: the conformance suite run against both adapters (`nats::<case>` on the
//! shared test server, each case in its own namespace, and `local::<case>` in process), plus
//! the nats-only tests of restarts, deadlines and namespacing.

mod conformance;
mod nats_only;
mod support;

/// Instantiates every conformance case for one adapter: `$adapter::<case>`.
macro_rules! conformance {
    ($adapter:ident, $make:path; $($case:ident),+ $(,)?) => {
        mod $adapter {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    crate::conformance::$case($make().await).await;
                }
            )+
        }
    };
}

macro_rules! conformance_for_both {
    ($($case:ident),+ $(,)?) => {
        conformance!(nats, crate::support::nats_bus; $($case),+);
        conformance!(local, crate::support::local_bus; $($case),+);
    };
}

conformance_for_both!(
    publish_assigns_sequences_per_stream_and_remembers_the_last_message_per_subject,
    unknown_streams_and_buckets_are_reported_as_not_found,
    publish_to_a_subject_no_stream_captures_is_refused,
    duplicate_msg_id_within_the_window_is_reported_and_stored_once,
    msg_id_is_forgotten_after_the_duplicate_window,
    publish_with_a_stale_expected_subject_sequence_is_a_conflict,
    retried_publish_with_the_same_msg_id_is_a_duplicate_not_a_conflict,
    filtered_replay_from_a_sequence_then_live_has_no_gap_or_duplicate,
    replay_keeps_order_while_messages_arrive_during_it,
    read_range_hands_over_the_range_in_order_and_ends,
    unacked_message_is_redelivered_after_ack_wait,
    durable_consumer_resumes_after_its_last_acked_message,
    queue_group_spreads_requests_and_each_reaches_one_member,
    draining_a_queue_member_loses_no_request_and_routes_new_ones_elsewhere,
    request_without_responders_fails_and_unanswered_request_times_out,
    kv_create_has_exactly_one_winner_among_racers,
    kv_compare_and_set_has_exactly_one_winner_among_racers,
    kv_lease_expires_unless_renewed,
    kv_watch_starts_with_the_current_value_then_follows_changes,
    kv_values_follow_revisions_through_put_delete_and_create,
    setup_is_idempotent_and_applies_changed_definitions,
    stream_limits_drop_the_oldest_messages_and_move_the_first_sequence,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_nats_bus_ends_its_replays_consumers_and_watches() {
    let bus = support::nats_bus().await;
    let closer = bus.clone();
    conformance::closing_the_bus_ends_its_replays_consumers_and_watches(bus, async move {
        closer.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_local_bus_ends_its_replays_consumers_and_watches() {
    let bus = support::local_bus().await;
    let closer = bus.clone();
    conformance::closing_the_bus_ends_its_replays_consumers_and_watches(bus, async move {
        closer.close().await;
    })
    .await;
}

//! Resume (`docs/contract/websocket.md`): `subscribe` with `since` (and `epoch`) replays every
//! event after it from JetStream, then live events follow with no gap and no duplicate; `recovered:
//! false` when the stream no longer holds them or the epoch differs; a late joiner without `since`
//! gets the current state and only newer events. Real NATS, GMS as a process, clients over
//! WebSocket.

mod common;

use std::time::Duration;

use common::{ENCODINGS, Stack, StackOptions, TABLE, connect, is_table_event, subscribe};
use serde_json::{Value, json};
use testkit::WsClient;

const WAIT: Duration = Duration::from_secs(30);

/// Reads table events until `stop` holds for one (included), returning `(seq, kind, round)`.
async fn events_until(
    client: &mut WsClient,
    mut stop: impl FnMut(&Value) -> bool,
) -> Vec<(u64, String, u64)> {
    let mut events = Vec::new();
    loop {
        let message = client
            .recv_until(WAIT, |m| m["type"] == "event" && m["channel"] == TABLE)
            .await
            .expect("event");
        events.push((
            message["seq"].as_u64().expect("seq"),
            message["event"]["kind"].as_str().expect("kind").to_string(),
            message["event"]["round"].as_u64().expect("round"),
        ));
        if stop(&message) {
            return events;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resuming_across_a_round_boundary_misses_nothing_and_gets_nothing_twice() {
    let stack = Stack::start(StackOptions {
        gs: false,
        gateways: 2,
        deposits: vec![],
        ..StackOptions::default()
    })
    .await;
    // A reference client that never disconnects.
    let (mut reference, _) = connect(&stack.gateways[0].ws_url(None), ENCODINGS[0]).await;
    subscribe(
        &mut reference,
        json!({"type": "subscribe", "channel": TABLE}),
    )
    .await;

    for subprotocol in ENCODINGS {
        // The resuming client sees the start of a round, then drops.
        let (mut client, _) = connect(&stack.gateways[0].ws_url(None), subprotocol).await;
        let first = subscribe(&mut client, json!({"type": "subscribe", "channel": TABLE})).await;
        let epoch = first["epoch"].as_str().expect("epoch").to_string();
        let before = events_until(&mut client, |m| is_table_event(m, "round_opened")).await;
        let (last_seen, _, dropped_in) = before.last().cloned().expect("an event");
        client.close().await;

        // Meanwhile the table moves on into the next round.
        let missed = events_until(&mut reference, |m| {
            is_table_event(m, "betting_closed") && m["event"]["round"].as_u64() > Some(dropped_in)
        })
        .await;

        // Resume on the other node.
        let (mut client, _) = connect(&stack.gateways[1].ws_url(None), subprotocol).await;
        let resumed = subscribe(
            &mut client,
            json!({"type": "subscribe", "channel": TABLE, "since": last_seen, "epoch": epoch}),
        )
        .await;
        assert_eq!(resumed["type"], "subscribed", "{resumed}");
        assert_eq!(resumed["recovered"], true, "{resumed}");
        assert_eq!(resumed["epoch"], epoch.as_str());

        // Replayed and live together equal what the reference saw after `since`, up to a live
        // event both see: the next round's opening after the one it was resumed in.
        let target = dropped_in + 2;
        let got = events_until(&mut client, |m| {
            is_table_event(m, "round_opened") && m["event"]["round"] == target
        })
        .await;
        let mut expected: Vec<_> = missed
            .iter()
            .filter(|(seq, _, _)| *seq > last_seen)
            .cloned()
            .collect();
        let reference_rest = events_until(&mut reference, |m| {
            is_table_event(m, "round_opened") && m["event"]["round"] == target
        })
        .await;
        expected.extend(reference_rest);
        assert_eq!(got, expected, "no gap and no duplicate ({subprotocol})");
        assert!(
            got.iter()
                .any(|(_, kind, round)| kind == "outcome_declared" && *round == dropped_in),
            "the resume crossed a round boundary: {got:?}"
        );
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_the_current_round_and_only_newer_events() {
    let options = StackOptions {
        gs: false,
        deposits: vec![],
        ..StackOptions::default()
    };
    let mut stack = Stack::start(options.clone()).await;
    let url = stack.gateway().ws_url(None);
    let (mut watcher, _) = connect(&url, ENCODINGS[0]).await;
    subscribe(&mut watcher, json!({"type": "subscribe", "channel": TABLE})).await;
    let mut outcomes = Vec::new();
    while outcomes.len() < 2 {
        let declared = watcher
            .recv_until(WAIT, |m| is_table_event(m, "outcome_declared"))
            .await
            .expect("outcome_declared");
        outcomes.insert(0, declared["event"]["outcome"].clone());
    }
    let opened = watcher
        .recv_until(WAIT, |m| is_table_event(m, "round_opened"))
        .await
        .expect("round_opened");
    // A node that starts now has never relayed this table: its state comes from the stream.
    stack.add_gateway(&options).await;

    for node in [0, 1] {
        for subprotocol in ENCODINGS {
            let (mut late, _) = connect(&stack.gateways[node].ws_url(None), subprotocol).await;
            let subscribed =
                subscribe(&mut late, json!({"type": "subscribe", "channel": TABLE})).await;
            let state = &subscribed["state"];
            let round = state["round"].as_u64().expect("a current round");
            assert!(round >= opened["event"]["round"].as_u64().expect("round"));
            assert!(state["phase"].is_string(), "{subscribed}");
            assert!(state["seed_hash"].is_string(), "{subscribed}");
            let recent = state["recent"].as_array().expect("recent");
            assert!(
                recent.windows(2).any(|w| w == outcomes.as_slice()),
                "the last outcomes {outcomes:?} are in state.recent: {subscribed}"
            );
            let seq = subscribed["seq"].as_u64().expect("seq");
            let next = late
                .recv_until(WAIT, |m| m["type"] == "event")
                .await
                .expect("event");
            assert!(
                next["seq"].as_u64().expect("seq") > seq,
                "only newer events"
            );
            late.close().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_from_another_epoch_or_from_events_no_longer_kept_is_not_recovered() {
    let stack = Stack::start(StackOptions {
        gs: false,
        deposits: vec![],
        ..StackOptions::default()
    })
    .await;
    let url = stack.gateway().ws_url(None);
    let (mut client, _) = connect(&url, ENCODINGS[0]).await;
    let first = subscribe(&mut client, json!({"type": "subscribe", "channel": TABLE})).await;
    let epoch = first["epoch"].as_str().expect("epoch").to_string();
    let opened = client
        .recv_until(WAIT, |m| is_table_event(m, "round_opened"))
        .await
        .expect("round_opened");
    let since = opened["seq"].as_u64().expect("seq");
    client.close().await;

    for subprotocol in ENCODINGS {
        // Another life of the stream: the client must reload.
        let (mut client, _) = connect(&url, subprotocol).await;
        let answer = subscribe(
            &mut client,
            json!({"type": "subscribe", "channel": TABLE, "since": since, "epoch": "another-life"}),
        )
        .await;
        assert_eq!(answer["type"], "subscribed", "{answer}");
        assert_eq!(answer["recovered"], false, "{answer}");
        assert_eq!(answer["epoch"], epoch.as_str());
        assert!(
            answer["state"]["round"].is_u64(),
            "state to reload from: {answer}"
        );
        client.close().await;
    }

    // The stream keeps only its last 2 messages from now on: `since` is gone.
    let mut definitions = common::croupier_definitions();
    definitions.stream_mut("TABLES").expect("TABLES").max_msgs = 2;
    bus::Bus::setup(&stack.bus, &definitions)
        .await
        .expect("limit the stream");
    let (mut watcher, _) = connect(&url, ENCODINGS[0]).await;
    subscribe(&mut watcher, json!({"type": "subscribe", "channel": TABLE})).await;
    for _ in 0..3 {
        watcher
            .recv_until(WAIT, |m| m["type"] == "event")
            .await
            .expect("event");
    }
    for subprotocol in ENCODINGS {
        let (mut client, _) = connect(&url, subprotocol).await;
        let answer = subscribe(
            &mut client,
            json!({"type": "subscribe", "channel": TABLE, "since": since, "epoch": epoch}),
        )
        .await;
        assert_eq!(answer["type"], "subscribed", "{answer}");
        assert_eq!(answer["recovered"], false, "{answer}");
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_resuming_their_channel_gets_the_wallet_events_they_missed() {
    let stack = Stack::start(StackOptions::default()).await;
    let token = stack.token("alice");
    let url = stack.gateway().ws_url(Some(&token));
    let wallet = json!({"type": "subscribe", "channel": "player.alice"});

    for subprotocol in ENCODINGS {
        // Subscribed, then gone.
        let (mut away, _) = connect(&url, subprotocol).await;
        let first = subscribe(&mut away, wallet.clone()).await;
        let (since, epoch) = (first["seq"].clone(), first["epoch"].clone());
        away.close().await;

        // Meanwhile alice bets from another connection.
        let (mut other, _) = connect(&url, ENCODINGS[0]).await;
        subscribe(&mut other, json!({"type": "subscribe", "channel": TABLE})).await;
        let round = common::next_open_round(&mut other).await;
        let bet = common::bet("meanwhile", round, 100);
        other.send_json(&bet).await.expect("bet");
        let answer = other
            .recv_until(WAIT, |m| m["request_id"] == "meanwhile")
            .await
            .expect("answer");
        assert_eq!(answer["type"], "bet_result", "{answer}");
        other.close().await;

        // Back: the missed bet_placed is replayed, with the balance it left.
        let (mut back, _) = connect(&url, subprotocol).await;
        let resumed = subscribe(
            &mut back,
            json!({"type": "subscribe", "channel": "player.alice", "since": since, "epoch": epoch}),
        )
        .await;
        assert_eq!(resumed["recovered"], true, "{resumed}");
        let placed = back
            .recv_until(WAIT, |m| {
                m["type"] == "event" && m["event"]["kind"] == "bet_placed"
            })
            .await
            .expect("the missed bet_placed");
        assert_eq!(placed["event"]["bet_id"], bet["bet_id"]);
        assert_eq!(placed["event"]["balance"], answer["balance"]);
        assert!(placed["seq"].as_u64() > since.as_u64());
        back.close().await;
    }
}

/// Player channels share one bus subscription per gateway node (ADR 0025): however many
/// players are connected, the node holds one consumer on `PLAYERS`, and each player still gets
/// exactly their own wallet events — including one credited while their subscription starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_on_one_node_share_one_subscription_and_each_gets_only_their_own_events() {
    let stack = Stack::start(StackOptions::default()).await;
    let players: Vec<String> = (0..6).map(|i| format!("mux-{i}")).collect();
    let mut clients = Vec::new();
    for (i, player) in players.iter().enumerate() {
        let url = stack.gateway().ws_url(Some(&stack.token(player)));
        let (mut client, _) = connect(&url, ENCODINGS[i % ENCODINGS.len()]).await;
        if i == players.len() - 1 {
            // The last one's deposit races its own subscribe.
            let env = stack.env.clone();
            let who = player.clone();
            let deposit = tokio::task::spawn_blocking(move || {
                env.deposit(&who, 105, &format!("mux-seed-{who}"))
            });
            let subscribed = subscribe(
                &mut client,
                json!({"type": "subscribe", "channel": format!("player.{player}")}),
            )
            .await;
            deposit.await.expect("deposit");
            clients.push((player.clone(), client, subscribed));
        } else {
            let subscribed = subscribe(
                &mut client,
                json!({"type": "subscribe", "channel": format!("player.{player}")}),
            )
            .await;
            clients.push((player.clone(), client, subscribed));
        }
    }
    for (i, player) in players.iter().enumerate().take(players.len() - 1) {
        stack
            .env
            .deposit(player, 100 + i as i64, &format!("mux-seed-{player}"));
    }

    for (i, (player, client, subscribed)) in clients.iter_mut().enumerate() {
        let amount = 100 + i as i64;
        if subscribed["state"]["balance"] == amount {
            // The racing deposit landed before the subscription: it is in the state, not
            // sent again.
            assert_eq!(i, players.len() - 1, "{subscribed}");
        } else {
            let credited = client
                .recv_until(WAIT, |m| m["type"] == "event")
                .await
                .expect("the player's own deposit");
            assert_eq!(
                credited["channel"],
                format!("player.{player}"),
                "{credited}"
            );
            assert_eq!(credited["event"]["kind"], "funds_deposited", "{credited}");
            assert_eq!(credited["event"]["player"], player.as_str(), "{credited}");
            assert_eq!(credited["event"]["balance"], amount, "{credited}");
        }
        // Nothing else: no other player's event, no second copy.
        let more = client
            .recv_until(Duration::from_millis(500), |m| m["type"] == "event")
            .await;
        assert!(more.is_err(), "{player} got more: {more:?}");
    }

    // One consumer on the node's PLAYERS stream, not one per player.
    let nats = async_nats::connect(&stack.env.nats_url)
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(nats);
    let mut stream = js
        .get_stream(format!("{}_PLAYERS", stack.env.prefix))
        .await
        .expect("PLAYERS");
    let info = stream.info().await.expect("stream info");
    assert_eq!(info.state.consumer_count, 1, "{:?}", info.state);
}

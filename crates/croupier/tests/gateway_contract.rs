//! The WebSocket protocol v1 (`docs/contract/websocket.md`) as a client sees it, in both encodings:
//! every message and every error code, driven by a WebSocket client that is not our server's code
//! (`testkit::WsClient`, tokio-tungstenite) against GMS and GS processes on real NATS JetStream and
//! Postgres, with the gateway nodes in the test process.

mod common;

use std::time::Duration;

use common::{
    ENCODINGS, Stack, StackOptions, TABLE, bet, connect, http_get, is_table_event, subscribe,
};
use serde_json::{Value, json};
use testkit::{WsClient, WsEnd};

const WAIT: Duration = Duration::from_secs(30);

async fn answer_to(client: &mut WsClient, request_id: &str) -> Value {
    client
        .recv_until(WAIT, |m| m["request_id"] == request_id)
        .await
        .unwrap_or_else(|e| panic!("no answer to {request_id}: {e:?}"))
}

async fn next_error(client: &mut WsClient) -> Value {
    client
        .recv_until(WAIT, |m| m["type"] == "error")
        .await
        .expect("error")
}

fn assert_error(message: &Value, code: &str, request_id: Option<&str>) {
    assert_eq!(message["type"], "error", "{message}");
    assert_eq!(message["code"], code, "{message}");
    assert!(message["message"].is_string(), "{message}");
    match request_id {
        Some(id) => assert_eq!(message["request_id"], id, "{message}"),
        None => assert!(message["request_id"].is_null(), "{message}"),
    }
}

async fn assert_usable(client: &mut WsClient) {
    client
        .send_json(&json!({"type": "ping"}))
        .await
        .expect("ping");
    client
        .recv_until(WAIT, |m| m["type"] == "pong")
        .await
        .expect("the connection stays usable");
}

/// Sends bytes the client cannot have meant as a message, in the connection's frame type.
async fn send_garbage(client: &mut WsClient, json_text: &str, msgpack: Vec<u8>) {
    if client.is_msgpack() {
        client.send_binary(msgpack).await.expect("send");
    } else {
        client.send_text(json_text).await.expect("send");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_and_error_code_a_player_meets_in_both_encodings() {
    let stack = Stack::start(StackOptions::default()).await;
    let node = stack.gateway();
    let alice = stack.token("alice");

    for (pass, subprotocol) in ENCODINGS.into_iter().enumerate() {
        // welcome
        let (mut client, welcome) = connect(&node.ws_url(Some(&alice)), subprotocol).await;
        assert!(welcome["session"].is_string(), "{welcome}");
        assert_eq!(welcome["player"], "alice");
        assert_eq!(welcome["betting"], "enabled");

        // ping / pong
        client
            .send_json(&json!({"type": "ping"}))
            .await
            .expect("ping");
        let pong = client.recv(WAIT).await.expect("pong");
        assert_eq!(pong, json!({"type": "pong"}));

        // BAD_MESSAGE: not an object, unknown type, missing field (request_id salvaged),
        // ill-typed field; the connection stays usable after each.
        send_garbage(&mut client, "[1,2]", vec![0x92, 0x01, 0x02]).await;
        assert_error(&next_error(&mut client).await, "BAD_MESSAGE", None);
        client
            .send_json(&json!({"type": "dance"}))
            .await
            .expect("send");
        assert_error(&next_error(&mut client).await, "BAD_MESSAGE", None);
        client
            .send_json(&json!({"type": "bet", "request_id": "bad-1", "table": "roulette-1"}))
            .await
            .expect("send");
        assert_error(&next_error(&mut client).await, "BAD_MESSAGE", Some("bad-1"));
        client
            .send_json(&json!({"type": "subscribe", "channel": 7}))
            .await
            .expect("send");
        assert_error(&next_error(&mut client).await, "BAD_MESSAGE", None);
        send_garbage(&mut client, "{not json", vec![0xc1]).await;
        assert_error(&next_error(&mut client).await, "BAD_MESSAGE", None);
        assert_usable(&mut client).await;

        // UNKNOWN_CHANNEL, FORBIDDEN
        let unknown = subscribe(
            &mut client,
            json!({"type": "subscribe", "channel": "lobby.main"}),
        )
        .await;
        assert_error(&unknown, "UNKNOWN_CHANNEL", None);
        let foreign = subscribe(
            &mut client,
            json!({"type": "subscribe", "channel": "player.bob"}),
        )
        .await;
        assert_error(&foreign, "FORBIDDEN", None);

        // subscribed (table, then the player's own channel; unknown fields are ignored)
        let table = subscribe(
            &mut client,
            json!({"type": "subscribe", "channel": TABLE, "extra": true}),
        )
        .await;
        assert_eq!(table["type"], "subscribed", "{table}");
        assert!(table["seq"].is_u64(), "{table}");
        assert!(table["epoch"].is_string(), "{table}");
        assert_eq!(table["recovered"], true);
        for field in ["round", "phase", "closes_at", "seed_hash"] {
            assert!(table["state"].get(field).is_some(), "{field}: {table}");
        }
        assert!(table["state"]["recent"].is_array(), "{table}");
        let wallet = subscribe(
            &mut client,
            json!({"type": "subscribe", "channel": "player.alice"}),
        )
        .await;
        assert_eq!(wallet["type"], "subscribed", "{wallet}");
        let balance = wallet["state"]["balance"].as_i64().expect("balance");
        assert!(balance > 0, "alice was credited: {wallet}");

        // event: a round opens, with the fields of docs/contract/events.md
        let opened = client
            .recv_until(WAIT, |m| is_table_event(m, "round_opened"))
            .await
            .expect("round_opened");
        assert!(opened["seq"].as_u64().expect("seq") > table["seq"].as_u64().expect("seq"));
        for field in ["id", "v", "at", "table", "round", "closes_at", "seed_hash"] {
            assert!(opened["event"].get(field).is_some(), "{field}: {opened}");
        }
        let round = opened["event"]["round"].as_u64().expect("round");

        // bet_result, then bet_placed on the player's channel
        let accepted = bet(&format!("ok-{pass}"), round, 100);
        client.send_json(&accepted).await.expect("bet");
        // GS answers the request and its outbox publishes `bet_placed` independently, so the
        // two may reach the client in either order: wait for both.
        let request_id = format!("ok-{pass}");
        let (mut result, mut placed) = (None, None);
        while result.is_none() || placed.is_none() {
            let message = client
                .recv_until(WAIT, |m| {
                    m["request_id"] == request_id.as_str()
                        || (m["type"] == "event"
                            && m["channel"] == "player.alice"
                            && m["event"]["kind"] == "bet_placed")
                })
                .await
                .expect("bet_result and bet_placed");
            if message["request_id"] == request_id.as_str() {
                result = Some(message);
            } else {
                placed = Some(message);
            }
        }
        let (Some(result), Some(placed)) = (result, placed) else {
            unreachable!("the loop ends with both")
        };
        assert_eq!(result["type"], "bet_result", "{result}");
        assert_eq!(result["status"], "accepted");
        assert_eq!(result["bet_id"], accepted["bet_id"]);
        assert_eq!(result["balance"].as_i64(), Some(balance - 100));
        assert_eq!(placed["event"]["bet_id"], accepted["bet_id"]);

        // BET_ID_CONFLICT: the same bet_id with other content
        let mut conflicting = accepted.clone();
        conflicting["request_id"] = json!(format!("conflict-{pass}"));
        conflicting["amount"] = json!(200);
        client.send_json(&conflicting).await.expect("bet");
        let answer = answer_to(&mut client, &format!("conflict-{pass}")).await;
        assert_error(
            &answer,
            "BET_ID_CONFLICT",
            Some(&format!("conflict-{pass}")),
        );

        // LIMIT_EXCEEDED: under the table minimum
        client
            .send_json(&bet(&format!("small-{pass}"), round, 5))
            .await
            .expect("bet");
        let answer = answer_to(&mut client, &format!("small-{pass}")).await;
        assert_error(&answer, "LIMIT_EXCEEDED", Some(&format!("small-{pass}")));

        // INSUFFICIENT_FUNDS: a stake within limits the balance cannot cover
        client
            .send_json(&bet(&format!("rich-{pass}"), round, 100_000))
            .await
            .expect("bet");
        let answer = answer_to(&mut client, &format!("rich-{pass}")).await;
        assert_error(&answer, "INSUFFICIENT_FUNDS", Some(&format!("rich-{pass}")));

        // BETTING_CLOSED: a round that is over
        client
            .send_json(&bet(
                &format!("late-{pass}"),
                round.saturating_sub(1).max(1),
                100,
            ))
            .await
            .expect("bet");
        let answer = answer_to(&mut client, &format!("late-{pass}")).await;
        if round > 1 {
            assert_error(&answer, "BETTING_CLOSED", Some(&format!("late-{pass}")));
        }

        // the bet is settled on the player's channel, the round on the table's (two channels:
        // either may reach the client first)
        let mut settled = None;
        let mut round_settled = false;
        while settled.is_none() || !round_settled {
            let message = client
                .recv_until(WAIT, |m| {
                    (m["channel"] == "player.alice"
                        && m["event"]["kind"] == "bet_settled"
                        && m["event"]["bet_id"] == accepted["bet_id"])
                        || (is_table_event(m, "round_settled") && m["event"]["round"] == round)
                })
                .await
                .expect("bet_settled and round_settled");
            if message["event"]["kind"] == "bet_settled" {
                settled = Some(message);
            } else {
                round_settled = true;
            }
        }
        let settled = settled.expect("bet_settled");
        assert!(settled["event"]["payout"].is_i64(), "{settled}");

        // status + BETTING_UNAVAILABLE: an operator switches betting off, GS says so, then on
        stack.set_betting(false, "database drill").await;
        let status = client
            .recv_until(WAIT, |m| m["type"] == "status")
            .await
            .expect("status");
        assert_eq!(
            status,
            json!({"type": "status", "betting": "disabled", "reason": "operator"})
        );
        let (mut late, late_welcome) = connect(&node.ws_url(Some(&alice)), subprotocol).await;
        assert_eq!(late_welcome["betting"], "disabled");
        late.send_json(&bet(&format!("off-{pass}"), round, 100))
            .await
            .expect("bet");
        let answer = answer_to(&mut late, &format!("off-{pass}")).await;
        assert_error(&answer, "BETTING_UNAVAILABLE", Some(&format!("off-{pass}")));
        late.close().await;
        stack.set_betting(true, "").await;
        let status = client
            .recv_until(WAIT, |m| m["type"] == "status")
            .await
            .expect("status");
        assert_eq!(status["betting"], "enabled");

        // unsubscribe: no more table events, the connection goes on
        client
            .send_json(&json!({"type": "unsubscribe", "channel": TABLE}))
            .await
            .expect("unsubscribe");
        assert_usable(&mut client).await;
        let after = client
            .recv_until(Duration::from_secs(4), |m| m["channel"] == TABLE)
            .await;
        assert_eq!(
            after,
            Err(WsEnd::TimedOut),
            "no table event after unsubscribe"
        );

        // a spectator: no player, no bets (UNAUTHORIZED), no player channels (UNAUTHORIZED)
        let (mut spectator, welcome) = connect(&node.ws_url(None), subprotocol).await;
        assert!(welcome["player"].is_null(), "{welcome}");
        spectator
            .send_json(&bet("anon", round, 100))
            .await
            .expect("bet");
        assert_error(
            &answer_to(&mut spectator, "anon").await,
            "UNAUTHORIZED",
            Some("anon"),
        );
        let private = subscribe(
            &mut spectator,
            json!({"type": "subscribe", "channel": "player.alice"}),
        )
        .await;
        assert_error(&private, "UNAUTHORIZED", None);
        spectator.close().await;
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bet_gs_does_not_answer_is_a_timeout_and_too_many_are_rate_limited() {
    let stack = Stack::start(StackOptions {
        gms: false,
        gs: false,
        bet_timeout: Duration::from_millis(700),
        deposits: vec![],
        ..StackOptions::default()
    })
    .await;
    let alice = stack.token("alice");
    let url = stack.gateway().ws_url(Some(&alice));

    // No GS at all: answered at once, never silence.
    let (mut client, _) = connect(&url, ENCODINGS[0]).await;
    client.send_json(&bet("none", 1, 100)).await.expect("bet");
    let answer = answer_to(&mut client, "none").await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert!(
        answer["code"] == "BETTING_UNAVAILABLE" || answer["code"] == "TIMEOUT",
        "{answer}"
    );
    client.close().await;

    // A GS that takes requests and never answers.
    let held = stand_in_gs(&stack.bus, None).await;
    let _alive = common::pretend_gs_alive(&stack.bus);
    common::wait_betting_enabled(&url).await;
    for subprotocol in ENCODINGS {
        let (mut client, _) = connect(&url, subprotocol).await;
        for i in 0..9 {
            client
                .send_json(&bet(&format!("slow-{i}"), 1, 100))
                .await
                .expect("bet");
        }
        // Eight wait on GS; the ninth is refused at once.
        let limited = answer_to(&mut client, "slow-8").await;
        assert_error(&limited, "RATE_LIMITED", Some("slow-8"));
        for i in 0..8 {
            let answer = answer_to(&mut client, &format!("slow-{i}")).await;
            assert_error(&answer, "TIMEOUT", Some(&format!("slow-{i}")));
        }
        assert_usable(&mut client).await;
        client.close().await;
    }
    held.abort();
}

/// Sends a bet and waits for its answer.
async fn ask(client: &mut WsClient, message: Value) -> Value {
    let request_id = message["request_id"].as_str().expect("id").to_string();
    client.send_json(&message).await.expect("bet");
    answer_to(client, &request_id).await
}

/// A bet answered `TIMEOUT` may have been recorded: until GS answers it, a retry with the same
/// `bet_id` is never told `BETTING_UNAVAILABLE` ("not recorded") by something that did not
/// look — the gateway while betting is off, "no game service", or a GS refusing it without
/// its store — while a fresh bet still is. (Seen in the chaos run: a bet recorded by GS whose
/// answer was lost with a NATS node, retried while betting was off, told it was not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bet_whose_fate_is_unknown_is_never_refused_as_not_recorded() {
    let stack = Stack::start(StackOptions {
        gms: false,
        gs: false,
        bet_timeout: Duration::from_millis(500),
        deposits: vec![],
        ..StackOptions::default()
    })
    .await;
    let alice = stack.token("alice");
    let url = stack.gateway().ws_url(Some(&alice));
    let bet_id = uuid::Uuid::new_v4().to_string();
    let same_bet = |request_id: &str| {
        let mut message = bet(request_id, 1, 100);
        message["bet_id"] = json!(bet_id);
        message
    };

    // A GS that takes the bet and never answers: TIMEOUT, the bet is in doubt.
    let held = stand_in_gs(&stack.bus, None).await;
    let _alive = common::pretend_gs_alive(&stack.bus);
    common::wait_betting_enabled(&url).await;
    let (mut client, _) = connect(&url, ENCODINGS[0]).await;
    assert_error(
        &ask(&mut client, same_bet("first")).await,
        "TIMEOUT",
        Some("first"),
    );

    // No GS any more: the retry is still in doubt, a fresh bet is not recorded.
    held.abort();
    let _ = held.await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let fresh = ask(&mut client, bet("fresh", 1, 100)).await;
        if fresh["code"] == "BETTING_UNAVAILABLE" {
            break;
        }
        // The silent GS's interest may linger on the server a moment.
        assert_error(&fresh, "TIMEOUT", Some("fresh"));
        assert!(
            tokio::time::Instant::now() < deadline,
            "no responders never seen"
        );
    }
    assert_error(
        &ask(&mut client, same_bet("again")).await,
        "TIMEOUT",
        Some("again"),
    );

    // Betting switched off: the gateway refuses fresh bets itself, but not this one. (No GS
    // here to turn the operator's key into the status: written as GS writes it.)
    stack.say_betting(false, "operator").await;
    client
        .recv_until(WAIT, |m| m["type"] == "status")
        .await
        .expect("status");
    assert_error(
        &ask(&mut client, bet("off", 1, 100)).await,
        "BETTING_UNAVAILABLE",
        Some("off"),
    );
    assert_error(
        &ask(&mut client, same_bet("off-again")).await,
        "TIMEOUT",
        Some("off-again"),
    );
    // Through the same node, on a new connection too.
    let (mut other, _) = connect(&url, ENCODINGS[1]).await;
    assert_error(
        &ask(&mut other, same_bet("elsewhere")).await,
        "TIMEOUT",
        Some("elsewhere"),
    );
    other.close().await;
    stack.say_betting(true, "").await;
    client
        .recv_until(WAIT, |m| m["type"] == "status" && m["betting"] == "enabled")
        .await
        .expect("status enabled");

    // A GS that refuses without its store ("not recorded" of this attempt only): TIMEOUT.
    let refusing = |code| Some(protocol::PlaceBetReply::rejected(code, "store unavailable"));
    let answering = stand_in_gs(
        &stack.bus,
        refusing(protocol::ErrorCode::BettingUnavailable),
    )
    .await;
    assert_error(
        &ask(&mut client, same_bet("refused")).await,
        "TIMEOUT",
        Some("refused"),
    );
    assert_error(
        &ask(&mut client, bet("refused-fresh", 1, 100)).await,
        "BETTING_UNAVAILABLE",
        Some("refused-fresh"),
    );
    answering.abort();
    let _ = answering.await;

    // GS answers definitely (here: closed): that answer is the bet's, and the doubt ends.
    let answering = stand_in_gs(&stack.bus, refusing(protocol::ErrorCode::BettingClosed)).await;
    assert_error(
        &ask(&mut client, same_bet("definite")).await,
        "BETTING_CLOSED",
        Some("definite"),
    );
    answering.abort();
    let _ = answering.await;
    // The stand-in's interest may linger on the server a moment after it is gone. A request
    // the server still routes to it gets no answer, and a bet that times out is rightly in
    // doubt again; so fresh bets go first, until one finds no GS at all.
    let deadline = tokio::time::Instant::now() + WAIT;
    for probe in 0.. {
        let fresh = ask(&mut client, bet(&format!("gone-{probe}"), 1, 100)).await;
        if fresh["code"] == "BETTING_UNAVAILABLE" {
            break;
        }
        assert!(
            fresh["code"] == "BETTING_CLOSED" || fresh["code"] == "TIMEOUT",
            "{fresh}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stand-in never went: {fresh}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // With no GS again, the same bet is now refused like a fresh one: the doubt ended.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let after = ask(&mut client, same_bet("after")).await;
        if after["code"] == "BETTING_UNAVAILABLE" {
            break;
        }
        // A doubt that never ended answers TIMEOUT until the deadline.
        assert!(after["code"] == "TIMEOUT", "{after}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the doubt never ended: {after}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.close().await;
}

/// Stands in for GS on `bets.place.*`: answers every bet with `reply`, or holds it unanswered
/// when `None`. Aborting the task leaves the queue group.
async fn stand_in_gs(
    bus: &bus::NatsBus,
    reply: Option<protocol::PlaceBetReply>,
) -> tokio::task::JoinHandle<()> {
    use futures_util::StreamExt;
    let mut requests = bus::Bus::serve(bus, "bets.place.*", "gs")
        .await
        .expect("serve");
    let reply = reply.map(|r| protocol::Encoding::MsgPack.encode(&r).expect("encode"));
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(request) = requests.next().await {
            match &reply {
                Some(bytes) => {
                    let _ = request.respond(bytes.clone()).await;
                }
                None => held.push(request),
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_on_two_gateway_nodes_see_the_same_events_in_the_same_order() {
    let stack = Stack::start(StackOptions {
        gs: false,
        gateways: 2,
        deposits: vec![],
        ..StackOptions::default()
    })
    .await;
    let (mut first, _) = connect(&stack.gateways[0].ws_url(None), ENCODINGS[0]).await;
    let (mut second, _) = connect(&stack.gateways[1].ws_url(None), ENCODINGS[1]).await;
    for client in [&mut first, &mut second] {
        let subscribed = subscribe(client, json!({"type": "subscribe", "channel": TABLE})).await;
        assert_eq!(subscribed["type"], "subscribed");
    }
    // Two whole rounds on each.
    let mut seen = [Vec::new(), Vec::new()];
    for (i, client) in [&mut first, &mut second].into_iter().enumerate() {
        let mut opened = 0;
        while opened < 3 {
            let message = client
                .recv_until(WAIT, |m| m["type"] == "event")
                .await
                .expect("event");
            if message["event"]["kind"] == "round_opened" {
                opened += 1;
            }
            seen[i].push((
                message["seq"].as_u64().expect("seq"),
                message["event"].clone(),
            ));
        }
    }
    let start = seen[0][0].0.max(seen[1][0].0);
    let end = seen[0]
        .last()
        .expect("events")
        .0
        .min(seen[1].last().expect("events").0);
    let window = |events: &[(u64, Value)]| -> Vec<(u64, Value)> {
        events
            .iter()
            .filter(|(seq, _)| (start..=end).contains(seq))
            .cloned()
            .collect()
    };
    let (a, b) = (window(&seen[0]), window(&seen[1]));
    assert!(a.len() >= 4, "two rounds of events: {a:?}");
    assert_eq!(a, b, "the same events in the same order on both nodes");
    assert!(a.windows(2).all(|w| w[0].0 < w[1].0), "seq increases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_garbage_tokens_are_refused_at_the_upgrade() {
    let stack = Stack::start(StackOptions {
        gms: false,
        gs: false,
        deposits: vec![],
        ..StackOptions::default()
    })
    .await;
    let node = stack.gateway();
    let alice = domain::PlayerId::parse("alice").expect("id");
    let forged = gateway::auth::mint(
        &gateway::JwtSecret::new("another-secret-of-at-least-32-bytes!").expect("secret"),
        &alice,
        Duration::from_secs(600),
        gateway::auth::now_unix(),
    );
    let expired = gateway::auth::mint(
        &gateway::JwtSecret::new(common::SECRET).expect("secret"),
        &alice,
        Duration::from_secs(60),
        gateway::auth::now_unix() - 3600,
    );
    let unsigned =
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
    for token in [forged.as_str(), expired.as_str(), unsigned, "garbage"] {
        for subprotocol in ENCODINGS {
            match WsClient::try_connect(&node.ws_url(Some(token)), Some(subprotocol)).await {
                Err(testkit::ws::ConnectRefused::Http(401, body)) => {
                    assert!(body.contains("token"), "{body}")
                }
                other => panic!("token {token:?} was not refused with 401: {other:?}"),
            }
        }
    }
    // The genuine one is accepted.
    let (client, welcome) = connect(&node.ws_url(Some(&stack.token("alice"))), ENCODINGS[1]).await;
    assert_eq!(welcome["player"], "alice");
    client.close().await;

    // A token that expires while connected: its bets are refused from then on.
    let short = gateway::auth::mint(
        &gateway::JwtSecret::new(common::SECRET).expect("secret"),
        &alice,
        Duration::from_secs(1),
        gateway::auth::now_unix(),
    );
    let (mut client, _) = connect(&node.ws_url(Some(&short)), ENCODINGS[0]).await;
    // Past `exp` and the 5 s leeway the upgrade also grants.
    tokio::time::sleep(Duration::from_secs(8)).await;
    client
        .send_json(&common::bet("stale", 1, 100))
        .await
        .expect("bet");
    assert_error(
        &answer_to(&mut client, "stale").await,
        "UNAUTHORIZED",
        Some("stale"),
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_fragmented_frames_are_capped_at_64_kib_in_both_encodings() {
    let stack = Stack::start(StackOptions {
        gms: false,
        gs: false,
        deposits: vec![],
        ..StackOptions::default()
    })
    .await;
    let url = stack.gateway().ws_url(None);
    const KIB: usize = 1024;
    for subprotocol in ENCODINGS {
        let opcode = if subprotocol.ends_with("msgpack") {
            2
        } else {
            1
        };
        let ping: Vec<u8> = if opcode == 2 {
            vec![
                0x81, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'i', b'n', b'g',
            ]
        } else {
            br#"{"type":"ping"}"#.to_vec()
        };

        // A WebSocket ping is answered with a pong echoing it.
        let (mut client, _) = connect(&url, subprotocol).await;
        assert!(client.ping_pong(b"are you there", WAIT).await, "auto-pong");
        client.close().await;

        // A message in three fragments is reassembled and answered.
        let (mut client, _) = connect(&url, subprotocol).await;
        let (a, rest) = ping.split_at(3);
        let (b, c) = rest.split_at(3);
        client
            .send_frame(opcode, a.to_vec(), false)
            .await
            .expect("frame");
        client
            .send_frame(0, b.to_vec(), false)
            .await
            .expect("frame");
        client.send_frame(0, c.to_vec(), true).await.expect("frame");
        let pong = client.recv(WAIT).await.expect("pong");
        assert_eq!(pong["type"], "pong");

        // One frame over 64 KiB: closed with 1009.
        client
            .send_frame(opcode, vec![b' '; 64 * KIB + 1], true)
            .await
            .expect("frame");
        assert_eq!(client.recv_close(WAIT).await, Ok(Some(1009)));

        // Fragments each under the cap, together over it: closed with 1009.
        let (mut client, _) = connect(&url, subprotocol).await;
        client
            .send_frame(opcode, vec![b' '; 30 * KIB], false)
            .await
            .expect("frame");
        client
            .send_frame(0, vec![b' '; 30 * KIB], false)
            .await
            .expect("frame");
        let _ = client.send_frame(0, vec![b' '; 30 * KIB], true).await;
        assert_eq!(client.recv_close(WAIT).await, Ok(Some(1009)));

        // Exactly at the cap is a (malformed) message, answered, not a close.
        let (mut client, _) = connect(&url, subprotocol).await;
        client
            .send_frame(opcode, vec![b' '; 64 * KIB], true)
            .await
            .expect("frame");
        assert_error(&next_error(&mut client).await, "BAD_MESSAGE", None);
        assert_usable(&mut client).await;
        client.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_pings_is_dropped_and_a_live_one_is_kept() {
    let stack = Stack::start(StackOptions {
        gms: false,
        gs: false,
        deposits: vec![],
        idle_timeout: Duration::from_millis(300),
        ..StackOptions::default()
    })
    .await;
    let url = stack.gateway().ws_url(None);
    let (mut dead, _) = connect(&url, ENCODINGS[0]).await;
    let (mut live, _) = connect(&url, ENCODINGS[1]).await;
    // The live client keeps reading (tungstenite answers each ping as it reads); the dead one
    // reads nothing, so it answers nothing, for many idle periods.
    // (`recv` skips pings with a fresh timeout each, so bound the whole read from outside.)
    let reading = tokio::time::timeout(Duration::from_secs(3), live.recv(WAIT)).await;
    assert!(
        reading.is_err(),
        "the live client is not closed: {reading:?}"
    );
    assert_usable(&mut live).await;
    assert_eq!(dead.recv_close(WAIT).await, Ok(Some(1001)));
    live.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_client_with_1001_and_stops_accepting() {
    let stack = Stack::start(StackOptions {
        gms: false,
        gs: false,
        deposits: vec![],
        ..StackOptions::default()
    })
    .await;
    let node = stack.gateway();
    let (mut json_client, _) = connect(&node.ws_url(None), ENCODINGS[0]).await;
    let (mut msgpack_client, _) = connect(&node.ws_url(None), ENCODINGS[1]).await;
    node.shutdown.cancel();
    assert_eq!(json_client.recv_close(WAIT).await, Ok(Some(1001)));
    assert_eq!(msgpack_client.recv_close(WAIT).await, Ok(Some(1001)));
    let stack_gateways = stack.gateways;
    for node in stack_gateways {
        let url = node.ws_url(None);
        tokio::time::timeout(WAIT, node.done)
            .await
            .expect("the gateway drains within its deadline")
            .expect("gateway task");
        assert!(
            WsClient::connect(&url, None).await.is_err(),
            "no longer accepting"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_and_dev_tokens_only_when_enabled() {
    let options = StackOptions {
        gms: false,
        gs: false,
        deposits: vec![],
        ..StackOptions::default()
    };
    let mut stack = Stack::start(options.clone()).await;
    stack
        .add_gateway(&StackOptions {
            dev_tokens: true,
            ..options
        })
        .await;
    let (plain, dev) = (&stack.gateways[0].addr, &stack.gateways[1].addr);
    assert_eq!(http_get(plain, "/healthz").await.0, 200);
    assert_eq!(http_get(plain, "/readyz").await.0, 200);
    assert_eq!(http_get(plain, "/metrics").await.0, 200);
    let (status, page) = http_get(plain, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "the demo page");
    assert_eq!(http_get(plain, "/nowhere").await.0, 404);
    assert_eq!(
        http_get(plain, "/dev/token?player=alice").await.0,
        404,
        "dev tokens are off by default"
    );
    assert_eq!(http_get(dev, "/dev/token").await.0, 400);
    assert_eq!(http_get(dev, "/dev/token?player=no.dots").await.0, 400);
    let (status, token) = http_get(dev, "/dev/token?player=carol").await;
    assert_eq!(status, 200);
    let (client, welcome) = connect(
        &format!("ws://{plain}/ws?token={}", token.trim()),
        ENCODINGS[0],
    )
    .await;
    assert_eq!(welcome["player"], "carol", "a dev token is a real token");
    client.close().await;
    // Without any subprotocol: JSON, and none echoed.
    let mut bare = WsClient::connect(&format!("ws://{plain}/ws"), None)
        .await
        .expect("connect");
    assert_eq!(bare.subprotocol, None);
    assert_eq!(bare.recv(WAIT).await.expect("welcome")["type"], "welcome");
    bare.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_and_new_channels_are_overloaded_while_the_bus_is_down() {
    testkit::init_logging();
    let mut nats = testkit::NatsServer::start().expect("private nats");
    let prefix = testkit::unique_prefix();
    let options = bus::NatsOptions {
        request_timeout: Duration::from_secs(1),
        ..bus::NatsOptions::default()
    };
    let bus = bus::NatsBus::connect(&nats.url(), &prefix, options)
        .await
        .expect("connect");
    bus::Bus::setup(&bus, &common::croupier_definitions())
        .await
        .expect("setup");
    let node = common::GatewayNode::start(bus, |_| {}).await;
    let addr = node.addr.clone();
    let (mut client, _) = connect(&format!("ws://{addr}/ws"), ENCODINGS[0]).await;

    nats.stop();
    let deadline = tokio::time::Instant::now() + WAIT;
    while http_get(&addr, "/readyz").await.0 != 503 {
        assert!(tokio::time::Instant::now() < deadline, "/readyz stays 200");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = subscribe(&mut client, json!({"type": "subscribe", "channel": TABLE})).await;
    assert_error(&answer, "OVERLOADED", None);
    assert_usable(&mut client).await;
    client.close().await;
    node.stop().await;
}

//! Back-pressure and throttling of the gateway (issue 9, ADR 0012), as clients see them: a
//! reader that cannot keep up is cut off (4008) while a fast one on the same channel gets every
//! event; the connection limit and the handshake rate refuse upgrades with HTTP 503; a client
//! sending too fast gets `RATE_LIMITED` and keeps its connection. One gateway node in the test
//! process on real NATS JetStream, with small limits.

mod common;

use std::time::Duration;

use common::{lone_gateway, publish_round_opened};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use testkit::WsClient;
use testkit::ws::ConnectRefused;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(30);

/// Events published in the slow-reader test: far more bytes than the slow reader's socket
/// buffers (a few KiB on each side) and than its outbound bound hold.
const EVENTS: u64 = 600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_cannot_keep_up_is_cut_off_while_a_fast_one_gets_every_event() {
    testkit::init_logging();
    let nats = testkit::nats().expect("nats");
    let (node, bus) = lone_gateway(&nats, |config| {
        config.limits.outbound_max_messages = 64;
        config.limits.outbound_max_bytes = 32 * 1024;
        config.limits.write_timeout = Duration::from_millis(500);
        config.limits.send_buffer = Some(4096);
    })
    .await;
    let table = "slowpoke";
    let channel = format!("table.{table}");

    // The slow reader: a tiny receive buffer, and it stops reading once subscribed.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(2048).expect("SO_RCVBUF");
    let stream = socket
        .connect(node.addr.parse().expect("addr"))
        .await
        .expect("connect");
    let (mut slow, _) = tokio_tungstenite::client_async(node.ws_url(None), stream)
        .await
        .expect("handshake");
    slow.send(Message::text(
        json!({"type": "subscribe", "channel": channel}).to_string(),
    ))
    .await
    .expect("subscribe");
    loop {
        let message = tokio::time::timeout(WAIT, slow.next())
            .await
            .expect("subscribed in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(text) = message
            && text.contains("\"subscribed\"")
        {
            break;
        }
    }

    // The fast reader on the same channel, reading in its own task.
    let mut fast = WsClient::connect(&node.ws_url(None), Some("croupier.v1.json"))
        .await
        .expect("connect");
    let subscribed = fast
        .send_json(&json!({"type": "subscribe", "channel": channel}))
        .await;
    subscribed.expect("subscribe");
    fast.recv_until(WAIT, |m| m["type"] == "subscribed")
        .await
        .expect("subscribed");
    let fast_reader = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while (seqs.len() as u64) < EVENTS {
            let event = fast
                .recv_until(WAIT, |m| m["type"] == "event")
                .await
                .unwrap_or_else(|e| panic!("the fast reader stopped after {}: {e:?}", seqs.len()));
            seqs.push(event["seq"].as_u64().expect("seq"));
        }
        (fast, seqs)
    });

    let mut published = Vec::new();
    for round in 1..=EVENTS {
        published.push(publish_round_opened(&bus, table, round).await);
    }
    let (mut fast, seqs) = fast_reader.await.expect("fast reader");
    assert_eq!(
        seqs, published,
        "the fast reader gets every event, in order, none twice"
    );
    fast.send_json(&json!({"type": "ping"}))
        .await
        .expect("ping");
    fast.recv_until(WAIT, |m| m["type"] == "pong")
        .await
        .expect("the fast reader's connection is untouched");

    // Now the slow reader reads: what was in flight, then the end of its connection.
    let mut received = 0u64;
    let end = loop {
        match tokio::time::timeout(WAIT, slow.next()).await {
            Err(_) => panic!("the slow reader is still connected after {received} events"),
            Ok(Some(Ok(Message::Text(_)))) => received += 1,
            Ok(Some(Ok(Message::Close(frame)))) => {
                break format!("close {:?}", frame.map(|f| u16::from(f.code)));
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(error))) => break format!("error {error}"),
            Ok(None) => break "end of stream".to_string(),
        }
    };
    assert!(
        end == "close Some(4008)" || !end.starts_with("close"),
        "the slow reader is closed with 4008 or its connection dropped, not {end}"
    );
    assert!(
        received < EVENTS,
        "the slow reader was cut off, not served all {EVENTS} events ({received}, then {end})"
    );
    node.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_beyond_the_connection_limit_get_503_until_a_slot_frees() {
    testkit::init_logging();
    let nats = testkit::nats().expect("nats");
    let (node, _bus) = lone_gateway(&nats, |config| config.limits.max_connections = 2).await;
    let url = node.ws_url(None);
    let first = WsClient::connect(&url, None).await.expect("first");
    let _second = WsClient::connect(&url, None).await.expect("second");
    match WsClient::try_connect(&url, None).await {
        Err(ConnectRefused::Http(503, body)) => {
            assert!(body.contains("connection limit"), "{body}");
        }
        other => panic!("a third connection is refused with 503, got {other:?}"),
    }
    first.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match WsClient::try_connect(&url, None).await {
            Ok(_) => break,
            Err(ConnectRefused::Http(503, _)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("the freed slot is never reused: {other:?}"),
        }
    }
    node.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_beyond_the_rate_get_503() {
    testkit::init_logging();
    let nats = testkit::nats().expect("nats");
    let (node, _bus) = lone_gateway(&nats, |config| {
        config.limits.handshakes_per_s = 1;
        config.limits.handshake_burst = 3;
    })
    .await;
    let url = node.ws_url(None);
    let mut clients = Vec::new();
    let mut refused = None;
    // The burst of 3 passes; at one more a second, one of the next few is refused.
    for attempt in 0..8 {
        match WsClient::try_connect(&url, None).await {
            Ok(client) => clients.push(client),
            Err(ConnectRefused::Http(503, body)) => {
                refused = Some((attempt, body));
                break;
            }
            Err(other) => panic!("unexpected refusal: {other:?}"),
        }
    }
    let (attempt, body) = refused.expect("a handshake beyond the rate is refused");
    assert!(
        attempt >= 3,
        "the burst of 3 is allowed (refused at {attempt})"
    );
    assert!(body.contains("too many handshakes"), "{body}");
    node.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_too_fast_is_rate_limited_and_keeps_its_connection() {
    testkit::init_logging();
    let nats = testkit::nats().expect("nats");
    let (node, _bus) = lone_gateway(&nats, |config| {
        config.limits.client_msgs_per_s = 1;
        config.limits.client_burst = 5;
    })
    .await;
    let mut client = WsClient::connect(&node.ws_url(None), Some("croupier.v1.json"))
        .await
        .expect("connect");
    client.recv(WAIT).await.expect("welcome");
    // Ten pings and a bet at once: the burst is served, the rest refused one by one.
    for _ in 0..10 {
        client
            .send_json(&json!({"type": "ping"}))
            .await
            .expect("ping");
    }
    let bet = json!({
        "type": "bet", "request_id": "fast-bet", "bet_id": uuid::Uuid::new_v4().to_string(),
        "table": "roulette-1", "round": 1, "selection": {"kind": "red"}, "amount": 100
    });
    client.send_json(&bet).await.expect("bet");
    let mut answers: Vec<Value> = Vec::new();
    for _ in 0..11 {
        answers.push(client.recv(WAIT).await.expect("every message is answered"));
    }
    let pongs = answers.iter().filter(|m| m["type"] == "pong").count();
    let limited = answers
        .iter()
        .filter(|m| m["type"] == "error" && m["code"] == "RATE_LIMITED")
        .count();
    assert_eq!(pongs + limited, 11, "{answers:?}");
    assert!(pongs >= 5, "the burst of 5 is served: {answers:?}");
    assert!(
        limited >= 4,
        "messages beyond the burst are limited: {answers:?}"
    );
    let bet_answer = answers.last().expect("answers");
    assert_eq!(bet_answer["request_id"], "fast-bet", "{bet_answer}");
    assert_eq!(bet_answer["code"], "RATE_LIMITED", "{bet_answer}");

    // The connection stays: once the bucket refills, messages are served again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        client
            .send_json(&json!({"type": "ping"}))
            .await
            .expect("ping");
        match client.recv(WAIT).await {
            Ok(m) if m["type"] == "pong" => break,
            Ok(m) if m["code"] == "RATE_LIMITED" && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => panic!("the connection is kept and serves again: {other:?}"),
        }
    }
    node.shutdown.cancel();
}

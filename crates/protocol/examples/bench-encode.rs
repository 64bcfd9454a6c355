//! `just bench-encode`: how long encoding events takes, the MessagePack form every service
//! writes to the bus and the store, and decoding them again as every service reads them. Not a
//! test: it prints figures.
//!
//! 10k `bet_placed` events (one batch of GS's), built, encoded and decoded nine times; prints
//! the median of each part. Beside the decode (`protocol::decode_event`: strict, through a
//! borrowed buffer, then typed; ADR 0031), the same bytes walked by rmp-serde with nothing kept
//! (`IgnoredAny`): the least a MessagePack reader of them costs, so the decode's overhead shows.
//! Then the two other messages every bet is read as: the client's `bet` (JSON, read by the
//! gateway) and the `PlaceBetRequest` it forwards (MessagePack, read by GS).

use std::time::{Duration, Instant};

use domain::{BetId, Money, PlayerId, RawSelection, RoundId, Selection, TableId, Timestamp};
use protocol::{BetPlaced, ClientMessage, Encoding, Event, EventBody, PlaceBet, PlaceBetRequest};
use uuid::Uuid;

const EVENTS: usize = 10_000;
const ROUNDS: usize = 9;

fn median(mut spent: Vec<Duration>) -> Duration {
    spent.sort();
    spent[spent.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let now = Timestamp::from_unix_micros(1_795_645_020_123_456)?;
    let table = TableId::parse("bench")?;
    let players = (0..2_000)
        .map(|i| PlayerId::parse(&format!("bench-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let selection = Selection::parse(RawSelection::Straight { numbers: vec![17] })?;
    let (round, amount, balance) = (RoundId::new(1)?, Money::stake(10)?, Money::new(1_000)?);

    let (mut built, mut encoded, mut bytes) = (Vec::new(), Vec::new(), 0);
    let (mut decoded, mut walked) = (Vec::new(), Vec::new());
    let (mut bets_read, mut requests_read) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let events: Vec<Event> = (0..EVENTS)
            .map(|i| {
                Event::new(
                    Uuid::from_u128(i as u128),
                    now,
                    EventBody::BetPlaced(BetPlaced {
                        table: table.clone(),
                        round,
                        bet_id: BetId::from_uuid(Uuid::from_u128((EVENTS + i) as u128)),
                        player: players[i % players.len()].clone(),
                        selection,
                        amount,
                        balance,
                    }),
                )
            })
            .collect();
        built.push(started.elapsed());
        let started = Instant::now();
        // Kept for the decode (the vector sized first, so only the encoding is timed).
        let mut payloads = Vec::with_capacity(EVENTS);
        for event in &events {
            payloads.push(protocol::encode_event(event)?);
        }
        encoded.push(started.elapsed());
        bytes = payloads.iter().map(|p| p.len()).sum();
        let started = Instant::now();
        for payload in &payloads {
            std::hint::black_box(protocol::decode_event(payload)?);
        }
        decoded.push(started.elapsed());
        let started = Instant::now();
        for payload in &payloads {
            std::hint::black_box(rmp_serde::from_slice::<serde::de::IgnoredAny>(payload)?);
        }
        walked.push(started.elapsed());

        // The same bets as a client sends them (JSON) and as the gateway forwards them.
        let (mut frames, mut requests) = (Vec::with_capacity(EVENTS), Vec::with_capacity(EVENTS));
        for event in &events {
            let EventBody::BetPlaced(bet) = &event.body else {
                unreachable!("built as bet_placed above");
            };
            let place = PlaceBet {
                request_id: format!("r-{}", bet.bet_id),
                bet_id: bet.bet_id,
                table: bet.table.clone(),
                round: bet.round,
                selection: bet.selection,
                amount: bet.amount,
            };
            frames.push(Encoding::Json.encode(&ClientMessage::Bet(place.clone()))?);
            requests.push(Encoding::MsgPack.encode(&place.into_request(bet.player.clone()))?);
        }
        let started = Instant::now();
        for frame in &frames {
            std::hint::black_box(Encoding::Json.decode::<ClientMessage>(frame)?);
        }
        bets_read.push(started.elapsed());
        let started = Instant::now();
        for request in &requests {
            std::hint::black_box(Encoding::MsgPack.decode::<PlaceBetRequest>(request)?);
        }
        requests_read.push(started.elapsed());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "bench-encode: {EVENTS} bet_placed events, median of {ROUNDS}: built in {:.2} ms, \
         encoded (MessagePack, {bytes} bytes) in {:.2} ms, {:.0} ns per event",
        ms(median(built)),
        ms(median(encoded.clone())),
        median(encoded).as_nanos() as f64 / EVENTS as f64
    );
    let (decoded, walked) = (median(decoded), median(walked));
    println!(
        "bench-encode: decoded (protocol::decode_event, strict) in {:.2} ms, {:.0} ns per event; \
         walked with nothing kept (rmp-serde, IgnoredAny) in {:.2} ms, {:.0} ns per event; \
         decode / walk = {:.1}",
        ms(decoded),
        decoded.as_nanos() as f64 / EVENTS as f64,
        ms(walked),
        walked.as_nanos() as f64 / EVENTS as f64,
        decoded.as_secs_f64() / walked.as_secs_f64()
    );
    let per_event = |d: Duration| d.as_nanos() as f64 / EVENTS as f64;
    println!(
        "bench-encode: a client's bet (JSON, ClientMessage) read in {:.0} ns; \
         the gateway's PlaceBetRequest (MessagePack) read in {:.0} ns",
        per_event(median(bets_read)),
        per_event(median(requests_read))
    );
    Ok(())
}

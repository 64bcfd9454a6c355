//! `just bench-encode`: how long encoding events takes, the MessagePack form every service
//! writes to the bus and the store. Not a test: it prints figures.
//!
//! 10k `bet_placed` events (one batch of GS's), built and encoded nine times; prints the
//! median of each part.

use std::time::{Duration, Instant};

use domain::{BetId, Money, PlayerId, RawSelection, RoundId, Selection, TableId, Timestamp};
use protocol::{BetPlaced, Event, EventBody};
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
        bytes = 0;
        for event in &events {
            bytes += protocol::encode_event(event)?.len();
        }
        encoded.push(started.elapsed());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "bench-encode: {EVENTS} bet_placed events, median of {ROUNDS}: built in {:.2} ms, \
         encoded (MessagePack, {bytes} bytes) in {:.2} ms, {:.0} ns per event",
        ms(median(built)),
        ms(median(encoded.clone())),
        median(encoded).as_nanos() as f64 / EVENTS as f64
    );
    Ok(())
}

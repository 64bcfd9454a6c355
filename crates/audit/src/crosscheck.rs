//! The two logs agree event by event: every round transition GMS published on `TABLES` has its
//! Postgres row with the same event id and the same content, every event GS published (on
//! `PLAYERS` and `table.<t>.result`) has its row with the same `event_id` and identical payload
//! bytes, and every Postgres event of a published kind is found on the bus. An operator's
//! `betting_switched` is recorded in Postgres only (ADR 0022): never expected on the bus, and a
//! violation if found there.
//!
//! Both logs are read in their own order (positions; stream sequences) and merged by the
//! events' own `at`, so an event waits for its counterpart only as long as the two orders
//! disagree (an outbox that lagged, a transition recorded late): memory holds what is in
//! flight between the logs, not the whole history. What is left unmatched at the end is
//! judged against where each writer stood when the snapshot was taken: a GS event after the
//! outbox's cursor may not be published yet, a transition after GS's cursor may not be
//! recorded yet, and an event recorded after the snapshot is looked up by id.

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use bus::{Bus, BusError, StoredMessage};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::report::{Check, Violation};
use crate::wire::{self, Event, Kind, Time};

/// The streams the bus keeps events in, with the filter that reads all of each.
pub const STREAMS: [(&str, &str); 2] = [("TABLES", "table.>"), ("PLAYERS", "player.>")];

/// Batches in flight per stream between its reading task and the merge.
pub const BUS_BATCHES_IN_FLIGHT: usize = 4;

/// What the merge needs of a bus message's event, decoded on its reading task.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub id: Uuid,
    pub at: Time,
    pub kind: Kind,
    /// The message's subject is the one its event is published on.
    pub subject_holds: bool,
}

/// One message of a stream, decoded on its reading task.
#[derive(Debug)]
pub struct BusMessage {
    pub stream: &'static str,
    pub seq: u64,
    pub subject: String,
    pub payload: Bytes,
    pub event: Result<Summary, String>,
}

impl BusMessage {
    pub fn at(&self) -> Option<Time> {
        self.event.as_ref().ok().map(|e| e.at)
    }

    fn place(&self) -> String {
        format!("{} seq {} ({})", self.stream, self.seq, self.subject)
    }
}

/// Where a stream stood when the audit began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct StreamReport {
    pub name: String,
    pub first_seq: u64,
    pub last_seq: u64,
    /// The stream drops old messages by its own limits; then the logs are compared from
    /// `first_seq` on.
    pub retention_limited: bool,
    /// Messages read.
    pub messages: u64,
}

/// What the comparison of the two logs found, beside its violations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct BusReport {
    pub streams: Vec<StreamReport>,
    /// Events found in both logs, agreeing.
    pub matched: u64,
    /// GS events after the outbox's cursor, not on the bus yet: not a violation.
    pub awaiting_publication: u64,
    /// The outbox's cursor (the last position it published) in the snapshot.
    pub outbox_position: i64,
    /// Transitions on the bus after every GS's cursor, not recorded yet: not a violation.
    pub not_yet_recorded: u64,
    /// Bus messages whose events were recorded after the snapshot (or before the checkpoint
    /// the replay began at).
    pub outside_snapshot: u64,
    /// Postgres events older than what a retention-limited stream still holds.
    pub before_retention: u64,
}

/// Reads `stream` from `first` to `last` (inclusive) in batches, glancing at each message's
/// event (its id, time and kind: what the merge needs).
pub async fn read_stream<B: Bus>(
    bus: B,
    stream: &'static str,
    filter: &'static str,
    first: u64,
    last: u64,
    out: mpsc::Sender<Vec<BusMessage>>,
) -> Result<(), BusError> {
    if last == 0 || first > last {
        return Ok(());
    }
    let mut batches = bus.read_range(stream, filter, first, last).await?;
    let mut read_to = first.saturating_sub(1);
    while let Some(batch) = batches.next().await {
        let batch: Vec<BusMessage> = batch?
            .into_iter()
            .map(|message| {
                let StoredMessage {
                    subject,
                    seq,
                    payload,
                    ..
                } = message;
                let event = wire::glance(&payload).map(|e| Summary {
                    id: e.id,
                    at: e.at,
                    kind: e.kind,
                    subject_holds: e.published_on(&subject),
                });
                BusMessage {
                    stream,
                    seq,
                    subject,
                    payload,
                    event,
                }
            })
            .collect();
        read_to = batch.last().map_or(read_to, |m| m.seq);
        if out.send(batch).await.is_err() {
            return Ok(());
        }
    }
    if read_to < last {
        return Err(BusError::Other(format!(
            "the {stream} stream ended at sequence {read_to}, before {last}"
        )));
    }
    Ok(())
}

/// A Postgres event waiting for its bus message. What a violation names about it is decoded
/// again from `data` only when there is one.
#[derive(Debug)]
struct Recorded {
    position: i64,
    kind: Kind,
    data: Bytes,
    at: Time,
    on_players: bool,
    /// Of the round a recall follows: its place on the bus is kept.
    tracked: bool,
}

impl Recorded {
    fn names(&self) -> Names {
        wire::decode(&self.data)
            .map(|e| Names::of(&e))
            .unwrap_or_default()
    }

    /// The subject it is published on (`docs/contract/bus.md`).
    fn subject(&self) -> String {
        wire::decode(&self.data)
            .map(|e| e.subject())
            .unwrap_or_default()
    }

    fn stream(&self) -> &'static str {
        if self.on_players { "PLAYERS" } else { "TABLES" }
    }
}

/// A bus message waiting for its Postgres event.
#[derive(Debug)]
struct Published {
    message: BusMessage,
    kind: Kind,
}

impl Published {
    fn names(&self) -> Names {
        wire::decode(&self.message.payload)
            .map(|e| Names::of(&e))
            .unwrap_or_default()
    }
}

/// What a violation names about an event.
#[derive(Debug, Clone, Default)]
struct Names {
    table: Option<String>,
    round: Option<u64>,
    bet: Option<Uuid>,
    player: Option<String>,
}

impl Names {
    fn of(event: &Event<'_>) -> Names {
        Names {
            table: event.table.map(str::to_string),
            round: event.round,
            bet: event.bet_id(),
            player: event.player().map(str::to_string),
        }
    }

    fn on(&self, mut violation: Violation) -> Violation {
        violation.table.clone_from(&self.table);
        violation.round = self.round;
        violation.bet_id = self.bet.map(|b| b.to_string());
        violation.player.clone_from(&self.player);
        violation
    }
}

/// Matches the two logs' events by id.
#[derive(Debug, Default)]
pub struct Matcher {
    recorded: FxHashMap<Uuid, Recorded>,
    published: FxHashMap<Uuid, Published>,
    /// The round whose events' places on the bus are kept (last-game recall).
    pub track: Option<(String, u64)>,
    /// Event id → its place on the bus, for the tracked round.
    pub places: std::collections::BTreeMap<String, String>,
    pub report: BusReport,
    pub violations: Vec<Violation>,
}

impl Matcher {
    /// A matcher that keeps the bus places of `round`'s events (for its recall).
    pub fn tracking(round: Option<(String, u64)>) -> Self {
        Matcher {
            track: round,
            ..Matcher::default()
        }
    }

    /// A Postgres event (already decoded by the rebuild). A kind that is never published has
    /// nothing to meet on the bus.
    pub fn recorded(&mut self, position: i64, data: Bytes, event: &Event<'_>) {
        if !event.kind.published() {
            return;
        }
        let tracked = self.track.as_ref().is_some_and(|(table, round)| {
            event.table == Some(table.as_str()) && event.round == Some(*round)
        });
        let recorded = Recorded {
            position,
            kind: event.kind,
            data,
            at: event.at,
            on_players: event.on_players(),
            tracked,
        };
        match self.published.remove(&event.id) {
            Some(published) => self.compare(recorded, published),
            None => {
                if let Some(first) = self.recorded.insert(event.id, recorded) {
                    // The store refuses a second row with one event id; a log that has one
                    // was altered.
                    self.violations.push(
                        first.names().on(Violation::new(
                            Check::Bus,
                            "one row per event id",
                            format!(
                                "event id {} at {} and again later",
                                event.id, first.position
                            ),
                        )
                        .at(first.position)),
                    );
                }
            }
        }
    }

    /// A bus message.
    pub fn published(&mut self, message: BusMessage) {
        let event = match &message.event {
            Ok(event) => event,
            Err(error) => {
                self.violations.push(
                    Violation::new(Check::Bus, "an event of the contract", error.clone())
                        .bus(message.place()),
                );
                return;
            }
        };
        let (id, kind) = (event.id, event.kind);
        if !kind.published() {
            let place = message.place();
            self.violations.push(
                Violation::new(
                    Check::Bus,
                    format!("no {kind} on the bus (it is recorded in the store only)"),
                    format!("event id {id} published"),
                )
                .bus(place),
            );
            return;
        }
        let published = Published { message, kind };
        match self.recorded.remove(&id) {
            Some(recorded) => self.compare(recorded, published),
            None => {
                if let Some(first) = self.published.insert(id, published) {
                    // Published twice (a retry after the duplicate window): clients saw it
                    // twice.
                    let place = first.message.place();
                    self.violations.push(
                        first.names().on(Violation::new(
                            Check::Bus,
                            "each event published once",
                            format!("event id {id} at {place} and again later"),
                        )
                        .bus(place)),
                    );
                }
            }
        }
    }

    fn compare(&mut self, recorded: Recorded, published: Published) {
        let message = &published.message;
        let subject_holds = message.event.as_ref().is_ok_and(|e| e.subject_holds);
        if recorded.tracked
            && let Ok(event) = &message.event
        {
            self.places.insert(event.id.to_string(), message.place());
        }
        // The common case: the same bytes, on the subject they belong on.
        if subject_holds && recorded.data == message.payload {
            self.report.matched += 1;
            return;
        }
        let mut differences = Vec::new();
        let expected_subject = recorded.subject();
        if expected_subject != message.subject {
            differences.push(format!(
                "subject {} for {expected_subject}",
                message.subject
            ));
        }
        if recorded.data != message.payload {
            // GS publishes the stored bytes themselves; GS records GMS's transitions by
            // decoding and encoding them again, so there the content must agree.
            let same = recorded.kind.by_gms()
                && match (
                    protocol::decode_event(&recorded.data),
                    protocol::decode_event(&message.payload),
                ) {
                    (Ok(stored), Ok(sent)) => stored == sent,
                    _ => false,
                };
            if !same {
                differences.push(describe_difference(&recorded.data, message));
            }
        }
        if differences.is_empty() {
            self.report.matched += 1;
            return;
        }
        let place = message.place();
        self.violations.push(
            recorded.names().on(Violation::new(
                Check::Bus,
                format!("the {} at {place} as stored", recorded.kind),
                differences.join("; "),
            )
            .at(recorded.position)
            .bus(place)),
        );
    }

    /// Judges the Postgres events left unmatched. `outbox` is the last position the outbox had
    /// published in the snapshot; `retained_from` the time of the oldest message each
    /// retention-limited stream still holds. Returns the ids of bus messages without a
    /// Postgres event, to be looked up in the store (then [`Matcher::unrecorded`]).
    pub fn leftovers(
        &mut self,
        outbox: i64,
        retained_from: &HashMap<&'static str, Time>,
    ) -> Vec<Uuid> {
        self.report.outbox_position = outbox;
        let mut recorded: Vec<Recorded> = self.recorded.drain().map(|(_, r)| r).collect();
        recorded.sort_by_key(|r| r.position);
        for r in recorded {
            let stream = r.stream();
            if !r.kind.by_gms() && r.position > outbox {
                self.report.awaiting_publication += 1;
            } else if retained_from.get(stream).is_some_and(|first| r.at < *first) {
                self.report.before_retention += 1;
            } else {
                self.violations.push(
                    r.names().on(Violation::new(
                        Check::Bus,
                        format!("the {} published on {}", r.kind, r.subject()),
                        format!("no message with its event id on {stream}"),
                    )
                    .at(r.position)),
                );
            }
        }
        self.published.keys().copied().collect()
    }

    /// Judges the bus messages without a Postgres event in the snapshot: `found` has the
    /// position of those the store has now (recorded after the snapshot, or before the
    /// checkpoint the replay began at).
    pub fn unrecorded(&mut self, found: &HashMap<Uuid, i64>, gs_cursor: u64) {
        let mut published: Vec<Published> = self.published.drain().map(|(_, p)| p).collect();
        published.sort_by_key(|p| (p.message.stream, p.message.seq));
        for p in published {
            let id = p.message.event.as_ref().map(|e| e.id).ok();
            if id.is_some_and(|id| found.contains_key(&id)) {
                self.report.outside_snapshot += 1;
            } else if p.kind.by_gms() && p.message.stream == "TABLES" && p.message.seq > gs_cursor {
                self.report.not_yet_recorded += 1;
            } else {
                let place = p.message.place();
                self.violations.push(
                    p.names().on(Violation::new(
                        Check::Bus,
                        format!("a Postgres event for the {} at {place}", p.kind),
                        format!(
                            "no event with id {} in Postgres",
                            id.map_or("?".into(), |i| i.to_string())
                        ),
                    )
                    .bus(place)),
                );
            }
        }
    }
}

/// Says how a stored event and its bus message differ, field by field where both decode.
fn describe_difference(stored: &[u8], message: &BusMessage) -> String {
    let (Ok(stored), Ok(sent)) = (
        protocol::decode_event(stored).map(|e| to_json(&e)),
        protocol::decode_event(&message.payload).map(|e| to_json(&e)),
    ) else {
        return "payloads differ".into();
    };
    let (Some(stored), Some(sent)) = (stored.as_object(), sent.as_object()) else {
        return "payloads differ".into();
    };
    let mut fields: Vec<String> = stored
        .iter()
        .filter(|(k, v)| sent.get(*k) != Some(*v))
        .map(|(k, v)| {
            format!(
                "{k}: {v} stored, {} on the bus",
                sent.get(k).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect();
    fields.extend(
        sent.keys()
            .filter(|k| !stored.contains_key(*k))
            .map(|k| format!("{k}: only on the bus")),
    );
    if fields.is_empty() {
        "payload bytes differ (same fields)".into()
    } else {
        fields.join(", ")
    }
}

fn to_json(event: &protocol::Event) -> serde_json::Value {
    serde_json::to_value(event).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn switch() -> Bytes {
        let event = protocol::Event::new(
            Uuid::new_v4(),
            domain::Timestamp::from_unix_micros(1_700_000_000_000_000).expect("time"),
            protocol::BettingSwitched {
                table: None,
                betting: protocol::Betting::Disabled,
                reason: "drill".into(),
                by: "dana".into(),
            },
        );
        protocol::encode_event(&event).expect("encode")
    }

    #[test]
    fn an_operator_switch_is_not_expected_on_the_bus() {
        let data = switch();
        let event = wire::decode(&data).expect("decodes");
        let mut matcher = Matcher::default();
        matcher.recorded(7, data.clone(), &event);
        // Even past the outbox's cursor and with no stream's retention in question.
        let unmatched = matcher.leftovers(100, &HashMap::new());
        assert!(unmatched.is_empty());
        assert_eq!(matcher.violations, []);
        assert_eq!(matcher.report.awaiting_publication, 0);
    }

    #[test]
    fn an_operator_switch_found_on_the_bus_is_named() {
        let payload = switch();
        let event = wire::decode(&payload).expect("decodes");
        let summary = Summary {
            id: event.id,
            at: event.at,
            kind: event.kind,
            subject_holds: event.published_on("table.roulette-1.round"),
        };
        let mut matcher = Matcher::default();
        matcher.published(BusMessage {
            stream: "TABLES",
            seq: 3,
            subject: "table.roulette-1.round".into(),
            payload,
            event: Ok(summary),
        });
        assert_eq!(matcher.violations.len(), 1, "{:?}", matcher.violations);
        assert_eq!(matcher.violations[0].check, Check::Bus);
        assert!(
            matcher.violations[0].expected.contains("betting_switched"),
            "{:?}",
            matcher.violations[0]
        );
    }
}

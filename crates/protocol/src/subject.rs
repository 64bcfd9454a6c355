//! NATS names of `docs/contract/bus.md`: subjects, streams, KV buckets, the bet queue group and the
//! message-id scheme, as the services use them.
//!
//! These are logical names. `CROUPIER_NATS_PREFIX` is applied in one place only, the bus's nats
//! adapter (`bus::nats::names`): with prefix `p` the server sees `p.<subject>` and `p_<name>`,
//! and services never see the prefix.

use domain::{PlayerId, TableId};

use crate::event::{
    BetPlaced, BetRefunded, BetSettled, BettingClosed, Event, EventBody, FundsDeposited,
    OutcomeDeclared, Producer, RoundOpened, RoundSettled, RoundVoided,
};

/// Stream of table events, subjects [`TABLES_SUBJECTS`].
pub const TABLES_STREAM: &str = "TABLES";
/// Subjects of stream `TABLES` (before namespacing).
pub const TABLES_SUBJECTS: &str = "table.>";
/// Stream of wallet events, subjects [`PLAYERS_SUBJECTS`].
pub const PLAYERS_STREAM: &str = "PLAYERS";
/// Subjects of stream `PLAYERS` (before namespacing).
pub const PLAYERS_SUBJECTS: &str = "player.>";
/// KV bucket of GMS leader leases: one key per table id.
pub const GMS_LEASES_BUCKET: &str = "gms_leases";
/// KV bucket of the betting status.
pub const STATUS_BUCKET: &str = "status";
/// The key in [`STATUS_BUCKET`] holding the [`crate::status::BettingStatus`].
pub const STATUS_BETTING_KEY: &str = "betting";
/// KV bucket of GS heartbeats ([`crate::status::GsHeartbeat`]): one key per GS process,
/// expiring when the process stops writing it.
pub const GS_HEALTH_BUCKET: &str = "gs_health";
/// The key in [`STATUS_BUCKET`] holding an operator's switch (a
/// [`crate::status::BettingStatus`]; `croupier betting off|on`), which GS obeys.
pub const STATUS_OPERATOR_KEY: &str = "operator";
/// Queue group of GS instances on `bets.place.<t>`: each bet goes to one GS.
pub const GS_QUEUE_GROUP: &str = "gs";
/// Header carrying the deduplication id of a publish.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Header with which GMS guards each table subject against a second leader.
pub const EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: &str = "Nats-Expected-Last-Subject-Sequence";

/// `table.<t>.round`: GMS round transitions.
pub fn table_round_subject(table: &TableId) -> String {
    format!("table.{table}.round")
}

/// `table.<t>.result`: GS `round_settled`.
pub fn table_result_subject(table: &TableId) -> String {
    format!("table.{table}.result")
}

/// `player.<p>.wallet`: GS wallet events.
pub fn player_wallet_subject(player: &PlayerId) -> String {
    format!("player.{player}.wallet")
}

/// `bets.place.<t>`: where a gateway sends a table's bets.
pub fn bets_place_subject(table: &TableId) -> String {
    format!("bets.place.{table}")
}

/// `bets.place.*`: what GS subscribes to, in queue group [`GS_QUEUE_GROUP`].
pub fn bets_place_wildcard() -> String {
    "bets.place.*".to_owned()
}

/// The subject an event is published on: `table.<t>.round` for GMS kinds, `table.<t>.result` for
/// `round_settled`, `player.<p>.wallet` for wallet kinds.
pub fn subject_for(event: &Event) -> String {
    match &event.body {
        EventBody::RoundOpened(RoundOpened { table, .. })
        | EventBody::BettingClosed(BettingClosed { table, .. })
        | EventBody::OutcomeDeclared(OutcomeDeclared { table, .. })
        | EventBody::RoundVoided(RoundVoided { table, .. }) => table_round_subject(table),
        EventBody::RoundSettled(RoundSettled { table, .. }) => table_result_subject(table),
        EventBody::BetPlaced(BetPlaced { player, .. })
        | EventBody::BetSettled(BetSettled { player, .. })
        | EventBody::BetRefunded(BetRefunded { player, .. })
        | EventBody::FundsDeposited(FundsDeposited { player, .. }) => player_wallet_subject(player),
    }
}

/// The `Nats-Msg-Id` of a GMS publish: `<table>:<round>:<kind>`, so a retried transition is
/// deduplicated. `None` for GS kinds, whose Msg-Id is the store's `event_id` (the event's `id`).
pub fn gms_msg_id(event: &Event) -> Option<String> {
    if event.event_kind().producer() != Producer::Gms {
        return None;
    }
    let table = event.table()?;
    let round = event.round()?;
    Some(format!("{table}:{round}:{}", event.kind()))
}

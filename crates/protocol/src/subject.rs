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
/// The key in [`STATUS_BUCKET`] holding an operator's switch of every table (a
/// [`crate::status::BettingStatus`]; `croupier betting off|on`), which GS obeys.
pub const STATUS_OPERATOR_KEY: &str = "operator";
/// Queue group of GS instances on `bets.place.<t>`: each bet goes to one GS.
pub const GS_QUEUE_GROUP: &str = "gs";
/// Header carrying the deduplication id of a publish.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Header with which GMS guards each table subject against a second leader.
pub const EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: &str = "Nats-Expected-Last-Subject-Sequence";

/// `operator.<t>`: the key in [`STATUS_BUCKET`] holding an operator's switch of table `<t>`
/// (`croupier betting off|on --table <t>`, ADR 0022), in the same shape as
/// [`STATUS_OPERATOR_KEY`].
pub fn status_operator_table_key(table: &TableId) -> String {
    format!("{STATUS_OPERATOR_KEY}.{table}")
}

/// The table of an `operator.<t>` key of [`STATUS_BUCKET`]; `None` for any other key.
pub fn table_of_operator_key(key: &str) -> Option<TableId> {
    let table = key.strip_prefix(STATUS_OPERATOR_KEY)?.strip_prefix('.')?;
    TableId::parse(table).ok()
}

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
/// `round_settled`, `player.<p>.wallet` for wallet kinds; `None` for `betting_switched`, which
/// is recorded in the store only (ADR 0022).
pub fn subject_for(event: &Event) -> Option<String> {
    Some(match &event.body {
        EventBody::RoundOpened(RoundOpened { table, .. })
        | EventBody::BettingClosed(BettingClosed { table, .. })
        | EventBody::OutcomeDeclared(OutcomeDeclared { table, .. })
        | EventBody::RoundVoided(RoundVoided { table, .. }) => table_round_subject(table),
        EventBody::RoundSettled(RoundSettled { table, .. }) => table_result_subject(table),
        EventBody::BetPlaced(BetPlaced { player, .. })
        | EventBody::BetSettled(BetSettled { player, .. })
        | EventBody::BetRefunded(BetRefunded { player, .. })
        | EventBody::FundsDeposited(FundsDeposited { player, .. }) => player_wallet_subject(player),
        EventBody::BettingSwitched(_) => return None,
    })
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

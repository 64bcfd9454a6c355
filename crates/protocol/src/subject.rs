//! NATS names of DESIGN §5: subjects, streams, KV buckets, the bet queue group, the message-id
//! scheme, and the `CROUPIER_NATS_PREFIX` namespacing of all of them.
//!
//! Owns names only; connecting, publishing and stream definitions belong to the `bus` crate.
//!
//! Namespacing: with a non-empty prefix `p`, every subject becomes `p.<subject>` (so
//! `t123.table.roulette-1.round`), and every stream, consumer and bucket name becomes `p_<name>`
//! (`t123_TABLES`, `t123_gms_leases`), because those names cannot contain dots. Queue groups are
//! not prefixed: they only ever meet inside an already prefixed subject. With the empty prefix
//! (the default) names are exactly those of DESIGN §5.

use std::fmt;

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
/// Queue group of GS instances on `bets.place.<t>`: each bet goes to one GS.
pub const GS_QUEUE_GROUP: &str = "gs";
/// Header carrying the deduplication id of a publish.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Header with which GMS guards each table subject against a second leader.
pub const EXPECTED_LAST_SUBJECT_SEQUENCE_HEADER: &str = "Nats-Expected-Last-Subject-Sequence";

/// The longest prefix accepted.
pub const MAX_PREFIX_LEN: usize = 64;

/// A `CROUPIER_NATS_PREFIX`: empty, or 1 to 64 of `[A-Za-z0-9_-]` so that it is one subject token
/// and a valid part of stream and bucket names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Namespace(String);

/// A prefix that would not make valid NATS names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "CROUPIER_NATS_PREFIX must be empty or 1 to {MAX_PREFIX_LEN} of A-Z, a-z, 0-9, '_' and '-'"
)]
pub struct NamespaceError;

impl Namespace {
    /// No prefix: the names of DESIGN §5.
    pub fn root() -> Namespace {
        Namespace::default()
    }

    /// Parses a prefix; the empty string is the root namespace.
    pub fn parse(prefix: &str) -> Result<Namespace, NamespaceError> {
        let valid = prefix.len() <= MAX_PREFIX_LEN
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if valid {
            Ok(Namespace(prefix.to_owned()))
        } else {
            Err(NamespaceError)
        }
    }

    pub fn prefix(&self) -> &str {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// `subject`, or `<prefix>.<subject>`.
    pub fn subject(&self, subject: &str) -> String {
        if self.is_root() {
            subject.to_owned()
        } else {
            format!("{}.{subject}", self.0)
        }
    }

    /// The subject without this namespace's prefix; `None` if it is not in the namespace.
    pub fn strip<'a>(&self, subject: &'a str) -> Option<&'a str> {
        if self.is_root() {
            Some(subject)
        } else {
            subject.strip_prefix(self.0.as_str())?.strip_prefix('.')
        }
    }

    /// A stream, consumer or bucket name: `name`, or `<prefix>_<name>`.
    pub fn name(&self, name: &str) -> String {
        if self.is_root() {
            name.to_owned()
        } else {
            format!("{}_{name}", self.0)
        }
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `table.<t>.round`: GMS round transitions.
pub fn table_round_subject(ns: &Namespace, table: &TableId) -> String {
    ns.subject(&format!("table.{table}.round"))
}

/// `table.<t>.result`: GS `round_settled`.
pub fn table_result_subject(ns: &Namespace, table: &TableId) -> String {
    ns.subject(&format!("table.{table}.result"))
}

/// `player.<p>.wallet`: GS wallet events.
pub fn player_wallet_subject(ns: &Namespace, player: &PlayerId) -> String {
    ns.subject(&format!("player.{player}.wallet"))
}

/// `bets.place.<t>`: where a gateway sends a table's bets.
pub fn bets_place_subject(ns: &Namespace, table: &TableId) -> String {
    ns.subject(&format!("bets.place.{table}"))
}

/// `bets.place.*`: what GS subscribes to, in queue group [`GS_QUEUE_GROUP`].
pub fn bets_place_wildcard(ns: &Namespace) -> String {
    ns.subject("bets.place.*")
}

/// The subject an event is published on: `table.<t>.round` for GMS kinds, `table.<t>.result` for
/// `round_settled`, `player.<p>.wallet` for wallet kinds.
pub fn subject_for(ns: &Namespace, event: &Event) -> String {
    match &event.body {
        EventBody::RoundOpened(RoundOpened { table, .. })
        | EventBody::BettingClosed(BettingClosed { table, .. })
        | EventBody::OutcomeDeclared(OutcomeDeclared { table, .. })
        | EventBody::RoundVoided(RoundVoided { table, .. }) => table_round_subject(ns, table),
        EventBody::RoundSettled(RoundSettled { table, .. }) => table_result_subject(ns, table),
        EventBody::BetPlaced(BetPlaced { player, .. })
        | EventBody::BetSettled(BetSettled { player, .. })
        | EventBody::BetRefunded(BetRefunded { player, .. })
        | EventBody::FundsDeposited(FundsDeposited { player, .. }) => {
            player_wallet_subject(ns, player)
        }
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

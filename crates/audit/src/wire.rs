//! The events' wire form read by the audit itself, from the contract (a MessagePack map of the
//! event object, `docs/contract/events.md`): one pass over the bytes (`crate::msgpack`, no
//! serde) into a flat, borrowed view, checked field by field ([`decode`]). The merge of the two
//! logs needs less of most events before that: [`glance`] reads a bus message's envelope and
//! publisher, [`glance_at`] a stored row's time.
//!
//! Times stay the strings the contract fixes (`YYYY-MM-DDTHH:MM:SS.ffffffZ`, UTC, microseconds):
//! checked for that shape, they order correctly as text, and the audit only compares and prints
//! them.

use std::fmt;

use uuid::Uuid;

use crate::msgpack::{Int, Reader};
use crate::rules::{self, Wager};

/// An instant as the contract writes it: `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time([u8; 27]);

impl Time {
    pub const ZERO: Time = Time(*b"0000-00-00T00:00:00.000000Z");

    pub fn parse(s: &str) -> Option<Time> {
        let b: [u8; 27] = s.as_bytes().try_into().ok()?;
        let shape_holds = b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            26 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
        shape_holds.then_some(Time(b))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII was accepted.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The event kinds of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    RoundOpened,
    BettingClosed,
    OutcomeDeclared,
    RoundVoided,
    BetPlaced,
    BetSettled,
    BetRefunded,
    RoundSettled,
    FundsDeposited,
    /// An operator's switch of betting (ADR 0022): stored only, never published.
    BettingSwitched,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "round_opened" => Kind::RoundOpened,
            "betting_closed" => Kind::BettingClosed,
            "outcome_declared" => Kind::OutcomeDeclared,
            "round_voided" => Kind::RoundVoided,
            "bet_placed" => Kind::BetPlaced,
            "bet_settled" => Kind::BetSettled,
            "bet_refunded" => Kind::BetRefunded,
            "round_settled" => Kind::RoundSettled,
            "funds_deposited" => Kind::FundsDeposited,
            "betting_switched" => Kind::BettingSwitched,
            _ => return None,
        })
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::RoundOpened => "round_opened",
            Kind::BettingClosed => "betting_closed",
            Kind::OutcomeDeclared => "outcome_declared",
            Kind::RoundVoided => "round_voided",
            Kind::BetPlaced => "bet_placed",
            Kind::BetSettled => "bet_settled",
            Kind::BetRefunded => "bet_refunded",
            Kind::RoundSettled => "round_settled",
            Kind::FundsDeposited => "funds_deposited",
            Kind::BettingSwitched => "betting_switched",
        }
    }

    /// Whether events of this kind carry a `player` (a wallet event).
    pub const fn has_player(self) -> bool {
        matches!(
            self,
            Kind::BetPlaced | Kind::BetSettled | Kind::BetRefunded | Kind::FundsDeposited
        )
    }

    /// GMS publishes the round transitions; GS everything else but an operator's switch.
    pub const fn by_gms(self) -> bool {
        matches!(
            self,
            Kind::RoundOpened | Kind::BettingClosed | Kind::OutcomeDeclared | Kind::RoundVoided
        )
    }

    /// Whether events of this kind are on the bus: all but `betting_switched`, which an
    /// operator's CLI records in the store only (`docs/contract/events.md`).
    pub const fn published(self) -> bool {
        !matches!(self, Kind::BettingSwitched)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A selection as it is on the wire.
#[derive(Debug)]
struct RawSelection<'a> {
    kind: &'a str,
    numbers: Option<Numbers>,
    index: Option<u8>,
}

/// A selection's numbers, held inline: no selection names more pockets than the wheel has.
#[derive(Debug, Clone, Copy)]
struct Numbers {
    pockets: [u8; rules::POCKETS as usize],
    len: usize,
}

impl Numbers {
    fn as_slice(&self) -> &[u8] {
        &self.pockets[..self.len]
    }
}

impl<'a> RawSelection<'a> {
    /// A selection's map, or `None` for nil.
    fn read(reader: &mut Reader<'a>) -> Result<Option<Self>, String> {
        let Some(len) = reader.opt_map_len()? else {
            return Ok(None);
        };
        let (mut kind, mut numbers, mut index) = (None, None, None);
        for _ in 0..len {
            match reader.key()? {
                b"kind" => set(&mut kind, "selection kind", reader.str()?)?,
                b"numbers" => {
                    let read = match reader.opt_array_len()? {
                        None => None,
                        Some(len) => {
                            if len > usize::from(rules::POCKETS) {
                                return Err(format!("a selection of {len} numbers"));
                            }
                            let mut read = Numbers {
                                pockets: [0; rules::POCKETS as usize],
                                len,
                            };
                            for pocket in &mut read.pockets[..len] {
                                *pocket = small(reader.opt_int()?, "a selection's number")?;
                            }
                            Some(read)
                        }
                    };
                    set(&mut numbers, "numbers", read)?;
                }
                b"index" => {
                    let read = match reader.opt_int()? {
                        None => None,
                        read => Some(small(read, "a selection's index")?),
                    };
                    set(&mut index, "index", read)?;
                }
                _ => reader.skip()?,
            }
        }
        Ok(Some(RawSelection {
            kind: kind.ok_or("a selection without kind")?,
            numbers: numbers.flatten(),
            index: index.flatten(),
        }))
    }
}

/// Sets a field read once; a map that names it twice is refused.
fn set<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), String> {
    if slot.replace(value).is_some() {
        return Err(format!("duplicate field {name}"));
    }
    Ok(())
}

/// An integer of 0..=255.
fn small(value: Option<Int>, what: &str) -> Result<u8, String> {
    value
        .and_then(Int::to_u64)
        .and_then(|v| u8::try_from(v).ok())
        .ok_or_else(|| format!("{what} {value:?} is not 0..=255"))
}

/// Whether an operator switched betting on or off (`betting_switched`'s `betting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Switch {
    Enabled,
    Disabled,
}

impl Switch {
    pub const fn as_str(self) -> &'static str {
        match self {
            Switch::Enabled => "enabled",
            Switch::Disabled => "disabled",
        }
    }
}

/// Every field any event kind has, in one map.
#[derive(Debug, Default)]
struct Raw<'a> {
    kind: Option<&'a str>,
    id: Option<&'a str>,
    at: Option<&'a str>,
    /// Missing (the outer `None`), `null` (`betting_switched` of every table) or a table id.
    table: Option<Option<&'a str>>,
    round: Option<u64>,
    closes_at: Option<&'a str>,
    seed_hash: Option<&'a str>,
    outcome: Option<u8>,
    server_seed: Option<&'a str>,
    reason: Option<&'a str>,
    bet_id: Option<&'a str>,
    player: Option<&'a str>,
    selection: Option<RawSelection<'a>>,
    amount: Option<i64>,
    balance: Option<i64>,
    payout: Option<i64>,
    bets: Option<u64>,
    staked: Option<i64>,
    paid: Option<i64>,
    deposit_id: Option<&'a str>,
    betting: Option<&'a str>,
    by: Option<&'a str>,
}

/// The fields [`Raw`] reads, in the order of their bits in its duplicate check.
const FIELDS: [&str; 22] = [
    "kind",
    "id",
    "at",
    "table",
    "round",
    "closes_at",
    "seed_hash",
    "outcome",
    "server_seed",
    "reason",
    "bet_id",
    "player",
    "selection",
    "amount",
    "balance",
    "payout",
    "bets",
    "staked",
    "paid",
    "deposit_id",
    "betting",
    "by",
];

impl<'a> Raw<'a> {
    /// One pass over the map: each field the contract knows read into its slot (nil reads as
    /// absent, as for an optional field), any other skipped, a field named twice refused.
    fn read(bytes: &'a [u8]) -> Result<Self, String> {
        let mut reader = Reader::new(bytes);
        let mut raw = Raw::default();
        let mut seen = 0u32;
        for _ in 0..reader.map_len()? {
            let key = reader.key()?;
            let Some(field) = FIELDS.iter().position(|f| f.as_bytes() == key) else {
                reader.skip()?;
                continue;
            };
            if seen & (1 << field) != 0 {
                return Err(format!("duplicate field {}", FIELDS[field]));
            }
            seen |= 1 << field;
            let r = &mut reader;
            match FIELDS[field] {
                "kind" => raw.kind = r.opt_str()?,
                "id" => raw.id = r.opt_str()?,
                "at" => raw.at = r.opt_str()?,
                "table" => raw.table = Some(r.opt_str()?),
                "round" => raw.round = unsigned(r, "round")?,
                "closes_at" => raw.closes_at = r.opt_str()?,
                "seed_hash" => raw.seed_hash = r.opt_str()?,
                "outcome" => {
                    raw.outcome = match r.opt_int()? {
                        None => None,
                        read => Some(small(read, "outcome")?),
                    }
                }
                "server_seed" => raw.server_seed = r.opt_str()?,
                "reason" => raw.reason = r.opt_str()?,
                "bet_id" => raw.bet_id = r.opt_str()?,
                "player" => raw.player = r.opt_str()?,
                "selection" => raw.selection = RawSelection::read(r)?,
                "amount" => raw.amount = signed(r, "amount")?,
                "balance" => raw.balance = signed(r, "balance")?,
                "payout" => raw.payout = signed(r, "payout")?,
                "bets" => raw.bets = unsigned(r, "bets")?,
                "staked" => raw.staked = signed(r, "staked")?,
                "paid" => raw.paid = signed(r, "paid")?,
                "deposit_id" => raw.deposit_id = r.opt_str()?,
                "betting" => raw.betting = r.opt_str()?,
                _ => raw.by = r.opt_str()?,
            }
        }
        if !reader.is_done() {
            return Err("bytes after the event's map".into());
        }
        Ok(raw)
    }
}

fn unsigned(reader: &mut Reader<'_>, what: &str) -> Result<Option<u64>, String> {
    match reader.opt_int()? {
        None => Ok(None),
        Some(i) => i
            .to_u64()
            .map(Some)
            .ok_or_else(|| format!("{what} {i:?} is negative")),
    }
}

fn signed(reader: &mut Reader<'_>, what: &str) -> Result<Option<i64>, String> {
    match reader.opt_int()? {
        None => Ok(None),
        Some(i) => i
            .to_i64()
            .map(Some)
            .ok_or_else(|| format!("{what} {i:?} is beyond 64 bits")),
    }
}

/// What each kind carries beyond the envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'a> {
    RoundOpened {
        closes_at: Time,
        seed_hash: [u8; 32],
    },
    BettingClosed,
    OutcomeDeclared {
        outcome: u8,
        server_seed: [u8; 32],
    },
    RoundVoided {
        reason: &'a str,
    },
    BetPlaced {
        bet_id: Uuid,
        player: &'a str,
        wager: Wager,
        amount: i64,
        balance: i64,
    },
    BetSettled {
        bet_id: Uuid,
        player: &'a str,
        payout: i64,
        balance: i64,
    },
    BetRefunded {
        bet_id: Uuid,
        player: &'a str,
        amount: i64,
        balance: i64,
    },
    RoundSettled {
        bets: u64,
        staked: i64,
        paid: i64,
    },
    FundsDeposited {
        player: &'a str,
        deposit_id: &'a str,
        amount: i64,
        balance: i64,
    },
    /// The table switched is the event's `table` (`None`: every table).
    BettingSwitched {
        betting: Switch,
        reason: &'a str,
        by: &'a str,
    },
}

/// One event, borrowed from its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event<'a> {
    pub kind: Kind,
    pub id: Uuid,
    pub at: Time,
    /// Every kind names its table, but a deposit made outside any table and an operator's
    /// switch of every table.
    pub table: Option<&'a str>,
    /// Every kind but `funds_deposited` and `betting_switched`.
    pub round: Option<u64>,
    pub body: Body<'a>,
}

impl<'a> Event<'a> {
    /// The player of a wallet event.
    pub fn player(&self) -> Option<&'a str> {
        match self.body {
            Body::BetPlaced { player, .. }
            | Body::BetSettled { player, .. }
            | Body::BetRefunded { player, .. }
            | Body::FundsDeposited { player, .. } => Some(player),
            _ => None,
        }
    }

    pub fn bet_id(&self) -> Option<Uuid> {
        match self.body {
            Body::BetPlaced { bet_id, .. }
            | Body::BetSettled { bet_id, .. }
            | Body::BetRefunded { bet_id, .. } => Some(bet_id),
            _ => None,
        }
    }

    /// The subject the event is published on (`docs/contract/bus.md`); empty for a kind that
    /// is never published.
    pub fn subject(&self) -> String {
        if !self.kind.published() {
            return String::new();
        }
        match (self.player(), self.table) {
            (Some(player), _) => format!("player.{player}.wallet"),
            (None, Some(table)) if self.kind == Kind::RoundSettled => {
                format!("table.{table}.result")
            }
            (None, Some(table)) => format!("table.{table}.round"),
            (None, None) => String::new(),
        }
    }

    /// Whether it is published on `PLAYERS` (else `TABLES`).
    pub fn on_players(&self) -> bool {
        self.player().is_some()
    }

    /// Whether `subject` is [`Event::subject`], without building it (never, for a kind that is
    /// never published).
    pub fn published_on(&self, subject: &str) -> bool {
        published_on(self.kind, self.player(), self.table, subject)
    }
}

fn published_on(kind: Kind, player: Option<&str>, table: Option<&str>, subject: &str) -> bool {
    if !kind.published() {
        return false;
    }
    let (first, name, last) = match (player, table) {
        (Some(player), _) => ("player.", player, "wallet"),
        (None, Some(table)) if kind == Kind::RoundSettled => ("table.", table, "result"),
        (None, Some(table)) => ("table.", table, "round"),
        (None, None) => return false,
    };
    subject
        .strip_prefix(first)
        .and_then(|rest| rest.strip_prefix(name))
        .and_then(|rest| rest.strip_prefix('.'))
        == Some(last)
}

/// What the merge of the two logs needs of an event before it is decoded in full: where it
/// goes in time, which event it is, and where it is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Glance<'a> {
    pub kind: Kind,
    pub id: Uuid,
    pub at: Time,
    pub table: Option<&'a str>,
    pub player: Option<&'a str>,
}

impl Glance<'_> {
    /// Whether `subject` is the one an event of this kind, table and player is published on
    /// (see [`Event::published_on`]).
    pub fn published_on(&self, subject: &str) -> bool {
        published_on(self.kind, self.player, self.table, subject)
    }
}

/// Reads an event's envelope and its table and player, stopping once it has them: the bus
/// side of the merge trusts a message only as far as its bytes equal the stored event's,
/// which [`decode`] checks in full, so nothing else of it is read here. Duplicate fields are
/// not looked for (the full decode refuses them).
pub fn glance(bytes: &[u8]) -> Result<Glance<'_>, String> {
    let mut reader = Reader::new(bytes);
    let (mut kind, mut id, mut at, mut table, mut player) = (None, None, None, None, None);
    let mut left = reader.map_len()?;
    // A player event is published by its player, a round event by its table: stop once the
    // envelope and a player are read, else read to the end.
    while left > 0 && !(player.is_some() && kind.is_some() && id.is_some() && at.is_some()) {
        left -= 1;
        match reader.key()? {
            b"kind" => kind = reader.opt_str()?,
            b"id" => id = reader.opt_str()?,
            b"at" => at = reader.opt_str()?,
            b"table" => table = reader.opt_str()?,
            b"player" => player = reader.opt_str()?,
            _ => reader.skip()?,
        }
    }
    let kind = kind.ok_or("missing field kind")?;
    let kind = Kind::parse(kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
    let at = at.ok_or("missing field at")?;
    Ok(Glance {
        kind,
        id: uuid(id.ok_or("missing field id")?, "id")?,
        at: Time::parse(at).ok_or_else(|| format!("at {at:?} is not a contract time"))?,
        table,
        player: player.filter(|_| kind.has_player()),
    })
}

/// An event's `at`, read without decoding the rest (its place in the merge of the two logs).
pub fn glance_at(bytes: &[u8]) -> Option<Time> {
    let mut reader = Reader::new(bytes);
    for _ in 0..reader.map_len().ok()? {
        if reader.key().ok()? == b"at" {
            return reader.opt_str().ok().flatten().and_then(Time::parse);
        }
        reader.skip().ok()?;
    }
    None
}

/// Largest amount of money the contract allows: 2^53 − 1 minor units.
const MONEY_MAX: i64 = 9_007_199_254_740_991;

/// Decodes and checks one event: every field its kind needs, of the contract's shape.
pub fn decode(bytes: &[u8]) -> Result<Event<'_>, String> {
    // A map, as every event is.
    if !bytes
        .first()
        .is_some_and(|b| matches!(b, 0x80..=0x8f | 0xde | 0xdf))
    {
        return Err("not a MessagePack map".into());
    }
    let raw = Raw::read(bytes)?;
    let missing = |field: &str| format!("missing field {field}");
    let kind = raw.kind.ok_or_else(|| missing("kind"))?;
    let kind = Kind::parse(kind).ok_or_else(|| format!("unknown kind {kind:?}"))?;
    let id = uuid(raw.id.ok_or_else(|| missing("id"))?, "id")?;
    let at = raw.at.ok_or_else(|| missing("at"))?;
    let at = Time::parse(at).ok_or_else(|| format!("at {at:?} is not a contract time"))?;
    let need = |what: &str| format!("{kind} without {what}");
    if kind == Kind::BettingSwitched && raw.table.is_none() {
        // `null` for every table, but never left out.
        return Err(need("table"));
    }
    let table = raw.table.flatten().map(|t| name(t, "table")).transpose()?;
    // A switch belongs to no round: a `round` in one is a field its kind does not know.
    let round = if kind == Kind::BettingSwitched {
        None
    } else {
        raw.round
    };
    if !matches!(kind, Kind::FundsDeposited | Kind::BettingSwitched) {
        table.ok_or_else(|| need("table"))?;
        let round = round.ok_or_else(|| need("round"))?;
        if round == 0 {
            return Err("round 0".into());
        }
    }
    let player = || name(raw.player.ok_or_else(|| need("player"))?, "player");
    let stake = |v: Option<i64>, what: &str| {
        v.filter(|a| (1..=MONEY_MAX).contains(a))
            .ok_or_else(|| format!("{kind}: {what} {v:?} is not a stake"))
    };
    let money = |v: Option<i64>, what: &str| {
        v.filter(|a| (0..=MONEY_MAX).contains(a))
            .ok_or_else(|| format!("{kind}: {what} {v:?} is not an amount"))
    };
    let body = match kind {
        Kind::RoundOpened => Body::RoundOpened {
            closes_at: raw
                .closes_at
                .and_then(Time::parse)
                .ok_or_else(|| need("closes_at"))?,
            seed_hash: hex32(raw.seed_hash.ok_or_else(|| need("seed_hash"))?)?,
        },
        Kind::BettingClosed => Body::BettingClosed,
        Kind::OutcomeDeclared => Body::OutcomeDeclared {
            outcome: raw
                .outcome
                .filter(|o| *o < rules::POCKETS)
                .ok_or_else(|| need("an outcome 0..=36"))?,
            server_seed: hex32(raw.server_seed.ok_or_else(|| need("server_seed"))?)?,
        },
        Kind::RoundVoided => Body::RoundVoided {
            reason: raw.reason.ok_or_else(|| need("reason"))?,
        },
        Kind::BetPlaced => {
            let selection = raw.selection.ok_or_else(|| need("selection"))?;
            let numbers = selection
                .numbers
                .as_ref()
                .map_or(&[][..], Numbers::as_slice);
            Body::BetPlaced {
                bet_id: uuid(raw.bet_id.ok_or_else(|| need("bet_id"))?, "bet_id")?,
                player: player()?,
                wager: Wager::new(selection.kind, numbers, selection.index)
                    .map_err(|e| e.to_string())?,
                amount: stake(raw.amount, "amount")?,
                balance: money(raw.balance, "balance")?,
            }
        }
        Kind::BetSettled => Body::BetSettled {
            bet_id: uuid(raw.bet_id.ok_or_else(|| need("bet_id"))?, "bet_id")?,
            player: player()?,
            payout: money(raw.payout, "payout")?,
            balance: money(raw.balance, "balance")?,
        },
        Kind::BetRefunded => Body::BetRefunded {
            bet_id: uuid(raw.bet_id.ok_or_else(|| need("bet_id"))?, "bet_id")?,
            player: player()?,
            amount: stake(raw.amount, "amount")?,
            balance: money(raw.balance, "balance")?,
        },
        Kind::RoundSettled => Body::RoundSettled {
            bets: raw.bets.ok_or_else(|| need("bets"))?,
            staked: money(raw.staked, "staked")?,
            paid: money(raw.paid, "paid")?,
        },
        Kind::FundsDeposited => Body::FundsDeposited {
            player: player()?,
            deposit_id: raw
                .deposit_id
                .filter(|d| (1..=128).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_graphic()))
                .ok_or_else(|| need("a deposit_id"))?,
            amount: stake(raw.amount, "amount")?,
            balance: money(raw.balance, "balance")?,
        },
        Kind::BettingSwitched => Body::BettingSwitched {
            betting: match raw.betting {
                Some("enabled") => Switch::Enabled,
                Some("disabled") => Switch::Disabled,
                Some(other) => {
                    return Err(format!(
                        "{kind}: betting {other:?} is neither \"enabled\" nor \"disabled\""
                    ));
                }
                None => return Err(need("betting")),
            },
            reason: raw.reason.ok_or_else(|| need("reason"))?,
            by: raw.by.ok_or_else(|| need("by"))?,
        },
    };
    Ok(Event {
        kind,
        id,
        at,
        table,
        round,
        body,
    })
}

fn uuid(s: &str, what: &str) -> Result<Uuid, String> {
    Uuid::try_parse(s).map_err(|_| format!("{what} {s:?} is not a UUID"))
}

/// Table and player ids: `[A-Za-z0-9_-]{1,64}`.
fn name<'a>(s: &'a str, what: &str) -> Result<&'a str, String> {
    let ok = (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then_some(s)
        .ok_or_else(|| format!("{what} {s:?} is not an id"))
}

/// 64 lowercase hex digits.
fn hex32(s: &str) -> Result<[u8; 32], String> {
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("{s:?} is not 64 lowercase hex digits"));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| format!("{s:?} is not hex"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The audit reads what the services write: every kind, encoded by `protocol`.
    #[test]
    fn every_kind_the_services_write_decodes_to_the_same_fields() {
        use domain::{BetId, Money, Outcome, PlayerId, RoundId, Selection, ServerSeed, TableId};
        use protocol::{BetPlaced, DepositId, FundsDeposited, OutcomeDeclared, RoundOpened};
        let at = domain::Timestamp::from_unix_micros(1_700_000_000_123_456).expect("time");
        let seed = ServerSeed::from_bytes([9; 32]);
        let t = TableId::parse("t-1").expect("table");
        let bet = BetId::from_uuid(Uuid::new_v4());
        let events = [
            protocol::Event::new(
                Uuid::new_v4(),
                at,
                RoundOpened {
                    table: t.clone(),
                    round: RoundId::new(7).expect("round"),
                    closes_at: at,
                    seed_hash: seed.hash(),
                },
            ),
            protocol::Event::new(
                Uuid::new_v4(),
                at,
                OutcomeDeclared {
                    table: t.clone(),
                    round: RoundId::new(7).expect("round"),
                    outcome: Outcome::new(17).expect("pocket"),
                    server_seed: seed.clone(),
                },
            ),
            protocol::Event::new(
                Uuid::new_v4(),
                at,
                BetPlaced {
                    table: t.clone(),
                    round: RoundId::new(7).expect("round"),
                    bet_id: bet,
                    player: PlayerId::parse("ann").expect("player"),
                    selection: Selection::parse(domain::RawSelection::Corner {
                        numbers: vec![1, 2, 4, 5],
                    })
                    .expect("corner"),
                    amount: Money::new(40).expect("money"),
                    balance: Money::new(960).expect("money"),
                },
            ),
            protocol::Event::new(
                Uuid::new_v4(),
                at,
                FundsDeposited {
                    table: None,
                    player: PlayerId::parse("ann").expect("player"),
                    deposit_id: DepositId::parse("d-1").expect("id"),
                    amount: Money::new(1000).expect("money"),
                    balance: Money::new(1000).expect("money"),
                },
            ),
        ];
        for event in &events {
            let bytes = protocol::encode_event(event).expect("encode");
            let ours = decode(&bytes).expect("decodes");
            assert_eq!(ours.id, event.id);
            assert_eq!(ours.kind.as_str(), event.kind());
            assert_eq!(ours.at.as_str(), event.at.to_string());
            assert_eq!(ours.table, event.table().map(|t| t.as_str()));
            assert_eq!(ours.round, event.round().map(|r| r.get()));
            let subject = protocol::subject_for(event).expect("published");
            assert_eq!(ours.subject(), subject);
            assert!(ours.published_on(&subject));
            assert!(!ours.published_on("table.t-1.other"));
        }
        let bytes = protocol::encode_event(&events[2]).expect("encode");
        let placed = decode(&bytes).expect("bet");
        match placed.body {
            Body::BetPlaced {
                bet_id,
                wager,
                amount,
                balance,
                ..
            } => {
                assert_eq!(bet_id, *bet.as_uuid());
                assert_eq!((amount, balance), (40, 960));
                assert_eq!(wager.payout(40, 5), Some(360));
            }
            other => panic!("{other:?}"),
        }
        let bytes = protocol::encode_event(&events[1]).expect("encode");
        let declared = decode(&bytes).expect("outcome");
        assert_eq!(
            declared.body,
            Body::OutcomeDeclared {
                outcome: 17,
                server_seed: [9; 32]
            }
        );
    }

    /// An operator's switch, as `croupier betting` writes it, of one table and of every table.
    #[test]
    fn an_operator_switch_decodes_with_its_table_or_none_and_is_never_published() {
        use protocol::{Betting, BettingSwitched};
        let at = domain::Timestamp::from_unix_micros(1_700_000_000_000_001).expect("time");
        for (table, betting, switch) in [
            (Some("roulette-1"), Betting::Disabled, Switch::Disabled),
            (None, Betting::Enabled, Switch::Enabled),
        ] {
            let event = protocol::Event::new(
                Uuid::new_v4(),
                at,
                BettingSwitched {
                    table: table.map(|t| domain::TableId::parse(t).expect("table")),
                    betting,
                    reason: "wheel serviced".into(),
                    by: "dana".into(),
                },
            );
            let bytes = protocol::encode_event(&event).expect("encode");
            let ours = decode(&bytes).expect("decodes");
            assert_eq!(ours.kind, Kind::BettingSwitched);
            assert_eq!(ours.id, event.id);
            assert_eq!(ours.at.as_str(), "2023-11-14T22:13:20.000001Z");
            assert_eq!(ours.table, table);
            assert_eq!(ours.round, None);
            assert_eq!(ours.player(), None);
            assert_eq!(
                ours.body,
                Body::BettingSwitched {
                    betting: switch,
                    reason: "wheel serviced",
                    by: "dana"
                }
            );
            assert!(!ours.kind.published() && !ours.kind.by_gms());
            assert_eq!(ours.subject(), "");
            assert!(!ours.published_on("table.roulette-1.round"));
        }
    }

    #[test]
    fn an_operator_switch_without_its_fields_is_refused() {
        let event = |fields: serde_json::Value| {
            let mut map = serde_json::json!({
                "kind": "betting_switched",
                "id": "0190f5a2-7c1e-7000-8000-00000000000a",
                "v": 1,
                "at": "2026-11-25T22:40:00.000000Z",
            });
            for (k, v) in fields.as_object().expect("fields") {
                map[k] = v.clone();
            }
            rmp_serde::to_vec_named(&map).expect("encode")
        };
        let whole =
            serde_json::json!({"table": null, "betting": "disabled", "reason": "r", "by": "b"});
        assert!(decode(&event(whole.clone())).is_ok());
        for (field, bad) in [
            ("betting", serde_json::json!("maybe")),
            ("table", serde_json::json!("a b")),
            ("reason", serde_json::json!(7)),
        ] {
            let mut fields = whole.clone();
            fields[field] = bad;
            assert!(decode(&event(fields)).is_err(), "{field}");
        }
        for missing in ["table", "betting", "reason", "by"] {
            let mut fields = whole.clone();
            fields.as_object_mut().expect("map").remove(missing);
            let error = decode(&event(fields)).expect_err(missing);
            assert!(error.contains(missing), "{missing}: {error}");
        }
    }

    /// A map of `(key, value)` pairs in the order given, duplicates included.
    fn map_of(fields: &[(&str, serde_json::Value)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        rmp::encode::write_map_len(&mut bytes, fields.len() as u32).expect("len");
        for (key, value) in fields {
            rmp::encode::write_str(&mut bytes, key).expect("key");
            bytes.extend(rmp_serde::to_vec(value).expect("value"));
        }
        bytes
    }

    fn settled_fields() -> Vec<(&'static str, serde_json::Value)> {
        use serde_json::json;
        vec![
            ("kind", json!("bet_settled")),
            ("id", json!("7f0c9a52-3d5e-4d6c-9a3b-1f2e3d4c5b6a")),
            ("v", json!(1)),
            ("at", json!("2026-12-05T07:45:53.432856Z")),
            ("table", json!("roulette-1")),
            ("round", json!(7)),
            ("bet_id", json!("0b6e1c2d-3e4f-4a5b-8c7d-9e0f1a2b3c4d")),
            ("player", json!("p-1")),
            ("payout", json!(360)),
            ("balance", json!(1320)),
        ]
    }

    #[test]
    fn fields_are_read_in_any_order_unknown_ones_skipped_and_duplicates_refused() {
        use serde_json::json;
        let fields = settled_fields();
        let reference = map_of(&fields);
        let expected = decode(&reference).expect("decodes");
        let mut reversed = fields.clone();
        reversed.reverse();
        reversed.insert(3, ("later", json!({"nested": [1, [2, "x"]], "n": null})));
        let reordered = map_of(&reversed);
        assert_eq!(decode(&reordered).expect("decodes"), expected);
        let glanced = glance(&reordered).expect("glances");
        assert_eq!(
            (
                glanced.kind,
                glanced.id,
                glanced.at,
                glanced.table,
                glanced.player
            ),
            (
                expected.kind,
                expected.id,
                expected.at,
                expected.table,
                expected.player()
            )
        );
        assert_eq!(glance_at(&reordered), Some(expected.at));
        assert!(glanced.published_on("player.p-1.wallet"));
        assert!(!glanced.published_on("player.p-2.wallet"));

        let mut twice = fields.clone();
        twice.push(("payout", json!(0)));
        let error = decode(&map_of(&twice)).expect_err("a field twice");
        assert!(error.contains("duplicate field payout"), "{error}");

        let mut trailing = reference.clone();
        trailing.push(0xc0);
        assert!(decode(&trailing).is_err());

        for (field, value, says) in [
            ("payout", json!(-1), "not an amount"),
            ("payout", json!("360"), "an integer expected"),
            ("round", json!(-7), "negative"),
            ("kind", json!(3), "a string expected"),
        ] {
            let mut bad = fields.clone();
            bad.retain(|(k, _)| *k != field);
            bad.push((field, value));
            let error = decode(&map_of(&bad)).expect_err(field);
            assert!(error.contains(says), "{field}: {error}");
        }
        let mut without = fields.clone();
        without.retain(|(k, _)| *k != "at");
        assert!(
            decode(&map_of(&without))
                .expect_err("no at")
                .contains("missing field at")
        );
        assert!(glance(&map_of(&without)).is_err());
    }

    #[test]
    fn malformed_events_are_refused_with_a_reason() {
        for bad in [
            &b""[..],
            &[0x92, 0x01, 0x02][..], // an array
            &[0x81, 0xa4, b'k', b'i', b'n', b'd', 0xa3, b'x', b'y', b'z'][..],
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        assert!(Time::parse("2026-12-05T07:45:53.432856Z").is_some());
        assert!(Time::parse("2026-12-05T07:45:53Z").is_none());
        assert!(Time::parse("2026-12-05 07:45:53.432856Z").is_none());
        assert!(
            Time::parse("2026-12-05T07:45:53.432856Z") < Time::parse("2026-12-05T07:45:53.432857Z")
        );
    }
}

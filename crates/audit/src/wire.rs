//! The events' wire form read by the audit itself, from the contract (a MessagePack map of the
//! event object, `docs/contract/events.md`): one pass over the bytes into a flat, borrowed
//! view, checked field by field. It is about ten times cheaper than the services' typed decoder
//! (which buffers each object and reads it twice), and a replay decodes every event twice (the
//! store's copy and the bus's).
//!
//! Times stay the strings the contract fixes (`YYYY-MM-DDTHH:MM:SS.ffffffZ`, UTC, microseconds):
//! checked for that shape, they order correctly as text, and the audit only compares and prints
//! them.

use std::fmt;

use serde::Deserialize;
use uuid::Uuid;

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
#[derive(Debug, Deserialize)]
struct RawSelection<'a> {
    #[serde(borrow)]
    kind: &'a str,
    #[serde(default)]
    numbers: Option<Vec<u8>>,
    #[serde(default)]
    index: Option<u8>,
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

/// A field that may be missing (the outer `None`), `null` (`Some(None)`) or a string.
fn present<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<&'a str>>, D::Error> {
    Option::<&'a str>::deserialize(deserializer).map(Some)
}

/// Every field any event kind has, in one map.
#[derive(Debug, Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    kind: &'a str,
    #[serde(borrow)]
    id: &'a str,
    #[serde(borrow)]
    at: &'a str,
    /// Missing, `null` (`betting_switched` of every table) or a table id.
    #[serde(default, borrow, deserialize_with = "present")]
    table: Option<Option<&'a str>>,
    #[serde(default)]
    round: Option<u64>,
    #[serde(default, borrow)]
    closes_at: Option<&'a str>,
    #[serde(default, borrow)]
    seed_hash: Option<&'a str>,
    #[serde(default)]
    outcome: Option<u8>,
    #[serde(default, borrow)]
    server_seed: Option<&'a str>,
    #[serde(default, borrow)]
    reason: Option<&'a str>,
    #[serde(default, borrow)]
    bet_id: Option<&'a str>,
    #[serde(default, borrow)]
    player: Option<&'a str>,
    #[serde(default, borrow)]
    selection: Option<RawSelection<'a>>,
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default)]
    balance: Option<i64>,
    #[serde(default)]
    payout: Option<i64>,
    #[serde(default)]
    bets: Option<u64>,
    #[serde(default)]
    staked: Option<i64>,
    #[serde(default)]
    paid: Option<i64>,
    #[serde(default, borrow)]
    deposit_id: Option<&'a str>,
    #[serde(default, borrow)]
    betting: Option<&'a str>,
    #[serde(default, borrow)]
    by: Option<&'a str>,
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
        if !self.kind.published() {
            return false;
        }
        let (name, last) = match (self.player(), self.table) {
            (Some(player), _) => (player, "wallet"),
            (None, Some(table)) if self.kind == Kind::RoundSettled => (table, "result"),
            (None, Some(table)) => (table, "round"),
            (None, None) => return false,
        };
        let first = if self.player().is_some() {
            "player."
        } else {
            "table."
        };
        subject
            .strip_prefix(first)
            .and_then(|rest| rest.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix('.'))
            == Some(last)
    }
}

/// Largest amount of money the contract allows: 2^53 − 1 minor units.
const MONEY_MAX: i64 = 9_007_199_254_740_991;

/// Decodes and checks one event: every field its kind needs, of the contract's shape.
pub fn decode(bytes: &[u8]) -> Result<Event<'_>, String> {
    // A map, as every event is (not a positional array, which serde would also take).
    if !bytes
        .first()
        .is_some_and(|b| matches!(b, 0x80..=0x8f | 0xde | 0xdf))
    {
        return Err("not a MessagePack map".into());
    }
    let raw: Raw<'_> = rmp_serde::from_slice(bytes).map_err(|e| e.to_string())?;
    let kind = Kind::parse(raw.kind).ok_or_else(|| format!("unknown kind {:?}", raw.kind))?;
    let id = uuid(raw.id, "id")?;
    let at =
        Time::parse(raw.at).ok_or_else(|| format!("at {:?} is not a contract time", raw.at))?;
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
            let numbers = selection.numbers.as_deref().unwrap_or(&[]);
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

//! Operator controls (issue 16, ADR 0020): `croupier betting off|on` and `croupier round void`.
//!
//! - `betting off|on` writes key `operator` of the `status` bucket (`docs/contract/bus.md`);
//!   every GS turns it into the betting status (disabled, reason `operator`) within about a
//!   second, and gateways tell their clients.
//! - `round void` voids a round that has not reached its outcome: it publishes `round_voided`
//!   on the table's subject exactly as GMS would (Msg-Id `<table>:<round>:round_voided`,
//!   guarded by the subject's last sequence, so it is refused if the round moved on meanwhile).
//!   The table's GMS leader, whose next publish then meets a newer sequence, reads the table
//!   again and goes on with the next round; GS records the event and refunds the round's bets.
//!   The reason names the operator, so `croupier replay` shows who voided what and when.

use anyhow::{Context, bail};
use bus::{Bus, Kv, Publish, PublishError};
use clap::{Args, Subcommand, ValueEnum};
use domain::{RoundId, TableId, Timestamp};
use protocol::{Betting, BettingStatus, Encoding, Event, EventBody, RoundVoided};

use crate::config::Resolved;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    Off,
    On,
}

#[derive(Debug, Args)]
pub struct BettingArgs {
    /// `off` stops bets on every table (rounds go on); `on` lifts an operator's stop.
    pub switch: Switch,
    /// Why, for the record (kept in the `status` bucket with who and when).
    #[arg(long)]
    pub reason: String,
    /// Who switches (default: `$USER`).
    #[arg(long)]
    pub by: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum RoundCommand {
    /// Void a round that has not reached its outcome: its bets are refunded.
    Void(VoidArgs),
}

#[derive(Debug, Args)]
pub struct VoidArgs {
    #[arg(long)]
    pub table: String,
    #[arg(long)]
    pub round: u64,
    /// Why, for the record (in the `round_voided` event, with who).
    #[arg(long)]
    pub reason: String,
    /// Who voids (default: `$USER`).
    #[arg(long)]
    pub by: Option<String>,
}

fn operator_name(by: Option<&str>) -> String {
    by.map(str::to_string)
        .or_else(|| std::env::var("USER").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "operator".into())
}

fn now() -> Timestamp {
    Timestamp::from_offset_datetime(time::OffsetDateTime::now_utc())
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

async fn connect(settings: &Resolved) -> anyhow::Result<bus::NatsBus> {
    let bus = bus::NatsBus::connect(
        &settings.nats_url,
        &settings.nats_prefix,
        bus::NatsOptions::default(),
    )
    .await
    .with_context(|| format!("connect to NATS at {}", settings.nats_url))?;
    bus.setup(&bus::Definitions::croupier())
        .await
        .context("create the streams and buckets")?;
    Ok(bus)
}

/// `croupier betting off|on`.
pub async fn betting(args: BettingArgs, settings: &Resolved) -> anyhow::Result<()> {
    if args.reason.trim().is_empty() {
        bail!("--reason must say why");
    }
    let bus = connect(settings).await?;
    let by = operator_name(args.by.as_deref());
    let status = BettingStatus {
        betting: match args.switch {
            Switch::Off => Betting::Disabled,
            Switch::On => Betting::Enabled,
        },
        reason: format!("{by}: {}", args.reason.trim()),
        at: now(),
    };
    let kv = bus
        .kv(protocol::subject::STATUS_BUCKET)
        .await
        .context("the status bucket")?;
    kv.put(
        protocol::subject::STATUS_OPERATOR_KEY,
        Encoding::MsgPack.encode(&status)?,
    )
    .await
    .context("write the operator's switch")?;
    tracing::info!(betting = status.betting.as_str(), reason = %status.reason, "operator switched betting");
    println!(
        "betting switched {} by {by} ({}); GS applies it within about a second",
        status.betting.as_str(),
        args.reason.trim()
    );
    Ok(())
}

/// `croupier round void`.
pub async fn void(args: VoidArgs, settings: &Resolved) -> anyhow::Result<()> {
    let table = TableId::parse(&args.table)
        .map_err(|e| anyhow::anyhow!("--table {:?}: {e}", args.table))?;
    let round = RoundId::new(args.round).map_err(|e| anyhow::anyhow!("--round: {e}"))?;
    if args.reason.trim().is_empty() {
        bail!("--reason must say why");
    }
    let by = operator_name(args.by.as_deref());
    let bus = connect(settings).await?;
    let subject = protocol::subject::table_round_subject(&table);
    for _ in 0..3 {
        let last = bus
            .last_message(protocol::subject::TABLES_STREAM, &subject)
            .await
            .context("read the table's last transition")?
            .with_context(|| format!("table {table} has no rounds"))?;
        let event = protocol::decode_event(&last.payload).context("decode the last transition")?;
        let (current, in_progress) = match &event.body {
            EventBody::RoundOpened(e) => (e.round, true),
            EventBody::BettingClosed(e) => (e.round, true),
            EventBody::OutcomeDeclared(e) => (e.round, false),
            EventBody::RoundVoided(e) => (e.round, false),
            _ => bail!("unexpected event {} on {subject}", event.kind()),
        };
        if current != round || !in_progress {
            bail!(
                "round {round} of {table} is not in progress (the table's last transition is {} of round {current}): only a round before its outcome can be voided",
                event.kind()
            );
        }
        let voided = Event::new(
            uuid::Uuid::new_v4(),
            now(),
            EventBody::RoundVoided(RoundVoided {
                table: table.clone(),
                round,
                reason: format!("voided by operator {by}: {}", args.reason.trim()),
            }),
        );
        let payload = protocol::encode_event(&voided)?;
        let msg_id = protocol::gms_msg_id(&voided).context("the event's message id")?;
        let publish = Publish::new(subject.clone(), payload)
            .msg_id(msg_id)
            .expected_last_subject_seq(last.seq);
        match bus.publish(publish).await {
            Ok(published) if published.duplicate => {
                println!("round {round} of {table} was voided already");
                return Ok(());
            }
            Ok(published) => {
                println!(
                    "round {round} of {table} voided by {by} (stream sequence {}); GS refunds its bets",
                    published.seq
                );
                return Ok(());
            }
            // The round moved on (GMS published) between our read and our write: look again.
            Err(PublishError::WrongLastSequence { .. }) => continue,
            Err(error) => return Err(error).context("publish round_voided"),
        }
    }
    bail!("the table kept moving; try again")
}

//! Operator controls (issue 16, ADR 0020, 0022): `croupier betting off|on` and
//! `croupier round void`.
//!
//! - `betting off|on` writes key `operator` of the `status` bucket (`docs/contract/bus.md`);
//!   every GS turns it into the betting status (disabled, reason `operator`) within about a
//!   second, and gateways tell their clients. With `--table T` it writes key `operator.<T>`
//!   instead: GS refuses that table's bets `BETTING_UNAVAILABLE` and the status stays as it is.
//!   Then it records the switch as a `betting_switched` event in the event store (stream
//!   `operator`, ADR 0022), so that a replay shows who switched what and when. The key comes
//!   first: an operator may switch betting off *because* the database is failing, and the
//!   switch must work then. If the record fails the command says so and exits non-zero; running
//!   it again is safe (the key is written again with the same value, and the record is made,
//!   as a second action: nothing tries to tell a retry from a new switch).
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
use protocol::{Betting, BettingStatus, BettingSwitched, Encoding, Event, EventBody, RoundVoided};
use store::{Conflict, NewEvent, StoreError};

use crate::config::Resolved;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    Off,
    On,
}

/// The event store's stream of operators' switches (`docs/contract/event-store.md`).
pub const OPERATOR_STREAM: &str = "operator";

/// Attempts to record a switch when another operator's record takes the same stream version.
const RECORD_ATTEMPTS: usize = 3;

#[derive(Debug, Args)]
pub struct BettingArgs {
    /// `off` stops bets on every table, or on `--table` (rounds go on); `on` lifts that stop.
    pub switch: Switch,
    /// Only this table (default: every table). A table's switch is separate from the switch of
    /// every table: `on --table T` lifts only `off --table T`.
    #[arg(long)]
    pub table: Option<String>,
    /// Why, for the record (kept in the `status` bucket and in the `betting_switched` event,
    /// with who and when).
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
    bus.setup(&settings.definitions())
        .await
        .context("create the streams and buckets")?;
    Ok(bus)
}

/// `croupier betting off|on [--table T]`.
pub async fn betting(args: BettingArgs, settings: &Resolved) -> anyhow::Result<()> {
    let reason = args.reason.trim().to_string();
    if reason.is_empty() {
        bail!("--reason must say why");
    }
    let table = args
        .table
        .as_deref()
        .map(TableId::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--table {:?}: {e}", args.table.as_deref().unwrap_or("")))?;
    let by = operator_name(args.by.as_deref());
    let betting = match args.switch {
        Switch::Off => Betting::Disabled,
        Switch::On => Betting::Enabled,
    };
    let switched = match args.switch {
        Switch::Off => "off",
        Switch::On => "on",
    };
    let what = table
        .as_ref()
        .map_or("every table".to_string(), |t| format!("table {t}"));
    let at = now();

    // The switch itself first: it must work while the database does not.
    let bus = connect(settings).await?;
    let status = BettingStatus {
        betting,
        reason: format!("{by}: {reason}"),
        at,
    };
    let key = table.as_ref().map_or_else(
        || protocol::subject::STATUS_OPERATOR_KEY.to_string(),
        protocol::subject::status_operator_table_key,
    );
    let kv = bus
        .kv(protocol::subject::STATUS_BUCKET)
        .await
        .context("the status bucket")?;
    kv.put(&key, Encoding::MsgPack.encode(&status)?)
        .await
        .context("write the operator's switch")?;
    tracing::info!(betting = betting.as_str(), table = ?table.as_ref().map(TableId::as_str), reason = %status.reason, "operator switched betting");
    let applies = if table.is_some() {
        "GS refuses or takes its bets again within about a second"
    } else {
        "GS applies it within about a second"
    };
    println!("betting switched {switched} for {what} by {by} ({reason}); {applies}");

    // Then its record, for the audit.
    let event = Event::new(
        uuid::Uuid::new_v4(),
        at,
        BettingSwitched {
            table,
            betting,
            reason,
            by,
        },
    );
    match record(settings, &event).await {
        Ok(position) => {
            println!(
                "recorded in the event store at position {position} (event {})",
                event.id
            );
            Ok(())
        }
        Err(error) => bail!(
            "betting switched {switched} for {what}, but NOT recorded in the event store: {error:#} \
             (run the same command again once the database answers; the switch is idempotent)"
        ),
    }
}

/// Appends `event` as the next version of stream `operator`; returns its position.
async fn record(settings: &Resolved, event: &Event) -> anyhow::Result<i64> {
    let store = crate::open_store(settings)?;
    store.migrate().await.context("apply migrations")?;
    let data = protocol::encode_event(event).context("encode the event")?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut client = store.client().await.context("connect to the event store")?;
        let appended = store
            .timed("record the operator's switch", async {
                let tx = client.transaction().await?;
                let version = store::next_version(&*tx, OPERATOR_STREAM).await?;
                let appended = store::append(
                    &tx,
                    &[NewEvent {
                        event_id: event.id,
                        stream: OPERATOR_STREAM.to_string(),
                        version,
                        kind: event.kind().to_string(),
                        data: data.clone(),
                        metadata: bytes::Bytes::new(),
                    }],
                )
                .await?;
                tx.commit().await?;
                Ok::<_, StoreError>(appended)
            })
            .await;
        match appended {
            Ok(appended) => {
                return appended
                    .first()
                    .map(|a| a.position)
                    .context("the store appended nothing");
            }
            // Another operator's switch took that version first: take the next one.
            Err(StoreError::Conflict(Conflict::VersionConflict { .. }))
                if attempt < RECORD_ATTEMPTS =>
            {
                continue;
            }
            Err(error) => {
                if error.is_unavailable() {
                    store::Store::discard(client);
                }
                return Err(error).context("append betting_switched to stream operator");
            }
        }
    }
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

//! `--check-delivery`: which messages each client missed or got twice on the channels it
//! followed, judged against what JetStream holds once the run is over.
//!
//! A channel's `seq` is the stream sequence of its message, and the stream carries other
//! channels too, so the sequences one client receives are not contiguous and a set per client
//! per message would cost memory proportional to clients × messages. Instead each client keeps
//! [`Received`]: runs of sequences received in increasing order on one connection, each run
//! its first and last sequence and how many it holds. A clean client holds one run per
//! connection. After the run the stream's messages of each channel are listed once, and a run
//! that holds fewer sequences than the channel has between its ends missed the difference.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use bus::Bus;
use futures_util::StreamExt;

/// Sequences received on one connection in increasing order: `count` of the channel's
/// messages from `first` to `last`, both received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    pub first: u64,
    pub last: u64,
    pub count: u64,
}

/// What one client received on one channel.
#[derive(Debug, Default)]
pub(super) struct Received {
    /// Ordered, not overlapping.
    runs: Vec<Run>,
    /// The last run grows with the next sequence above it (same connection).
    open: bool,
    high: u64,
}

impl Received {
    /// Counts `seq` as received; `false` when it was received already (doubled).
    ///
    /// A sequence at or below the highest one received is a duplicate if a run spans it: on
    /// one connection the gateway sends a channel in order, and a resume asks only for what
    /// follows the last sequence received. One in no run's span arrived late, out of order,
    /// and is kept as a run of its own.
    pub fn record(&mut self, seq: u64) -> bool {
        if seq > self.high || self.runs.is_empty() {
            self.high = seq;
            match self.runs.last_mut() {
                Some(run) if self.open => {
                    run.last = seq;
                    run.count += 1;
                }
                _ => {
                    self.runs.push(Run {
                        first: seq,
                        last: seq,
                        count: 1,
                    });
                    self.open = true;
                }
            }
            return true;
        }
        let at = self.runs.partition_point(|run| run.last < seq);
        if self.runs.get(at).is_some_and(|run| run.first <= seq) {
            return false;
        }
        self.runs.insert(
            at,
            Run {
                first: seq,
                last: seq,
                count: 1,
            },
        );
        true
    }

    /// A new connection: what it delivers starts a new run (what came between the two
    /// connections is judged against the stream, not assumed received).
    pub fn new_connection(&mut self) {
        self.open = false;
    }

    pub fn runs(&self) -> &[Run] {
        &self.runs
    }
}

/// One client's account of one channel, handed to the report when the client is done.
#[derive(Debug)]
pub(super) struct Record {
    pub channel: std::sync::Arc<str>,
    /// The first sequence it was responsible for: its first `subscribed.seq` + 1.
    pub from: u64,
    /// Where its responsibility ended if it left before the run did (it gave up reconnecting):
    /// the last sequence it had. `None`: up to where the channel stood when the run stopped.
    pub left_at: Option<u64>,
    pub runs: Vec<Run>,
}

/// Messages of one channel in `from..=to` (`channel` ascending), and how many of them one
/// client missed, given its runs.
pub(super) fn missed(channel: &[u64], from: u64, to: u64, runs: &[Run]) -> (u64, u64) {
    let within = |a: u64, b: u64| -> u64 {
        if a > b {
            return 0;
        }
        (channel.partition_point(|&s| s <= b) - channel.partition_point(|&s| s < a)) as u64
    };
    let expected = within(from, to);
    let mut covered = 0;
    let mut short = 0;
    for run in runs {
        // A run is whole when it holds every message of the channel between its ends; a
        // sequence it holds that the stream does not have (none should) hides no miss.
        short += within(run.first, run.last).saturating_sub(run.count);
        covered += within(run.first.max(from), run.last.min(to));
    }
    (expected, expected.saturating_sub(covered) + short)
}

/// Where each channel stands now: the sequence of its last message (0 if it has none).
/// `tables` are table ids, `players` player ids.
pub(super) async fn channel_lasts(
    bus: &bus::NatsBus,
    tables: &[String],
    players: &[String],
) -> anyhow::Result<HashMap<String, u64>> {
    let mut lasts = HashMap::new();
    for table in tables {
        let id = domain::TableId::parse(table).map_err(|e| anyhow::anyhow!("{table}: {e}"))?;
        let mut last = 0;
        for subject in [
            protocol::subject::table_round_subject(&id),
            protocol::subject::table_result_subject(&id),
        ] {
            let message = bus
                .last_message(protocol::subject::TABLES_STREAM, &subject)
                .await
                .with_context(|| format!("the last message on {subject}"))?;
            last = last.max(message.map_or(0, |m| m.seq));
        }
        lasts.insert(format!("table.{table}"), last);
    }
    for player in players {
        let id = domain::PlayerId::parse(player).map_err(|e| anyhow::anyhow!("{player}: {e}"))?;
        let subject = protocol::subject::player_wallet_subject(&id);
        let message = bus
            .last_message(protocol::subject::PLAYERS_STREAM, &subject)
            .await
            .with_context(|| format!("the last message on {subject}"))?;
        lasts.insert(format!("player.{player}"), message.map_or(0, |m| m.seq));
    }
    Ok(lasts)
}

/// The verdict over every client's records.
#[derive(Debug, Default)]
pub(super) struct Verdict {
    /// Client-channel pairs judged.
    pub followed: u64,
    /// Messages the clients were responsible for, summed over them.
    pub expected: u64,
    pub missed: u64,
}

/// How long listing a stream may take before the check gives up on it.
const LIST_DEADLINE: Duration = Duration::from_secs(60);

/// Lists the streams' messages of every channel followed (each stream read once, from the
/// lowest sequence any client was responsible for) and judges each record. `stops` is where
/// each channel stood when the run stopped ([`channel_lasts`]).
pub(super) async fn judge(
    bus: &bus::NatsBus,
    records: &[Record],
    stops: &HashMap<String, u64>,
) -> anyhow::Result<Verdict> {
    let mut channels: HashMap<&str, Vec<u64>> = records
        .iter()
        .map(|r| (r.channel.as_ref(), Vec::new()))
        .collect();
    for (stream, subjects, prefix) in [
        (
            protocol::subject::TABLES_STREAM,
            protocol::subject::TABLES_SUBJECTS,
            "table.",
        ),
        (
            protocol::subject::PLAYERS_STREAM,
            protocol::subject::PLAYERS_SUBJECTS,
            "player.",
        ),
    ] {
        let Some(from) = records
            .iter()
            .filter(|r| r.channel.starts_with(prefix))
            .map(|r| r.from)
            .min()
        else {
            continue;
        };
        let list = list(bus, stream, subjects, from, &mut channels);
        tokio::time::timeout(LIST_DEADLINE, list)
            .await
            .with_context(|| format!("listing stream {stream} took over {LIST_DEADLINE:?}"))??;
    }
    let mut verdict = Verdict::default();
    for record in records {
        let to = record
            .left_at
            .unwrap_or_else(|| stops.get(record.channel.as_ref()).copied().unwrap_or(0));
        let seqs = channels
            .get(record.channel.as_ref())
            .map_or(&[][..], Vec::as_slice);
        let (expected, missed) = missed(seqs, record.from, to, &record.runs);
        verdict.followed += 1;
        verdict.expected += expected;
        verdict.missed += missed;
    }
    Ok(verdict)
}

/// Reads `stream` from `from` to its last sequence now, keeping the sequence of each message
/// of a channel in `channels` that the gateway would relay (it skips what does not decode).
async fn list(
    bus: &bus::NatsBus,
    stream: &str,
    subjects: &str,
    from: u64,
    channels: &mut HashMap<&str, Vec<u64>>,
) -> anyhow::Result<()> {
    let state = bus
        .stream_state(stream)
        .await
        .with_context(|| format!("stream {stream}"))?;
    if state.last_seq < from.max(state.first_seq) {
        return Ok(());
    }
    let mut messages = bus
        .replay(stream, subjects, from)
        .await
        .with_context(|| format!("read stream {stream}"))?;
    while let Some(message) = messages.next().await {
        let message = message.with_context(|| format!("read stream {stream}"))?;
        // `table.<t>.round` / `.result` is channel `table.<t>`; `player.<p>.wallet`,
        // `player.<p>`.
        if let Some((channel, _)) = message.subject.rsplit_once('.')
            && let Some(seqs) = channels.get_mut(channel)
            && protocol::decode_event(&message.payload).is_ok()
        {
            seqs.push(message.seq);
        }
        if message.seq >= state.last_seq {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(seqs: &[u64]) -> (Received, u64) {
        let mut received = Received::default();
        let doubled = seqs.iter().filter(|&&s| !received.record(s)).count() as u64;
        (received, doubled)
    }

    #[test]
    fn a_clean_client_holds_one_run_and_misses_nothing() {
        // The channel's messages are not contiguous in the stream.
        let channel = [3, 5, 6, 10, 12];
        let (r, doubled) = received(&[5, 6, 10, 12]);
        assert_eq!(doubled, 0);
        assert_eq!(r.runs().len(), 1);
        assert_eq!(missed(&channel, 4, 12, r.runs()), (4, 0));
    }

    #[test]
    fn a_message_left_out_is_missed_and_one_received_twice_is_doubled() {
        let channel: Vec<u64> = (1..=9).collect();
        let (r, doubled) = received(&[1, 2, 3, 4, 5, 7, 8, 9]);
        assert_eq!(doubled, 0);
        assert_eq!(missed(&channel, 1, 9, r.runs()), (9, 1));

        let (r, doubled) = received(&[1, 2, 3, 4, 5, 4, 6, 7, 8, 9]);
        assert_eq!(doubled, 1);
        assert_eq!(missed(&channel, 1, 9, r.runs()), (9, 0));
    }

    #[test]
    fn what_came_between_two_connections_is_missed_unless_resumed() {
        let channel: Vec<u64> = (1..=10).collect();
        let mut r = Received::default();
        for s in 1..=4 {
            assert!(r.record(s));
        }
        r.new_connection();
        // Not recovered: the new connection goes on from 7; 5 and 6 are lost.
        for s in 7..=10 {
            assert!(r.record(s));
        }
        assert_eq!(r.runs().len(), 2);
        assert_eq!(missed(&channel, 1, 10, r.runs()), (10, 2));
        // A resume that replays 4 again doubles it.
        assert!(!r.record(4));
        // 5 arriving late is no duplicate, and no longer missed.
        assert!(r.record(5));
        assert_eq!(missed(&channel, 1, 10, r.runs()), (10, 1));
    }

    #[test]
    fn responsibility_ends_where_the_client_left_or_the_run_stopped() {
        let channel: Vec<u64> = (1..=10).collect();
        let (r, _) = received(&[3, 4, 5]);
        // Subscribed at 2, left at 5: nothing missed.
        assert_eq!(missed(&channel, 3, 5, r.runs()), (3, 0));
        // Stayed until 8 but received nothing after 5: 6, 7 and 8 missed.
        assert_eq!(missed(&channel, 3, 8, r.runs()), (6, 3));
        // Nothing received at all.
        assert_eq!(missed(&channel, 3, 8, &[]), (6, 6));
    }
}

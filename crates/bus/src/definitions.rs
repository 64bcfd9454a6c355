//! Streams, durable consumers and key-value buckets as data. Croupier's own are declared in
//! `ops/nats/definitions/*.json` (embedded here at build time) and applied idempotently at start
//! by [`crate::Bus::setup`]; tests declare extra ones with the same types.
//!
//! Names and subjects are logical: adapters add the namespace prefix.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::BusError;
use crate::subject::{check_filter, check_name};

const STREAMS_JSON: &str = include_str!("../../../ops/nats/definitions/streams.json");
const CONSUMERS_JSON: &str = include_str!("../../../ops/nats/definitions/consumers.json");
const BUCKETS_JSON: &str = include_str!("../../../ops/nats/definitions/buckets.json");

/// Everything [`crate::Bus::setup`] creates or updates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definitions {
    #[serde(default)]
    pub streams: Vec<StreamDef>,
    #[serde(default)]
    pub consumers: Vec<ConsumerDef>,
    #[serde(default)]
    pub buckets: Vec<BucketDef>,
}

/// A JetStream stream with limits retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamDef {
    pub name: String,
    pub subjects: Vec<String>,
    #[serde(default)]
    pub storage: Storage,
    /// Messages older than this are removed; zero keeps them forever.
    #[serde(default, with = "duration_text")]
    pub max_age: Duration,
    /// Most messages kept; -1 for no limit.
    #[serde(default = "unlimited")]
    pub max_msgs: i64,
    /// Most bytes kept; -1 for no limit.
    #[serde(default = "unlimited")]
    pub max_bytes: i64,
    /// How long a msg id is remembered for dedup.
    #[serde(default = "two_minutes", with = "duration_text")]
    pub duplicate_window: Duration,
    #[serde(default = "one")]
    pub replicas: usize,
}

/// A durable pull consumer with explicit acks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerDef {
    pub stream: String,
    pub name: String,
    /// Empty: the whole stream. [`crate::Bus::consume`] may narrow it.
    #[serde(default)]
    pub filter_subject: String,
    /// A delivered message not acked within this is delivered again.
    #[serde(default = "thirty_seconds", with = "duration_text")]
    pub ack_wait: Duration,
    /// Most deliveries of one message; -1 for no limit.
    #[serde(default = "unlimited")]
    pub max_deliver: i64,
    /// Most messages delivered and not yet acked at once.
    #[serde(default = "thousand")]
    pub max_ack_pending: i64,
}

/// A key-value bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketDef {
    pub name: String,
    /// Values kept per key.
    #[serde(default = "one_i64")]
    pub history: i64,
    /// An entry not written again within this expires; zero keeps entries forever.
    #[serde(default, with = "duration_text")]
    pub max_age: Duration,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default = "one")]
    pub replicas: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

fn unlimited() -> i64 {
    -1
}
fn two_minutes() -> Duration {
    Duration::from_secs(120)
}
fn thirty_seconds() -> Duration {
    Duration::from_secs(30)
}
fn thousand() -> i64 {
    1000
}
fn one() -> usize {
    1
}
fn one_i64() -> i64 {
    1
}

impl StreamDef {
    /// A file stream on `subjects` keeping everything, with a two-minute duplicate window.
    pub fn new(name: impl Into<String>, subjects: &[&str]) -> Self {
        Self {
            name: name.into(),
            subjects: subjects.iter().map(|s| (*s).to_string()).collect(),
            storage: Storage::File,
            max_age: Duration::ZERO,
            max_msgs: -1,
            max_bytes: -1,
            duplicate_window: two_minutes(),
            replicas: 1,
        }
    }
}

impl ConsumerDef {
    pub fn new(stream: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            name: name.into(),
            filter_subject: String::new(),
            ack_wait: thirty_seconds(),
            max_deliver: -1,
            max_ack_pending: thousand(),
        }
    }
}

impl BucketDef {
    /// A file bucket keeping one value per key, forever.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            history: 1,
            max_age: Duration::ZERO,
            storage: Storage::File,
            replicas: 1,
        }
    }
}

impl Definitions {
    /// Croupier's definitions from `ops/nats/definitions/`: streams `TABLES` and `PLAYERS`,
    /// buckets `gms_leases` and `status`.
    pub fn croupier() -> Self {
        // The files are embedded at build time and checked by a unit test, so a failure here
        // is a broken build, not bad input.
        Self::from_json_parts(STREAMS_JSON, CONSUMERS_JSON, BUCKETS_JSON)
            .expect("ops/nats/definitions/*.json are valid")
    }

    /// Reads definitions from the three JSON documents (arrays of streams, consumers, buckets).
    pub fn from_json_parts(
        streams: &str,
        consumers: &str,
        buckets: &str,
    ) -> Result<Self, BusError> {
        let definitions = Self {
            streams: serde_json::from_str(streams)
                .map_err(|e| BusError::invalid("stream definitions", e.to_string()))?,
            consumers: serde_json::from_str(consumers)
                .map_err(|e| BusError::invalid("consumer definitions", e.to_string()))?,
            buckets: serde_json::from_str(buckets)
                .map_err(|e| BusError::invalid("bucket definitions", e.to_string()))?,
        };
        definitions.validate()?;
        Ok(definitions)
    }

    pub fn stream(mut self, stream: StreamDef) -> Self {
        self.streams.push(stream);
        self
    }

    pub fn consumer(mut self, consumer: ConsumerDef) -> Self {
        self.consumers.push(consumer);
        self
    }

    pub fn bucket(mut self, bucket: BucketDef) -> Self {
        self.buckets.push(bucket);
        self
    }

    pub fn stream_mut(&mut self, name: &str) -> Option<&mut StreamDef> {
        self.streams.iter_mut().find(|s| s.name == name)
    }

    pub fn bucket_mut(&mut self, name: &str) -> Option<&mut BucketDef> {
        self.buckets.iter_mut().find(|b| b.name == name)
    }

    /// Sets the replica count of every stream and bucket (3 on a three-node cluster).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        for stream in &mut self.streams {
            stream.replicas = replicas;
        }
        for bucket in &mut self.buckets {
            bucket.replicas = replicas;
        }
        self
    }

    /// Refuses bad names and subjects before anything reaches a server.
    pub fn validate(&self) -> Result<(), BusError> {
        for stream in &self.streams {
            check_name("stream name", &stream.name)?;
            if stream.subjects.is_empty() {
                return Err(BusError::invalid(
                    "stream definition",
                    format!("{} captures no subject", stream.name),
                ));
            }
            for subject in &stream.subjects {
                check_filter(subject)?;
            }
        }
        for consumer in &self.consumers {
            check_name("stream name", &consumer.stream)?;
            check_name("consumer name", &consumer.name)?;
            if !consumer.filter_subject.is_empty() {
                check_filter(&consumer.filter_subject)?;
            }
            if consumer.ack_wait.is_zero() {
                return Err(BusError::invalid(
                    "consumer definition",
                    format!("{} has a zero ack_wait", consumer.name),
                ));
            }
        }
        for bucket in &self.buckets {
            check_name("bucket name", &bucket.name)?;
            if bucket.history < 1 {
                return Err(BusError::invalid(
                    "bucket definition",
                    format!("{} must keep at least one value per key", bucket.name),
                ));
            }
        }
        Ok(())
    }
}

/// Durations as short text: `"500ms"`, `"6s"`, `"2m"`, `"1h"`, `"0"`.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        let millis = duration.as_millis();
        let text = if millis == 0 {
            "0".to_string()
        } else if millis % 3_600_000 == 0 {
            format!("{}h", millis / 3_600_000)
        } else if millis % 60_000 == 0 {
            format!("{}m", millis / 60_000)
        } else if millis % 1000 == 0 {
            format!("{}s", millis / 1000)
        } else {
            format!("{millis}ms")
        };
        serializer.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        if text == "0" {
            return Ok(Duration::ZERO);
        }
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{text:?} has no unit (ms, s, m or h)"))?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} does not start with a whole number"))?;
        let millis = match unit {
            "ms" => Some(number),
            "s" => number.checked_mul(1000),
            "m" => number.checked_mul(60_000),
            "h" => number.checked_mul(3_600_000),
            _ => return Err(format!("{text:?} has an unknown unit (ms, s, m or h)")),
        };
        millis
            .map(Duration::from_millis)
            .ok_or_else(|| format!("{text:?} is too long"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn croupier_definitions_declare_the_contract_streams_and_buckets() {
        let definitions = Definitions::croupier();
        let tables = definitions
            .streams
            .iter()
            .find(|s| s.name == "TABLES")
            .expect("TABLES is declared");
        assert_eq!(tables.subjects, vec!["table.>".to_string()]);
        assert_eq!(tables.duplicate_window, Duration::from_secs(120));
        assert_eq!(tables.max_age, Duration::ZERO);
        let players = definitions
            .streams
            .iter()
            .find(|s| s.name == "PLAYERS")
            .expect("PLAYERS is declared");
        assert_eq!(players.subjects, vec!["player.>".to_string()]);
        let leases = definitions
            .buckets
            .iter()
            .find(|b| b.name == "gms_leases")
            .expect("gms_leases is declared");
        assert_eq!(leases.history, 1);
        assert_eq!(leases.max_age, Duration::from_secs(6));
        let status = definitions
            .buckets
            .iter()
            .find(|b| b.name == "status")
            .expect("status is declared");
        assert_eq!(status.max_age, Duration::ZERO);
    }

    #[test]
    fn durations_are_read_and_written_as_short_text() {
        assert_eq!(
            duration_text::parse("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(duration_text::parse("6s"), Ok(Duration::from_secs(6)));
        assert_eq!(duration_text::parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration_text::parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration_text::parse("0"), Ok(Duration::ZERO));
        assert!(duration_text::parse("6").is_err());
        assert!(duration_text::parse("6d").is_err());
        assert!(duration_text::parse("s").is_err());
        let definitions = Definitions::croupier();
        let text = serde_json::to_string(&definitions).expect("definitions serialize");
        let back: Definitions = serde_json::from_str(&text).expect("definitions read back");
        assert_eq!(back, definitions);
    }

    #[test]
    fn bad_definitions_are_refused_with_a_reason() {
        let bad_name = Definitions::default().stream(StreamDef::new("A.B", &["a.>"]));
        assert!(bad_name.validate().is_err());
        let bad_subject = Definitions::default().stream(StreamDef::new("A", &["a.>.b"]));
        assert!(bad_subject.validate().is_err());
        let unknown_field = Definitions::from_json_parts(
            r#"[{"name":"A","subjects":["a.>"],"colour":"red"}]"#,
            "[]",
            "[]",
        );
        assert!(unknown_field.is_err());
    }
}

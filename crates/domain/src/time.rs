//! Timestamps: instants in UTC with microsecond precision (docs/contract/events.md).
//!
//! Every encoding writes the same text, RFC 3339 with exactly six fractional digits and `Z`
//! (`2026-11-25T22:17:00.123456Z`), because Postgres `timestamptz` keeps microseconds: a value
//! that went through the store must compare equal to the one that went onto the bus. Input in any
//! RFC 3339 offset is accepted and normalised. The domain never reads a clock; callers pass `now`.

use std::fmt;
use std::time::Duration;

use ::time::format_description::well_known::Rfc3339;
use ::time::{OffsetDateTime, UtcOffset};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value is not a valid timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimestampError {
    #[error("not an RFC 3339 timestamp: {0}")]
    Syntax(String),
    #[error("timestamp is outside years 0000 to 9999 in UTC")]
    OutOfRange,
}

/// An instant in UTC, truncated to whole microseconds, within years 0000..=9999 (the years
/// RFC 3339 can write).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(OffsetDateTime);

impl Timestamp {
    /// 1970-01-01T00:00:00.000000Z.
    pub const UNIX_EPOCH: Timestamp = Timestamp(OffsetDateTime::UNIX_EPOCH);

    /// Converts to UTC and drops sub-microsecond digits.
    pub fn from_offset_datetime(at: OffsetDateTime) -> Result<Self, TimestampError> {
        let utc = at
            .checked_to_offset(UtcOffset::UTC)
            .ok_or(TimestampError::OutOfRange)?;
        if !(0..=9999).contains(&utc.year()) {
            return Err(TimestampError::OutOfRange);
        }
        let micros_only = utc.nanosecond() / 1_000 * 1_000;
        utc.replace_nanosecond(micros_only)
            .map(Self)
            .map_err(|_| TimestampError::OutOfRange)
    }

    pub fn from_unix_micros(micros: i64) -> Result<Self, TimestampError> {
        let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
            .map_err(|_| TimestampError::OutOfRange)?;
        Self::from_offset_datetime(at)
    }

    /// Parses RFC 3339 with any offset.
    pub fn parse(s: &str) -> Result<Self, TimestampError> {
        let at = OffsetDateTime::parse(s, &Rfc3339)
            .map_err(|e| TimestampError::Syntax(format!("{s:?}: {e}")))?;
        Self::from_offset_datetime(at)
    }

    pub fn unix_micros(self) -> i64 {
        // Years 0..=9999 are about ±2.5e17 µs from the epoch, far inside i64.
        self.0.unix_timestamp() * 1_000_000 + i64::from(self.0.microsecond())
    }

    pub fn as_offset_datetime(&self) -> OffsetDateTime {
        self.0
    }

    /// `None` if the result would leave the representable years; sub-microsecond parts of the
    /// duration are dropped.
    pub fn checked_add(self, duration: Duration) -> Option<Self> {
        let duration = ::time::Duration::try_from(duration).ok()?;
        let at = self.0.checked_add(duration)?;
        Self::from_offset_datetime(at).ok()
    }

    /// `None` if the result would leave the representable years.
    pub fn checked_sub(self, duration: Duration) -> Option<Self> {
        let duration = ::time::Duration::try_from(duration).ok()?;
        let at = self.0.checked_sub(duration)?;
        Self::from_offset_datetime(at).ok()
    }

    /// How long after `earlier` this instant is; `None` if it is before `earlier`.
    pub fn duration_since(self, earlier: Timestamp) -> Option<Duration> {
        Duration::try_from(self.0 - earlier.0).ok()
    }
}

impl Timestamp {
    /// The RFC 3339 form (`YYYY-MM-DDTHH:MM:SS.ffffffZ`, always 27 bytes), written into a
    /// buffer: every event carries one, so it is formatted without the `fmt` machinery or an
    /// allocation.
    fn rfc3339(&self) -> [u8; 27] {
        fn digits(out: &mut [u8], mut value: u32) {
            for slot in out.iter_mut().rev() {
                *slot = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        let (year, month, day) = self.0.to_calendar_date();
        let (hour, minute, second, micro) = self.0.to_hms_micro();
        let mut out = *b"0000-00-00T00:00:00.000000Z";
        // Years are 0..=9999 (checked where a Timestamp is made).
        digits(&mut out[0..4], year.clamp(0, 9999) as u32);
        digits(&mut out[5..7], u32::from(u8::from(month)));
        digits(&mut out[8..10], u32::from(day));
        digits(&mut out[11..13], u32::from(hour));
        digits(&mut out[14..16], u32::from(minute));
        digits(&mut out[17..19], u32::from(second));
        digits(&mut out[20..26], micro);
        out
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written by hand rather than with a format description: it cannot fail, and the fixed
        // shape (four-digit year, six fractional digits, `Z`) is the contract.
        let text = self.rfc3339();
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

impl std::str::FromStr for Timestamp {
    type Err = TimestampError;

    fn from_str(s: &str) -> Result<Self, TimestampError> {
        Self::parse(s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = self.rfc3339();
        match std::str::from_utf8(&text) {
            Ok(text) => serializer.serialize_str(text),
            Err(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::text::deserialize_parsed(deserializer, "an RFC 3339 timestamp string", |s| {
            Timestamp::parse(s)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).expect("valid timestamp")
    }

    #[test]
    fn timestamps_are_written_with_six_fractional_digits_and_z() {
        assert_eq!(
            ts("2026-11-25T22:17:00.123456Z").to_string(),
            "2026-11-25T22:17:00.123456Z"
        );
        assert_eq!(
            ts("2026-11-25T22:17:00Z").to_string(),
            "2026-11-25T22:17:00.000000Z"
        );
        assert_eq!(
            ts("0001-01-01T00:00:00Z").to_string(),
            "0001-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn any_offset_is_normalised_to_utc_and_nanoseconds_are_truncated() {
        assert_eq!(
            ts("2026-11-25T23:17:00.123456789+01:00").to_string(),
            "2026-11-25T22:17:00.123456Z"
        );
        assert_eq!(
            ts("2026-11-25T18:17:00.5-04:00").to_string(),
            "2026-11-25T22:17:00.500000Z"
        );
    }

    #[test]
    fn the_hand_written_form_matches_the_formatter_over_the_whole_range() {
        // Year 0000 to 9999, leap days and the edges included, plus 20k instants spread
        // over the range by a fixed-seed generator.
        let (first, last) = (
            ts("0000-01-01T00:00:00Z").unix_micros(),
            ts("9999-12-31T23:59:59.999999Z").unix_micros(),
        );
        let mut instants = vec![
            first,
            last,
            ts("2024-02-29T12:00:00.000001Z").unix_micros(),
            0,
            -1,
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let span = (last - first) as u64;
            instants.push(first + (state % span) as i64);
        }
        for micros in instants {
            let at = Timestamp::from_unix_micros(micros).expect("in range");
            let t = at.as_offset_datetime();
            let expected = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.microsecond()
            );
            assert_eq!(at.to_string(), expected);
            assert_eq!(
                serde_json::to_string(&at).expect("json"),
                format!("\"{expected}\"")
            );
        }
    }

    #[test]
    fn unix_microseconds_round_trip() {
        let at = Timestamp::from_unix_micros(1_795_645_020_123_456).expect("valid");
        assert_eq!(at.to_string(), "2026-11-25T22:17:00.123456Z");
        assert_eq!(at.unix_micros(), 1_795_645_020_123_456);
        let before_epoch = Timestamp::from_unix_micros(-1).expect("valid");
        assert_eq!(before_epoch.to_string(), "1969-12-31T23:59:59.999999Z");
        assert_eq!(before_epoch.unix_micros(), -1);
    }

    #[test]
    fn years_outside_rfc_3339_are_refused() {
        assert_eq!(
            Timestamp::parse("9999-12-31T23:30:00-01:00"),
            Err(TimestampError::OutOfRange)
        );
        assert_eq!(
            Timestamp::from_unix_micros(i64::MAX),
            Err(TimestampError::OutOfRange)
        );
        assert!(matches!(
            Timestamp::parse("yesterday"),
            Err(TimestampError::Syntax(_))
        ));
    }

    #[test]
    fn adding_a_duration_moves_forward_and_stays_in_range() {
        let at = ts("2026-11-25T22:17:00.123456Z");
        let later = at
            .checked_add(Duration::from_millis(1_500))
            .expect("in range");
        assert_eq!(later.to_string(), "2026-11-25T22:17:01.623456Z");
        assert_eq!(later.duration_since(at), Some(Duration::from_millis(1_500)));
        assert_eq!(at.duration_since(later), None);
        assert_eq!(later.checked_sub(Duration::from_millis(1_500)), Some(at));
        assert_eq!(
            ts("9999-12-31T23:59:59Z").checked_add(Duration::from_secs(1)),
            None
        );
        assert_eq!(at.checked_add(Duration::MAX), None);
    }

    #[test]
    fn timestamps_are_the_same_string_in_json_and_messagepack() {
        let at = ts("2026-11-25T22:17:00.123456Z");
        assert_eq!(
            serde_json::to_string(&at).expect("serialize"),
            "\"2026-11-25T22:17:00.123456Z\""
        );
        let packed = rmp_serde::to_vec_named(&at).expect("serialize");
        assert_eq!(
            packed,
            rmp_serde::to_vec_named("2026-11-25T22:17:00.123456Z").expect("serialize")
        );
        let back: Timestamp = rmp_serde::from_slice(&packed).expect("deserialize");
        assert_eq!(back, at);
        let shifted: Timestamp =
            serde_json::from_str("\"2026-11-26T00:17:00.123456+02:00\"").expect("deserialize");
        assert_eq!(shifted, at);
    }
}

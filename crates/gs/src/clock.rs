//! The wall clock, as the domain's timestamp (microsecond precision). GS judges `closes_at`
//! by it (`docs/contract/events.md`, wallet rules: "GS's clock").

use domain::Timestamp;

pub fn now() -> Timestamp {
    Timestamp::from_offset_datetime(time::OffsetDateTime::now_utc())
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

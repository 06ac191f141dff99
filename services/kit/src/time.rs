//! Time at the contract's edge: stored times are integer milliseconds since the Unix epoch (UTC);
//! the contracts speak `google.protobuf.Timestamp`.

use prost_types::Timestamp;

/// Now, in milliseconds since the epoch.
pub fn now_millis() -> i64 {
    crate::storage::now_millis()
}

/// A stored time as a Timestamp (always set; the Option fits prost's message fields).
pub fn timestamp(millis: i64) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: i32::try_from(millis.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    })
}

/// A Timestamp as stored milliseconds, saturating far outside any real date.
pub fn millis(ts: &Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}

/// A Timestamp field a request must carry, checked: the error describes the field violation.
pub fn required_millis(ts: Option<&Timestamp>) -> Result<i64, String> {
    match ts {
        None => Err("required".into()),
        Some(ts) if !(0..1_000_000_000).contains(&ts.nanos) => Err("nanos out of range".into()),
        Some(ts) => Ok(millis(ts)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_trip_including_before_the_epoch() {
        for ms in [0, 1, 999, 1_767_225_600_123, -1, -1001] {
            assert_eq!(millis(&timestamp(ms).unwrap()), ms, "{ms}");
        }
    }

    #[test]
    fn a_required_time_must_be_given_and_well_formed() {
        assert_eq!(required_millis(None), Err("required".into()));
        let bad = Timestamp {
            seconds: 1,
            nanos: -5,
        };
        assert!(required_millis(Some(&bad)).is_err());
        assert_eq!(required_millis(timestamp(1500).as_ref()), Ok(1500));
    }
}

//! The mesh-wide contact cap and quiet hours: pure decisions over what the store read under
//! the member's lock.

use lianyu_kit::validate::Violations;

/// One day in milliseconds.
pub const DAY: i64 = 24 * 3_600_000;
/// How long an allowed contact's slot is held before RecordContact.
pub const HOLD: i64 = 3_600_000;

/// How often one person may be contacted by all partners together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub max_contacts: i32,
    pub window_days: i32,
}

/// Three contacts in any seven days, unless the operator sets otherwise.
pub const DEFAULT_POLICY: Policy = Policy {
    max_contacts: 3,
    window_days: 7,
};

impl Policy {
    /// Checks an operator's policy (fields under `policy.`).
    pub fn check(max_contacts: i32, window_days: i32) -> Result<Self, lianyu_kit::KitError> {
        let mut v = Violations::default();
        if !(1..=100).contains(&max_contacts) {
            v.add("policy.max_contacts", "1 to 100");
        }
        if !(1..=90).contains(&window_days) {
            v.add("policy.window_days", "1 to 90");
        }
        v.finish()?;
        Ok(Self {
            max_contacts,
            window_days,
        })
    }

    /// The window's length in milliseconds.
    pub fn window(self) -> i64 {
        i64::from(self.window_days) * DAY
    }

    /// Whether one more contact fits, given how many contacts (held or sent) count in the
    /// window and, when they fill it, the time of the `max_contacts`-th most recent:
    /// `Err(when)` names when that one leaves the window and a slot frees.
    pub fn admit(self, counted: u64, nth_newest: Option<i64>) -> Result<(), i64> {
        if counted < u64::try_from(self.max_contacts).unwrap_or(0) {
            return Ok(());
        }
        // Counting contacts always have times; a missing one frees a slot at once.
        Err(nth_newest.map_or(0, |t| t + self.window()))
    }
}

/// A member's quiet hours in their own time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuietHours {
    pub start_minute: i32,
    pub end_minute: i32,
    pub utc_offset_minutes: i32,
}

impl QuietHours {
    /// Checks quiet hours (fields under `quiet_hours.`).
    pub fn check(start: i32, end: i32, offset: i32) -> Result<Self, lianyu_kit::KitError> {
        let mut v = Violations::default();
        if !(0..1440).contains(&start) {
            v.add("quiet_hours.start_minute", "0 to 1439");
        }
        if !(0..1440).contains(&end) {
            v.add("quiet_hours.end_minute", "0 to 1439");
        } else if start == end {
            v.add("quiet_hours.end_minute", "different from start_minute");
        }
        if !(-720..=840).contains(&offset) {
            v.add("quiet_hours.utc_offset_minutes", "-720 to 840");
        }
        v.finish()?;
        Ok(Self {
            start_minute: start,
            end_minute: end,
            utc_offset_minutes: offset,
        })
    }

    /// When the quiet hours `now` falls in end; `None` outside them.
    pub fn ends_after(self, now: i64) -> Option<i64> {
        let local = now + i64::from(self.utc_offset_minutes) * 60_000;
        let minute = i32::try_from(local.rem_euclid(DAY) / 60_000).unwrap_or(0);
        let (start, end) = (self.start_minute, self.end_minute);
        let inside = if start < end {
            (start..end).contains(&minute)
        } else {
            minute >= start || minute < end
        };
        if !inside {
            return None;
        }
        let to_end = (end - minute).rem_euclid(1440);
        let minute_start = local - local.rem_euclid(60_000);
        Some(
            minute_start + i64::from(to_end) * 60_000 - i64::from(self.utc_offset_minutes) * 60_000,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fourth_contact_in_a_week_waits_for_the_oldest_to_leave() {
        let p = DEFAULT_POLICY;
        let now = 100 * DAY;
        assert_eq!(p.admit(2, None), Ok(()));
        // Three in the week, the oldest six days ago: the next slot frees a day from now.
        assert_eq!(p.admit(3, Some(now - 6 * DAY)), Err(now + DAY));
        assert_eq!(p.admit(4, Some(now - 2 * DAY)), Err(now + 5 * DAY));
        assert_eq!(
            Policy::check(0, 7).unwrap_err().to_string(),
            "invalid request: policy.max_contacts: 1 to 100"
        );
    }

    #[test]
    fn quiet_hours_wrap_past_midnight_in_the_members_time_zone() {
        // 22:00 to 08:00 in China (UTC+8).
        let q = QuietHours::check(22 * 60, 8 * 60, 480).unwrap();
        let midnight_utc = 100 * DAY;
        // 15:00 UTC is 23:00 in China: quiet until 08:00 China = 00:00 UTC next day.
        assert_eq!(
            q.ends_after(midnight_utc + 15 * 3_600_000),
            Some(midnight_utc + DAY)
        );
        // 04:00 UTC is 12:00 in China: not quiet.
        assert_eq!(q.ends_after(midnight_utc + 4 * 3_600_000), None);
        assert!(QuietHours::check(60, 60, 0).is_err());
    }
}

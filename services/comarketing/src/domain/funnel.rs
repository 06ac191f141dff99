//! The AIPL funnel: which stages a member reached, from their events in a campaign.

use std::collections::{BTreeMap, BTreeSet};

use super::contact::DAY;

/// What happened (the contract's `FunnelEventKind` numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventKind {
    Reached = 1,
    Viewed = 2,
    JoinedSession = 3,
    Claimed = 4,
    Ordered = 5,
    Redeemed = 6,
    Enrolled = 7,
}

impl EventKind {
    /// From the contract's number.
    pub fn from_i32(n: i32) -> Option<Self> {
        Some(match n {
            1 => Self::Reached,
            2 => Self::Viewed,
            3 => Self::JoinedSession,
            4 => Self::Claimed,
            5 => Self::Ordered,
            6 => Self::Redeemed,
            7 => Self::Enrolled,
            _ => return None,
        })
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reached => "reached",
            Self::Viewed => "viewed",
            Self::JoinedSession => "joined",
            Self::Claimed => "claimed",
            Self::Ordered => "ordered",
            Self::Redeemed => "redeemed",
            Self::Enrolled => "enrolled",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        (1..=7).filter_map(Self::from_i32).find(|k| k.as_str() == s)
    }
}

/// AIPL: awareness, interest, purchase, loyalty (the contract's `FunnelStage` numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Awareness = 1,
    Interest = 2,
    Purchase = 3,
    Loyalty = 4,
}

/// Every stage, in order.
pub const STAGES: [Stage; 4] = [
    Stage::Awareness,
    Stage::Interest,
    Stage::Purchase,
    Stage::Loyalty,
];

/// One member's event: what, when, and through which partner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub at: i64,
    pub partner: String,
}

/// The stages one member reached by their events (in time order or not), with the day
/// (millis at UTC midnight) each was first reached. Loyalty: a second purchase within
/// `repeat_window_days` of an earlier one, or an enrolment with a second partner.
pub fn stages(events: &[Event], repeat_window_days: i32) -> BTreeMap<Stage, i64> {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| e.at);
    let mut reached = BTreeMap::new();
    let mut reach = |stage: Stage, at: i64| {
        reached.entry(stage).or_insert(at - at.rem_euclid(DAY));
    };
    let mut purchases: Vec<i64> = Vec::new();
    let mut enrolled: BTreeSet<&str> = BTreeSet::new();
    let window = i64::from(repeat_window_days) * DAY;
    for e in sorted {
        match e.kind {
            EventKind::Reached | EventKind::Viewed => reach(Stage::Awareness, e.at),
            EventKind::JoinedSession | EventKind::Claimed => reach(Stage::Interest, e.at),
            EventKind::Ordered | EventKind::Redeemed => {
                // Any earlier purchase in the window, one at the same moment included: two
                // orders placed together (the sale's unit and a second item) are two purchases.
                if purchases.iter().any(|p| e.at - p <= window) {
                    reach(Stage::Loyalty, e.at);
                }
                purchases.push(e.at);
                reach(Stage::Purchase, e.at);
            }
            EventKind::Enrolled => {
                enrolled.insert(&e.partner);
                if enrolled.len() >= 2 {
                    reach(Stage::Loyalty, e.at);
                }
            }
        }
    }
    reached
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventKind, day: i64, partner: &str) -> Event {
        Event {
            kind,
            at: day * DAY + 3_600_000,
            partner: partner.into(),
        }
    }

    #[test]
    fn a_shopper_moves_through_the_stages_and_a_second_purchase_makes_her_loyal() {
        let events = [
            ev(EventKind::Redeemed, 12, "mall"),
            ev(EventKind::Reached, 10, "mall"),
            ev(EventKind::JoinedSession, 11, "brand"),
            ev(EventKind::Ordered, 40, "brand"),
        ];
        let got = stages(&events, 30);
        assert_eq!(got[&Stage::Awareness], 10 * DAY);
        assert_eq!(got[&Stage::Interest], 11 * DAY);
        assert_eq!(got[&Stage::Purchase], 12 * DAY);
        assert_eq!(got[&Stage::Loyalty], 40 * DAY);
        // The same second purchase outside a shorter window is not loyalty.
        assert!(!stages(&events, 7).contains_key(&Stage::Loyalty));
    }

    #[test]
    fn two_purchases_at_the_same_moment_are_a_repeat_and_one_is_not() {
        let one = [ev(EventKind::Ordered, 3, "brand")];
        assert!(!stages(&one, 30).contains_key(&Stage::Loyalty));
        let two = [
            ev(EventKind::Ordered, 3, "brand"),
            ev(EventKind::Ordered, 3, "brand"),
        ];
        assert_eq!(stages(&two, 30)[&Stage::Loyalty], 3 * DAY);
    }

    #[test]
    fn enrolling_with_a_second_partner_is_loyalty() {
        let one = [ev(EventKind::Enrolled, 1, "brand")];
        assert!(stages(&one, 30).is_empty());
        let two = [
            ev(EventKind::Enrolled, 1, "brand"),
            ev(EventKind::Enrolled, 5, "mall"),
        ];
        assert_eq!(stages(&two, 30)[&Stage::Loyalty], 5 * DAY);
    }
}

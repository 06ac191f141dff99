//! Segment rules: validated data (AND / OR / NOT over conditions about what the mesh knows),
//! evaluated over member bitmaps — each condition is a set of dense member numbers the store
//! loads once, and the rule combines them, so a ten-rule segment over a million members costs
//! ten index scans and a few set operations, not a million row-by-row checks.

use std::collections::BTreeSet;

use lianyu_kit::ids::PartnerId;
use roaring::RoaringBitmap;

/// At most this many conditions in one rule.
pub const MAX_CONDITIONS: usize = 32;
/// At most this many levels of nesting.
pub const MAX_DEPTH: usize = 8;
/// At most this many rules in one AND or OR.
pub const MAX_CHILDREN: usize = 16;

/// One fact about a member a rule can ask for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Condition {
    /// Enrolled with the partner (at or after `since`, millis, when set).
    Enrolled {
        partner: PartnerId,
        since: Option<i64>,
    },
    /// Carries the tag at the partner.
    Tagged { partner: PartnerId, tag: String },
    /// Has the tier at the partner.
    Tier { partner: PartnerId, tier: String },
    /// Joined the live session.
    JoinedSession(String),
    /// Ordered in the live session.
    OrderedInSession(String),
    /// Claimed or was granted the benefit.
    ClaimedBenefit(String),
    /// Redeemed the benefit.
    RedeemedBenefit(String),
    /// No activity for this many days.
    Inactive { days: i32 },
}

/// A rule: a condition, or a combination of rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    All(Vec<Rule>),
    Any(Vec<Rule>),
    Not(Box<Rule>),
    Is(Condition),
}

impl Rule {
    /// Every distinct condition the rule asks for, for the store to load once each.
    pub fn conditions(&self) -> BTreeSet<Condition> {
        let mut out = BTreeSet::new();
        self.collect(&mut out);
        out
    }

    fn collect(&self, out: &mut BTreeSet<Condition>) {
        match self {
            Rule::All(rules) | Rule::Any(rules) => rules.iter().for_each(|r| r.collect(out)),
            Rule::Not(rule) => rule.collect(out),
            Rule::Is(c) => {
                out.insert(c.clone());
            }
        }
    }

    /// The members of `universe` the rule holds for, given each condition's members
    /// (`sets`, every condition of [`Self::conditions`]; a missing one holds for nobody).
    pub fn evaluate(
        &self,
        universe: &RoaringBitmap,
        sets: &std::collections::BTreeMap<Condition, RoaringBitmap>,
    ) -> RoaringBitmap {
        match self {
            Rule::Is(c) => sets.get(c).map(|s| s & universe).unwrap_or_default(),
            Rule::Not(rule) => universe - rule.evaluate(universe, sets),
            Rule::All(rules) => {
                let mut it = rules.iter();
                let Some(first) = it.next() else {
                    return universe.clone();
                };
                let mut acc = first.evaluate(universe, sets);
                for r in it {
                    if acc.is_empty() {
                        break;
                    }
                    acc &= r.evaluate(universe, sets);
                }
                acc
            }
            Rule::Any(rules) => {
                let mut acc = RoaringBitmap::new();
                for r in rules {
                    acc |= r.evaluate(universe, sets);
                }
                acc
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn set(members: &[u32]) -> RoaringBitmap {
        members.iter().copied().collect()
    }

    #[test]
    fn and_or_not_combine_condition_sets_within_the_universe() {
        let brand = PartnerId::new("brand-a");
        let enrolled = Condition::Enrolled {
            partner: brand.clone(),
            since: None,
        };
        let vip = Condition::Tagged {
            partner: brand,
            tag: "vip".into(),
        };
        let joined = Condition::JoinedSession("s1".into());
        let sets = BTreeMap::from([
            (enrolled.clone(), set(&[1, 2, 3, 4])),
            (vip.clone(), set(&[2, 3, 9])),
            (joined.clone(), set(&[3, 5])),
        ]);
        let universe = set(&[1, 2, 3, 4, 5, 6]);
        // Enrolled AND (vip OR joined) AND NOT joined.
        let rule = Rule::All(vec![
            Rule::Is(enrolled),
            Rule::Any(vec![Rule::Is(vip.clone()), Rule::Is(joined.clone())]),
            Rule::Not(Box::new(Rule::Is(joined.clone()))),
        ]);
        assert_eq!(rule.evaluate(&universe, &sets), set(&[2]));
        // A member outside the universe (9: erased) never comes back, even through NOT.
        assert_eq!(
            Rule::Is(vip.clone()).evaluate(&universe, &sets),
            set(&[2, 3])
        );
        assert_eq!(
            Rule::Not(Box::new(Rule::Is(vip))).evaluate(&universe, &sets),
            set(&[1, 4, 5, 6])
        );
        assert_eq!(rule.conditions().len(), 3);
    }

    #[test]
    fn a_condition_nobody_meets_selects_nobody() {
        let rule = Rule::Is(Condition::RedeemedBenefit("b1".into()));
        assert!(rule.evaluate(&set(&[1, 2]), &BTreeMap::new()).is_empty());
    }
}

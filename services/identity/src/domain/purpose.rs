//! Consent purposes: what a member may allow another partner to do with their data.

/// What a member may allow. Numbers match `lianyu.common.v1.ConsentPurpose`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Purpose {
    ShareProfile = 1,
    MarketingContact = 2,
    BenefitRedemption = 3,
    LivePersonalization = 4,
    JointAnalytics = 5,
}

impl Purpose {
    pub const ALL: [Purpose; 5] = [
        Purpose::ShareProfile,
        Purpose::MarketingContact,
        Purpose::BenefitRedemption,
        Purpose::LivePersonalization,
        Purpose::JointAnalytics,
    ];

    pub fn from_number(n: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|p| *p as i32 == n)
    }
}

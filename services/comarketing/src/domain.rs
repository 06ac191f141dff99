//! The comarketing domain: joint campaigns built only through their checking constructor, and
//! the service's own error cases. No gRPC, no SQL.

use lianyu_kit::{
    KitError,
    ids::PartnerId,
    money::Money,
    validate::{Violations, partner, text},
};

/// Comarketing's own failures; everything generic is the kit's [`KitError`].
#[derive(Debug, thiserror::Error)]
pub enum ComarketingError {
    /// NOT_FOUND / CAMPAIGN_NOT_FOUND: no campaign by that name that the caller takes part in
    /// (another partners' campaign answers the same).
    #[error("campaign not found")]
    CampaignNotFound,
    #[error(transparent)]
    Kit(#[from] KitError),
}

/// PROPOSED (waiting for every participant) → ACCEPTED → LIVE → ENDED.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CampaignState {
    Proposed,
    Accepted,
    Live,
    Ended,
}

/// A joint campaign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Campaign {
    pub id: String,
    pub display_name: String,
    /// The participating partners, the proposer first; only they see the campaign.
    pub partners: Vec<PartnerId>,
    /// Each participant's share of the budget, in one currency; one share per partner at most.
    pub budget: Vec<(PartnerId, Money)>,
    pub start_millis: i64,
    pub end_millis: i64,
    pub state: CampaignState,
    pub accepted_by: Vec<PartnerId>,
}

/// A proposal before it is checked; each parsed part carries its own violation.
pub struct CampaignDraft<'a> {
    pub display_name: &'a str,
    pub partners: &'a [String],
    /// (partner name, amount) per share.
    pub budget: Vec<(&'a str, Result<Money, String>)>,
    pub start: Result<i64, String>,
    pub end: Result<i64, String>,
}

/// At most this many partners join one campaign (a joint festival of a mall and its brands).
pub const MAX_PARTNERS: usize = 16;

impl Campaign {
    /// Checks a proposal by `proposer` at `now`, reporting every problem at once with its field
    /// under `campaign.`. The proposer takes part and has accepted; the others have not yet.
    pub fn propose(
        proposer: &PartnerId,
        d: &CampaignDraft<'_>,
        now: i64,
    ) -> Result<Self, KitError> {
        let mut v = Violations::default();
        let display_name = v.check("campaign.display_name", text(d.display_name, true, 100));
        let mut partners = vec![proposer.clone()];
        let before = v.len();
        v.partners("campaign.partners", d.partners, MAX_PARTNERS, &mut partners);
        // (Unless a listed partner was already at fault.)
        if partners.len() < 2 && v.len() == before {
            v.add(
                "campaign.partners",
                "a joint campaign needs another partner",
            );
        }
        let mut budget: Vec<(PartnerId, Money)> = Vec::new();
        for (i, (p, amount)) in d.budget.iter().enumerate() {
            let field = format!("campaign.budget[{i}]");
            let p = v.check(format!("{field}.partner"), partner(p));
            let amount = v.check(format!("{field}.amount"), amount.clone());
            let (Some(p), Some(amount)) = (p, amount) else {
                continue;
            };
            if !partners.contains(&p) {
                v.add(format!("{field}.partner"), "must take part in the campaign");
            } else if budget.iter().any(|(q, _)| *q == p) {
                v.add(format!("{field}.partner"), "one share per partner");
            } else if budget
                .first()
                .is_some_and(|(_, m)| m.currency() != amount.currency())
            {
                v.add(
                    format!("{field}.amount"),
                    "every share in the same currency",
                );
            } else {
                budget.push((p, amount));
            }
        }
        // Shares read in the participants' order, however they were listed.
        budget.sort_by_key(|(p, _)| partners.iter().position(|q| q == p));
        let start = v.check("campaign.start_time", d.start.clone());
        let end = v.check("campaign.end_time", d.end.clone());
        if let (Some(start), Some(end)) = (start, end)
            && (end <= start || end <= now)
        {
            v.add("campaign.end_time", "after start_time and in the future");
        }
        v.finish()?;
        let (Some(display_name), Some(start_millis), Some(end_millis)) = (display_name, start, end)
        else {
            return Err(KitError::invalid("campaign", "required"));
        };
        Ok(Self {
            id: uuid::Uuid::now_v7().simple().to_string(),
            display_name,
            partners,
            budget,
            start_millis,
            end_millis,
            state: CampaignState::Proposed,
            accepted_by: vec![proposer.clone()],
        })
    }

    /// Whether `partner` takes part (and so may see the campaign).
    pub fn includes(&self, partner: &str) -> bool {
        self.partners.iter().any(|p| p.as_str() == partner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cny(minor: i64) -> Result<Money, String> {
        Money::positive("CNY", minor)
    }

    #[test]
    fn the_proposer_takes_part_has_accepted_and_shares_belong_to_participants() {
        let mall = PartnerId::new("mall-b");
        let partners = ["partners/brand-a".to_owned()];
        let d = CampaignDraft {
            display_name: "Double 12",
            partners: &partners,
            budget: vec![
                ("partners/mall-b", cny(600_000)),
                ("partners/brand-a", cny(400_000)),
            ],
            start: Ok(10),
            end: Ok(20),
        };
        let c = Campaign::propose(&mall, &d, 1).unwrap();
        assert_eq!(c.partners, [mall.clone(), PartnerId::new("brand-a")]);
        assert_eq!(c.accepted_by, [mall]);
        assert_eq!(c.state, CampaignState::Proposed);
        assert!(c.includes("brand-a") && !c.includes("brand-c"));
    }

    #[test]
    fn a_share_for_an_outsider_or_in_another_currency_is_refused() {
        let mall = PartnerId::new("mall-b");
        let partners = ["partners/brand-a".to_owned()];
        let d = CampaignDraft {
            display_name: "Double 12",
            partners: &partners,
            budget: vec![
                ("partners/mall-b", cny(600_000)),
                ("partners/brand-c", cny(1)),
                ("partners/brand-a", Money::positive("USD", 5)),
            ],
            start: Ok(10),
            end: Ok(20),
        };
        let e = Campaign::propose(&mall, &d, 1).unwrap_err();
        let fields: Vec<_> = lianyu_kit::ServiceError::field_violations(&e)
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(
            fields,
            ["campaign.budget[1].partner", "campaign.budget[2].amount"]
        );
    }
}

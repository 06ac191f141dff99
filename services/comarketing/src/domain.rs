//! The comarketing domain: joint campaigns built only through their checking constructor and
//! changed only through their transitions, segment rules, the contact cap, the funnel's
//! stages and the overlap's defence, and the service's own error cases. No gRPC, no SQL.

pub mod contact;
pub mod funnel;
pub mod operations;
pub mod overlap;
pub mod rule;

use lianyu_kit::{
    KitError,
    ids::PartnerId,
    money::Money,
    names,
    validate::{Violations, partner, text},
};

/// Comarketing's own failures; everything generic is the kit's [`KitError`].
#[derive(Debug, thiserror::Error)]
pub enum ComarketingError {
    /// NOT_FOUND / CAMPAIGN_NOT_FOUND: no campaign by that name that the caller takes part in
    /// (another partners' campaign answers the same).
    #[error("campaign not found")]
    CampaignNotFound,
    /// NOT_FOUND / SEGMENT_NOT_FOUND: no such segment in a campaign the caller takes part in.
    #[error("segment not found")]
    SegmentNotFound,
    /// NOT_FOUND / OPERATION_NOT_FOUND: no such operation started by the caller.
    #[error("operation not found")]
    OperationNotFound,
    /// NOT_FOUND / CONTACT_NOT_FOUND: no such contact token of the caller.
    #[error("contact not found")]
    ContactNotFound,
    /// NOT_FOUND / MEMBER_NOT_FOUND: the caller holds no such member.
    #[error("member not found")]
    MemberNotFound,
    /// ABORTED / ETAG_MISMATCH: the campaign's terms changed since the caller read the etag
    /// it gave.
    #[error("the campaign's terms changed since they were read; read it again")]
    EtagMismatch,
    #[error(transparent)]
    Kit(#[from] KitError),
}

/// DRAFT (waiting for every participant) → SCHEDULED → RUNNING → ENDED; any but ENDED may end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CampaignState {
    Draft,
    Scheduled,
    Running,
    Ended,
}

impl CampaignState {
    /// The contract's name of the state, as error metadata carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignState::Draft => "DRAFT",
            CampaignState::Scheduled => "SCHEDULED",
            CampaignState::Running => "RUNNING",
            CampaignState::Ended => "ENDED",
        }
    }

    /// FAILED_PRECONDITION / CAMPAIGN_STATE for a call that needs another state.
    pub fn refuse(self, needed: &str) -> KitError {
        KitError::WrongState("CAMPAIGN_STATE", self.as_str(), needed.to_owned())
    }
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
    /// The alliance id whose contact policy applies; empty for the mesh default.
    pub alliance: String,
    /// The contract's `ContactChannel` numbers, 1 to 4, without repeats.
    pub channels: Vec<i32>,
    /// Attached benefit ids.
    pub benefits: Vec<String>,
    /// Attached live session ids.
    pub sessions: Vec<String>,
    /// Spent so far, minor units of the budget's currency.
    pub spent: i64,
    pub exhausted_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A proposal before it is checked; each parsed part carries its own violation.
pub struct CampaignDraft<'a> {
    pub display_name: &'a str,
    /// The other participants ("partners/{partner}"); the proposer is always first.
    pub partners: &'a [String],
    /// (partner name, amount) per share.
    pub budget: Vec<(&'a str, Result<Money, String>)>,
    pub start: Result<i64, String>,
    pub end: Result<i64, String>,
    /// "alliances/{alliance}" or empty.
    pub alliance: &'a str,
    pub channels: &'a [i32],
    /// "benefits/{benefit}" each.
    pub benefits: &'a [String],
    /// "sessions/{session}" each.
    pub sessions: &'a [String],
}

/// At most this many partners join one campaign (a joint festival of a mall and its brands).
pub const MAX_PARTNERS: usize = 16;
/// At most this many benefits, and as many sessions, per campaign.
pub const MAX_LINKS: usize = 32;
/// The updatable fields of a DRAFT campaign.
pub const UPDATABLE: &[&str] = &[
    "display_name",
    "partners",
    "budget",
    "start_time",
    "end_time",
    "channels",
    "benefits",
    "sessions",
    "alliance",
];

/// The ids of "{collection}/{id}" names under `field[i]`, at most [`MAX_LINKS`], no repeats.
fn links(v: &mut Violations, field: &str, given: &[String], pattern: &str) -> Vec<String> {
    if given.len() > MAX_LINKS {
        v.add(field, format!("at most {MAX_LINKS}"));
    }
    let mut out: Vec<String> = Vec::new();
    for (i, name) in given.iter().enumerate() {
        if let Some([id]) = v.check(format!("{field}[{i}]"), names::parse(name, pattern)) {
            if out.iter().any(|o| o == id) {
                v.add(format!("{field}[{i}]"), "listed twice");
            } else {
                out.push(id.to_owned());
            }
        }
    }
    out
}

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
        if budget
            .iter()
            .try_fold(0i64, |sum, (_, m)| sum.checked_add(m.minor_units()))
            .is_none()
        {
            v.add("campaign.budget", "the shares' sum is too large");
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
        let alliance = if d.alliance.is_empty() {
            String::new()
        } else {
            v.check(
                "campaign.alliance",
                names::parse(d.alliance, "alliances/{alliance}").map(|[a]| a.to_owned()),
            )
            .unwrap_or_default()
        };
        let mut channels = Vec::new();
        for (i, c) in d.channels.iter().enumerate() {
            if !(1..=4).contains(c) {
                v.add(format!("campaign.channels[{i}]"), "not a contact channel");
            } else if !channels.contains(c) {
                channels.push(*c);
            }
        }
        let benefits = links(
            &mut v,
            "campaign.benefits",
            d.benefits,
            "benefits/{benefit}",
        );
        let sessions = links(
            &mut v,
            "campaign.sessions",
            d.sessions,
            "sessions/{session}",
        );
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
            state: CampaignState::Draft,
            accepted_by: vec![proposer.clone()],
            alliance,
            channels,
            benefits,
            sessions,
            spent: 0,
            exhausted_at: None,
            created_at: now,
            updated_at: now,
        })
    }

    /// Replaces a DRAFT campaign's terms with `changed` (already checked by [`Self::propose`]
    /// for the original proposer), by `by`, who must still take part. Every other
    /// participant's acceptance is withdrawn: they accept the new terms again.
    pub fn revise(&mut self, by: &PartnerId, changed: Campaign, now: i64) -> Result<(), KitError> {
        if self.state != CampaignState::Draft {
            return Err(self.state.refuse("only a DRAFT campaign changes"));
        }
        if !changed.partners.contains(by) {
            return Err(KitError::invalid(
                "campaign.partners",
                "the caller must still take part",
            ));
        }
        let keep = (self.id.clone(), self.created_at, self.spent);
        *self = Campaign {
            id: keep.0,
            created_at: keep.1,
            spent: keep.2,
            accepted_by: vec![by.clone()],
            updated_at: now,
            ..changed
        };
        Ok(())
    }

    /// `by` accepts; the last acceptance schedules the campaign. Accepting twice changes
    /// nothing.
    pub fn accept(&mut self, by: &PartnerId, now: i64) -> Result<(), KitError> {
        if self.state != CampaignState::Draft {
            if self.state != CampaignState::Ended && self.accepted_by.contains(by) {
                return Ok(());
            }
            return Err(self.state.refuse("only a DRAFT campaign is accepted"));
        }
        if !self.accepted_by.contains(by) {
            self.accepted_by.push(by.clone());
            self.accepted_by
                .sort_by_key(|p| self.partners.iter().position(|q| q == p));
            self.updated_at = now;
        }
        if self.partners.iter().all(|p| self.accepted_by.contains(p)) {
            self.state = CampaignState::Scheduled;
        }
        Ok(())
    }

    /// The participants that have not accepted the current terms.
    pub fn waiting_for(&self) -> Vec<&PartnerId> {
        self.partners
            .iter()
            .filter(|p| !self.accepted_by.contains(p))
            .collect()
    }

    /// SCHEDULED → RUNNING.
    pub fn launch(&mut self, now: i64) -> Result<(), KitError> {
        match self.state {
            CampaignState::Scheduled => {
                self.state = CampaignState::Running;
                self.updated_at = now;
                Ok(())
            }
            CampaignState::Draft => {
                let waiting: Vec<String> = self
                    .waiting_for()
                    .iter()
                    .map(|p| format!("partners/{p}"))
                    .collect();
                Err(KitError::WrongState(
                    "CAMPAIGN_NOT_ACCEPTED",
                    "DRAFT",
                    format!("waiting for {} to accept", waiting.join(", ")),
                ))
            }
            other => Err(other.refuse("only a SCHEDULED campaign is launched")),
        }
    }

    /// Any state but ENDED → ENDED.
    pub fn end(&mut self, now: i64) -> Result<(), KitError> {
        if self.state == CampaignState::Ended {
            return Err(self.state.refuse("the campaign has already ended"));
        }
        self.state = CampaignState::Ended;
        self.updated_at = now;
        Ok(())
    }

    /// Whether `partner` takes part (and so may see the campaign).
    pub fn includes(&self, partner: &str) -> bool {
        self.partners.iter().any(|p| p.as_str() == partner)
    }

    /// The whole budget in minor units and its currency (none without shares).
    pub fn budget_total(&self) -> Option<(String, i64)> {
        let (_, first) = self.budget.first()?;
        let sum = self.budget.iter().map(|(_, m)| m.minor_units()).sum();
        Some((first.currency().to_owned(), sum))
    }

    /// Each participant's share in basis points, summing to 10,000 (the last share absorbs
    /// the rounding); empty without a budget.
    pub fn share_bps(&self) -> Vec<(PartnerId, i32)> {
        let Some((_, total)) = self.budget_total() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut given = 0i32;
        for (i, (p, m)) in self.budget.iter().enumerate() {
            let bps = if i + 1 == self.budget.len() {
                10_000 - given
            } else {
                i32::try_from(i128::from(m.minor_units()) * 10_000 / i128::from(total.max(1)))
                    .unwrap_or(0)
            };
            given += bps;
            out.push((p.clone(), bps));
        }
        out
    }

    /// Who owes whom so that each participant bears its share of `spent`, given what each
    /// funder's benefits actually cost (`cost_by_funder`, minor units). Participants that paid
    /// more than their share are owed by those that paid less, largest first.
    pub fn settlement(
        &self,
        cost_by_funder: &[(PartnerId, i64)],
    ) -> Vec<(PartnerId, PartnerId, i64)> {
        let spent: i64 = cost_by_funder.iter().map(|(_, c)| c).sum();
        let Some((_, total)) = self.budget_total() else {
            return Vec::new();
        };
        if spent == 0 || total == 0 {
            return Vec::new();
        }
        // Net position per participant: paid minus due, due in proportion to its share's
        // amount (rounded down; the last share absorbs the rounding).
        let mut due_given = 0i64;
        let mut net: Vec<(PartnerId, i64)> = Vec::new();
        for (i, (p, amount)) in self.budget.iter().enumerate() {
            let due = if i + 1 == self.budget.len() {
                spent - due_given
            } else {
                i64::try_from(
                    i128::from(spent) * i128::from(amount.minor_units()) / i128::from(total),
                )
                .unwrap_or(0)
            };
            due_given += due;
            let paid = cost_by_funder
                .iter()
                .filter(|(f, _)| f == p)
                .map(|(_, c)| c)
                .sum::<i64>();
            net.push((p.clone(), paid - due));
        }
        // A participant that put nothing in bears nothing, but what it paid is owed to it.
        for (f, c) in cost_by_funder {
            if !self.budget.iter().any(|(p, _)| p == f) {
                net.push((f.clone(), *c));
            }
        }
        let mut creditors: Vec<(PartnerId, i64)> =
            net.iter().filter(|(_, n)| *n > 0).cloned().collect();
        let mut debtors: Vec<(PartnerId, i64)> = net
            .iter()
            .filter(|(_, n)| *n < 0)
            .map(|(p, n)| (p.clone(), -n))
            .collect();
        creditors.sort_by_key(|(_, n)| -n);
        debtors.sort_by_key(|(_, n)| -n);
        let mut lines = Vec::new();
        let (mut c, mut d) = (0, 0);
        while c < creditors.len() && d < debtors.len() {
            let amount = creditors[c].1.min(debtors[d].1);
            lines.push((debtors[d].0.clone(), creditors[c].0.clone(), amount));
            creditors[c].1 -= amount;
            debtors[d].1 -= amount;
            if creditors[c].1 == 0 {
                c += 1;
            }
            if debtors[d].1 == 0 {
                d += 1;
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests;

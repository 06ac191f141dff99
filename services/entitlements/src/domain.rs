//! The entitlements domain: benefit definitions built only through their checking constructor,
//! and the service's own error cases. No gRPC, no SQL.

use lianyu_kit::{
    KitError,
    ids::PartnerId,
    money::Money,
    validate::{Violations, partner, text},
};

/// Entitlements' own failures; everything generic is the kit's [`KitError`].
#[derive(Debug, thiserror::Error)]
pub enum EntitlementsError {
    /// NOT_FOUND / BENEFIT_NOT_FOUND: no benefit by that name that the caller issues, funds or
    /// honours (another partner's benefit answers the same).
    #[error("benefit not found")]
    BenefitNotFound,
    #[error(transparent)]
    Kit(#[from] KitError),
}

/// What a benefit gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenefitKind {
    FixedCoupon,
    PercentCoupon,
    /// Spend-threshold coupon (满减).
    ThresholdCoupon,
    Points,
    /// Stored-value card (充值卡).
    StoredValue,
    Gift,
    Service,
}

/// DRAFT → ACTIVE ⇄ PAUSED → ENDED.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenefitState {
    Draft,
    Active,
    Paused,
    Ended,
}

/// A benefit definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Benefit {
    pub id: String,
    pub display_name: String,
    pub kind: BenefitKind,
    /// The partner that defines it and alone changes it.
    pub issuer: PartnerId,
    /// The partner that pays for it; the issuer unless named.
    pub funder: PartnerId,
    /// The partners whose stores honour it; the issuer unless named.
    pub honoured_by: Vec<PartnerId>,
    pub value: Option<Money>,
    pub threshold: Option<Money>,
    pub percent_off_bps: i32,
    pub budget_units: i64,
    pub granted_units: i64,
    pub per_member_limit: i32,
    pub valid_from_millis: i64,
    pub valid_until_millis: i64,
    pub state: BenefitState,
}

/// A partner's definition before it is checked. Each parsed part carries its own violation.
pub struct BenefitDraft<'a> {
    pub display_name: &'a str,
    pub kind: Option<BenefitKind>,
    pub funder: &'a str,
    pub honoured_by: &'a [String],
    pub value: Option<Result<Money, String>>,
    pub threshold: Option<Result<Money, String>>,
    pub percent_off_bps: i32,
    pub budget_units: i64,
    pub per_member_limit: i32,
    pub valid_from: Option<Result<i64, String>>,
    pub valid_until: Result<i64, String>,
}

/// At most this many partners honour one benefit.
pub const MAX_HONOURING: usize = 16;

impl Benefit {
    /// Checks a definition by `issuer` at `now`, reporting every problem at once with its
    /// field under `benefit.`. A new benefit is a DRAFT.
    pub fn define(issuer: &PartnerId, d: &BenefitDraft<'_>, now: i64) -> Result<Self, KitError> {
        let mut v = Violations::default();
        let display_name = v.check("benefit.display_name", text(d.display_name, true, 100));
        let kind = d.kind;
        if kind.is_none() {
            v.add("benefit.kind", "required");
        }
        let funder = if d.funder.is_empty() {
            Some(issuer.clone())
        } else {
            v.check("benefit.funder", partner(d.funder))
        };
        let mut honoured_by = Vec::new();
        v.partners(
            "benefit.honoured_by",
            d.honoured_by,
            MAX_HONOURING,
            &mut honoured_by,
        );
        if honoured_by.is_empty() {
            honoured_by.push(issuer.clone());
        }
        honoured_by.sort();
        let value = d.value.clone().and_then(|m| v.check("benefit.value", m));
        let threshold = d
            .threshold
            .clone()
            .and_then(|m| v.check("benefit.threshold", m));
        // A missing amount is reported as required; a malformed one already has its violation.
        let (no_value, no_threshold) = (d.value.is_none(), d.threshold.is_none());
        match kind {
            Some(BenefitKind::FixedCoupon | BenefitKind::StoredValue) if no_value => {
                v.add("benefit.value", "required for this kind");
            }
            Some(BenefitKind::ThresholdCoupon) => match (&value, &threshold) {
                (Some(value), Some(threshold))
                    if value.currency() != threshold.currency()
                        || threshold.minor_units() <= value.minor_units() =>
                {
                    v.add("benefit.threshold", "above the value, in the same currency");
                }
                _ if no_value => v.add("benefit.value", "required for this kind"),
                _ if no_threshold => v.add("benefit.threshold", "required for this kind"),
                _ => {}
            },
            Some(BenefitKind::PercentCoupon) if !(1..=10_000).contains(&d.percent_off_bps) => {
                v.add("benefit.percent_off_bps", "1 to 10000 (basis points)");
            }
            _ => {}
        }
        if d.budget_units <= 0 {
            v.add("benefit.budget_units", "above zero");
        }
        if d.per_member_limit < 0 {
            v.add(
                "benefit.per_member_limit",
                "not negative (0 means no limit)",
            );
        }
        let from = match &d.valid_from {
            None => Some(now),
            Some(from) => v.check("benefit.valid_from", from.clone()),
        };
        let until = v.check("benefit.valid_until", d.valid_until.clone());
        if let (Some(from), Some(until)) = (from, until)
            && (until <= from || until <= now)
        {
            v.add("benefit.valid_until", "after valid_from and in the future");
        }
        v.finish()?;
        let (Some(display_name), Some(kind), Some(funder), Some(from), Some(until)) =
            (display_name, kind, funder, from, until)
        else {
            return Err(KitError::invalid("benefit", "required"));
        };
        Ok(Self {
            id: uuid::Uuid::now_v7().simple().to_string(),
            display_name,
            kind,
            issuer: issuer.clone(),
            funder,
            honoured_by,
            value,
            threshold,
            percent_off_bps: d.percent_off_bps,
            budget_units: d.budget_units,
            granted_units: 0,
            per_member_limit: d.per_member_limit,
            valid_from_millis: from,
            valid_until_millis: until,
            state: BenefitState::Draft,
        })
    }

    /// The partners that may see the benefit: its issuer, its funder and those honouring it.
    pub fn parties(&self) -> Vec<PartnerId> {
        let mut parties = vec![self.issuer.clone()];
        for p in std::iter::once(&self.funder).chain(&self.honoured_by) {
            if !parties.contains(p) {
                parties.push(p.clone());
            }
        }
        parties
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(kind: BenefitKind) -> BenefitDraft<'static> {
        BenefitDraft {
            display_name: "50 off 300",
            kind: Some(kind),
            funder: "partners/brand-a",
            honoured_by: &[],
            value: Some(Money::positive("CNY", 5_000)),
            threshold: Some(Money::positive("CNY", 30_000)),
            percent_off_bps: 0,
            budget_units: 1000,
            per_member_limit: 1,
            valid_from: None,
            valid_until: Ok(10_000),
        }
    }

    #[test]
    fn a_mall_issues_what_a_brand_funds_and_all_three_roles_are_parties() {
        let mall = PartnerId::new("mall-b");
        let b = Benefit::define(&mall, &draft(BenefitKind::ThresholdCoupon), 1).unwrap();
        assert_eq!(b.state, BenefitState::Draft);
        assert_eq!(b.funder, PartnerId::new("brand-a"));
        assert_eq!(b.honoured_by, std::slice::from_ref(&mall));
        assert_eq!(b.parties(), [mall, PartnerId::new("brand-a")]);
    }

    #[test]
    fn a_threshold_must_exceed_the_value_and_percentages_are_basis_points() {
        let mall = PartnerId::new("mall-b");
        let mut d = draft(BenefitKind::ThresholdCoupon);
        d.threshold = Some(Money::positive("CNY", 5_000));
        let e = Benefit::define(&mall, &d, 1).unwrap_err();
        assert_eq!(
            lianyu_kit::ServiceError::field_violations(&e)[0].field,
            "benefit.threshold"
        );
        let e = Benefit::define(&mall, &draft(BenefitKind::PercentCoupon), 1).unwrap_err();
        assert_eq!(
            lianyu_kit::ServiceError::field_violations(&e)[0].field,
            "benefit.percent_off_bps"
        );
    }
}

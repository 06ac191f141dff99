//! The entitlements domain: benefit definitions built only through their checking constructor,
//! and the service's own error cases. No gRPC, no SQL.

mod balance;

pub use balance::{BalanceKind, POINTS_UNIT, negated, points};

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
    /// NOT_FOUND / MEMBER_NOT_FOUND: the caller holds no member by that id.
    #[error("member not found")]
    MemberNotFound,
    /// NOT_FOUND / WALLET_ITEM_NOT_FOUND: the member holds no such unit the caller may see.
    #[error("wallet item not found")]
    WalletItemNotFound,
    /// NOT_FOUND / REDEMPTION_NOT_FOUND: no redemption by that name made by the caller.
    #[error("redemption not found")]
    RedemptionNotFound,
    /// NOT_FOUND / EARNING_NOT_FOUND: no points earning by that name awarded by the caller.
    #[error("points earning not found")]
    EarningNotFound,
    /// NOT_FOUND / SPEND_NOT_FOUND: no balance spend by that name taken by the caller.
    #[error("balance spend not found")]
    SpendNotFound,
    /// ABORTED / ETAG_MISMATCH: the benefit's terms changed since the caller read the etag it
    /// gave.
    #[error("the benefit's terms changed since they were read; read it again")]
    EtagMismatch,
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

impl BenefitState {
    /// As the contract names it (ErrorInfo metadata `state`).
    pub fn as_str(self) -> &'static str {
        match self {
            BenefitState::Draft => "DRAFT",
            BenefitState::Active => "ACTIVE",
            BenefitState::Paused => "PAUSED",
            BenefitState::Ended => "ENDED",
        }
    }
}

/// A change of a benefit's state that its issuer asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Activate,
    Pause,
    Resume,
    End,
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
    /// Units last this many days after their grant (never past `valid_until`); 0: until then.
    pub valid_days: i32,
    /// The funder agreed to pay (always when the issuer funds it).
    pub funding_accepted: bool,
    /// Stored value: the bonus on every top-up, basis points of the amount.
    pub top_up_bonus_bps: i32,
    /// The share of a discount the funder pays an honouring partner other than itself, in
    /// basis points (10000: all of it); the honouring partner bears the rest.
    pub funder_share_bps: i32,
    /// The stores that honour it ("partners/{p}/stores/{s}"); empty: all of the honouring
    /// partners'.
    pub stores: Vec<String>,
    /// The product categories it applies to; empty: any.
    pub categories: Vec<String>,
    /// At most one unit of a stacking group per order at a partner; empty: none.
    pub stacking_group: String,
    /// The discounts the funder pays never add up past it; `None`: no money budget.
    pub budget_value: Option<Money>,
    /// Of `budget_value`, what redemptions used (minor units).
    pub spent_value: i64,
    /// A larger unit budget the issuer proposed for a live benefit another partner funds; it
    /// stands once the funder accepts it ([`Self::accept_funding`]).
    pub proposed_budget_units: Option<i64>,
    /// The same for the money budget.
    pub proposed_budget_value: Option<Money>,
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
    pub valid_days: i32,
    pub top_up_bonus_bps: i32,
    /// 0 means 10000.
    pub funder_share_bps: i32,
    pub stores: &'a [String],
    pub categories: &'a [String],
    pub stacking_group: &'a str,
    pub budget_value: Option<Result<Money, String>>,
}

/// At most this many stores or categories restrict one benefit.
pub const MAX_PLACES: usize = 64;

/// A product category code: 1 to 64 of [a-z0-9_.-].
fn category(code: &str) -> Result<String, String> {
    let ok = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
    if ok {
        Ok(code.to_owned())
    } else {
        Err("1 to 64 of [a-z0-9_.-]".into())
    }
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
        match kind {
            Some(BenefitKind::StoredValue) if !(0..=10_000).contains(&d.top_up_bonus_bps) => {
                v.add("benefit.top_up_bonus_bps", "0 to 10000 (basis points)");
            }
            Some(k) if k != BenefitKind::StoredValue && d.top_up_bonus_bps != 0 => {
                v.add("benefit.top_up_bonus_bps", "only for stored value");
            }
            _ => {}
        }
        if d.budget_units <= 0 {
            v.add("benefit.budget_units", "above zero");
        }
        if d.stores.len() > MAX_PLACES {
            v.add("benefit.stores", format!("at most {MAX_PLACES} stores"));
        }
        let mut stores = Vec::new();
        for (i, store) in d.stores.iter().enumerate() {
            match lianyu_kit::names::parse::<2>(store, "partners/{partner}/stores/{store}") {
                Ok([p, _]) if honoured_by.iter().any(|h| h.as_str() == p) => {
                    if !stores.contains(store) {
                        stores.push(store.clone());
                    }
                }
                Ok(_) => v.add(
                    format!("benefit.stores[{i}]"),
                    "a store of a partner that honours the benefit",
                ),
                Err(e) => v.add(format!("benefit.stores[{i}]"), e),
            }
        }
        stores.sort();
        if d.categories.len() > MAX_PLACES {
            v.add(
                "benefit.categories",
                format!("at most {MAX_PLACES} categories"),
            );
        }
        let mut categories = Vec::new();
        for (i, code) in d.categories.iter().enumerate() {
            if let Some(code) = v.check(format!("benefit.categories[{i}]"), category(code))
                && !categories.contains(&code)
            {
                categories.push(code);
            }
        }
        categories.sort();
        let stacking_group = if d.stacking_group.is_empty() {
            Some(String::new())
        } else {
            v.check("benefit.stacking_group", category(d.stacking_group))
        };
        let budget_value = d
            .budget_value
            .clone()
            .and_then(|m| v.check("benefit.budget_value", m));
        if let (Some(budget), Some(c)) = (
            &budget_value,
            value.as_ref().or(threshold.as_ref()).map(Money::currency),
        ) && budget.currency() != c
        {
            v.add(
                "benefit.budget_value",
                format!("in the benefit's currency, {c}"),
            );
        }
        if !(0..=10_000).contains(&d.funder_share_bps) {
            v.add(
                "benefit.funder_share_bps",
                "1 to 10000 (basis points; 0 means 10000)",
            );
        }
        if !(0..=3660).contains(&d.valid_days) {
            v.add("benefit.valid_days", "0 to 3660 (0: until valid_until)");
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
        let funding_accepted = funder == *issuer;
        Ok(Self {
            funding_accepted,
            valid_days: d.valid_days,
            top_up_bonus_bps: d.top_up_bonus_bps,
            funder_share_bps: if d.funder_share_bps == 0 {
                10_000
            } else {
                d.funder_share_bps
            },
            stores,
            categories,
            stacking_group: stacking_group.unwrap_or_default(),
            budget_value,
            spent_value: 0,
            proposed_budget_units: None,
            proposed_budget_value: None,
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

    /// The state `transition` by `by` leads to, or why it may not happen. Only the issuer
    /// changes a benefit; a benefit another partner funds goes ACTIVE only once that partner
    /// has accepted.
    pub fn transition(&self, by: &PartnerId, t: Transition) -> Result<BenefitState, KitError> {
        self.issued_by(by)?;
        let next = match (t, self.state) {
            (Transition::Activate, BenefitState::Draft) => {
                if !self.funding_accepted {
                    return Err(KitError::Precondition(
                        "FUNDER_ACCEPTANCE_REQUIRED",
                        format!("partners/{} has not accepted to fund it", self.funder),
                    ));
                }
                BenefitState::Active
            }
            (Transition::Pause, BenefitState::Active) => BenefitState::Paused,
            (Transition::Resume, BenefitState::Paused) => BenefitState::Active,
            (
                Transition::End,
                BenefitState::Draft | BenefitState::Active | BenefitState::Paused,
            ) => BenefitState::Ended,
            (t, state) => {
                let wanted = match t {
                    Transition::Activate => "activating needs a DRAFT",
                    Transition::Pause => "pausing needs an ACTIVE benefit",
                    Transition::Resume => "resuming needs a PAUSED benefit",
                    Transition::End => "it has already ended",
                };
                return Err(KitError::WrongState(
                    "BENEFIT_STATE",
                    state.as_str(),
                    wanted.to_owned(),
                ));
            }
        };
        Ok(next)
    }

    /// Applies the fields named in `paths` from `d`, by `by` at `now`: only the issuer, never
    /// once ENDED, and while ACTIVE or PAUSED the budget only grows. Every bad field is
    /// reported at once under `benefit.`.
    pub fn update(
        &mut self,
        by: &PartnerId,
        paths: &std::collections::BTreeSet<&str>,
        d: &BenefitDraft<'_>,
        now: i64,
    ) -> Result<(), KitError> {
        self.issued_by(by)?;
        if self.state == BenefitState::Ended {
            return Err(KitError::WrongState(
                "BENEFIT_STATE",
                self.state.as_str(),
                "an ENDED benefit no longer changes".into(),
            ));
        }
        let mut v = Violations::default();
        let mut next = self.clone();
        if paths.contains("display_name")
            && let Some(name) = v.check("benefit.display_name", text(d.display_name, true, 100))
        {
            next.display_name = name;
        }
        if paths.contains("budget_units") {
            if d.budget_units <= 0 || d.budget_units < self.granted_units {
                v.add(
                    "benefit.budget_units",
                    format!("above zero and at least the {} granted", self.granted_units),
                );
            }
            next.budget_units = d.budget_units;
        }
        if paths.contains("budget_value") {
            match d.budget_value.clone() {
                Some(Ok(m))
                    if self
                        .budget_value
                        .as_ref()
                        .is_none_or(|b| b.currency() == m.currency()) =>
                {
                    next.budget_value = Some(m);
                }
                Some(Ok(_)) => v.add("benefit.budget_value", "in the budget's currency"),
                Some(Err(e)) => v.add("benefit.budget_value", e),
                None => next.budget_value = None,
            }
        }
        if paths.contains("per_member_limit") {
            if d.per_member_limit < 0 {
                v.add(
                    "benefit.per_member_limit",
                    "not negative (0 means no limit)",
                );
            }
            next.per_member_limit = d.per_member_limit;
        }
        if paths.contains("valid_until") {
            match d.valid_until.clone() {
                Ok(until) if until > now && until > self.valid_from_millis => {
                    next.valid_until_millis = until;
                }
                Ok(_) => v.add("benefit.valid_until", "after valid_from and in the future"),
                Err(e) => v.add("benefit.valid_until", e),
            }
        }
        v.finish()?;
        let value_shrinks = match (&self.budget_value, &next.budget_value) {
            (Some(was), Some(is)) => is.minor_units() < was.minor_units(),
            (None, Some(_)) => true,
            _ => false,
        };
        if self.state != BenefitState::Draft && value_shrinks {
            return Err(KitError::Precondition(
                "BUDGET_MAY_ONLY_GROW",
                "the money budget of a live benefit only grows".into(),
            ));
        }
        if self.state != BenefitState::Draft && next.budget_units < self.budget_units {
            return Err(KitError::Precondition(
                "BUDGET_MAY_ONLY_GROW",
                format!(
                    "the budget of a live benefit only grows (it is {})",
                    self.budget_units
                ),
            ));
        }
        if self.funder != self.issuer {
            if self.state == BenefitState::Draft {
                // What the funder accepted to pay for is no longer what it would pay for: it
                // accepts the new terms before the benefit goes ACTIVE.
                if next.budget_units != self.budget_units
                    || next.budget_value != self.budget_value
                    || next.per_member_limit != self.per_member_limit
                    || next.valid_until_millis != self.valid_until_millis
                {
                    next.funding_accepted = false;
                }
            } else {
                self.propose_growth(paths, &mut next)?;
            }
        }
        *self = next;
        Ok(())
    }

    /// On a live benefit another partner funds, a larger budget is the funder's money: `next`
    /// keeps the budget in force and carries the larger one as a proposal (the budget in force
    /// again withdraws a proposal); a money budget is never removed.
    fn propose_growth(
        &self,
        paths: &std::collections::BTreeSet<&str>,
        next: &mut Self,
    ) -> Result<(), KitError> {
        if paths.contains("budget_units") {
            next.proposed_budget_units =
                (next.budget_units > self.budget_units).then_some(next.budget_units);
            next.budget_units = self.budget_units;
        }
        if paths.contains("budget_value") {
            let Some(proposed) = next.budget_value.take() else {
                if self.budget_value.is_none() {
                    return Ok(());
                }
                return Err(KitError::Precondition(
                    "BUDGET_MAY_ONLY_GROW",
                    format!(
                        "partners/{} funds it: its money budget may grow, never go",
                        self.funder
                    ),
                ));
            };
            let grows = self
                .budget_value
                .as_ref()
                .is_some_and(|was| proposed.minor_units() > was.minor_units());
            next.proposed_budget_value = grows.then_some(proposed);
            next.budget_value = self.budget_value.clone();
        }
        Ok(())
    }

    /// Whether the issuer proposed a larger budget the funder has yet to accept.
    pub fn growth_proposed(&self) -> bool {
        self.proposed_budget_units.is_some() || self.proposed_budget_value.is_some()
    }

    /// The proposed budget dropped (the benefit ended before its funder accepted it).
    pub fn withdraw_proposed_growth(&mut self) {
        self.proposed_budget_units = None;
        self.proposed_budget_value = None;
    }

    /// The proposed budget in force (the funder accepted it).
    pub fn take_proposed_growth(&mut self) {
        if let Some(units) = self.proposed_budget_units.take() {
            self.budget_units = units;
        }
        if let Some(value) = self.proposed_budget_value.take() {
            self.budget_value = Some(value);
        }
    }

    /// PERMISSION_DENIED / ISSUER_ONLY unless `by` issued it.
    pub fn issued_by(&self, by: &PartnerId) -> Result<(), KitError> {
        if *by != self.issuer {
            return Err(KitError::Denied(
                "ISSUER_ONLY",
                "only the benefit's issuer changes it",
            ));
        }
        Ok(())
    }

    /// The funder `by` accepts to pay: only the funder, for a DRAFT or for a live benefit's
    /// proposed budget.
    pub fn accept_funding(&self, by: &PartnerId) -> Result<(), KitError> {
        if *by != self.funder {
            return Err(KitError::Denied(
                "FUNDER_ONLY",
                "only the benefit's funder accepts to fund it",
            ));
        }
        let live = matches!(self.state, BenefitState::Active | BenefitState::Paused);
        if self.state != BenefitState::Draft && !(live && self.growth_proposed()) {
            return Err(KitError::WrongState(
                "BENEFIT_STATE",
                self.state.as_str(),
                "funding is accepted for a DRAFT, or for a larger budget its issuer proposed"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Whether a unit may be granted or claimed at `now`: ACTIVE and inside its window.
    pub fn grantable(&self, now: i64) -> Result<(), KitError> {
        if self.is_balance() {
            return Err(KitError::Precondition(
                "NOT_A_UNIT",
                "points and stored value are balances: EarnPoints and TopUp add to them".into(),
            ));
        }
        self.open(now)
    }

    /// Whether value may be added at `now`: ACTIVE and inside its window.
    pub fn open(&self, now: i64) -> Result<(), KitError> {
        if self.state != BenefitState::Active {
            return Err(KitError::WrongState(
                "BENEFIT_STATE",
                self.state.as_str(),
                "units are granted from an ACTIVE benefit".into(),
            ));
        }
        if now < self.valid_from_millis || now >= self.valid_until_millis {
            return Err(KitError::Precondition(
                "BENEFIT_NOT_VALID_NOW",
                "the benefit is outside its validity window".into(),
            ));
        }
        Ok(())
    }

    /// When a unit granted at `granted_at` expires.
    pub fn expiry(&self, granted_at: i64) -> i64 {
        if self.valid_days == 0 {
            return self.valid_until_millis;
        }
        let days = i64::from(self.valid_days) * 86_400_000;
        Ord::min(granted_at.saturating_add(days), self.valid_until_millis)
    }

    /// The amount off an order of `order`: FAILED_PRECONDITION when the order is in another
    /// currency or below a threshold. Gifts and services take nothing off (zero).
    pub fn discount(&self, order: &Money) -> Result<Money, KitError> {
        let currency_of = |m: &Option<Money>| m.as_ref().map(|m| m.currency().to_owned());
        if let Some(c) = currency_of(&self.value).or_else(|| currency_of(&self.threshold))
            && c != order.currency()
        {
            return Err(KitError::Precondition(
                "CURRENCY_MISMATCH",
                format!("the benefit is in {c}"),
            ));
        }
        let value = self.value.as_ref().map_or(0, Money::minor_units);
        let off = match self.kind {
            BenefitKind::FixedCoupon => value.min(order.minor_units()),
            BenefitKind::ThresholdCoupon => {
                let threshold = self.threshold.as_ref().map_or(0, Money::minor_units);
                if order.minor_units() < threshold {
                    return Err(KitError::Precondition(
                        "THRESHOLD_NOT_MET",
                        format!("the order must be at least {threshold} minor units"),
                    ));
                }
                value
            }
            BenefitKind::PercentCoupon => {
                // Integer arithmetic, rounded down in the member's disfavour by under a cent.
                let off =
                    i128::from(order.minor_units()) * i128::from(self.percent_off_bps) / 10_000;
                let off = i64::try_from(off).unwrap_or(i64::MAX);
                if self.value.is_some() {
                    off.min(value)
                } else {
                    off
                }
            }
            BenefitKind::Points
            | BenefitKind::StoredValue
            | BenefitKind::Gift
            | BenefitKind::Service => 0,
        };
        Money::new(order.currency(), off).map_err(|e| KitError::Internal(e.to_string()))
    }

    /// The face value booked as the funder's liability when a unit is granted (fixed and
    /// threshold coupons); `None` when the amount is known only at the till.
    pub fn liability(&self) -> Option<&Money> {
        match self.kind {
            BenefitKind::FixedCoupon | BenefitKind::ThresholdCoupon => self.value.as_ref(),
            _ => None,
        }
    }

    /// The postings of granting one unit (empty when nothing is booked until the till).
    pub fn grant_postings(&self) -> Vec<Posting> {
        let Some(value) = self.liability() else {
            return Vec::new();
        };
        let funder = &self.funder;
        vec![
            Posting::new(funder, "marketing_expense", value, value.minor_units()),
            Posting::new(funder, "benefit_liability", value, -value.minor_units()),
        ]
    }

    /// Of `discount` given at `honourer`, what the funder pays: all of it at its own
    /// counters, its share (rounded down) at another partner's.
    pub fn funder_part(&self, honourer: &PartnerId, discount: i64) -> i64 {
        if *honourer == self.funder {
            return discount;
        }
        let part = i128::from(discount) * i128::from(self.funder_share_bps) / 10_000;
        i64::try_from(part).unwrap_or(discount)
    }

    /// Where the funder's part of a discount comes from: the liability booked at the grant,
    /// or its marketing expense when nothing was booked.
    fn source(&self) -> &'static str {
        if self.liability().is_some() {
            "benefit_liability"
        } else {
            "marketing_expense"
        }
    }

    /// Whether `honourer` takes it at `store` for an order of `category` (empty: none given):
    /// PERMISSION_DENIED / NOT_HONOURED_HERE for a partner or store that does not honour it,
    /// FAILED_PRECONDITION / CATEGORY_NOT_ELIGIBLE for an order of another category.
    pub fn honoured_at(
        &self,
        honourer: &PartnerId,
        store: &str,
        category: &str,
    ) -> Result<(), KitError> {
        self.honoured_at_store(honourer, store)?;
        if !self.categories.is_empty() && !self.categories.iter().any(|c| c == category) {
            return Err(KitError::Precondition(
                "CATEGORY_NOT_ELIGIBLE",
                format!(
                    "the benefit applies to orders of {} only",
                    self.categories.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// PERMISSION_DENIED / NOT_HONOURED_HERE unless `honourer` honours it at `store`.
    pub fn honoured_at_store(&self, honourer: &PartnerId, store: &str) -> Result<(), KitError> {
        if !self.honoured_by.contains(honourer)
            || (!self.stores.is_empty() && !self.stores.iter().any(|s| s == store))
        {
            return Err(KitError::Denied(
                "NOT_HONOURED_HERE",
                "the benefit is not honoured at this partner or store",
            ));
        }
        Ok(())
    }

    /// The postings of a unit that expired unused: its grant's, reversed (nothing when
    /// nothing was booked).
    pub fn expiry_postings(&self) -> Vec<Posting> {
        balance::negated(&self.grant_postings())
    }

    /// The postings of redeeming one unit at `honourer` for `discount`: the funder's liability
    /// (or expense, when none was booked) pays its part, owed to the honouring partner when
    /// that is another partner, which bears the rest itself; what the booked face value
    /// exceeded the funder's part by goes back from liability to expense.
    pub fn redemption_postings(&self, honourer: &PartnerId, discount: &Money) -> Vec<Posting> {
        let funder = &self.funder;
        let d = discount.minor_units();
        let f = self.funder_part(honourer, d);
        let mut out = Vec::new();
        if let Some(value) = self.liability() {
            let unused = value.minor_units() - f;
            if unused > 0 {
                out.push(Posting::new(funder, "benefit_liability", value, unused));
                out.push(Posting::new(funder, "marketing_expense", value, -unused));
            }
        }
        if d == 0 {
            return out;
        }
        out.extend(self.discount_lines(honourer, discount, d, f));
        out
    }

    /// The discount's lines: `f` of `d` from the funder's source to the honouring partner,
    /// the rest the honouring partner's own expense. Negate both to reverse.
    fn discount_lines(
        &self,
        honourer: &PartnerId,
        currency: &Money,
        d: i64,
        f: i64,
    ) -> Vec<Posting> {
        let funder = &self.funder;
        if honourer == funder {
            return vec![
                Posting::new(funder, self.source(), currency, d),
                Posting::new(funder, "discounts_given", currency, -d),
            ];
        }
        let mut out = Vec::new();
        if f != 0 {
            out.push(Posting::new(funder, self.source(), currency, f));
            out.push(Posting::new(
                funder,
                &format!("payable:{honourer}"),
                currency,
                -f,
            ));
            out.push(Posting::new(
                honourer,
                &format!("receivable:{funder}"),
                currency,
                f,
            ));
        }
        if d - f != 0 {
            out.push(Posting::new(honourer, "marketing_expense", currency, d - f));
        }
        out.push(Posting::new(honourer, "discounts_given", currency, -d));
        out
    }

    /// The postings reversing `share` of a redemption's discount at `honourer` (a refund), of
    /// which `funder_share` was the funder's: the discount's lines of
    /// [`Self::redemption_postings`], negated.
    pub fn refund_postings(
        &self,
        honourer: &PartnerId,
        share: &Money,
        funder_share: i64,
    ) -> Vec<Posting> {
        let x = share.minor_units();
        if x == 0 {
            return Vec::new();
        }
        balance::negated(&self.discount_lines(honourer, share, x, funder_share))
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

/// One line of a ledger transaction: `amount` minor units (debit positive, credit negative)
/// on `partner`'s `account`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posting {
    pub partner: PartnerId,
    pub account: String,
    pub currency: String,
    pub amount: i64,
    /// The member (mesh id) whose sub-account of a balance liability it is.
    pub member: Option<String>,
}

impl Posting {
    fn new(partner: &PartnerId, account: &str, currency: &Money, amount: i64) -> Self {
        Self {
            partner: partner.clone(),
            account: account.to_owned(),
            currency: currency.currency().to_owned(),
            amount,
            member: None,
        }
    }
}

/// Of a redemption's `discount` on an `order`, how much a refund that brings the order's
/// refunded total from `before` to `after` reverses: the cumulative share rounded down, so
/// the shares of any sequence of refunds add up to exactly the discount at a full refund.
pub fn refund_share(discount: i64, order: i64, before: i64, after: i64) -> i64 {
    let upto = |refunded: i64| {
        if order <= 0 {
            return 0;
        }
        i64::try_from(i128::from(discount) * i128::from(refunded) / i128::from(order))
            .unwrap_or(discount)
    };
    upto(after) - upto(before)
}

/// Whether postings sum to zero in every currency: no transaction is stored otherwise.
pub fn balanced(postings: &[Posting]) -> bool {
    let mut sums = std::collections::BTreeMap::<&str, i128>::new();
    for p in postings {
        *sums.entry(p.currency.as_str()).or_default() += i128::from(p.amount);
    }
    sums.values().all(|s| *s == 0)
}

/// What `me` and `other` owe each other, from `me`'s postings on `payable:{other}` and
/// `receivable:{other}`: positive when `me` owes `other`.
pub fn owed_to(other: &PartnerId, postings: &[(String, i64)]) -> i64 {
    let (payable, receivable) = (format!("payable:{other}"), format!("receivable:{other}"));
    postings
        .iter()
        .filter(|(account, _)| *account == payable || *account == receivable)
        .map(|(_, amount)| -amount)
        .sum()
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
            valid_days: 0,
            top_up_bonus_bps: 0,
            funder_share_bps: 0,
            stores: &[],
            categories: &[],
            stacking_group: "",
            budget_value: None,
        }
    }

    fn active(kind: BenefitKind) -> Benefit {
        let mut d = draft(kind);
        d.percent_off_bps = 1_000;
        let mut b = Benefit::define(&PartnerId::new("mall-b"), &d, 1).unwrap();
        b.state = BenefitState::Active;
        b
    }

    fn cny(minor: i64) -> Money {
        Money::new("CNY", minor).unwrap()
    }

    #[test]
    fn a_change_of_what_the_funder_pays_for_withdraws_its_acceptance_of_a_draft() {
        let (mall, brand) = (PartnerId::new("mall-b"), PartnerId::new("brand-a"));
        let accepted = || {
            let mut b = Benefit::define(&mall, &draft(BenefitKind::FixedCoupon), 1).unwrap();
            b.funding_accepted = true;
            b
        };
        let paths = |p: &'static str| std::collections::BTreeSet::from([p]);
        let mut d = draft(BenefitKind::FixedCoupon);
        d.display_name = "renamed";
        d.budget_units = 2_000;
        d.per_member_limit = 3;
        d.valid_until = Ok(20_000);
        for (path, kept) in [
            ("display_name", true),
            ("budget_units", false),
            ("per_member_limit", false),
            ("valid_until", false),
        ] {
            let mut b = accepted();
            b.update(&mall, &paths(path), &d, 2).unwrap();
            assert_eq!(b.funding_accepted, kept, "{path}");
        }
        // The same value again is no change.
        let mut b = accepted();
        b.update(
            &mall,
            &paths("budget_units"),
            &draft(BenefitKind::FixedCoupon),
            2,
        )
        .unwrap();
        assert!(b.funding_accepted);
        // A benefit its issuer funds has nobody else to ask.
        let mut own = draft(BenefitKind::FixedCoupon);
        own.funder = "partners/mall-b";
        let mut b = Benefit::define(&mall, &own, 1).unwrap();
        b.update(&mall, &paths("budget_units"), &d, 2).unwrap();
        assert!(b.funding_accepted);
        // Once ACTIVE the acceptance of the terms in force stands; a larger budget waits for
        // the funder as a proposal, and stands once taken.
        let mut b = accepted();
        b.state = BenefitState::Active;
        b.update(&mall, &paths("budget_units"), &d, 2).unwrap();
        assert!(b.funding_accepted);
        assert_eq!(
            (b.budget_units, b.proposed_budget_units),
            (1_000, Some(2_000))
        );
        assert!(b.growth_proposed());
        b.accept_funding(&brand).unwrap();
        b.take_proposed_growth();
        assert_eq!((b.budget_units, b.proposed_budget_units), (2_000, None));
        assert!(!b.growth_proposed());
        let e = b.accept_funding(&brand).unwrap_err();
        assert_eq!(lianyu_kit::ServiceError::reason(&e), "BENEFIT_STATE");
        // Its money budget grows the same way and never goes.
        let mut b = accepted();
        b.state = BenefitState::Paused;
        b.budget_value = Some(cny(10_000));
        let mut more = draft(BenefitKind::FixedCoupon);
        more.budget_value = Some(Ok(cny(30_000)));
        b.update(&mall, &paths("budget_value"), &more, 2).unwrap();
        assert_eq!(
            (b.budget_value.clone(), b.proposed_budget_value.clone()),
            (Some(cny(10_000)), Some(cny(30_000)))
        );
        let e = b
            .update(
                &mall,
                &paths("budget_value"),
                &draft(BenefitKind::FixedCoupon),
                2,
            )
            .unwrap_err();
        assert_eq!(lianyu_kit::ServiceError::reason(&e), "BUDGET_MAY_ONLY_GROW");
        assert_eq!(
            b.budget_value,
            Some(cny(10_000)),
            "a refusal changes nothing"
        );
        // Nobody but the issuer changes the terms.
        let mut b = accepted();
        let e = b.update(&brand, &paths("budget_units"), &d, 2).unwrap_err();
        assert_eq!(lianyu_kit::ServiceError::reason(&e), "ISSUER_ONLY");
        assert!(b.funding_accepted && b.budget_units == 1_000);
    }

    #[test]
    fn the_issuer_activates_only_what_the_funder_accepted_and_every_move_is_checked() {
        let (mall, brand) = (PartnerId::new("mall-b"), PartnerId::new("brand-a"));
        let mut b = Benefit::define(&mall, &draft(BenefitKind::FixedCoupon), 1).unwrap();
        assert!(!b.funding_accepted);
        let e = b.transition(&mall, Transition::Activate).unwrap_err();
        assert_eq!(
            lianyu_kit::ServiceError::reason(&e),
            "FUNDER_ACCEPTANCE_REQUIRED"
        );
        let e = b.transition(&brand, Transition::Activate).unwrap_err();
        assert_eq!(lianyu_kit::ServiceError::reason(&e), "ISSUER_ONLY");
        assert_eq!(
            lianyu_kit::ServiceError::reason(&b.accept_funding(&mall).unwrap_err()),
            "FUNDER_ONLY"
        );
        b.accept_funding(&brand).unwrap();
        b.funding_accepted = true;
        assert_eq!(
            b.transition(&mall, Transition::Activate).unwrap(),
            BenefitState::Active
        );
        let e = b.transition(&mall, Transition::Resume).unwrap_err();
        assert_eq!(lianyu_kit::ServiceError::reason(&e), "BENEFIT_STATE");
        assert_eq!(
            lianyu_kit::ServiceError::metadata(&e)
                .get("state")
                .map(String::as_str),
            Some("DRAFT")
        );
        b.state = BenefitState::Ended;
        assert!(b.transition(&mall, Transition::End).is_err());
    }

    #[test]
    fn discounts_follow_the_kind_in_integer_minor_units() {
        let fixed = active(BenefitKind::FixedCoupon);
        assert_eq!(fixed.discount(&cny(20_000)).unwrap(), cny(5_000));
        assert_eq!(
            fixed.discount(&cny(3_000)).unwrap(),
            cny(3_000),
            "never above the order"
        );
        let threshold = active(BenefitKind::ThresholdCoupon);
        assert_eq!(threshold.discount(&cny(30_000)).unwrap(), cny(5_000));
        let e = threshold.discount(&cny(29_999)).unwrap_err();
        assert_eq!(lianyu_kit::ServiceError::reason(&e), "THRESHOLD_NOT_MET");
        let e = threshold
            .discount(&Money::new("HKD", 50_000).unwrap())
            .unwrap_err();
        assert_eq!(lianyu_kit::ServiceError::reason(&e), "CURRENCY_MISMATCH");
        let mut percent = active(BenefitKind::PercentCoupon);
        percent.percent_off_bps = 1_500;
        assert_eq!(
            percent.discount(&cny(10_001)).unwrap(),
            cny(1_500),
            "rounded down"
        );
        assert_eq!(
            percent.discount(&cny(100_000)).unwrap(),
            cny(5_000),
            "capped at value"
        );
        percent.value = None;
        assert_eq!(percent.discount(&cny(100_000)).unwrap(), cny(15_000));
        assert_eq!(
            active(BenefitKind::Gift).discount(&cny(100)).unwrap(),
            cny(0)
        );
    }

    #[test]
    fn every_transaction_balances_and_the_statement_is_what_the_funder_owes() {
        let (mall, brand) = (PartnerId::new("mall-b"), PartnerId::new("brand-a"));
        let b = active(BenefitKind::FixedCoupon);
        let grant = b.grant_postings();
        assert!(balanced(&grant));
        assert!(
            grant.iter().all(|p| p.partner == brand),
            "the funder books it"
        );
        // Redeemed at the mall on an order smaller than the face value.
        let redeem = b.redemption_postings(&mall, &cny(3_000));
        assert!(balanced(&redeem));
        let of = |who: &PartnerId| {
            redeem
                .iter()
                .filter(|p| p.partner == *who)
                .map(|p| (p.account.clone(), p.amount))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            owed_to(&mall, &of(&brand)),
            3_000,
            "the brand owes the mall"
        );
        assert_eq!(
            owed_to(&brand, &of(&mall)),
            -3_000,
            "the mall's books mirror it"
        );
        // Honoured by the funder itself: nothing is owed between partners.
        let own = b.redemption_postings(&brand, &cny(5_000));
        assert!(balanced(&own));
        assert!(own.iter().all(|p| !p.account.contains(':')));
        let mut percent = active(BenefitKind::PercentCoupon);
        percent.percent_off_bps = 1_000;
        assert!(b.grant_postings().len() == 2 && percent.grant_postings().is_empty());
        assert!(balanced(&percent.redemption_postings(&mall, &cny(1_234))));
    }

    #[test]
    fn a_split_settlement_pays_the_funders_share_and_refunds_reverse_each_part_exactly() {
        let (mall, brand) = (PartnerId::new("mall-b"), PartnerId::new("brand-a"));
        let mut b = active(BenefitKind::FixedCoupon);
        b.funder_share_bps = 6_000;
        let side = |postings: &[Posting], who: &PartnerId| {
            postings
                .iter()
                .filter(|p| p.partner == *who)
                .map(|p| (p.account.clone(), p.amount))
                .collect::<Vec<_>>()
        };
        let account = |postings: &[Posting], who: &PartnerId, account: &str| {
            postings
                .iter()
                .filter(|p| p.partner == *who && p.account == account)
                .map(|p| p.amount)
                .sum::<i64>()
        };
        let mut all = b.grant_postings();
        let redeem = b.redemption_postings(&mall, &cny(5_000));
        assert!(balanced(&redeem));
        assert_eq!(
            owed_to(&mall, &side(&redeem, &brand)),
            3_000,
            "60 % of 50.00"
        );
        assert_eq!(
            account(&redeem, &mall, "marketing_expense"),
            2_000,
            "the mall bears 40 %"
        );
        all.extend(redeem);
        assert_eq!(
            account(&all, &brand, "benefit_liability"),
            0,
            "the brand's booked liability is settled in full"
        );
        // Refunded in three uneven parts of a 450.00 order: each part's funder share is the
        // difference of cumulative shares, so they add up exactly.
        let (mut before, mut refunds) = (0, Vec::new());
        for part in [10_001, 20_000, 14_999] {
            let upto = |r: i64| refund_share(5_000, 45_000, 0, r);
            let (was, is) = (upto(before), upto(before + part));
            let f = b.funder_part(&mall, is) - b.funder_part(&mall, was);
            let back = b.refund_postings(&mall, &cny(is - was), f);
            assert!(balanced(&back));
            refunds.extend(back);
            before += part;
        }
        assert_eq!(owed_to(&mall, &side(&refunds, &brand)), -3_000);
        assert_eq!(account(&refunds, &mall, "marketing_expense"), -2_000);
        // At the funder's own counter there is nothing to split.
        assert_eq!(b.funder_part(&brand, 5_000), 5_000);
        let mut bad = draft(BenefitKind::FixedCoupon);
        bad.funder_share_bps = 10_001;
        let e = Benefit::define(&mall, &bad, 0).unwrap_err();
        assert_eq!(
            lianyu_kit::ServiceError::field_violations(&e)[0].field,
            "benefit.funder_share_bps"
        );
    }

    #[test]
    fn refunds_reverse_the_discount_in_proportion_and_add_up_to_it_exactly() {
        // ¥50 off a ¥450 order, refunded in three uneven parts.
        let parts = [10_001, 20_000, 14_999];
        let mut before = 0;
        let mut reversed = 0;
        for p in parts {
            reversed += refund_share(5_000, 45_000, before, before + p);
            before += p;
        }
        assert_eq!((before, reversed), (45_000, 5_000));
        assert_eq!(
            refund_share(5_000, 45_000, 0, 22_500),
            2_500,
            "half is half"
        );
        let (mall, brand) = (PartnerId::new("mall-b"), PartnerId::new("brand-a"));
        let b = active(BenefitKind::FixedCoupon);
        let back = b.refund_postings(&mall, &cny(2_500), 2_500);
        assert!(balanced(&back));
        let brand_side: Vec<_> = back
            .iter()
            .filter(|p| p.partner == brand)
            .map(|p| (p.account.clone(), p.amount))
            .collect();
        assert_eq!(
            owed_to(&mall, &brand_side),
            -2_500,
            "the brand owes the mall less"
        );
    }

    #[test]
    fn units_expire_after_their_days_but_never_after_the_benefit() {
        let mut b = active(BenefitKind::FixedCoupon);
        b.valid_until_millis = 10 * 86_400_000;
        assert_eq!(b.expiry(0), b.valid_until_millis);
        b.valid_days = 3;
        assert_eq!(b.expiry(0), 3 * 86_400_000);
        assert_eq!(b.expiry(9 * 86_400_000), b.valid_until_millis);
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

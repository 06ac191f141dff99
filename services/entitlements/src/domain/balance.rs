//! Points and stored value: balances per member, kept as sub-accounts of the funder's
//! liability in the ledger. Every movement here posts balanced entries; points balance in
//! their own unit (`PTS`), apart from money.

use lianyu_kit::{KitError, ids::PartnerId, money::Money};

use super::{Benefit, BenefitKind, Posting};

/// The ledger's unit for points: never an ISO 4217 code, so points never net against money.
pub const POINTS_UNIT: &str = "PTS";

/// Which balance a benefit keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BalanceKind {
    Points,
    /// In the currency of the benefit's `value`.
    StoredValue,
}

impl BalanceKind {
    /// The funder's liability account holding the members' balances.
    pub fn liability_account(self) -> &'static str {
        match self {
            BalanceKind::Points => "points_liability",
            BalanceKind::StoredValue => "stored_value_liability",
        }
    }
}

/// The postings that undo `postings`: each line negated.
pub fn negated(postings: &[Posting]) -> Vec<Posting> {
    postings
        .iter()
        .map(|p| Posting {
            amount: -p.amount,
            ..p.clone()
        })
        .collect()
}

fn member_line(
    funder: &PartnerId,
    kind: BalanceKind,
    unit: &str,
    member: &str,
    amount: i64,
) -> Posting {
    Posting {
        partner: funder.clone(),
        account: kind.liability_account().to_owned(),
        currency: unit.to_owned(),
        amount,
        member: Some(member.to_owned()),
    }
}

fn line(partner: &PartnerId, account: &str, unit: &str, amount: i64) -> Posting {
    Posting {
        partner: partner.clone(),
        account: account.to_owned(),
        currency: unit.to_owned(),
        amount,
        member: None,
    }
}

/// `from` owes `to` `amount`: the pair of lines on each side (nothing when they are one).
fn owed(from: &PartnerId, to: &PartnerId, unit: &str, amount: i64) -> Vec<Posting> {
    if from == to {
        return Vec::new();
    }
    vec![
        line(from, &format!("payable:{to}"), unit, -amount),
        line(to, &format!("receivable:{from}"), unit, amount),
    ]
}

impl Benefit {
    /// Whether it keeps a balance (points, stored value) rather than units.
    pub fn is_balance(&self) -> bool {
        matches!(self.kind, BenefitKind::Points | BenefitKind::StoredValue)
    }

    /// The balance it keeps, or FAILED_PRECONDITION / NOT_A_BALANCE.
    pub fn balance(&self) -> Result<BalanceKind, KitError> {
        match self.kind {
            BenefitKind::Points => Ok(BalanceKind::Points),
            BenefitKind::StoredValue => Ok(BalanceKind::StoredValue),
            _ => Err(KitError::Precondition(
                "NOT_A_BALANCE",
                "this benefit is held as units, not as a points or stored-value balance".into(),
            )),
        }
    }

    /// The balance kind, or NOT_A_BALANCE when it is not `want`.
    pub fn balance_of(&self, want: BalanceKind) -> Result<BalanceKind, KitError> {
        match self.balance()? {
            k if k == want => Ok(k),
            _ => Err(KitError::Precondition(
                "NOT_A_BALANCE",
                match want {
                    BalanceKind::Points => "this benefit is not a points programme",
                    BalanceKind::StoredValue => "this benefit is not stored value",
                }
                .into(),
            )),
        }
    }

    /// The stored value's currency (its `value`'s), as a zero amount.
    pub fn currency(&self) -> Option<&str> {
        self.value.as_ref().map(Money::currency)
    }

    /// CURRENCY_MISMATCH unless `amount` is in the stored value's currency.
    pub fn same_currency(&self, amount: &Money) -> Result<(), KitError> {
        match self.currency() {
            Some(c) if c != amount.currency() => Err(KitError::Precondition(
                "CURRENCY_MISMATCH",
                format!("the benefit is in {c}"),
            )),
            _ => Ok(()),
        }
    }

    /// The bonus added to a top-up of `amount`: its basis points, rounded down.
    pub fn top_up_bonus(&self, amount: &Money) -> i64 {
        let bonus = i128::from(amount.minor_units()) * i128::from(self.top_up_bonus_bps) / 10_000;
        i64::try_from(bonus).unwrap_or(0)
    }

    /// A top-up of `paid` (plus `bonus`) for `member`, paid at `collector`: the collector
    /// holds the cash and owes it to the funder when they differ; the funder owes the member
    /// both, the bonus at its marketing expense.
    pub fn top_up_postings(
        &self,
        collector: &PartnerId,
        member: &str,
        paid: &Money,
        bonus: i64,
    ) -> Vec<Posting> {
        let (funder, unit, a) = (&self.funder, paid.currency(), paid.minor_units());
        let mut out = vec![line(collector, "cash", unit, a)];
        out.extend(owed(collector, funder, unit, a));
        if bonus > 0 {
            out.push(line(funder, "marketing_expense", unit, bonus));
        }
        out.push(member_line(
            funder,
            BalanceKind::StoredValue,
            unit,
            member,
            -(a + bonus),
        ));
        out
    }

    /// `points` earned by `member`: the funder's expense, owed to the member (pending or not).
    pub fn points_earned_postings(&self, member: &str, points: i64) -> Vec<Posting> {
        vec![
            line(&self.funder, "points_expense", POINTS_UNIT, points),
            member_line(
                &self.funder,
                BalanceKind::Points,
                POINTS_UNIT,
                member,
                -points,
            ),
        ]
    }

    /// What `points` take off an order: `points` times the benefit's value (zero without one).
    pub fn points_worth(&self, points: i64) -> Option<Money> {
        let value = self.value.as_ref()?;
        Money::new(value.currency(), value.minor_units().checked_mul(points)?).ok()
    }

    /// `member` pays `taken` at `honourer` from a balance (`points` of them for points): the
    /// member's sub-account goes down by it; the funder owes the honouring partner what it
    /// took off the order.
    pub fn spend_postings(
        &self,
        kind: BalanceKind,
        honourer: &PartnerId,
        member: &str,
        points: i64,
        taken: Option<&Money>,
    ) -> Vec<Posting> {
        let funder = &self.funder;
        match (kind, taken) {
            (BalanceKind::Points, _) => {
                let mut out = vec![
                    member_line(funder, kind, POINTS_UNIT, member, points),
                    line(funder, "points_redeemed", POINTS_UNIT, -points),
                ];
                if let Some(taken) = taken {
                    out.extend(self.redemption_postings(honourer, taken));
                }
                out
            }
            (BalanceKind::StoredValue, None) => Vec::new(),
            (BalanceKind::StoredValue, Some(taken)) => {
                let (unit, s) = (taken.currency(), taken.minor_units());
                let mut out = vec![member_line(funder, kind, unit, member, s)];
                out.extend(owed(funder, honourer, unit, s));
                out.push(line(honourer, "stored_value_sales", unit, -s));
                out
            }
        }
    }
}

/// Checks a points amount on the wire: 1 to a billion.
pub fn points(field: &str, n: i64) -> Result<i64, KitError> {
    if (1..=1_000_000_000).contains(&n) {
        Ok(n)
    } else {
        Err(KitError::invalid(field, "1 to 1000000000"))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BenefitState, balanced};
    use super::*;

    fn programme(kind: BenefitKind, funder: &str, value: Option<Money>) -> Benefit {
        Benefit {
            id: "b".into(),
            display_name: "card".into(),
            kind,
            issuer: PartnerId::new("mall"),
            funder: PartnerId::new(funder),
            honoured_by: vec![PartnerId::new("mall"), PartnerId::new("brand")],
            value,
            threshold: None,
            percent_off_bps: 0,
            budget_units: 1,
            granted_units: 0,
            per_member_limit: 0,
            valid_from_millis: 0,
            valid_until_millis: i64::MAX,
            state: BenefitState::Active,
            valid_days: 0,
            funding_accepted: true,
            top_up_bonus_bps: 1_000,
            funder_share_bps: 10_000,
            stores: Vec::new(),
            categories: Vec::new(),
            stacking_group: String::new(),
            budget_value: None,
            spent_value: 0,
            proposed_budget_units: None,
            proposed_budget_value: None,
        }
    }

    fn cny(minor: i64) -> Money {
        Money::new("CNY", minor).unwrap()
    }

    /// Sum of one member's sub-account in `unit`.
    fn member_sum(postings: &[Posting], unit: &str) -> i64 {
        postings
            .iter()
            .filter(|p| p.member.is_some() && p.currency == unit)
            .map(|p| p.amount)
            .sum()
    }

    #[test]
    fn a_top_up_at_another_partner_balances_and_owes_the_cash_to_the_funder() {
        let card = programme(BenefitKind::StoredValue, "mall", Some(cny(0)));
        let paid = cny(50_000);
        let bonus = card.top_up_bonus(&paid);
        assert_eq!(bonus, 5_000, "10 % of 500.00");
        let postings = card.top_up_postings(&PartnerId::new("brand"), "m1", &paid, bonus);
        assert!(balanced(&postings));
        assert_eq!(
            member_sum(&postings, "CNY"),
            -55_000,
            "the member holds 550.00"
        );
        let owed = super::super::owed_to(
            &PartnerId::new("mall"),
            &postings
                .iter()
                .filter(|p| p.partner.as_str() == "brand")
                .map(|p| (p.account.clone(), p.amount))
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            owed, 50_000,
            "the brand owes the mall the cash it collected"
        );
        // At the funder's own desk nothing is owed between partners.
        let own = card.top_up_postings(&PartnerId::new("mall"), "m1", &paid, bonus);
        assert!(balanced(&own));
        assert!(own.iter().all(|p| !p.account.contains(':')));
    }

    #[test]
    fn spending_stored_value_elsewhere_moves_the_member_balance_to_what_the_funder_owes() {
        let card = programme(BenefitKind::StoredValue, "mall", Some(cny(0)));
        let postings = card.spend_postings(
            BalanceKind::StoredValue,
            &PartnerId::new("brand"),
            "m1",
            0,
            Some(&cny(12_000)),
        );
        assert!(balanced(&postings));
        assert_eq!(member_sum(&postings, "CNY"), 12_000);
        assert!(
            postings
                .iter()
                .any(|p| p.account == "payable:brand" && p.amount == -12_000)
        );
    }

    #[test]
    fn points_balance_in_their_own_unit_and_their_worth_is_paid_by_the_funder() {
        let points = programme(BenefitKind::Points, "brand", Some(cny(1)));
        let earned = points.points_earned_postings("m1", 800);
        assert!(balanced(&earned));
        assert!(earned.iter().all(|p| p.currency == POINTS_UNIT));
        assert!(balanced(&negated(&earned)));
        assert_eq!(
            member_sum(&earned, POINTS_UNIT) + member_sum(&negated(&earned), POINTS_UNIT),
            0
        );
        let worth = points.points_worth(500).unwrap();
        assert_eq!(worth, cny(500), "500 points at 0.01 each");
        let spent = points.spend_postings(
            BalanceKind::Points,
            &PartnerId::new("mall"),
            "m1",
            500,
            Some(&worth),
        );
        assert!(balanced(&spent));
        assert_eq!(member_sum(&spent, POINTS_UNIT), 500);
        assert!(
            spent
                .iter()
                .any(|p| p.account == "payable:mall" && p.amount == -500)
        );
        // Points without a worth spend nothing in money.
        let plain = programme(BenefitKind::Points, "brand", None);
        assert!(plain.points_worth(10).is_none());
    }

    #[test]
    fn balances_are_not_units_and_units_are_not_balances() {
        let card = programme(BenefitKind::StoredValue, "mall", Some(cny(0)));
        assert!(card.grantable(1).is_err());
        assert!(card.balance_of(BalanceKind::Points).is_err());
        let coupon = programme(BenefitKind::FixedCoupon, "mall", Some(cny(100)));
        assert!(coupon.balance().is_err());
        assert!(coupon.grantable(1).is_ok());
        assert!(points("points", 0).is_err());
        assert!(points("points", 1_000_000_001).is_err());
    }
}

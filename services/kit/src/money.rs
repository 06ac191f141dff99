//! Money: an amount in integer minor units of one currency (fen for CNY). Never a float; sums
//! are checked, so an overflow is an error rather than a wrong balance.

/// An amount of money.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Money {
    currency: String,
    minor_units: i64,
}

impl Money {
    /// A checked amount: `currency` is an ISO 4217 code (three capital letters) and the amount
    /// is not negative. The error describes a field violation.
    pub fn new(currency: &str, minor_units: i64) -> Result<Self, String> {
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err("currency_code must be an ISO 4217 code such as CNY".into());
        }
        if minor_units < 0 {
            return Err("minor_units must not be negative".into());
        }
        Ok(Self {
            currency: currency.to_owned(),
            minor_units,
        })
    }

    /// [`Money::new`] for an amount that must be above zero.
    pub fn positive(currency: &str, minor_units: i64) -> Result<Self, String> {
        let money = Self::new(currency, minor_units)?;
        if money.minor_units == 0 {
            return Err("minor_units must be above zero".into());
        }
        Ok(money)
    }

    pub fn currency(&self) -> &str {
        &self.currency
    }

    pub fn minor_units(&self) -> i64 {
        self.minor_units
    }

    /// The sum of two amounts of the same currency; `None` on a currency mismatch or overflow.
    pub fn checked_add(&self, other: &Money) -> Option<Money> {
        (self.currency == other.currency).then_some(())?;
        Some(Money {
            currency: self.currency.clone(),
            minor_units: self.minor_units.checked_add(other.minor_units)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_checked_and_add_only_within_a_currency() {
        assert!(Money::new("cny", 1).is_err());
        assert!(Money::new("CNY", -1).is_err());
        assert!(Money::positive("CNY", 0).is_err());
        let a = Money::new("CNY", 150).unwrap();
        let b = Money::new("CNY", 250).unwrap();
        assert_eq!(a.checked_add(&b).unwrap().minor_units(), 400);
        assert_eq!(a.checked_add(&Money::new("USD", 1).unwrap()), None);
        let max = Money::new("CNY", i64::MAX).unwrap();
        assert_eq!(max.checked_add(&a), None);
    }
}

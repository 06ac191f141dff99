//! Identifiers of a person as partners know them, normalised so that equal things compare
//! equal, each in the namespace where it is unique.

/// What an identifier is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Phone,
    WechatUnionId,
    WechatOpenId,
    MemberNumber,
    Email,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Phone => "phone",
            Kind::WechatUnionId => "wechat_unionid",
            Kind::WechatOpenId => "wechat_openid",
            Kind::MemberNumber => "member_number",
            Kind::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Kind::Phone,
            Kind::WechatUnionId,
            Kind::WechatOpenId,
            Kind::MemberNumber,
            Kind::Email,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// How the submitting partner verified an identifier. Numbers match
/// `lianyu.identity.v1.VerificationMethod`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// Verified, but the partner did not say how.
    Unstated = 0,
    SmsCode = 1,
    WechatPhoneGrant = 2,
    InStoreCheck = 3,
    EmailCode = 4,
}

impl Method {
    pub const ALL: [Method; 5] = [
        Method::Unstated,
        Method::SmsCode,
        Method::WechatPhoneGrant,
        Method::InStoreCheck,
        Method::EmailCode,
    ];

    pub fn from_number(n: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|m| *m as i32 == n)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Unstated => "",
            Method::SmsCode => "sms_code",
            Method::WechatPhoneGrant => "wechat_phone_grant",
            Method::InStoreCheck => "in_store_check",
            Method::EmailCode => "email_code",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// The namespace of identifiers unique worldwide (phones, emails).
pub const GLOBAL: &str = "global";

/// A checked, normalised identifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identifier {
    pub kind: Kind,
    pub value: String,
    pub namespace: String,
    pub verified: bool,
    /// How it was verified; `Unstated` when not verified.
    pub method: Method,
}

impl Identifier {
    /// Normalises and checks. Phones become E.164 (mainland China when no country code is
    /// given) in the global namespace; a member number's namespace is always the submitting
    /// partner; UnionIDs and OpenIDs need the account or app they belong to.
    pub fn parse(
        kind: Kind,
        value: &str,
        namespace: &str,
        verified: bool,
        partner: &str,
    ) -> Result<Self, String> {
        let value = value.trim();
        if value.is_empty() {
            return Err("value is required".into());
        }
        if value.len() > 256 {
            return Err("value is at most 256 characters".into());
        }
        let (value, namespace) = match kind {
            Kind::Phone => (normalise_phone(value)?, GLOBAL.to_owned()),
            Kind::Email => (normalise_email(value)?, GLOBAL.to_owned()),
            Kind::MemberNumber => (token(value, 1, 64)?, partner.to_owned()),
            Kind::WechatUnionId | Kind::WechatOpenId => {
                let ns = namespace.trim();
                if ns.is_empty() {
                    return Err(match kind {
                        Kind::WechatUnionId => {
                            "namespace must name the WeChat Open Platform account"
                        }
                        _ => "namespace must name the app id",
                    }
                    .into());
                }
                (token(value, 16, 64)?, token(ns, 1, 64)?)
            }
        };
        Ok(Self {
            kind,
            value,
            namespace,
            verified,
            method: Method::Unstated,
        })
    }

    /// The same identifier, verified by `method` (ignored when not verified).
    pub fn verified_by(mut self, method: Method) -> Self {
        if self.verified {
            self.method = method;
        }
        self
    }

    /// Whether a verified match on this identifier may link two partners' records of a person.
    /// A member number is unique only inside its partner, so it links nothing across partners.
    pub fn links_across_partners(&self) -> bool {
        self.kind != Kind::MemberNumber
    }
}

/// E.164 by libphonenumber's rules (its metadata knows each country's trunk prefix, so
/// `+44 07911 123456` and `+44 7911 123456` are one number); a number without a country code
/// is read as mainland China, where a person's phone is a mobile number.
fn normalise_phone(raw: &str) -> Result<String, String> {
    use phonenumber::{Type, country::Id, metadata::DATABASE};
    let raw = raw.trim();
    if !raw
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '(' | ')' | '+' | '.'))
    {
        return Err("a phone number has digits only, optionally after +".into());
    }
    let international = raw.strip_prefix("00").map(|rest| format!("+{rest}"));
    let text = international.as_deref().unwrap_or(raw);
    // A number with its country code is read by that country's rules alone. Given a default
    // region too, the crate also strips the default region's trunk prefix ("0" for the
    // mainland) after the country code, which turned Italy's landlines — whose leading 0 is
    // part of the number — into numbers no plan has.
    let region = (!text.starts_with('+')).then_some(Id::CN);
    let number = phonenumber::parse(region, text)
        .map_err(|_| "not a phone number: give +country code and number".to_owned())?;
    // Validity is the number's type being known, so a mainland number is typed once (its
    // regular expressions are most of an enrolment's parsing), not checked twice.
    let invalid = || "not a valid number for its country".to_owned();
    if number.code().value() == 86 {
        match number.number_type(&DATABASE) {
            Type::Mobile | Type::FixedLineOrMobile => {}
            Type::Unknown => return Err(invalid()),
            _ => {
                return Err(
                    "a mainland China number must be a mobile number (11 digits, starting with 1)"
                        .into(),
                );
            }
        }
    } else if !phonenumber::is_valid(&number) {
        return Err(invalid());
    }
    // E.164 is "+", the country code and the national number. The crate's formatter also
    // matches the country's display formats first, which E.164 never uses.
    Ok(format!("+{}{}", number.code().value(), number.national()))
}

fn normalise_email(raw: &str) -> Result<String, String> {
    let lower = raw.to_lowercase();
    match lower.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && !lower.contains(' ') =>
        {
            Ok(lower)
        }
        _ => Err("not an email address".into()),
    }
}

fn token(value: &str, min: usize, max: usize) -> Result<String, String> {
    if value.len() < min || value.len() > max {
        return Err(format!("between {min} and {max} characters"));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err("letters, digits, '-', '_' and '.' only".into());
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_normalise_to_e164_with_mainland_default() {
        let p = |v: &str| Identifier::parse(Kind::Phone, v, "", true, "brand").map(|i| i.value);
        assert_eq!(p("138 0013 8000").unwrap(), "+8613800138000");
        assert_eq!(p("+86 138-0013-8000").unwrap(), "+8613800138000");
        assert_eq!(p("008613800138000").unwrap(), "+8613800138000");
        assert_eq!(p("+852 9123 4567").unwrap(), "+85291234567");
        // Italy's landlines keep their leading 0 after the country code.
        assert_eq!(p("+39 02 1234 5678").unwrap(), "+390212345678");
        assert_eq!(p("0039 06 6988 0000").unwrap(), "+390669880000");
        assert_eq!(p("+39 347 123 4567").unwrap(), "+393471234567");
        assert!(p("12345").is_err());
        assert!(p("+86 2345678901").is_err());
        assert!(p("138001380x0").is_err());
    }

    #[test]
    fn a_mainland_landline_and_a_number_no_plan_has_are_refused_for_what_they_are() {
        let p = |v: &str| Identifier::parse(Kind::Phone, v, "", true, "brand");
        // A Beijing landline: a real number, but not a mobile.
        for landline in ["+86 10 6552 9988", "+86 010 6552 9988", "010 6552 9988"] {
            let e = p(landline).unwrap_err();
            assert!(e.contains("must be a mobile number"), "{landline}: {e}");
        }
        // The mainland's trunk prefix after its country code is still the same mobile.
        assert_eq!(p("+86 0138 0013 8000").unwrap().value, "+8613800138000");
        for nonsense in ["+86 1380013800", "+86 11111111111", "+852 1234 5678"] {
            let e = p(nonsense).unwrap_err();
            assert!(
                e.contains("not a valid number for its country"),
                "{nonsense}: {e}"
            );
        }
    }

    #[test]
    fn a_trunk_prefix_after_the_country_code_is_the_same_number() {
        let p = |v: &str| Identifier::parse(Kind::Phone, v, "", true, "brand").map(|i| i.value);
        assert_eq!(p("+44 07911 123456").unwrap(), "+447911123456");
        assert_eq!(p("+44 7911 123456").unwrap(), "+447911123456");
        assert_eq!(p("0044 7911 123456").unwrap(), "+447911123456");
        assert_eq!(p("+1 (650) 253-0000").unwrap(), "+16502530000");
    }

    #[test]
    fn namespaces_follow_the_kind() {
        let phone =
            Identifier::parse(Kind::Phone, "13800138000", "anything", true, "brand").unwrap();
        assert_eq!(phone.namespace, GLOBAL);
        let number =
            Identifier::parse(Kind::MemberNumber, "A-1001", "other", false, "brand").unwrap();
        assert_eq!(number.namespace, "brand");
        assert!(!number.links_across_partners());
        assert!(
            Identifier::parse(
                Kind::WechatUnionId,
                "o6_bmasdasdsad6_2sgVt7hMZOPfL",
                "",
                true,
                "brand"
            )
            .is_err()
        );
        let union = Identifier::parse(
            Kind::WechatUnionId,
            "o6_bmasdasdsad6_2sgVt7hMZOPfL",
            "wx-open-brand",
            true,
            "brand",
        )
        .unwrap();
        assert_eq!(union.namespace, "wx-open-brand");
    }

    #[test]
    fn emails_are_lowercased_and_checked() {
        assert_eq!(
            Identifier::parse(Kind::Email, "Li.Wei@Example.COM", "", false, "b")
                .unwrap()
                .value,
            "li.wei@example.com"
        );
        assert!(Identifier::parse(Kind::Email, "not-an-email", "", false, "b").is_err());
    }
}

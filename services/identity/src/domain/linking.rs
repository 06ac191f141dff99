//! Which member an enrolment belongs to, from the records the mesh already holds of its
//! identifiers. No I/O: the store finds the records, this decides.

use std::collections::BTreeSet;

use super::identifier::Identifier;

/// A record the mesh holds of one of the incoming identifiers.
#[derive(Clone, Copy, Debug)]
pub struct Match<'a> {
    /// The partner that submitted the record.
    pub partner: &'a str,
    pub member: &'a str,
    /// Whether that partner verified it.
    pub verified: bool,
    /// The incoming identifier it matches.
    pub incoming: &'a Identifier,
    /// Whether the caller and that partner share an ACTIVE alliance.
    pub allied: bool,
    /// Whether such an alliance accepts both sides' verification methods.
    pub trusted: bool,
}

/// The member chosen (`None`: a new one) and how many other members were matched without
/// being linked (reported as candidates, never joined).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub member: Option<String>,
    pub candidates: usize,
}

/// The caller's own records name the member first. Otherwise an identifier both the caller
/// and an ally verified — by methods their alliance accepts — of a kind that identifies a
/// person across partners, links to that ally's member, when such evidence points at exactly
/// one member. Anything weaker (an unverified side, an unaccepted method, a member number)
/// only counts as a candidate: linking on weak evidence would let anyone take over an account.
/// Records of partners outside the caller's alliances are not seen at all: a partner's own
/// claim that it verified a phone means nothing to strangers, and neither the link nor the
/// count may tell the caller that a stranger holds the person.
pub fn decide(caller: &str, matches: &[Match<'_>]) -> Result<Decision, &'static str> {
    let own: BTreeSet<&str> = matches
        .iter()
        .filter(|m| m.partner == caller)
        .map(|m| m.member)
        .collect();
    if own.len() > 1 {
        return Err("IDENTIFIERS_CONFLICT");
    }
    let mut linked = BTreeSet::new();
    let mut weak = BTreeSet::new();
    for m in matches.iter().filter(|m| m.partner != caller && m.allied) {
        if m.incoming.verified && m.verified && m.incoming.links_across_partners() && m.trusted {
            linked.insert(m.member);
        } else {
            weak.insert(m.member);
        }
    }
    let member = match (own.first(), linked.len()) {
        (Some(m), _) => Some((*m).to_owned()),
        (None, 1) => linked.first().map(|m| (*m).to_owned()),
        // Verified evidence pointing at several people links to none of them.
        _ => None,
    };
    let candidates = weak
        .iter()
        .chain(linked.iter())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|m| Some(**m) != member.as_deref())
        .count();
    Ok(Decision { member, candidates })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::identifier::Kind;

    fn phone(verified: bool) -> Identifier {
        Identifier::parse(Kind::Phone, "13800138000", "", verified, "mall").unwrap()
    }

    fn found<'a>(
        partner: &'a str,
        member: &'a str,
        verified: bool,
        incoming: &'a Identifier,
    ) -> Match<'a> {
        Match {
            partner,
            member,
            verified,
            incoming,
            allied: true,
            trusted: true,
        }
    }

    #[test]
    fn a_stranger_is_not_seen_and_an_untrusting_ally_is_only_a_candidate() {
        let p = phone(true);
        let stranger = Match {
            allied: false,
            trusted: false,
            ..found("brand", "m1", true, &p)
        };
        let d = decide("outsider", &[stranger]).unwrap();
        assert_eq!((d.member, d.candidates), (None, 0));
        let untrusting = Match {
            trusted: false,
            ..found("brand", "m1", true, &p)
        };
        let d = decide("mall", &[untrusting]).unwrap();
        assert_eq!((d.member, d.candidates), (None, 1));
    }

    #[test]
    fn a_phone_both_partners_verified_links() {
        let p = phone(true);
        let d = decide("mall", &[found("brand", "m1", true, &p)]).unwrap();
        assert_eq!((d.member.as_deref(), d.candidates), (Some("m1"), 0));
    }

    #[test]
    fn an_unverified_side_is_only_a_candidate() {
        let unverified_here = phone(false);
        let d = decide("mall", &[found("brand", "m1", true, &unverified_here)]).unwrap();
        assert_eq!((d.member, d.candidates), (None, 1));
        let verified_here = phone(true);
        let d = decide("mall", &[found("brand", "m1", false, &verified_here)]).unwrap();
        assert_eq!((d.member, d.candidates), (None, 1));
    }

    #[test]
    fn a_member_number_never_links_across_partners() {
        let number = Identifier::parse(Kind::MemberNumber, "VIP-1", "", true, "mall").unwrap();
        let d = decide("mall", &[found("brand", "m1", true, &number)]).unwrap();
        assert_eq!(d.member, None);
    }

    #[test]
    fn verified_evidence_for_two_people_links_neither() {
        let p = phone(true);
        let d = decide(
            "mall",
            &[
                found("brand", "m1", true, &p),
                found("other", "m2", true, &p),
            ],
        )
        .unwrap();
        assert_eq!((d.member, d.candidates), (None, 2));
    }

    #[test]
    fn the_callers_own_record_names_the_member_and_two_of_them_conflict() {
        let p = phone(false);
        let d = decide(
            "mall",
            &[
                found("mall", "m9", false, &p),
                found("brand", "m1", true, &p),
            ],
        )
        .unwrap();
        assert_eq!((d.member.as_deref(), d.candidates), (Some("m9"), 1));
        assert_eq!(
            decide(
                "mall",
                &[found("mall", "m1", true, &p), found("mall", "m2", true, &p)]
            ),
            Err("IDENTIFIERS_CONFLICT")
        );
    }
}

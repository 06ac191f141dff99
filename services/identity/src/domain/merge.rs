//! Merging two members a partner proved to be one person: what counts as proof, and how the
//! two records combine. No I/O.

use std::collections::BTreeMap;

use super::identifier::Identifier;

/// Whether `evidence` can prove two members are one person: it must be verified by the caller,
/// of a kind that identifies a person across partners (not a member number), and held —
/// verified — by the caller on one of the two members (`held_verified`).
pub fn check_evidence(evidence: &Identifier, held_verified: bool) -> Result<(), &'static str> {
    if !evidence.verified {
        return Err("MERGE_EVIDENCE_UNVERIFIED");
    }
    if !evidence.links_across_partners() {
        return Err("MERGE_EVIDENCE_TOO_WEAK");
    }
    if !held_verified {
        return Err("MERGE_EVIDENCE_NOT_HELD");
    }
    Ok(())
}

/// One partner's profile of the merged member: the surviving member's fields win, the
/// duplicate fills the gaps.
pub fn merge_profiles(
    survivor: BTreeMap<String, String>,
    duplicate: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut merged = duplicate;
    merged.extend(survivor);
    merged
}

/// Of two records of the member's word on the same (grantee, purpose, collector), the later
/// one stands: a withdrawal after a grant must not be undone by a merge.
pub fn later_wins(survivor_updated_at: i64, duplicate_updated_at: i64) -> Keep {
    if duplicate_updated_at > survivor_updated_at {
        Keep::Duplicate
    } else {
        Keep::Survivor
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    Survivor,
    Duplicate,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::identifier::Kind;

    fn phone(verified: bool) -> Identifier {
        Identifier::parse(Kind::Phone, "13800138000", "", verified, "brand").unwrap()
    }

    #[test]
    fn only_verified_strong_held_evidence_proves_a_merge() {
        assert_eq!(check_evidence(&phone(true), true), Ok(()));
        assert_eq!(
            check_evidence(&phone(false), true),
            Err("MERGE_EVIDENCE_UNVERIFIED")
        );
        assert_eq!(
            check_evidence(&phone(true), false),
            Err("MERGE_EVIDENCE_NOT_HELD")
        );
        let number = Identifier::parse(Kind::MemberNumber, "VIP-0001", "", true, "brand").unwrap();
        assert_eq!(
            check_evidence(&number, true),
            Err("MERGE_EVIDENCE_TOO_WEAK")
        );
    }

    #[test]
    fn the_survivors_fields_win_and_the_duplicate_fills_gaps() {
        let survivor = [("tier".to_owned(), "gold".to_owned())].into();
        let duplicate = [
            ("tier".to_owned(), "silver".to_owned()),
            ("size".to_owned(), "42".to_owned()),
        ]
        .into();
        let merged = merge_profiles(survivor, duplicate);
        assert_eq!(merged["tier"], "gold");
        assert_eq!(merged["size"], "42");
    }

    #[test]
    fn the_later_word_on_a_consent_stands() {
        assert_eq!(later_wins(10, 20), Keep::Duplicate);
        assert_eq!(later_wins(20, 10), Keep::Survivor);
        assert_eq!(later_wins(10, 10), Keep::Survivor);
    }
}

//! Proto ↔ domain conversions shared by the handlers.

use lianyu_kit::ids::ScopedMemberId;
use lianyu_proto::identity::v1 as pb;

use crate::domain::{
    consent::{Purpose, Receipt},
    credential::Credential,
    identifier::{Identifier, Kind},
    partner::{Alliance, AllianceStatus, Partner, PartnerKind, PartnerStatus, PartnerStore},
};

pub(crate) use lianyu_kit::time::{millis, timestamp};

pub(crate) fn partner(p: &Partner) -> pb::Partner {
    let kind = match p.kind {
        PartnerKind::Brand => 1,
        PartnerKind::Mall => 2,
        PartnerKind::Operator => 3,
    };
    pb::Partner {
        name: format!("partners/{}", p.id),
        kind,
        display_name: p.display_name.clone(),
        status: if p.status == PartnerStatus::Active {
            pb::PartnerStatus::Active as i32
        } else {
            pb::PartnerStatus::Suspended as i32
        },
        privacy_contact: p.privacy_contact.clone(),
        create_time: timestamp(p.created_at),
        update_time: timestamp(p.updated_at),
    }
}

pub(crate) fn alliance(a: &Alliance) -> pb::Alliance {
    pb::Alliance {
        name: format!("alliances/{}", a.id),
        display_name: a.display_name.clone(),
        partners: a.partners.iter().map(|p| format!("partners/{p}")).collect(),
        allowed_purposes: a.purposes.iter().map(|p| *p as i32).collect(),
        data_categories: a.data_categories.clone(),
        processing_method: a.processing_method.clone(),
        valid_from: timestamp(a.valid_from),
        valid_until: timestamp(a.valid_until),
        status: match a.status {
            AllianceStatus::Proposed => pb::AllianceStatus::Proposed,
            AllianceStatus::Active => pb::AllianceStatus::Active,
            AllianceStatus::Ended => pb::AllianceStatus::Ended,
        } as i32,
        accepted_by: a.accepted.iter().map(|p| format!("partners/{p}")).collect(),
        terms_version: a.terms_version,
        create_time: None,
        accepted_verification_methods: a.accepted_methods.iter().map(|m| *m as i32).collect(),
    }
}

pub(crate) fn kind(k: i32) -> Result<Kind, String> {
    match pb::IdentifierKind::try_from(k) {
        Ok(pb::IdentifierKind::Phone) => Ok(Kind::Phone),
        Ok(pb::IdentifierKind::WechatUnionid) => Ok(Kind::WechatUnionId),
        Ok(pb::IdentifierKind::WechatOpenid) => Ok(Kind::WechatOpenId),
        Ok(pb::IdentifierKind::MemberNumber) => Ok(Kind::MemberNumber),
        Ok(pb::IdentifierKind::Email) => Ok(Kind::Email),
        _ => Err("unknown or unspecified identifier kind".into()),
    }
}

pub(crate) fn identifier_out(i: &Identifier) -> pb::Identifier {
    let kind = match i.kind {
        Kind::Phone => pb::IdentifierKind::Phone,
        Kind::WechatUnionId => pb::IdentifierKind::WechatUnionid,
        Kind::WechatOpenId => pb::IdentifierKind::WechatOpenid,
        Kind::MemberNumber => pb::IdentifierKind::MemberNumber,
        Kind::Email => pb::IdentifierKind::Email,
    };
    pb::Identifier {
        kind: kind as i32,
        value: i.value.clone(),
        namespace: i.namespace.clone(),
        verified: i.verified,
        verification_method: i.method as i32,
    }
}

pub(crate) fn purpose(n: i32) -> Result<Purpose, String> {
    Purpose::from_number(n).ok_or_else(|| "unknown or unspecified consent purpose".to_owned())
}

/// A receipt as the member's collector sees it.
pub(crate) fn receipt(
    r: &Receipt,
    member: &str,
    collector: &Partner,
    grantee: &Partner,
    alliance: Option<&Alliance>,
) -> pb::ConsentReceipt {
    use crate::domain::consent::ReceiptStatus;
    let status = r.status(alliance, crate::store::now());
    pb::ConsentReceipt {
        name: format!("consentReceipts/{}", r.id),
        issue_time: timestamp(r.issued_at),
        member: format!("members/{member}"),
        collector: format!("partners/{}", collector.id),
        collector_display_name: collector.display_name.clone(),
        grantee: format!("partners/{}", grantee.id),
        grantee_display_name: grantee.display_name.clone(),
        grantee_contact: grantee.privacy_contact.clone(),
        purposes: r.purposes.clone(),
        data_categories: r.data_categories.clone(),
        processing_method: r.processing_method.clone(),
        policy_version: r.policy_version.clone(),
        channel: r.channel,
        status: match status {
            ReceiptStatus::Granted => pb::ConsentStatus::Granted,
            ReceiptStatus::Withdrawn => pb::ConsentStatus::Withdrawn,
            ReceiptStatus::Expired => pb::ConsentStatus::Expired,
            ReceiptStatus::Stale => pb::ConsentStatus::Stale,
        } as i32,
        valid_from: timestamp(r.valid_from),
        valid_until: timestamp(r.valid_until),
        alliance: format!("alliances/{}", r.alliance_id),
    }
}

/// `members/{scoped}` → scoped, or a field violation.
pub(crate) fn member_name(name: &str) -> Result<ScopedMemberId, String> {
    match lianyu_kit::names::parse(name, "members/{member}") {
        Ok([id]) if id.chars().all(|c| c.is_ascii_alphanumeric()) => Ok(ScopedMemberId::new(id)),
        _ => Err("expected members/{member}".into()),
    }
}

pub(crate) fn store(s: &PartnerStore) -> pb::Store {
    pb::Store {
        name: format!("partners/{}/stores/{}", s.partner_id, s.id),
        display_name: s.display_name.clone(),
        city: s.city.clone(),
        active: s.active,
        create_time: timestamp(s.created_at),
    }
}

/// A credential as its owner sees it: never a secret or a hash.
pub(crate) fn credential(c: &Credential, now: i64) -> pb::Credential {
    pb::Credential {
        name: format!(
            "{}/credentials/{}",
            crate::domain::credential::Owner::from_key(&c.partner_id).name(),
            c.id
        ),
        client_id: c.client_id.clone(),
        scopes: c.scopes.clone(),
        revoked: c.revoked_at.is_some(),
        create_time: timestamp(c.created_at),
        previous_secret_expire_time: c
            .previous_secret_until
            .filter(|until| *until > now)
            .and_then(timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::consent::ConsentState;

    fn partner(id: &str, name: &str) -> Partner {
        Partner {
            id: id.into(),
            kind: PartnerKind::Brand,
            display_name: name.into(),
            status: PartnerStatus::Active,
            privacy_contact: format!("privacy@{id}.example"),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn stored(state: ConsentState, valid_until: i64) -> Receipt {
        Receipt {
            id: "r1".into(),
            member_id: "internal-member-id".into(),
            collector: "brand".into(),
            grantee: "mall".into(),
            purposes: vec![1, 2],
            data_categories: vec!["profile.basic".into()],
            processing_method: "shown to guides".into(),
            policy_version: "2026-11".into(),
            channel: pb::ConsentChannel::Store as i32,
            state,
            valid_from: 0,
            valid_until,
            alliance_id: "a1".into(),
            issued_at: 5,
            terms_version: 1,
        }
    }

    fn active_alliance(terms_version: i64) -> Alliance {
        Alliance {
            id: "a1".into(),
            display_name: "Spring".into(),
            partners: ["brand".to_owned(), "mall".to_owned()].into(),
            accepted: ["brand".to_owned(), "mall".to_owned()].into(),
            purposes: [Purpose::ShareProfile].into(),
            data_categories: vec![],
            processing_method: "shown to guides".into(),
            valid_from: 0,
            valid_until: i64::MAX,
            status: AllianceStatus::Active,
            terms_version,
            accepted_methods: Default::default(),
        }
    }

    #[test]
    fn a_receipt_tells_what_pipl_art_23_requires_in_the_readers_ids() {
        let far = crate::store::now() + 3_600_000;
        let r = receipt(
            &stored(ConsentState::Granted, far),
            "mScoped",
            &partner("brand", "Aurora Shoes"),
            &partner("mall", "Jade Plaza"),
            Some(&active_alliance(1)),
        );
        assert_eq!(
            r.member, "members/mScoped",
            "the reader's scoped id, never the internal one"
        );
        assert_eq!(
            (
                r.collector_display_name.as_str(),
                r.grantee_display_name.as_str()
            ),
            ("Aurora Shoes", "Jade Plaza")
        );
        assert_eq!(r.grantee_contact, "privacy@mall.example");
        assert_eq!(r.purposes, [1, 2]);
        assert_eq!(r.data_categories, ["profile.basic"]);
        assert_eq!(r.processing_method, "shown to guides");
        assert_eq!(r.status, pb::ConsentStatus::Granted as i32);
    }

    #[test]
    fn a_grant_past_its_window_reads_as_expired_and_a_withdrawal_as_withdrawn() {
        let (brand, mall) = (partner("brand", "A"), partner("mall", "B"));
        let a = active_alliance(1);
        let past = receipt(
            &stored(ConsentState::Granted, 1),
            "m",
            &brand,
            &mall,
            Some(&a),
        );
        assert_eq!(past.status, pb::ConsentStatus::Expired as i32);
        let withdrawn = receipt(
            &stored(ConsentState::Withdrawn, 1),
            "m",
            &brand,
            &mall,
            Some(&a),
        );
        assert_eq!(withdrawn.status, pb::ConsentStatus::Withdrawn as i32);
        let far = crate::store::now() + 3_600_000;
        let stale = receipt(
            &stored(ConsentState::Granted, far),
            "m",
            &brand,
            &mall,
            Some(&active_alliance(2)),
        );
        assert_eq!(stale.status, pb::ConsentStatus::Stale as i32);
    }
}

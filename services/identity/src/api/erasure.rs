//! EraseMember: a partner erases its own relationship with a person, never another partner's;
//! for the whole joint domain the request is relayed to every other holder as an event.

use lianyu_kit::KitError;
use std::collections::BTreeMap;

use lianyu_kit::Call;
use lianyu_proto::identity::v1 as pb;

use super::{Api, convert};
use crate::{
    domain::{
        IdentityError, Violations,
        consent::{ConsentEvent, EventKind},
    },
    store::{Store, consents::append_event, now},
};

impl Api {
    /// Erasure on the person's request: the caller's own records of them go (see
    /// `erase_for`); each party of a consent in force hears WITHDRAWN, the caller hears
    /// MEMBER_ERASED, and for the whole joint domain every other holder hears
    /// ERASURE_REQUESTED — each in its own scoped id. Stored replies about the person are purged.
    pub(super) async fn erase(
        &self,
        call: &Call,
        r: &pb::EraseMemberRequest,
    ) -> Result<pb::EraseMemberResponse, IdentityError> {
        let who = &call.who;
        let mut v = Violations::default();
        let scoped = v.check("member", convert::member_name(&r.member));
        let scope = v.check(
            "scope",
            match pb::ErasureScope::try_from(r.scope) {
                Ok(pb::ErasureScope::Unspecified | pb::ErasureScope::Partner) => {
                    Ok(pb::ErasureScope::Partner)
                }
                Ok(pb::ErasureScope::JointDomain) => Ok(pb::ErasureScope::JointDomain),
                Err(_) => Err("PARTNER or JOINT_DOMAIN".to_owned()),
            },
        );
        v.finish()?;
        let (Some(scoped), Some(scope)) = (scoped, scope) else {
            return Err(KitError::invalid("member", "required").into());
        };
        super::partner_wide(who)?;
        self.mutations.run(call, &r.request_id, r, async |txn| {
            let member_id = Store::member_for(txn, &who.partner_id, &scoped).await?;
            let subjects = Store::member_and_merged(txn, &member_id).await?;
            let erased = Store::erase_for(txn, &who.partner_id, &member_id).await?;
            lianyu_kit::idempotency::forget_subjects(
                txn,
                self.store.secrets.as_ref(),
                Some(&who.partner_id),
                &subjects,
            )
            .await?;
            self.announce_erasure(txn, &who.partner_id, &erased, scope)
                .await?;
            self.announce_to_mesh(txn, &who.partner_id, &member_id, &erased)
                .await?;
            if erased.others.is_empty() {
                // Nobody holds the person any more: every stored reply about them goes.
                lianyu_kit::idempotency::forget_subjects(
                    txn,
                    self.store.secrets.as_ref(),
                    None,
                    &subjects,
                )
                .await?;
            }
            tracing::info!(partner = %who.partner_id, scope = scope.as_str_name(), "member erased");
            Ok(pb::EraseMemberResponse {
                member: r.member.clone(),
                erase_time: convert::timestamp(now()),
                scope: scope as i32,
            })
        })
        .await
    }

    /// The mesh's services hear of the erasure and of every consent it withdrew, by mesh id.
    async fn announce_to_mesh(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        partner: &str,
        member: &lianyu_kit::ids::MeshMemberId,
        erased: &crate::store::erasure::Erased,
    ) -> Result<(), IdentityError> {
        use crate::store::mesh::{MeshEvent, append_mesh};
        use lianyu_proto::identity::internal::v1::MeshEventKind;
        let mut withdrawn: BTreeMap<&str, Vec<crate::domain::consent::Purpose>> = BTreeMap::new();
        for c in &erased.withdrawn {
            withdrawn.entry(&c.grantee).or_default().push(c.purpose);
        }
        for (grantee, purposes) in withdrawn {
            append_mesh(
                &self.store.feed,
                txn,
                MeshEventKind::ConsentWithdrawn,
                MeshEvent {
                    member: member.as_str(),
                    partner,
                    grantee,
                    purposes: &purposes,
                    ..Default::default()
                },
            )
            .await?;
        }
        append_mesh(
            &self.store.feed,
            txn,
            MeshEventKind::MemberErased,
            MeshEvent {
                member: member.as_str(),
                partner,
                ..Default::default()
            },
        )
        .await
    }

    async fn announce_erasure(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        partner: &str,
        erased: &crate::store::erasure::Erased,
        scope: pb::ErasureScope,
    ) -> Result<(), IdentityError> {
        let event =
            |kind: EventKind, member: &str, grantee: &str, purposes, receipt: &str| ConsentEvent {
                kind,
                member: member.to_owned(),
                collector: partner.to_owned(),
                grantee: grantee.to_owned(),
                purposes,
                receipt_id: receipt.to_owned(),
            };
        for own in &erased.own_ids {
            append_event(
                &self.store.feed,
                txn,
                event(EventKind::Erased, own, partner, Vec::new(), ""),
            )
            .await?;
        }
        let mut withdrawn: BTreeMap<(&str, &str), Vec<i32>> = BTreeMap::new();
        for c in &erased.withdrawn {
            withdrawn
                .entry((&c.grantee, &c.receipt_id))
                .or_default()
                .push(c.purpose as i32);
        }
        for ((grantee, receipt), purposes) in withdrawn {
            let their_id = erased
                .others
                .iter()
                .find(|(p, _)| p == grantee)
                .map(|(_, id)| id.as_str())
                .unwrap_or_default();
            append_event(
                &self.store.feed,
                txn,
                event(EventKind::Withdrawn, their_id, grantee, purposes, receipt),
            )
            .await?;
        }
        if scope == pb::ErasureScope::JointDomain {
            for (other, their_id) in &erased.others {
                // Who relayed the request is not said: the event tells the holder only that
                // the person asked to leave the joint domain.
                let mut e = event(EventKind::ErasureRequested, their_id, other, Vec::new(), "");
                e.collector = String::new();
                append_event(&self.store.feed, txn, e).await?;
            }
        }
        Ok(())
    }
}

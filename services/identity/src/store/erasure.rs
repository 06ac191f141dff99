//! Erasure of one partner's relationship with a person: its records go, other partners'
//! records stay, and the person leaves the mesh only when no partner holds them any more.

use super::entities::{StoredConsentState, StoredMemberStatus};
use lianyu_kit::storage::StorageError;
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Condition, Expr},
};

use super::{
    Store,
    entities::{consent, consent_receipt, identifier, member, member_merge, profile, scoped_id},
    now,
};
use crate::domain::{IdentityError, consent::Consent};

/// What one partner's erasure did, for the events that tell each party in its own terms.
pub(crate) struct Erased {
    /// The erasing partner's scoped ids for the person (now answering MEMBER_ERASED).
    pub(crate) own_ids: Vec<String>,
    /// Consents the partner was party to that were in force: each grantee hears WITHDRAWN.
    pub(crate) withdrawn: Vec<Consent>,
    /// Every other partner still holding the person, with its scoped id.
    pub(crate) others: Vec<(String, String)>,
}

impl Store {
    /// Erases everything `partner` holds of the member: its identifiers, its profile, the
    /// consents it is party to (as collector or grantee; their receipts read WITHDRAWN), and
    /// its scoped ids (kept as tombstones). The member itself becomes a tombstone once no
    /// partner holds them.
    pub(crate) async fn erase_for(
        txn: &impl ConnectionTrait,
        partner: &str,
        member_id: &str,
    ) -> Result<Erased, IdentityError> {
        let at = now();
        // The identifiers about to go are held as an enrolment holds them (PostgreSQL
        // advisory locks on their lookup hashes, in one order), so an allied partner enrolling
        // the same phone at this moment either links first — and is counted below as a holder
        // that keeps the person in the mesh — or runs after, finds nothing to link to and
        // makes a new person; never OK about a person this erasure removes.
        let hashes: Vec<String> = identifier::Entity::find()
            .select_only()
            .column(identifier::Column::LookupHash)
            .filter(identifier::Column::MemberId.eq(member_id.to_owned()))
            .filter(identifier::Column::PartnerId.eq(partner.to_owned()))
            .into_tuple()
            .all(txn)
            .await
            .map_err(StorageError::from)?;
        super::members::lock_identifiers(txn, hashes.iter().map(String::as_str)).await?;
        identifier::Entity::delete_many()
            .filter(identifier::Column::MemberId.eq(member_id.to_owned()))
            .filter(identifier::Column::PartnerId.eq(partner.to_owned()))
            .exec(txn)
            .await
            .map_err(StorageError::from)?;
        profile::Entity::delete_many()
            .filter(profile::Column::MemberId.eq(member_id.to_owned()))
            .filter(profile::Column::PartnerId.eq(partner.to_owned()))
            .exec(txn)
            .await
            .map_err(StorageError::from)?;
        let consents = consent::Entity::find()
            .filter(consent::Column::MemberId.eq(member_id.to_owned()))
            .filter(party(
                consent::Column::Collector,
                consent::Column::Grantee,
                partner,
            ))
            .all(txn)
            .await
            .map_err(StorageError::from)?;
        consent::Entity::delete_many()
            .filter(consent::Column::MemberId.eq(member_id.to_owned()))
            .filter(party(
                consent::Column::Collector,
                consent::Column::Grantee,
                partner,
            ))
            .exec(txn)
            .await
            .map_err(StorageError::from)?;
        consent_receipt::Entity::update_many()
            .col_expr(
                consent_receipt::Column::Status,
                Expr::value(StoredConsentState::Withdrawn),
            )
            .filter(consent_receipt::Column::MemberId.eq(member_id.to_owned()))
            .filter(party(
                consent_receipt::Column::Collector,
                consent_receipt::Column::Grantee,
                partner,
            ))
            .exec(txn)
            .await
            .map_err(StorageError::from)?;
        let holders = scoped_id::Entity::find()
            .filter(scoped_id::Column::MemberId.eq(member_id.to_owned()))
            .filter(scoped_id::Column::ErasedAt.is_null())
            .all(txn)
            .await
            .map_err(StorageError::from)?;
        scoped_id::Entity::update_many()
            .col_expr(scoped_id::Column::ErasedAt, Expr::value(at))
            .filter(scoped_id::Column::MemberId.eq(member_id.to_owned()))
            .filter(scoped_id::Column::PartnerId.eq(partner.to_owned()))
            .filter(scoped_id::Column::ErasedAt.is_null())
            .exec(txn)
            .await
            .map_err(StorageError::from)?;
        let (own, others): (Vec<_>, Vec<_>) =
            holders.into_iter().partition(|h| h.partner_id == partner);
        if others.is_empty() {
            // Nobody holds the person any more: the member is a tombstone, and nothing about
            // them is left to consent to.
            member::Entity::update_many()
                .col_expr(
                    member::Column::Status,
                    Expr::value(StoredMemberStatus::Erased),
                )
                .col_expr(member::Column::ErasedAt, Expr::value(at))
                .filter(member::Column::Id.eq(member_id.to_owned()))
                .exec(txn)
                .await
                .map_err(StorageError::from)?;
            consent_receipt::Entity::delete_many()
                .filter(consent_receipt::Column::MemberId.eq(member_id.to_owned()))
                .exec(txn)
                .await
                .map_err(StorageError::from)?;
        }
        let mut others: Vec<(String, String)> = others
            .into_iter()
            .map(|h| (h.partner_id, h.scoped_id))
            .collect();
        // After a merge a partner may hold two ids for the person: tell it once.
        others.sort();
        others.dedup_by(|a, b| a.0 == b.0);
        Ok(Erased {
            own_ids: own.into_iter().map(|h| h.scoped_id).collect(),
            withdrawn: consents
                .iter()
                .filter(|c| c.state == StoredConsentState::Granted && c.grantee != partner)
                .filter_map(consent::Model::to_domain)
                .collect(),
            others,
        })
    }

    /// The member and every member merged into it: the subjects its stored replies are
    /// tagged with.
    pub(crate) async fn member_and_merged(
        txn: &impl ConnectionTrait,
        member_id: &str,
    ) -> Result<Vec<String>, IdentityError> {
        let mut ids: Vec<String> = member_merge::Entity::find()
            .filter(member_merge::Column::SurvivorId.eq(member_id.to_owned()))
            .all(txn)
            .await
            .map_err(StorageError::from)?
            .into_iter()
            .map(|m| m.duplicate_id)
            .collect();
        ids.push(member_id.to_owned());
        Ok(ids)
    }

    /// Partners other than `caller` that hold any of `members` (a live scoped id).
    pub(crate) async fn other_holders(
        txn: &impl ConnectionTrait,
        caller: &str,
        members: &[&str],
    ) -> Result<std::collections::BTreeSet<String>, IdentityError> {
        Ok(scoped_id::Entity::find()
            .filter(scoped_id::Column::MemberId.is_in(members.iter().map(|m| (*m).to_owned())))
            .filter(scoped_id::Column::PartnerId.ne(caller.to_owned()))
            .filter(scoped_id::Column::ErasedAt.is_null())
            .all(txn)
            .await
            .map_err(StorageError::from)?
            .into_iter()
            .map(|h| h.partner_id)
            .collect())
    }

    /// Partners other than `caller` that collected a consent for `caller` about the member
    /// (in any state): the only partners whose records a read by `caller` may touch, and so
    /// the only ones whose audit trail records it.
    pub(crate) async fn consenting_sources(
        conn: &impl ConnectionTrait,
        member_id: &str,
        caller: &str,
    ) -> Result<Vec<String>, IdentityError> {
        let mut sources: Vec<String> = consent::Entity::find()
            .filter(consent::Column::MemberId.eq(member_id.to_owned()))
            .filter(consent::Column::Grantee.eq(caller.to_owned()))
            .filter(consent::Column::Collector.ne(caller.to_owned()))
            .all(conn)
            .await
            .map_err(StorageError::from)?
            .into_iter()
            .map(|c| c.collector)
            .collect();
        sources.sort();
        sources.dedup();
        Ok(sources)
    }
}

impl Store {
    /// Of `members`, those with any consent (in force or not) collected by `grantor` for
    /// `grantee`: the members between whom a check is worth an access record.
    pub(crate) async fn related_members(
        conn: &impl ConnectionTrait,
        members: &[String],
        grantor: &str,
        grantee: &str,
    ) -> Result<std::collections::BTreeSet<String>, IdentityError> {
        Ok(consent::Entity::find()
            .filter(consent::Column::MemberId.is_in(members.iter().cloned()))
            .filter(consent::Column::Grantee.eq(grantee.to_owned()))
            .filter(consent::Column::Collector.eq(grantor.to_owned()))
            .all(conn)
            .await
            .map_err(StorageError::from)?
            .into_iter()
            .map(|c| c.member_id)
            .collect())
    }
}

/// Rows where `partner` is the collector or the grantee.
fn party<C: ColumnTrait>(collector: C, grantee: C, partner: &str) -> Condition {
    Condition::any()
        .add(collector.eq(partner.to_owned()))
        .add(grantee.eq(partner.to_owned()))
}

//! Identifiers added to and removed from a member after enrolment, and merging two members.

use super::entities::StoredMemberStatus;
use lianyu_kit::KitError;
use lianyu_kit::storage::StorageError;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    sea_query::Expr,
};

use super::{
    Store,
    entities::{consent, consent_receipt, identifier, member, member_merge, profile, scoped_id},
    now,
};
use crate::domain::{
    IdentityError,
    identifier::Identifier,
    merge::{Keep, later_wins, merge_profiles},
};

impl Store {
    /// Adds `id` to `caller`'s record of the member; verifying an identifier the caller held
    /// unverified upgrades it. An identifier the caller holds on another member is refused.
    pub(crate) async fn link_identifier(
        &self,
        txn: &impl ConnectionTrait,
        caller: &str,
        member_id: &str,
        id: &Identifier,
    ) -> Result<(), IdentityError> {
        let hash = self.secrets.lookup_hash(id);
        super::members::lock_identifiers(txn, std::iter::once(hash.as_str())).await?;
        let held = identifier::Entity::find()
            .filter(identifier::Column::PartnerId.eq(caller.to_owned()))
            .filter(identifier::Column::LookupHash.eq(hash.clone()))
            .one(txn)
            .await
            .map_err(StorageError::from)?;
        match held {
            Some(row) if row.member_id != member_id => Err(KitError::Precondition(
                "IDENTIFIER_IN_USE",
                "you hold this identifier on another member; merge the two if they are one person"
                    .into(),
            )
            .into()),
            Some(row) => {
                if id.verified && !row.verified {
                    super::members::mark_verified(txn, row.id, id.method).await?;
                }
                Ok(())
            }
            None => {
                self.insert_identifier(txn, caller, member_id, &hash, id)
                    .await
            }
        }
    }

    pub(crate) async fn insert_identifier(
        &self,
        txn: &impl ConnectionTrait,
        caller: &str,
        member_id: &str,
        hash: &str,
        id: &Identifier,
    ) -> Result<(), IdentityError> {
        self.identifier_row(caller, member_id, hash, id)
            .insert(txn)
            .await
            .map_err(StorageError::from)?;
        Ok(())
    }

    /// A new identifier record: the keyed hash to find it by, the value sealed.
    pub(crate) fn identifier_row(
        &self,
        caller: &str,
        member_id: &str,
        hash: &str,
        id: &Identifier,
    ) -> identifier::ActiveModel {
        identifier::ActiveModel {
            member_id: Set(member_id.to_owned()),
            partner_id: Set(caller.to_owned()),
            kind: Set(id.kind.as_str().to_owned()),
            namespace: Set(id.namespace.clone()),
            lookup_hash: Set(hash.to_owned()),
            sealed: Set(self.secrets.seal(&id.value)),
            verified: Set(id.verified),
            created_at: Set(now()),
            verification_method: Set(if id.verified {
                id.method.as_str().to_owned()
            } else {
                String::new()
            }),
            ..Default::default()
        }
    }

    /// Removes `id` from `caller`'s record of the member; NOT_FOUND when the caller does not
    /// hold it there.
    pub(crate) async fn unlink_identifier(
        &self,
        txn: &impl ConnectionTrait,
        caller: &str,
        member_id: &str,
        id: &Identifier,
    ) -> Result<(), IdentityError> {
        let gone = identifier::Entity::delete_many()
            .filter(identifier::Column::PartnerId.eq(caller.to_owned()))
            .filter(identifier::Column::MemberId.eq(member_id.to_owned()))
            .filter(identifier::Column::LookupHash.eq(self.secrets.lookup_hash(id)))
            .exec(txn)
            .await
            .map_err(StorageError::from)?;
        if gone.rows_affected == 0 {
            return Err(KitError::NotFound("IDENTIFIER_NOT_FOUND").into());
        }
        Ok(())
    }

    /// Whether `caller` holds `id`, verified, on either member.
    pub(crate) async fn holds_verified(
        &self,
        txn: &impl ConnectionTrait,
        caller: &str,
        members: [&str; 2],
        id: &Identifier,
    ) -> Result<bool, IdentityError> {
        Ok(identifier::Entity::find()
            .filter(identifier::Column::PartnerId.eq(caller.to_owned()))
            .filter(identifier::Column::LookupHash.eq(self.secrets.lookup_hash(id)))
            .filter(identifier::Column::MemberId.is_in(members.map(str::to_owned)))
            .filter(identifier::Column::Verified.eq(true))
            .one(txn)
            .await
            .map_err(StorageError::from)?
            .is_some())
    }

    /// Folds member `dup` into `keep`: identifiers, profiles, consents, receipts and scoped ids
    /// move over (every partner's scoped ids keep working), `dup` is marked merged. Returns the
    /// partners that held `dup` with their scoped id for it, to tell each in its own terms.
    pub(crate) async fn merge_members(
        &self,
        txn: &impl ConnectionTrait,
        keep: &str,
        dup: &str,
    ) -> Result<Vec<(String, String)>, IdentityError> {
        self.merge_identifiers(txn, keep, dup).await?;
        self.merge_profile_rows(txn, keep, dup).await?;
        merge_consents(txn, keep, dup).await?;
        consent_receipt::Entity::update_many()
            .col_expr(consent_receipt::Column::MemberId, Expr::value(keep))
            .filter(consent_receipt::Column::MemberId.eq(dup.to_owned()))
            .exec(txn)
            .await
            .map_err(StorageError::from)?;
        let holders = scoped_id::Entity::find()
            .filter(scoped_id::Column::MemberId.eq(dup.to_owned()))
            .all(txn)
            .await
            .map_err(StorageError::from)?;
        scoped_id::Entity::update_many()
            .col_expr(scoped_id::Column::MemberId, Expr::value(keep))
            .filter(scoped_id::Column::MemberId.eq(dup.to_owned()))
            .exec(txn)
            .await
            .map_err(StorageError::from)?;
        // Earlier merges into `dup` now point at `keep`, so one lookup finds every id.
        member_merge::Entity::update_many()
            .col_expr(member_merge::Column::SurvivorId, Expr::value(keep))
            .filter(member_merge::Column::SurvivorId.eq(dup.to_owned()))
            .exec(txn)
            .await
            .map_err(StorageError::from)?;
        member_merge::ActiveModel {
            duplicate_id: Set(dup.to_owned()),
            survivor_id: Set(keep.to_owned()),
            merged_at: Set(now()),
        }
        .insert(txn)
        .await
        .map_err(StorageError::from)?;
        member::Entity::update_many()
            .col_expr(
                member::Column::Status,
                Expr::value(StoredMemberStatus::Merged),
            )
            .filter(member::Column::Id.eq(dup.to_owned()))
            .exec(txn)
            .await
            .map_err(StorageError::from)?;
        Ok(holders
            .into_iter()
            .map(|row| (row.partner_id, row.scoped_id))
            .collect())
    }

    async fn merge_identifiers(
        &self,
        txn: &impl ConnectionTrait,
        keep: &str,
        dup: &str,
    ) -> Result<(), IdentityError> {
        let rows = identifier::Entity::find()
            .filter(identifier::Column::MemberId.is_in([keep.to_owned(), dup.to_owned()]))
            .all(txn)
            .await
            .map_err(StorageError::from)?;
        for row in rows.iter().filter(|r| r.member_id == dup) {
            let twin = rows.iter().find(|r| {
                r.member_id == keep
                    && r.partner_id == row.partner_id
                    && r.lookup_hash == row.lookup_hash
            });
            match twin {
                // A partner holds the same identifier on both: one record stays.
                Some(twin) => {
                    if row.verified && !twin.verified {
                        identifier::Entity::update_many()
                            .col_expr(identifier::Column::Verified, Expr::value(true))
                            .filter(identifier::Column::Id.eq(twin.id))
                            .exec(txn)
                            .await
                            .map_err(StorageError::from)?;
                    }
                    identifier::Entity::delete_by_id(row.id)
                        .exec(txn)
                        .await
                        .map_err(StorageError::from)?;
                }
                None => {
                    identifier::Entity::update_many()
                        .col_expr(identifier::Column::MemberId, Expr::value(keep))
                        .filter(identifier::Column::Id.eq(row.id))
                        .exec(txn)
                        .await
                        .map_err(StorageError::from)?;
                }
            }
        }
        Ok(())
    }

    async fn merge_profile_rows(
        &self,
        txn: &impl ConnectionTrait,
        keep: &str,
        dup: &str,
    ) -> Result<(), IdentityError> {
        let rows = profile::Entity::find()
            .filter(profile::Column::MemberId.eq(dup.to_owned()))
            .all(txn)
            .await
            .map_err(StorageError::from)?;
        for row in rows {
            let survivor = self.profile(txn, keep, &row.partner_id).await?;
            let duplicate = self
                .secrets
                .open(&row.sealed)
                .and_then(|j| serde_json::from_str(&j).ok())
                .unwrap_or_default();
            profile::Entity::delete_by_id((dup.to_owned(), row.partner_id.clone()))
                .exec(txn)
                .await
                .map_err(StorageError::from)?;
            let merged = merge_profiles(survivor.unwrap_or_default(), duplicate);
            profile::Entity::delete_by_id((keep.to_owned(), row.partner_id.clone()))
                .exec(txn)
                .await
                .map_err(StorageError::from)?;
            profile::ActiveModel {
                member_id: Set(keep.to_owned()),
                partner_id: Set(row.partner_id),
                sealed: Set(self
                    .secrets
                    .seal(&serde_json::to_string(&merged).unwrap_or_default())),
                updated_at: Set(now()),
            }
            .insert(txn)
            .await
            .map_err(StorageError::from)?;
        }
        Ok(())
    }
}

async fn merge_consents(
    txn: &impl ConnectionTrait,
    keep: &str,
    dup: &str,
) -> Result<(), IdentityError> {
    let rows = consent::Entity::find()
        .filter(consent::Column::MemberId.is_in([keep.to_owned(), dup.to_owned()]))
        .all(txn)
        .await
        .map_err(StorageError::from)?;
    let key = |r: &consent::Model| (r.grantee.clone(), r.purpose, r.collector.clone());
    for row in rows.iter().filter(|r| r.member_id == dup) {
        let twin = rows
            .iter()
            .find(|r| r.member_id == keep && key(r) == key(row));
        let move_dup = match twin {
            None => true,
            Some(twin) => {
                let keep_dup = later_wins(twin.updated_at, row.updated_at) == Keep::Duplicate;
                let loser = if keep_dup { twin } else { row };
                consent::Entity::delete_by_id((
                    loser.member_id.clone(),
                    loser.grantee.clone(),
                    loser.purpose,
                    loser.collector.clone(),
                ))
                .exec(txn)
                .await
                .map_err(StorageError::from)?;
                keep_dup
            }
        };
        if move_dup {
            consent::Entity::update_many()
                .col_expr(consent::Column::MemberId, Expr::value(keep))
                .filter(consent::Column::MemberId.eq(dup.to_owned()))
                .filter(consent::Column::Grantee.eq(row.grantee.clone()))
                .filter(consent::Column::Purpose.eq(row.purpose))
                .filter(consent::Column::Collector.eq(row.collector.clone()))
                .exec(txn)
                .await
                .map_err(StorageError::from)?;
        }
    }
    Ok(())
}

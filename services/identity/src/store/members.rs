//! Members, their identifiers and profiles, and the partner-scoped ids that name them.

use std::collections::BTreeMap;

use lianyu_kit::storage::StorageError;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::{
    Store,
    entities::{identifier, member, profile, scoped_id},
    now,
};
use crate::domain::{
    IdentityError,
    identifier::{Identifier, Kind},
    linking::{Decision, Match, decide},
};

/// The outcome of an enrolment.
pub(crate) struct Enrolled {
    pub(crate) scoped_id: String,
    pub(crate) member_id: String,
    pub(crate) linked_existing: bool,
    pub(crate) candidates: i32,
    /// The caller's view of a member this enrolment created; `None` for an existing member.
    pub(crate) view: Option<MemberView>,
}

/// A member as one partner sees it.
pub(crate) struct MemberView {
    pub(crate) identifiers: Vec<Identifier>,
    pub(crate) profile: BTreeMap<String, String>,
    pub(crate) created_at: i64,
}

impl Store {
    /// Finds or creates the member behind `ids` for `caller`. The caller's own records of any
    /// of the identifiers name the member first; otherwise a verified identifier that another
    /// partner also verified links to that partner's member; an unverified match on either
    /// side is only counted as a candidate, never linked.
    pub(crate) async fn enroll(
        &self,
        txn: &impl ConnectionTrait,
        caller: &str,
        ids: &[Identifier],
        fields: &BTreeMap<String, String>,
    ) -> Result<Enrolled, IdentityError> {
        // The same identifier twice in one request counts once (verified if either says so).
        let mut unique: Vec<Identifier> = Vec::with_capacity(ids.len());
        for id in ids {
            match unique
                .iter_mut()
                .find(|u| u.kind == id.kind && u.namespace == id.namespace && u.value == id.value)
            {
                Some(seen) => seen.verified |= id.verified,
                None => unique.push(id.clone()),
            }
        }
        let ids = unique.as_slice();
        let hashed: Vec<(String, &Identifier)> = ids
            .iter()
            .map(|i| (self.secrets.lookup_hash(i), i))
            .collect();
        let matches = identifier::Entity::find()
            .filter(identifier::Column::LookupHash.is_in(hashed.iter().map(|(h, _)| h.clone())))
            .all(txn)
            .await
            .map_err(StorageError::from)?;
        let found: Vec<Match<'_>> = matches
            .iter()
            .filter_map(|row| {
                let incoming = hashed.iter().find(|(h, _)| *h == row.lookup_hash)?.1;
                Some(Match {
                    partner: &row.partner_id,
                    member: &row.member_id,
                    verified: row.verified,
                    incoming,
                })
            })
            .collect();
        let Decision {
            member: existing,
            candidates,
        } = decide(caller, &found).map_err(|reason| {
            IdentityError::Precondition(
                reason,
                "these identifiers belong to different members you enrolled; merge them first"
                    .into(),
            )
        })?;
        let member_id = match existing.clone() {
            Some(m) => m,
            None => {
                let id = uuid::Uuid::now_v7().to_string();
                member::ActiveModel {
                    id: Set(id.clone()),
                    status: Set("active".into()),
                    created_at: Set(now()),
                    erased_at: Set(None),
                }
                .insert(txn)
                .await
                .map_err(StorageError::from)?;
                id
            }
        };
        let mut new_rows = Vec::new();
        for (hash, id) in &hashed {
            let held = matches
                .iter()
                .find(|m| m.partner_id == caller && &m.lookup_hash == hash);
            match held {
                Some(row) if id.verified && !row.verified => {
                    identifier::Entity::update_many()
                        .col_expr(
                            identifier::Column::Verified,
                            sea_orm::sea_query::Expr::value(true),
                        )
                        .filter(identifier::Column::Id.eq(row.id))
                        .exec(txn)
                        .await
                        .map_err(StorageError::from)?;
                }
                Some(_) => {}
                None => new_rows.push(self.identifier_row(caller, &member_id, hash, id)),
            }
        }
        if !new_rows.is_empty() {
            identifier::Entity::insert_many(new_rows)
                .exec(txn)
                .await
                .map_err(StorageError::from)?;
        }
        // A member made just now has nothing to look up: its profile, scoped id and view are
        // what this call writes (half the statements of an enrolment, on the one writer).
        let (scoped_id, view) = if existing.is_none() {
            if !fields.is_empty() {
                self.insert_profile(txn, &member_id, caller, fields).await?;
            }
            let scoped_id = self.secrets.scoped_id(caller, &member_id);
            scoped_id::ActiveModel {
                scoped_id: Set(scoped_id.clone()),
                partner_id: Set(caller.to_owned()),
                member_id: Set(member_id.clone()),
            }
            .insert(txn)
            .await
            .map_err(StorageError::from)?;
            let view = MemberView {
                identifiers: ids.to_vec(),
                profile: fields.clone(),
                created_at: now(),
            };
            (scoped_id, Some(view))
        } else {
            if !fields.is_empty() {
                self.merge_profile(txn, &member_id, caller, fields).await?;
            }
            (self.ensure_scoped_id(txn, caller, &member_id).await?, None)
        };
        Ok(Enrolled {
            scoped_id,
            member_id,
            linked_existing: existing.is_some(),
            candidates: i32::try_from(candidates).unwrap_or(i32::MAX),
            view,
        })
    }

    async fn insert_profile(
        &self,
        txn: &impl ConnectionTrait,
        member_id: &str,
        partner: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<(), IdentityError> {
        profile::ActiveModel {
            member_id: Set(member_id.to_owned()),
            partner_id: Set(partner.to_owned()),
            sealed: Set(self
                .secrets
                .seal(&serde_json::to_string(fields).unwrap_or_default())),
            updated_at: Set(now()),
        }
        .insert(txn)
        .await
        .map_err(StorageError::from)?;
        Ok(())
    }

    async fn merge_profile(
        &self,
        txn: &impl ConnectionTrait,
        member_id: &str,
        partner: &str,
        fields: &BTreeMap<String, String>,
    ) -> Result<(), IdentityError> {
        let key = (member_id.to_owned(), partner.to_owned());
        // Locked to the end of the transaction (PostgreSQL), so two enrolments of the same
        // person by the same partner cannot each drop the other's fields.
        let existing = profile::Entity::find_by_id(key)
            .lock_exclusive()
            .one(txn)
            .await
            .map_err(StorageError::from)?;
        let mut merged: BTreeMap<String, String> = existing
            .as_ref()
            .and_then(|p| self.secrets.open(&p.sealed))
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default();
        merged.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
        let sealed = self
            .secrets
            .seal(&serde_json::to_string(&merged).unwrap_or_default());
        let row = profile::ActiveModel {
            member_id: Set(member_id.to_owned()),
            partner_id: Set(partner.to_owned()),
            sealed: Set(sealed),
            updated_at: Set(now()),
        };
        if existing.is_some() {
            row.update(txn).await.map(drop)
        } else {
            row.insert(txn).await.map(drop)
        }
        .map_err(StorageError::from)?;
        Ok(())
    }

    async fn ensure_scoped_id(
        &self,
        txn: &impl ConnectionTrait,
        partner: &str,
        member_id: &str,
    ) -> Result<String, IdentityError> {
        let held = Self::scoped_ids_of(txn, &self.secrets, partner, &[member_id.to_owned()])
            .await?
            .remove(member_id);
        if let Some(scoped) = held {
            return Ok(scoped);
        }
        let scoped = self.secrets.scoped_id(partner, member_id);
        scoped_id::ActiveModel {
            scoped_id: Set(scoped.clone()),
            partner_id: Set(partner.to_owned()),
            member_id: Set(member_id.to_owned()),
        }
        .insert(txn)
        .await
        .map_err(StorageError::from)?;
        Ok(scoped)
    }

    /// The member behind `caller`'s scoped id; another partner's scoped id finds nothing, and
    /// an erased member's id answers NOT_FOUND with reason MEMBER_ERASED (its tombstone).
    pub(crate) async fn member_for(
        conn: &impl ConnectionTrait,
        caller: &str,
        scoped: &str,
    ) -> Result<String, IdentityError> {
        let member_id = scoped_id::Entity::find_by_id(scoped.to_owned())
            .one(conn)
            .await
            .map_err(StorageError::from)?
            .filter(|row| row.partner_id == caller)
            .map(|row| row.member_id)
            .ok_or(IdentityError::NotFound("member"))?;
        let member = member::Entity::find_by_id(member_id.clone())
            .one(conn)
            .await
            .map_err(StorageError::from)?;
        match member {
            Some(m) if m.status == "active" => Ok(member_id),
            Some(_) => Err(IdentityError::NotFound("erased member")),
            None => Err(IdentityError::NotFound("member")),
        }
    }

    /// Erases a member mesh-wide: identifiers and profiles are deleted, every consent is
    /// withdrawn, the member becomes a tombstone. Returns each partner's scoped id, so each
    /// can be told in its own terms.
    pub(crate) async fn erase(
        txn: &impl ConnectionTrait,
        member_id: &str,
    ) -> Result<Vec<(String, String)>, IdentityError> {
        use sea_orm::sea_query::Expr;
        identifier::Entity::delete_many()
            .filter(identifier::Column::MemberId.eq(member_id.to_owned()))
            .exec(txn)
            .await
            .map_err(StorageError::from)?;
        profile::Entity::delete_many()
            .filter(profile::Column::MemberId.eq(member_id.to_owned()))
            .exec(txn)
            .await
            .map_err(StorageError::from)?;
        super::entities::consent::Entity::update_many()
            .col_expr(
                super::entities::consent::Column::State,
                Expr::value("withdrawn"),
            )
            .col_expr(
                super::entities::consent::Column::UpdatedAt,
                Expr::value(now()),
            )
            .filter(super::entities::consent::Column::MemberId.eq(member_id.to_owned()))
            .exec(txn)
            .await
            .map_err(StorageError::from)?;
        member::Entity::update_many()
            .col_expr(member::Column::Status, Expr::value("erased"))
            .col_expr(member::Column::ErasedAt, Expr::value(now()))
            .filter(member::Column::Id.eq(member_id.to_owned()))
            .exec(txn)
            .await
            .map_err(StorageError::from)?;
        Ok(scoped_id::Entity::find()
            .filter(scoped_id::Column::MemberId.eq(member_id.to_owned()))
            .all(txn)
            .await
            .map_err(StorageError::from)?
            .into_iter()
            .map(|row| (row.partner_id, row.scoped_id))
            .collect())
    }

    /// `partner`'s scoped ids for `members`, where it has one. After a merge a partner may
    /// hold two ids for one member; the surviving member's own id is the one reported.
    pub(crate) async fn scoped_ids_of(
        conn: &impl ConnectionTrait,
        secrets: &crate::domain::secrets::Secrets,
        partner: &str,
        members: &[String],
    ) -> Result<BTreeMap<String, String>, IdentityError> {
        let rows = scoped_id::Entity::find()
            .filter(scoped_id::Column::PartnerId.eq(partner.to_owned()))
            .filter(scoped_id::Column::MemberId.is_in(members.iter().cloned()))
            .all(conn)
            .await
            .map_err(StorageError::from)?;
        let mut out = BTreeMap::new();
        for row in rows {
            let canonical = secrets.scoped_id(partner, &row.member_id) == row.scoped_id;
            if canonical || !out.contains_key(&row.member_id) {
                out.insert(row.member_id, row.scoped_id);
            }
        }
        Ok(out)
    }

    /// `caller`'s scoped id of the member holding an identifier `caller` itself submitted.
    pub(crate) async fn resolve(
        &self,
        caller: &str,
        id: &Identifier,
    ) -> Result<String, IdentityError> {
        let row = identifier::Entity::find()
            .filter(identifier::Column::PartnerId.eq(caller.to_owned()))
            .filter(identifier::Column::LookupHash.eq(self.secrets.lookup_hash(id)))
            .one(&self.read)
            .await
            .map_err(StorageError::from)?
            .ok_or(IdentityError::NotFound("member"))?;
        Self::scoped_ids_of(
            &self.read,
            &self.secrets,
            caller,
            std::slice::from_ref(&row.member_id),
        )
        .await?
        .remove(&row.member_id)
        .ok_or(IdentityError::NotFound("member"))
    }

    /// What `partner` itself contributed about a member.
    pub(crate) async fn contributed(
        &self,
        conn: &impl ConnectionTrait,
        member_id: &str,
        partner: &str,
    ) -> Result<MemberView, IdentityError> {
        let created_at = member::Entity::find_by_id(member_id.to_owned())
            .one(conn)
            .await
            .map_err(StorageError::from)?
            .ok_or(IdentityError::NotFound("member"))?
            .created_at;
        let identifiers = identifier::Entity::find()
            .filter(identifier::Column::MemberId.eq(member_id.to_owned()))
            .filter(identifier::Column::PartnerId.eq(partner.to_owned()))
            .order_by_asc(identifier::Column::Id)
            .all(conn)
            .await
            .map_err(StorageError::from)?
            .into_iter()
            .filter_map(|row| {
                Some(Identifier {
                    kind: Kind::parse(&row.kind)?,
                    value: self.secrets.open(&row.sealed)?,
                    namespace: row.namespace,
                    verified: row.verified,
                })
            })
            .collect();
        let profile = self
            .profile(conn, member_id, partner)
            .await?
            .unwrap_or_default();
        Ok(MemberView {
            identifiers,
            profile,
            created_at,
        })
    }

    pub(crate) async fn profile(
        &self,
        conn: &impl ConnectionTrait,
        member_id: &str,
        partner: &str,
    ) -> Result<Option<BTreeMap<String, String>>, IdentityError> {
        let row = profile::Entity::find_by_id((member_id.to_owned(), partner.to_owned()))
            .one(conn)
            .await
            .map_err(StorageError::from)?;
        Ok(row
            .and_then(|p| self.secrets.open(&p.sealed))
            .and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Partners other than `caller` that hold a profile of the member.
    pub(crate) async fn other_contributors(
        &self,
        member_id: &str,
        caller: &str,
    ) -> Result<Vec<String>, IdentityError> {
        Ok(profile::Entity::find()
            .filter(profile::Column::MemberId.eq(member_id.to_owned()))
            .filter(profile::Column::PartnerId.ne(caller.to_owned()))
            .order_by_asc(profile::Column::PartnerId)
            .all(&self.read)
            .await
            .map_err(StorageError::from)?
            .into_iter()
            .map(|p| p.partner_id)
            .collect())
    }
}

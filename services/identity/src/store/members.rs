//! Members, their identifiers and profiles, and the partner-scoped ids that name them.

use super::entities::StoredMemberStatus;
use lianyu_kit::KitError;
use lianyu_kit::ids::{MeshMemberId, ScopedMemberId};
use std::collections::BTreeMap;

use lianyu_kit::storage::StorageError;
use lianyu_kit::writes::Writes;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, QueryTrait,
};

use super::{
    Store,
    entities::{identifier, member, profile, scoped_id},
    now,
};
use crate::domain::{
    IdentityError,
    identifier::{Identifier, Kind, Method},
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
    ///
    /// A member made by this enrolment is written through `writes` (its rows go to the
    /// database with the caller's other staged writes, in one trip on SQLite); the writes to an
    /// existing member are made at once, since reads that follow depend on them.
    ///
    /// `unseen`: a read before the transaction ([`Self::unseen`]) found none of the
    /// identifiers. The member is then made without reading them again, behind a guard that
    /// fails the write if any is held by the time it runs (a conflict: the caller's next try
    /// reads in the transaction, and links); the writes are then all staged and deferrable.
    /// Only on SQLite, whose one writer makes the guard exact; see [`lock_identifiers`].
    pub(crate) async fn enroll(
        &self,
        txn: &impl ConnectionTrait,
        writes: &mut Writes,
        caller: &str,
        ids: &[Identifier],
        fields: &BTreeMap<String, String>,
        unseen: bool,
    ) -> Result<Enrolled, IdentityError> {
        let backend = txn.get_database_backend();
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
        let held = identifier::Entity::find()
            .filter(identifier::Column::LookupHash.is_in(hashed.iter().map(|(h, _)| h.clone())));
        let unseen = unseen && backend == sea_orm::DbBackend::Sqlite;
        let matches = if unseen {
            writes.guard_none(
                backend,
                &held
                    .select_only()
                    .column(identifier::Column::Id)
                    .limit(1)
                    .into_query(),
            );
            writes.deferrable();
            Vec::new()
        } else {
            lock_identifiers(txn, hashed.iter().map(|(h, _)| h.as_str())).await?;
            held.all(txn).await.map_err(StorageError::from)?
        };
        // Another partner's record counts only inside the caller's ACTIVE alliances, and links
        // only where the alliance accepts both sides' verification methods.
        let alliances = if matches.iter().any(|m| m.partner_id != caller) {
            Self::alliances_of(txn, caller).await?
        } else {
            Vec::new()
        };
        let at = now();
        let found: Vec<Match<'_>> = matches
            .iter()
            .filter_map(|row| {
                let incoming = hashed.iter().find(|(h, _)| *h == row.lookup_hash)?.1;
                let theirs = Method::parse(&row.verification_method).unwrap_or(Method::Unstated);
                let methods = [incoming.method, theirs];
                Some(Match {
                    partner: &row.partner_id,
                    member: &row.member_id,
                    verified: row.verified,
                    incoming,
                    allied: alliances
                        .iter()
                        .any(|a| a.joins(caller, &row.partner_id, at)),
                    trusted: alliances
                        .iter()
                        .any(|a| a.trusts_verification(caller, &row.partner_id, &methods, at)),
                })
            })
            .collect();
        let Decision {
            member: existing,
            candidates,
        } = decide(caller, &found).map_err(|reason| {
            KitError::Precondition(
                reason,
                "these identifiers belong to different members you enrolled; merge them first"
                    .into(),
            )
        })?;
        let member_id = match existing.clone() {
            Some(m) => m,
            None => {
                let id = uuid::Uuid::now_v7().to_string();
                writes.add(
                    backend,
                    &member::Entity::insert(member::ActiveModel {
                        id: Set(id.clone()),
                        status: Set(StoredMemberStatus::Active),
                        created_at: Set(now()),
                        erased_at: Set(None),
                    }),
                );
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
                    mark_verified(txn, row.id, id.method).await?;
                }
                Some(_) => {}
                None => new_rows.push(self.identifier_row(caller, &member_id, hash, id)),
            }
        }
        let new_rows = (!new_rows.is_empty()).then(|| identifier::Entity::insert_many(new_rows));
        // A member made just now has nothing to look up: its profile, scoped id and view are
        // what this call writes, staged with its identifiers.
        let (scoped_id, view) = if existing.is_none() {
            if let Some(rows) = &new_rows {
                writes.add(backend, rows);
            }
            if !fields.is_empty() {
                writes.add(
                    backend,
                    &profile::Entity::insert(self.profile_row(&member_id, caller, fields)),
                );
            }
            let scoped_id = self.secrets.scoped_id(caller, &member_id);
            writes.add(
                backend,
                &scoped_id::Entity::insert(scoped_id::ActiveModel {
                    scoped_id: Set(scoped_id.clone()),
                    partner_id: Set(caller.to_owned()),
                    member_id: Set(member_id.clone()),
                    erased_at: Set(None),
                }),
            );
            let view = MemberView {
                identifiers: ids.to_vec(),
                profile: fields.clone(),
                created_at: now(),
            };
            (scoped_id, Some(view))
        } else {
            if let Some(rows) = new_rows {
                rows.exec(txn).await.map_err(StorageError::from)?;
            }
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

    /// Whether none of `ids` is held by anyone, read on the read pool beside the writer —
    /// committed data, possibly stale by the time it is used, hence [`Self::enroll`]'s guard.
    /// Always `false` off SQLite, where enrolments read and lock in their transaction.
    pub(crate) async fn unseen(&self, ids: &[Identifier]) -> Result<bool, IdentityError> {
        if self.read.get_database_backend() != sea_orm::DbBackend::Sqlite {
            return Ok(false);
        }
        let held = identifier::Entity::find()
            .select_only()
            .column(identifier::Column::Id)
            .filter(
                identifier::Column::LookupHash
                    .is_in(ids.iter().map(|i| self.secrets.lookup_hash(i))),
            )
            .into_tuple::<i64>()
            .one(&self.read)
            .await
            .map_err(StorageError::from)?;
        Ok(held.is_none())
    }

    /// A profile row holding `fields`, sealed.
    fn profile_row(
        &self,
        member_id: &str,
        partner: &str,
        fields: &BTreeMap<String, String>,
    ) -> profile::ActiveModel {
        profile::ActiveModel {
            member_id: Set(member_id.to_owned()),
            partner_id: Set(partner.to_owned()),
            sealed: Set(self
                .secrets
                .seal(&serde_json::to_string(fields).unwrap_or_default())),
            updated_at: Set(now()),
        }
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
        let row = self.profile_row(member_id, partner, &merged);
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
        let held =
            Self::scoped_ids_of(txn, &self.secrets, partner, &[MeshMemberId::new(member_id)])
                .await?
                .remove(member_id);
        if let Some(scoped) = held {
            return Ok(scoped.into_string());
        }
        // A partner that erased the person and enrols them again starts a new relationship:
        // a new id, never the erased one (other services purged everything under it).
        let canonical = self.secrets.scoped_id(partner, member_id);
        let erased_before = scoped_id::Entity::find_by_id(canonical.clone())
            .one(txn)
            .await
            .map_err(StorageError::from)?
            .is_some();
        let scoped = if erased_before {
            let fresh = uuid::Uuid::new_v4().simple().to_string();
            self.secrets
                .scoped_id(partner, &format!("{member_id}/{fresh}"))
        } else {
            canonical
        };
        scoped_id::ActiveModel {
            scoped_id: Set(scoped.clone()),
            partner_id: Set(partner.to_owned()),
            member_id: Set(member_id.to_owned()),
            erased_at: Set(None),
        }
        .insert(txn)
        .await
        .map_err(StorageError::from)?;
        Ok(scoped)
    }

    /// Holds the rows of `members` until `txn` ends (PostgreSQL, in id order; see
    /// [`lianyu_kit::storage::hold_rows`]): a merge is decided on the pair as the one before it
    /// left them.
    pub(crate) async fn lock_members(
        txn: &impl ConnectionTrait,
        members: [&str; 2],
    ) -> Result<(), IdentityError> {
        Ok(lianyu_kit::storage::hold_rows::<member::Entity>(txn, &members).await?)
    }

    /// The member behind `caller`'s scoped id; another partner's scoped id finds nothing, and
    /// an erased member's id answers NOT_FOUND with reason MEMBER_ERASED (its tombstone).
    pub(crate) async fn member_for(
        conn: &impl ConnectionTrait,
        caller: &str,
        scoped: &ScopedMemberId,
    ) -> Result<MeshMemberId, IdentityError> {
        // Twice at most: a merge that commits between the two reads below moves the scoped id
        // to the survivor and marks the member read first merged (a merged member has no
        // scoped id left), so the id is read again and names the survivor.
        for _ in 0..2 {
            let row = scoped_id::Entity::find_by_id(scoped.as_str())
                .one(conn)
                .await
                .map_err(StorageError::from)?
                .filter(|row| row.partner_id == caller)
                .ok_or(IdentityError::MemberNotFound)?;
            if row.erased_at.is_some() {
                return Err(IdentityError::MemberErased);
            }
            let member_id = row.member_id;
            let member = member::Entity::find_by_id(member_id.clone())
                .one(conn)
                .await
                .map_err(StorageError::from)?;
            match member {
                Some(m) if m.status == StoredMemberStatus::Active => {
                    return Ok(MeshMemberId::new(member_id));
                }
                Some(m) if m.status == StoredMemberStatus::Merged => continue,
                Some(_) => return Err(IdentityError::MemberErased),
                None => return Err(IdentityError::MemberNotFound),
            }
        }
        Err(IdentityError::MemberErased)
    }

    /// `partner`'s scoped ids for `members`, where it has one. After a merge a partner may
    /// hold two ids for one member; the surviving member's own id is the one reported.
    pub(crate) async fn scoped_ids_of(
        conn: &impl ConnectionTrait,
        secrets: &crate::domain::secrets::Secrets,
        partner: &str,
        members: &[MeshMemberId],
    ) -> Result<BTreeMap<MeshMemberId, ScopedMemberId>, IdentityError> {
        let rows = scoped_id::Entity::find()
            .filter(scoped_id::Column::PartnerId.eq(partner.to_owned()))
            .filter(scoped_id::Column::MemberId.is_in(members.iter().map(MeshMemberId::as_str)))
            .filter(scoped_id::Column::ErasedAt.is_null())
            .all(conn)
            .await
            .map_err(StorageError::from)?;
        let mut out = BTreeMap::new();
        for row in rows {
            let canonical = secrets.scoped_id(partner, &row.member_id) == row.scoped_id;
            let member = MeshMemberId::new(row.member_id);
            if canonical || !out.contains_key(&member) {
                out.insert(member, ScopedMemberId::new(row.scoped_id));
            }
        }
        Ok(out)
    }

    /// The mesh ids behind `partner`'s scoped ids, for those it holds: not another partner's,
    /// not erased, of an active member. A merged-away id answers with the surviving member.
    pub(crate) async fn mesh_ids_of(
        conn: &impl ConnectionTrait,
        partner: &str,
        scoped: &[ScopedMemberId],
    ) -> Result<BTreeMap<ScopedMemberId, MeshMemberId>, IdentityError> {
        let rows = scoped_id::Entity::find()
            .filter(scoped_id::Column::ScopedId.is_in(scoped.iter().map(ScopedMemberId::as_str)))
            .filter(scoped_id::Column::PartnerId.eq(partner.to_owned()))
            .filter(scoped_id::Column::ErasedAt.is_null())
            .all(conn)
            .await
            .map_err(StorageError::from)?;
        let active: std::collections::BTreeSet<String> = member::Entity::find()
            .filter(member::Column::Id.is_in(rows.iter().map(|r| r.member_id.clone())))
            .filter(member::Column::Status.eq(StoredMemberStatus::Active))
            .all(conn)
            .await
            .map_err(StorageError::from)?
            .into_iter()
            .map(|m| m.id)
            .collect();
        Ok(rows
            .into_iter()
            .filter(|r| active.contains(&r.member_id))
            .map(|r| {
                (
                    ScopedMemberId::new(r.scoped_id),
                    MeshMemberId::new(r.member_id),
                )
            })
            .collect())
    }

    /// `caller`'s scoped id of the member holding an identifier `caller` itself submitted.
    pub(crate) async fn resolve(
        &self,
        caller: &str,
        id: &Identifier,
    ) -> Result<ScopedMemberId, IdentityError> {
        let row = identifier::Entity::find()
            .filter(identifier::Column::PartnerId.eq(caller.to_owned()))
            .filter(identifier::Column::LookupHash.eq(self.secrets.lookup_hash(id)))
            .one(&self.read)
            .await
            .map_err(StorageError::from)?
            .ok_or(IdentityError::MemberNotFound)?;
        let member = MeshMemberId::new(row.member_id);
        Self::scoped_ids_of(
            &self.read,
            &self.secrets,
            caller,
            std::slice::from_ref(&member),
        )
        .await?
        .remove(&member)
        .ok_or(IdentityError::MemberNotFound)
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
            .ok_or(IdentityError::MemberNotFound)?
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
                    method: Method::parse(&row.verification_method).unwrap_or(Method::Unstated),
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
}

/// Marks a partner's record of an identifier verified, by `method`.
pub(super) async fn mark_verified(
    txn: &impl ConnectionTrait,
    row_id: i64,
    method: Method,
) -> Result<(), IdentityError> {
    use sea_orm::sea_query::Expr;
    identifier::Entity::update_many()
        .col_expr(identifier::Column::Verified, Expr::value(true))
        .col_expr(
            identifier::Column::VerificationMethod,
            Expr::value(method.as_str()),
        )
        .filter(identifier::Column::Id.eq(row_id))
        .exec(txn)
        .await
        .map_err(StorageError::from)?;
    Ok(())
}

/// Serialises, until the end of the transaction, every enrolment and link that touches one of
/// these identifiers (their keyed lookup hashes). Under PostgreSQL's READ COMMITTED two
/// enrolments of one new phone would otherwise both see "nobody holds it" and make two people;
/// with the lock the second waits, then sees the first's rows and links to them. Transaction-
/// scoped advisory locks, taken in one order so two enrolments never deadlock; nothing is
/// stored. SQLite has one writer, so it needs none.
pub(super) async fn lock_identifiers<'a>(
    txn: &impl ConnectionTrait,
    hashes: impl Iterator<Item = &'a str>,
) -> Result<(), IdentityError> {
    if txn.get_database_backend() != sea_orm::DbBackend::Postgres {
        return Ok(());
    }
    let mut keys: Vec<i64> = hashes
        .map(|h| {
            let prefix = h.get(..16).unwrap_or(h);
            u64::from_str_radix(prefix, 16).map_or(0, |k| k as i64)
        })
        .collect();
    keys.sort_unstable();
    keys.dedup();
    for key in keys {
        txn.execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [key.into()],
        ))
        .await
        .map_err(StorageError::from)?;
    }
    Ok(())
}

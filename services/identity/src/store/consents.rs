//! Consents: the latest word per (member, grantee, purpose, collector), and the receipts.

use super::entities::{StoredAllianceStatus, StoredConsentState};
use lianyu_kit::ids::{MeshMemberId, ScopedMemberId};
use lianyu_proto::identity::internal::v1::MeshEventKind;
use std::collections::BTreeMap;

use lianyu_kit::{
    feed::{Feed, NewEvent},
    storage::StorageError,
};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    sea_query::{Expr, OnConflict},
};

use super::{
    Store,
    consent_index::Granted,
    entities::{alliance, consent, consent_receipt, scoped_id},
    now,
};
use crate::domain::{
    IdentityError,
    consent::{Consent, ConsentEvent, ConsentState, EventKind, Liveness, Purpose, Receipt},
    partner::Alliance,
    secrets::Secrets,
};

/// A grant or withdrawal, as recorded on its receipt.
pub(crate) struct ConsentChange<'a> {
    pub(crate) member_id: &'a str,
    pub(crate) collector: &'a str,
    pub(crate) grantee: &'a str,
    pub(crate) purposes: &'a [Purpose],
    pub(crate) channel: i32,
    pub(crate) policy_version: &'a str,
    pub(crate) valid_from: i64,
    pub(crate) valid_until: i64,
    pub(crate) alliance: &'a Alliance,
    pub(crate) state: ConsentState,
}

impl Store {
    /// Records a grant or withdrawal and its receipt, and appends the event to the feed.
    pub(crate) async fn change_consent(
        txn: &impl ConnectionTrait,
        secrets: &Secrets,
        feed: &Feed,
        c: &ConsentChange<'_>,
    ) -> Result<Receipt, IdentityError> {
        let receipt_id = uuid::Uuid::now_v7().to_string();
        let at = now();
        let receipt = consent_receipt::ActiveModel {
            id: Set(receipt_id.clone()),
            member_id: Set(c.member_id.to_owned()),
            collector: Set(c.collector.to_owned()),
            grantee: Set(c.grantee.to_owned()),
            purposes: Set(c
                .purposes
                .iter()
                .map(|p| (*p as i32).to_string())
                .collect::<Vec<_>>()
                .join(",")),
            data_categories: Set(
                serde_json::to_string(&c.alliance.data_categories).unwrap_or_default()
            ),
            processing_method: Set(c.alliance.processing_method.clone()),
            policy_version: Set(c.policy_version.to_owned()),
            channel: Set(c.channel),
            status: Set(c.state.into()),
            valid_from: Set(c.valid_from),
            valid_until: Set(c.valid_until),
            alliance_id: Set(c.alliance.id.clone()),
            issued_at: Set(at),
            terms_version: Set(c.alliance.terms_version),
        }
        .insert(txn)
        .await
        .map_err(StorageError::from)?;
        // The receipts a withdrawal supersedes read WITHDRAWN once nothing refers to them.
        let previous: Vec<String> = if c.state == ConsentState::Withdrawn {
            consent::Entity::find()
                .filter(consent::Column::MemberId.eq(c.member_id.to_owned()))
                .filter(consent::Column::Grantee.eq(c.grantee.to_owned()))
                .filter(consent::Column::Collector.eq(c.collector.to_owned()))
                .filter(consent::Column::Purpose.is_in(c.purposes.iter().map(|p| *p as i32)))
                .all(txn)
                .await
                .map_err(StorageError::from)?
                .into_iter()
                .map(|row| row.receipt_id)
                .collect()
        } else {
            Vec::new()
        };
        for purpose in c.purposes {
            let row = consent::ActiveModel {
                member_id: Set(c.member_id.to_owned()),
                grantee: Set(c.grantee.to_owned()),
                purpose: Set(*purpose as i32),
                collector: Set(c.collector.to_owned()),
                receipt_id: Set(receipt_id.clone()),
                state: Set(c.state.into()),
                valid_from: Set(c.valid_from),
                valid_until: Set(c.valid_until),
                alliance_id: Set(c.alliance.id.clone()),
                terms_version: Set(c.alliance.terms_version),
                updated_at: Set(at),
            };
            consent::Entity::insert(row)
                .on_conflict(
                    OnConflict::columns([
                        consent::Column::MemberId,
                        consent::Column::Grantee,
                        consent::Column::Purpose,
                        consent::Column::Collector,
                    ])
                    .update_columns([
                        consent::Column::ReceiptId,
                        consent::Column::State,
                        consent::Column::ValidFrom,
                        consent::Column::ValidUntil,
                        consent::Column::AllianceId,
                        consent::Column::TermsVersion,
                        consent::Column::UpdatedAt,
                    ])
                    .to_owned(),
                )
                .exec(txn)
                .await
                .map_err(StorageError::from)?;
        }
        for old in previous {
            let still_used = consent::Entity::find()
                .filter(consent::Column::ReceiptId.eq(old.clone()))
                .one(txn)
                .await
                .map_err(StorageError::from)?
                .is_some();
            if !still_used {
                consent_receipt::Entity::update_many()
                    .col_expr(
                        consent_receipt::Column::Status,
                        Expr::value(StoredConsentState::Withdrawn),
                    )
                    .filter(consent_receipt::Column::Id.eq(old))
                    .exec(txn)
                    .await
                    .map_err(StorageError::from)?;
            }
        }
        let member =
            Self::scoped_ids_of(txn, secrets, c.grantee, &[MeshMemberId::new(c.member_id)])
                .await?
                .remove(c.member_id)
                .map(String::from)
                .unwrap_or_default();
        append_event(
            feed,
            txn,
            ConsentEvent {
                kind: match c.state {
                    ConsentState::Granted => EventKind::Granted,
                    ConsentState::Withdrawn => EventKind::Withdrawn,
                },
                member,
                collector: c.collector.to_owned(),
                grantee: c.grantee.to_owned(),
                purposes: c.purposes.iter().map(|p| *p as i32).collect(),
                receipt_id: receipt_id.clone(),
            },
        )
        .await?;
        super::mesh::append_mesh(
            feed,
            txn,
            match c.state {
                ConsentState::Granted => MeshEventKind::ConsentGranted,
                ConsentState::Withdrawn => MeshEventKind::ConsentWithdrawn,
            },
            super::mesh::MeshEvent {
                member: c.member_id,
                partner: c.collector,
                grantee: c.grantee,
                purposes: c.purposes,
                ..Default::default()
            },
        )
        .await?;
        Ok(receipt.into())
    }

    /// Receipts `party` is party to, in issue order: about one member (as collector or
    /// grantee), or without a member every receipt granted to `party`. Never a receipt between
    /// two other partners.
    pub(crate) async fn receipts(
        conn: &impl ConnectionTrait,
        member_id: Option<&str>,
        party: &str,
        page: &lianyu_kit::page::Page,
    ) -> Result<Vec<Receipt>, IdentityError> {
        use sea_orm::{QueryOrder, QuerySelect, sea_query::Condition};
        let mut query = consent_receipt::Entity::find()
            .order_by_asc(consent_receipt::Column::Id)
            .limit(page.size + 1);
        if let Some(m) = member_id {
            query = query
                .filter(consent_receipt::Column::MemberId.eq(m.to_owned()))
                .filter(
                    Condition::any()
                        .add(consent_receipt::Column::Collector.eq(party.to_owned()))
                        .add(consent_receipt::Column::Grantee.eq(party.to_owned())),
                );
        } else {
            query = query.filter(consent_receipt::Column::Grantee.eq(party.to_owned()));
        }
        if let Some(after) = &page.after {
            query = query.filter(consent_receipt::Column::Id.gt(after.clone()));
        }
        Ok(query
            .all(conn)
            .await
            .map_err(StorageError::from)?
            .into_iter()
            .map(Receipt::from)
            .collect())
    }

    /// For each of `grantee`'s scoped ids that has one, its live consent for `purpose`. The
    /// granted rows come from the consent index; misses are loaded in one query joining the
    /// caller's scoped ids to their consents. Liveness is judged here, at every check.
    pub(crate) async fn live_consents_by_scoped_id(
        &self,
        grantee: &str,
        scoped: &[ScopedMemberId],
        purpose: Purpose,
    ) -> Result<BTreeMap<String, Consent>, IdentityError> {
        let mut granted: Vec<(String, std::sync::Arc<Vec<Granted>>)> =
            Vec::with_capacity(scoped.len());
        let mut missing = Vec::new();
        for id in scoped {
            match self.consent_index.get(grantee, id, purpose) {
                Some(rows) => granted.push((id.to_string(), rows)),
                None => missing.push(id.to_string()),
            }
        }
        if !missing.is_empty() {
            let epoch = self.consent_index.epoch();
            let mut loaded = self.load_granted(grantee, &missing, purpose).await?;
            // Known scoped ids without a consent are kept too, as empty entries.
            for id in &missing {
                loaded.entry(id.clone()).or_default();
            }
            self.consent_index
                .insert(epoch, grantee, purpose, loaded.clone());
            granted.extend(
                loaded
                    .into_iter()
                    .map(|(id, rows)| (id, std::sync::Arc::new(rows))),
            );
        }
        let at = now();
        let mut out = BTreeMap::new();
        for (id, rows) in granted {
            for row in rows.iter() {
                let alliance = self.alliances.get(&self.read, &row.alliance_id).await?;
                let consent = Consent {
                    receipt_id: row.receipt_id.clone(),
                    collector: row.collector.clone(),
                    grantee: grantee.to_owned(),
                    purpose,
                    state: ConsentState::Granted,
                    valid_from: row.valid_from,
                    valid_until: row.valid_until,
                    alliance_id: row.alliance_id.clone(),
                    terms_version: row.terms_version,
                };
                if consent.liveness(alliance.as_ref(), at) == Liveness::Live {
                    out.entry(id.clone()).or_insert(consent);
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The granted consent rows to `grantee` for `purpose` of the members behind `scoped`.
    async fn load_granted(
        &self,
        grantee: &str,
        scoped: &[String],
        purpose: Purpose,
    ) -> Result<BTreeMap<String, Vec<Granted>>, IdentityError> {
        use sea_orm::{FromQueryResult, QuerySelect, sea_query::JoinType};
        #[derive(FromQueryResult)]
        struct Row {
            scoped_id: String,
            receipt_id: String,
            collector: String,
            valid_from: i64,
            valid_until: i64,
            alliance_id: String,
            terms_version: i64,
        }
        let rows = consent::Entity::find()
            .select_only()
            .column(scoped_id::Column::ScopedId)
            .columns([
                consent::Column::ReceiptId,
                consent::Column::Collector,
                consent::Column::ValidFrom,
                consent::Column::ValidUntil,
                consent::Column::AllianceId,
                consent::Column::TermsVersion,
            ])
            .join(JoinType::InnerJoin, consent_to_scoped())
            .filter(scoped_id::Column::PartnerId.eq(grantee.to_owned()))
            .filter(scoped_id::Column::ScopedId.is_in(scoped.iter().cloned()))
            .filter(consent::Column::Grantee.eq(grantee.to_owned()))
            .filter(consent::Column::Purpose.eq(purpose as i32))
            .filter(consent::Column::State.eq(StoredConsentState::Granted))
            .into_model::<Row>()
            .all(&self.read)
            .await
            .map_err(StorageError::from)?;
        let mut out: BTreeMap<String, Vec<Granted>> = BTreeMap::new();
        for row in rows {
            out.entry(row.scoped_id).or_default().push(Granted {
                receipt_id: row.receipt_id,
                collector: row.collector,
                valid_from: row.valid_from,
                valid_until: row.valid_until,
                alliance_id: row.alliance_id,
                terms_version: row.terms_version,
            });
        }
        Ok(out)
    }

    /// For each member, the live consent to `grantee` for `purpose` (from any collector).
    pub(crate) async fn live_consents(
        &self,
        members: &[MeshMemberId],
        grantee: &str,
        purpose: Purpose,
        collector: Option<&str>,
    ) -> Result<BTreeMap<String, Consent>, IdentityError> {
        let mut query = consent::Entity::find()
            .filter(consent::Column::MemberId.is_in(members.iter().cloned()))
            .filter(consent::Column::Grantee.eq(grantee.to_owned()))
            .filter(consent::Column::Purpose.eq(purpose as i32))
            .filter(consent::Column::State.eq(StoredConsentState::Granted));
        if let Some(collector) = collector {
            query = query.filter(consent::Column::Collector.eq(collector.to_owned()));
        }
        let rows = query.all(&self.read).await.map_err(StorageError::from)?;
        let at = now();
        let mut out = BTreeMap::new();
        for row in rows {
            let alliance = self.alliances.get(&self.read, &row.alliance_id).await?;
            let consent = Consent {
                receipt_id: row.receipt_id,
                collector: row.collector,
                grantee: row.grantee,
                purpose,
                state: ConsentState::Granted,
                valid_from: row.valid_from,
                valid_until: row.valid_until,
                alliance_id: row.alliance_id.clone(),
                terms_version: row.terms_version,
            };
            if consent.liveness(alliance.as_ref(), at) == Liveness::Live {
                out.entry(row.member_id).or_insert(consent);
            }
        }
        Ok(out)
    }
}

/// Why consents stopped counting without the member saying so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lapse {
    /// The alliance's terms changed; the member must consent again.
    Stale,
    /// The validity window ended, or the alliance did.
    Expired,
}

impl Store {
    /// Announces up to `limit` consents that stopped counting because their alliance changed:
    /// those given under older terms turn `stale`, those under an ended alliance `expired`.
    /// Each row is claimed by a conditional update (so replicas announce each once), and the
    /// work is resumable: what is left is simply found again by the next batch. Returns how many.
    pub(crate) async fn lapse_due(
        txn: &impl ConnectionTrait,
        secrets: &Secrets,
        feed: &Feed,
        at: i64,
        limit: u64,
    ) -> Result<usize, IdentityError> {
        use sea_orm::{
            QuerySelect,
            sea_query::{Condition, ExprTrait, JoinType},
        };
        let due = consent::Entity::find()
            .join(JoinType::InnerJoin, consent_to_alliance())
            .filter(consent::Column::State.eq(StoredConsentState::Granted))
            .filter(
                Condition::any()
                    .add(alliance::Column::Status.eq(StoredAllianceStatus::Ended))
                    .add(
                        Expr::col((consent::Entity, consent::Column::TermsVersion)).lt(Expr::col(
                            (alliance::Entity, alliance::Column::TermsVersion),
                        )),
                    ),
            )
            .limit(limit)
            .all(txn)
            .await
            .map_err(StorageError::from)?;
        let mut ends: BTreeMap<&str, Option<crate::domain::partner::Alliance>> = BTreeMap::new();
        for row in &due {
            if !ends.contains_key(row.alliance_id.as_str()) {
                ends.insert(
                    &row.alliance_id,
                    Self::alliance(txn, &row.alliance_id).await?,
                );
            }
        }
        let (mut stale, mut expired) = (Vec::new(), Vec::new());
        for row in &due {
            let Some(alliance) = ends.get(row.alliance_id.as_str()).and_then(Option::as_ref) else {
                continue;
            };
            let (state, into) = if alliance.status == crate::domain::partner::AllianceStatus::Ended
            {
                (StoredConsentState::Expired, &mut expired)
            } else {
                (StoredConsentState::Stale, &mut stale)
            };
            let done = consent::Entity::update_many()
                .col_expr(consent::Column::State, Expr::value(state))
                .col_expr(consent::Column::UpdatedAt, Expr::value(at))
                .filter(consent::Column::MemberId.eq(row.member_id.clone()))
                .filter(consent::Column::Grantee.eq(row.grantee.clone()))
                .filter(consent::Column::Purpose.eq(row.purpose))
                .filter(consent::Column::Collector.eq(row.collector.clone()))
                .filter(consent::Column::State.eq(StoredConsentState::Granted))
                .exec(txn)
                .await
                .map_err(StorageError::from)?;
            if done.rows_affected == 1 {
                into.push(row.clone());
            }
        }
        announce(txn, secrets, feed, &stale, Lapse::Stale).await?;
        announce(txn, secrets, feed, &expired, Lapse::Expired).await?;
        Ok(stale.len() + expired.len())
    }

    /// Marks up to `limit` consents whose window has ended as expired and announces them.
    /// Each row is claimed by a conditional update, so two replicas sweeping at once announce
    /// every expiry exactly once. Returns how many expired.
    pub(crate) async fn expire_due(
        txn: &impl ConnectionTrait,
        secrets: &Secrets,
        feed: &Feed,
        at: i64,
        limit: u64,
    ) -> Result<usize, IdentityError> {
        use sea_orm::QuerySelect;
        let due = consent::Entity::find()
            .filter(consent::Column::State.eq(StoredConsentState::Granted))
            .filter(consent::Column::ValidUntil.lte(at))
            .limit(limit)
            .all(txn)
            .await
            .map_err(StorageError::from)?;
        let mut claimed = Vec::with_capacity(due.len());
        for row in due {
            let done = consent::Entity::update_many()
                .col_expr(
                    consent::Column::State,
                    Expr::value(StoredConsentState::Expired),
                )
                .col_expr(consent::Column::UpdatedAt, Expr::value(at))
                .filter(consent::Column::MemberId.eq(row.member_id.clone()))
                .filter(consent::Column::Grantee.eq(row.grantee.clone()))
                .filter(consent::Column::Purpose.eq(row.purpose))
                .filter(consent::Column::Collector.eq(row.collector.clone()))
                .filter(consent::Column::State.eq(StoredConsentState::Granted))
                .filter(consent::Column::ValidUntil.lte(at))
                .exec(txn)
                .await
                .map_err(StorageError::from)?;
            if done.rows_affected == 1 {
                claimed.push(row);
            }
        }
        announce(txn, secrets, feed, &claimed, Lapse::Expired).await?;
        Ok(claimed.len())
    }
}

/// One feed event per (member, grantee, collector, receipt), in the grantee's scoped id.
async fn announce(
    txn: &impl ConnectionTrait,
    secrets: &Secrets,
    feed: &Feed,
    rows: &[consent::Model],
    lapse: Lapse,
) -> Result<(), IdentityError> {
    let mut groups: BTreeMap<(&str, &str, &str, &str), Vec<i32>> = BTreeMap::new();
    for row in rows {
        groups
            .entry((
                &row.grantee,
                &row.member_id,
                &row.collector,
                &row.receipt_id,
            ))
            .or_default()
            .push(row.purpose);
    }
    let mut by_grantee: BTreeMap<&str, Vec<MeshMemberId>> = BTreeMap::new();
    for (grantee, member, ..) in groups.keys() {
        by_grantee
            .entry(grantee)
            .or_default()
            .push(MeshMemberId::new(*member));
    }
    let mut scoped = BTreeMap::new();
    for (grantee, members) in by_grantee {
        scoped.insert(
            grantee,
            Store::scoped_ids_of(txn, secrets, grantee, &members).await?,
        );
    }
    for ((grantee, member, collector, receipt), purposes) in groups {
        append_event(
            feed,
            txn,
            ConsentEvent {
                kind: match lapse {
                    Lapse::Stale => EventKind::Stale,
                    Lapse::Expired => EventKind::Expired,
                },
                member: scoped
                    .get(grantee)
                    .and_then(|ids| ids.get(member))
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
                collector: collector.to_owned(),
                grantee: grantee.to_owned(),
                purposes,
                receipt_id: receipt.to_owned(),
            },
        )
        .await?;
    }
    Ok(())
}

/// Appends a consent event to the grantee's feed, stored as the contract's own
/// `WatchConsentEventsResponse` (the feed adds the cursor and time when it serves it).
pub(crate) async fn append_event(
    feed: &Feed,
    txn: &impl ConnectionTrait,
    event: ConsentEvent,
) -> Result<(), IdentityError> {
    use lianyu_proto::identity::v1::{ConsentEventKind as Kind, WatchConsentEventsResponse};
    let (kind, name) = match event.kind {
        EventKind::Granted => (Kind::Granted, "consent.granted"),
        EventKind::Withdrawn => (Kind::Withdrawn, "consent.withdrawn"),
        EventKind::Expired => (Kind::Expired, "consent.expired"),
        EventKind::Stale => (Kind::Stale, "consent.stale"),
        EventKind::Erased => (Kind::MemberErased, "consent.erased"),
        EventKind::ErasureRequested => (Kind::ErasureRequested, "consent.erasure_requested"),
        EventKind::Merged => (Kind::MembersMerged, "consent.merged"),
    };
    let body = WatchConsentEventsResponse {
        cursor: None,
        kind: kind as i32,
        // Empty when the grantee does not hold the member: nothing is served for it.
        member: if event.member.is_empty() {
            String::new()
        } else {
            format!("members/{}", event.member)
        },
        // Who relayed an erasure request is not said.
        grantee: if event.kind == EventKind::ErasureRequested {
            String::new()
        } else {
            format!("partners/{}", event.grantee)
        },
        purposes: event.purposes,
        event_time: None,
    };
    feed.append(txn, NewEvent::message(name, Some(event.grantee), &body))
        .await?;
    Ok(())
}

/// consents.alliance_id = alliances.id, for the lapse sweep's join.
fn consent_to_alliance() -> sea_orm::RelationDef {
    use sea_orm::EntityTrait as _;
    consent::Entity::belongs_to(alliance::Entity)
        .from(consent::Column::AllianceId)
        .to(alliance::Column::Id)
        .into()
}

/// consents.member_id = scoped_ids.member_id, for the check query's join.
fn consent_to_scoped() -> sea_orm::RelationDef {
    use sea_orm::EntityTrait as _;
    consent::Entity::belongs_to(scoped_id::Entity)
        .from(consent::Column::MemberId)
        .to(scoped_id::Column::MemberId)
        .into()
}

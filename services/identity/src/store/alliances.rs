//! Alliances and their member partners.

use std::collections::BTreeSet;

use lianyu_kit::storage::StorageError;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
};

use super::{
    Store,
    entities::{alliance, alliance_partner},
};
use crate::domain::{IdentityError, consent::Purpose, identifier::Method, partner::Alliance};

impl Store {
    pub(crate) async fn insert_alliance(
        txn: &impl ConnectionTrait,
        a: &Alliance,
        now: i64,
    ) -> Result<(), IdentityError> {
        alliance::ActiveModel {
            id: Set(a.id.clone()),
            display_name: Set(a.display_name.clone()),
            purposes: Set(purposes_column(&a.purposes)),
            data_categories: Set(serde_json::to_string(&a.data_categories).unwrap_or_default()),
            processing_method: Set(a.processing_method.clone()),
            valid_from: Set(a.valid_from),
            valid_until: Set(a.valid_until),
            status: Set(a.status.into()),
            terms_version: Set(a.terms_version),
            created_at: Set(now),
            accepted_methods: Set(methods_column(&a.accepted_methods)),
        }
        .insert(txn)
        .await
        .map_err(StorageError::from)?;
        for partner in &a.partners {
            alliance_partner::ActiveModel {
                alliance_id: Set(a.id.clone()),
                partner_id: Set(partner.clone()),
                accepted: Set(a.accepted.contains(partner)),
            }
            .insert(txn)
            .await
            .map_err(StorageError::from)?;
        }
        Ok(())
    }

    /// Saves an alliance's current state: terms, window, status and who has accepted.
    pub(crate) async fn save_alliance_state(
        txn: &impl ConnectionTrait,
        a: &Alliance,
    ) -> Result<(), IdentityError> {
        alliance::ActiveModel {
            id: sea_orm::ActiveValue::Unchanged(a.id.clone()),
            display_name: Set(a.display_name.clone()),
            purposes: Set(purposes_column(&a.purposes)),
            data_categories: Set(serde_json::to_string(&a.data_categories).unwrap_or_default()),
            processing_method: Set(a.processing_method.clone()),
            valid_until: Set(a.valid_until),
            status: Set(a.status.into()),
            terms_version: Set(a.terms_version),
            accepted_methods: Set(methods_column(&a.accepted_methods)),
            ..Default::default()
        }
        .update(txn)
        .await
        .map_err(StorageError::from)?;
        for partner in &a.partners {
            alliance_partner::Entity::update_many()
                .col_expr(
                    alliance_partner::Column::Accepted,
                    sea_orm::sea_query::Expr::value(a.accepted.contains(partner)),
                )
                .filter(alliance_partner::Column::AllianceId.eq(a.id.clone()))
                .filter(alliance_partner::Column::PartnerId.eq(partner.clone()))
                .exec(txn)
                .await
                .map_err(StorageError::from)?;
        }
        Ok(())
    }

    pub(crate) async fn alliance(
        conn: &impl ConnectionTrait,
        id: &str,
    ) -> Result<Option<Alliance>, IdentityError> {
        Self::read_alliance(conn, id, false).await
    }

    /// The alliance, its row locked to the end of `txn` (PostgreSQL `FOR UPDATE`; SQLite's one
    /// writer serialises transactions anyway), for a read-modify-write that loses no update.
    pub(crate) async fn alliance_for_update(
        txn: &impl ConnectionTrait,
        id: &str,
    ) -> Result<Option<Alliance>, IdentityError> {
        Self::read_alliance(txn, id, true).await
    }

    async fn read_alliance(
        conn: &impl ConnectionTrait,
        id: &str,
        lock: bool,
    ) -> Result<Option<Alliance>, IdentityError> {
        use sea_orm::QuerySelect;
        let mut query = alliance::Entity::find_by_id(id.to_owned());
        if lock {
            query = query.lock_exclusive();
        }
        let Some(row) = query.one(conn).await.map_err(StorageError::from)? else {
            return Ok(None);
        };
        let members = alliance_partner::Entity::find()
            .filter(alliance_partner::Column::AllianceId.eq(id.to_owned()))
            .all(conn)
            .await
            .map_err(StorageError::from)?;
        Ok(Some(to_domain(row, &members)))
    }

    /// Every alliance `partner` belongs to.
    pub(crate) async fn alliances_of(
        conn: &impl ConnectionTrait,
        partner: &str,
    ) -> Result<Vec<Alliance>, IdentityError> {
        let ids: Vec<String> = alliance_partner::Entity::find()
            .filter(alliance_partner::Column::PartnerId.eq(partner.to_owned()))
            .all(conn)
            .await
            .map_err(StorageError::from)?
            .into_iter()
            .map(|m| m.alliance_id)
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(a) = Self::alliance(conn, &id).await? {
                out.push(a);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Partners that share any alliance with `partner`, itself included.
    pub(crate) async fn allied_with(
        conn: &impl ConnectionTrait,
        partner: &str,
    ) -> Result<BTreeSet<String>, IdentityError> {
        let mut out: BTreeSet<String> = Self::alliances_of(conn, partner)
            .await?
            .into_iter()
            .flat_map(|a| a.partners)
            .collect();
        out.insert(partner.to_owned());
        Ok(out)
    }
}

/// Alliances change rarely and every consent check needs one: they are kept for a second.
/// This replica's own changes take effect at once (`forget`); another replica's within the TTL.
/// Consents themselves are never cached.
type Entries = std::collections::HashMap<String, (std::time::Instant, Option<Alliance>)>;

#[derive(Clone, Default)]
pub(crate) struct AllianceCache {
    entries: std::sync::Arc<std::sync::Mutex<Entries>>,
}

impl AllianceCache {
    const TTL: std::time::Duration = std::time::Duration::from_secs(1);

    pub(crate) async fn get(
        &self,
        conn: &impl ConnectionTrait,
        id: &str,
    ) -> Result<Option<Alliance>, IdentityError> {
        let fresh = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|(at, _)| at.elapsed() < Self::TTL)
            .map(|(_, alliance)| alliance.clone());
        if let Some(alliance) = fresh {
            return Ok(alliance);
        }
        let alliance = Store::alliance(conn, id).await?;
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), (std::time::Instant::now(), alliance.clone()));
        Ok(alliance)
    }

    pub(crate) fn forget(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

fn to_domain(row: alliance::Model, members: &[alliance_partner::Model]) -> Alliance {
    Alliance {
        id: row.id,
        display_name: row.display_name,
        partners: members.iter().map(|m| m.partner_id.clone()).collect(),
        accepted: members
            .iter()
            .filter(|m| m.accepted)
            .map(|m| m.partner_id.clone())
            .collect(),
        purposes: row
            .purposes
            .split(',')
            .filter_map(|p| p.parse().ok())
            .filter_map(Purpose::from_number)
            .collect(),
        data_categories: serde_json::from_str(&row.data_categories).unwrap_or_default(),
        processing_method: row.processing_method,
        valid_from: row.valid_from,
        valid_until: row.valid_until,
        status: row.status.into(),
        terms_version: row.terms_version,
        accepted_methods: row
            .accepted_methods
            .split(',')
            .filter(|m| !m.is_empty())
            .filter_map(Method::parse)
            .collect(),
    }
}

fn methods_column(methods: &BTreeSet<Method>) -> String {
    methods
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn purposes_column(purposes: &BTreeSet<Purpose>) -> String {
    purposes
        .iter()
        .map(|p| (*p as i32).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

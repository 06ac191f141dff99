//! Partners.

use super::entities::StoredPartnerStatus;
use lianyu_kit::KitError;
use lianyu_kit::{page::Page, storage::StorageError};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::{Store, entities::partner};
use crate::domain::{IdentityError, partner::Partner};

impl Store {
    pub(crate) async fn insert_partner(
        txn: &impl ConnectionTrait,
        p: Partner,
    ) -> Result<Partner, IdentityError> {
        let active: partner::ActiveModel = partner::Model::from(p).into();
        match active.insert(txn).await {
            Ok(model) => Ok(model.into()),
            Err(e) => match StorageError::from(e) {
                StorageError::AlreadyExists => {
                    Err(KitError::Exists("PARTNER_EXISTS", "a partner with this id exists").into())
                }
                other => Err(other.into()),
            },
        }
    }

    pub(crate) async fn partner(
        conn: &impl ConnectionTrait,
        id: &str,
    ) -> Result<Option<Partner>, IdentityError> {
        Ok(partner::Entity::find_by_id(id.to_owned())
            .one(conn)
            .await
            .map_err(StorageError::from)?
            .map(Partner::from))
    }

    /// [`Self::partner`] read for a change: its row is held to the end of `txn` on PostgreSQL
    /// (SQLite's one writer runs changes one at a time), so that a suspension beside a rename
    /// both stand instead of the later one writing back the status it read.
    pub(crate) async fn partner_for_update(
        txn: &impl ConnectionTrait,
        id: &str,
    ) -> Result<Option<Partner>, IdentityError> {
        Ok(partner::Entity::find_by_id(id.to_owned())
            .lock_exclusive()
            .one(txn)
            .await
            .map_err(StorageError::from)?
            .map(Partner::from))
    }

    /// Ids of suspended partners, whose tokens every service refuses.
    pub(crate) async fn suspended_partners(
        conn: &impl ConnectionTrait,
    ) -> Result<Vec<String>, IdentityError> {
        Ok(partner::Entity::find()
            .filter(partner::Column::Status.eq(StoredPartnerStatus::Suspended))
            .all(conn)
            .await
            .map_err(StorageError::from)?
            .into_iter()
            .map(|p| p.id)
            .collect())
    }

    pub(crate) async fn save_partner(
        txn: &impl ConnectionTrait,
        p: Partner,
    ) -> Result<Partner, IdentityError> {
        Ok(
            sea_orm::IntoActiveModel::into_active_model(partner::Model::from(p))
                .reset_all()
                .update(txn)
                .await
                .map_err(StorageError::from)?
                .into(),
        )
    }

    /// One page of partners, by id; `only` limits it to the partners a caller may see.
    pub(crate) async fn list_partners(
        &self,
        only: Option<&[String]>,
        page: &Page,
    ) -> Result<Vec<Partner>, IdentityError> {
        let mut query = partner::Entity::find()
            .order_by_asc(partner::Column::Id)
            .limit(page.size + 1);
        if let Some(ids) = only {
            query = query.filter(partner::Column::Id.is_in(ids.iter().cloned()));
        }
        if let Some(after) = &page.after {
            query = query.filter(partner::Column::Id.gt(after.clone()));
        }
        Ok(query
            .all(&self.read)
            .await
            .map_err(StorageError::from)?
            .into_iter()
            .map(Partner::from)
            .collect())
    }
}

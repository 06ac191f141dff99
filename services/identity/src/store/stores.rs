//! A partner's stores. Every finder takes the owning partner: another partner's store is
//! simply not found.

use lianyu_kit::KitError;
use lianyu_kit::{page::Page, storage::StorageError};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter,
    QueryOrder, QuerySelect,
};

use super::{Store, entities::store};
use crate::domain::{IdentityError, partner::PartnerStore};

impl Store {
    pub(crate) async fn insert_store(
        txn: &impl ConnectionTrait,
        s: PartnerStore,
    ) -> Result<PartnerStore, IdentityError> {
        match store::Model::from(s).into_active_model().insert(txn).await {
            Ok(model) => Ok(model.into()),
            Err(e) => match StorageError::from(e) {
                StorageError::AlreadyExists => Err(KitError::Exists(
                    "STORE_EXISTS",
                    "the partner has a store with this id",
                )
                .into()),
                other => Err(other.into()),
            },
        }
    }

    pub(crate) async fn store(
        conn: &impl ConnectionTrait,
        partner: &str,
        id: &str,
    ) -> Result<Option<PartnerStore>, IdentityError> {
        Ok(
            store::Entity::find_by_id((partner.to_owned(), id.to_owned()))
                .one(conn)
                .await
                .map_err(StorageError::from)?
                .map(PartnerStore::from),
        )
    }

    /// [`Self::store`] read for a change: its row is held to the end of `txn` on PostgreSQL
    /// (SQLite's one writer runs changes one at a time), so that two field-masked updates at
    /// once — a close beside a rename — both stand instead of the later one writing back the
    /// row it read before the other committed.
    pub(crate) async fn store_for_update(
        txn: &impl ConnectionTrait,
        partner: &str,
        id: &str,
    ) -> Result<Option<PartnerStore>, IdentityError> {
        Ok(
            store::Entity::find_by_id((partner.to_owned(), id.to_owned()))
                .lock_exclusive()
                .one(txn)
                .await
                .map_err(StorageError::from)?
                .map(PartnerStore::from),
        )
    }

    pub(crate) async fn save_store(
        txn: &impl ConnectionTrait,
        s: PartnerStore,
    ) -> Result<PartnerStore, IdentityError> {
        Ok(store::Model::from(s)
            .into_active_model()
            .reset_all()
            .update(txn)
            .await
            .map_err(StorageError::from)?
            .into())
    }

    /// Every closed store, as "partners/{partner}/stores/{store}", sorted: the tokens narrowed
    /// to them are refused everywhere.
    pub(crate) async fn closed_stores(
        conn: &impl ConnectionTrait,
    ) -> Result<Vec<String>, IdentityError> {
        Ok(store::Entity::find()
            .filter(store::Column::Active.eq(false))
            .order_by_asc(store::Column::PartnerId)
            .order_by_asc(store::Column::Id)
            .all(conn)
            .await
            .map_err(StorageError::from)?
            .into_iter()
            .map(|s| format!("partners/{}/stores/{}", s.partner_id, s.id))
            .collect())
    }

    /// One page of `partner`'s stores, by id.
    pub(crate) async fn list_stores(
        &self,
        partner: &str,
        page: &Page,
    ) -> Result<Vec<PartnerStore>, IdentityError> {
        Ok(page
            .fetch(
                &self.read,
                store::Entity::find(),
                (store::Column::PartnerId, partner),
                store::Column::Id,
            )
            .await?
            .into_iter()
            .map(PartnerStore::from)
            .collect())
    }
}

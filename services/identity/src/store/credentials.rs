//! Credentials. Only keyed hashes of secrets are stored.

use lianyu_kit::{page::Page, storage::StorageError};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PaginatorTrait,
    QueryFilter, QuerySelect,
};

use super::{Store, entities::credential};
use crate::domain::{IdentityError, credential::Credential};

impl Store {
    pub(crate) async fn insert_credential(
        txn: &impl ConnectionTrait,
        c: Credential,
    ) -> Result<Credential, IdentityError> {
        Ok(credential::Model::from(c)
            .into_active_model()
            .insert(txn)
            .await
            .map_err(StorageError::from)?
            .into())
    }

    /// `partner`'s credential `id`, its row locked to the end of `txn` (PostgreSQL `FOR
    /// UPDATE`; SQLite's one writer serialises anyway), so two rotations cannot both hand out
    /// a secret of which only one is kept. Another partner's is not found.
    pub(crate) async fn credential_for_update(
        txn: &impl ConnectionTrait,
        partner: &str,
        id: &str,
    ) -> Result<Option<Credential>, IdentityError> {
        Ok(credential::Entity::find_by_id(id.to_owned())
            .filter(credential::Column::PartnerId.eq(partner))
            .lock_exclusive()
            .one(txn)
            .await
            .map_err(StorageError::from)?
            .map(Credential::from))
    }

    pub(crate) async fn credential_by_client_id(
        &self,
        client_id: &str,
    ) -> Result<Option<Credential>, IdentityError> {
        Ok(credential::Entity::find()
            .filter(credential::Column::ClientId.eq(client_id))
            .one(&self.read)
            .await
            .map_err(StorageError::from)?
            .map(Credential::from))
    }

    /// Holds `owner`'s credentials against a concurrent creation until `txn` ends (on
    /// PostgreSQL a transaction-scoped advisory lock on a digest of the owner; SQLite's one
    /// writer runs creations one at a time), so that two creations at once cannot both count
    /// room for one more and leave the owner past its limit.
    pub(crate) async fn lock_credentials_of(
        txn: &impl ConnectionTrait,
        owner: &str,
    ) -> Result<(), IdentityError> {
        if txn.get_database_backend() != sea_orm::DbBackend::Postgres {
            return Ok(());
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("credentials:{owner}").as_bytes());
        let mut key = [0u8; 8];
        key.copy_from_slice(&digest[..8]);
        txn.execute_raw(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [i64::from_be_bytes(key).into()],
        ))
        .await
        .map_err(StorageError::from)?;
        Ok(())
    }

    pub(crate) async fn active_credentials(
        conn: &impl ConnectionTrait,
        partner: &str,
    ) -> Result<u64, IdentityError> {
        Ok(credential::Entity::find()
            .filter(credential::Column::PartnerId.eq(partner))
            .filter(credential::Column::RevokedAt.is_null())
            .count(conn)
            .await
            .map_err(StorageError::from)?)
    }

    pub(crate) async fn save_credential(
        txn: &impl ConnectionTrait,
        c: Credential,
    ) -> Result<Credential, IdentityError> {
        Ok(credential::Model::from(c)
            .into_active_model()
            .reset_all()
            .update(txn)
            .await
            .map_err(StorageError::from)?
            .into())
    }

    /// Ids of the credentials revoked since `since` (milliseconds).
    pub(crate) async fn recently_revoked(&self, since: i64) -> Result<Vec<String>, IdentityError> {
        Ok(credential::Entity::find()
            .filter(credential::Column::RevokedAt.gt(since))
            .all(&self.read)
            .await
            .map_err(StorageError::from)?
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    /// One page of `partner`'s credentials, by id (ids are time-ordered).
    pub(crate) async fn list_credentials(
        &self,
        partner: &str,
        page: &Page,
    ) -> Result<Vec<Credential>, IdentityError> {
        Ok(page
            .fetch(
                &self.read,
                credential::Entity::find(),
                (credential::Column::PartnerId, partner),
                credential::Column::Id,
            )
            .await?
            .into_iter()
            .map(Credential::from)
            .collect())
    }
}

//! `request_id` idempotency (AIP-155): the first call's response is stored in the same
//! transaction as its effect; a replay with the same id and the same request gets the stored
//! response; the same id with a different request is ALREADY_EXISTS / REQUEST_ID_REUSED.

use prost::Message;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, DatabaseConnection, DatabaseTransaction, EntityTrait,
    TransactionTrait,
};
use sha2::{Digest, Sha256};

use crate::{
    error::KitError,
    storage::{StorageError, entities::idempotency_key, now_millis},
};

/// Longest accepted `request_id` (a UUID is 36).
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Who made a call and which call: ids are unique per partner and method.
#[derive(Clone, Copy, Debug)]
pub struct CallKey<'a> {
    pub partner_id: &'a str,
    pub method: &'a str,
    pub request_id: &'a str,
}

/// Runs `effect` in a transaction at most once per key, storing its response with it.
/// An empty `request_id` runs the effect without replay protection.
pub async fn once<Req, Resp, E, F>(
    db: &DatabaseConnection,
    key: CallKey<'_>,
    request: &Req,
    effect: F,
) -> Result<Resp, E>
where
    Req: Message,
    Resp: Message + Default,
    E: From<KitError>,
    F: AsyncFnOnce(&DatabaseTransaction) -> Result<Resp, E>,
{
    validate(key.request_id)?;
    let hash = Sha256::digest(request.encode_to_vec()).to_vec();
    if !key.request_id.is_empty()
        && let Some(stored) = replay(db, key, &hash).await?
    {
        return Ok(stored);
    }
    let txn = db.begin().await.map_err(kit)?;
    let response = effect(&txn).await?;
    if !key.request_id.is_empty() {
        let row = idempotency_key::ActiveModel {
            partner_id: Set(key.partner_id.to_owned()),
            method: Set(key.method.to_owned()),
            request_id: Set(key.request_id.to_owned()),
            request_hash: Set(hash.clone()),
            response: Set(response.encode_to_vec()),
            created_at: Set(now_millis()),
        };
        if let Err(err) = row.insert(&txn).await {
            return match StorageError::from(err) {
                // A concurrent call with the same id committed first: ours rolls back (the
                // transaction is dropped) and the caller gets what the first call stored.
                StorageError::AlreadyExists => {
                    drop(txn);
                    replay(db, key, &hash)
                        .await?
                        .ok_or_else(|| kit(StorageError::NotFound).into())
                }
                other => Err(KitError::from(other).into()),
            };
        }
    }
    txn.commit().await.map_err(kit)?;
    Ok(response)
}

fn validate(request_id: &str) -> Result<(), KitError> {
    if request_id.len() > MAX_REQUEST_ID_LEN {
        return Err(KitError::invalid(
            "request_id",
            format!("at most {MAX_REQUEST_ID_LEN} characters"),
        ));
    }
    if request_id
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(KitError::invalid(
            "request_id",
            "must not contain spaces or control characters",
        ));
    }
    Ok(())
}

async fn replay<Resp: Message + Default>(
    db: &DatabaseConnection,
    key: CallKey<'_>,
    hash: &[u8],
) -> Result<Option<Resp>, KitError> {
    let found = idempotency_key::Entity::find_by_id((
        key.partner_id.to_owned(),
        key.method.to_owned(),
        key.request_id.to_owned(),
    ))
    .one(db)
    .await
    .map_err(kit)?;
    match found {
        None => Ok(None),
        Some(row) if row.request_hash == hash => Resp::decode(row.response.as_slice())
            .map(Some)
            .map_err(|e| {
                StorageError::Other(format!("stored response does not decode: {e}")).into()
            }),
        Some(_) => Err(KitError::RequestIdReused),
    }
}

fn kit(err: impl Into<StorageError>) -> KitError {
    KitError::Storage(err.into())
}

//! Coupon drops and the claims against them. A drop's units are taken by one conditional
//! update each, so no interleaving of claims — on one replica or several — hands out more
//! than the drop's quantity.

use lianyu_kit::{KitError, page::Page};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    sea_query::{Expr, ExprTrait, OnConflict},
};

use super::{
    entities::{coupon_drop, drop_claim},
    storage,
};
use crate::domain::{CouponDrop, SaleWindow};

/// Stores a new drop.
pub(crate) async fn insert_drop(
    txn: &impl ConnectionTrait,
    d: &CouponDrop,
) -> Result<(), KitError> {
    coupon_drop::ActiveModel {
        id: Set(d.id.clone()),
        session_id: Set(d.session_id.clone()),
        benefit_id: Set(d.benefit_id.clone()),
        quantity: Set(d.quantity),
        remaining: Set(d.remaining),
        opens_at: Set(d.window.start),
        closes_at: Set(d.window.end),
    }
    .insert(txn)
    .await
    .map_err(storage)?;
    Ok(())
}

fn to_drop(r: coupon_drop::Model) -> CouponDrop {
    CouponDrop {
        id: r.id,
        session_id: r.session_id,
        benefit_id: r.benefit_id,
        quantity: r.quantity,
        remaining: r.remaining,
        window: SaleWindow {
            start: r.opens_at,
            end: r.closes_at,
        },
    }
}

/// A drop of `session`.
pub(crate) async fn coupon_drop(
    conn: &impl ConnectionTrait,
    session: &str,
    id: &str,
) -> Result<Option<CouponDrop>, KitError> {
    Ok(coupon_drop::Entity::find_by_id(id)
        .filter(coupon_drop::Column::SessionId.eq(session))
        .one(conn)
        .await
        .map_err(storage)?
        .map(to_drop))
}

/// Closes the drop `id` early, to `window` (closed at `window.end`), unless it had closed by
/// then: `false` when it had (another close came first, or the session's end).
pub(crate) async fn close_drop(
    txn: &impl ConnectionTrait,
    id: &str,
    window: SaleWindow,
) -> Result<bool, KitError> {
    let done = coupon_drop::Entity::update_many()
        .col_expr(coupon_drop::Column::OpensAt, Expr::value(window.start))
        .col_expr(coupon_drop::Column::ClosesAt, Expr::value(window.end))
        .filter(coupon_drop::Column::Id.eq(id))
        .filter(coupon_drop::Column::ClosesAt.gt(window.end))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(done.rows_affected == 1)
}

/// A page of the session's drops, oldest first.
pub(crate) async fn list_drops(
    conn: &impl ConnectionTrait,
    session: &str,
    page: &Page,
) -> Result<(Vec<CouponDrop>, String), KitError> {
    let rows = page
        .fetch(
            conn,
            coupon_drop::Entity::find(),
            (coupon_drop::Column::SessionId, session),
            coupon_drop::Column::Id,
        )
        .await?;
    let (rows, token) = page.finish(rows, |r| r.id.clone());
    Ok((rows.into_iter().map(to_drop).collect(), token))
}

/// The session's drops open at `now`, oldest first.
pub(crate) async fn open_drops(
    conn: &impl ConnectionTrait,
    session: &str,
    now: i64,
) -> Result<Vec<CouponDrop>, KitError> {
    Ok(coupon_drop::Entity::find()
        .filter(coupon_drop::Column::SessionId.eq(session))
        .filter(coupon_drop::Column::OpensAt.lte(now))
        .filter(coupon_drop::Column::ClosesAt.gt(now))
        .order_by_asc(coupon_drop::Column::Id)
        .all(conn)
        .await
        .map_err(storage)?
        .into_iter()
        .map(to_drop)
        .collect())
}

/// Closes every drop of a session that ends now.
pub(crate) async fn close_drops(
    txn: &impl ConnectionTrait,
    session: &str,
    now: i64,
) -> Result<(), KitError> {
    coupon_drop::Entity::update_many()
        .col_expr(coupon_drop::Column::ClosesAt, Expr::value(now))
        .filter(coupon_drop::Column::SessionId.eq(session))
        .filter(coupon_drop::Column::ClosesAt.gt(now))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// Takes one unit of a drop open at `now`; the units left after it, or `None` when none was
/// left or the drop was not open (closed early meanwhile: the caller reads it again to say
/// which).
pub(crate) async fn take_unit(
    txn: &impl ConnectionTrait,
    drop: &str,
    now: i64,
) -> Result<Option<i64>, KitError> {
    let done = coupon_drop::Entity::update_many()
        .col_expr(
            coupon_drop::Column::Remaining,
            Expr::col(coupon_drop::Column::Remaining).sub(1),
        )
        .filter(coupon_drop::Column::Id.eq(drop))
        .filter(coupon_drop::Column::Remaining.gt(0))
        .filter(coupon_drop::Column::OpensAt.lte(now))
        .filter(coupon_drop::Column::ClosesAt.gt(now))
        .exec(txn)
        .await
        .map_err(storage)?;
    if done.rows_affected != 1 {
        return Ok(None);
    }
    Ok(coupon_drop::Entity::find_by_id(drop)
        .one(txn)
        .await
        .map_err(storage)?
        .map(|r| r.remaining))
}

/// A claim as stored: what was asked (its fingerprint) and, once entitlements granted it, the
/// wallet item's id.
#[derive(Clone, Debug)]
pub(crate) struct Claim {
    pub(crate) fingerprint: String,
    pub(crate) wallet_item_id: Option<String>,
}

/// The claims `partner` made on a drop with any of `request_ids`, by request id.
pub(crate) async fn claims(
    conn: &impl ConnectionTrait,
    drop: &str,
    partner: &str,
    request_ids: Vec<String>,
) -> Result<std::collections::HashMap<String, Claim>, KitError> {
    Ok(drop_claim::Entity::find()
        .filter(drop_claim::Column::DropId.eq(drop))
        .filter(drop_claim::Column::PartnerId.eq(partner))
        .filter(drop_claim::Column::RequestId.is_in(request_ids))
        .all(conn)
        .await
        .map_err(storage)?
        .into_iter()
        .map(|r| {
            (
                r.request_id,
                Claim {
                    fingerprint: r.fingerprint,
                    wallet_item_id: r.wallet_item_id,
                },
            )
        })
        .collect())
}

/// Records a pending claim; false when the same key is already recorded (a concurrent retry).
pub(crate) async fn insert_claim(
    txn: &impl ConnectionTrait,
    drop: &CouponDrop,
    partner: &str,
    request_id: &str,
    fingerprint: &str,
    at: i64,
) -> Result<bool, KitError> {
    let n = drop_claim::Entity::insert(drop_claim::ActiveModel {
        drop_id: Set(drop.id.clone()),
        partner_id: Set(partner.to_owned()),
        request_id: Set(request_id.to_owned()),
        session_id: Set(drop.session_id.clone()),
        fingerprint: Set(fingerprint.to_owned()),
        wallet_item_id: Set(None),
        created_at: Set(at),
    })
    .on_conflict(
        OnConflict::columns([
            drop_claim::Column::DropId,
            drop_claim::Column::PartnerId,
            drop_claim::Column::RequestId,
        ])
        .do_nothing()
        .to_owned(),
    )
    .exec_without_returning(txn)
    .await
    .map_err(storage)?;
    Ok(n == 1)
}

/// Marks a claim granted with its wallet item.
pub(crate) async fn finish_claim(
    conn: &impl ConnectionTrait,
    drop: &str,
    partner: &str,
    request_id: &str,
    wallet_item_id: &str,
) -> Result<(), KitError> {
    drop_claim::Entity::update_many()
        .col_expr(
            drop_claim::Column::WalletItemId,
            Expr::value(Some(wallet_item_id.to_owned())),
        )
        .filter(drop_claim::Column::DropId.eq(drop))
        .filter(drop_claim::Column::PartnerId.eq(partner))
        .filter(drop_claim::Column::RequestId.eq(request_id))
        .exec(conn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// Forgets a pending claim that entitlements refused and puts its unit back.
pub(crate) async fn release_claim(
    txn: &impl ConnectionTrait,
    drop: &str,
    partner: &str,
    request_id: &str,
) -> Result<(), KitError> {
    let gone = drop_claim::Entity::delete_many()
        .filter(drop_claim::Column::DropId.eq(drop))
        .filter(drop_claim::Column::PartnerId.eq(partner))
        .filter(drop_claim::Column::RequestId.eq(request_id))
        .filter(drop_claim::Column::WalletItemId.is_null())
        .exec(txn)
        .await
        .map_err(storage)?;
    if gone.rows_affected == 1 {
        coupon_drop::Entity::update_many()
            .col_expr(
                coupon_drop::Column::Remaining,
                Expr::col(coupon_drop::Column::Remaining).add(1),
            )
            .filter(coupon_drop::Column::Id.eq(drop))
            .exec(txn)
            .await
            .map_err(storage)?;
    }
    Ok(())
}

/// Units of the session's drops granted so far.
pub(crate) async fn claimed(conn: &impl ConnectionTrait, session: &str) -> Result<i64, KitError> {
    let n = drop_claim::Entity::find()
        .filter(drop_claim::Column::SessionId.eq(session))
        .filter(drop_claim::Column::WalletItemId.is_not_null())
        .count(conn)
        .await
        .map_err(storage)?;
    Ok(i64::try_from(n).unwrap_or(i64::MAX))
}

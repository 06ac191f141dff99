//! Products, pins, flash sales and orders. Stock and per-member limits change only by
//! conditional updates, so no interleaving of buyers — on one replica or several sharing a
//! PostgreSQL — takes stock below zero or a member past the limit.

use lianyu_kit::{KitError, ids::PartnerId, money::Money, page::Page, writes::Writes};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder,
    sea_query::{Expr, ExprTrait, OnConflict},
};

use super::{
    entities::{flash_sale, order, pin_marker, product, sale_buyer},
    storage,
};
use crate::domain::{FlashSale, Order, OrderState, Product, SaleWindow};

/// A stored amount; only checked amounts are ever stored, so one that is not is corruption.
fn money(currency: &str, minor_units: i64) -> Result<Money, KitError> {
    Money::new(currency, minor_units)
        .map_err(|e| KitError::Internal(format!("a stored amount is not valid: {e}")))
}

/// Stores a product; false when the seller's SKU is already on the session.
pub(crate) async fn insert_product(
    txn: &impl ConnectionTrait,
    p: &Product,
) -> Result<bool, KitError> {
    let taken = product::Entity::find()
        .filter(product::Column::SessionId.eq(p.session_id.clone()))
        .filter(product::Column::SellerId.eq(p.seller.to_string()))
        .filter(product::Column::Sku.eq(p.sku.clone()))
        .one(txn)
        .await
        .map_err(storage)?;
    if taken.is_some() {
        return Ok(false);
    }
    product::ActiveModel {
        id: Set(p.id.clone()),
        session_id: Set(p.session_id.clone()),
        sku: Set(p.sku.clone()),
        title: Set(p.title.clone()),
        currency: Set(p.price.currency().to_owned()),
        price: Set(p.price.minor_units()),
        seller_id: Set(p.seller.to_string()),
        category: Set(p.category.clone()),
        pinned: Set(false),
    }
    .insert(txn)
    .await
    .map_err(storage)?;
    Ok(true)
}

fn to_product(r: product::Model) -> Result<(Product, bool), KitError> {
    Ok((
        Product {
            id: r.id,
            session_id: r.session_id,
            sku: r.sku,
            title: r.title,
            price: money(&r.currency, r.price)?,
            seller: PartnerId::new(r.seller_id),
            category: r.category,
        },
        r.pinned,
    ))
}

/// A product of `session` with whether it is pinned.
pub(crate) async fn product(
    conn: &impl ConnectionTrait,
    session: &str,
    id: &str,
) -> Result<Option<(Product, bool)>, KitError> {
    product::Entity::find_by_id(id)
        .filter(product::Column::SessionId.eq(session))
        .one(conn)
        .await
        .map_err(storage)?
        .map(to_product)
        .transpose()
}

/// A session's products in the order they were added.
pub(crate) async fn list_products(
    conn: &impl ConnectionTrait,
    session: &str,
    page: &Page,
) -> Result<(Vec<(Product, bool)>, String), KitError> {
    let rows = page
        .fetch(
            conn,
            product::Entity::find(),
            (product::Column::SessionId, session),
            product::Column::Id,
        )
        .await?;
    let (rows, token) = page.finish(rows, |r| r.id.clone());
    Ok((
        rows.into_iter().map(to_product).collect::<Result<_, _>>()?,
        token,
    ))
}

/// The product on screen now, if any.
pub(crate) async fn pinned_product(
    conn: &impl ConnectionTrait,
    session: &str,
) -> Result<Option<Product>, KitError> {
    product::Entity::find()
        .filter(product::Column::SessionId.eq(session))
        .filter(product::Column::Pinned.eq(true))
        .one(conn)
        .await
        .map_err(storage)?
        .map(|r| to_product(r).map(|(p, _)| p))
        .transpose()
}

/// Pins `product` (unpinning any other) and keeps the marker at `offset` into the stream; or
/// unpins it.
pub(crate) async fn pin(
    txn: &impl ConnectionTrait,
    session: &str,
    product_id: &str,
    pinned: bool,
    at: i64,
    offset: i64,
) -> Result<(), KitError> {
    if pinned {
        product::Entity::update_many()
            .col_expr(product::Column::Pinned, Expr::value(false))
            .filter(product::Column::SessionId.eq(session))
            .exec(txn)
            .await
            .map_err(storage)?;
        pin_marker::ActiveModel {
            id: Set(uuid::Uuid::now_v7().simple().to_string()),
            session_id: Set(session.to_owned()),
            product_id: Set(product_id.to_owned()),
            pinned_at: Set(at),
            offset_millis: Set(offset),
        }
        .insert(txn)
        .await
        .map_err(storage)?;
    }
    product::Entity::update_many()
        .col_expr(product::Column::Pinned, Expr::value(pinned))
        .filter(product::Column::Id.eq(product_id))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// A pin marker: the product id, when, and the offset into the stream.
pub(crate) struct Marker {
    pub(crate) product_id: String,
    pub(crate) at: i64,
    pub(crate) offset: i64,
}

/// A session's pins in stream order.
pub(crate) async fn list_markers(
    conn: &impl ConnectionTrait,
    session: &str,
    page: &Page,
) -> Result<(Vec<Marker>, String), KitError> {
    let rows = page
        .fetch(
            conn,
            pin_marker::Entity::find(),
            (pin_marker::Column::SessionId, session),
            pin_marker::Column::Id,
        )
        .await?;
    let (rows, token) = page.finish(rows, |r| r.id.clone());
    Ok((
        rows.into_iter()
            .map(|r| Marker {
                product_id: r.product_id,
                at: r.pinned_at,
                offset: r.offset_millis,
            })
            .collect(),
        token,
    ))
}

/// Stores a new flash sale.
pub(crate) async fn insert_sale(txn: &impl ConnectionTrait, s: &FlashSale) -> Result<(), KitError> {
    flash_sale::ActiveModel {
        id: Set(s.id.clone()),
        session_id: Set(s.session_id.clone()),
        product_id: Set(s.product_id.clone()),
        currency: Set(s.price.currency().to_owned()),
        price: Set(s.price.minor_units()),
        total_stock: Set(s.total_stock),
        remaining: Set(s.remaining_stock),
        per_member_limit: Set(s.per_member_limit),
        starts_at: Set(s.window.start),
        ends_at: Set(s.window.end),
    }
    .insert(txn)
    .await
    .map_err(storage)?;
    Ok(())
}

fn to_sale(r: flash_sale::Model) -> Result<FlashSale, KitError> {
    Ok(FlashSale {
        id: r.id,
        session_id: r.session_id,
        product_id: r.product_id,
        price: money(&r.currency, r.price)?,
        total_stock: r.total_stock,
        remaining_stock: r.remaining,
        per_member_limit: r.per_member_limit,
        window: SaleWindow {
            start: r.starts_at,
            end: r.ends_at,
        },
    })
}

/// A flash sale of `session`.
pub(crate) async fn sale(
    conn: &impl ConnectionTrait,
    session: &str,
    id: &str,
) -> Result<Option<FlashSale>, KitError> {
    flash_sale::Entity::find_by_id(id)
        .filter(flash_sale::Column::SessionId.eq(session))
        .one(conn)
        .await
        .map_err(storage)?
        .map(to_sale)
        .transpose()
}

/// Ends the flash sale `id` early, to `window` (ended at `window.end`), unless it had closed
/// by then: `false` when it had (another end came first, or the session's).
pub(crate) async fn end_sale(
    txn: &impl ConnectionTrait,
    id: &str,
    window: SaleWindow,
) -> Result<bool, KitError> {
    let done = flash_sale::Entity::update_many()
        .col_expr(flash_sale::Column::StartsAt, Expr::value(window.start))
        .col_expr(flash_sale::Column::EndsAt, Expr::value(window.end))
        .filter(flash_sale::Column::Id.eq(id))
        .filter(flash_sale::Column::EndsAt.gt(window.end))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(done.rows_affected == 1)
}

/// A page of the session's flash sales, oldest first.
pub(crate) async fn list_sales(
    conn: &impl ConnectionTrait,
    session: &str,
    page: &Page,
) -> Result<(Vec<FlashSale>, String), KitError> {
    let rows = page
        .fetch(
            conn,
            flash_sale::Entity::find(),
            (flash_sale::Column::SessionId, session),
            flash_sale::Column::Id,
        )
        .await?;
    let (rows, token) = page.finish(rows, |r| r.id.clone());
    Ok((
        rows.into_iter().map(to_sale).collect::<Result<_, _>>()?,
        token,
    ))
}

/// The session's flash sales open at `now`, oldest first.
pub(crate) async fn open_sales(
    conn: &impl ConnectionTrait,
    session: &str,
    now: i64,
) -> Result<Vec<FlashSale>, KitError> {
    flash_sale::Entity::find()
        .filter(flash_sale::Column::SessionId.eq(session))
        .filter(flash_sale::Column::StartsAt.lte(now))
        .filter(flash_sale::Column::EndsAt.gt(now))
        .order_by_asc(flash_sale::Column::Id)
        .all(conn)
        .await
        .map_err(storage)?
        .into_iter()
        .map(to_sale)
        .collect()
}

/// Ends every flash sale of a session that ends now (so none stays open after it).
pub(crate) async fn close_sales(
    txn: &impl ConnectionTrait,
    session: &str,
    now: i64,
) -> Result<(), KitError> {
    flash_sale::Entity::update_many()
        .col_expr(flash_sale::Column::EndsAt, Expr::value(now))
        .filter(flash_sale::Column::SessionId.eq(session))
        .filter(flash_sale::Column::EndsAt.gt(now))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// Takes `quantity` units of `sale` (of `session`) if it is open at `now`: one conditional
/// update that returns what is left, so the stock never goes below zero and no unit is sold
/// outside the sale's window. A session that ends closes its sales in the same transaction
/// ([`close_sales`]), so the window also stops an order whose session ended after it was read.
/// The conditions are on the sale's own row only: under PostgreSQL's READ COMMITTED an update
/// that waited for a concurrent one re-checks them on the row's new version, which it does not
/// do reliably for a subquery (a check of the session's state here made a flash sale on two
/// instances undersell). `None` when nothing was taken: too few units left, or the sale not
/// open — [`sale`] tells which.
pub(crate) async fn take_stock(
    txn: &impl ConnectionTrait,
    session: &str,
    sale: &str,
    quantity: i32,
    now: i64,
) -> Result<Option<i64>, KitError> {
    let taken = stock_take(session, sale, quantity, now)
        .exec_with_returning(txn)
        .await
        .map_err(storage)?;
    Ok(taken.first().map(|r| r.remaining))
}

/// The update [`take_stock`] makes.
fn stock_take(
    session: &str,
    sale: &str,
    quantity: i32,
    now: i64,
) -> sea_orm::UpdateMany<flash_sale::Entity> {
    let q = i64::from(quantity);
    flash_sale::Entity::update_many()
        .col_expr(
            flash_sale::Column::Remaining,
            Expr::col(flash_sale::Column::Remaining).sub(q),
        )
        .filter(flash_sale::Column::Id.eq(sale))
        .filter(flash_sale::Column::SessionId.eq(session))
        .filter(flash_sale::Column::Remaining.gte(q))
        .filter(flash_sale::Column::StartsAt.lte(now))
        .filter(flash_sale::Column::EndsAt.gt(now))
}

/// Counts `quantity` more units against the member's limit in a sale: one upsert whose update
/// only happens within the limit, so concurrent orders of one member never pass it. False
/// when it would.
pub(crate) async fn count_against_limit(
    txn: &impl ConnectionTrait,
    sale: &str,
    member: &str,
    quantity: i32,
    limit: i32,
) -> Result<bool, KitError> {
    if quantity > limit {
        return Ok(false);
    }
    let inserted = limit_count(sale, member, quantity, limit)
        .exec_without_returning(txn)
        .await
        .map_err(storage)?;
    Ok(inserted == 1)
}

/// The upsert [`count_against_limit`] makes.
fn limit_count(
    sale: &str,
    member: &str,
    quantity: i32,
    limit: i32,
) -> sea_orm::Insert<sale_buyer::ActiveModel> {
    sale_buyer::Entity::insert(sale_buyer::ActiveModel {
        flash_sale_id: Set(sale.to_owned()),
        member_id: Set(member.to_owned()),
        bought: Set(quantity),
    })
    .on_conflict(
        OnConflict::columns([
            sale_buyer::Column::FlashSaleId,
            sale_buyer::Column::MemberId,
        ])
        .value(
            sale_buyer::Column::Bought,
            Expr::col((sale_buyer::Entity, sale_buyer::Column::Bought)).add(quantity),
        )
        .action_and_where(
            Expr::col((sale_buyer::Entity, sale_buyer::Column::Bought))
                .add(quantity)
                .lte(limit),
        )
        .to_owned(),
    )
}

/// What [`take_for_member`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// Counted against the member's limit and taken from the stock: what is left.
    Taken(i64),
    /// The member's limit would be passed: nothing written.
    OverLimit,
    /// Counted against the limit but not taken from the stock ([`take_stock`]'s `None`): the
    /// caller refuses the order, and its transaction (or savepoint) undoes the count.
    NotTaken,
}

/// [`count_against_limit`], then [`take_stock`] only if it counted. On SQLite both go to the
/// single writer in one trip: the take is conditioned on the count having written its row
/// (`changes()`, which a `SELECT` between them leaves as the upsert set it) — in a flash
/// sale's burst every buyer's transaction queues on that writer, and each trip is a hand-off
/// to its thread and back. Elsewhere they are two statements.
pub(crate) async fn take_for_member(
    txn: &impl ConnectionTrait,
    (session, sale): (&str, &str),
    member: &str,
    (quantity, limit): (i32, i32),
    now: i64,
) -> Result<Take, KitError> {
    use sea_orm::{QueryTrait, Statement};
    if quantity > limit {
        return Ok(Take::OverLimit);
    }
    if txn.get_database_backend() != DbBackend::Sqlite {
        if !count_against_limit(txn, sale, member, quantity, limit).await? {
            return Ok(Take::OverLimit);
        }
        return Ok(take_stock(txn, session, sale, quantity, now)
            .await?
            .map_or(Take::NotTaken, Take::Taken));
    }
    let count = limit_count(sale, member, quantity, limit).build(DbBackend::Sqlite);
    let take = DbBackend::Sqlite.build(
        stock_take(session, sale, quantity, now)
            .filter(Expr::cust("changes() = 1"))
            .into_query()
            .returning_col(flash_sale::Column::Remaining),
    );
    let mut values = count.values.map(|v| v.0).unwrap_or_default();
    values.extend(take.values.map(|v| v.0).unwrap_or_default());
    let rows = txn
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            format!("{}; SELECT changes(); {}", count.sql, take.sql),
            values,
        ))
        .await
        .map_err(storage)?;
    let counted = rows
        .first()
        .map(|r| r.try_get_by_index::<i64>(0))
        .transpose()
        .map_err(storage)?
        .ok_or_else(|| KitError::Internal("the member's count returned no row".into()))?;
    if counted != 1 {
        return Ok(Take::OverLimit);
    }
    Ok(match rows.get(1) {
        Some(left) => Take::Taken(left.try_get_by_index::<i64>(0).map_err(storage)?),
        None => Take::NotTaken,
    })
}

/// Gives a cancelled order's units back: to the sale's stock and the member's limit.
pub(crate) async fn restock(
    txn: &impl ConnectionTrait,
    sale: &str,
    member: Option<&str>,
    quantity: i32,
) -> Result<(), KitError> {
    flash_sale::Entity::update_many()
        .col_expr(
            flash_sale::Column::Remaining,
            Expr::col(flash_sale::Column::Remaining).add(i64::from(quantity)),
        )
        .filter(flash_sale::Column::Id.eq(sale))
        .exec(txn)
        .await
        .map_err(storage)?;
    if let Some(member) = member {
        sale_buyer::Entity::update_many()
            .col_expr(
                sale_buyer::Column::Bought,
                Expr::col(sale_buyer::Column::Bought).sub(quantity),
            )
            .filter(sale_buyer::Column::FlashSaleId.eq(sale))
            .filter(sale_buyer::Column::MemberId.eq(member))
            .exec(txn)
            .await
            .map_err(storage)?;
    }
    Ok(())
}

/// Stores a placed order.
/// Stages an order's insert with the mutation's last writes (it goes with the stored reply in
/// one trip).
pub(crate) fn stage_order(writes: &mut Writes, backend: DbBackend, o: &Order) {
    let row = order::ActiveModel {
        id: Set(o.id.clone()),
        session_id: Set(o.session_id.clone()),
        member_id: Set(o.member.clone()),
        pseudonym: Set(o.pseudonym.clone()),
        placed_by: Set(o.placed_by.to_string()),
        product_id: Set(o.product_id.clone()),
        flash_sale_id: Set(o.flash_sale_id.clone()),
        quantity: Set(o.quantity),
        currency: Set(o.amount.currency().to_owned()),
        amount: Set(o.amount.minor_units()),
        seller_id: Set(o.seller.to_string()),
        store: Set(o.store.clone()),
        guide: Set(o.guide.clone()),
        share_code: Set(o.share_code.clone()),
        payment_reference: Set(o.payment_reference.clone()),
        cancelled: Set(false),
        created_at: Set(o.created_at),
    };
    writes.add(backend, &order::Entity::insert(row));
}

fn to_order(r: order::Model) -> Result<Order, KitError> {
    Ok(Order {
        id: r.id,
        session_id: r.session_id,
        member: r.member_id,
        pseudonym: r.pseudonym,
        placed_by: PartnerId::new(r.placed_by),
        product_id: r.product_id,
        flash_sale_id: r.flash_sale_id,
        quantity: r.quantity,
        amount: money(&r.currency, r.amount)?,
        seller: PartnerId::new(r.seller_id),
        store: r.store,
        guide: r.guide,
        share_code: r.share_code,
        payment_reference: r.payment_reference,
        state: if r.cancelled {
            OrderState::Cancelled
        } else {
            OrderState::Placed
        },
        created_at: r.created_at,
    })
}

/// An order of `session`.
pub(crate) async fn order(
    conn: &impl ConnectionTrait,
    session: &str,
    id: &str,
) -> Result<Option<Order>, KitError> {
    order::Entity::find_by_id(id)
        .filter(order::Column::SessionId.eq(session))
        .one(conn)
        .await
        .map_err(storage)?
        .map(to_order)
        .transpose()
}

/// Marks a placed order cancelled; false when it already was (a concurrent cancel won).
pub(crate) async fn cancel_order(txn: &impl ConnectionTrait, id: &str) -> Result<bool, KitError> {
    let done = order::Entity::update_many()
        .col_expr(order::Column::Cancelled, Expr::value(true))
        .filter(order::Column::Id.eq(id))
        .filter(order::Column::Cancelled.eq(false))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(done.rows_affected == 1)
}

/// Whose orders a reader sees.
pub(crate) enum OrderScope<'a> {
    /// A co-host: every order of the session.
    All,
    /// A co-host's store token: the orders credited to that store.
    Store(&'a str),
    /// Anyone else: the orders it placed.
    PlacedBy(&'a str),
    /// Another partner's store token: the orders its partner placed that are credited to
    /// that store.
    PlacedByAt(&'a str, &'a str),
}

impl OrderScope<'_> {
    /// Whether a reader with this scope sees `order` (of a session it may see).
    pub(crate) fn admits(&self, order: &Order) -> bool {
        match *self {
            OrderScope::All => true,
            OrderScope::Store(s) => order.store == s,
            OrderScope::PlacedBy(p) => order.placed_by.as_str() == p,
            OrderScope::PlacedByAt(p, s) => order.placed_by.as_str() == p && order.store == s,
        }
    }
}

/// A session's orders in `scope`, oldest first.
pub(crate) async fn list_orders(
    conn: &impl ConnectionTrait,
    session: &str,
    scope: OrderScope<'_>,
    page: &Page,
) -> Result<(Vec<Order>, String), KitError> {
    let mut query = order::Entity::find();
    match scope {
        OrderScope::All => {}
        OrderScope::Store(s) => query = query.filter(order::Column::Store.eq(s)),
        OrderScope::PlacedBy(p) => query = query.filter(order::Column::PlacedBy.eq(p)),
        OrderScope::PlacedByAt(p, s) => {
            query = query
                .filter(order::Column::PlacedBy.eq(p))
                .filter(order::Column::Store.eq(s));
        }
    }
    let rows = page
        .fetch(
            conn,
            query,
            (order::Column::SessionId, session),
            order::Column::Id,
        )
        .await?;
    let (rows, token) = page.finish(rows, |r| r.id.clone());
    Ok((
        rows.into_iter().map(to_order).collect::<Result<_, _>>()?,
        token,
    ))
}

/// Every placed order of a session (for its figures).
pub(crate) async fn placed_orders(
    conn: &impl ConnectionTrait,
    session: &str,
) -> Result<Vec<Order>, KitError> {
    order::Entity::find()
        .filter(order::Column::SessionId.eq(session))
        .filter(order::Column::Cancelled.eq(false))
        .all(conn)
        .await
        .map_err(storage)?
        .into_iter()
        .map(to_order)
        .collect()
}

/// Forgets who bought, in the orders `partner` placed for `member`, after the member was
/// erased there: each order keeps only a pseudonym of its own ([`Session::erased_pseudonym`])
/// from then on, which co-hosts see. Returns how many orders.
pub(crate) async fn forget_buyer(
    txn: &impl ConnectionTrait,
    member: &str,
    partner: &str,
) -> Result<u64, KitError> {
    let placed = order::Entity::find()
        .filter(order::Column::MemberId.eq(member))
        .filter(order::Column::PlacedBy.eq(partner))
        .all(txn)
        .await
        .map_err(storage)?;
    let sessions = super::load_sessions(txn, placed.iter().map(|o| o.session_id.as_str())).await?;
    for o in &placed {
        let pseudonym = sessions
            .get(&o.session_id)
            .map(|s| s.erased_pseudonym(&o.id))
            .unwrap_or_default();
        order::Entity::update_many()
            .col_expr(order::Column::MemberId, Expr::value(Option::<String>::None))
            .col_expr(order::Column::Pseudonym, Expr::value(pseudonym))
            .filter(order::Column::Id.eq(o.id.as_str()))
            .exec(txn)
            .await
            .map_err(storage)?;
    }
    Ok(placed.len() as u64)
}

#[cfg(test)]
mod tests {
    use sea_orm::{ActiveModelTrait, ActiveValue::Set, DatabaseConnection};

    use super::*;
    use crate::store::test_database as database;

    const NOW: i64 = 1_800_000_000_000;

    /// A sale "{session}-sale" of `stock` units in `session`, open from NOW - 1 s to `ends_at`.
    async fn sale_in(db: &DatabaseConnection, session: &str, stock: i64, ends_at: i64) {
        flash_sale::ActiveModel {
            id: Set(format!("{session}-sale")),
            session_id: Set(session.into()),
            product_id: Set("p".into()),
            currency: Set("CNY".into()),
            price: Set(9_900),
            total_stock: Set(stock),
            remaining: Set(stock),
            per_member_limit: Set(1),
            starts_at: Set(NOW - 1_000),
            ends_at: Set(ends_at),
        }
        .insert(db)
        .await
        .unwrap();
    }

    async fn remaining(db: &impl ConnectionTrait, sale: &str) -> i64 {
        flash_sale::Entity::find_by_id(sale)
            .one(db)
            .await
            .unwrap()
            .unwrap()
            .remaining
    }

    /// A member's order counts against their limit and takes stock together, or not at all
    /// (on SQLite in one trip to the writer): over the limit nothing is written; a take that
    /// finds too little stock, or the sale closed, says so and — its transaction rolled
    /// back — leaves both the stock and the member's count as they were.
    #[tokio::test]
    async fn a_members_order_counts_against_the_limit_and_takes_stock_together_or_not_at_all() {
        use sea_orm::TransactionTrait;
        let (_database, db) = database("live_take_for_member").await;
        sale_in(&db, "live", 3, NOW + 3_600_000).await;
        let bought = |member: &'static str| {
            let db = db.clone();
            async move {
                sale_buyer::Entity::find()
                    .filter(sale_buyer::Column::MemberId.eq(member))
                    .one(&db)
                    .await
                    .unwrap()
                    .map_or(0, |b| b.bought)
            }
        };
        // Each take in a transaction of its own, kept only when it took stock (as an order's).
        let take = |member: &'static str, quantity: i32, limit: i32, at: i64| {
            let db = db.clone();
            async move {
                let before = remaining(&db, "live-sale").await;
                let txn = db.begin().await.unwrap();
                let took =
                    take_for_member(&txn, ("live", "live-sale"), member, (quantity, limit), at)
                        .await
                        .unwrap();
                if matches!(took, Take::Taken(_)) {
                    txn.commit().await.unwrap();
                } else {
                    // Over the limit the take was not even tried: the stock, read in the
                    // transaction, is as it was before it.
                    let left = remaining(&txn, "live-sale").await;
                    assert!(
                        took != Take::OverLimit || left == before,
                        "{took:?}: {left}"
                    );
                    txn.rollback().await.unwrap();
                }
                took
            }
        };
        assert_eq!(take("ana", 1, 2, NOW).await, Take::Taken(2));
        assert_eq!(take("ana", 2, 2, NOW).await, Take::OverLimit, "1 + 2 > 2");
        assert_eq!(
            take("ana", 3, 2, NOW).await,
            Take::OverLimit,
            "more than the limit"
        );
        assert_eq!(
            (remaining(&db, "live-sale").await, bought("ana").await),
            (2, 1)
        );
        assert_eq!(take("ana", 1, 2, NOW).await, Take::Taken(1));
        assert_eq!(take("bo", 2, 2, NOW).await, Take::NotTaken, "one left");
        assert_eq!(
            take("bo", 1, 2, NOW + 7_200_000).await,
            Take::NotTaken,
            "closed"
        );
        assert_eq!(
            (remaining(&db, "live-sale").await, bought("bo").await),
            (1, 0)
        );
        assert_eq!(take("bo", 1, 2, NOW).await, Take::Taken(0));
        assert_eq!(take("cy", 1, 2, NOW).await, Take::NotTaken, "sold out");
        assert_eq!(
            (
                remaining(&db, "live-sale").await,
                bought("bo").await,
                bought("cy").await
            ),
            (0, 1, 0)
        );
    }

    /// The stock is taken only from an open sale, named with its own session: whatever an
    /// order read before its transaction, a sale its session's end closed, or one not open at
    /// the order's time, sells nothing, and a refused take leaves the stock as it was.
    #[tokio::test]
    async fn stock_is_taken_only_within_the_sales_window_and_never_below_zero() {
        let (_database, db) = database("live_take_stock_window").await;
        let far = NOW + 3_600_000;
        sale_in(&db, "live", 2, far).await;
        sale_in(&db, "ended", 2, far).await;

        let take = |session: &'static str, sale: &'static str, quantity: i32, at: i64| {
            let db = db.clone();
            async move { take_stock(&db, session, sale, quantity, at).await.unwrap() }
        };
        assert_eq!(take("live", "live-sale", 1, NOW).await, Some(1));
        assert_eq!(
            take("ended", "live-sale", 1, NOW).await,
            None,
            "another session's"
        );
        assert_eq!(
            take("live", "live-sale", 1, NOW - 2_000).await,
            None,
            "not yet open"
        );
        assert_eq!(take("live", "live-sale", 2, NOW).await, None, "one left");
        assert_eq!(remaining(&db, "live-sale").await, 1);
        assert_eq!(take("live", "live-sale", 1, NOW).await, Some(0));
        assert_eq!(take("live", "live-sale", 1, NOW).await, None, "sold out");
        assert_eq!(remaining(&db, "live-sale").await, 0);

        // The session ends at NOW - 10 ms: its sale closes then, and sells nothing after.
        close_sales(&db, "ended", NOW - 10).await.unwrap();
        assert_eq!(take("ended", "ended-sale", 1, NOW).await, None);
        assert_eq!(take("ended", "ended-sale", 1, NOW - 10).await, None);
        assert_eq!(
            remaining(&db, "ended-sale").await,
            2,
            "an ended session sells nothing"
        );
    }
}

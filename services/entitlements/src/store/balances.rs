//! Members' points and stored-value accounts and their pending points. Every change of a
//! balance is one conditional update, so concurrent callers (threads, replicas on one
//! PostgreSQL) never take it below zero nor release one lot twice.

use std::collections::BTreeMap;

use lianyu_kit::KitError;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, sea_query::Expr, sea_query::ExprTrait, sea_query::OnConflict,
};

use super::{
    entities::{LotState, balance, balance_spend, point_lot, posting},
    storage,
};

pub(crate) type AccountRow = balance::Model;
pub(crate) type LotRow = point_lot::Model;
pub(crate) type SpendRow = balance_spend::Model;

/// Records a spend.
pub(crate) async fn insert_spend(
    txn: &impl ConnectionTrait,
    row: &SpendRow,
) -> Result<(), KitError> {
    balance_spend::ActiveModel::from(row.clone())
        .insert(txn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// The spend of ledger transaction `id` taken by `partner`.
pub(crate) async fn spend(
    conn: &impl ConnectionTrait,
    id: &str,
    partner: &str,
) -> Result<Option<SpendRow>, KitError> {
    Ok(balance_spend::Entity::find_by_id(id.to_owned())
        .one(conn)
        .await
        .map_err(storage)?
        .filter(|s| s.partner_id == partner))
}

/// Marks a spend refunded; false when it already was (one conditional update: once).
pub(crate) async fn refund_spend(txn: &impl ConnectionTrait, id: &str) -> Result<bool, KitError> {
    let done = balance_spend::Entity::update_many()
        .col_expr(balance_spend::Column::Refunded, Expr::value(true))
        .filter(balance_spend::Column::TransactionId.eq(id))
        .filter(balance_spend::Column::Refunded.eq(false))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(done.rows_affected == 1)
}

/// A member's account in a benefit, when one was opened.
pub(crate) async fn account(
    conn: &impl ConnectionTrait,
    benefit_id: &str,
    member: &str,
) -> Result<Option<AccountRow>, KitError> {
    balance::Entity::find_by_id((benefit_id.to_owned(), member.to_owned()))
        .one(conn)
        .await
        .map_err(storage)
}

/// The member's account, opened through `holder` at `at` unless it exists (whoever opened
/// it first stays its holder).
pub(crate) async fn open_account(
    txn: &impl ConnectionTrait,
    benefit_id: &str,
    member: &str,
    holder: &str,
    at: i64,
) -> Result<AccountRow, KitError> {
    balance::Entity::insert(balance::ActiveModel {
        benefit_id: Set(benefit_id.to_owned()),
        member: Set(member.to_owned()),
        holder: Set(holder.to_owned()),
        available: Set(0),
        closed: Set(false),
        opened_at: Set(at),
    })
    .on_conflict(
        OnConflict::columns([balance::Column::BenefitId, balance::Column::Member])
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(txn)
    .await
    .map_err(storage)?;
    account(txn, benefit_id, member)
        .await?
        .ok_or_else(|| KitError::Internal("an account vanished as it was opened".into()))
}

/// Adds `amount` (may be negative) to an open account, never below zero: false when the
/// account is closed or holds too little.
pub(crate) async fn add(
    txn: &impl ConnectionTrait,
    benefit_id: &str,
    member: &str,
    amount: i64,
) -> Result<bool, KitError> {
    let mut update = balance::Entity::update_many()
        .col_expr(
            balance::Column::Available,
            Expr::col(balance::Column::Available).add(amount),
        )
        .filter(balance::Column::BenefitId.eq(benefit_id))
        .filter(balance::Column::Member.eq(member))
        .filter(balance::Column::Closed.eq(false));
    if amount < 0 {
        update = update.filter(balance::Column::Available.gte(-amount));
    }
    let done = update.exec(txn).await.map_err(storage)?;
    Ok(done.rows_affected == 1)
}

/// Moves the member's points whose return window closed by `now` into the balance, each lot
/// by one conditional update (a lot another transaction moved or reversed is skipped).
/// Returns the points moved.
pub(crate) async fn release_due(
    txn: &impl ConnectionTrait,
    benefit_id: &str,
    member: &str,
    now: i64,
) -> Result<i64, KitError> {
    let due = point_lot::Entity::find()
        .filter(point_lot::Column::BenefitId.eq(benefit_id))
        .filter(point_lot::Column::Member.eq(member))
        .filter(point_lot::Column::State.eq(LotState::Pending))
        .filter(point_lot::Column::ReleaseAt.lte(now))
        .all(txn)
        .await
        .map_err(storage)?;
    let mut moved = 0;
    for lot in due {
        if move_lot(txn, &lot.id, LotState::Released, Some(now), None).await? {
            moved += lot.points;
        }
    }
    if moved > 0 && !add(txn, benefit_id, member, moved).await? {
        // A closed account keeps its points where they were.
        return Err(KitError::Precondition(
            "ACCOUNT_CLOSED",
            "the member's account was closed".into(),
        ));
    }
    Ok(moved)
}

/// Moves a PENDING lot to `to`: released only once due (`due_by`), reversed only while not
/// (`before`). False when it was not PENDING or the time did not fit.
pub(crate) async fn move_lot(
    txn: &impl ConnectionTrait,
    id: &str,
    to: LotState,
    due_by: Option<i64>,
    before: Option<i64>,
) -> Result<bool, KitError> {
    let mut update = point_lot::Entity::update_many()
        .col_expr(point_lot::Column::State, Expr::value(to))
        .filter(point_lot::Column::Id.eq(id))
        .filter(point_lot::Column::State.eq(LotState::Pending));
    if let Some(due_by) = due_by {
        update = update.filter(point_lot::Column::ReleaseAt.lte(due_by));
    }
    if let Some(before) = before {
        update = update.filter(point_lot::Column::ReleaseAt.gt(before));
    }
    Ok(update.exec(txn).await.map_err(storage)?.rows_affected == 1)
}

/// Stores points earned.
pub(crate) async fn insert_lot(txn: &impl ConnectionTrait, lot: &LotRow) -> Result<(), KitError> {
    point_lot::ActiveModel::from(lot.clone())
        .insert(txn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// One lot.
pub(crate) async fn lot(conn: &impl ConnectionTrait, id: &str) -> Result<Option<LotRow>, KitError> {
    point_lot::Entity::find_by_id(id.to_owned())
        .one(conn)
        .await
        .map_err(storage)
}

/// The member's PENDING lots in a benefit, soonest release first.
pub(crate) async fn pending_lots(
    conn: &impl ConnectionTrait,
    benefit_id: &str,
    member: &str,
) -> Result<Vec<LotRow>, KitError> {
    point_lot::Entity::find()
        .filter(point_lot::Column::BenefitId.eq(benefit_id))
        .filter(point_lot::Column::Member.eq(member))
        .filter(point_lot::Column::State.eq(LotState::Pending))
        .order_by_asc(point_lot::Column::ReleaseAt)
        .all(conn)
        .await
        .map_err(storage)
}

/// Closes the member's accounts opened through `holder` (the member was erased there).
pub(crate) async fn close_balances(
    txn: &impl ConnectionTrait,
    member: &str,
    holder: &str,
) -> Result<u64, KitError> {
    let done = balance::Entity::update_many()
        .col_expr(balance::Column::Closed, Expr::value(true))
        .filter(balance::Column::Member.eq(member))
        .filter(balance::Column::Holder.eq(holder))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(done.rows_affected)
}

/// Every account whose balance (available plus pending points) differs from what its
/// sub-account of the funder's liability says: (benefit, what the postings say, what the
/// account holds). Empty when every balance is what the ledger says.
pub(crate) async fn balance_differences(
    conn: &impl ConnectionTrait,
) -> Result<Vec<(String, i64, i64)>, KitError> {
    #[derive(Debug, sea_orm::FromQueryResult)]
    struct Sum {
        benefit_id: String,
        member_id: String,
        total: i64,
    }
    let owed: BTreeMap<(String, String), i64> = posting::Entity::find()
        .select_only()
        .column(posting::Column::BenefitId)
        .column(posting::Column::MemberId)
        .column_as(Expr::cust("CAST(-SUM(amount) AS BIGINT)"), "total")
        .filter(posting::Column::MemberId.is_not_null())
        .group_by(posting::Column::BenefitId)
        .group_by(posting::Column::MemberId)
        .into_model::<Sum>()
        .all(conn)
        .await
        .map_err(storage)?
        .into_iter()
        .map(|s| ((s.benefit_id, s.member_id), s.total))
        .collect();
    let mut held: BTreeMap<(String, String), i64> = BTreeMap::new();
    for a in balance::Entity::find().all(conn).await.map_err(storage)? {
        *held.entry((a.benefit_id, a.member)).or_default() += a.available;
    }
    for lot in point_lot::Entity::find()
        .filter(point_lot::Column::State.eq(LotState::Pending))
        .all(conn)
        .await
        .map_err(storage)?
    {
        *held.entry((lot.benefit_id, lot.member)).or_default() += lot.points;
    }
    let mut keys: Vec<_> = owed.keys().chain(held.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    Ok(keys
        .into_iter()
        .filter_map(|k| {
            let (o, h) = (
                owed.get(&k).copied().unwrap_or(0),
                held.get(&k).copied().unwrap_or(0),
            );
            (o != h).then_some((k.0, o, h))
        })
        .collect())
}

//! The entitlements repository: its migrations (the kit's tables first), benefits (each
//! finder scoped to the calling partner), wallets, redemptions, the ledger and its settlement
//! closes, and members' balances (balances.rs). Every change that must not race is one
//! conditional update.

mod balances;
mod entities;

use lianyu_kit::{
    KitError,
    ids::PartnerId,
    money::Money,
    storage::{StorageError, with_kit_tables},
};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait},
};
use sea_orm_migration::{MigrationTrait, MigratorTrait, SchemaManager, async_trait::async_trait};

use crate::domain::{Benefit, BenefitKind, BenefitState, EntitlementsError, Posting};
pub(crate) use balances::*;
pub(crate) use entities::{ItemState, LotState, RedemptionState};
use entities::{
    Kind, State, balance, balance_spend, benefit, benefit_party, holding, order_stack, point_lot,
    posting, redemption, settlement_close, wallet_item,
};
pub(crate) type ItemRow = wallet_item::Model;
pub(crate) type RedemptionRow = redemption::Model;
pub(crate) type PostingRow = posting::Model;

pub(crate) struct Migrator;

#[async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        with_kit_tables(vec![
            Box::new(Benefits),
            Box::new(BenefitTerms),
            Box::new(Wallets),
            Box::new(Balances),
            Box::new(BalanceColumns),
            Box::new(Settlement),
            Box::new(SettlementShare),
            Box::new(ExpiryIndex),
            Box::new(BenefitPlaces),
            Box::new(Stacking),
            Box::new(StackingGroup),
            Box::new(MoneyBudget),
            Box::new(BalanceSpends),
            Box::new(ProposedBudget),
        ])
    }
}

lianyu_kit::tables_migration!(
    /// Benefit definitions and who may see them.
    Benefits,
    "m20261202_000010_entitlements_benefits",
    [benefit::Entity, benefit_party::Entity]
);

/// A benefit's unit lifetime and its funder's acceptance (added to a table a first version
/// created without them).
pub(crate) struct BenefitTerms;

impl sea_orm_migration::MigrationName for BenefitTerms {
    fn name(&self) -> &str {
        "m20261202_000011_entitlements_benefit_terms"
    }
}

#[async_trait]
impl MigrationTrait for BenefitTerms {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        use sea_orm_migration::prelude::{Alias, ColumnDef};
        lianyu_kit::storage::add_columns(
            manager,
            "benefits",
            [
                ColumnDef::new(Alias::new("valid_days"))
                    .integer()
                    .not_null()
                    .default(0)
                    .to_owned(),
                ColumnDef::new(Alias::new("funding_accepted"))
                    .boolean()
                    .not_null()
                    .default(false)
                    .to_owned(),
            ],
        )
        .await
    }
}

/// A larger budget the issuer proposed for a live benefit another partner funds (added to a
/// table created without it; none was proposed before).
pub(crate) struct ProposedBudget;

impl sea_orm_migration::MigrationName for ProposedBudget {
    fn name(&self) -> &str {
        "m20261207_000023_entitlements_proposed_budget"
    }
}

#[async_trait]
impl MigrationTrait for ProposedBudget {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        use sea_orm_migration::prelude::{Alias, ColumnDef};
        lianyu_kit::storage::add_columns(
            manager,
            "benefits",
            [
                ColumnDef::new(Alias::new("proposed_budget_units"))
                    .big_integer()
                    .null()
                    .to_owned(),
                ColumnDef::new(Alias::new("proposed_budget_value_minor_units"))
                    .big_integer()
                    .null()
                    .to_owned(),
            ],
        )
        .await
    }
}

lianyu_kit::tables_migration!(
    /// Members' points and stored-value accounts, and points pending a return window.
    Balances,
    "m20261202_000013_entitlements_balances",
    [balance::Entity, point_lot::Entity]
);

lianyu_kit::tables_migration!(
    /// How far the ledger between each pair of partners is closed.
    Settlement,
    "m20261202_000015_entitlements_settlement",
    [settlement_close::Entity]
);

/// The funder's share of a discount (added to a table created without it; benefits defined
/// before it were paid in full by their funder).
pub(crate) struct SettlementShare;

impl sea_orm_migration::MigrationName for SettlementShare {
    fn name(&self) -> &str {
        "m20261202_000016_entitlements_settlement_share"
    }
}

#[async_trait]
impl MigrationTrait for SettlementShare {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        use sea_orm_migration::prelude::{Alias, ColumnDef};
        lianyu_kit::storage::add_columns(
            manager,
            "benefits",
            [ColumnDef::new(Alias::new("funder_share_bps"))
                .integer()
                .not_null()
                .default(10_000)
                .to_owned()],
        )
        .await
    }
}

/// Where a benefit is honoured: its stores and categories (added to a table created without
/// them; benefits defined before were honoured everywhere their partners are).
pub(crate) struct BenefitPlaces;

impl sea_orm_migration::MigrationName for BenefitPlaces {
    fn name(&self) -> &str {
        "m20261202_000018_entitlements_benefit_places"
    }
}

#[async_trait]
impl MigrationTrait for BenefitPlaces {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        use sea_orm_migration::prelude::{Alias, ColumnDef};
        lianyu_kit::storage::add_columns(
            manager,
            "benefits",
            ["stores", "categories"].map(|c| {
                ColumnDef::new(Alias::new(c))
                    .text()
                    .not_null()
                    .default("")
                    .to_owned()
            }),
        )
        .await
    }
}

lianyu_kit::tables_migration!(
    /// Which stacking groups each order already uses.
    Stacking,
    "m20261202_000019_entitlements_stacking",
    [order_stack::Entity]
);

/// A benefit's stacking group (added to a table created without it).
pub(crate) struct StackingGroup;

impl sea_orm_migration::MigrationName for StackingGroup {
    fn name(&self) -> &str {
        "m20261202_000020_entitlements_stacking_group"
    }
}

#[async_trait]
impl MigrationTrait for StackingGroup {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        use sea_orm_migration::prelude::{Alias, ColumnDef};
        lianyu_kit::storage::add_columns(
            manager,
            "benefits",
            [ColumnDef::new(Alias::new("stacking_group"))
                .text()
                .not_null()
                .default("")
                .to_owned()],
        )
        .await
    }
}

lianyu_kit::tables_migration!(
    /// Payments from balances, for their refunds.
    BalanceSpends,
    "m20261202_000022_entitlements_balance_spends",
    [balance_spend::Entity]
);

/// A benefit's money budget and what redemptions used of it (added to tables created without
/// them).
pub(crate) struct MoneyBudget;

impl sea_orm_migration::MigrationName for MoneyBudget {
    fn name(&self) -> &str {
        "m20261202_000021_entitlements_money_budget"
    }
}

#[async_trait]
impl MigrationTrait for MoneyBudget {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        use sea_orm_migration::prelude::{Alias, ColumnDef};
        lianyu_kit::storage::add_columns(
            manager,
            "benefits",
            [
                ColumnDef::new(Alias::new("budget_value_currency"))
                    .string()
                    .null()
                    .to_owned(),
                ColumnDef::new(Alias::new("budget_value_minor_units"))
                    .big_integer()
                    .null()
                    .to_owned(),
                ColumnDef::new(Alias::new("spent_value_minor_units"))
                    .big_integer()
                    .not_null()
                    .default(0)
                    .to_owned(),
            ],
        )
        .await?;
        lianyu_kit::storage::add_columns(
            manager,
            "redemptions",
            [ColumnDef::new(Alias::new("budget_spent"))
                .big_integer()
                .not_null()
                .default(0)
                .to_owned()],
        )
        .await
    }
}

/// Takes `amount` from benefit `id`'s money budget: one conditional update, so no
/// concurrency spends past it. False when it would.
pub(crate) async fn spend_budget(
    txn: &impl ConnectionTrait,
    id: &str,
    amount: i64,
) -> Result<bool, KitError> {
    let done = benefit::Entity::update_many()
        .col_expr(
            benefit::Column::SpentValueMinorUnits,
            Expr::col(benefit::Column::SpentValueMinorUnits).add(amount),
        )
        .filter(benefit::Column::Id.eq(id))
        .filter(
            Expr::col(benefit::Column::SpentValueMinorUnits)
                .add(amount)
                .lte(Expr::col(benefit::Column::BudgetValueMinorUnits)),
        )
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(done.rows_affected == 1)
}

/// Gives `amount` back to benefit `id`'s money budget (a cancelled hold, a refund).
pub(crate) async fn return_budget(
    txn: &impl ConnectionTrait,
    id: &str,
    amount: i64,
) -> Result<(), KitError> {
    if amount == 0 {
        return Ok(());
    }
    benefit::Entity::update_many()
        .col_expr(
            benefit::Column::SpentValueMinorUnits,
            Expr::col(benefit::Column::SpentValueMinorUnits).sub(amount),
        )
        .filter(benefit::Column::Id.eq(id))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// The redemption holding `group` on `order` at `partner`, if any.
pub(crate) async fn stacked(
    conn: &impl ConnectionTrait,
    partner: &str,
    order: &str,
    group: &str,
) -> Result<Option<String>, KitError> {
    Ok(
        order_stack::Entity::find_by_id((partner.to_owned(), order.to_owned(), group.to_owned()))
            .one(conn)
            .await
            .map_err(storage)?
            .map(|s| s.redemption_id),
    )
}

/// Puts redemption `id` on `order` for `group` at `partner`; a concurrent one that got there
/// first makes this fail with a unique violation (the kit runs the mutation again).
pub(crate) async fn stack(
    txn: &impl ConnectionTrait,
    partner: &str,
    order: &str,
    group: &str,
    id: &str,
) -> Result<(), KitError> {
    order_stack::ActiveModel {
        partner_id: Set(partner.to_owned()),
        order_reference: Set(order.to_owned()),
        stacking_group: Set(group.to_owned()),
        redemption_id: Set(id.to_owned()),
    }
    .insert(txn)
    .await
    .map_err(storage)?;
    Ok(())
}

/// Takes redemption `id` off its order (cancelled, expired or refunded in full).
async fn unstack(txn: &impl ConnectionTrait, id: &str) -> Result<(), KitError> {
    order_stack::Entity::delete_many()
        .filter(order_stack::Column::RedemptionId.eq(id))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// Finds units that expired unused without reading every unit.
pub(crate) struct ExpiryIndex;

impl sea_orm_migration::MigrationName for ExpiryIndex {
    fn name(&self) -> &str {
        "m20261202_000017_entitlements_expiry_index"
    }
}

#[async_trait]
impl MigrationTrait for ExpiryIndex {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        use sea_orm_migration::prelude::{Alias, Index};
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_wallet_items_state_expires_at")
                    .table(Alias::new("wallet_items"))
                    .col(Alias::new("state"))
                    .col(Alias::new("expires_at"))
                    .to_owned(),
            )
            .await
    }
}

/// The stored-value top-up bonus, and the member of a balance liability's posting (added to
/// tables a first version created without them).
pub(crate) struct BalanceColumns;

impl sea_orm_migration::MigrationName for BalanceColumns {
    fn name(&self) -> &str {
        "m20261202_000014_entitlements_balance_columns"
    }
}

#[async_trait]
impl MigrationTrait for BalanceColumns {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        use sea_orm_migration::prelude::{Alias, ColumnDef};
        lianyu_kit::storage::add_columns(
            manager,
            "benefits",
            [ColumnDef::new(Alias::new("top_up_bonus_bps"))
                .integer()
                .not_null()
                .default(0)
                .to_owned()],
        )
        .await?;
        lianyu_kit::storage::add_columns(
            manager,
            "ledger_postings",
            [ColumnDef::new(Alias::new("member_id"))
                .string()
                .null()
                .to_owned()],
        )
        .await
    }
}

lianyu_kit::tables_migration!(
    /// Wallets, redemptions and the ledger.
    Wallets,
    "m20261202_000012_entitlements_wallets",
    [
        wallet_item::Entity,
        holding::Entity,
        redemption::Entity,
        posting::Entity
    ]
);

fn storage(e: sea_orm::DbErr) -> KitError {
    KitError::Storage(StorageError::from(e))
}

/// Stores a new benefit and its parties, inside the caller's transaction.
pub(crate) async fn insert_benefit(
    txn: &impl ConnectionTrait,
    b: &Benefit,
    at: i64,
) -> Result<(), KitError> {
    let money = |m: &Option<Money>| {
        (
            m.as_ref().map(|m| m.currency().to_owned()),
            m.as_ref().map(Money::minor_units),
        )
    };
    let (value_currency, value_minor_units) = money(&b.value);
    let (threshold_currency, threshold_minor_units) = money(&b.threshold);
    benefit::ActiveModel {
        id: Set(b.id.clone()),
        display_name: Set(b.display_name.clone()),
        kind: Set(kind(b.kind)),
        issuer: Set(b.issuer.to_string()),
        funder: Set(b.funder.to_string()),
        value_currency: Set(value_currency),
        value_minor_units: Set(value_minor_units),
        threshold_currency: Set(threshold_currency),
        threshold_minor_units: Set(threshold_minor_units),
        percent_off_bps: Set(b.percent_off_bps),
        budget_units: Set(b.budget_units),
        granted_units: Set(b.granted_units),
        per_member_limit: Set(b.per_member_limit),
        valid_from: Set(b.valid_from_millis),
        valid_until: Set(b.valid_until_millis),
        state: Set(state(b.state)),
        created_at: Set(at),
        valid_days: Set(b.valid_days),
        funding_accepted: Set(b.funding_accepted),
        top_up_bonus_bps: Set(b.top_up_bonus_bps),
        funder_share_bps: Set(b.funder_share_bps),
        stores: Set(b.stores.join("\n")),
        categories: Set(b.categories.join("\n")),
        stacking_group: Set(b.stacking_group.clone()),
        budget_value_currency: Set(b.budget_value.as_ref().map(|m| m.currency().to_owned())),
        budget_value_minor_units: Set(b.budget_value.as_ref().map(Money::minor_units)),
        spent_value_minor_units: Set(0),
        proposed_budget_units: Set(None),
        proposed_budget_value_minor_units: Set(None),
    }
    .insert(txn)
    .await
    .map_err(StorageError::from)?;
    for party in b.parties() {
        benefit_party::ActiveModel {
            benefit_id: Set(b.id.clone()),
            honours: Set(b.honoured_by.contains(&party)),
            partner_id: Set(party.into_string()),
        }
        .insert(txn)
        .await
        .map_err(StorageError::from)?;
    }
    Ok(())
}

/// The benefit `id` when `partner` issues, funds or honours it; `None` otherwise, so another
/// partner's benefit and a missing one look alike.
pub(crate) async fn benefit_for_party(
    conn: &impl ConnectionTrait,
    partner: &str,
    id: &str,
) -> Result<Option<Benefit>, KitError> {
    let parties = benefit_party::Entity::find()
        .filter(benefit_party::Column::BenefitId.eq(id))
        .all(conn)
        .await
        .map_err(StorageError::from)?;
    if !parties.iter().any(|p| p.partner_id == partner) {
        return Ok(None);
    }
    let Some(row) = benefit::Entity::find_by_id(id)
        .one(conn)
        .await
        .map_err(StorageError::from)?
    else {
        return Ok(None);
    };
    Ok(Some(to_domain(row, parties)))
}

/// Holds benefit `id`'s row to the end of the caller's transaction (PostgreSQL; see
/// [`lianyu_kit::storage::hold_rows`]), so that a change read-modify-written by its issuer —
/// an update, a pause, an end, the funder's acceptance — is made on what the one before it
/// committed: two field-masked updates at once both stand, and nothing changes a benefit
/// another call has just ended.
pub(crate) async fn lock_benefit(txn: &impl ConnectionTrait, id: &str) -> Result<(), KitError> {
    Ok(lianyu_kit::storage::hold_rows::<benefit::Entity>(txn, &[id]).await?)
}

/// A benefit by id whoever asks (the caller's rights are checked by the domain).
pub(crate) async fn benefit_by_id(
    conn: &impl ConnectionTrait,
    id: &str,
) -> Result<Option<Benefit>, KitError> {
    let Some(row) = benefit::Entity::find_by_id(id)
        .one(conn)
        .await
        .map_err(storage)?
    else {
        return Ok(None);
    };
    let parties = benefit_party::Entity::find()
        .filter(benefit_party::Column::BenefitId.eq(id))
        .all(conn)
        .await
        .map_err(storage)?;
    Ok(Some(to_domain(row, parties)))
}

/// The benefits `ids`, in the order asked (`None` for one that does not exist): two reads
/// however many.
pub(crate) async fn benefits_by_ids(
    conn: &impl ConnectionTrait,
    ids: &[String],
) -> Result<Vec<Option<Benefit>>, KitError> {
    let rows = benefit::Entity::find()
        .filter(benefit::Column::Id.is_in(ids.iter().cloned()))
        .all(conn)
        .await
        .map_err(storage)?;
    let mut parties: std::collections::HashMap<String, Vec<benefit_party::Model>> =
        std::collections::HashMap::new();
    for party in benefit_party::Entity::find()
        .filter(benefit_party::Column::BenefitId.is_in(ids.iter().cloned()))
        .all(conn)
        .await
        .map_err(storage)?
    {
        parties
            .entry(party.benefit_id.clone())
            .or_default()
            .push(party);
    }
    let rows: std::collections::HashMap<String, benefit::Model> =
        rows.into_iter().map(|r| (r.id.clone(), r)).collect();
    Ok(ids
        .iter()
        .map(|id| {
            let row = rows.get(id)?.clone();
            Some(to_domain(row, parties.get(id).cloned().unwrap_or_default()))
        })
        .collect())
}

/// The benefits `partner` is party to, after the page's key, with `state` when given.
pub(crate) async fn list_benefits(
    conn: &impl ConnectionTrait,
    partner: &str,
    page: &lianyu_kit::page::Page,
    only: Option<BenefitState>,
) -> Result<(Vec<Benefit>, String), KitError> {
    let mut query = benefit::Entity::find()
        .filter(
            benefit::Column::Id.in_subquery(
                sea_orm::sea_query::Query::select()
                    .column(benefit_party::Column::BenefitId)
                    .from(benefit_party::Entity)
                    .and_where(Expr::col(benefit_party::Column::PartnerId).eq(partner))
                    .to_owned(),
            ),
        )
        .order_by_asc(benefit::Column::Id)
        .limit(page.size + 1);
    if let Some(after) = &page.after {
        query = query.filter(benefit::Column::Id.gt(after.clone()));
    }
    if let Some(s) = only {
        query = query.filter(benefit::Column::State.eq(state(s)));
    }
    let rows = query.all(conn).await.map_err(storage)?;
    let (rows, token) = page.finish(rows, |r| r.id.clone());
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let parties = benefit_party::Entity::find()
            .filter(benefit_party::Column::BenefitId.eq(row.id.clone()))
            .all(conn)
            .await
            .map_err(storage)?;
        out.push(to_domain(row, parties));
    }
    Ok((out, token))
}

/// Moves a benefit from `from` to `to`; false when it was no longer in `from` (a concurrent
/// change won).
pub(crate) async fn set_state(
    txn: &impl ConnectionTrait,
    id: &str,
    from: BenefitState,
    to: BenefitState,
) -> Result<bool, KitError> {
    let done = benefit::Entity::update_many()
        .col_expr(benefit::Column::State, Expr::value(state(to)))
        .filter(benefit::Column::Id.eq(id))
        .filter(benefit::Column::State.eq(state(from)))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(done.rows_affected == 1)
}

/// Records the funder's acceptance of a DRAFT; false when it is no longer a DRAFT.
pub(crate) async fn accept_funding(txn: &impl ConnectionTrait, id: &str) -> Result<bool, KitError> {
    let done = benefit::Entity::update_many()
        .col_expr(benefit::Column::FundingAccepted, Expr::value(true))
        .filter(benefit::Column::Id.eq(id))
        .filter(benefit::Column::State.eq(State::Draft))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(done.rows_affected == 1)
}

/// Writes the updatable fields of `b` (display name, budget, per-member limit, end), whether
/// its funding is accepted (a change of terms on a DRAFT withdraws the acceptance) and the
/// budget proposed to its funder.
pub(crate) async fn update_terms(txn: &impl ConnectionTrait, b: &Benefit) -> Result<(), KitError> {
    benefit::ActiveModel {
        id: Set(b.id.clone()),
        display_name: Set(b.display_name.clone()),
        budget_units: Set(b.budget_units),
        per_member_limit: Set(b.per_member_limit),
        valid_until: Set(b.valid_until_millis),
        budget_value_currency: Set(b.budget_value.as_ref().map(|m| m.currency().to_owned())),
        budget_value_minor_units: Set(b.budget_value.as_ref().map(Money::minor_units)),
        funding_accepted: Set(b.funding_accepted),
        proposed_budget_units: Set(b.proposed_budget_units),
        proposed_budget_value_minor_units: Set(b
            .proposed_budget_value
            .as_ref()
            .map(Money::minor_units)),
        ..Default::default()
    }
    .update(txn)
    .await
    .map_err(storage)?;
    Ok(())
}

/// The update [`take_and_store_unit`] makes to the budget.
fn unit_take(id: &str) -> sea_orm::UpdateMany<benefit::Entity> {
    benefit::Entity::update_many()
        .col_expr(
            benefit::Column::GrantedUnits,
            Expr::col(benefit::Column::GrantedUnits).add(1),
        )
        .filter(benefit::Column::Id.eq(id))
        .filter(benefit::Column::State.eq(State::Active))
        .filter(
            Expr::col(benefit::Column::GrantedUnits).lt(Expr::col(benefit::Column::BudgetUnits)),
        )
}

/// One unit of the budget taken and `item` stored for its member. The take is a single
/// conditional update, so no concurrency (threads, replicas on one PostgreSQL) takes more than
/// the budget. False when no unit could be taken (the budget spent, the benefit not ACTIVE), PER_MEMBER_LIMIT past the benefit's
/// per-member limit as it stands in this transaction (0: none; a replica's cached definition
/// may be older) — the caller then rolls its transaction back, undoing the take. The n-th
/// unit's key is (benefit, member, n): a concurrent grant elsewhere that counted the same n
/// fails on it and the kit runs it again.
///
/// The take, the limit's check and both rows are one trip to the database, as every grant
/// and claim holds its batch's lane while it runs. On SQLite each insert runs only when the
/// statement before it wrote its row (`changes()`, which a `SELECT` between leaves alone), and
/// a `SELECT` after the take reads the limit and the member's count as they stood; on
/// PostgreSQL, whose extended protocol takes one statement per query, the same steps are one
/// statement of data-modifying `WITH` queries, each insert selecting from the one before.
pub(crate) async fn take_and_store_unit(
    txn: &impl ConnectionTrait,
    item: &ItemRow,
) -> Result<bool, EntitlementsError> {
    use sea_orm::{DbBackend, QueryTrait, Statement};
    let backend = txn.get_database_backend();
    let take = unit_take(&item.benefit_id).build(backend);
    let stored =
        wallet_item::Entity::insert(wallet_item::ActiveModel::from(item.clone())).build(backend);
    // `INSERT INTO t (…) VALUES (…)` made conditional: `INSERT INTO t (…) SELECT … WHERE …`.
    let (into, values) = stored
        .sql
        .strip_suffix(')')
        .and_then(|s| s.split_once(" VALUES ("))
        .ok_or_else(|| KitError::Internal("an unexpected insert statement".into()))?;
    let (benefit, member) = (item.benefit_id.as_str(), item.member.as_str());
    let mut bound: Vec<sea_orm::Value> = take.values.map(|v| v.0).unwrap_or_default();
    let sql = if backend == DbBackend::Postgres {
        // The take's own placeholders come first; then the benefit, the member, the unit's id;
        // then the unit's row, its placeholders moved past those.
        let n = bound.len();
        let (b, m, i) = (n + 1, n + 2, n + 3);
        bound.extend([benefit.into(), member.into(), item.id.as_str().into()]);
        format!(
            "WITH take AS ({take} RETURNING per_member_limit), \
             held AS (SELECT COUNT(*) AS n FROM wallet_holdings \
                      WHERE benefit_id = ${b} AND member = ${m}), \
             hold AS (INSERT INTO wallet_holdings (benefit_id, member, ordinal, item_id) \
                      SELECT ${b}, ${m}, held.n + 1, ${i} FROM take, held \
                      WHERE take.per_member_limit <= 0 OR held.n < take.per_member_limit \
                      RETURNING 1), \
             unit AS ({into} SELECT {values} FROM hold RETURNING 1) \
             SELECT (SELECT COUNT(*) FROM take), \
                    (SELECT CAST(per_member_limit AS BIGINT) FROM take), held.n FROM held",
            take = take.sql,
            values = shift_placeholders(values, i),
        )
    } else {
        let limit = "(SELECT per_member_limit FROM benefits WHERE id = ?)";
        let held = "(SELECT COUNT(*) FROM wallet_holdings WHERE benefit_id = ? AND member = ?)";
        // The standing: the limit, the count.
        bound.extend([benefit.into(), benefit.into(), member.into()]);
        // The holding: its key (the count + 1) and unit, then the condition's limit, count,
        // limit.
        bound.extend([benefit.into(), member.into(), benefit.into(), member.into()]);
        bound.push(item.id.as_str().into());
        bound.extend([
            benefit.into(),
            benefit.into(),
            member.into(),
            benefit.into(),
        ]);
        format!(
            "{take}; \
             SELECT changes(), {limit}, {held}; \
             INSERT INTO wallet_holdings (benefit_id, member, ordinal, item_id) \
             SELECT ?, ?, {held} + 1, ? WHERE changes() = 1 AND ({limit} <= 0 OR {held} < {limit}); \
             {into} SELECT {values} WHERE changes() = 1",
            take = take.sql,
        )
    };
    bound.extend(stored.values.map(|v| v.0).unwrap_or_default());
    let rows = txn
        .query_all_raw(Statement::from_sql_and_values(backend, sql, bound))
        .await
        .map_err(storage)?;
    let standing = rows
        .first()
        .ok_or_else(|| KitError::Internal("the unit's take returned no row".into()))?;
    let read = |i| standing.try_get_by_index::<Option<i64>>(i).map_err(storage);
    let (taken, limit, held) = (read(0)?, read(1)?, read(2)?);
    if taken != Some(1) {
        return Ok(false);
    }
    let (limit, held) = (limit.unwrap_or(0), held.unwrap_or(0));
    if limit > 0 && held >= limit {
        return Err(KitError::Precondition(
            "PER_MEMBER_LIMIT",
            format!("the member already holds {held} of at most {limit}"),
        )
        .into());
    }
    Ok(true)
}

/// `sql` with every PostgreSQL placeholder `$k` renumbered `$(k + by)`: for a statement built
/// on its own and then embedded after `by` parameters of another. (sea-query binds every value,
/// so the statements here hold no literal with a `$` in it.)
fn shift_placeholders(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut chars = sql.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let digits_from = at + 1;
        let mut digits_to = digits_from;
        while let Some(&(j, d)) = chars.peek() {
            if !d.is_ascii_digit() {
                break;
            }
            digits_to = j + 1;
            chars.next();
        }
        match sql[digits_from..digits_to].parse::<usize>() {
            Ok(k) => out.push_str(&(k + by).to_string()),
            Err(_) => out.push_str(&sql[digits_from..digits_to]),
        }
    }
    out
}

/// One unit by id.
pub(crate) async fn item(
    conn: &impl ConnectionTrait,
    id: &str,
) -> Result<Option<ItemRow>, KitError> {
    wallet_item::Entity::find_by_id(id)
        .one(conn)
        .await
        .map_err(storage)
}

/// The units `member` holds through `holder`, newest first, after the page's key.
pub(crate) async fn items_of(
    conn: &impl ConnectionTrait,
    member: &str,
    holder: &str,
    page: &lianyu_kit::page::Page,
) -> Result<(Vec<ItemRow>, String), KitError> {
    let mut query = wallet_item::Entity::find()
        .filter(wallet_item::Column::Member.eq(member))
        .filter(wallet_item::Column::Holder.eq(holder))
        .order_by_desc(wallet_item::Column::Id)
        .limit(page.size + 1);
    if let Some(after) = &page.after {
        query = query.filter(wallet_item::Column::Id.lt(after.clone()));
    }
    let rows = query.all(conn).await.map_err(storage)?;
    Ok(page.finish(rows, |r| r.id.clone()))
}

/// Moves a unit from `from` to `to`, only while it has not expired at `now` (when given);
/// false when another call moved it first.
pub(crate) async fn move_item(
    txn: &impl ConnectionTrait,
    id: &str,
    from: ItemState,
    to: ItemState,
    unexpired_at: Option<i64>,
) -> Result<bool, KitError> {
    let mut update = wallet_item::Entity::update_many()
        .col_expr(wallet_item::Column::State, Expr::value(to))
        .filter(wallet_item::Column::Id.eq(id))
        .filter(wallet_item::Column::State.eq(from));
    if let Some(now) = unexpired_at {
        update = update.filter(wallet_item::Column::ExpiresAt.gt(now));
    }
    Ok(update.exec(txn).await.map_err(storage)?.rows_affected == 1)
}

/// Units AVAILABLE past their expiry at `now`, at most `limit`.
pub(crate) async fn expired_units(
    conn: &impl ConnectionTrait,
    now: i64,
    limit: u64,
) -> Result<Vec<ItemRow>, KitError> {
    wallet_item::Entity::find()
        .filter(wallet_item::Column::State.eq(ItemState::Available))
        .filter(wallet_item::Column::ExpiresAt.lte(now))
        .limit(limit)
        .all(conn)
        .await
        .map_err(storage)
}

/// Marks an AVAILABLE unit past its expiry EXPIRED; false when it was not (taken first).
pub(crate) async fn expire_unit(
    txn: &impl ConnectionTrait,
    id: &str,
    now: i64,
) -> Result<bool, KitError> {
    let done = wallet_item::Entity::update_many()
        .col_expr(wallet_item::Column::State, Expr::value(ItemState::Expired))
        .filter(wallet_item::Column::Id.eq(id))
        .filter(wallet_item::Column::State.eq(ItemState::Available))
        .filter(wallet_item::Column::ExpiresAt.lte(now))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(done.rows_affected == 1)
}

/// Cancels the holds on `member`'s units granted through `holder` (only those at `honourer`,
/// when given), releasing the units; how many were cancelled.
pub(crate) async fn cancel_holds(
    txn: &impl ConnectionTrait,
    member: &str,
    holder: &str,
    honourer: Option<&str>,
) -> Result<u64, KitError> {
    let items: Vec<String> = wallet_item::Entity::find()
        .filter(wallet_item::Column::Member.eq(member))
        .filter(wallet_item::Column::Holder.eq(holder))
        .filter(wallet_item::Column::State.eq(ItemState::Reserved))
        .all(txn)
        .await
        .map_err(storage)?
        .into_iter()
        .map(|i| i.id)
        .collect();
    if items.is_empty() {
        return Ok(0);
    }
    let mut holds = redemption::Entity::find()
        .filter(redemption::Column::ItemId.is_in(items))
        .filter(redemption::Column::State.eq(RedemptionState::Reserved));
    if let Some(h) = honourer {
        holds = holds.filter(redemption::Column::PartnerId.eq(h));
    }
    let mut cancelled = 0;
    for hold in holds.all(txn).await.map_err(storage)? {
        if end_hold(txn, &hold.id, RedemptionState::Cancelled, None).await? {
            move_item(
                txn,
                &hold.item_id,
                ItemState::Reserved,
                ItemState::Available,
                None,
            )
            .await?;
            cancelled += 1;
        }
    }
    Ok(cancelled)
}

/// Closes `member`'s wallet at `holder` (the member was erased there): holds are cancelled
/// and every unit granted through that partner is CLOSED, never to be redeemed.
pub(crate) async fn close_wallet(
    txn: &impl ConnectionTrait,
    member: &str,
    holder: &str,
) -> Result<u64, KitError> {
    cancel_holds(txn, member, holder, None).await?;
    close_balances(txn, member, holder).await?;
    let done = wallet_item::Entity::update_many()
        .col_expr(wallet_item::Column::State, Expr::value(ItemState::Closed))
        .filter(wallet_item::Column::Member.eq(member))
        .filter(wallet_item::Column::Holder.eq(holder))
        .filter(wallet_item::Column::State.eq(ItemState::Available))
        .exec(txn)
        .await
        .map_err(storage)?;
    Ok(done.rows_affected)
}

/// Stores a redemption.
pub(crate) async fn insert_redemption(
    txn: &impl ConnectionTrait,
    row: &RedemptionRow,
) -> Result<(), KitError> {
    redemption::ActiveModel::from(row.clone())
        .insert(txn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// A redemption by id.
pub(crate) async fn redemption(
    conn: &impl ConnectionTrait,
    id: &str,
) -> Result<Option<RedemptionRow>, KitError> {
    redemption::Entity::find_by_id(id)
        .one(conn)
        .await
        .map_err(storage)
}

/// Ends a hold: RESERVED → `to`, with `before` only while the hold lasts past it; false when
/// confirm, cancel or expiry ended it first.
pub(crate) async fn end_hold(
    txn: &impl ConnectionTrait,
    id: &str,
    to: RedemptionState,
    before: Option<i64>,
) -> Result<bool, KitError> {
    let mut update = redemption::Entity::update_many()
        .col_expr(redemption::Column::State, Expr::value(to))
        .filter(redemption::Column::Id.eq(id))
        .filter(redemption::Column::State.eq(RedemptionState::Reserved));
    if let Some(now) = before {
        update = update.filter(redemption::Column::HoldUntil.gt(now));
    }
    let ended = update.exec(txn).await.map_err(storage)?.rows_affected == 1;
    if ended && to == RedemptionState::Cancelled {
        unstack(txn, id).await?;
        // What the hold took from a money budget goes back.
        if let Some(r) = redemption(txn, id).await?
            && r.budget_spent > 0
            && let Some(unit) = item(txn, &r.item_id).await?
        {
            return_budget(txn, &unit.benefit_id, r.budget_spent).await?;
        }
    }
    Ok(ended)
}

/// Records `refunded` (the order's total refunded after this refund) on a CONFIRMED
/// redemption that had `before` refunded, REFUNDED when `full`; false when another refund
/// changed it first.
pub(crate) async fn record_refund(
    txn: &impl ConnectionTrait,
    id: &str,
    before: i64,
    refunded: i64,
    full: bool,
) -> Result<bool, KitError> {
    let mut update = redemption::Entity::update_many()
        .col_expr(
            redemption::Column::RefundedMinorUnits,
            Expr::value(refunded),
        )
        .filter(redemption::Column::Id.eq(id))
        .filter(redemption::Column::State.eq(RedemptionState::Confirmed))
        .filter(redemption::Column::RefundedMinorUnits.eq(before));
    if full {
        update = update.col_expr(
            redemption::Column::State,
            Expr::value(RedemptionState::Refunded),
        );
    }
    let recorded = update.exec(txn).await.map_err(storage)?.rows_affected == 1;
    if recorded && full {
        unstack(txn, id).await?;
    }
    Ok(recorded)
}

/// Reservations whose hold ended before `now`, at most `limit`.
pub(crate) async fn expired_holds(
    conn: &impl ConnectionTrait,
    now: i64,
    limit: u64,
) -> Result<Vec<RedemptionRow>, KitError> {
    redemption::Entity::find()
        .filter(redemption::Column::State.eq(RedemptionState::Reserved))
        .filter(redemption::Column::HoldUntil.lte(now))
        .limit(limit)
        .all(conn)
        .await
        .map_err(storage)
}

/// The key of the ledger between two partners, the same from either side.
pub(crate) fn pair_key(a: &str, b: &str) -> String {
    if a <= b {
        format!("{a}|{b}")
    } else {
        format!("{b}|{a}")
    }
}

/// The end of the last closed period between any two of `partners`, read so that a close
/// cannot commit while this transaction is open (its row is created when missing, then read
/// FOR SHARE on PostgreSQL; SQLite has one writer). 0 when none was closed.
async fn closed_until_locked(
    txn: &impl ConnectionTrait,
    partners: &[&str],
) -> Result<i64, KitError> {
    let mut pairs = Vec::new();
    for (i, a) in partners.iter().enumerate() {
        for b in &partners[i + 1..] {
            pairs.push(pair_key(a, b));
        }
    }
    if pairs.is_empty() {
        return Ok(0);
    }
    ensure_pairs(txn, &pairs).await?;
    let rows = settlement_close::Entity::find()
        .filter(settlement_close::Column::Pair.is_in(pairs))
        .lock_shared()
        .all(txn)
        .await
        .map_err(storage)?;
    Ok(rows.iter().map(|r| r.closed_until).max().unwrap_or(0))
}

/// Creates the rows of `pairs` that are missing (never closed), so they can be locked.
async fn ensure_pairs(txn: &impl ConnectionTrait, pairs: &[String]) -> Result<(), KitError> {
    settlement_close::Entity::insert_many(pairs.iter().map(|pair| settlement_close::ActiveModel {
        pair: Set(pair.clone()),
        closed_until: Set(0),
        closed_at: Set(0),
        closed_by: Set(String::new()),
    }))
    .on_conflict(
        sea_orm::sea_query::OnConflict::column(settlement_close::Column::Pair)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(txn)
    .await
    .map_err(storage)?;
    Ok(())
}

/// The end of the last closed period between `a` and `b` (0 when none), as committed.
pub(crate) async fn closed_until(
    conn: &impl ConnectionTrait,
    a: &str,
    b: &str,
) -> Result<i64, KitError> {
    Ok(settlement_close::Entity::find_by_id(pair_key(a, b))
        .one(conn)
        .await
        .map_err(storage)?
        .map_or(0, |r| r.closed_until))
}

/// Closes the ledger between `by` and `other` up to `end` (exclusive), waiting for every
/// posting transaction between them still open: the start of the period it closes (0 from
/// the beginning), or `None` when `end` is not after the last close.
pub(crate) async fn close_period(
    txn: &impl ConnectionTrait,
    by: &str,
    other: &str,
    end: i64,
    now: i64,
) -> Result<Option<i64>, KitError> {
    let pair = pair_key(by, other);
    ensure_pairs(txn, std::slice::from_ref(&pair)).await?;
    let current = settlement_close::Entity::find_by_id(pair.clone())
        .lock_exclusive()
        .one(txn)
        .await
        .map_err(storage)?
        .map_or(0, |r| r.closed_until);
    if end <= current {
        return Ok(None);
    }
    let done = settlement_close::Entity::update_many()
        .col_expr(settlement_close::Column::ClosedUntil, Expr::value(end))
        .col_expr(settlement_close::Column::ClosedAt, Expr::value(now))
        .col_expr(settlement_close::Column::ClosedBy, Expr::value(by))
        .filter(settlement_close::Column::Pair.eq(pair))
        .filter(settlement_close::Column::ClosedUntil.eq(current))
        .exec(txn)
        .await
        .map_err(storage)?;
    if done.rows_affected != 1 {
        return Err(KitError::Storage(StorageError::Conflict(
            "closed concurrently".into(),
        )));
    }
    Ok(Some(current))
}

/// Posts one balanced ledger transaction; refuses (INTERNAL) one that does not balance.
/// It is dated `at`, or at the end of the last closed period between its parties when that
/// is later (so a closed period never changes). Returns its id and date (`None` when there
/// was nothing to post). The closed periods are read (and locked) now; the postings' rows are
/// staged in `writes`, sent with the transaction's other staged writes in one trip (nothing
/// reads a transaction's postings in the transaction that posts them: only ledger reads and
/// a period's close, each in a transaction of its own, do).
pub(crate) async fn post(
    txn: &impl ConnectionTrait,
    writes: &mut lianyu_kit::writes::Writes,
    kind: &str,
    benefit_id: &str,
    redemption_id: Option<&str>,
    postings: &[Posting],
    at: i64,
) -> Result<Option<(String, i64)>, KitError> {
    if postings.is_empty() {
        return Ok(None);
    }
    if !crate::domain::balanced(postings) {
        return Err(KitError::Internal(
            "an unbalanced ledger transaction".into(),
        ));
    }
    let mut parties: Vec<&str> = postings.iter().map(|p| p.partner.as_str()).collect();
    parties.sort_unstable();
    parties.dedup();
    let at = Ord::max(at, closed_until_locked(txn, &parties).await?);
    let transaction_id = uuid::Uuid::now_v7().simple().to_string();
    let rows = posting::Entity::insert_many(postings.iter().map(|p| posting::ActiveModel {
        transaction_id: Set(transaction_id.clone()),
        kind: Set(kind.to_owned()),
        partner_id: Set(p.partner.to_string()),
        account: Set(p.account.clone()),
        currency: Set(p.currency.clone()),
        amount: Set(p.amount),
        benefit_id: Set(benefit_id.to_owned()),
        redemption_id: Set(redemption_id.map(str::to_owned)),
        posted_at: Set(at),
        member_id: Set(p.member.clone()),
        ..Default::default()
    }));
    writes.add(txn.get_database_backend(), &rows);
    Ok(Some((transaction_id, at)))
}

/// `partner`'s postings posted in [from, until), oldest first, each transaction's together
/// (ordered by date, then transaction, so concurrent transactions never interleave), after
/// the transaction `after` (its date and id).
pub(crate) async fn postings_of(
    conn: &impl ConnectionTrait,
    partner: &str,
    from: Option<i64>,
    until: Option<i64>,
    after: Option<(i64, &str)>,
    limit: Option<u64>,
) -> Result<Vec<PostingRow>, KitError> {
    let mut query = posting::Entity::find()
        .filter(posting::Column::PartnerId.eq(partner))
        .order_by_asc(posting::Column::PostedAt)
        .order_by_asc(posting::Column::TransactionId)
        .order_by_asc(posting::Column::Id);
    if let Some(from) = from {
        query = query.filter(posting::Column::PostedAt.gte(from));
    }
    if let Some(until) = until {
        query = query.filter(posting::Column::PostedAt.lt(until));
    }
    if let Some((at, transaction)) = after {
        query = query.filter(
            sea_orm::Condition::any()
                .add(posting::Column::PostedAt.gt(at))
                .add(
                    sea_orm::Condition::all()
                        .add(posting::Column::PostedAt.eq(at))
                        .add(posting::Column::TransactionId.gt(transaction)),
                ),
        );
    }
    if let Some(limit) = limit {
        query = query.limit(limit);
    }
    query.all(conn).await.map_err(storage)
}

/// How many ledger transactions have been posted.
pub(crate) async fn transactions(conn: &impl ConnectionTrait) -> Result<u64, KitError> {
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT COUNT(DISTINCT transaction_id) AS n FROM ledger_postings",
        ))
        .await
        .map_err(storage)?;
    let n: i64 = match row {
        Some(row) => row.try_get("", "n").map_err(storage)?,
        None => 0,
    };
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Every ledger transaction's sum per currency that is not zero: empty when the ledger
/// balances (the audit).
pub(crate) async fn unbalanced(
    conn: &impl ConnectionTrait,
) -> Result<Vec<(String, String, i64)>, KitError> {
    #[derive(Debug, sea_orm::FromQueryResult)]
    struct Sum {
        transaction_id: String,
        currency: String,
        total: i64,
    }
    let sums = posting::Entity::find()
        .select_only()
        .column(posting::Column::TransactionId)
        .column(posting::Column::Currency)
        .column_as(Expr::cust("CAST(SUM(amount) AS BIGINT)"), "total")
        .group_by(posting::Column::TransactionId)
        .group_by(posting::Column::Currency)
        .into_model::<Sum>()
        .all(conn)
        .await
        .map_err(storage)?;
    Ok(sums
        .into_iter()
        .filter(|s| s.total != 0)
        .map(|s| (s.transaction_id, s.currency, s.total))
        .collect())
}

fn to_domain(row: benefit::Model, parties: Vec<benefit_party::Model>) -> Benefit {
    let money = |currency: Option<String>, minor: Option<i64>| {
        currency
            .zip(minor)
            .and_then(|(c, m)| Money::new(&c, m).ok())
    };
    let mut honoured_by: Vec<_> = parties
        .into_iter()
        .filter(|p| p.honours)
        .map(|p| PartnerId::new(p.partner_id))
        .collect();
    honoured_by.sort();
    Benefit {
        id: row.id,
        display_name: row.display_name,
        kind: match row.kind {
            Kind::FixedCoupon => BenefitKind::FixedCoupon,
            Kind::PercentCoupon => BenefitKind::PercentCoupon,
            Kind::ThresholdCoupon => BenefitKind::ThresholdCoupon,
            Kind::Points => BenefitKind::Points,
            Kind::StoredValue => BenefitKind::StoredValue,
            Kind::Gift => BenefitKind::Gift,
            Kind::Service => BenefitKind::Service,
        },
        issuer: PartnerId::new(row.issuer),
        funder: PartnerId::new(row.funder),
        honoured_by,
        value: money(row.value_currency, row.value_minor_units),
        threshold: money(row.threshold_currency, row.threshold_minor_units),
        percent_off_bps: row.percent_off_bps,
        budget_units: row.budget_units,
        granted_units: row.granted_units,
        per_member_limit: row.per_member_limit,
        valid_from_millis: row.valid_from,
        valid_until_millis: row.valid_until,
        state: match row.state {
            State::Draft => BenefitState::Draft,
            State::Active => BenefitState::Active,
            State::Paused => BenefitState::Paused,
            State::Ended => BenefitState::Ended,
        },
        valid_days: row.valid_days,
        funding_accepted: row.funding_accepted,
        top_up_bonus_bps: row.top_up_bonus_bps,
        funder_share_bps: row.funder_share_bps,
        stores: lines(&row.stores),
        categories: lines(&row.categories),
        stacking_group: row.stacking_group,
        budget_value: money(
            row.budget_value_currency.clone(),
            row.budget_value_minor_units,
        ),
        spent_value: row.spent_value_minor_units,
        proposed_budget_units: row.proposed_budget_units,
        proposed_budget_value: money(
            row.budget_value_currency,
            row.proposed_budget_value_minor_units,
        ),
    }
}

/// The values stored one per line.
fn lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn kind(k: BenefitKind) -> Kind {
    match k {
        BenefitKind::FixedCoupon => Kind::FixedCoupon,
        BenefitKind::PercentCoupon => Kind::PercentCoupon,
        BenefitKind::ThresholdCoupon => Kind::ThresholdCoupon,
        BenefitKind::Points => Kind::Points,
        BenefitKind::StoredValue => Kind::StoredValue,
        BenefitKind::Gift => Kind::Gift,
        BenefitKind::Service => Kind::Service,
    }
}

fn state(s: BenefitState) -> State {
    match s {
        BenefitState::Draft => State::Draft,
        BenefitState::Active => State::Active,
        BenefitState::Paused => State::Paused,
        BenefitState::Ended => State::Ended,
    }
}

#[cfg(test)]
mod tests {
    use lianyu_kit::testing::TestDatabase;
    use sea_orm::{DatabaseConnection, PaginatorTrait, TransactionTrait};

    use super::*;

    async fn database(test: &str) -> (TestDatabase, DatabaseConnection) {
        let database = TestDatabase::new(test).await;
        let db = lianyu_kit::storage::connect(&database.url, "entitlements", None)
            .await
            .unwrap();
        Migrator::up(&db, None).await.unwrap();
        (database, db)
    }

    /// A fixed coupon "{id}" in `state` with a budget of `budget` units, at most `limit` a
    /// member (0: no limit).
    async fn coupon(db: &DatabaseConnection, id: &str, state: State, budget: i64, limit: i32) {
        benefit::ActiveModel {
            id: Set(id.into()),
            display_name: Set("coupon".into()),
            kind: Set(Kind::FixedCoupon),
            issuer: Set("brand".into()),
            funder: Set("brand".into()),
            value_currency: Set(Some("CNY".into())),
            value_minor_units: Set(Some(1_000)),
            threshold_currency: Set(None),
            threshold_minor_units: Set(None),
            percent_off_bps: Set(0),
            budget_units: Set(budget),
            granted_units: Set(0),
            per_member_limit: Set(limit),
            valid_from: Set(0),
            valid_until: Set(i64::MAX),
            state: Set(state),
            created_at: Set(0),
            valid_days: Set(0),
            funding_accepted: Set(true),
            top_up_bonus_bps: Set(0),
            funder_share_bps: Set(10_000),
            stores: Set(String::new()),
            categories: Set(String::new()),
            stacking_group: Set(String::new()),
            budget_value_currency: Set(None),
            budget_value_minor_units: Set(None),
            spent_value_minor_units: Set(0),
            proposed_budget_units: Set(None),
            proposed_budget_value_minor_units: Set(None),
        }
        .insert(db)
        .await
        .unwrap();
    }

    /// What is stored of `benefit`: units granted, holdings and units of `member`.
    async fn standing(db: &impl ConnectionTrait, benefit: &str, member: &str) -> (i64, u64, u64) {
        let granted = benefit::Entity::find_by_id(benefit)
            .one(db)
            .await
            .unwrap()
            .unwrap()
            .granted_units;
        let holdings = holding::Entity::find()
            .filter(holding::Column::BenefitId.eq(benefit))
            .filter(holding::Column::Member.eq(member))
            .count(db)
            .await
            .unwrap();
        let units = wallet_item::Entity::find()
            .filter(wallet_item::Column::BenefitId.eq(benefit))
            .filter(wallet_item::Column::Member.eq(member))
            .count(db)
            .await
            .unwrap();
        (granted, holdings, units)
    }

    /// A unit is taken from the budget and stored for the member together, or not at all (in
    /// one trip to the database, on SQLite and on PostgreSQL): past the member's limit nothing more is stored for
    /// them, and with the budget spent or the benefit not ACTIVE nothing is written.
    #[tokio::test]
    async fn a_unit_is_taken_and_stored_together_within_the_budget_and_the_members_limit() {
        let (_database, db) = database("entitlements_take_and_store").await;
        coupon(&db, "drop", State::Active, 2, 1).await;
        coupon(&db, "paused", State::Paused, 2, 0).await;
        let mut n = 0;
        let mut give = async |benefit: &str, member: &str| {
            n += 1;
            let item = ItemRow {
                id: format!("item-{n}"),
                benefit_id: benefit.into(),
                member: member.into(),
                holder: "brand".into(),
                state: entities::ItemState::Available,
                granted_at: 1,
                expires_at: 2,
                claim_code: Some("live".into()),
            };
            let txn = db.begin().await.unwrap();
            let given = take_and_store_unit(&txn, &item).await;
            let inside = standing(&txn, benefit, member).await;
            if matches!(given, Ok(true)) {
                txn.commit().await.unwrap();
                let stored = wallet_item::Entity::find_by_id(item.id.clone())
                    .one(&db)
                    .await
                    .unwrap();
                assert_eq!(stored.as_ref(), Some(&item), "the unit as given");
            } else {
                txn.rollback().await.unwrap();
            }
            (
                given.map_err(|e| lianyu_kit::ServiceError::reason(&e).to_owned()),
                inside,
            )
        };
        assert_eq!(give("drop", "ana").await, (Ok(true), (1, 1, 1)));
        // Over the limit: the take is undone with the caller's transaction; nothing more of
        // hers was stored even inside it.
        let (refused, (_, holdings, units)) = give("drop", "ana").await;
        assert_eq!(refused, Err("PER_MEMBER_LIMIT".to_owned()));
        assert_eq!((holdings, units), (1, 1));
        assert_eq!(standing(&db, "drop", "ana").await, (1, 1, 1));
        assert_eq!(give("drop", "bo").await, (Ok(true), (2, 1, 1)));
        assert_eq!(
            give("drop", "cy").await,
            (Ok(false), (2, 0, 0)),
            "budget spent"
        );
        assert_eq!(
            give("paused", "cy").await,
            (Ok(false), (0, 0, 0)),
            "not ACTIVE"
        );
    }
}

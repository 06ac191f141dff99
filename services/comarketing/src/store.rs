//! The comarketing repository: its migrations (the kit's tables first) and the finders, each
//! scoped to the calling partner. It returns domain types; no row leaves here.

mod audience;
mod contacts;
mod entities;
mod funnel;
pub mod synthetic;

pub(crate) use audience::*;
pub(crate) use contacts::*;
pub(crate) use funnel::*;

use lianyu_kit::{
    KitError,
    ids::PartnerId,
    money::Money,
    page::Page,
    storage::{StorageError, with_kit_tables},
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use sea_orm_migration::{MigrationTrait, MigratorTrait, SchemaManager, async_trait::async_trait};

use crate::domain::{Campaign, CampaignState};
use entities::{State, campaign, campaign_link, campaign_partner};

/// A fresh comarketing database with its schema, on the backend the tests run on.
#[cfg(test)]
pub(crate) async fn test_database(
    test: &str,
) -> (
    lianyu_kit::testing::TestDatabase,
    sea_orm::DatabaseConnection,
) {
    lianyu_kit::testing::TestDatabase::migrated::<Migrator>(test, "comarketing").await
}

pub(crate) struct Migrator;

#[async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        with_kit_tables(vec![
            Box::new(Campaigns),
            Box::new(CampaignColumns),
            Box::new(Audience),
            Box::new(SessionHosts),
            Box::new(ConsentsByMember),
            Box::new(ContactsByMemberTime),
            Box::new(ErasuresAndMerges),
        ])
    }
}

lianyu_kit::tables_migration!(
    /// Campaigns and their participants.
    Campaigns,
    "m20261202_000010_comarketing_campaigns",
    [campaign::Entity, campaign_partner::Entity]
);

lianyu_kit::tables_migration!(
    /// Attached benefits and sessions, members and what the mesh knows of them, consents,
    /// segments, operations, overlap queries, contacts, policies and the funnel.
    Audience,
    "m20261203_000012_comarketing_audience",
    [
        campaign_link::Entity,
        entities::member::Entity,
        entities::member_fact::Entity,
        entities::consent::Entity,
        entities::segment::Entity,
        entities::operation::Entity,
        entities::overlap_query::Entity,
        entities::contact::Entity,
        entities::contact_lock::Entity,
        entities::quiet_hours::Entity,
        entities::contact_policy::Entity,
        entities::funnel_event::Entity,
        entities::campaign_tally::Entity
    ]
);

lianyu_kit::tables_migration!(
    /// Live sessions' co-hosts, from live's feed.
    SessionHosts,
    "m20261203_000013_comarketing_session_hosts",
    [entities::session_host::Entity]
);

lianyu_kit::tables_migration!(
    /// Erasures and merges remembered, for what the other feeds tell late.
    ErasuresAndMerges,
    "m20261206_000016_comarketing_departures",
    [entities::erasure::Entity, entities::merged_member::Entity]
);

/// Consents looked up by member: a member's grounds for a grantee were a search of the
/// primary key's prefix (grantee, purpose) — every consent to the grantee, read for one
/// member. With this index the lookup goes straight to the member's few rows.
pub(crate) struct ConsentsByMember;

impl sea_orm_migration::MigrationName for ConsentsByMember {
    fn name(&self) -> &str {
        "m20261204_000014_comarketing_consents_by_member"
    }
}

#[async_trait]
impl MigrationTrait for ConsentsByMember {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        use entities::consent::Column;
        manager
            .create_index(
                sea_orm_migration::prelude::Index::create()
                    .if_not_exists()
                    .name("idx-consents-member-grantee-purpose")
                    .table(entities::consent::Entity)
                    .col(Column::MemberIdx)
                    .col(Column::Grantee)
                    .col(Column::Purpose)
                    .col(Column::Collector)
                    .to_owned(),
            )
            .await
    }
}

/// A member's contacts by time, with what decides whether each counts: the cap's count
/// (RequestContact, under the member's lock, on the single writer on SQLite) reads only this
/// index instead of visiting every contact row of the member.
pub(crate) struct ContactsByMemberTime;

impl sea_orm_migration::MigrationName for ContactsByMemberTime {
    fn name(&self) -> &str {
        "m20261205_000015_comarketing_contacts_by_member_time"
    }
}

#[async_trait]
impl MigrationTrait for ContactsByMemberTime {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        use entities::contact::Column;
        manager
            .create_index(
                sea_orm_migration::prelude::Index::create()
                    .if_not_exists()
                    .name("idx-contacts-member-requested-expires-sent")
                    .table(entities::contact::Entity)
                    .col(Column::MemberIdx)
                    .col(Column::RequestedAt)
                    .col(Column::ExpiresAt)
                    .col(Column::SentAt)
                    .to_owned(),
            )
            .await
    }
}

/// The campaign columns the first version lacked, and its states renamed to the contract's
/// (proposed → draft, accepted → scheduled, live → running).
pub(crate) struct CampaignColumns;

impl sea_orm_migration::MigrationName for CampaignColumns {
    fn name(&self) -> &str {
        "m20261203_000011_comarketing_campaign_columns"
    }
}

#[async_trait]
impl MigrationTrait for CampaignColumns {
    async fn up(&self, manager: &SchemaManager) -> Result<(), sea_orm::DbErr> {
        use sea_orm_migration::prelude::{Alias, ColumnDef};
        let text = |name: &str| {
            ColumnDef::new(Alias::new(name))
                .string()
                .not_null()
                .default("")
                .to_owned()
        };
        let number = |name: &str| {
            ColumnDef::new(Alias::new(name))
                .big_integer()
                .not_null()
                .default(0)
                .to_owned()
        };
        lianyu_kit::storage::add_columns(
            manager,
            "campaigns",
            [
                text("alliance"),
                text("channels"),
                number("spent"),
                ColumnDef::new(Alias::new("exhausted_at"))
                    .big_integer()
                    .null()
                    .to_owned(),
                number("updated_at"),
            ],
        )
        .await?;
        let db = manager.get_connection();
        for (old, new) in [
            ("proposed", "draft"),
            ("accepted", "scheduled"),
            ("live", "running"),
        ] {
            db.execute_unprepared(&format!(
                "UPDATE campaigns SET state = '{new}' WHERE state = '{old}'"
            ))
            .await?;
        }
        Ok(())
    }
}

pub(crate) fn storage(e: sea_orm::DbErr) -> KitError {
    KitError::Storage(StorageError::from(e))
}

fn to_row_state(s: CampaignState) -> State {
    match s {
        CampaignState::Draft => State::Draft,
        CampaignState::Scheduled => State::Scheduled,
        CampaignState::Running => State::Running,
        CampaignState::Ended => State::Ended,
    }
}

/// Stores a proposed campaign with its participants and links, inside the caller's
/// transaction.
pub(crate) async fn insert_campaign(
    txn: &impl ConnectionTrait,
    c: &Campaign,
) -> Result<(), KitError> {
    row(c).insert(txn).await.map_err(storage)?;
    insert_parts(txn, c).await
}

/// A campaign's row.
fn row(c: &Campaign) -> campaign::ActiveModel {
    campaign::ActiveModel {
        id: Set(c.id.clone()),
        display_name: Set(c.display_name.clone()),
        start_time: Set(c.start_millis),
        end_time: Set(c.end_millis),
        state: Set(to_row_state(c.state)),
        created_at: Set(c.created_at),
        alliance: Set(c.alliance.clone()),
        channels: Set(channels(c)),
        spent: Set(c.spent),
        exhausted_at: Set(c.exhausted_at),
        updated_at: Set(c.updated_at),
    }
}

fn channels(c: &Campaign) -> String {
    c.channels
        .iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

async fn insert_parts(txn: &impl ConnectionTrait, c: &Campaign) -> Result<(), KitError> {
    for (position, p) in (0..).zip(&c.partners) {
        let share = c.budget.iter().find(|(q, _)| q == p).map(|(_, m)| m);
        campaign_partner::ActiveModel {
            campaign_id: Set(c.id.clone()),
            partner_id: Set(p.to_string()),
            position: Set(position),
            accepted: Set(c.accepted_by.contains(p)),
            budget_currency: Set(share.map(|m| m.currency().to_owned())),
            budget_minor_units: Set(share.map(Money::minor_units)),
        }
        .insert(txn)
        .await
        .map_err(storage)?;
    }
    for (kind, targets) in [("benefit", &c.benefits), ("session", &c.sessions)] {
        for (position, t) in (0..).zip(targets) {
            campaign_link::ActiveModel {
                campaign_id: Set(c.id.clone()),
                kind: Set(kind.to_owned()),
                target: Set(t.clone()),
                position: Set(position),
            }
            .insert(txn)
            .await
            .map_err(storage)?;
        }
    }
    Ok(())
}

/// Writes back a changed campaign: its row, participants and links.
pub(crate) async fn save_campaign(
    txn: &impl ConnectionTrait,
    c: &Campaign,
) -> Result<(), KitError> {
    row(c).update(txn).await.map_err(storage)?;
    campaign_partner::Entity::delete_many()
        .filter(campaign_partner::Column::CampaignId.eq(&c.id))
        .exec(txn)
        .await
        .map_err(storage)?;
    campaign_link::Entity::delete_many()
        .filter(campaign_link::Column::CampaignId.eq(&c.id))
        .exec(txn)
        .await
        .map_err(storage)?;
    insert_parts(txn, c).await
}

/// The campaign `id` when `partner` takes part; `None` otherwise, so another partners'
/// campaign and a missing one look alike. `lock` holds its row to the end of the transaction
/// (PostgreSQL `FOR UPDATE`; SQLite's one writer serialises anyway), for a read-modify-write
/// that loses no concurrent acceptance.
pub(crate) async fn campaign_for_participant(
    conn: &impl ConnectionTrait,
    partner: &str,
    id: &str,
    lock: bool,
) -> Result<Option<Campaign>, KitError> {
    let mut query = campaign::Entity::find_by_id(id);
    if lock {
        query = query.lock_exclusive();
    }
    let Some(row) = query.one(conn).await.map_err(storage)? else {
        return Ok(None);
    };
    let c = assemble(conn, row).await?;
    Ok(c.includes(partner).then_some(c))
}

async fn assemble(conn: &impl ConnectionTrait, row: campaign::Model) -> Result<Campaign, KitError> {
    let participants = campaign_partner::Entity::find()
        .filter(campaign_partner::Column::CampaignId.eq(&row.id))
        .order_by_asc(campaign_partner::Column::Position)
        .all(conn)
        .await
        .map_err(storage)?;
    let links = campaign_link::Entity::find()
        .filter(campaign_link::Column::CampaignId.eq(&row.id))
        .order_by_asc(campaign_link::Column::Position)
        .all(conn)
        .await
        .map_err(storage)?;
    let mut partners = Vec::new();
    let mut budget = Vec::new();
    let mut accepted_by = Vec::new();
    for p in participants {
        let id = PartnerId::new(p.partner_id);
        if let Some(share) = p
            .budget_currency
            .zip(p.budget_minor_units)
            .and_then(|(c, m)| Money::new(&c, m).ok())
        {
            budget.push((id.clone(), share));
        }
        if p.accepted {
            accepted_by.push(id.clone());
        }
        partners.push(id);
    }
    let targets = |kind: &str| {
        links
            .iter()
            .filter(|l| l.kind == kind)
            .map(|l| l.target.clone())
            .collect()
    };
    Ok(Campaign {
        benefits: targets("benefit"),
        sessions: targets("session"),
        id: row.id,
        display_name: row.display_name,
        partners,
        budget,
        start_millis: row.start_time,
        end_millis: row.end_time,
        state: match row.state {
            State::Draft => CampaignState::Draft,
            State::Scheduled => CampaignState::Scheduled,
            State::Running => CampaignState::Running,
            State::Ended => CampaignState::Ended,
        },
        accepted_by,
        alliance: row.alliance,
        channels: row
            .channels
            .split(',')
            .filter_map(|c| c.parse().ok())
            .collect(),
        spent: row.spent,
        exhausted_at: row.exhausted_at,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// A page of the campaigns `partner` takes part in, newest first (ids are time-ordered).
pub(crate) async fn list_campaigns(
    conn: &impl ConnectionTrait,
    partner: &str,
    state: Option<CampaignState>,
    page: &Page,
) -> Result<(Vec<Campaign>, String), KitError> {
    let mut ids = campaign_partner::Entity::find()
        .filter(campaign_partner::Column::PartnerId.eq(partner))
        .select_only()
        .column(campaign_partner::Column::CampaignId);
    if let Some(after) = &page.after {
        ids = ids.filter(campaign_partner::Column::CampaignId.lt(after.as_str()));
    }
    let ids: Vec<String> = ids
        .order_by_desc(campaign_partner::Column::CampaignId)
        .into_tuple()
        .all(conn)
        .await
        .map_err(storage)?;
    let mut rows = Vec::new();
    for id in ids {
        let Some(row) = campaign::Entity::find_by_id(&id)
            .one(conn)
            .await
            .map_err(storage)?
        else {
            continue;
        };
        if state.is_some_and(|s| to_row_state(s) != row.state) {
            continue;
        }
        rows.push(assemble(conn, row).await?);
        if rows.len() as u64 > page.size {
            break;
        }
    }
    Ok(page.finish(rows, |c| c.id.clone()))
}

/// A campaign by id, whoever takes part (for the feeds' attribution).
pub(crate) async fn campaign_by_id(
    conn: &impl ConnectionTrait,
    id: &str,
) -> Result<Option<Campaign>, KitError> {
    match campaign::Entity::find_by_id(id)
        .one(conn)
        .await
        .map_err(storage)?
    {
        Some(row) => Ok(Some(assemble(conn, row).await?)),
        None => Ok(None),
    }
}

/// The RUNNING campaigns a benefit or session (`kind` "benefit" / "session") is attached to.
pub(crate) async fn running_campaigns_linked(
    conn: &impl ConnectionTrait,
    kind: &str,
    target: &str,
) -> Result<Vec<Campaign>, KitError> {
    let ids: Vec<String> = campaign_link::Entity::find()
        .filter(campaign_link::Column::Kind.eq(kind))
        .filter(campaign_link::Column::Target.eq(target))
        .select_only()
        .column(campaign_link::Column::CampaignId)
        .into_tuple()
        .all(conn)
        .await
        .map_err(storage)?;
    let mut out = Vec::new();
    for id in ids {
        if let Some(c) = campaign_by_id(conn, &id).await?
            && c.state == CampaignState::Running
        {
            out.push(c);
        }
    }
    Ok(out)
}

/// Adds `by` to a campaign's spend; returns the campaign's new spend.
pub(crate) async fn add_spent(
    conn: &impl ConnectionTrait,
    campaign: &str,
    by: i64,
) -> Result<i64, KitError> {
    use sea_orm::sea_query::{Expr, ExprTrait};
    campaign::Entity::update_many()
        .col_expr(
            campaign::Column::Spent,
            Expr::col(campaign::Column::Spent).add(by),
        )
        .filter(campaign::Column::Id.eq(campaign))
        .exec(conn)
        .await
        .map_err(storage)?;
    let spent: Option<i64> = campaign::Entity::find_by_id(campaign)
        .select_only()
        .column(campaign::Column::Spent)
        .into_tuple()
        .one(conn)
        .await
        .map_err(storage)?;
    Ok(spent.unwrap_or(0))
}

/// Marks a campaign's budget spent at `at` (once).
pub(crate) async fn mark_exhausted(
    conn: &impl ConnectionTrait,
    campaign: &str,
    at: i64,
) -> Result<(), KitError> {
    campaign::Entity::update_many()
        .col_expr(
            campaign::Column::ExhaustedAt,
            sea_orm::sea_query::Expr::value(at),
        )
        .filter(campaign::Column::Id.eq(campaign))
        .filter(campaign::Column::ExhaustedAt.is_null())
        .exec(conn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// Campaigns whose budget is spent and whose benefits entitlements has not yet been told to
/// stop granting.
pub(crate) async fn exhausted_unhalted(
    conn: &impl ConnectionTrait,
) -> Result<Vec<Campaign>, KitError> {
    let rows = campaign::Entity::find()
        .filter(campaign::Column::ExhaustedAt.is_not_null())
        .all(conn)
        .await
        .map_err(storage)?;
    let mut out = Vec::new();
    for row in rows {
        let halted = tallies(conn, &row.id)
            .await?
            .iter()
            .any(|(k, v)| k == "halted" && *v > 0);
        if !halted {
            out.push(assemble(conn, row).await?);
        }
    }
    Ok(out)
}

/// Records a live session's co-hosts.
pub(crate) async fn record_session_hosts(
    conn: &impl ConnectionTrait,
    session: &str,
    hosts: &[&str],
) -> Result<(), KitError> {
    let rows: Vec<_> = hosts
        .iter()
        .map(|h| entities::session_host::ActiveModel {
            session_id: Set(session.to_owned()),
            partner: Set((*h).to_owned()),
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    entities::session_host::Entity::insert_many(rows)
        .on_conflict(
            sea_orm::sea_query::OnConflict::columns([
                entities::session_host::Column::SessionId,
                entities::session_host::Column::Partner,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(conn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// A live session's co-hosts, as far as live's feed has told.
pub(crate) async fn session_hosts(
    conn: &impl ConnectionTrait,
    session: &str,
) -> Result<Vec<String>, KitError> {
    entities::session_host::Entity::find()
        .filter(entities::session_host::Column::SessionId.eq(session))
        .select_only()
        .column(entities::session_host::Column::Partner)
        .into_tuple()
        .all(conn)
        .await
        .map_err(storage)
}

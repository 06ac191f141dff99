//! The comarketing repository: its migrations (the kit's tables first) and the campaign
//! finders, each scoped to the calling partner. It returns domain types; no row leaves here.

mod entities;

use lianyu_kit::{
    KitError,
    ids::PartnerId,
    money::Money,
    storage::{StorageError, with_kit_tables},
};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder,
};
use sea_orm_migration::{MigrationTrait, MigratorTrait, async_trait::async_trait};

use crate::domain::{Campaign, CampaignState};
use entities::{State, campaign, campaign_partner};

pub(crate) struct Migrator;

#[async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        with_kit_tables(vec![Box::new(Campaigns)])
    }
}

lianyu_kit::tables_migration!(
    /// Campaigns and their participants.
    Campaigns,
    "m20261202_000010_comarketing_campaigns",
    [campaign::Entity, campaign_partner::Entity]
);

/// Stores a proposed campaign with its participants, inside the caller's transaction.
pub(crate) async fn insert_campaign(
    txn: &impl ConnectionTrait,
    c: &Campaign,
    at: i64,
) -> Result<(), KitError> {
    campaign::ActiveModel {
        id: Set(c.id.clone()),
        display_name: Set(c.display_name.clone()),
        start_time: Set(c.start_millis),
        end_time: Set(c.end_millis),
        state: Set(match c.state {
            CampaignState::Proposed => State::Proposed,
            CampaignState::Accepted => State::Accepted,
            CampaignState::Live => State::Live,
            CampaignState::Ended => State::Ended,
        }),
        created_at: Set(at),
    }
    .insert(txn)
    .await
    .map_err(StorageError::from)?;
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
        .map_err(StorageError::from)?;
    }
    Ok(())
}

/// The campaign `id` when `partner` takes part; `None` otherwise, so another partners'
/// campaign and a missing one look alike.
pub(crate) async fn campaign_for_participant(
    conn: &impl ConnectionTrait,
    partner: &str,
    id: &str,
) -> Result<Option<Campaign>, KitError> {
    let participants = campaign_partner::Entity::find()
        .filter(campaign_partner::Column::CampaignId.eq(id))
        .order_by_asc(campaign_partner::Column::Position)
        .all(conn)
        .await
        .map_err(StorageError::from)?;
    if !participants.iter().any(|p| p.partner_id == partner) {
        return Ok(None);
    }
    let Some(row) = campaign::Entity::find_by_id(id)
        .one(conn)
        .await
        .map_err(StorageError::from)?
    else {
        return Ok(None);
    };
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
    Ok(Some(Campaign {
        id: row.id,
        display_name: row.display_name,
        partners,
        budget,
        start_millis: row.start_time,
        end_millis: row.end_time,
        state: match row.state {
            State::Proposed => CampaignState::Proposed,
            State::Accepted => CampaignState::Accepted,
            State::Live => CampaignState::Live,
            State::Ended => CampaignState::Ended,
        },
        accepted_by,
    }))
}

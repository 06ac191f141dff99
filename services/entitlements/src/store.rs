//! The entitlements repository: its migrations (the kit's tables first) and the benefit
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
};
use sea_orm_migration::{MigrationTrait, MigratorTrait, async_trait::async_trait};

use crate::domain::{Benefit, BenefitKind, BenefitState};
use entities::{Kind, State, benefit, benefit_party};

pub(crate) struct Migrator;

#[async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        with_kit_tables(vec![Box::new(Benefits)])
    }
}

lianyu_kit::tables_migration!(
    /// Benefit definitions and who may see them.
    Benefits,
    "m20261202_000010_entitlements_benefits",
    [benefit::Entity, benefit_party::Entity]
);

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
    Ok(Some(Benefit {
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
    }))
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

//! Synthetic members for `lianyu bench segment` and `overlap`: a million members and what the
//! mesh would know of them, written straight into comarketing's tables (enrolling a million
//! people through identity would measure identity, not segments). Deterministic: member `i`
//! always gets the same facts.

use lianyu_kit::KitError;
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, EntityTrait, QuerySelect, TransactionTrait,
    sea_query::ExprTrait,
};

use super::{
    entities::{consent, member, member_fact},
    storage,
};

/// Who the synthetic members are known to and what they did.
pub struct Synthetic<'a> {
    pub brand: &'a str,
    pub mall: &'a str,
    /// A live session id attached to the campaign.
    pub session: &'a str,
    /// A benefit id attached to the campaign.
    pub benefit: &'a str,
    /// "Now", in milliseconds: activity spreads over the year before it.
    pub now: i64,
}

/// A cheap deterministic hash of `i` (splitmix64), for spreading facts.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Adds `members` synthetic members (`syn{i}` mesh ids) with their facts: every one enrolled
/// at the brand, 60 % at the mall, 10 % tagged "vip" at the brand, a tier at the mall for
/// half, 20 % joined the session, 15 % claimed and 5 % redeemed the benefit, last active at
/// some time in the past year; 70 % of those at both consented to JOINT_ANALYTICS by each
/// partner through the other (without it, neither partner's segments read the other's
/// records of them). Returns the fact rows written.
pub async fn seed(
    db: &sea_orm::DatabaseConnection,
    members: usize,
    s: &Synthetic<'_>,
) -> Result<u64, KitError> {
    const CHUNK: usize = 20_000;
    let year = 365 * 24 * 3_600_000_i64;
    let mut facts_written = 0u64;
    let mut start = 0usize;
    // After any member already known (numbers are assigned by the database otherwise).
    let first: Option<i32> = member::Entity::find()
        .select_only()
        .column_as(
            sea_orm::sea_query::Expr::col(member::Column::Idx).max(),
            "m",
        )
        .into_tuple::<Option<i32>>()
        .one(db)
        .await
        .map_err(storage)?
        .flatten();
    let offset = usize::try_from(first.unwrap_or(0)).unwrap_or(0) + 1;
    while start < members {
        let end = (start + CHUNK).min(members);
        let txn = db.begin().await.map_err(storage)?;
        let rows: Vec<member::ActiveModel> =
            (start..end)
                .map(|i| member::ActiveModel {
                    idx: Set(i32::try_from(i + offset).unwrap_or(i32::MAX)),
                    mesh_member: Set(format!("syn{i:08}")),
                    last_at: Set(
                        s.now - i64::try_from(mix(i as u64) % 365).unwrap_or(0) * (year / 365)
                    ),
                })
                .collect();
        for chunk in rows.chunks(5_000) {
            member::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&txn)
                .await
                .map_err(storage)?;
        }
        let mut facts = Vec::new();
        let mut consents = Vec::new();
        for i in start..end {
            let h = mix(i as u64);
            let idx = i32::try_from(i + offset).unwrap_or(i32::MAX);
            let at = s.now - i64::try_from(h % 365).unwrap_or(0) * (year / 365);
            let mut add = |kind: &str, subject: &str, partner: &str| {
                facts.push(member_fact::ActiveModel {
                    kind: Set(kind.to_owned()),
                    subject: Set(subject.to_owned()),
                    partner: Set(partner.to_owned()),
                    member_idx: Set(idx),
                    first_at: Set(at),
                    last_at: Set(at),
                });
            };
            add("enrolled", "", s.brand);
            let pct = h % 100;
            if pct < 60 {
                add("enrolled", "", s.mall);
                // Seven in ten of them let each partner count them with the other's records.
                if (h >> 40) % 10 < 7 {
                    for (grantee, collector) in [(s.mall, s.brand), (s.brand, s.mall)] {
                        consents.push(consent::ActiveModel {
                            grantee: Set(grantee.to_owned()),
                            purpose: Set(super::JOINT_ANALYTICS),
                            collector: Set(collector.to_owned()),
                            member_idx: Set(idx),
                        });
                    }
                }
            }
            if (h >> 8).is_multiple_of(10) {
                add("tag", "vip", s.brand);
            }
            match (h >> 16) % 4 {
                0 => add("tier", "gold", s.mall),
                1 => add("tier", "silver", s.mall),
                _ => {}
            }
            if (h >> 24).is_multiple_of(5) {
                add("joined", s.session, s.brand);
            }
            let claims = (h >> 32) % 100;
            if claims < 15 {
                add("claimed", s.benefit, s.mall);
            }
            if claims < 5 {
                add("redeemed", s.benefit, s.mall);
            }
        }
        for chunk in consents.chunks(5_000) {
            consent::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&txn)
                .await
                .map_err(storage)?;
        }
        facts_written += facts.len() as u64;
        for chunk in facts.chunks(5_000) {
            member_fact::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&txn)
                .await
                .map_err(storage)?;
        }
        txn.commit().await.map_err(storage)?;
        start = end;
    }
    // PostgreSQL: the serial behind `members.idx` moves past the numbers written by hand.
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        db.execute_unprepared(
            "SELECT setval(pg_get_serial_sequence('members', 'idx'), (SELECT MAX(idx) FROM members))",
        )
        .await
        .map_err(storage)?;
    }
    Ok(facts_written)
}

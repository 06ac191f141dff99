//! Members and what the mesh knows of them, the consent index, segments with their results,
//! operations and the overlap log.

use std::collections::{BTreeMap, HashMap};

use lianyu_kit::{KitError, page::Page, writes::Writes};
use roaring::RoaringBitmap;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter,
    QuerySelect, sea_query::OnConflict,
};

use super::{
    entities::{
        consent, erasure, member, member_fact, merged_member, operation, overlap_query, segment,
    },
    storage,
};
use crate::domain::{operations::OperationFilter, rule::Condition};

/// The dense numbers of `mesh_members` (ids without "meshMembers/"), adding those not yet
/// known, with `at` as their activity.
pub(crate) async fn member_numbers(
    conn: &impl ConnectionTrait,
    mesh_members: &[&str],
    at: i64,
) -> Result<HashMap<String, i32>, KitError> {
    let mut out = HashMap::new();
    for chunk in mesh_members.chunks(500) {
        let rows = chunk.iter().map(|m| member::ActiveModel {
            mesh_member: Set((*m).to_owned()),
            last_at: Set(at),
            ..Default::default()
        });
        member::Entity::insert_many(rows)
            .on_conflict(
                OnConflict::column(member::Column::MeshMember)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(conn)
            .await
            .map_err(storage)?;
        let found: Vec<(i32, String)> = member::Entity::find()
            .filter(member::Column::MeshMember.is_in(chunk.iter().copied()))
            .select_only()
            .columns([member::Column::Idx, member::Column::MeshMember])
            .into_tuple()
            .all(conn)
            .await
            .map_err(storage)?;
        out.extend(found.into_iter().map(|(i, m)| (m, i)));
    }
    Ok(out)
}

/// The dense number of one mesh member, added when new.
pub(crate) async fn member_number(
    conn: &impl ConnectionTrait,
    mesh_member: &str,
    at: i64,
) -> Result<i32, KitError> {
    // One statement: a known member's conflict "updates" it to itself, so its row comes back.
    let row = member::Entity::insert(member::ActiveModel {
        mesh_member: Set(mesh_member.to_owned()),
        last_at: Set(at),
        ..Default::default()
    })
    .on_conflict(
        OnConflict::column(member::Column::MeshMember)
            .update_column(member::Column::MeshMember)
            .to_owned(),
    )
    .exec_with_returning(conn)
    .await
    .map_err(storage)?;
    Ok(row.idx)
}

/// The mesh ids of member numbers, in the order asked (unknown numbers are left out).
pub(crate) async fn mesh_members_of(
    conn: &impl ConnectionTrait,
    numbers: &[u32],
) -> Result<Vec<(u32, String)>, KitError> {
    let ids: Vec<i32> = numbers
        .iter()
        .filter_map(|n| i32::try_from(*n).ok())
        .collect();
    let rows: Vec<(i32, String)> = member::Entity::find()
        .filter(member::Column::Idx.is_in(ids))
        .select_only()
        .columns([member::Column::Idx, member::Column::MeshMember])
        .into_tuple()
        .all(conn)
        .await
        .map_err(storage)?;
    let by: HashMap<i32, String> = rows.into_iter().collect();
    Ok(numbers
        .iter()
        .filter_map(|n| {
            let id = i32::try_from(*n).ok()?;
            by.get(&id).map(|m| (*n, m.clone()))
        })
        .collect())
}

/// A fact to record about a member.
pub(crate) struct Fact<'a> {
    pub(crate) member: i32,
    pub(crate) kind: &'a str,
    pub(crate) subject: &'a str,
    pub(crate) partner: &'a str,
    pub(crate) at: i64,
}

/// Records facts (a repeated one keeps its first time and moves its last, never back).
pub(crate) async fn record_facts(
    conn: &impl ConnectionTrait,
    facts: &[Fact<'_>],
) -> Result<(), KitError> {
    // The facts go in one trip (`Writes`); nothing here reads them back.
    let backend = conn.get_database_backend();
    let mut writes = Writes::new();
    for chunk in facts.chunks(500) {
        let rows = chunk.iter().map(|f| member_fact::ActiveModel {
            kind: Set(f.kind.to_owned()),
            subject: Set(f.subject.to_owned()),
            partner: Set(f.partner.to_owned()),
            member_idx: Set(f.member),
            first_at: Set(f.at),
            last_at: Set(f.at),
        });
        writes.add(
            backend,
            &member_fact::Entity::insert_many(rows).on_conflict(
                OnConflict::columns([
                    member_fact::Column::Kind,
                    member_fact::Column::Subject,
                    member_fact::Column::Partner,
                    member_fact::Column::MemberIdx,
                ])
                // Never back: an event told late (an old ingested one) leaves a later one.
                .value(
                    member_fact::Column::LastAt,
                    sea_orm::sea_query::Expr::cust(
                        "CASE WHEN member_facts.last_at > excluded.last_at \
                         THEN member_facts.last_at ELSE excluded.last_at END",
                    ),
                )
                .to_owned(),
            ),
        );
    }
    Ok(writes.send(conn).await?)
}

/// Records that `partner` saw its members active (a contact it sent, an event it ingested):
/// an "active" fact of the partner's, for the inactive rule.
pub(crate) async fn touch(
    conn: &impl ConnectionTrait,
    partner: &str,
    members: impl IntoIterator<Item = (i32, i64)>,
) -> Result<(), KitError> {
    // One fact per member: one insert may not update a row twice (PostgreSQL refuses it).
    let mut latest: BTreeMap<i32, i64> = BTreeMap::new();
    for (m, at) in members {
        let e = latest.entry(m).or_insert(at);
        *e = (*e).max(at);
    }
    let facts: Vec<Fact<'_>> = latest
        .into_iter()
        .map(|(member, at)| Fact {
            member,
            kind: ACTIVE,
            subject: "",
            partner,
            at,
        })
        .collect();
    record_facts(conn, &facts).await
}

/// The fact kind [`touch`] records: activity a partner saw that left no other fact.
pub(crate) const ACTIVE: &str = "active";

/// Removes one fact kind of a member at a partner (a tier replaced, a tag removed).
pub(crate) async fn remove_facts(
    conn: &impl ConnectionTrait,
    member: i32,
    partner: &str,
    kind: &str,
    subject: Option<&str>,
) -> Result<(), KitError> {
    let mut q = member_fact::Entity::delete_many()
        .filter(member_fact::Column::MemberIdx.eq(member))
        .filter(member_fact::Column::Partner.eq(partner))
        .filter(member_fact::Column::Kind.eq(kind));
    if let Some(s) = subject {
        q = q.filter(member_fact::Column::Subject.eq(s));
    }
    q.exec(conn).await.map_err(storage)?;
    Ok(())
}

/// A consent granted (`granted`) or withdrawn, as identity's feed reports it.
pub(crate) async fn set_consent(
    conn: &impl ConnectionTrait,
    member: i32,
    collector: &str,
    grantee: &str,
    purpose: i32,
    granted: bool,
) -> Result<(), KitError> {
    if granted {
        consent::Entity::insert(consent::ActiveModel {
            grantee: Set(grantee.to_owned()),
            purpose: Set(purpose),
            collector: Set(collector.to_owned()),
            member_idx: Set(member),
        })
        .on_conflict(
            OnConflict::columns([
                consent::Column::Grantee,
                consent::Column::Purpose,
                consent::Column::Collector,
                consent::Column::MemberIdx,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(conn)
        .await
        .map_err(storage)?;
    } else {
        consent::Entity::delete_many()
            .filter(consent::Column::Grantee.eq(grantee))
            .filter(consent::Column::Purpose.eq(purpose))
            .filter(consent::Column::Collector.eq(collector))
            .filter(consent::Column::MemberIdx.eq(member))
            .exec(conn)
            .await
            .map_err(storage)?;
    }
    Ok(())
}

/// `partner` erased its records of the member: what the member did through it, its tags, its
/// enrolment, the consents it collected go.
pub(crate) async fn erase_at(
    conn: &impl ConnectionTrait,
    member: i32,
    partner: &str,
) -> Result<(), KitError> {
    member_fact::Entity::delete_many()
        .filter(member_fact::Column::MemberIdx.eq(member))
        .filter(member_fact::Column::Partner.eq(partner))
        .exec(conn)
        .await
        .map_err(storage)?;
    consent::Entity::delete_many()
        .filter(consent::Column::MemberIdx.eq(member))
        .filter(consent::Column::Collector.eq(partner))
        .exec(conn)
        .await
        .map_err(storage)?;
    super::funnel::erase_events(conn, member, partner).await
}

/// Remembers that `partner` erased its records of `member` at `at` (the latest erasure is
/// kept): see [`Departures`].
pub(crate) async fn record_erasure(
    conn: &impl ConnectionTrait,
    member: i32,
    partner: &str,
    at: i64,
) -> Result<(), KitError> {
    erasures_at(conn, member, [(partner.to_owned(), at)]).await
}

async fn erasures_at(
    conn: &impl ConnectionTrait,
    member: i32,
    erasures: impl IntoIterator<Item = (String, i64)>,
) -> Result<(), KitError> {
    let rows: Vec<_> = erasures
        .into_iter()
        .map(|(partner, at)| erasure::ActiveModel {
            member_idx: Set(member),
            partner: Set(partner),
            erased_at: Set(at),
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    erasure::Entity::insert_many(rows)
        .on_conflict(
            OnConflict::columns([erasure::Column::MemberIdx, erasure::Column::Partner])
                // The latest erasure wins; one told again, or carried over by a merge, never
                // moves it back.
                .value(
                    erasure::Column::ErasedAt,
                    sea_orm::sea_query::Expr::cust(
                        "CASE WHEN member_erasures.erased_at > excluded.erased_at \
                         THEN member_erasures.erased_at ELSE excluded.erased_at END",
                    ),
                )
                .to_owned(),
        )
        .exec_without_returning(conn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// Remembers that `from` was merged into `into`: what was merged into `from` before leads to
/// `into` now, and `from`'s erasures hold for `into` (see [`Departures`]).
pub(crate) async fn record_merge(
    conn: &impl ConnectionTrait,
    from: i32,
    into: i32,
) -> Result<(), KitError> {
    if from == into {
        return Ok(());
    }
    merged_member::Entity::update_many()
        .col_expr(
            merged_member::Column::IntoIdx,
            sea_orm::sea_query::Expr::value(into),
        )
        .filter(merged_member::Column::IntoIdx.eq(from))
        .exec(conn)
        .await
        .map_err(storage)?;
    merged_member::Entity::insert(merged_member::ActiveModel {
        member_idx: Set(from),
        into_idx: Set(into),
    })
    .on_conflict(
        OnConflict::column(merged_member::Column::MemberIdx)
            .update_column(merged_member::Column::IntoIdx)
            .to_owned(),
    )
    .exec_without_returning(conn)
    .await
    .map_err(storage)?;
    let erased: Vec<(String, i64)> = erasure::Entity::find()
        .filter(erasure::Column::MemberIdx.eq(from))
        .select_only()
        .columns([erasure::Column::Partner, erasure::Column::ErasedAt])
        .into_tuple()
        .all(conn)
        .await
        .map_err(storage)?;
    erasures_at(conn, into, erased).await
}

/// Where members went, for a feed other than identity's: live's and entitlements' feeds run
/// behind identity's at their own pace, so an order or a claim may be told after identity's
/// feed erased its member at the partner it came through, or merged the member into another.
/// Read once for a batch's members; what it answers keeps an erased member erased and counts
/// a merged one as its survivor.
#[derive(Debug, Default)]
pub(crate) struct Departures {
    survivors: HashMap<i32, i32>,
    erased: HashMap<(i32, String), i64>,
}

impl Departures {
    /// The merges and erasures of `members` (and of the members they were merged into).
    pub(crate) async fn of(conn: &impl ConnectionTrait, members: &[i32]) -> Result<Self, KitError> {
        let mut out = Self::default();
        for chunk in members.chunks(500) {
            let merged: Vec<(i32, i32)> = merged_member::Entity::find()
                .filter(merged_member::Column::MemberIdx.is_in(chunk.iter().copied()))
                .select_only()
                .columns([
                    merged_member::Column::MemberIdx,
                    merged_member::Column::IntoIdx,
                ])
                .into_tuple()
                .all(conn)
                .await
                .map_err(storage)?;
            out.survivors.extend(merged);
        }
        let mut looked: Vec<i32> = members.iter().map(|m| out.survivor(*m)).collect();
        looked.sort_unstable();
        looked.dedup();
        for chunk in looked.chunks(500) {
            let erased: Vec<(i32, String, i64)> = erasure::Entity::find()
                .filter(erasure::Column::MemberIdx.is_in(chunk.iter().copied()))
                .select_only()
                .columns([
                    erasure::Column::MemberIdx,
                    erasure::Column::Partner,
                    erasure::Column::ErasedAt,
                ])
                .into_tuple()
                .all(conn)
                .await
                .map_err(storage)?;
            out.erased
                .extend(erased.into_iter().map(|(m, p, at)| ((m, p), at)));
        }
        Ok(out)
    }

    /// The member that `member` now is: itself, or the one it was merged into.
    pub(crate) fn survivor(&self, member: i32) -> i32 {
        self.survivors.get(&member).copied().unwrap_or(member)
    }

    /// Whether what `member` (a survivor) did through `partner` at `at` was erased there
    /// since: at or before its latest erasure at the partner.
    pub(crate) fn erased(&self, member: i32, partner: &str, at: i64) -> bool {
        self.erased
            .get(&(member, partner.to_owned()))
            .is_some_and(|erased_at| at <= *erased_at)
    }
}

/// `CONSENT_PURPOSE_JOINT_ANALYTICS`, as the consent index stores it.
pub(crate) const JOINT_ANALYTICS: i32 =
    lianyu_proto::common::v1::ConsentPurpose::JointAnalytics as i32;

/// What one partner's segments are built on: its own records of members, and another
/// partner's records only of members who consented, through that partner, to JOINT_ANALYTICS
/// by it. A rule that mixed in anything else would let its owner learn, by the size of a
/// result padded with its own members, what another partner holds of one person.
pub(crate) struct Sight {
    partner: String,
}

impl Sight {
    /// What `partner` may build on, by the consents the feed holds when a condition is read.
    pub(crate) fn of(partner: &str) -> Self {
        Self {
            partner: partner.to_owned(),
        }
    }

    /// The facts this partner may read: its own, and those whose holder has the member's
    /// JOINT_ANALYTICS consent to it (decided in the query, so that only the members read
    /// leave the database).
    fn readable(&self) -> sea_orm::Condition {
        use sea_orm::sea_query::{Expr, ExprTrait, Query};
        let consented = Query::select()
            .expr(Expr::val(1))
            .from(consent::Entity)
            .and_where(consent::Column::Grantee.eq(&self.partner))
            .and_where(consent::Column::Purpose.eq(JOINT_ANALYTICS))
            .and_where(
                Expr::col((consent::Entity, consent::Column::Collector))
                    .equals((member_fact::Entity, member_fact::Column::Partner)),
            )
            .and_where(
                Expr::col((consent::Entity, consent::Column::MemberIdx))
                    .equals((member_fact::Entity, member_fact::Column::MemberIdx)),
            )
            .to_owned();
        sea_orm::Condition::any()
            .add(member_fact::Column::Partner.eq(&self.partner))
            .add(Expr::exists(consented))
    }
}

/// The members of `universe` (every member, [`all_members`]) meeting one condition as
/// `sight`'s partner may see it, as a bitmap.
pub(crate) async fn condition_members(
    conn: &impl ConnectionTrait,
    c: &Condition,
    now: i64,
    (sight, universe): (&Sight, &RoaringBitmap),
) -> Result<RoaringBitmap, KitError> {
    let (kind, subject, partner, since) = match c {
        Condition::Enrolled { partner, since } => ("enrolled", "", Some(partner.as_str()), *since),
        Condition::Tagged { partner, tag } => ("tag", tag.as_str(), Some(partner.as_str()), None),
        Condition::Tier { partner, tier } => ("tier", tier.as_str(), Some(partner.as_str()), None),
        Condition::JoinedSession(s) => ("joined", s.as_str(), None, None),
        Condition::OrderedInSession(s) => ("ordered", s.as_str(), None, None),
        Condition::ClaimedBenefit(b) => ("claimed", b.as_str(), None, None),
        Condition::RedeemedBenefit(b) => ("redeemed", b.as_str(), None, None),
        Condition::Inactive { days } => {
            // Every member but those with a fact the partner may read that moved inside the
            // window.
            let after = now - i64::from(*days) * crate::domain::contact::DAY;
            let active: Vec<i32> = member_fact::Entity::find()
                .filter(member_fact::Column::LastAt.gte(after))
                .filter(sight.readable())
                .select_only()
                .column(member_fact::Column::MemberIdx)
                .distinct()
                .into_tuple()
                .all(conn)
                .await
                .map_err(storage)?;
            return Ok(universe - bitmap(active));
        }
    };
    let mut q = member_fact::Entity::find()
        .filter(member_fact::Column::Kind.eq(kind))
        .filter(member_fact::Column::Subject.eq(subject))
        .filter(sight.readable());
    if let Some(p) = partner {
        q = q.filter(member_fact::Column::Partner.eq(p));
    }
    if let Some(since) = since {
        q = q.filter(member_fact::Column::FirstAt.gte(since));
    }
    let ids: Vec<i32> = q
        .select_only()
        .column(member_fact::Column::MemberIdx)
        .into_tuple()
        .all(conn)
        .await
        .map_err(storage)?;
    Ok(bitmap(ids))
}

fn bitmap(ids: Vec<i32>) -> RoaringBitmap {
    ids.into_iter()
        .filter_map(|i| u32::try_from(i).ok())
        .collect()
}

/// Every member known, as a bitmap (the universe NOT is taken within).
pub(crate) async fn all_members(conn: &impl ConnectionTrait) -> Result<RoaringBitmap, KitError> {
    let ids: Vec<i32> = member::Entity::find()
        .select_only()
        .column(member::Column::Idx)
        .into_tuple()
        .all(conn)
        .await
        .map_err(storage)?;
    Ok(bitmap(ids))
}

/// The members `partner` may count or use for `purpose` by the feed: those whose consent to
/// it for `purpose` is in force, and with `own`, its own (enrolled with it).
pub(crate) async fn usable_by(
    conn: &impl ConnectionTrait,
    partner: &str,
    purpose: i32,
    own: bool,
) -> Result<RoaringBitmap, KitError> {
    let consented: Vec<i32> = consent::Entity::find()
        .filter(consent::Column::Grantee.eq(partner))
        .filter(consent::Column::Purpose.eq(purpose))
        .select_only()
        .column(consent::Column::MemberIdx)
        .into_tuple()
        .all(conn)
        .await
        .map_err(storage)?;
    let mut out = bitmap(consented);
    if own {
        let own: Vec<i32> = member_fact::Entity::find()
            .filter(member_fact::Column::Kind.eq("enrolled"))
            .filter(member_fact::Column::Subject.eq(""))
            .filter(member_fact::Column::Partner.eq(partner))
            .select_only()
            .column(member_fact::Column::MemberIdx)
            .into_tuple()
            .all(conn)
            .await
            .map_err(storage)?;
        out |= bitmap(own);
    }
    Ok(out)
}

/// The consents in force to `grantee` for `purpose` (of `members` only, when given), each as
/// (member, collector).
async fn consents_to(
    conn: &impl ConnectionTrait,
    grantee: &str,
    purpose: i32,
    members: Option<Vec<i32>>,
) -> Result<Vec<(i32, String)>, KitError> {
    let mut q = consent::Entity::find()
        .filter(consent::Column::Grantee.eq(grantee))
        .filter(consent::Column::Purpose.eq(purpose));
    if let Some(members) = members {
        q = q.filter(consent::Column::MemberIdx.is_in(members));
    }
    q.select_only()
        .columns([consent::Column::MemberIdx, consent::Column::Collector])
        .into_tuple()
        .all(conn)
        .await
        .map_err(storage)
}

/// The members whose consent in force lets `grantee` use them for `purpose`, by the partner
/// that holds them (the consent's collector; `grantee` itself left out).
pub(crate) async fn consented_by_holder(
    conn: &impl ConnectionTrait,
    grantee: &str,
    purpose: i32,
) -> Result<HashMap<String, RoaringBitmap>, KitError> {
    let mut out: HashMap<String, RoaringBitmap> = HashMap::new();
    for (m, holder) in consents_to(conn, grantee, purpose, None).await? {
        if let Ok(m) = u32::try_from(m)
            && holder != grantee
        {
            out.entry(holder).or_default().insert(m);
        }
    }
    Ok(out)
}

/// For each of `members`, the partners (other than `grantee`) whose consent lets `grantee`
/// use them for `purpose` by the feed: whom to ask identity about.
pub(crate) async fn grounds(
    conn: &impl ConnectionTrait,
    members: &[u32],
    grantee: &str,
    purpose: i32,
) -> Result<HashMap<u32, Vec<String>>, KitError> {
    let ids: Vec<i32> = members
        .iter()
        .filter_map(|n| i32::try_from(*n).ok())
        .collect();
    let mut out: HashMap<u32, Vec<String>> = HashMap::new();
    for (m, collector) in consents_to(conn, grantee, purpose, Some(ids)).await? {
        out.entry(u32::try_from(m).unwrap_or_default())
            .or_default()
            .push(collector);
    }
    Ok(out)
}

/// A segment as stored.
#[derive(Clone, Debug)]
pub(crate) struct StoredSegment {
    pub(crate) id: String,
    pub(crate) campaign_id: String,
    pub(crate) owner: String,
    pub(crate) display_name: String,
    /// The rule, protobuf-encoded.
    pub(crate) rule: Vec<u8>,
    pub(crate) created_at: i64,
    pub(crate) computed_at: Option<i64>,
    pub(crate) computing: Option<String>,
}

fn to_segment(r: segment::Model) -> StoredSegment {
    StoredSegment {
        id: r.id,
        campaign_id: r.campaign_id,
        owner: r.owner,
        display_name: r.display_name,
        rule: r.rule,
        created_at: r.created_at,
        computed_at: r.computed_at,
        computing: r.computing,
    }
}

/// Stores a new segment.
pub(crate) async fn insert_segment(
    conn: &impl ConnectionTrait,
    s: &StoredSegment,
) -> Result<(), KitError> {
    segment::ActiveModel {
        id: Set(s.id.clone()),
        campaign_id: Set(s.campaign_id.clone()),
        owner: Set(s.owner.clone()),
        display_name: Set(s.display_name.clone()),
        rule: Set(s.rule.clone()),
        created_at: Set(s.created_at),
        computed_at: Set(None),
        result: Set(None),
        computing: Set(None),
    }
    .insert(conn)
    .await
    .map_err(storage)?;
    Ok(())
}

/// A segment of `campaign`.
pub(crate) async fn segment(
    conn: &impl ConnectionTrait,
    campaign: &str,
    id: &str,
) -> Result<Option<StoredSegment>, KitError> {
    Ok(segment::Entity::find_by_id(id)
        .filter(segment::Column::CampaignId.eq(campaign))
        .one(conn)
        .await
        .map_err(storage)?
        .map(to_segment))
}

/// A page of a campaign's segments, oldest first.
pub(crate) async fn list_segments(
    conn: &impl ConnectionTrait,
    campaign: &str,
    page: &Page,
) -> Result<(Vec<StoredSegment>, String), KitError> {
    let rows = page
        .fetch(
            conn,
            segment::Entity::find(),
            (segment::Column::CampaignId, campaign),
            segment::Column::Id,
        )
        .await?;
    Ok(page.finish(rows.into_iter().map(to_segment).collect(), |s| s.id.clone()))
}

/// A segment's last result, and when it was computed.
pub(crate) async fn segment_result(
    conn: &impl ConnectionTrait,
    id: &str,
) -> Result<Option<(RoaringBitmap, i64, Vec<u8>)>, KitError> {
    let row: Option<(Option<Vec<u8>>, Option<i64>)> = segment::Entity::find_by_id(id)
        .select_only()
        .columns([segment::Column::Result, segment::Column::ComputedAt])
        .into_tuple()
        .one(conn)
        .await
        .map_err(storage)?;
    let Some((Some(bytes), Some(at))) = row else {
        return Ok(None);
    };
    let bitmap = RoaringBitmap::deserialize_from(bytes.as_slice())
        .map_err(|e| KitError::Internal(format!("a stored segment result is unreadable: {e}")))?;
    Ok(Some((bitmap, at, bytes)))
}

/// Marks `segment` as computed by `operation` (when none is running: `false` otherwise).
pub(crate) async fn claim_computation(
    conn: &impl ConnectionTrait,
    segment: &str,
    operation: &str,
) -> Result<bool, KitError> {
    let done = segment::Entity::update_many()
        .col_expr(
            segment::Column::Computing,
            sea_orm::sea_query::Expr::value(operation),
        )
        .filter(segment::Column::Id.eq(segment))
        .filter(segment::Column::Computing.is_null())
        .exec(conn)
        .await
        .map_err(storage)?;
    Ok(done.rows_affected == 1)
}

/// Stores a finished computation's result and frees the segment.
pub(crate) async fn finish_computation(
    conn: &impl ConnectionTrait,
    segment: &str,
    result: Option<(&RoaringBitmap, i64)>,
) -> Result<(), KitError> {
    let mut q = segment::Entity::update_many().col_expr(
        segment::Column::Computing,
        sea_orm::sea_query::Expr::value(Option::<String>::None),
    );
    if let Some((bitmap, at)) = result {
        let mut bytes = Vec::with_capacity(bitmap.serialized_size());
        bitmap
            .serialize_into(&mut bytes)
            .map_err(|e| KitError::Internal(format!("serializing a segment result: {e}")))?;
        q = q
            .col_expr(
                segment::Column::Result,
                sea_orm::sea_query::Expr::value(bytes),
            )
            .col_expr(
                segment::Column::ComputedAt,
                sea_orm::sea_query::Expr::value(at),
            );
    }
    q.filter(segment::Column::Id.eq(segment))
        .exec(conn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// An operation as stored.
#[derive(Clone, Debug)]
pub(crate) struct StoredOperation {
    pub(crate) id: String,
    pub(crate) partner: String,
    pub(crate) target: String,
    pub(crate) state: String,
    pub(crate) scanned: i64,
    pub(crate) total: i64,
    pub(crate) error: String,
    pub(crate) created_at: i64,
}

fn to_operation(r: operation::Model) -> StoredOperation {
    StoredOperation {
        id: r.id,
        partner: r.partner,
        target: r.target,
        state: r.state,
        scanned: r.scanned,
        total: r.total,
        error: r.error,
        created_at: r.created_at,
    }
}

/// Stores a new running operation.
pub(crate) async fn insert_operation(
    conn: &impl ConnectionTrait,
    o: &StoredOperation,
) -> Result<(), KitError> {
    operation::ActiveModel {
        id: Set(o.id.clone()),
        partner: Set(o.partner.clone()),
        target: Set(o.target.clone()),
        state: Set(o.state.clone()),
        scanned: Set(o.scanned),
        total: Set(o.total),
        error: Set(o.error.clone()),
        created_at: Set(o.created_at),
        done_at: Set(None),
    }
    .insert(conn)
    .await
    .map_err(storage)?;
    Ok(())
}

/// The caller's operation.
pub(crate) async fn operation(
    conn: &impl ConnectionTrait,
    partner: &str,
    id: &str,
) -> Result<Option<StoredOperation>, KitError> {
    Ok(operation::Entity::find_by_id(id)
        .filter(operation::Column::Partner.eq(partner))
        .one(conn)
        .await
        .map_err(storage)?
        .map(to_operation))
}

/// A page of the caller's operations that `filter` keeps, newest first.
pub(crate) async fn list_operations(
    conn: &impl ConnectionTrait,
    partner: &str,
    filter: &OperationFilter,
    page: &Page,
) -> Result<(Vec<StoredOperation>, String), KitError> {
    let mut query = operation::Entity::find();
    query = match filter.done {
        Some(true) => query.filter(operation::Column::State.ne("running")),
        Some(false) => query.filter(operation::Column::State.eq("running")),
        None => query,
    };
    if let Some(segment) = &filter.segment {
        query = query.filter(operation::Column::Target.eq(segment.clone()));
    }
    let rows = page
        .fetch_newest(
            conn,
            query,
            (operation::Column::Partner, partner),
            operation::Column::Id,
        )
        .await?;
    Ok(
        page.finish(rows.into_iter().map(to_operation).collect(), |o| {
            o.id.clone()
        }),
    )
}

/// Moves a running operation on: progress, or its end (`state` other than "running").
/// Returns whether it was still running (a cancelled one is not moved).
pub(crate) async fn update_operation(
    conn: &impl ConnectionTrait,
    id: &str,
    state: &str,
    scanned: i64,
    total: i64,
    error: &str,
    at: i64,
) -> Result<bool, KitError> {
    use sea_orm::sea_query::Expr;
    let mut q = operation::Entity::update_many()
        .col_expr(operation::Column::State, Expr::value(state))
        .col_expr(operation::Column::Scanned, Expr::value(scanned))
        .col_expr(operation::Column::Total, Expr::value(total))
        .col_expr(operation::Column::Error, Expr::value(error));
    if state != "running" {
        q = q.col_expr(operation::Column::DoneAt, Expr::value(at));
    }
    let done = q
        .filter(operation::Column::Id.eq(id))
        .filter(operation::Column::State.eq("running"))
        .exec(conn)
        .await
        .map_err(storage)?;
    Ok(done.rows_affected == 1)
}

/// Logs an overlap query.
pub(crate) async fn log_overlap(
    conn: &impl ConnectionTrait,
    campaign: &str,
    partner: &str,
    segments: (&str, &str),
    told: Option<u64>,
    at: i64,
) -> Result<(), KitError> {
    overlap_query::ActiveModel {
        id: Set(uuid::Uuid::now_v7().simple().to_string()),
        campaign_id: Set(campaign.to_owned()),
        partner: Set(partner.to_owned()),
        segment: Set(segments.0.to_owned()),
        other_segment: Set(segments.1.to_owned()),
        overlap: Set(told.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX))),
        suppressed: Set(told.is_none()),
        asked_at: Set(at),
    }
    .insert(conn)
    .await
    .map_err(storage)?;
    Ok(())
}

/// How many overlap queries `partner` asked in `campaign`.
pub(crate) async fn overlap_queries_asked(
    conn: &impl ConnectionTrait,
    campaign: &str,
    partner: &str,
) -> Result<i64, KitError> {
    use sea_orm::PaginatorTrait;
    let n = overlap_query::Entity::find()
        .filter(overlap_query::Column::CampaignId.eq(campaign))
        .filter(overlap_query::Column::Partner.eq(partner))
        .count(conn)
        .await
        .map_err(storage)?;
    Ok(i64::try_from(n).unwrap_or(i64::MAX))
}

/// One logged overlap query.
pub(crate) struct LoggedOverlap {
    pub(crate) id: String,
    pub(crate) partner: String,
    pub(crate) segment: String,
    pub(crate) other_segment: String,
    pub(crate) overlap: i64,
    pub(crate) suppressed: bool,
    pub(crate) asked_at: i64,
}

/// A page of a campaign's overlap queries, newest first.
pub(crate) async fn list_overlaps(
    conn: &impl ConnectionTrait,
    campaign: &str,
    page: &Page,
) -> Result<(Vec<LoggedOverlap>, String), KitError> {
    let rows = page
        .fetch_newest(
            conn,
            overlap_query::Entity::find(),
            (overlap_query::Column::CampaignId, campaign),
            overlap_query::Column::Id,
        )
        .await?;
    let rows = rows
        .into_iter()
        .map(|r| LoggedOverlap {
            id: r.id,
            partner: r.partner,
            segment: r.segment,
            other_segment: r.other_segment,
            overlap: r.overlap,
            suppressed: r.suppressed,
            asked_at: r.asked_at,
        })
        .collect();
    Ok(page.finish(rows, |o| o.id.clone()))
}

/// Rewrites a merged-away member's facts, consents and events to the survivor.
pub(crate) async fn merge_members(
    conn: &impl ConnectionTrait,
    from: i32,
    into: i32,
) -> Result<(), KitError> {
    let facts = member_fact::Entity::find()
        .filter(member_fact::Column::MemberIdx.eq(from))
        .all(conn)
        .await
        .map_err(storage)?;
    let moved: Vec<_> = facts
        .iter()
        .map(|f| Fact {
            member: into,
            kind: &f.kind,
            subject: &f.subject,
            partner: &f.partner,
            at: f.last_at,
        })
        .collect();
    record_facts(conn, &moved).await?;
    member_fact::Entity::delete_many()
        .filter(member_fact::Column::MemberIdx.eq(from))
        .exec(conn)
        .await
        .map_err(storage)?;
    let consents = consent::Entity::find()
        .filter(consent::Column::MemberIdx.eq(from))
        .all(conn)
        .await
        .map_err(storage)?;
    for c in consents {
        set_consent(conn, into, &c.collector, &c.grantee, c.purpose, true).await?;
    }
    consent::Entity::delete_many()
        .filter(consent::Column::MemberIdx.eq(from))
        .exec(conn)
        .await
        .map_err(storage)?;
    super::funnel::move_events(conn, from, into).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A partner's "active" fact of each member moves only forward, to the latest time it was
    /// touched with, however many members one touch carries (several insert statements) —
    /// "inactive for N days" rests on it.
    #[tokio::test]
    async fn a_touch_moves_each_member_to_its_latest_time_and_never_back() {
        let (_database, db) = crate::store::test_database("comarketing_touch").await;
        let ids: Vec<String> = (0..1_205).map(|i| format!("m{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let numbers = member_numbers(&db, &refs, 1_000).await.unwrap();
        let n = |m: &str| numbers[m];
        // m0 twice (the later time wins), and every member past one statement's worth too.
        let mut touches = vec![(n("m0"), 5_000), (n("m0"), 3_000), (n("m1"), 500)];
        touches.extend(ids[2..].iter().map(|m| (n(m), 2_000)));
        touch(&db, "brand", touches).await.unwrap();
        // An older touch told late moves nothing back.
        touch(&db, "brand", [(n("m0"), 4_000)]).await.unwrap();
        let active = |m: i32| {
            member_fact::Entity::find()
                .filter(member_fact::Column::Kind.eq(ACTIVE))
                .filter(member_fact::Column::Partner.eq("brand"))
                .filter(member_fact::Column::MemberIdx.eq(m))
                .one(&db)
        };
        assert_eq!(active(n("m0")).await.unwrap().unwrap().last_at, 5_000);
        assert_eq!(active(n("m1")).await.unwrap().unwrap().last_at, 500);
        assert_eq!(active(n("m1204")).await.unwrap().unwrap().last_at, 2_000);
        let moved = member_fact::Entity::find()
            .filter(member_fact::Column::Kind.eq(ACTIVE))
            .filter(member_fact::Column::LastAt.eq(2_000))
            .all(&db)
            .await
            .unwrap()
            .len();
        assert_eq!(moved, 1_203);
    }

    /// Every kind of condition reads, for the partner it is evaluated for, only its own
    /// records and the records of partners a member let it count her with: a join through
    /// the mall, the mall's tag and activity seen only by the mall are not the brand's to
    /// read — until the member consents, through the mall, to JOINT_ANALYTICS by the brand.
    #[tokio::test]
    async fn a_condition_reads_another_partners_records_only_of_members_who_consented() {
        let (_database, db) = crate::store::test_database("comarketing_sight").await;
        let numbers = member_numbers(&db, &["her", "him"], 1_000).await.unwrap();
        let (her, him) = (numbers["her"], numbers["him"]);
        let fact = |member, kind, subject, partner, at| Fact {
            member,
            kind,
            subject,
            partner,
            at,
        };
        const NOW: i64 = 100 * crate::domain::contact::DAY;
        let old = NOW - 60 * crate::domain::contact::DAY;
        record_facts(
            &db,
            &[
                fact(her, "enrolled", "", "brand", old),
                fact(her, "enrolled", "", "mall", old),
                fact(her, "tag", "vip", "mall", old),
                fact(her, "joined", "s1", "mall", NOW - 1),
                fact(him, "enrolled", "", "brand", NOW - 1),
                fact(him, "joined", "s1", "brand", NOW - 1),
            ],
        )
        .await
        .unwrap();
        let read = |sight: Sight| {
            let db = db.clone();
            async move {
                let mut out = Vec::new();
                for c in [
                    Condition::Enrolled {
                        partner: lianyu_kit::ids::PartnerId::new("mall"),
                        since: None,
                    },
                    Condition::Tagged {
                        partner: lianyu_kit::ids::PartnerId::new("mall"),
                        tag: "vip".into(),
                    },
                    Condition::JoinedSession("s1".into()),
                    Condition::Inactive { days: 30 },
                ] {
                    let universe = all_members(&db).await.unwrap();
                    let found = condition_members(&db, &c, NOW, (&sight, &universe))
                        .await
                        .unwrap();
                    out.push(found.iter().collect::<Vec<u32>>());
                }
                out
            }
        };
        let (her, him) = (her as u32, him as u32);
        // The brand alone: nothing of the mall's; her join through the mall unseen, so
        // she is inactive for the brand; his join through the brand seen.
        let brand = read(Sight::of("brand")).await;
        assert_eq!(brand, [vec![], vec![], vec![him], vec![her]]);
        // The mall reads its own records whole (and never the brand's of him).
        let mall = read(Sight::of("mall")).await;
        assert_eq!(mall, [vec![her], vec![her], vec![her], vec![him]]);
        // Her consent through the mall opens the mall's records of her to the brand.
        set_consent(&db, numbers["her"], "mall", "brand", JOINT_ANALYTICS, true)
            .await
            .unwrap();
        let brand = read(Sight::of("brand")).await;
        assert_eq!(brand, [vec![her], vec![her], vec![her, him], vec![]]);
        // A consent for another purpose, or through another partner, opens nothing.
        set_consent(&db, numbers["her"], "mall", "brand", JOINT_ANALYTICS, false)
            .await
            .unwrap();
        set_consent(&db, numbers["her"], "mall", "brand", 2, true)
            .await
            .unwrap();
        set_consent(&db, numbers["her"], "other", "brand", JOINT_ANALYTICS, true)
            .await
            .unwrap();
        let brand = read(Sight::of("brand")).await;
        assert_eq!(brand, [vec![], vec![], vec![him], vec![her]]);
    }
}
